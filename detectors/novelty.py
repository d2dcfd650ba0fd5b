"""Novelty rate: the share of events far from every mode of the reference (k-nearest-neighbour
distance past the reference's high quantile), tested against its binomial expectation.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from detectors.base import InputKind, Verdict
from detectors.calibration import autocorrelation_time, chi2_critical, g_statistic_2x2
from detectors.rowscore import RowScoreDetector, RowScoreSpec
from detectors.window import ReferenceSpec

__all__ = ["NoveltyRateDetector", "NoveltyRateSpec"]

log = logging.getLogger(__name__)


class NoveltyRateSpec(RowScoreSpec):
    """Share of events unlike any the reference holds: a new sub-population, a failure mode."""

    input_kind: ClassVar[InputKind] = InputKind.MULTIVARIATE
    type: Literal["novelty_rate"] = "novelty_rate"
    #: Neighbours an event's distance is taken to (the k-th nearest reference event).
    k: int = Field(default=5, ge=1, le=100)
    #: Reference events kept to measure distances to (memory: ``bank_size`` x features).
    bank_size: int = Field(default=1000, ge=20, le=20_000)
    #: An event is novel when its distance exceeds this quantile of held-out reference events'.
    score_quantile: float = Field(default=0.99, gt=0.5, lt=1.0)
    #: Materiality: the window's novel share must exceed the reference's by this much.
    min_difference: float = Field(default=0.02, ge=0.0, le=1.0)
    reference: ReferenceSpec = ReferenceSpec(size=10_000)
    max_features: int = Field(default=100, ge=1, le=1000)

    @model_validator(mode="after")
    def _k_below_bank(self) -> Self:
        if self.k >= self.bank_size:
            raise ValueError(
                f"k must be smaller than bank_size (k={self.k}, bank_size={self.bank_size})"
            )
        return self


def _robust_scale(rows: np.ndarray) -> np.ndarray:
    """Per feature: the normal-consistent IQR, else the std (heavy ties can make the IQR 0),
    else 1 (a constant feature: a later value off it is novel in its own units)."""
    q1, q3 = np.quantile(rows, [0.25, 0.75], axis=0)
    iqr = (q3 - q1) / 1.349
    std = rows.std(axis=0)
    return np.where(iqr > 0, iqr, np.where(std > 0, std, 1.0))


class NoveltyRateDetector(RowScoreDetector[NoveltyRateSpec]):
    """Each event's score is its distance to its ``k``-th nearest event of a bank drawn from
    the reference's fitting half, features scaled robustly; the window's share of scores above
    the ``score_quantile`` of the held-out half's scores is tested against the held-out share.

    A k-nearest-neighbour distance follows every mode of the reference, however many and
    however tied (integer readings), without a fitted number of clusters: an event of a
    sub-population the reference barely holds lands far from all of them. A minority influx
    moves the tail share (7% of events, mostly novel, lift a 1% share to about 7%) far more
    than it moves any mean, which is why the share is tested and not the mean score. The
    test is a one-sided G-test of the window's share against the held-out share, its
    statistic divided by the held-out indicators' autocorrelation time, at the
    family-corrected alpha; the rise must be material (``min_difference``) for ``persist``
    events. Ties at the cut are counted as they fall: the held-out share, not
    ``1 - score_quantile``, is the expectation.

    Examples
    --------
    >>> rng = np.random.default_rng(5)
    >>> modes = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    >>> def traffic(n, new_share):
    ...     rows = modes[rng.integers(0, 3, size=n)] + rng.poisson(2.0, size=(n, 2))
    ...     new = rng.random(n) < new_share
    ...     rows[new] = [10.0, 10.0] + rng.poisson(2.0, size=(int(new.sum()), 2))
    ...     return rows
    >>> det = NoveltyRateDetector(NoveltyRateSpec(reference={"size": 4000}, bank_size=500))
    >>> det.update_many(traffic(8000, 0.0)).verdict.value
    'ok'
    >>> det.update_many(traffic(2000, 0.07)).verdict.value
    'anomaly'
    """

    spec_class = NoveltyRateSpec
    breach_verdict = Verdict.ANOMALY

    def _fit(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        scale = _robust_scale(rows)
        size = min(self.spec.bank_size, rows.shape[0])
        rng = np.random.default_rng(self.seed)
        picked = np.sort(rng.choice(rows.shape[0], size=size, replace=False))
        bank = rows[picked] / scale
        # Stored transposed and contiguous: a transposed view sends the distance product down
        # a path 200x slower (OpenBLAS threads on a strided operand).
        return {
            "scale": scale,
            "bank_t": np.ascontiguousarray(bank.T),
            "bank_sq": np.einsum("ij,ij->i", bank, bank),
        }

    def _score(self, rows: np.ndarray) -> np.ndarray:
        model = self._model
        assert model is not None
        bank_t = model["bank_t"]
        k = min(self.spec.k, bank_t.shape[1])
        scores = np.empty(rows.shape[0])
        # Blocks bound the distance matrix (block x bank) whatever the batch size.
        for start in range(0, rows.shape[0], 256):
            x = rows[start : start + 256] / model["scale"]
            sq = (
                np.einsum("ij,ij->i", x, x)[:, None]
                + model["bank_sq"][None, :]
                - 2.0 * (x @ bank_t)
            )
            kth = np.partition(sq, k - 1, axis=1)[:, k - 1]
            scores[start : start + x.shape[0]] = np.sqrt(np.maximum(kth, 0.0))
        return scores

    def _calibrate(self, scores: np.ndarray) -> None:
        self._cut = float(np.quantile(scores, self.spec.score_quantile))
        above = scores > self._cut
        self._ref_above = float(np.count_nonzero(above))
        self._ref_n = int(scores.size)
        self._tau = max(autocorrelation_time(above.astype(np.float64)), self._feature_tau)

    def _window_values(self, scores: np.ndarray) -> np.ndarray:
        novel: np.ndarray = (scores > self._cut).astype(np.float64)
        return novel

    def _test(self, window: np.ndarray) -> tuple[float, float, float, bool]:
        n = window.size
        above = float(window.sum())
        rate = above / n
        ref_rate = self._ref_above / self._ref_n
        effect = rate - ref_rate
        g = g_statistic_2x2(above, n - above, self._ref_above, self._ref_n - self._ref_above)
        critical = chi2_critical(2.0 * self.alpha, 1)
        candidate = effect >= self.spec.min_difference and g / self._tau >= critical
        if math.isnan(g):
            return math.nan, math.nan, math.nan, False
        return rate, effect, ref_rate + self.spec.min_difference, bool(candidate)

    def _calibration_state(self) -> list[Any]:
        return [self._cut, self._ref_above, self._ref_n, self._tau]

    def _load_calibration(self, raw: list[Any]) -> None:
        cut, above, n, tau = raw
        self._cut, self._ref_above, self._ref_n, self._tau = (
            float(cut),
            float(above),
            int(n),
            float(tau),
        )
