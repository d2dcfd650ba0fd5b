"""The flag actuator: the bounded, coalescing write queue in front of one flag backend.

Owns retries with backoff, operator pins, backend health (metrics and callback) and flushing
on shutdown, so that a backend that is down never blocks consumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from monitor.errors import FlagBackendError
from monitor.failpoints import failpoint
from monitor.flags.base import FlagBackend, FlagValue
from monitor.observability.metrics import Metrics

__all__ = ["FlagActuator"]

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class _Desire:
    value: FlagValue
    key: str
    requested_at: float


def _same(a: FlagValue | None, b: FlagValue | None) -> bool:
    # True == 1 in Python, but a boolean flag and a numeric one are different values.
    return type(a) is type(b) and a == b


class FlagActuator:
    """Applies desired flag values to a backend in the background, latest value wins.

    ``request`` only records the desired value and wakes the worker: it never waits for the
    backend. Requests for one flag coalesce, so the queue holds at most one write per flag and
    ``queue_size`` bounds the number of flags waiting. One worker task writes them in order;
    a retriable failure is retried with exponential backoff and jitter (from
    ``initial_backoff_s`` up to ``max_backoff_s``) until it lands, a non-retriable one is
    logged, counted as ``failed`` and dropped.

    An operator pin wins over automation: while a flag is pinned the pinned value is written and
    automation requests for it are recorded but not applied; ``unpin`` applies the latest
    automation request, if there was one, and otherwise leaves the pinned value in place.

    Parameters
    ----------
    backend
        The backend to write to; the actuator starts and stops it.
    metrics
        Where ``driftwarden_flag_backend_up``, ``driftwarden_flag_queue_depth`` and
        ``driftwarden_flag_writes_total`` (outcome ``ok``, ``retry``, ``failed``, ``dropped``)
        are kept, labelled with the backend's name.
    on_backend_health
        Called with ``(backend name, up)`` when the backend goes down or comes back.
    on_applied
        Called with ``(flag, value, key)`` after each successful write, for the audit trail.
    """

    def __init__(
        self,
        backend: FlagBackend,
        metrics: Metrics,
        *,
        queue_size: int = 1000,
        max_backoff_s: float = 30.0,
        initial_backoff_s: float = 0.5,
        on_backend_health: Callable[[str, bool], None] | None = None,
        on_applied: Callable[[str, FlagValue, str], None] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1.")
        if not 0 < initial_backoff_s <= max_backoff_s:
            raise ValueError("initial_backoff_s must be positive and at most max_backoff_s.")
        self.backend = backend
        self.metrics = metrics
        self.queue_size = queue_size
        self.max_backoff_s = max_backoff_s
        self.initial_backoff_s = initial_backoff_s
        self.on_backend_health = on_backend_health
        self.on_applied = on_applied
        name = backend.name
        self._up_gauge = metrics.flag_backend_up.labels(backend=name)
        self._depth_gauge = metrics.flag_queue_depth.labels(backend=name)
        self._writes = {
            outcome: metrics.flag_writes.labels(backend=name, outcome=outcome)
            for outcome in ("ok", "retry", "failed", "dropped")
        }
        self._desired: dict[str, _Desire] = {}
        self._pins: dict[str, _Desire] = {}
        self._applied: dict[str, FlagValue] = {}
        # Insertion-ordered set of flags whose target has not been written yet.
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._up = True
        self._failures = 0
        self._up_gauge.set(1)
        self._depth_gauge.set(0)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._worker is not None:
            return
        await self.backend.start()
        self._worker = asyncio.create_task(self._run(), name=f"flag-actuator-{self.backend.name}")

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Write what is pending within ``flush_timeout_s``, then stop the worker and backend."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        deadline = time.monotonic() + flush_timeout_s
        while self._pending and not worker.done() and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if self._pending:
            log.warning(
                "flag backend %s: stopping with %d unwritten flag(s): %s",
                self.backend.name,
                len(self._pending),
                ", ".join(sorted(self._pending)),
            )
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        await self.backend.stop()

    async def __aenter__(self) -> FlagActuator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what the engine and the operator API call ------------------------------------------

    def request(self, flag: str, value: FlagValue, *, key: str) -> None:
        """Ask for ``flag`` to hold ``value``; returns at once, the write happens later.

        ``key`` identifies the decision (e.g. model, transition and time) in the audit trail.
        """
        desire = _Desire(value, key, time.monotonic())
        if flag in self._pins:
            self._desired[flag] = desire
            log.info(
                "flag %s is pinned to %r: automation wants %r (key %s), kept until unpinned",
                flag,
                self._pins[flag].value,
                value,
                key,
            )
            return
        if flag not in self._pending and len(self._pending) >= self.queue_size:
            self._writes["dropped"].inc()
            log.warning(
                "flag backend %s: queue full (%d), dropping %s=%r (key %s)",
                self.backend.name,
                self.queue_size,
                flag,
                value,
                key,
            )
            return
        self._desired[flag] = desire
        self._enqueue(flag)

    def pin(self, flag: str, value: FlagValue, *, key: str | None = None) -> None:
        """Operator override: hold ``flag`` at ``value`` whatever automation requests."""
        self._pins[flag] = _Desire(value, key or f"pin:{flag}", time.monotonic())
        log.info("flag %s pinned to %r", flag, value)
        self._enqueue(flag)

    def unpin(self, flag: str) -> None:
        """Release a pin; the latest automation request for ``flag``, if any, is applied."""
        if self._pins.pop(flag, None) is None:
            return
        log.info("flag %s unpinned", flag)
        if flag in self._desired:
            self._enqueue(flag)
        else:
            self._pending.pop(flag, None)
            self._depth_gauge.set(len(self._pending))

    def pins(self) -> dict[str, FlagValue]:
        """Pinned flags and their values."""
        return {flag: desire.value for flag, desire in self._pins.items()}

    def desired(self) -> dict[str, FlagValue]:
        """What automation last requested per flag, applied or not."""
        return {flag: desire.value for flag, desire in self._desired.items()}

    def applied(self) -> dict[str, FlagValue]:
        """What was last written per flag."""
        return dict(self._applied)

    def pending(self) -> list[str]:
        """Flags waiting for their write, oldest first."""
        return list(self._pending)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def backend_up(self) -> bool:
        return self._up

    async def current(self, flag: str, *, timeout_s: float = 5.0) -> FlagValue | None:
        """The value services see now, to remember before changing it.

        Falls back to the last value this actuator wrote when the backend cannot answer.
        """
        try:
            return await asyncio.wait_for(self.backend.get(flag), timeout=timeout_s)
        except (FlagBackendError, TimeoutError) as err:
            log.warning(
                "flag backend %s: cannot read %s (%s); using the last written value",
                self.backend.name,
                flag,
                err,
            )
            return self._applied.get(flag)

    # -- the worker --------------------------------------------------------------------------

    def _enqueue(self, flag: str) -> None:
        self._pending[flag] = None
        self._depth_gauge.set(len(self._pending))
        self._wake.set()

    def _target(self, flag: str) -> _Desire | None:
        return self._pins.get(flag) or self._desired.get(flag)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            flag = next(iter(self._pending))
            target = self._target(flag)
            if target is None:
                self._pending.pop(flag, None)
                self._depth_gauge.set(len(self._pending))
                continue
            failpoint("flag.before_write")
            try:
                await self.backend.set(flag, target.value)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                retriable = err.retriable if isinstance(err, FlagBackendError) else True
                if not isinstance(err, FlagBackendError):
                    log.exception(
                        "flag backend %s: unexpected error on %s", self.backend.name, flag
                    )
                self._set_health(False, err)
                if retriable:
                    self._writes["retry"].inc()
                    await asyncio.sleep(self._backoff())
                else:
                    self._writes["failed"].inc()
                    log.error(
                        "flag backend %s: giving up %s=%r (key %s): %s",
                        self.backend.name,
                        flag,
                        target.value,
                        target.key,
                        err,
                    )
                    self._done(flag, target)
                continue
            failpoint("flag.written")
            self._failures = 0
            self._set_health(True, None)
            self._writes["ok"].inc()
            self._applied[flag] = target.value
            self._done(flag, target)
            if self.on_applied is not None:
                try:
                    self.on_applied(flag, target.value, target.key)
                except Exception:
                    log.exception("on_applied callback failed for %s", flag)

    def _done(self, flag: str, written: _Desire) -> None:
        # A newer request that arrived during the write keeps the flag queued.
        latest = self._target(flag)
        if latest is None or latest is written or _same(latest.value, written.value):
            self._pending.pop(flag, None)
        self._depth_gauge.set(len(self._pending))

    def _backoff(self) -> float:
        self._failures += 1
        growth = 2.0 ** min(self._failures - 1, 32)
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * growth)
        # Equal jitter: replicas that lost the same backend do not retry in lockstep.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _set_health(self, up: bool, err: BaseException | None) -> None:
        if up == self._up:
            return
        self._up = up
        self._up_gauge.set(1 if up else 0)
        if up:
            log.info("flag backend %s is back", self.backend.name)
        else:
            log.error("flag backend %s is down: %s", self.backend.name, err)
        if self.on_backend_health is not None:
            try:
                self.on_backend_health(self.backend.name, up)
            except Exception:
                log.exception("on_backend_health callback failed for %s", self.backend.name)
