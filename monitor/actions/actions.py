"""Carrying out what a health transition decides: flag flips (and their restore) through the
actuator, notifications through the alert dispatcher, review sampling, and the operator's
pins, silences and acknowledgements. The audit trail lives in ``audit``, the persisted intent
in ``effects``, the decision rules in ``decisions``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from alerts.base import Alert
from alerts.config import build_sinks
from alerts.dispatcher import AlertDispatcher, sink_down_alert
from monitor.actions.audit import AuditLog, transition_entry
from monitor.actions.decisions import (
    ALERTNAME,
    AlertDecision,
    ReviewSampler,
    ReviewVerdict,
    decide_alert,
    flag_intent,
    incident_alert,
    review_at,
)
from monitor.actions.effects import OUTBOX_LIMIT, Effects, FlagPlan, Notice
from monitor.config.policy import Level, ModelPolicy, ReviewAction
from monitor.engine.health import Transition
from monitor.failpoints import failpoint
from monitor.flags.actuator import FlagActuator
from monitor.flags.base import FlagValue
from monitor.flags.config import build_backend
from monitor.observability.metrics import Metrics

if TYPE_CHECKING:
    from monitor.config.settings import Settings
    from monitor.engine.engine import Engine
    from monitor.engine.events import Event
    from monitor.kafka.side_topics import SideTopicWriter

__all__ = ["ALERTNAME", "Actions", "AuditLog", "Effects"]

log = logging.getLogger(__name__)

FLAG_BACKEND_DOWN = "FlagBackendDown"
#: alertname of alerts.dispatcher.sink_down_alert.
ALERT_SINK_DOWN = "AlertSinkDown"


#: Marks "no entry" where None is a value.
_MISSING: Any = object()


class Actions:
    """Decides, once per transition, what to flip and whom to page; delivery is queued.

    Flag writes go through a :class:`FlagActuator` (bounded, coalescing, retried) in the
    order the transitions happened; the value a flag held before automation first touched it
    is remembered and written back on recovery. Alerts go through an :class:`AlertDispatcher`.
    ``mode: shadow`` records the same decisions in the audit trail and touches nothing.

    Crash safety (intent before effect): :meth:`decide` records a transition's decisions in
    the model's :class:`Effects` (held flags, flag plans, notifications with an idempotency
    key) and touches nothing; the daemon checkpoints the model, then calls :meth:`dispatch`.
    The flag worker reads a flag's prior value and persists it (``persist``) before writing
    the flag. A restored checkpoint's undone effects are carried out again (:meth:`resume`).
    """

    def __init__(
        self,
        metrics: Metrics,
        audit: AuditLog,
        *,
        policy_for: Callable[[str], ModelPolicy],
        actuator: FlagActuator | None = None,
        dispatcher: AlertDispatcher | None = None,
        review_topic: str | None = None,
        operator_token: str | None = None,
        self_runbook_url: str = "",
        self_runbook_base_url: str = "",
        clock: Callable[[], float] = time.time,
        review_rng: random.Random | None = None,
    ) -> None:
        self.metrics = metrics
        self.audit = audit
        self.policy_for = policy_for
        self.actuator = actuator
        self.dispatcher = dispatcher
        self.review_topic = review_topic
        self.operator_token = operator_token
        self.self_runbook_url = self_runbook_url
        self.self_runbook_base_url = self_runbook_base_url
        self.clock = clock
        #: Value of each flag before automation first changed it (None: had no value).
        self.baseline: dict[str, FlagValue | None] = {}
        #: Flags each model's automation currently holds.
        self.held: dict[str, dict[str, FlagValue]] = {}
        self.silenced_until: dict[str, float] = {}
        self.flips: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        #: When each pending flag request was decided (for breach-to-flip latency).
        #: Per flag, the latest automation decision not yet written: (key, decided at).
        #: Requests for one flag coalesce, so only the latest can be applied.
        self._requested_at: dict[str, tuple[str, float]] = {}
        self._plans: asyncio.Queue[FlagPlan] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        #: Review sampling decisions; its random source is injectable (``review_rng``).
        self._review = ReviewSampler(review_rng)
        self._encoder = msgspec.json.Encoder()
        #: Per model: decided effects not yet known to be carried out (checkpointed).
        self.effects: dict[str, Effects] = {}
        #: Writes a model's checkpoint (set by the daemon when it has a store): awaited
        #: between reading a flag's prior value and writing the flag.
        self.persist: Callable[[str], Awaitable[None]] | None = None
        #: Told when a model's action state changed after an acknowledgement (a flag written,
        #: a notification delivered): its next checkpoint records it.
        self.on_state_changed: Callable[[str], None] | None = None
        #: Models with decided effects that :meth:`dispatch` has not handed over yet.
        self._undispatched: dict[str, None] = {}
        #: Plans on the worker's queue (not persisted: after a restart nothing is queued).
        self._queued: set[int] = set()
        if actuator is not None:
            actuator.on_applied = self._on_flag_applied
            actuator.on_backend_health = self._on_flag_backend_health
        if dispatcher is not None:
            dispatcher.on_sink_health = self._on_sink_health
            dispatcher.on_delivered = self._on_delivered
            dispatcher.on_sending = self._on_sending

    @classmethod
    def from_settings(
        cls, settings: Settings, metrics: Metrics, *, clock: Callable[[], float] = time.time
    ) -> Actions:
        actuator = None
        if settings.flags is not None:
            actuator = FlagActuator(
                build_backend(settings.flags),
                metrics,
                queue_size=settings.actions.flag_queue_size,
            )
        dispatcher = AlertDispatcher(
            build_sinks(settings.alerts.sinks),
            metrics,
            queue_size=settings.alerts.queue_size,
        )
        audit_path = settings.actions.audit_log
        token = os.environ.get(settings.operator.token_env) or None
        return cls(
            metrics,
            AuditLog(Path(audit_path) if audit_path else None),
            policy_for=settings.policy_for,
            actuator=actuator,
            dispatcher=dispatcher,
            review_topic=settings.kafka.review_topic,
            operator_token=token,
            self_runbook_url=settings.alerts.self_runbook_url,
            self_runbook_base_url=settings.alerts.self_runbook_base_url,
            clock=clock,
        )

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.audit.open()
        if self.actuator is not None:
            await self.actuator.start()
        if self.dispatcher is not None:
            await self.dispatcher.start()
        if self._worker is None:
            self._worker = asyncio.create_task(self._run_plans(), name="flag-plans")

    async def stop(self, flush_timeout_s: float) -> None:
        deadline = time.monotonic() + flush_timeout_s
        if self._worker is not None:
            try:
                async with asyncio.timeout(max(0.05, flush_timeout_s / 3)):
                    await self._plans.join()
            except TimeoutError:
                log.warning("%d flag plans not handed to the actuator", self._plans.qsize())
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self.actuator is not None:
            await self.actuator.stop(flush_timeout_s=max(0.05, deadline - time.monotonic()))
        if self.dispatcher is not None:
            await self.dispatcher.stop(flush_timeout_s=max(0.05, deadline - time.monotonic()))
        self.audit.close()

    # ----------------------------------------------------------------- decisions

    def on_transitions(self, transitions: Sequence[Transition], engine: Engine, now: float) -> None:
        """Decide and carry out at once: for callers with nothing to checkpoint in between."""
        self.decide(transitions, now, engine)
        self.dispatch()

    def decide(
        self, transitions: Sequence[Transition], now: float, engine: Engine | None = None
    ) -> set[str]:
        """Decide each transition's flags and notification and record them as the model's
        intent, touching no flag and no sink; return the models whose action state changed.
        With ``engine``, a recovery's resolve carries what the model's signals read now.

        Checkpoint those models, then call :meth:`dispatch`: a crash in between finds the
        decision in the checkpoint and carries it out on restart, once.
        """
        decided: set[str] = set()
        for t in transitions:
            policy = self.policy_for(t.model)
            shadow = policy.mode == "shadow"
            entry = transition_entry(t, policy.mode)
            entry["flags"] = self._decide_flags(t, policy, shadow)
            entry["alert"] = self._decide_alert(t, policy, shadow, now, engine)
            self.audit.write(entry)
            decided.add(t.model)
        return decided

    def dispatch(self) -> None:
        """Hand the decided and not yet handed-over plans to the flag worker and the
        notifications to the dispatcher, in decision order."""
        models, self._undispatched = self._undispatched, {}
        for model in models:
            effects = self.effects.get(model)
            if effects is None:
                continue
            for plan in effects.plans:
                if id(plan) not in self._queued:
                    self._queued.add(id(plan))
                    self._plans.put_nowait(plan)
            for notice in list(effects.outbox):
                if notice.sinks is not None or self.dispatcher is None:
                    continue
                # Record the notification as the sinks get it (the incident's first start,
                # the labels it was fired with), so a re-send after a crash is identical.
                current = self.dispatcher.current(notice.alert)
                if current is not None and notice.action == "resolve":
                    notice.alert = replace(
                        current,
                        ends_at=notice.alert.ends_at,
                        values=notice.alert.values or current.values,
                        idempotency_key=notice.alert.idempotency_key,
                    )
                elif current is not None:
                    notice.alert = replace(notice.alert, starts_at=current.starts_at)
                if notice.action == "resolve":
                    notice.sinks = self.dispatcher.resolve(notice.alert)
                else:
                    notice.sinks = self.dispatcher.fire(notice.alert)
                if not notice.sinks:
                    effects.outbox.remove(notice)
            self._drop_if_empty(model)

    def _effects(self, model: str) -> Effects:
        effects = self.effects.get(model)
        if effects is None:
            effects = self.effects[model] = Effects()
        return effects

    def _drop_if_empty(self, model: str) -> None:
        effects = self.effects.get(model)
        if effects is not None and effects.empty:
            del self.effects[model]

    def _decide_flags(self, t: Transition, policy: ModelPolicy, shadow: bool) -> dict[str, Any]:
        intent = flag_intent(policy, t.from_level, t.to_level)
        if intent.empty:
            return {}
        set_flags, restore = intent.set_flags, list(intent.restore)
        outcome = "shadow" if shadow else "requested"
        if set_flags:
            self.metrics.actions.labels("flag_set", outcome).inc(len(set_flags))
        if restore:
            self.metrics.actions.labels("flag_restore", outcome).inc(len(restore))
        decision = {"set": set_flags, "restore": restore, "outcome": outcome}
        if not shadow:
            key = f"{t.model}@{t.at:.3f}:{t.from_level.label}->{t.to_level.label}"
            # What the model holds changes with the decision, not with the write: the
            # checkpoint taken before the write already says which flags need a restore.
            held = self.held.setdefault(t.model, {})
            held.update(set_flags)
            for flag in restore:
                held.pop(flag, None)
            if not held:
                del self.held[t.model]
            self._effects(t.model).plans.append(FlagPlan(t.model, key, set_flags, restore))
            self._undispatched[t.model] = None
            for flag in (*set_flags, *restore):
                self._requested_at[flag] = (key, t.at)
        return decision

    def _decide_alert(
        self,
        t: Transition,
        policy: ModelPolicy,
        shadow: bool,
        now: float,
        engine: Engine | None,
    ) -> dict[str, Any] | None:
        recovery_values = None
        if t.to_level is Level.OK:
            # A recovery has no causes: the resolve carries what the signals read now, not
            # the values the incident fired with.
            monitor = engine.models.get(t.model) if engine is not None else None
            if monitor is not None:
                recovery_values = {name: o.statistic for name, o in monitor.observations.items()}
        alert = incident_alert(t, policy, recovery_values)
        if alert is None:
            return None
        decided = decide_alert(
            alert,
            holding=self._notified(alert),
            shadow=shadow,
            silenced_until=self.silenced_until.get(t.model),
            now=now,
        )
        self.metrics.actions.labels(decided.kind, decided.outcome.value).inc()
        decision: dict[str, Any] = {
            "kind": decided.kind,
            "severity": alert.severity,
            "outcome": decided.outcome.value,
            "notification": decided.notification.value if decided.notification else None,
        }
        if decided.notifies and self.dispatcher is not None:
            decision["idempotency_key"] = self._queue_notice(t, decided)
        return decision

    def _notified(self, alert: Alert) -> Alert | None:
        """The model's incident as last notified, or as it will be once the notifications
        decided and not yet dispatched are: what the dispatcher will compare ``alert`` with.
        """
        effects = self.effects.get(alert.model)
        if effects is not None:
            for notice in reversed(effects.outbox):
                if notice.sinks is None and notice.alert.dedup_key == alert.dedup_key:
                    return None if notice.action == "resolve" else notice.alert
        if self.dispatcher is None:
            return None
        return self.dispatcher.current(alert)

    def _queue_notice(self, t: Transition, decided: AlertDecision) -> str:
        """Record a notification in the model's outbox with its idempotency key."""
        effects = self._effects(t.model)
        if effects.incident is None:
            # One id per incident, from its first notification; the sequence number
            # tells its notifications apart (fire, updates, resolve).
            effects.incident = f"{t.model}@{t.at:.3f}"
            effects.seq = 0
        effects.seq += 1
        key = f"{effects.incident}#{effects.seq}"
        resolved = decided.alert.resolved
        action = "resolve" if resolved else "fire"
        effects.outbox.append(Notice(action, replace(decided.alert, idempotency_key=key)))
        del effects.outbox[:-OUTBOX_LIMIT]
        if resolved:
            effects.incident = None
        self._undispatched[t.model] = None
        return key

    # ----------------------------------------------------------------- flag plans

    async def _run_plans(self) -> None:
        while True:
            plan = await self._plans.get()
            try:
                self._queued.discard(id(plan))
                if self.actuator is not None:
                    await self._carry_out(plan, self.actuator)
            except Exception:
                log.exception("flag plan %s failed", plan.key)
            finally:
                self._plans.task_done()

    async def _carry_out(self, plan: FlagPlan, actuator: FlagActuator) -> None:
        effects = self.effects.get(plan.model)
        read = False
        for flag in plan.set_flags:
            if flag not in self.baseline:
                try:
                    self.baseline[flag] = await actuator.current(flag, timeout_s=2.0)
                except Exception as err:  # a backend down must not lose the plan
                    log.warning("cannot read %r before setting it: %r", flag, err)
                    self.baseline[flag] = None
                read = True
        if read:
            # The prior value is safe before the flag changes: a restart never re-reads it
            # from a backend that already holds the incident's value.
            failpoint("flag.prior_read")
            await self._persist(plan.model)
            failpoint("flag.prior_saved")
            if self.effects.get(plan.model) is not effects:
                return  # handed over to another replica meanwhile: its owner carries it out
        for flag, value in plan.set_flags.items():
            if effects is not None:
                effects.writing[flag] = value
            actuator.request(flag, value, key=plan.key)
        for flag in plan.restore:
            if any(flag in held for held in self.held.values()):
                continue  # another model's incident (or a newer one of this model) needs it
            prior = self.baseline.pop(flag, None)
            if prior is None:
                self.audit.write(
                    {
                        "kind": "flag_restore_skipped",
                        "at": self.clock(),
                        "flag": flag,
                        "model": plan.model,
                        "why": "value before the incident is unknown",
                    }
                )
                continue
            if effects is not None:
                effects.writing[flag] = prior
            failpoint("flag.restore_requested")
            actuator.request(flag, prior, key=plan.key)
        if effects is not None and plan in effects.plans:
            effects.plans.remove(plan)
            self._changed(plan.model)

    async def _persist(self, model: str) -> None:
        if self.persist is None:
            return
        try:
            await self.persist(model)
        except Exception as err:
            # Availability first: the flip still happens; only its crash safety is weaker
            # until the store is back (logged, and the checkpoint failure is counted).
            log.warning("cannot checkpoint %r before its flag write: %r", model, err)

    def _changed(self, model: str) -> None:
        self._drop_if_empty(model)
        if self.on_state_changed is not None:
            self.on_state_changed(model)

    def resume(self, model: str) -> None:
        """Carry out again what a restored checkpoint of ``model`` decided and did not see
        confirmed: unacknowledged flag writes are requested again (writing the value a flag
        already holds changes nothing), pending plans are redone, notifications queued again
        with their idempotency keys. Call after its held flags, baselines and effects are
        restored.
        """
        effects = self.effects.get(model)
        if effects is None:
            effects = Effects()
        actuator = self.actuator
        if actuator is not None:
            planned = {flag for plan in effects.plans for flag in plan.set_flags}
            key = f"resume:{model}"
            for flag, value in self.held.get(model, {}).items():
                if flag in planned or flag in effects.writing:
                    continue  # its plan or its unacknowledged write below carries it out
                if flag not in self.baseline:
                    # Decided but its prior value never saved: the write never happened.
                    effects.plans.insert(0, FlagPlan(model, key, {flag: value}, []))
                    self.effects[model] = effects
            for flag, value in effects.writing.items():
                actuator.request(flag, value, key=key)
        if self.dispatcher is not None:
            for notice in effects.outbox:
                if notice.sinks:
                    self.dispatcher.redeliver(notice.action, notice.alert, notice.sinks)
        if model in self.effects:
            self._undispatched[model] = None
            self.dispatch()

    def _on_flag_applied(self, flag: str, value: FlagValue, key: str) -> None:
        now = self.clock()
        pending = self._requested_at.get(flag)
        decided = None
        if pending is not None and pending[0] == key:
            decided = self._requested_at.pop(flag)[1]
        entry: dict[str, Any] = {
            "kind": "flag_applied",
            "at": now,
            "flag": flag,
            "value": value,
            "key": key,
        }
        if decided is not None:
            entry["latency_s"] = round(now - decided, 4)
        self.flips.append(entry)
        self.audit.write(entry)
        for model, effects in list(self.effects.items()):
            wanted = effects.writing.get(flag, _MISSING)
            if wanted is not _MISSING and type(wanted) is type(value) and wanted == value:
                del effects.writing[flag]
                self._changed(model)

    def _on_delivered(self, sink: str, action: str, alert: Alert) -> None:
        key = alert.idempotency_key
        if key is None:
            return  # driftwarden's own alerts are not persisted
        failpoint("alert.delivered")
        effects = self.effects.get(alert.model)
        if effects is None:
            return
        for notice in effects.outbox:
            if notice.alert.idempotency_key == key and notice.action == action:
                if notice.sinks is not None and sink in notice.sinks:
                    notice.sinks.remove(sink)
                    if not notice.sinks:
                        effects.outbox.remove(notice)
                    self._changed(alert.model)
                return

    def _on_sending(self, sink: str, alert: Alert) -> None:
        if alert.idempotency_key is not None:
            failpoint("alert.before_send")

    def _on_flag_backend_health(self, name: str, up: bool) -> None:
        alert = Alert(
            model=f"flag-backend/{name}",
            alertname=FLAG_BACKEND_DOWN,
            severity="page",
            state="degraded",
            signals=("flag_backend_up",),
            summary=f"driftwarden cannot write flags to backend {name!r}",
            description=(
                f"Flag writes to {name!r} are failing; they are queued and retried. "
                "See driftwarden_flag_backend_up and driftwarden_flag_queue_depth."
            ),
            runbook_url=self.self_runbook(FLAG_BACKEND_DOWN),
            starts_at=datetime.now(UTC),
            values={"flag_backend_up": 1.0 if up else 0.0},
            labels={"backend": name},
        )
        self.audit.write(
            {
                "kind": "flag_backend_up" if up else "flag_backend_down",
                "at": self.clock(),
                "backend": name,
            }
        )
        self._raise_or_clear(alert, up)

    def _on_sink_health(self, name: str, up: bool) -> None:
        alert = sink_down_alert(name, runbook_url=self.self_runbook(ALERT_SINK_DOWN))
        self.audit.write(
            {"kind": "alert_sink_up" if up else "alert_sink_down", "at": self.clock(), "sink": name}
        )
        self._raise_or_clear(alert, up)

    def self_runbook(self, alertname: str) -> str:
        """The runbook of one of driftwarden's own alerts: its page under the base URL."""
        if self.self_runbook_base_url:
            return f"{self.self_runbook_base_url.rstrip('/')}/{alertname}.md"
        return self.self_runbook_url

    def _raise_or_clear(self, self_alert: Alert, healthy: bool) -> None:
        """Fire driftwarden's own alert about a dependency, or resolve it once healthy."""
        if self.dispatcher is None:
            return
        if healthy:
            self.dispatcher.resolve(self_alert)
        else:
            self.dispatcher.fire(self_alert)

    # ----------------------------------------------------------------- review sampling

    async def after_batch(
        self, events: Sequence[Event], engine: Engine, writer: SideTopicWriter
    ) -> None:
        """Publish a sample of degraded models' events to the review topic."""
        if self.review_topic is None or not events:
            return
        reviewing: dict[str, ReviewAction] = {}
        for model, monitor in engine.models.items():
            review = review_at(monitor.policy, monitor.health.level)
            if review is not None:
                reviewing[model] = review
        if not reviewing:
            return
        now = time.monotonic()
        for event in events:
            review = reviewing.get(event.model)
            if review is None:
                continue
            if self._review.verdict(event, review, now) is not ReviewVerdict.SAMPLED:
                continue
            # The v1 contract without its absent fields: reviewers see what the service sent.
            fields = msgspec.structs.asdict(event)
            body = self._encoder.encode({k: v for k, v in fields.items() if v is not None})
            await writer.send(self.review_topic, body, key=event.model.encode())
            self.metrics.review_events.labels(event.model).inc()

    def forget(self, model: str) -> None:
        """Stop acting for ``model`` (its partition moved to another replica, which
        continues from the checkpoint): no restore, no resolve from here.
        """
        self.held.pop(model, None)
        self.effects.pop(model, None)
        self._undispatched.pop(model, None)
        self.silenced_until.pop(model, None)
        if self.dispatcher is not None:
            self.dispatcher.release(model)

    def tick(self, now: float) -> None:
        for model, until in list(self.silenced_until.items()):
            if until <= now:
                del self.silenced_until[model]
                self.audit.write({"kind": "silence_expired", "at": now, "model": model})

    # ----------------------------------------------------------------- status and API

    def status(self) -> dict[str, Any]:
        actuator = self.actuator
        return {
            "recent": list(self.audit.recent)[-50:],
            "flags": dict(actuator.applied()) if actuator is not None else {},
            "pins": dict(actuator.pins()) if actuator is not None else {},
            "flag_backend": (
                {"name": actuator.name, "up": actuator.backend_up, "pending": actuator.pending()}
                if actuator is not None
                else None
            ),
            "alerts": [
                {
                    "model": a.model,
                    "alertname": a.alertname,
                    "severity": a.severity,
                    "state": a.state,
                    "signals": list(a.signals),
                    "since": a.starts_at.isoformat(),
                    "runbook_url": a.runbook_url,
                }
                for a in (self.dispatcher.active() if self.dispatcher is not None else [])
            ],
            "silenced": {m: until for m, until in self.silenced_until.items()},
        }
