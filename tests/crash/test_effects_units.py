"""The pieces of exactly-once effects without a broker: failpoints, the intent recorded in a
checkpoint and carried out once after a restore, the dispatcher's confirmations and
re-deliveries, the webhook's idempotency key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from alerts.base import Alert
from alerts.dispatcher import AlertDispatcher
from alerts.webhook import IDEMPOTENCY_HEADER, WebhookSink
from monitor.actions.actions import Actions, AuditLog
from monitor.config.policy import Level, ModelPolicy
from monitor.engine.engine import ModelMonitor
from monitor.engine.health import Transition
from monitor.failpoints import ENV, _parse
from monitor.flags.actuator import FlagActuator
from monitor.flags.flagd_file import FlagdFileBackend
from monitor.observability.metrics import Metrics
from monitor.state.checkpoints import read_header, restore_model, snapshot_model
from tests.alerts.conftest import MakeAlert
from tests.alerts.test_alert_dispatcher import RecordingSink
from tests.alerts.test_alert_sinks import serving
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec", ["", ":3", "x:0", "x:-1", "x:two", "x:1.5"])
def test_a_bad_failpoint_spec_is_refused_naming_the_variable(spec: str) -> None:
    with pytest.raises(ValueError, match=ENV):
        _parse(spec) if spec else _parse("  ")


def test_a_failpoint_kills_at_its_nth_hit_and_is_inert_otherwise() -> None:
    script = (
        "from monitor.failpoints import failpoint\n"
        "for i in range(3):\n"
        "    failpoint('other'); failpoint('here'); print(i, flush=True)\n"
    )

    def run(spec: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != ENV}
        env["PYTHONPATH"] = str(ROOT)
        if spec is not None:
            env[ENV] = spec
        command = [sys.executable, "-c", script]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    killed = run("here:2")
    assert killed.returncode == -signal.SIGKILL
    assert killed.stdout.split() == ["0"]
    unarmed = run(None)
    assert unarmed.returncode == 0 and unarmed.stdout.split() == ["0", "1", "2"]
    refused = run("here:zero")
    assert refused.returncode != 0 and ENV in refused.stderr


POLICY = ModelPolicy.model_validate(
    {"actions": {"degraded": {"flags": {"mode": "rules"}, "alert": {"severity": "page"}}}}
)


def build(flags: Path) -> tuple[Actions, RecordingSink]:
    metrics = Metrics.create(CollectorRegistry())
    sink = RecordingSink()
    actuator = FlagActuator(FlagdFileBackend(flags), metrics, initial_backoff_s=0.01)
    dispatcher = AlertDispatcher([sink], metrics, initial_backoff_s=0.01, max_backoff_s=0.05)
    actions = Actions(
        metrics,
        AuditLog(None),
        policy_for=lambda m: POLICY,
        actuator=actuator,
        dispatcher=dispatcher,
    )
    return actions, sink


async def test_a_decision_checkpointed_before_any_effect_is_carried_out_once_after_restart(
    tmp_path: Path,
) -> None:
    flags = tmp_path / "flags.json"
    backend = FlagdFileBackend(flags)
    await backend.set("mode", "model")  # the service's value before the incident
    monitor = ModelMonitor.build("m", POLICY, 0.0)
    breach = Transition("m", Level.OK, Level.DEGRADED, 10.0, ())

    # 1. Decided and checkpointed; the process dies before dispatch: nothing happened yet.
    first, first_sink = build(flags)
    assert first.decide([breach], 10.0) == {"m"}
    decided = snapshot_model(monitor, first, None)
    assert await backend.get("mode") == "model" and first_sink.received == []

    # 2. The restart carries the decision out: one write, one notification with its key.
    second, second_sink = build(flags)
    await second.start()
    try:
        restore_model(decided, POLICY, 11.0, second)
        second.resume("m")
        await wait_for(lambda: len(second_sink.received) == 1, what="the page")
        effects = second.effects["m"]
        await wait_for(
            lambda: not (effects.outbox or effects.writing or effects.plans),
            what="effects confirmed",
        )
        assert effects.incident == "m@10.000"
        assert await backend.get("mode") == "rules"
        [(status, alert)] = second_sink.received
        assert (status, alert.idempotency_key) == ("firing", "m@10.000#1")
        assert second.baseline["mode"] == "model"
        carried_out = snapshot_model(monitor, second, None)
    finally:
        await second.stop(flush_timeout_s=1.0)

    # 3. Another restart from the later checkpoint: nothing is repeated, and the prior value
    #    comes from the checkpoint, not from the backend (which holds the incident's value).
    third, third_sink = build(flags)
    await third.start()
    try:
        restore_model(carried_out, POLICY, 12.0, third)
        third.resume("m")
        assert third.baseline["mode"] == "model"
        assert third.actuator is not None and third.actuator.pending() == []
        third.decide([Transition("m", Level.DEGRADED, Level.OK, 20.0, ())], 20.0)
        third.dispatch()
        await wait_for(lambda: len(third_sink.received) == 1, what="the resolve")

        async def restored() -> bool:
            return await backend.get("mode") == "model"

        await wait_for(restored, what="the flag restored")
        [(status, alert)] = third_sink.received
        assert (status, alert.idempotency_key) == ("resolved", "m@10.000#2")
    finally:
        await third.stop(flush_timeout_s=1.0)


def test_checkpoint_offsets_of_hostile_shape_are_ignored_not_fatal() -> None:
    import msgspec

    data = msgspec.msgpack.encode(
        {"offsets": [["t", 0, 41], ["t", "1", 5], [None], "x", ["t", 2, 7.5], ["u", 3, 9]]}
    )
    from aiokafka.structs import TopicPartition

    assert read_header(data).applied_offsets() == {
        TopicPartition("t", 0): 41,
        TopicPartition("u", 3): 9,
    }


async def test_redelivered_notifications_keep_their_key_and_confirm_once(
    make_alert: MakeAlert,
) -> None:
    metrics = Metrics.create(CollectorRegistry())
    sink = RecordingSink()
    confirmed: list[tuple[str, str, str | None]] = []
    dispatcher = AlertDispatcher(
        [sink],
        metrics,
        on_delivered=lambda s, action, a: confirmed.append((s, action, a.idempotency_key)),
    )
    fired = make_alert(idempotency_key="m@1#1")
    # As after a restore: the incident was active; its resolve was queued and not confirmed.
    dispatcher.adopt(fired)
    from dataclasses import replace
    from datetime import UTC, datetime

    ended = replace(fired, ends_at=datetime.now(UTC), idempotency_key="m@1#2")
    async with dispatcher:
        dispatcher.redeliver("resolve", ended, ["rec"])
        await wait_for(lambda: len(sink.received) == 1, what="the resolve")
    assert [(s, a.idempotency_key) for s, a in sink.received] == [("resolved", "m@1#2")]
    assert confirmed == [("rec", "resolve", "m@1#2")]


async def test_webhook_sends_the_idempotency_key_in_header_and_body(
    make_alert: MakeAlert,
) -> None:
    received: list[tuple[dict[str, object], str | None]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((json.loads(await request.read()), request.headers.get(IDEMPOTENCY_HEADER)))
        return web.Response(status=204)

    alert: Alert = make_alert(idempotency_key="fraud@1.000#3")
    async with serving(hook) as base_url:
        sink = WebhookSink(f"{base_url}/hook", SecretStr("s3cret"))
        await sink.start()
        try:
            await sink.send(alert)
            await sink.send(make_alert())  # driftwarden's own alerts carry none
        finally:
            await sink.stop()
    assert [(doc["idempotency_key"], header) for doc, header in received] == [
        ("fraud@1.000#3", "fraud@1.000#3"),
        (None, None),
    ]
