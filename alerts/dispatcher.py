"""The alert dispatcher: non-blocking fire/resolve, one bounded queue and worker per sink.

It owns the set of active incidents, de-duplication (one incident = one page), retries with
backoff, re-sends to Alertmanager, sink health (metrics and callback) and the flush on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from prometheus_client import Counter, Gauge

from alerts.base import AcknowledgingSink, Alert, AlertSink, ResendingSink, severity_rank
from alerts.errors import AlertSinkError
from alerts.incidents import news

__all__ = [
    "AlertDispatcher",
    "DeliveryCallback",
    "DispatcherMetrics",
    "SinkHealthCallback",
    "sink_down_alert",
]

log = logging.getLogger(__name__)


class DispatcherMetrics(Protocol):
    """The three series the dispatcher writes; ``monitor``'s ``Metrics`` has them.

    A Protocol so that alerts needs nothing from monitor: any object with these attributes
    (labelled by ``sink``, and ``sink``/``status``/``outcome`` for the counter) will do.
    """

    @property
    def alert_sink_up(self) -> Gauge: ...

    @property
    def alert_queue_depth(self) -> Gauge: ...

    @property
    def alerts_sent(self) -> Counter: ...


Action = Literal["fire", "resolve", "acknowledge"]
#: The ``status`` label of ``driftwarden_alert_deliveries_total`` per action.
_STATUS: dict[Action, str] = {
    "fire": "firing",
    "resolve": "resolved",
    "acknowledge": "acknowledged",
}
#: Called with the sink's name and whether it now delivers; the daemon raises a self-alert.
SinkHealthCallback = Callable[[str, bool], None]
#: Called with the sink's name, the action and the alert when a delivery to that sink is
#: over for good (delivered, given up, or superseded by a newer one), never when it was only
#: dropped (queue full, not flushed on stop): the caller's persisted outbox then keeps it.
DeliveryCallback = Callable[[str, str, Alert], None]
#: While flushing on stop, a failing sink is retried at least this often.
_FLUSH_RETRY_S = 0.25


def sink_down_alert(sink_name: str, *, runbook_url: str = "", severity: str = "page") -> Alert:
    """The self-alert for an alert sink that fails its deliveries.

    Fire it from ``on_sink_health(name, False)`` and resolve it on ``(name, True)``; while the
    sink is down the alert reaches the other sinks.

    >>> sink_down_alert("pagerduty").dedup_key
    'driftwarden/alert-sink/pagerduty/AlertSinkDown'
    """
    return Alert(
        model=f"alert-sink/{sink_name}",
        alertname="AlertSinkDown",
        severity=severity,
        state="degraded",
        signals=("alert_sink_up",),
        summary=f"driftwarden cannot deliver alerts to sink {sink_name!r}",
        description=(
            f"Deliveries to the alert sink {sink_name!r} are failing; they are queued and "
            "retried. See driftwarden_alert_sink_up and driftwarden_alert_queue_depth."
        ),
        runbook_url=runbook_url,
        starts_at=datetime.now(UTC),
        values={"alert_sink_up": 0.0},
        labels={"sink": sink_name},
    )


@dataclass(slots=True)
class _Delivery:
    action: Action
    alert: Alert
    #: Set when a newer delivery of the same incident makes this one pointless.
    superseded: bool = False

    @property
    def key(self) -> str:
        return self.alert.dedup_key


class _Lane:
    """One sink's queue, its bookkeeping and its bound metric children.

    A superseded delivery stays in the deque, flagged, until the worker skips it: that keeps
    every push O(1) however long the queue of a dead sink grows.
    """

    def __init__(self, sink: AlertSink, metrics: DispatcherMetrics, queue_size: int) -> None:
        self.sink = sink
        self.name = sink.name
        # Duck-typed so that any AlertSink works; ours all carry it.
        self.min_rank = severity_rank(str(getattr(sink, "min_severity", "info")))
        self.queue: deque[_Delivery] = deque()
        self.queue_size = queue_size
        #: Deliveries in ``queue`` not superseded.
        self.live = 0
        #: The one pending (not in flight) fire of each incident.
        self.pending_fire: dict[str, _Delivery] = {}
        self.wakeup = asyncio.Event()
        self.in_flight: _Delivery | None = None
        #: Incidents fired to this sink and not yet resolved.
        self.open: set[str] = set()
        #: Incidents this sink was asked to fire at least once; only those need a resolve.
        self.touched: set[str] = set()
        self.up = True
        self.worker: asyncio.Task[None] | None = None
        self.resender: asyncio.Task[None] | None = None
        self._up_gauge = metrics.alert_sink_up.labels(sink=self.name)
        self._depth_gauge = metrics.alert_queue_depth.labels(sink=self.name)
        self._deliveries = metrics.alerts_sent
        self._counters: dict[tuple[str, str], Counter] = {}
        self.on_done: DeliveryCallback | None = None

    def count(self, delivery: _Delivery, outcome: str) -> None:
        # Every delivery ends in exactly one count other than ``retry``: the place to tell
        # the owner of the outbox that this sink needs it no more.
        if outcome not in ("retry", "dropped") and self.on_done is not None:
            try:
                self.on_done(self.name, delivery.action, delivery.alert)
            except Exception:
                log.exception("on_delivered callback failed for sink %s", self.name)
        status = _STATUS[delivery.action]
        counter = self._counters.get((status, outcome))
        if counter is None:
            counter = self._deliveries.labels(sink=self.name, status=status, outcome=outcome)
            self._counters[status, outcome] = counter
        counter.inc()

    def depth(self) -> int:
        return self.live + (self.in_flight is not None)

    def update_depth(self) -> None:
        self._depth_gauge.set(self.depth())

    def set_up_gauge(self) -> None:
        self._up_gauge.set(1 if self.up else 0)

    def busy(self, key: str) -> bool:
        """Whether a fire of ``key`` is pending or any delivery of it is in flight."""
        return key in self.pending_fire or (
            self.in_flight is not None and self.in_flight.key == key
        )

    def push(self, delivery: _Delivery) -> None:
        key = delivery.key
        if delivery.action != "acknowledge":
            # A newer fire or a resolve makes a pending fire of the same incident stale: the
            # sink learns the latest state only, and never a page for an incident already over.
            stale = self.pending_fire.pop(key, None)
            if stale is not None:
                self._discard(stale, "superseded")
            if self.in_flight is not None and self.in_flight.key == key:
                self.in_flight.superseded = self.in_flight.action == "fire"
        if delivery.action == "resolve":
            if key not in self.touched:
                self.count(delivery, "superseded")
                self.update_depth()
                return
            self.touched.discard(key)
        while self.live >= self.queue_size:
            oldest = self.queue.popleft()
            if oldest.superseded:
                continue
            if self.pending_fire.get(oldest.key) is oldest:
                del self.pending_fire[oldest.key]
            self.live -= 1
            self.count(oldest, "dropped")
            log.warning(
                "alert sink %s: queue full (%d), dropped the oldest delivery: %s %s",
                self.name,
                self.queue_size,
                oldest.action,
                oldest.key,
            )
        if len(self.queue) > 2 * self.queue_size:
            self.queue = deque(d for d in self.queue if not d.superseded)
        self.queue.append(delivery)
        self.live += 1
        if delivery.action == "fire":
            self.pending_fire[key] = delivery
        self.update_depth()
        self.wakeup.set()

    def take(self) -> _Delivery | None:
        """Move the next live delivery in flight; None when nothing is pending."""
        while self.queue:
            delivery = self.queue.popleft()
            if delivery.superseded:
                continue
            self.live -= 1
            if self.pending_fire.get(delivery.key) is delivery:
                del self.pending_fire[delivery.key]
            self.in_flight = delivery
            return delivery
        return None

    def drain(self) -> list[_Delivery]:
        """Empty the lane; return what was pending or in flight."""
        left = [d for d in self.queue if not d.superseded]
        if self.in_flight is not None:
            left.append(self.in_flight)
        self.queue.clear()
        self.pending_fire.clear()
        self.live = 0
        self.in_flight = None
        self.update_depth()
        return left

    def _discard(self, delivery: _Delivery, outcome: str) -> None:
        delivery.superseded = True
        self.live -= 1
        self.count(delivery, outcome)


class AlertDispatcher:
    """Deliver alerts to every sink without ever blocking the caller.

    ``fire`` and ``resolve`` only enqueue; each sink has its own bounded queue and worker, so a
    slow or dead sink delays nobody else. Firing an incident that is already active with the
    same state, severity and signals notifies no sink again (one incident = one page); a change
    of state is a new notification of the same incident (same PagerDuty ``dedup_key``).
    Alertmanager, which expires alerts it stops hearing about, gets every firing alert again
    each ``resend_interval_s`` (:class:`alerts.base.ResendingSink`).

    Parameters
    ----------
    sinks
        The sinks; their names must be distinct. The dispatcher starts and stops them.
    metrics
        Where ``driftwarden_alert_sink_up``, ``driftwarden_alert_queue_depth`` and
        ``driftwarden_alert_deliveries_total{sink,status,outcome}`` live. Outcomes: ``ok``,
        ``retry`` (a retriable failure, retried), ``failed`` (given up), ``dropped`` (queue full
        or not flushed on stop), ``superseded`` (a newer delivery of the incident replaced it).
    queue_size
        Pending deliveries per sink; when full, the oldest is dropped and counted.
    max_backoff_s
        Ceiling of the exponential backoff between retries of a retriable failure.
    initial_backoff_s
        First backoff; each retry doubles it, with jitter in [50 %, 100 %].
    delivery_timeout_s
        Deadline of one delivery attempt, on top of the sink's own HTTP timeout.
    on_sink_health
        Called as ``on_sink_health(sink_name, up)`` each time a sink's health flips: down on
        its first failed delivery, up on its next success.
    """

    def __init__(
        self,
        sinks: Iterable[AlertSink],
        metrics: DispatcherMetrics,
        *,
        queue_size: int = 1000,
        max_backoff_s: float = 60.0,
        initial_backoff_s: float = 0.5,
        delivery_timeout_s: float = 30.0,
        on_sink_health: SinkHealthCallback | None = None,
        on_delivered: DeliveryCallback | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1.")
        if not 0 < initial_backoff_s <= max_backoff_s:
            raise ValueError("initial_backoff_s must be positive and at most max_backoff_s.")
        self.queue_size = queue_size
        self.max_backoff_s = max_backoff_s
        self.initial_backoff_s = initial_backoff_s
        self.delivery_timeout_s = delivery_timeout_s
        self.on_sink_health = on_sink_health
        self._lanes = [_Lane(sink, metrics, queue_size) for sink in sinks]
        names = [lane.name for lane in self._lanes]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be distinct, got {names}.")
        self.on_delivered = on_delivered
        #: Called with the sink's name and the alert before each attempt (crash tests' kill
        #: point between the decision and the send).
        self.on_sending: Callable[[str, Alert], None] | None = None
        for lane in self._lanes:
            lane.on_done = self._delivered
        self._active: dict[str, Alert] = {}
        self._started = False
        self._closing = asyncio.Event()
        for lane in self._lanes:
            lane.set_up_gauge()
            lane.update_depth()

    async def __aenter__(self) -> AlertDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the caller's side: never blocks ------------------------------------------------------

    def adopt(self, alert: Alert) -> None:
        """Take over an incident another replica already notified (restored from a
        checkpoint): it becomes active and is re-sent and resolved as usual, with no new page.
        """
        key = alert.dedup_key
        if key in self._active:
            return
        self._active[key] = alert
        rank = severity_rank(alert.severity)
        for lane in self._lanes:
            if rank >= lane.min_rank:
                # The previous owner notified this sink: it needs the resolve from us.
                lane.open.add(key)
                lane.touched.add(key)

    def release(self, model: str) -> None:
        """Hand the incidents of ``model`` over to another replica: forget them without
        notifying anyone (the new owner adopts them from the checkpoint).
        """
        for key in [k for k, a in self._active.items() if a.model == model]:
            del self._active[key]
            for lane in self._lanes:
                lane.open.discard(key)
                lane.touched.discard(key)

    def fire(self, alert: Alert) -> list[str]:
        """Open or update the incident of ``alert``; enqueue notifications if it is news.

        Returns the names of the sinks a notification was queued for (none: not news).
        """
        if alert.resolved:
            return self.resolve(alert)
        key = alert.dedup_key
        current = self._active.get(key)
        if current is not None:
            # The incident keeps its first start time through every state change.
            alert = replace(alert, starts_at=current.starts_at)
        self._active[key] = alert
        if news(current, alert) is None:
            return []
        rank = severity_rank(alert.severity)
        queued = []
        for lane in self._lanes:
            if rank >= lane.min_rank:
                lane.open.add(key)
                lane.push(_Delivery("fire", alert))
                queued.append(lane.name)
        return queued

    def resolve(self, alert: Alert) -> list[str]:
        """Close the incident of ``alert`` (model and alertname); a no-op when none is active.

        Sinks receive the incident as last fired (same labels, so Alertmanager matches it),
        with ``ends_at`` from ``alert`` or now, ``alert``'s values and idempotency key.
        Returns the names of the sinks a resolve was queued for.
        """
        key = alert.dedup_key
        current = self._active.pop(key, None)
        if current is None:
            # alerts.incidents.news: a resolve with no open incident is no news.
            log.debug("resolve of %s ignored: not active", key)
            return []
        ended = replace(
            current,
            ends_at=alert.ends_at or datetime.now(UTC),
            values=alert.values or current.values,
            idempotency_key=alert.idempotency_key or current.idempotency_key,
        )
        queued = []
        for lane in self._lanes:
            if key in lane.open:
                lane.open.discard(key)
                lane.push(_Delivery("resolve", ended))
                queued.append(lane.name)
        return queued

    def redeliver(self, action: str, alert: Alert, sinks: Iterable[str]) -> None:
        """Queue again a notification that was handed to ``sinks`` and not confirmed before a
        restart (restored from a checkpoint), with its idempotency key unchanged.

        Call it after :meth:`adopt`, oldest notification first: a newer one supersedes an
        older one still pending, as when they were first queued.
        """
        wanted = set(sinks)
        key = alert.dedup_key
        for lane in self._lanes:
            if lane.name not in wanted:
                continue
            # The sink may have received the fire before the crash: it needs the resolve.
            lane.touched.add(key)
            if action == "resolve":
                lane.open.discard(key)
                lane.push(_Delivery("resolve", alert))
            else:
                lane.open.add(key)
                lane.push(_Delivery("fire", alert))

    def _delivered(self, sink_name: str, action: str, alert: Alert) -> None:
        if self.on_delivered is not None:
            self.on_delivered(sink_name, action, alert)

    def acknowledge(self, alert: Alert) -> bool:
        """Acknowledge the active incident of ``alert`` on sinks that support it (PagerDuty).

        Returns whether the incident was active.
        """
        current = self._active.get(alert.dedup_key)
        if current is None:
            return False
        for lane in self._lanes:
            if isinstance(lane.sink, AcknowledgingSink) and current.dedup_key in lane.open:
                lane.push(_Delivery("acknowledge", current))
        return True

    def current(self, alert: Alert) -> Alert | None:
        """The active incident ``alert`` belongs to (same model and alertname), if any."""
        return self._active.get(alert.dedup_key)

    def active(self) -> list[Alert]:
        """The open incidents, oldest first."""
        return sorted(self._active.values(), key=lambda a: (a.starts_at, a.dedup_key))

    def queue_depth(self, sink_name: str) -> int:
        """Deliveries waiting for (or in flight to) ``sink_name``."""
        return next(lane.depth() for lane in self._lanes if lane.name == sink_name)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sinks, one worker per sink and the re-senders; idempotent."""
        if self._started:
            return
        self._started = True
        self._closing.clear()
        for lane in self._lanes:
            await lane.sink.start()
            lane.worker = asyncio.create_task(self._work(lane), name=f"alert-sink-{lane.name}")
            if isinstance(lane.sink, ResendingSink):
                lane.resender = asyncio.create_task(
                    self._resend(lane, lane.sink.resend_interval_s),
                    name=f"alert-resend-{lane.name}",
                )
        log.info("alert dispatcher started: %s", ", ".join(lane.name for lane in self._lanes))

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Deliver what is pending within ``flush_timeout_s``, then stop the sinks; idempotent.

        Deliveries still pending at the deadline are counted as ``dropped`` and logged.
        """
        if not self._started:
            return
        self._started = False
        self._closing.set()
        resenders = [lane.resender for lane in self._lanes if lane.resender is not None]
        for task in resenders:
            task.cancel()
        workers = [lane.worker for lane in self._lanes if lane.worker is not None]
        for lane in self._lanes:
            lane.wakeup.set()
        if workers:
            _, late = await asyncio.wait(workers, timeout=flush_timeout_s)
            for task in late:
                task.cancel()
        await asyncio.gather(*resenders, *workers, return_exceptions=True)
        for lane in self._lanes:
            lane.worker = lane.resender = None
            left = lane.drain()
            for delivery in left:
                lane.count(delivery, "dropped")
            if left:
                log.warning(
                    "alert sink %s: %d deliveries not flushed within %.1f s",
                    lane.name,
                    len(left),
                    flush_timeout_s,
                )
            try:
                await lane.sink.stop()
            except Exception:
                log.exception("alert sink %s: stop failed", lane.name)
        log.info("alert dispatcher stopped")

    # -- workers ------------------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        while True:
            delivery = lane.take()
            if delivery is None:
                if self._closing.is_set():
                    return
                lane.wakeup.clear()
                await lane.wakeup.wait()
                continue
            await self._deliver(lane, delivery)
            lane.in_flight = None
            lane.update_depth()

    async def _deliver(self, lane: _Lane, delivery: _Delivery) -> None:
        attempt = 0
        while not delivery.superseded:
            if delivery.action == "fire":
                lane.touched.add(delivery.key)
            error = await self._attempt(lane, delivery)
            if error is None:
                lane.count(delivery, "ok")
                self._set_up(lane, True)
                return
            self._set_up(lane, False)
            if not error.retriable:
                lane.count(delivery, "failed")
                log.error(
                    "alert sink %s: %s of %s failed, not retrying: %s",
                    lane.name,
                    delivery.action,
                    delivery.key,
                    error,
                )
                return
            lane.count(delivery, "retry")
            delay = self._backoff(attempt)
            attempt += 1
            log.warning(
                "alert sink %s: %s of %s failed (attempt %d), retrying in %.2f s: %s",
                lane.name,
                delivery.action,
                delivery.key,
                attempt,
                delay,
                error,
            )
            await self._pause(delay)
        lane.count(delivery, "superseded")

    async def _attempt(self, lane: _Lane, delivery: _Delivery) -> AlertSinkError | None:
        sink = lane.sink
        if self.on_sending is not None:
            self.on_sending(lane.name, delivery.alert)
        try:
            async with asyncio.timeout(self.delivery_timeout_s):
                if delivery.action == "acknowledge":
                    assert isinstance(sink, AcknowledgingSink)
                    await sink.acknowledge(delivery.alert)
                else:
                    await sink.send(delivery.alert)
        except AlertSinkError as err:
            return err
        except TimeoutError:
            return AlertSinkError(
                f"{lane.name}: no answer within {self.delivery_timeout_s:g} s", retriable=True
            )
        except Exception as err:
            # A bug in one sink must not kill its worker; it is not worth retrying either.
            log.exception("alert sink %s: unexpected error", lane.name)
            return AlertSinkError(f"{lane.name}: {type(err).__name__}", retriable=False)
        return None

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** min(attempt, 30))
        # Jitter keeps replicas that lost the same sink from retrying in lockstep.
        return ceiling * random.uniform(0.5, 1.0)

    async def _pause(self, delay: float) -> None:
        if self._closing.is_set():
            await asyncio.sleep(min(delay, _FLUSH_RETRY_S))
            return
        # stop() cuts a long backoff short so that the flush gets its chance.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    async def _resend(self, lane: _Lane, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            for key in sorted(lane.open):
                if not lane.busy(key):
                    lane.push(_Delivery("fire", self._active[key]))

    def _set_up(self, lane: _Lane, up: bool) -> None:
        if lane.up == up:
            return
        lane.up = up
        lane.set_up_gauge()
        if up:
            log.info("alert sink %s: delivering again", lane.name)
        else:
            log.warning("alert sink %s: deliveries failing", lane.name)
        if self.on_sink_health is not None:
            try:
                self.on_sink_health(lane.name, up)
            except Exception:
                log.exception("on_sink_health callback failed for sink %s", lane.name)
