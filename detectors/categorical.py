"""Categorical drift: PSI and Jensen-Shannon divergence of a window against the reference, and
the rate of categories the reference never saw. Memory is bounded by ``max_categories``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field

from detectors.base import InputKind
from detectors.calibration import chi2_critical, g_statistic, g_statistic_2x2
from detectors.window import WindowedDetector, WindowSpec

__all__ = [
    "CategoricalSpec",
    "JensenShannonDetector",
    "JensenShannonSpec",
    "PSIDetector",
    "PSISpec",
    "UnseenRateDetector",
    "UnseenRateSpec",
]

log = logging.getLogger(__name__)


class CategoricalSpec(WindowSpec):
    """Fields shared by the categorical detectors."""

    input_kind: ClassVar[InputKind] = InputKind.CATEGORICAL
    #: Categories tracked; rarer ones share one "other" bucket (bounds memory).
    max_categories: int = Field(default=100, ge=2, le=10_000)


class PSISpec(CategoricalSpec):
    """Population stability index of the window against the reference."""

    type: Literal["psi"] = "psi"
    threshold: float = Field(default=0.2, gt=0.0, le=100.0)
    #: Floor of a bucket's share, so an empty bucket does not make PSI infinite.
    epsilon: float = Field(default=1e-4, gt=0.0, lt=0.1)


class JensenShannonSpec(CategoricalSpec):
    """Jensen-Shannon divergence (base 2, in [0, 1]) of the window against the reference."""

    type: Literal["jensen_shannon"] = "jensen_shannon"
    threshold: float = Field(default=0.05, gt=0.0, le=1.0)


class UnseenRateSpec(CategoricalSpec):
    """Share of window values whose category never appeared in the reference."""

    type: Literal["unseen_rate"] = "unseen_rate"
    max_categories: int = Field(default=1000, ge=2, le=100_000)
    threshold: float = Field(default=0.01, ge=0.0, lt=1.0)


CategoricalSpecT = TypeVar("CategoricalSpecT", bound=CategoricalSpec)


class _CategoricalDetector(WindowedDetector[CategoricalSpecT]):
    """Values are category codes; the last code is the shared bucket of overflow categories.

    Codes are handed out in order of first sight and never taken back, so the mapping
    survives ``reset`` and travels in checkpoints.
    """

    dtype = np.int64

    def __init__(self, spec: CategoricalSpecT, *, family_size: int = 1, seed: int = 0) -> None:
        self._codes: dict[str, int] = {}
        self._k = int(spec.max_categories)
        super().__init__(spec, family_size=family_size, seed=seed)

    def _reference_fill_dtype(self) -> Any:
        # Codes are below ``max_categories``: a fixed reference that fills from the stream
        # holds them in the narrowest type that fits (only their bincount is read).
        return np.int16 if self._k <= np.iinfo(np.int16).max else np.int32

    def _read_reference(self, path: str) -> np.ndarray:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise ValueError(f"cannot read reference categories from {path!r}: {err}") from err
        codes = self._prepare([line for line in lines if line])
        if codes.size < 2:
            raise ValueError(f"reference file {path!r} holds {codes.size} categories, need 2+")
        return codes

    def _prepare(self, values: Any) -> np.ndarray:
        if isinstance(values, str):
            values = [values]
        codes = self._codes
        known = list(map(codes.get, values))
        if None not in known:
            # Every value is a category already coded and none is missing: the usual batch.
            return np.array(known, dtype=np.int64)
        other = self._k - 1
        out = np.empty(len(values), dtype=np.int64)
        n = 0
        for value in values:
            if value is None:
                continue
            code = codes.get(value)
            if code is None:
                if len(codes) < other:
                    code = codes[value] = len(codes)
                else:
                    code = other
            out[n] = code
            n += 1
        return out[:n]

    def _reset_extra(self) -> None:
        self._window_counts = np.zeros(self._k, dtype=np.float64)
        self._ref_counts = np.zeros(self._k, dtype=np.float64)

    def _on_push(self, chunk: np.ndarray, evicted: np.ndarray) -> None:
        k = self._k
        # Counts are whole numbers: one float update of the difference is exact.
        if evicted.size:
            self._window_counts += np.bincount(chunk, minlength=k) - np.bincount(
                evicted, minlength=k
            )
        else:
            self._window_counts += np.bincount(chunk, minlength=k)

    def _on_reference(self) -> None:
        self._ref_counts = np.bincount(self._reference.ring.values(), minlength=self._k).astype(
            np.float64
        )

    def _significance(self) -> tuple[float, float]:
        """(G, critical G) of homogeneity between the window and the reference counts."""
        present = (self._window_counts + self._ref_counts) > 0
        g = g_statistic(self._window_counts[present], self._ref_counts[present])
        return g, chi2_critical(self.alpha, int(present.sum()) - 1)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "categories": list(self._codes),
            "window_counts": self._window_counts,
            "ref_counts": self._ref_counts,
        }

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._codes = {name: code for code, name in enumerate(state["categories"])}
        self._window_counts = state["window_counts"]
        self._ref_counts = state["ref_counts"]


class PSIDetector(_CategoricalDetector[PSISpec]):
    """Population stability index ``sum((p - q) * ln(p / q))`` of window shares ``p`` against
    reference shares ``q``; DRIFT when it reaches ``threshold`` and a G-test at the
    family-corrected alpha agrees (so a small window's noise alone cannot fire).

    Examples
    --------
    >>> det = PSIDetector(PSISpec(reference={"size": 2000}))
    >>> rng = np.random.default_rng(0)
    >>> det.update_many(list(rng.choice(["a", "b", "c"], 20_000, p=[.6, .3, .1]))).verdict.value
    'ok'
    >>> r = det.update_many(list(rng.choice(["a", "b", "c"], 2000, p=[.2, .3, .5])))
    >>> r.verdict.value, round(r.statistic, 1)
    ('drift', 1.0)
    """

    spec_class = PSISpec

    def _test(self) -> tuple[float, float, float, bool]:
        eps = self.spec.epsilon
        p = np.maximum(self._window_counts / self._window_counts.sum(), eps)
        q = np.maximum(self._ref_counts / self._ref_counts.sum(), eps)
        psi = float(np.sum((p - q) * np.log(p / q)))
        g, critical = self._significance()
        threshold = self.spec.threshold
        return psi, psi, threshold, bool(psi >= threshold and g >= critical)


class JensenShannonDetector(_CategoricalDetector[JensenShannonSpec]):
    """Jensen-Shannon divergence (base 2) of window shares against reference shares, gated
    by a G-test at the family-corrected alpha.

    Examples
    --------
    >>> det = JensenShannonDetector(JensenShannonSpec(reference={"size": 2000}))
    >>> rng = np.random.default_rng(0)
    >>> det.update_many(list(rng.choice(["a", "b"], 20_000, p=[.7, .3]))).verdict.value
    'ok'
    >>> det.update_many(list(rng.choice(["a", "b"], 2000, p=[.2, .8]))).verdict.value
    'drift'
    """

    spec_class = JensenShannonSpec

    def _test(self) -> tuple[float, float, float, bool]:
        p = self._window_counts / self._window_counts.sum()
        q = self._ref_counts / self._ref_counts.sum()
        mid = 0.5 * (p + q)
        js = 0.5 * _kl2(p, mid) + 0.5 * _kl2(q, mid)
        g, critical = self._significance()
        threshold = self.spec.threshold
        return js, js, threshold, bool(js >= threshold and g >= critical)


def _kl2(p: np.ndarray, q: np.ndarray) -> float:
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / q[nz])))


class UnseenRateDetector(_CategoricalDetector[UnseenRateSpec]):
    """Share of window values whose category the reference never saw.

    The chance of a new category is estimated from the reference by Good-Turing (the share
    of categories seen exactly once); DRIFT when the window's unseen rate reaches
    ``threshold`` and exceeds that estimate beyond chance (one-sided G-test).

    Examples
    --------
    >>> det = UnseenRateDetector(UnseenRateSpec(reference={"size": 1000}))
    >>> det.update_many(["a", "b"] * 5000).verdict.value
    'ok'
    >>> r = det.update_many(["a", "b", "c", "d"] * 500)
    >>> r.verdict.value, r.statistic
    ('drift', 0.5)
    """

    spec_class = UnseenRateSpec

    def _test(self) -> tuple[float, float, float, bool]:
        n = float(self._window_counts.sum())
        m = float(self._ref_counts.sum())
        unseen = float(self._window_counts[self._ref_counts == 0].sum())
        singletons = float(np.sum(self._ref_counts == 1))
        rate = unseen / n
        expected = singletons / m if m else math.nan
        g = g_statistic_2x2(unseen, n - unseen, singletons, m - singletons)
        critical = chi2_critical(2.0 * self.alpha, 1)
        threshold = self.spec.threshold
        candidate = rate >= threshold and rate > expected and g >= critical
        return rate, rate - expected, threshold, bool(candidate)
