"""The windowed-test machinery shared by reference-based detectors: their spec fields, ring
buffers, the reference (fixed, from a file, or rolling), test cadence, persistence, and
inconclusive readings.
"""

from __future__ import annotations

import abc
import logging
import math
import mmap
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from detectors.base import INCONCLUSIVE, BaseDetector, DetectorSpecBase, Reading, Verdict
from detectors.calibration import Persistence, autocorrelation_time, normal_isf, test_alpha
from detectors.extremes import UNBOUNDED, ExtremeCounts, Fence
from detectors.serialization import StateError

__all__ = [
    "DECIMAL",
    "DecimalRing",
    "Direction",
    "Reference",
    "ReferenceSpec",
    "Ring",
    "RiverGatedDetector",
    "WindowSpec",
    "WindowedDetector",
    "drop_nan",
]

log = logging.getLogger(__name__)

#: Which way a change must go to count (``alert_on`` of rate detectors).
Direction = Literal["increase", "decrease", "both"]


class ReferenceSpec(BaseModel):
    """What a window is compared with.

    ``fixed``: the first ``size`` events (or the values in ``path``, one per line, or a ``.npy``
    array); ``rolling``: the ``size`` events just before the current window, so slow trends
    are followed instead of flagged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["fixed", "rolling"] = "fixed"
    size: int = Field(default=10_000, ge=50, le=1_000_000)
    path: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _path_only_when_fixed(self) -> Self:
        if self.path is not None and self.mode != "fixed":
            raise ValueError(f"reference.path needs mode 'fixed', not {self.mode!r}")
        return self


class WindowSpec(DetectorSpecBase):
    """Fields shared by every windowed, reference-based detector."""

    #: Events in the current window the verdict rests on.
    window: int = Field(default=1000, ge=10, le=1_000_000)
    #: No verdict before the window holds this many (non-missing) values.
    min_samples: int = Field(default=200, ge=1, le=1_000_000)
    #: Test once every ``stride`` events (bounds the cost and the number of tests).
    stride: int = Field(default=100, ge=1, le=100_000)
    #: Events a breach must hold, test after test, before the verdict turns.
    persist: int = Field(default=200, ge=0, le=10_000_000)
    #: Target expected events between false alarms, for the whole family of signals.
    false_alarm_every: float = Field(default=10_000_000.0, ge=1_000.0, le=1e15)
    reference: ReferenceSpec = ReferenceSpec()

    @model_validator(mode="after")
    def _window_sizes(self) -> Self:
        if self.min_samples > self.window:
            raise ValueError(
                f"window must be larger than min_samples (window={self.window}, "
                f"min_samples={self.min_samples})"
            )
        if self.stride > self.window:
            raise ValueError(
                f"stride must not exceed window (stride={self.stride}, window={self.window})"
            )
        return self


WindowSpecT = TypeVar("WindowSpecT", bound=WindowSpec)


_MIN = np.minimum.reduce

#: Buffers at least this large are mapped from the kernel rather than taken from the heap.
_MAPPED_BYTES = 65_536


def zeros_returnable(size: int, dtype: Any, *, mapped_bytes: int = _MAPPED_BYTES) -> np.ndarray:
    """Zeros whose memory is resident only once written, and goes back to the kernel when
    the array is dropped.

    A fixed reference of 10,000 values per detector, x 20,000 detectors, is 1.5 GiB of heap
    that ``np.zeros`` makes resident at once and that stays resident after the reference is
    released (freed heap blocks are not returned). An anonymous mapping is zero pages until
    written and unmapped when freed. Falls back to the heap when the kernel refuses.

    >>> zeros_returnable(10_000, np.float64).sum(), zeros_returnable(3, np.int64).tolist()
    (np.float64(0.0), [0, 0, 0])
    """
    dt = np.dtype(dtype)
    nbytes = size * dt.itemsize
    if nbytes < mapped_bytes:
        return np.zeros(size, dtype=dt)
    try:
        # Private: adjacent private anonymous mappings merge into one kernel mapping, where
        # each shared one (mmap's default) counts alone against ``vm.max_map_count``
        # (65,530 by default), and thousands of detectors each hold one or two.
        region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return np.zeros(size, dtype=dt)
    return np.frombuffer(region, dtype=dt, count=size)


class Ring:
    """Fixed-size ring buffer of numbers; memory is ``size`` values whatever the traffic.

    >>> ring = Ring(3)
    >>> ring.extend(np.array([1.0, 2.0])).tolist(), ring.extend(np.array([3.0, 4.0])).tolist()
    ([], [1.0])
    >>> ring.ordered().tolist()
    [2.0, 3.0, 4.0]
    """

    __slots__ = ("_none", "buf", "count", "pos", "size")

    def __init__(self, size: int, dtype: Any = np.float64, *, returnable: bool = False) -> None:
        self.size = size
        self.buf = zeros_returnable(size, dtype) if returnable else np.zeros(size, dtype=dtype)
        self.count = 0
        self.pos = 0
        self._none = np.zeros(0, dtype=dtype)
        self._none.flags.writeable = False

    def extend(self, values: np.ndarray) -> np.ndarray:
        """Append ``values``; return the values pushed out, oldest first.

        Called once per detector update with a few values: slices only, no index arrays.
        The returned array is read-only shared when nothing was pushed out.
        """
        n = values.size
        size = self.size
        if n >= size:
            evicted = np.concatenate([self.ordered(), values[: n - size]])
            self.buf[:] = values[n - size :]
            self.pos = 0
            self.count = size
            return evicted
        buf = self.buf
        pos = self.pos
        count = self.count + n
        if count > size:
            oldest = pos - self.count
            if oldest < 0:
                oldest += size
            stop = oldest + count - size
            if stop <= size:
                evicted = buf[oldest:stop].copy()
            else:
                evicted = np.concatenate((buf[oldest:], buf[: stop - size]))
            count = size
        else:
            evicted = self._none
        end = pos + n
        if end <= size:
            buf[pos:end] = values
            self.pos = end if end < size else 0
        else:
            head = size - pos
            buf[pos:] = values[:head]
            buf[: end - size] = values[head:]
            self.pos = end - size
        self.count = count
        return evicted

    def ordered(self) -> np.ndarray:
        """The held values, oldest first (a copy)."""
        if self.count < self.size:
            return self.buf[: self.count].copy()
        return np.concatenate([self.buf[self.pos :], self.buf[: self.pos]])

    def values(self) -> np.ndarray:
        """The held values in storage order (a view; for order-free statistics)."""
        return self.buf[: self.count] if self.count < self.size else self.buf

    def state(self) -> dict[str, Any]:
        return {
            "buf": self.buf[: self.count] if self.count < self.size else self.buf,
            "pos": self.pos,
            "count": self.count,
        }

    def load(self, state: dict[str, Any]) -> None:
        buf = state["buf"]
        self.buf[: buf.size] = buf
        self.pos = int(state["pos"])
        self.count = int(state["count"])


#: The fill type of a fixed reference of measurements: exact decimals (``DecimalRing``).
DECIMAL = "decimal"
#: Decimal places a ``DecimalRing`` scales to before it holds float64 values instead.
DECIMAL_PLACES = 6
#: Values a ``DecimalRing`` takes as float64 before it codes them all at once: coding costs
#: a few numpy calls, paid once a block rather than on every detector update.
DECIMAL_BLOCK = 512
_SCALES = tuple(float(10**k) for k in range(DECIMAL_PLACES + 1))
_CODE_LIMIT = 2**31 - 1
_MAX = np.maximum.reduce
#: A filling reference's buffers are mapped from one page up: 40 KiB of codes a detector,
#: thousands of them freed together once the references are full, would otherwise leave
#: holes in the heap that RSS keeps counting (measured +50 MiB at 200 models, auto policy).
_PAGE = mmap.PAGESIZE


def _codes_buffer(size: int) -> np.ndarray:
    return zeros_returnable(size, np.int32, mapped_bytes=_PAGE)


class DecimalRing:
    """A fixed reference's values while it fills: each float64 value ``v`` held as an int32
    code ``c`` with ``c / 10**k == v`` bit for bit (``k``, the scale, from 0 to
    ``DECIMAL_PLACES``), 4 bytes a value instead of 8; from the first value that has no such
    code (more decimals, past +-2**31 / 10**k, -0.0, inf), every value as float64. The
    latest values (up to a block) wait as float64 and are coded a block at a time.

    Why exact: a JSON number with at most ``k`` decimals parses to the double nearest to
    ``c / 10**k``, and IEEE division of the exactly represented ``c`` by the exactly
    represented ``10**k`` is correctly rounded to that same double; each block is checked by
    doing that division and comparing the bits, so no value is held that does not read back
    as itself. Rescaling to more decimals (codes times ``10**d``) divides the same rational
    number, so it reads back the same double too.

    Only a fixed reference fills one (``Reference``): values are appended, never evicted,
    and it becomes a float64 ``Ring`` (``as_ring``) once full, before anything reads it.

    >>> ring = DecimalRing(6, block=2)
    >>> ring.extend(np.array([1.5, -2.25, 4.0]))
    >>> ring.scale, ring.buf.dtype.name, ring.values().tolist()
    (2, 'int32', [1.5, -2.25, 4.0])
    >>> ring.extend(np.array([0.1 + 0.2]))  # 0.30000000000000004: no decimal code
    >>> ring.scale, ring.buf.dtype.name, ring.values().tolist()
    (None, 'float64', [1.5, -2.25, 4.0, 0.30000000000000004])
    """

    __slots__ = ("buf", "coded", "count", "pos", "scale", "size", "waiting")

    def __init__(self, size: int, *, block: int = DECIMAL_BLOCK) -> None:
        self.size = size
        self.buf = _codes_buffer(size)
        #: Values coded into ``buf`` (the first ``coded`` of ``count``).
        self.coded = 0
        #: The values after them, as float64, until a block is full.
        self.waiting = zeros_returnable(min(block, size), np.float64, mapped_bytes=_PAGE)
        self.count = 0
        self.pos = 0
        #: Decimal places of the codes (None: ``buf`` holds the float64 values).
        self.scale: int | None = 0

    def extend(self, values: np.ndarray) -> None:
        """Append ``values`` (float64; at most ``size - count`` of them)."""
        n = values.size
        if self.count + n > self.size:
            raise ValueError(f"a DecimalRing of {self.size} cannot take {self.count + n} values")
        while n:
            if self.scale is None:
                self.buf[self.count : self.count + n] = values
                self.count += n
                break
            waiting = self.waiting
            at = self.count - self.coded
            take = min(n, waiting.size - at)
            waiting[at : at + take] = values[:take]
            self.count += take
            values = values[take:]
            n -= take
            if at + take == waiting.size:
                self._code(waiting)
        # As Ring's: the next slot, 0 once full.
        self.pos = self.count if self.count < self.size else 0

    def _code(self, block: np.ndarray) -> None:
        """The waiting ``block`` into ``buf``: as codes, or all values as float64 from now."""
        codes = self._codes(block)
        start = self.coded
        if codes is None:
            self._widen()
            self.buf[start : start + block.size] = block
        else:
            self.buf[start : start + block.size] = codes
        self.coded = start + block.size

    def _codes(self, values: np.ndarray) -> np.ndarray | None:
        """``values`` as codes at the ring's scale or the least larger one (rescaling the
        held codes to it); None when no scale up to ``DECIMAL_PLACES`` holds them all."""
        assert self.scale is not None
        # Past it every code would pass the int32 range; NaN fails the comparison too.
        largest = float(_MAX(np.abs(values))) if values.size else 0.0
        original = values.tobytes()
        for scale in range(self.scale, DECIMAL_PLACES + 1):
            if not largest * _SCALES[scale] <= _CODE_LIMIT:
                return None
            codes = np.rint(values * _SCALES[scale]).astype(np.int32)
            if (codes / _SCALES[scale]).tobytes() != original:
                continue
            if scale != self.scale and not self._rescale(scale):
                return None
            return codes
        return None

    def _rescale(self, scale: int) -> bool:
        """The held codes at ``scale`` decimals; False when one would pass the int32 range."""
        assert self.scale is not None
        held = self.buf[: self.coded]
        factor = 10 ** (scale - self.scale)
        if held.size and int(np.abs(held.astype(np.int64)).max()) * factor > _CODE_LIMIT:
            return False
        held *= factor
        self.scale = scale
        return True

    def _widen(self) -> None:
        """From now on float64 values: the coded ones decoded into a float64 buffer."""
        wide = zeros_returnable(self.size, np.float64, mapped_bytes=_PAGE)
        wide[: self.count] = self.values()
        self.buf = wide
        self.scale = None
        self.coded = self.count

    def values(self) -> np.ndarray:
        """The held values, float64, in order (a copy while some are codes or waiting)."""
        if self.scale is None:
            return self.buf[: self.count]
        decoded: np.ndarray = np.empty(self.count, dtype=np.float64)
        np.divide(self.buf[: self.coded], _SCALES[self.scale], out=decoded[: self.coded])
        decoded[self.coded :] = self.waiting[: self.count - self.coded]
        return decoded

    def ordered(self) -> np.ndarray:
        return self.values().copy()

    def as_ring(self, dtype: Any) -> Ring:
        """The same values in a ``Ring`` of ``dtype`` (a full reference, read from then on)."""
        ring = Ring(self.size, dtype, returnable=True)
        ring.buf[: self.count] = self.values()
        ring.count = self.count
        ring.pos = self.pos
        return ring

    def state(self) -> dict[str, Any]:
        # Ring's state of the same values: a checkpoint's bytes do not depend on the type
        # the values filled in.
        return {"buf": self.values(), "pos": self.pos, "count": self.count}

    def load(self, state: dict[str, Any]) -> None:
        # The count is taken from the values themselves: the codes, the waiting block and
        # the count must agree, or a later ``values`` fails on the hot path. A checkpoint
        # (``state``: Ring's) holds exactly ``count`` values, all ``size`` once full.
        buf = np.asarray(state["buf"], dtype=np.float64)
        count = int(state["count"])
        if buf.ndim != 1 or buf.size != count or not 0 <= count <= self.size:
            raise StateError(
                f"a filling reference of {self.size} values holds {buf.size} values in "
                f"shape {buf.shape} but says {count}"
            )
        self.buf = _codes_buffer(self.size)
        self.coded = self.count = 0
        self.scale = 0
        self.extend(buf)


class Reference:
    """The values a window is compared with.

    Fixed mode takes the first ``size`` values (or a file's); rolling mode takes the values
    that leave the current window and asks for a refresh every quarter of its size.
    """

    __slots__ = ("added", "dtype", "fill_dtype", "mode", "ready", "ring")

    def __init__(
        self,
        size: int,
        mode: str,
        dtype: Any,
        initial: np.ndarray | None,
        fill_dtype: Any = None,
    ) -> None:
        self.mode = mode
        self.dtype = dtype
        # A fixed reference that fills from the stream may hold its values in a narrower
        # type (0 / 1 values, category codes: see WindowedDetector.reference_dtype): it is
        # what a detector holds most of while it fills, and what only counts are read from.
        # Measurements fill as exact decimals where they are (``DecimalRing``).
        self.fill_dtype = dtype if fill_dtype is None or mode != "fixed" else fill_dtype
        # A fixed reference is released once full (see release): its memory must go back.
        self.ring: Ring | DecimalRing = (
            DecimalRing(size)
            if self.fill_dtype is DECIMAL
            else Ring(size, self.fill_dtype, returnable=mode == "fixed")
        )
        self.added = 0
        self.ready = False
        if initial is not None:
            self.ring = Ring(max(1, initial.size), dtype)
            self.ring.extend(initial)
            self.ready = True

    def fill(self, values: np.ndarray) -> int:
        """Fixed mode: take what the reference still needs; return how many were taken."""
        ring = self.ring
        take = ring.size - ring.count
        if values.size <= take:
            take = values.size
            ring.extend(values)
        elif take:
            ring.extend(values[:take])
        self.ready = ring.count >= ring.size
        if self.ready and isinstance(ring, DecimalRing):
            # Full: what reads a reference reads float64 values.
            self.ring = ring.as_ring(self.dtype)
        return take

    def release(self) -> None:
        """Fixed mode, once the detector has derived what it needs: drop the raw values.

        Every detector reads a fixed reference only in ``_on_reference``; its derived
        statistics (grid, counts, quantile) are its own state. The count stays, as the
        reference's sample size. A fixed reference of 10,000 float64 values is 78 KiB per
        detector, more than everything else a detector holds.
        """
        if self.mode != "fixed" or not self.ready or self.ring.size == 0:
            return
        # Released in the detector's own type: a steady checkpoint is the same whatever the
        # type the values filled in.
        released = Ring(0, self.dtype)
        released.count = self.ring.count
        self.ring = released

    def push(self, evicted: np.ndarray) -> bool:
        """Rolling mode: add values that left the window; True when a refresh is due."""
        if evicted.size == 0:
            return False
        self.ring.extend(evicted)
        self.added += evicted.size
        full = self.ring.count >= self.ring.size
        if full and (not self.ready or self.added >= max(1, self.ring.size // 4)):
            self.ready = True
            self.added = 0
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {
            "ring": self.ring.state(),
            "size": self.ring.size,
            "added": self.added,
            "ready": self.ready,
        }

    def load(self, state: dict[str, Any], dtype: Any) -> None:
        # A released reference was saved with size 0: its count alone. Values saved in
        # either type load into the fill type: the same whole numbers (0 / 1, codes).
        fixed = self.mode == "fixed"
        size = int(state["size"])
        self.dtype = dtype
        kind = self.fill_dtype if fixed and size else dtype
        if kind is DECIMAL:
            filling = DecimalRing(size)
            filling.load(state["ring"])
            self.ring = filling if filling.count < size else filling.as_ring(dtype)
        else:
            self.ring = Ring(size, kind, returnable=fixed)
            self.ring.load(state["ring"])
        self.added = int(state["added"])
        self.ready = bool(state["ready"])


def drop_nan(arr: np.ndarray) -> np.ndarray:
    """``arr`` without its NaN values; ``arr`` itself (no copy) when it holds none.

    >>> drop_nan(np.array([1.0, np.nan, np.inf])).tolist()
    [1.0, inf]
    """
    # One reduction tells whether there is any NaN at all (minimum propagates NaN, and cannot
    # overflow as a dot product of huge values does), so the mask and its copy are paid only
    # by batches that need them.
    if arr.size and math.isnan(_MIN(arr)):
        kept: np.ndarray = arr[~np.isnan(arr)]
        return kept
    return arr


def load_numeric_file(path: str) -> np.ndarray:
    """Reference values from a ``.npy`` array or a text file with one number per line."""
    file = Path(path)
    try:
        if file.suffix == ".npy":
            values = np.load(file, allow_pickle=False)
        else:
            values = np.loadtxt(file, dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read reference values from {path!r}: {err}") from err
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < 2:
        raise ValueError(f"reference file {path!r} holds {values.size} finite values, need 2+")
    return values


class WindowedDetector(BaseDetector[WindowSpecT]):
    """A current window tested against a reference every ``stride`` events.

    Subclasses say how values are prepared (``_prepare``), how derived reference statistics
    are computed (``_on_reference``) and what one test concludes (``_test``). The verdict
    turns only for a material and significant breach that has held for ``persist`` events.

    A numeric detector (``numeric_values``) applies :mod:`detectors.extremes`' rule: values
    entering its window are clamped to +-1e150 (infinities too), its complete reference and
    every later value are clipped to the reference's fence, and ``extremes`` counts them.
    """

    dtype: ClassVar[Any] = np.float64
    #: The type a fixed reference fills in when its detector reads only counts from it
    #: (``None``: ``dtype``). Exact by construction: the values are whole numbers that fit.
    reference_dtype: ClassVar[Any] = None
    #: The verdict a breach of this detector means.
    breach_verdict: ClassVar[Verdict] = Verdict.DRIFT
    #: Values are measurements (not 0 / 1 or category codes): the extreme-value rule applies.
    numeric_values: ClassVar[bool] = False
    #: Compared with an absolute limit, not a reference: no reference is kept, verdicts
    #: start at once (the ``...LimitDetector`` variants).
    absolute_limit: ClassVar[bool] = False

    def __init__(self, spec: WindowSpecT, *, family_size: int = 1, seed: int = 0) -> None:
        super().__init__(spec, family_size=family_size, seed=seed)
        self.alpha = test_alpha(spec.false_alarm_every, spec.stride, family_size)
        # Read on every update: plain attributes, not the spec model's.
        self._stride: int = spec.stride
        self._min_samples: int = spec.min_samples
        self._reference_file: np.ndarray | None = None
        if spec.reference.path is not None:
            self._reference_file = self._read_reference(spec.reference.path)
        self.reset()

    # -- hooks ------------------------------------------------------------------------------

    def _read_reference(self, path: str) -> np.ndarray:
        return load_numeric_file(path)

    def _reference_fill_dtype(self) -> Any:
        """The type a fixed reference fills in: ``reference_dtype``; for measurements held
        as float64, ``DECIMAL`` (half the bytes where values have few decimals, the same
        values); else ``dtype``."""
        if self.reference_dtype is not None:
            return self.reference_dtype
        if self.numeric_values and self.dtype is np.float64:
            return DECIMAL
        return self.dtype

    def _prepare(self, values: Any) -> np.ndarray:
        return drop_nan(np.asarray(values, dtype=np.float64).ravel())

    def _admit(self, arr: np.ndarray) -> np.ndarray:
        """Values about to enter the window, clipped to the fence (numeric detectors).

        Applied where values enter the window, chunk by chunk (a rolling reference may
        refresh its fence between two chunks of one call).
        """
        fence = self._fence
        if fence is None:
            return arr
        return fence.admit(arr, self.extremes)

    def _make_fence(self, reference: np.ndarray) -> Fence | None:
        """The fence values are clipped to, from the complete reference (numeric detectors)."""
        return Fence.of(reference)

    def _on_push(self, chunk: np.ndarray, evicted: np.ndarray) -> None:
        """Called after ``chunk`` entered the window and ``evicted`` left it."""

    @abc.abstractmethod
    def _on_reference(self) -> None:
        """Recompute derived reference statistics (the reference is ready)."""

    @abc.abstractmethod
    def _test(self) -> tuple[float, float, float, bool]:
        """(statistic, effect, threshold, candidate) for the current window."""

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: dict[str, Any]) -> None:
        return None

    def _reset_extra(self) -> None:
        return None

    # -- protocol ---------------------------------------------------------------------------

    def reset(self) -> None:
        spec = self.spec
        self._window = Ring(spec.window, self.dtype)
        self._reference = Reference(
            spec.reference.size,
            spec.reference.mode,
            self.dtype,
            self._reference_file,
            self._reference_fill_dtype(),
        )
        self._seen = 0
        self._gate = Persistence(spec.persist)
        self._last = INCONCLUSIVE
        self._short = INCONCLUSIVE
        self.extremes = ExtremeCounts()
        # Numeric detectors clamp magnitudes until their reference gives them a fence.
        self._fence: Fence | None = UNBOUNDED if self.numeric_values else None
        self._reset_extra()
        if self.absolute_limit:
            self._no_reference()
        if self._reference.ready:
            self._derive_reference()
            self._reference.release()

    def _no_reference(self) -> None:
        # An absolute limit needs no reference: mark it ready so verdicts start at once.
        reference = self._reference
        reference.ready = True
        reference.mode = "none"
        # Nothing fills it: held (and saved) in the detector's own type, as it always was.
        reference.fill_dtype = self.dtype
        reference.ring = Ring(reference.ring.size, self.dtype, returnable=True)

    def _derive_reference(self) -> None:
        """The reference is complete (or refreshed): fence it, then derive its statistics."""
        if self.numeric_values:
            ring = self._reference.ring
            held = ring.buf[: ring.count]
            # The reference came in raw: clamp it (rule 2) before its quantiles are read.
            clamped = UNBOUNDED.admit(held, self.extremes)
            first = self._fence is UNBOUNDED
            fence = self._make_fence(clamped)
            self._fence = UNBOUNDED if fence is None else fence
            admitted = self._fence.admit(clamped, self.extremes)
            if admitted is not held:
                held[:] = admitted
                log.info("%s reference clipped to %r", type(self).__name__, self._fence)
            if first and self._window.count:
                # A rolling reference's first window was filled before there was a fence.
                window = self._window.buf[: self._window.count]
                admitted = self._fence.admit(window, self.extremes)
                if admitted is not window:
                    window[:] = admitted
        self._on_reference()

    def _reference_moments(self, values: np.ndarray) -> tuple[float, float]:
        """Mean and std of reference ``values``, the fence's clipped values left out."""
        if self._fence is None:
            return float(values.mean()), float(values.std())
        return self._fence.moments(values)

    def update(self, value: Any) -> Reading:
        return self.update_many([value])

    def update_many(self, values: Any) -> Reading:
        arr = self._prepare(values)
        n = arr.size
        window = self._window
        if n == 0:
            self._last = Reading(
                math.nan,
                math.nan,
                Verdict.INCONCLUSIVE,
                window.count,
                self._last.threshold,
            )
            return self._last
        ref = self._reference
        if not ref.ready and ref.mode == "fixed":
            taken = ref.fill(arr)
            if ref.ready:
                self._derive_reference()
                ref.release()
            if taken == n:
                return self._untested()
            arr = arr[taken:]
            n -= taken
        stride = self._stride
        seen = self._seen
        rolling = ref.mode == "rolling"
        if seen % stride + n < stride:
            # Values that end no stride: no test runs and the last Reading stands (the same
            # object: callers skip it). Values are held back in one place only, by the
            # caller (the daemon's engine, between tests): here each call enters the window.
            arr = self._admit(arr)
            evicted = window.extend(arr)
            self._on_push(arr, evicted)
            if rolling and ref.push(evicted):
                self._derive_reference()
            self._seen = seen + n
            return self._untested()
        breached: Reading | None = None
        last: Reading | None = None
        i = 0
        while i < n:
            # Admitted chunk by chunk: a rolling reference may refresh its fence in between.
            chunk = self._admit(arr[i : i + stride - self._seen % stride])
            evicted = window.extend(chunk)
            self._on_push(chunk, evicted)
            if rolling and ref.push(evicted):
                self._derive_reference()
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
        """Values until the next test, once only a test changes the Reading: the fixed
        reference is ready and the window holds ``min_samples`` (a rolling reference may
        refresh sooner)."""
        window = self._window
        ref = self._reference
        if ref.mode == "rolling" or not ref.ready or window.count < self._min_samples:
            return None
        return self._stride - self._seen % self._stride

    def _untested(self) -> Reading:
        """The Reading after values that ran no test: the last one once testing can start."""
        count = self._window.count
        if self._reference.ready and count >= self._min_samples:
            return self._last
        # While the reference or the window fills, equal Readings are one object.
        short = self._short
        if short.samples != count:
            short = self._short = Reading(math.nan, math.nan, Verdict.INCONCLUSIVE, count)
        self._last = short
        return short

    def _evaluate(self) -> Reading:
        count = self._window.count
        if not self._reference.ready or count < self._min_samples:
            self._gate.step(False, self._seen)
            return Reading(math.nan, math.nan, Verdict.INCONCLUSIVE, count)
        statistic, effect, threshold, candidate = self._test()
        if math.isnan(statistic):
            self._gate.step(False, self._seen)
            return Reading(statistic, effect, Verdict.INCONCLUSIVE, count, threshold)
        fired = self._gate.step(candidate, self._seen)
        verdict = self.breach_verdict if fired else Verdict.OK
        return Reading(statistic, effect, verdict, count, threshold)

    def _state(self) -> dict[str, Any]:
        return {
            "window": self._window.state(),
            "reference": self._reference.state(),
            "seen": self._seen,
            "since": self._gate.since,
            "extra": self._extra_state(),
            "fence": None if self._fence is None else self._fence.to_list(),
            "extremes": [self.extremes.infinite, self.extremes.clipped],
        }

    def _load(self, state: dict[str, Any]) -> None:
        self._window.load(state["window"])
        self._reference.load(state["reference"], self.dtype)
        # Derived reference statistics are in the extra state: raw values are not needed.
        self._reference.release()
        self._seen = int(state["seen"])
        since = state["since"]
        self._gate.since = None if since is None else int(since)
        # Checkpoints written before the extreme-value rule have no fence: values are still
        # clamped (rule 2), but a released reference cannot give one.
        try:
            fence = Fence.from_list(state.get("fence"))
            if self.numeric_values and (fence is None or fence.to_list() == UNBOUNDED.to_list()):
                fence = UNBOUNDED
            self._fence = fence
            infinite, clipped = state.get("extremes", (0, 0))
            self.extremes = ExtremeCounts(int(infinite), int(clipped))
        except (TypeError, ValueError, IndexError) as err:
            raise StateError(f"detector state holds an invalid fence or counts: {err}") from err
        self._load_extra(state["extra"])
        if self.absolute_limit:
            self._no_reference()


class RiverGatedDetector(WindowedDetector[WindowSpecT]):
    """A River drift detector fed value by value, whose alarms count only when material.

    River's detectors answer "did the stream change?" with no notion of how much; the gate
    asks "is the current window's mean (or rate) still away from the reference by at least
    the configured amount, and did River fire within the last window?".
    """

    @abc.abstractmethod
    def _make_river(self) -> Any:
        """A fresh River detector configured from the spec and the family size."""

    @abc.abstractmethod
    def _materiality(self) -> float:
        """The effect the gate asks for: ``min_shift`` (numeric, in reference std) or
        ``min_difference`` (rates)."""

    @abc.abstractmethod
    def _direction(self) -> Direction:
        """Which way the effect must go to count."""

    def _transform(self, chunk: np.ndarray) -> list[Any]:
        return list(chunk.tolist())

    def _location_scale(self, values: np.ndarray) -> tuple[float, float]:
        """The reference's location and the scale the gate's effect is measured in."""
        return float(values.mean()), 1.0

    def _reset_extra(self) -> None:
        self._river = self._make_river()
        self._fired_at: int | None = None
        self._ref_mean = math.nan
        self._ref_scale = math.nan
        self._tau = 1.0

    def _on_reference(self) -> None:
        values = self._reference.ring.values()
        self._ref_mean, self._ref_scale = self._location_scale(values)
        self._tau = autocorrelation_time(self._reference.ring.ordered())

    def _on_push(self, chunk: np.ndarray, evicted: np.ndarray) -> None:
        if not self._reference.ready:
            return
        river = self._river
        base = self._seen + 1
        for j, x in enumerate(self._transform(chunk)):
            river.update(x)
            # River raises drift_detected for one update only: read it right away.
            if river.drift_detected:
                self._fired_at = base + j

    def _standard_error(self, effect: float, n: int) -> float:
        """Standard error of ``effect`` for a window of ``n`` values (in effect units)."""
        m = self._reference.ring.count
        return math.sqrt(self._tau * (1.0 / n + 1.0 / m))

    def _test(self) -> tuple[float, float, float, bool]:
        gate = self._materiality()
        scale = self._ref_scale
        if not scale > 0:
            return math.nan, math.nan, gate, False
        values = self._window.values()
        effect = (float(values.mean()) - self._ref_mean) / scale
        direction = self._direction()
        if direction == "increase":
            signed = effect
        elif direction == "decrease":
            signed = -effect
        else:
            signed = abs(effect)
        # Beyond chance too, at the family-corrected alpha: River's own test has no
        # notion of the family, and a material-looking window can be noise.
        z = signed / max(self._standard_error(effect, values.size), 1e-12)
        critical_z = normal_isf(self.alpha if direction != "both" else self.alpha / 2.0)
        recent = self._fired_at is not None and self._seen - self._fired_at <= self.spec.window
        candidate = signed >= gate and z >= critical_z and recent
        return abs(effect), effect, gate, bool(candidate)

    def _extra_state(self) -> dict[str, Any]:
        return {
            "river": self._river,
            "fired_at": self._fired_at,
            "ref": [self._ref_mean, self._ref_scale, self._tau],
        }

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._river = state["river"]
        self._fired_at = None if state["fired_at"] is None else int(state["fired_at"])
        self._ref_mean, self._ref_scale, self._tau = (float(v) for v in state["ref"])
