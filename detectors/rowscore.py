"""Multivariate rows turned into one score per event by a model fitted on the reference, the
window's scores tested against the scores of reference rows the model never saw.

The shared machinery of ``joint_drift`` (:mod:`detectors.joint`) and ``novelty_rate``
(:mod:`detectors.novelty`): their spec base, row validation, the extreme-value rule per
feature, the fixed reference split into a fitting half and a calibration half, test cadence
and persistence.
"""

from __future__ import annotations

import abc
import logging
import math
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np
from pydantic import model_validator

from detectors.base import INCONCLUSIVE, BaseDetector, Reading, Verdict
from detectors.calibration import Persistence, autocorrelation_time, test_alpha
from detectors.extremes import MAGNITUDE_LIMIT, UNBOUNDED, ExtremeCounts, Fence
from detectors.serialization import StateError
from detectors.window import Ring, WindowSpec

__all__ = ["RowScoreDetector", "RowScoreSpec"]

log = logging.getLogger(__name__)


class RowScoreSpec(WindowSpec):
    """Fields shared by the row-scoring detectors' specs: the reference is the first
    ``reference.size`` events (the model is fitted on them: no rolling mode, no file)."""

    #: Fewest features the model is meaningful for (policies are checked for it).
    min_features: ClassVar[int] = 1

    if TYPE_CHECKING:
        # Declared for the type checker only: each spec defines the field with its own
        # bounds, where it sits in the spec's JSON (a checkpoint's spec digest hashes it).
        max_features: int

    @model_validator(mode="after")
    def _fixed_reference(self) -> Self:
        if self.reference.mode != "fixed" or self.reference.path is not None:
            raise ValueError(
                f"{self.type} learns from its first events: reference mode 'fixed', no path"
            )
        return self


RowSpecT = TypeVar("RowSpecT", bound=RowScoreSpec)


