"""Dead letters: bounded in size whatever the record, refusals not retried (dropped and
counted), outages retried for a bounded time, and a batch waiting on them visible.

The writer's error handling is driven by a scripted producer (a broker cannot be made to
answer RecordTooLarge or TopicAuthorizationFailed on cue); the size bounds, the truncation
headers and the daemon's behaviour run on the real broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from monitor.config.settings import KafkaSettings, load_settings
from monitor.daemon.daemon import Daemon
from monitor.engine.events import BadReason, BadRecord
from monitor.kafka.side_topics import (
    DEAD_LETTER_HEADERS_MAX,
    DEAD_LETTER_KEY_MAX,
    SideTopicWriter,
)
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import wait_for
from tests.core.kafka_helpers import committed_offsets, create_topic, event, produce, read_all
from tests.core.test_pipeline import write_config

BAD = BadRecord(BadReason.NOT_JSON, "JSON is malformed")


def record(
    value: bytes | None,
    *,
    key: bytes | None = b"m",
    headers: list[tuple[str, bytes]] | None = None,
    offset: int = 0,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("events", 0, offset, 0, 0, key, value, None, 0, 0, tuple(headers or ()))


class ScriptedProducer:
    """Answers each send with ``outcome(attempt, value)``: None (acknowledged) or an error;
    with ``on_send``, errors come from ``send`` itself, as client-side checks do."""

    def __init__(
        self, outcome: Callable[[int, bytes | None], BaseException | None], *, on_send: bool = False
    ) -> None:
        self.outcome = outcome
        self.on_send = on_send
        self.sent: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Any
    ) -> asyncio.Future[None]:
        self.sent.append((key, value, headers))
        error = self.outcome(len(self.sent), value)
        if error is not None and self.on_send:
            raise error
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if error is None:
            future.set_result(None)
        elif not isinstance(error, TimeoutError):  # a timeout: never answered
            future.set_exception(error)
        return future


def writer_with(producer: ScriptedProducer, **kafka: Any) -> tuple[SideTopicWriter, Metrics]:
    metrics = Metrics.create(CollectorRegistry())
    writer = SideTopicWriter(KafkaSettings(broker_timeout_s=0.2, **kafka), metrics)
    writer._producer = producer  # type: ignore[assignment]
    return writer, metrics


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_too_large_for_the_broker_is_written_without_its_value() -> None:
    producer = ScriptedProducer(lambda n, value: MessageSizeTooLargeError() if value else None)
    writer, metrics = writer_with(producer)
    assert await writer.write_dead_letters([(record(b"x" * 5000), BAD)])
    assert len(producer.sent) == 2
    _, value, headers = producer.sent[1]
    assert value == b"" and dict(headers)["driftwarden.truncated"] == b"5000"
    assert dict(headers)["driftwarden.reason"] == b"not_json"
    assert sample(metrics, "driftwarden_dead_lettered_total") == 1
    assert sample(metrics, "driftwarden_dead_letters_truncated_total") == 1


@pytest.mark.parametrize(
    ("error", "reason", "attempts"),
    [
        (MessageSizeTooLargeError(), "too_large", 2),  # once more without its value
        (TopicAuthorizationFailedError(), "not_authorized", 1),
        (AssertionError("a bug of ours"), "rejected", 1),
    ],
    ids=["too-large", "not-authorized", "not-a-kafka-error"],
)
@pytest.mark.parametrize("on_send", [False, True], ids=["broker", "client"])
async def test_refusals_are_not_retried_but_dropped_and_counted(
    error: BaseException, reason: str, attempts: int, on_send: bool
) -> None:
    producer = ScriptedProducer(lambda n, value: error, on_send=on_send)
    writer, metrics = writer_with(producer, dead_letter_retry_s=60)
    started = time.monotonic()
    good = record(b"fine", offset=1)
    assert await writer.write_dead_letters([(record(b"bad"), BAD), (good, BAD)])
    assert time.monotonic() - started < 5.0  # no backoff: nothing was retried
    assert len(producer.sent) == 2 * attempts
    assert sample(metrics, "driftwarden_dead_letters_dropped_total", {"reason": reason}) == 2
    assert writer.failing_since is None


async def test_only_the_failed_records_are_retried() -> None:
    producer = ScriptedProducer(lambda n, value: KafkaTimeoutError() if n == 2 else None)
    writer, metrics = writer_with(producer)
    records = [(record(b"v%d" % i, offset=i), BAD) for i in range(3)]
    assert await writer.write_dead_letters(records)
    assert [value for _, value, _ in producer.sent] == [b"v0", b"v1", b"v2", b"v1"]
    assert sample(metrics, "driftwarden_dead_lettered_total") == 3


@pytest.mark.parametrize("error", [TimeoutError(), KafkaTimeoutError()], ids=repr)
async def test_an_unanswering_broker_is_retried_for_the_budget_then_given_up(
    error: BaseException,
) -> None:
    producer = ScriptedProducer(lambda n, value: error)
    writer, metrics = writer_with(producer, dead_letter_retry_s=1.5)
    started = time.monotonic()
    assert not await writer.write_dead_letters([(record(b"x"), BAD)])
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6.0
    assert len(producer.sent) >= 3
    assert writer.failing_since is not None and writer.last_error
    assert sample(metrics, "driftwarden_dead_lettered_total") == 0
    assert sample(metrics, "driftwarden_dead_letters_dropped_total", {"reason": "rejected"}) == 0


async def test_a_stop_ends_the_retries_at_once() -> None:
    producer = ScriptedProducer(lambda n, value: KafkaTimeoutError())
    writer, _ = writer_with(producer, dead_letter_retry_s=300)
    started = time.monotonic()
    assert not await writer.write_dead_letters([(record(b"x"), BAD)], stopping=lambda: True)
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("value_size", [0, 100, 999_000, 5_000_000])
@pytest.mark.parametrize("key_size", [0, 10, 100_000])
@pytest.mark.parametrize("header_count", [0, 3, 5000])
def test_a_dead_letter_fits_its_bound_whatever_the_record(
    value_size: int, key_size: int, header_count: int
) -> None:
    writer = SideTopicWriter(KafkaSettings(), Metrics.create(CollectorRegistry()))
    headers = [(f"h{i}", b"v" * 100) for i in range(header_count)]
    source = record(b"x" * value_size, key=b"k" * key_size or None, headers=headers)
    key, value, out = writer.bounded(source, BadRecord(BadReason.TOO_LARGE, "d" * 5000))
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, out)
    assert size <= writer.settings.dead_letter_max_bytes
    found = dict(out)
    assert len(found["driftwarden.detail"]) <= 1000
    if value_size and value != source.value:
        assert found["driftwarden.truncated"] == str(value_size).encode()
        assert source.value is not None and source.value.startswith(value or b"")
        assert len(value or b"") > writer.settings.dead_letter_max_bytes - 100_000
    if key_size > DEAD_LETTER_KEY_MAX:
        assert found["driftwarden.key.truncated"] == str(key_size).encode()
    kept = [name for name, _ in out if not name.startswith("driftwarden.")]
    if header_count * 110 > DEAD_LETTER_HEADERS_MAX:
        assert int(found["driftwarden.headers.dropped"]) == header_count - len(kept)
    else:
        assert len(kept) == header_count


def test_a_record_with_neither_key_nor_value_still_makes_a_dead_letter() -> None:
    writer = SideTopicWriter(KafkaSettings(), Metrics.create(CollectorRegistry()))
    key, value, _ = writer.bounded(record(None, key=None), BadRecord(BadReason.EMPTY, "none"))
    assert (key, value) == (None, b"")
    assert writer.bounded(record(None), BAD)[:2] == (b"m", None)  # a tombstone stays one


@pytest.mark.integration
async def test_a_5_mb_record_and_hostile_keys_and_headers_leave_bounded_dead_letters(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    """Issue 13 item 2: the daemon does not wedge on a record over max_record_bytes."""
    bootstrap = broker.bootstrap_servers
    topic, group = f"events-{unique}", f"group-{unique}"
    await create_topic(bootstrap, topic)
    huge = b"[" + b"1," * 2_500_000 + b"1]"  # 5 MB, over the default 1 MiB max_record_bytes
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for value, key, headers in [
            (huge, b"m", [("trace", b"t-1")]),
            (b"not json", b"k" * 100_000, [(f"h{i}", b"v" * 100) for i in range(2000)]),
            (None, b"m", []),
        ]:
            await (await producer.send(topic, value, key=key, headers=headers))
    finally:
        await producer.stop()
    await produce(bootstrap, topic, (event("m", i) for i in range(100)))

    settings = load_settings(write_config(tmp_path, broker, topic, group))
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: daemon.applied_events == 100, timeout=60, what="the good events")
    get = metrics.registry.get_sample_value
    await wait_for(lambda: get("driftwarden_dead_lettered_total") == 3, what="3 dead letters")
    await wait_for(
        lambda: get("driftwarden_committed_offset", {"topic": topic, "partition": "0"}) == 103,
        what="offsets committed to the end",
    )
    assert daemon.readiness_problems() == [] and daemon.health_problems() == []
    daemon.request_stop("test")
    assert await asyncio.wait_for(task, 30) == 0

    dead = {r.offset: r for r in await read_all(bootstrap, f"{topic}-dlq", 3)}
    assert len(dead) == 3
    by_source = {int(dict(r.headers)["driftwarden.source.offset"]): r for r in dead.values()}
    big = by_source[0]
    headers = dict(big.headers)
    assert headers["driftwarden.reason"] == b"too_large"
    assert headers["driftwarden.truncated"] == str(len(huge)).encode()
    assert headers["trace"] == b"t-1"
    assert huge.startswith(big.value) and len(big.value) > 900_000
    keyed = dict(by_source[1].headers)
    assert keyed["driftwarden.key.truncated"] == b"100000" and by_source[1].key == b"k" * 4096
    assert int(keyed["driftwarden.headers.dropped"]) > 0
    assert dict(by_source[2].headers)["driftwarden.reason"] == b"empty"
    assert get("driftwarden_dead_letters_truncated_total") == 1
    assert (get("driftwarden_dead_letters_dropped_total", {"reason": "too_large"}) or 0) == 0
    committed = await committed_offsets(bootstrap, group, topic)
    assert committed == {0: 103}


@pytest.mark.integration
async def test_a_batch_waiting_on_its_dead_letters_shows_why_then_the_daemon_exits_1(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    """The broker serves the consumer but never acknowledges the dead-letter topic: /readyz
    names that (not a guess), the batch's age is exported, and after the retry budget the
    daemon exits 1 without committing past the bad record (a restart replays it)."""
    bootstrap = broker.bootstrap_servers
    topic, group = f"events-{unique}", f"group-{unique}"
    await create_topic(bootstrap, topic)
    await produce(bootstrap, topic, [*(event("m", i) for i in range(10)), (b"m", b"bad")])
    config = write_config(tmp_path, broker, topic, group)
    settings = load_settings(config)
    settings.kafka.dead_letter_retry_s = 4.0
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    writer = daemon.side_writer
    real_send = writer._send

    async def dead_letter_topic_times_out(topic_name: str, *args: Any, **kwargs: Any) -> Any:
        if topic_name == settings.kafka.dead_letter_topic:
            raise KafkaTimeoutError("no acknowledgement from the partition leader")
        return await real_send(topic_name, *args, **kwargs)

    writer._send = dead_letter_topic_times_out  # type: ignore[method-assign]
    task = asyncio.create_task(daemon.run())
    reason = "dead letters of the batch in flight not written"
    await wait_for(
        lambda: any(reason in p for p in daemon.readiness_problems()),
        timeout=30,
        what=lambda: f"/readyz naming the dead letters (has {daemon.readiness_problems()})",
    )
    problems = daemon.readiness_problems()
    assert any("KafkaTimeoutError" in p for p in problems)
    # The broker answers the consumer: /readyz does not blame it.
    assert not any("unreachable" in p for p in problems), problems
    get = metrics.registry.get_sample_value
    await wait_for(lambda: (get("driftwarden_batch_in_flight_seconds") or 0) > 1.0)
    assert await asyncio.wait_for(task, 30) == 1
    committed = await committed_offsets(bootstrap, group, topic)
    assert (committed.get(0) or 0) <= 10
    assert get("driftwarden_dead_lettered_total") == 0

    # A batch in flight past every budget it may take fails /healthz.
    daemon._batch_started_at = time.monotonic() - 10_000
    assert any("batch loop stuck" in p for p in daemon.health_problems())
    daemon._batch_started_at = None
    assert not any("batch loop stuck" in p for p in daemon.health_problems())
