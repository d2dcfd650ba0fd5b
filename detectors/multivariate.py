"""Multivariate anomaly rate: River HalfSpaceTrees on inputs scaled online to [0, 1], turned
into the share of anomalous events over a window, tested against the reference's share.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field
from river import anomaly

from detectors.base import InputKind, Reading, Verdict
from detectors.calibration import chi2_critical, g_statistic_2x2
from detectors.extremes import MAGNITUDE_LIMIT, UNBOUNDED, Fence
from detectors.window import ReferenceSpec, WindowedDetector, WindowSpec

__all__ = ["HalfSpaceTreesDetector", "HalfSpaceTreesSpec"]

log = logging.getLogger(__name__)


class HalfSpaceTreesSpec(WindowSpec):
    """River HalfSpaceTrees on inputs scaled online to [0, 1], as an anomaly rate over a window."""

    input_kind: ClassVar[InputKind] = InputKind.MULTIVARIATE
    type: Literal["half_space_trees"] = "half_space_trees"
    n_trees: int = Field(default=10, ge=1, le=100)
    height: int = Field(default=8, ge=1, le=16)
    #: River's own mass window (events per tree refresh).
    tree_window: int = Field(default=250, ge=10, le=100_000)
    #: An event is anomalous when its score exceeds this quantile of the reference's scores.
    score_quantile: float = Field(default=0.99, gt=0.5, lt=1.0)
    #: Materiality: the anomaly rate must exceed the reference's by this much.
    min_difference: float = Field(default=0.05, ge=0.0, le=1.0)
    reference: ReferenceSpec = ReferenceSpec(size=2000)
    max_features: int = Field(default=100, ge=1, le=1000)


class HalfSpaceTreesDetector(WindowedDetector[HalfSpaceTreesSpec]):
    """HalfSpaceTrees scores each event (rows of a 2-D float array; rows with NaN skipped).

    Each feature is scaled by its running min / max while the reference is learned, then by
    the reference's range (HalfSpaceTrees assumes inputs in [0, 1]); values outside are
    clipped. An event is anomalous when its score exceeds the
    ``score_quantile`` quantile of the scores seen during the reference; the verdict is
    ANOMALY when the window's anomalous share exceeds the reference's by ``min_difference``
    and beyond chance (one-sided G-test at the family-corrected alpha).

    The extreme-value rule (:mod:`detectors.extremes`) holds per feature: magnitudes past
    1e150 (infinities too) are clamped to it, and once a fixed reference is complete each
    feature gets its reference's fence.
    A reference in which some value lay beyond its feature's fence is learned again, from
    its rows clipped to the fences, with the clipped values left out of the feature ranges:
    otherwise one 1e308 would stretch that feature's frozen range until every ordinary value
    scaled to the same point, and nothing would look anomalous. Later rows are clipped to the
    fences too (counted in ``extremes``).

    Examples
    --------
    >>> spec = HalfSpaceTreesSpec(reference={"size": 1000}, n_trees=5, height=6)
    >>> det = HalfSpaceTreesDetector(spec, seed=1)
    >>> rng = np.random.default_rng(1)
    >>> det.update_many(rng.normal(size=(4000, 3))).verdict.value
    'ok'
    >>> det.update_many(rng.normal(4.0, 1.0, size=(1500, 3))).verdict.value
    'anomaly'
    """

    spec_class = HalfSpaceTreesSpec
    breach_verdict = Verdict.ANOMALY

    def _read_reference(self, path: str) -> np.ndarray:
        raise ValueError(
            f"half_space_trees learns its reference online; drop reference.path ({path!r})"
        )

    def _reset_extra(self) -> None:
        spec = self.spec
        self._forest = anomaly.HalfSpaceTrees(
            n_trees=spec.n_trees, height=spec.height, window_size=spec.tree_window, seed=self.seed
        )
        self._lo = np.zeros(0)
        self._hi = np.zeros(0)
        self._cut = math.nan
        self._ref_above = 0.0
        self._ref_n = 0
        # Per-feature fence edges, once the reference is complete.
        self._fence_lo: np.ndarray | None = None
        self._fence_hi: np.ndarray | None = None
        # The reference's rows as they came, batch by batch, to learn it again if need be.
        self._ref_rows: list[np.ndarray] = []

    def update_many(self, values: Any) -> Reading:
        ref = self._reference
        if ref.ready or ref.mode != "fixed":
            return super().update_many(values)
        rows = self._rows(values)
        need = ref.ring.size - ref.ring.count
        if rows.shape[0] <= need:
            return super().update_many(rows)
        # The rows that complete the reference, then the rest, scaled by the frozen range
        # the complete reference fixes (and its fences).
        super().update_many(rows[:need])
        return super().update_many(rows[need:])

    def _rows(self, values: Any) -> np.ndarray:
        """Valid, complete rows: NaN in any feature drops the row; magnitudes (infinities too)
        are clamped to +-1e150."""
        rows = np.asarray(values, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.ndim != 2:
            raise ValueError(f"half_space_trees needs a 2-D array (n, d), got shape {rows.shape}")
        d = rows.shape[1]
        if d > self.spec.max_features:
            raise ValueError(
                f"half_space_trees got {d} features, max_features is {self.spec.max_features}"
            )
        rows = rows[~np.isnan(rows).any(axis=1)]
        return UNBOUNDED.admit(rows, self.extremes)

    def _prepare(self, values: Any) -> np.ndarray:
        rows = self._rows(values)
        if rows.shape[0] == 0:
            return np.zeros(0)
        if self._fence_lo is not None and self._fence_hi is not None:
            outside = (rows < self._fence_lo) | (rows > self._fence_hi)
            if outside.any():
                # Values at the magnitude limit were counted by ``_rows`` already.
                outside &= np.abs(rows) != MAGNITUDE_LIMIT
                self.extremes.clipped += int(np.count_nonzero(outside))
                rows = np.clip(rows, self._fence_lo, self._fence_hi)
        elif not self._reference.ready:
            self._ref_rows.append(rows.copy())
        return self._score(rows)

    def _score(self, rows: np.ndarray, learn_from: np.ndarray | None = None) -> np.ndarray:
        """Score then learn each row, scaled by the feature ranges.

        While the reference is learned the ranges grow with ``learn_from`` (``rows`` unless
        given; its NaN values are left out of the ranges, see ``_fence_reference``).
        """
        d = rows.shape[1]
        learn = rows if learn_from is None else learn_from
        if self._lo.size != d:
            # fmin / fmax: NaN-free rows give min / max exactly, NaN is passed over.
            self._lo = np.fmin.reduce(learn, axis=0, initial=math.inf)
            self._hi = np.fmax.reduce(learn, axis=0, initial=-math.inf)
        scores = np.empty(rows.shape[0])
        forest = self._forest
        learning_range = not self._reference.ready
        for i, row in enumerate(rows):
            # Online scaling while the reference is learned, then frozen: a range that kept
            # growing would rescale a shifted cluster back into the trees' dense region.
            if learning_range:
                np.fmin(self._lo, learn[i], out=self._lo)
                np.fmax(self._hi, learn[i], out=self._hi)
            span = np.where(self._hi > self._lo, self._hi - self._lo, 1.0)
            scaled = np.clip((row - self._lo) / span, 0.0, 1.0)
            x = dict(enumerate(scaled.tolist()))
            scores[i] = forest.score_one(x)  # type: ignore[no-untyped-call]
            forest.learn_one(x)  # type: ignore[no-untyped-call]
        return scores

    def _fence_reference(self) -> None:
        """Fence each feature by its reference; learn a reference with values beyond again."""
        batches = self._ref_rows
        self._ref_rows = []
        if not batches:
            return
        table = np.concatenate(batches)
        fences = [Fence.of(column) for column in table.T]
        lo = np.array([f.lo for f in fences])
        hi = np.array([f.hi for f in fences])
        self._fence_lo, self._fence_hi = lo, hi
        beyond = int(np.count_nonzero((table < lo) | (table > hi)))
        clamped = int(np.count_nonzero(np.abs(table) == MAGNITUDE_LIMIT))
        ring = self._reference.ring
        if not beyond or self._reference.mode != "fixed" or table.shape[0] != ring.count:
            return
        self.extremes.clipped += beyond - clamped
        log.info("half_space_trees reference: %d values beyond their fences, relearned", beyond)
        spec = self.spec
        self._forest = anomaly.HalfSpaceTrees(
            n_trees=spec.n_trees, height=spec.height, window_size=spec.tree_window, seed=self.seed
        )
        self._lo = np.zeros(0)
        self._hi = np.zeros(0)
        self._reference.ready = False
        # Clipped values are scored at their fence but left out of the ranges (rule 4 of
        # detectors.extremes): a range stretched to a fence would still squeeze every
        # ordinary value of that feature into a corner of the unit cube.
        scores = [
            self._score(
                np.clip(batch, lo, hi), np.where((batch < lo) | (batch > hi), math.nan, batch)
            )
            for batch in batches
        ]
        self._reference.ready = True
        ring.buf[: ring.count] = np.concatenate(scores)

    def _on_reference(self) -> None:
        self._fence_reference()
        values = self._reference.ring.values()
        self._cut = float(np.quantile(values, self.spec.score_quantile))
        self._ref_above = float(np.count_nonzero(values > self._cut))
        self._ref_n = int(values.size)

    def _test(self) -> tuple[float, float, float, bool]:
        scores = self._window.values()
        n = scores.size
        above = float(np.count_nonzero(scores > self._cut))
        rate = above / n
        ref_rate = self._ref_above / self._ref_n
        effect = rate - ref_rate
        g = g_statistic_2x2(above, n - above, self._ref_above, self._ref_n - self._ref_above)
        critical = chi2_critical(2.0 * self.alpha, 1)
        candidate = effect >= self.spec.min_difference and g >= critical
        return rate, effect, ref_rate + self.spec.min_difference, bool(candidate)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "forest": self._forest,
            "lo": self._lo,
            "hi": self._hi,
            "ref": [self._cut, self._ref_above, self._ref_n],
            "fence": None if self._fence_lo is None else [self._fence_lo, self._fence_hi],
            "ref_rows": self._ref_rows,
        }

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._forest = state["forest"]
        self._lo = state["lo"]
        self._hi = state["hi"]
        cut, above, n = state["ref"]
        self._cut, self._ref_above, self._ref_n = float(cut), float(above), int(n)
        fence = state.get("fence")
        self._fence_lo, self._fence_hi = (None, None) if fence is None else fence
        self._ref_rows = list(state.get("ref_rows", []))
