"""Multivariate anomaly rate: River HalfSpaceTrees on inputs scaled online to [0, 1], turned
into the share of anomalous events over a window, tested against the reference's share.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from river import anomaly

from detectors.base import Verdict
from detectors.calibration import chi2_critical, g_statistic_2x2
from detectors.window import WindowedDetector

if TYPE_CHECKING:
    from detectors.specs import HalfSpaceTreesSpec

__all__ = ["HalfSpaceTreesDetector"]

log = logging.getLogger(__name__)


class HalfSpaceTreesDetector(WindowedDetector):
    """HalfSpaceTrees scores each event (rows of a 2-D float array; rows with NaN skipped).

    Each feature is scaled by its running min / max while the reference is learned, then by
    the reference's range (HalfSpaceTrees assumes inputs in [0, 1]); values outside are
    clipped. An event is anomalous when its score exceeds the
    ``score_quantile`` quantile of the scores seen during the reference; the verdict is
    ANOMALY when the window's anomalous share exceeds the reference's by ``min_difference``
    and beyond chance (one-sided G-test at the family-corrected alpha).

    Examples
    --------
    >>> from detectors.specs import HalfSpaceTreesSpec
    >>> spec = HalfSpaceTreesSpec(reference={"size": 1000}, n_trees=5, height=6)
    >>> det = HalfSpaceTreesDetector(spec, seed=1)
    >>> rng = np.random.default_rng(1)
    >>> det.update_many(rng.normal(size=(4000, 3))).verdict.value
    'ok'
    >>> det.update_many(rng.normal(4.0, 1.0, size=(1500, 3))).verdict.value
    'anomaly'
    """

    spec: HalfSpaceTreesSpec

    def __init__(self, spec: Any, *, family_size: int = 1, seed: int = 0) -> None:
        super().__init__(spec, family_size=family_size, seed=seed)
        self.breach_verdict = Verdict.ANOMALY

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

    def _prepare(self, values: Any) -> np.ndarray:
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
        if rows.shape[0] == 0:
            return np.zeros(0)
        if self._lo.size != d:
            self._lo = rows.min(axis=0)
            self._hi = rows.max(axis=0)
        scores = np.empty(rows.shape[0])
        forest = self._forest
        learning_range = not self._reference.ready
        for i, row in enumerate(rows):
            # Online scaling while the reference is learned, then frozen: a range that kept
            # growing would rescale a shifted cluster back into the trees' dense region.
            if learning_range:
                np.minimum(self._lo, row, out=self._lo)
                np.maximum(self._hi, row, out=self._hi)
            span = np.where(self._hi > self._lo, self._hi - self._lo, 1.0)
            scaled = np.clip((row - self._lo) / span, 0.0, 1.0)
            x = dict(enumerate(scaled.tolist()))
            scores[i] = forest.score_one(x)  # type: ignore[no-untyped-call]
            forest.learn_one(x)  # type: ignore[no-untyped-call]
        return scores

    def _on_reference(self) -> None:
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
        }

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._forest = state["forest"]
        self._lo = state["lo"]
        self._hi = state["hi"]
        cut, above, n = state["ref"]
        self._cut, self._ref_above, self._ref_n = float(cut), float(above), int(n)
