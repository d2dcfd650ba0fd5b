"""Joint drift: a change of how features vary together that no single feature shows, seen as
the reference-rank of each event's PCA reconstruction error (or Mahalanobis distance).
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from detectors.base import InputKind
from detectors.calibration import autocorrelation_time, normal_isf
from detectors.rowscore import RowScoreDetector, RowScoreSpec
from detectors.window import ReferenceSpec

__all__ = ["JointDriftDetector", "JointDriftSpec"]

log = logging.getLogger(__name__)


class JointDriftSpec(RowScoreSpec):
    """Change of the joint distribution of a model's numeric features (fixed reference)."""

    input_kind: ClassVar[InputKind] = InputKind.MULTIVARIATE
    #: A joint distribution needs two features at least (policies are checked for it).
    min_features: ClassVar[int] = 2
    type: Literal["joint_drift"] = "joint_drift"
    #: ``mahalanobis``: distance of an event under the reference's correlation matrix;
    #: ``pca_reconstruction``: distance to the reference's principal subspace (NannyML's data
    #: reconstruction drift). Mahalanobis is the default: it weighs every direction by its
    #: reference variance, so it also sees changes inside the subspace PCA keeps (and the
    #: direction PCA drops arbitrarily among equal eigenvalues); bench/multivariate.py.
    score: Literal["mahalanobis", "pca_reconstruction"] = "mahalanobis"
    #: Share of the reference's (standardized) variance the kept components explain.
    variance_kept: float = Field(default=0.65, gt=0.0, lt=1.0)
    #: Materiality: the window's mean reference-rank must exceed 0.5 by this much, i.e. a
    #: window event must out-score a reference event with probability 0.5 + min_effect.
    min_effect: float = Field(default=0.05, ge=0.0, lt=0.5)
    reference: ReferenceSpec = ReferenceSpec(size=10_000)
    max_features: int = Field(default=100, ge=2, le=1000)


def _standardize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale per feature; a constant feature gets scale 1 (its deviations stay
    visible, in its own units)."""
    mean = rows.mean(axis=0)
    scale = rows.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale


class JointDriftDetector(RowScoreDetector[JointDriftSpec]):
    """Each event is scored by the reference's model of how its features co-vary; the window
    is tested by the mean reference-rank of its scores.

    The rank of a score among the held-out reference scores (mid-rank, in [0, 1]) is uniform
    while nothing changed, whatever the features' marginals: heavy tails, ties and zero
    inflation leave it bounded, so its window mean is close to normal where a window mean of
    raw reconstruction errors (NannyML's statistic) is as skewed as the errors are. The mean
    rank is compared with 0.5 by a one-sided z-test whose standard error counts the held-out
    scores' autocorrelation time (the effective sample size), at the family-corrected
    alpha, and must be material (``min_effect``) for ``persist`` events.

    ``pca_reconstruction`` standardizes the features by the reference, keeps the principal
    components that explain ``variance_kept`` of its variance and scores an event by its
    Euclidean distance to their subspace. ``mahalanobis`` scores by the distance under the
    reference's correlation matrix (eigenvalues floored at 1e-6 of the largest, so constant
    or collinear features stay finite).

    Examples
    --------
    Two features correlated 0.9 turn anti-correlated; both marginals stay N(0, 1).

    >>> rng = np.random.default_rng(3)
    >>> def pair(n, rho):
    ...     x = rng.normal(size=(n, 3))
    ...     x[:, 1] = rho * x[:, 0] + math.sqrt(1 - rho**2) * x[:, 1]
    ...     return x
    >>> det = JointDriftDetector(JointDriftSpec(reference={"size": 4000}))
    >>> det.update_many(pair(8000, 0.9)).verdict.value
    'ok'
    >>> det.update_many(pair(1000, -0.9)).verdict.value
    'drift'
    """

    spec_class = JointDriftSpec

    def _fit(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        mean, scale = _standardize(rows)
        z = (rows - mean) / scale
        cov = (z.T @ z) / max(1, z.shape[0] - 1)
        eigval, eigvec = np.linalg.eigh(cov)
        order = np.argsort(eigval)[::-1]
        eigval = np.maximum(eigval[order], 0.0)
        eigvec = eigvec[:, order]
        if self.spec.score == "pca_reconstruction":
            total = float(eigval.sum())
            share = np.cumsum(eigval) / total if total > 0 else np.ones_like(eigval)
            # At least one component, and one fewer than the features: a subspace that is
            # the whole space reconstructs everything.
            kept = min(int(np.searchsorted(share, self.spec.variance_kept)) + 1, eigval.size - 1)
            # Contiguous copies: a strided operand sends the products down a far slower path.
            basis = np.ascontiguousarray(eigvec[:, : max(kept, 1)])
            return {"mean": mean, "scale": scale, "basis": basis, "basis_t": basis.T.copy()}
        floor = max(float(eigval[0]), 1.0) * 1e-6
        whiten = np.ascontiguousarray(eigvec / np.sqrt(np.maximum(eigval, floor)))
        return {"mean": mean, "scale": scale, "whiten": whiten}

    def _score(self, rows: np.ndarray) -> np.ndarray:
        model = self._model
        assert model is not None
        z = (rows - model["mean"]) / model["scale"]
        if "basis" in model:
            basis = model["basis"]
            residual = z - (z @ basis) @ model["basis_t"]
            distance: np.ndarray = np.sqrt(np.einsum("ij,ij->i", residual, residual))
            return distance
        w = z @ model["whiten"]
        mahalanobis: np.ndarray = np.sqrt(np.einsum("ij,ij->i", w, w))
        return mahalanobis

    def _calibrate(self, scores: np.ndarray) -> None:
        self._held_out = np.sort(scores)
        ranks = self._window_values(scores)
        self._rank_var = float(ranks.var())
        self._tau = max(autocorrelation_time(ranks), self._feature_tau)

    def _window_values(self, scores: np.ndarray) -> np.ndarray:
        held = self._held_out
        below = np.searchsorted(held, scores, side="left")
        upto = np.searchsorted(held, scores, side="right")
        ranks: np.ndarray = (below + upto) / (2.0 * held.size)
        return ranks

    def _test(self, window: np.ndarray) -> tuple[float, float, float, bool]:
        n = window.size
        m = self._held_out.size
        if not self._rank_var > 0:
            # Every held-out score tied: no spread to test against.
            return math.nan, math.nan, math.nan, False
        effect = float(window.mean()) - 0.5
        se = math.sqrt(self._tau * self._rank_var * (1.0 / n + 1.0 / m))
        threshold = max(self.spec.min_effect, normal_isf(self.alpha) * se)
        return effect, effect, threshold, bool(effect >= threshold)

    def _calibration_state(self) -> list[Any]:
        return [self._held_out, self._rank_var, self._tau]

    def _load_calibration(self, raw: list[Any]) -> None:
        held, var, tau = raw
        self._held_out = np.asarray(held, dtype=np.float64)
        self._rank_var = float(var)
        self._tau = float(tau)