class RowScoreDetector(BaseDetector[RowSpecT]):
    """Rows of a 2-D float array in, one Reading out; subclasses give the model and the test.

    The first ``reference.size`` complete rows are the reference. Each feature is fenced by
    its reference (:mod:`detectors.extremes`), the model is fitted on the reference's first
    half, and the second half is scored by that model: those held-out scores are what the
    window is compared with. Scoring the rows a model was fitted on would make the reference
    look better than any later window (a covariance fitted on 50 features and 5,000 rows
    reconstructs its own rows about 1% better), a bias that costs false alarms at the far
    tails a family-wise alpha reaches.

    A row with NaN in any feature is missing (dropped, counted in ``dropped``); magnitudes
    past 1e150 and infinities are clamped, then clipped to the reference's fences (counted in
    ``extremes``). A batch whose width differs from the first one's raises ``ValueError``:
    a feature that disappears is a schema change, not drift to be guessed at.
    """

    #: The verdict a breach of this detector means.
    breach_verdict: ClassVar[Verdict] = Verdict.DRIFT

    def __init__(self, spec: RowSpecT, *, family_size: int = 1, seed: int = 0) -> None:
        super().__init__(spec, family_size=family_size, seed=seed)
        if spec.reference.mode != "fixed" or spec.reference.path is not None:
            raise ValueError(
                f"{spec.type} fits its model on the first reference.size events; "
                "use reference mode 'fixed' without a path"
            )
        self.alpha = test_alpha(spec.false_alarm_every, spec.stride, family_size)
        self.reset()

    # -- hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    def _fit(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The model's arrays, fitted on fenced reference rows."""

    @abc.abstractmethod
    def _score(self, rows: np.ndarray) -> np.ndarray:
        """One score per row, by the fitted model (``self._model``)."""

    @abc.abstractmethod
    def _calibrate(self, scores: np.ndarray) -> None:
        """Derive the test's reference statistics from the held-out scores, in event order
        (``self._feature_tau`` is set: the floor of their autocorrelation time)."""

    @abc.abstractmethod
    def _window_values(self, scores: np.ndarray) -> np.ndarray:
        """What the window holds for each new score (a rank, an exceedance indicator)."""

    @abc.abstractmethod
    def _test(self, window: np.ndarray) -> tuple[float, float, float, bool]:
        """(statistic, effect, threshold, candidate) for the window's values."""

    @abc.abstractmethod
    def _calibration_state(self) -> list[Any]: ...

    @abc.abstractmethod
    def _load_calibration(self, raw: list[Any]) -> None: ...

    # -- protocol ---------------------------------------------------------------------------

    def reset(self) -> None:
        spec = self.spec
        self._width: int | None = None
        # The reference rows, one buffer of reference.size x features once the width is known:
        # the daemon's usual call brings a few rows, which must not become a list of arrays.
        self._ref_rows = np.zeros((0, 0))
        self._ref_count = 0
        self._model: dict[str, np.ndarray] | None = None
        self._fence_lo: np.ndarray | None = None
        self._fence_hi: np.ndarray | None = None
        self._feature_tau = 1.0
        self._window = Ring(spec.window)
        self._seen = 0
        self._gate = Persistence(spec.persist)
        self._last = INCONCLUSIVE
        self.dropped = 0
        self.extremes = ExtremeCounts()

    def update_many(self, values: Any) -> Reading:
        rows = self._rows(values)
        if self._model is None and rows.shape[0]:
            need = self.spec.reference.size - self._ref_count
            taken = rows[:need]
            if self._ref_rows.shape[0] == 0:
                self._ref_rows = np.zeros((self.spec.reference.size, rows.shape[1]))
            self._ref_rows[self._ref_count : self._ref_count + taken.shape[0]] = taken
            self._ref_count += taken.shape[0]
            rows = rows[need:]
            if self._ref_count >= self.spec.reference.size:
                self._fit_reference()
        if self._model is None or rows.shape[0] == 0:
            return self._untested()
        assert self._fence_lo is not None and self._fence_hi is not None
        outside = (rows < self._fence_lo) | (rows > self._fence_hi)
        if outside.any():
            # Values at the magnitude limit were counted when clamped.
            self.extremes.clipped += int(
                np.count_nonzero(outside & (np.abs(rows) != MAGNITUDE_LIMIT))
            )
            rows = np.clip(rows, self._fence_lo, self._fence_hi)
        entering = self._window_values(self._score(rows))
        stride = self.spec.stride
        breached: Reading | None = None
        last: Reading | None = None
        i = 0
        n = entering.size
        while i < n:
            chunk = entering[i : i + stride - self._seen % stride]
            self._window.extend(chunk)
            self._seen += chunk.size
            i += chunk.size
            if self._seen % stride == 0:
                last = self._evaluate()
                if last.breached:
                    breached = last
        if last is None:
            return self._untested()
        self._last = last
        return breached if breached is not None else last

    def events_until_test(self) -> int | None:
        if self._model is None or self._window.count < self.spec.min_samples:
            return None
        return int(self.spec.stride - self._seen % self.spec.stride)

    # -- internals --------------------------------------------------------------------------

    def _rows(self, values: Any) -> np.ndarray:
        try:
            rows = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.spec.type} needs numeric rows: {err}") from err
        if rows.ndim == 1:
            if rows.size == 0:
                # No rows at all: nothing to check the width of.
                return np.zeros((0, self._width or 0))
            rows = rows.reshape(1, -1)
        if rows.ndim != 2:
            raise ValueError(f"{self.spec.type} needs a 2-D array (n, d), got shape {rows.shape}")
        d = rows.shape[1]
        least = self.spec.min_features
        if d < least:
            raise ValueError(f"{self.spec.type} needs at least {least} features, got {d}")
        if d > self.spec.max_features:
            raise ValueError(
                f"{self.spec.type} got {d} features, max_features is {self.spec.max_features}"
            )
        if self._width is None:
            if rows.shape[0] == 0:
                return rows
            self._width = d
        elif d != self._width:
            raise ValueError(
                f"{self.spec.type} got rows of {d} features, its reference has {self._width}"
            )
        missing = np.isnan(rows).any(axis=1)
        if missing.any():
            self.dropped += int(np.count_nonzero(missing))
            rows = rows[~missing]
        return UNBOUNDED.admit(rows, self.extremes)

    def _fit_reference(self) -> None:
        table = self._ref_rows
        self._ref_rows = np.zeros((0, 0))
        fences = [Fence.of(column) for column in table.T]
        self._fence_lo = np.array([f.lo for f in fences])
        self._fence_hi = np.array([f.hi for f in fences])
        beyond = (table < self._fence_lo) | (table > self._fence_hi)
        if beyond.any():
            self.extremes.clipped += int(
                np.count_nonzero(beyond & (np.abs(table) != MAGNITUDE_LIMIT))
            )
            table = np.clip(table, self._fence_lo, self._fence_hi)
        # The slowest feature's autocorrelation time, over the whole reference: a floor for
        # the scores' own, which the held-out half alone underestimates (by 3x for AR(1)
        # rho 0.995, enough for a false alarm every 100,000 events).
        self._feature_tau = max(autocorrelation_time(column) for column in table.T)
        half = table.shape[0] // 2
        self._model = self._fit(table[:half])
        self._calibrate(self._score(table[half:]))
        log.debug(
            "%s fitted on %d rows, calibrated on %d", self.spec.type, half, table.shape[0] - half
        )

    def _untested(self) -> Reading:
        count = self._window.count
        if self._model is not None and count >= self.spec.min_samples:
            return self._last
        if self._last.verdict is not Verdict.INCONCLUSIVE or self._last.samples != count:
            self._last = Reading(math.nan, math.nan, Verdict.INCONCLUSIVE, count)
        return self._last

    def _evaluate(self) -> Reading:
        count = self._window.count
        if count < self.spec.min_samples:
            self._gate.step(False, self._seen)
            return Reading(math.nan, math.nan, Verdict.INCONCLUSIVE, count)
        statistic, effect, threshold, candidate = self._test(self._window.values())
        if math.isnan(statistic):
            self._gate.step(False, self._seen)
            return Reading(statistic, effect, Verdict.INCONCLUSIVE, count, threshold)
        verdict = self.breach_verdict if self._gate.step(candidate, self._seen) else Verdict.OK
        return Reading(statistic, effect, verdict, count, threshold)

    def _state(self) -> dict[str, Any]:
        return {
            "width": self._width,
            "ref_rows": self._ref_rows[: self._ref_count],
            "ref_count": self._ref_count,
            "model": self._model,
            "fence": None if self._fence_lo is None else [self._fence_lo, self._fence_hi],
            "calibration": None if self._model is None else self._calibration_state(),
            "window": self._window.state(),
            "seen": self._seen,
            "since": self._gate.since,
            "counts": [self.dropped, self.extremes.infinite, self.extremes.clipped],
        }

    def _load(self, state: dict[str, Any]) -> None:
        try:
            width = state["width"]
            self._width = None if width is None else int(width)
            held = np.asarray(state["ref_rows"], dtype=np.float64)
            self._ref_count = int(state["ref_count"])
            fitted = state["model"] is not None
            if not fitted and (held.ndim != 2 or held.shape[0] != self._ref_count):
                raise ValueError(f"reference rows of shape {held.shape}, count {self._ref_count}")
            self._ref_rows = np.zeros((0, 0))
            if self._ref_count and not fitted:
                self._ref_rows = np.zeros((self.spec.reference.size, held.shape[1]))
                self._ref_rows[: self._ref_count] = held
            model = state["model"]
            self._model = None if model is None else {str(k): v for k, v in model.items()}
            fence = state["fence"]
            self._fence_lo, self._fence_hi = (None, None) if fence is None else fence
            if self._model is not None:
                self._load_calibration(state["calibration"])
            self._window.load(state["window"])
            self._seen = int(state["seen"])
            since = state["since"]
            self._gate.since = None if since is None else int(since)
            dropped, infinite, clipped = state["counts"]
            self.dropped = int(dropped)
            self.extremes = ExtremeCounts(int(infinite), int(clipped))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise StateError(f"{self.spec.type} state is invalid: {err!r}") from err
