"""The replay clock: ``record`` keeps the broker's record timestamp beside each event, ``replay``
times an event without ``ts`` by it, and a clock that cannot let any ``for`` run out is warned
about on stderr, in the summary and in the report."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from monitor.cli.replay import register
from monitor.config.settings import load_settings
from monitor.engine.events import BadReason, BadRecord
from monitor.tools.embedded_broker import EmbeddedBroker
from monitor.tools.record import RECORD_TS_FIELD, TopicRecorder, stamp_record_time
from monitor.tools.replay import RecordedEventDecoder, Replay, record_time, replay_file
from tests.core.kafka_helpers import create_topic
from tests.replay.streams import FOR_S, STEP, T0, expected_transitions, lines, write_policy

N = 12_000


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


def untimed(n: int) -> list[bytes]:
    """The scripted stream of tests/replay/streams.py without its ``ts``."""
    out = []
    for line in lines(n):
        body = json.loads(line)
        del body["ts"]
        out.append(json.dumps(body).encode())
    return out


@pytest.mark.integration
async def test_recorded_broker_time_times_events_without_ts_like_their_ts_would(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    await create_topic(broker.bootstrap_servers, unique, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(
                unique, value=value, key=b"fraud", timestamp_ms=round((T0 + i * STEP) * 1000)
            )
            for i, value in enumerate(untimed(N))
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    out = tmp_path / "untimed.jsonl"
    async with TopicRecorder({"bootstrap_servers": broker.bootstrap_servers}, unique) as rec:
        assert (await rec.run(out)).written == N
    recorded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r[RECORD_TS_FIELD] for r in recorded] == [round(T0 + i * STEP, 3) for i in range(N)]
    assert all("ts" not in r for r in recorded)  # the event itself is not rewritten

    settings = load_settings(write_policy(tmp_path / "policy.yaml"))
    result = replay_file(out, settings, chunk_size=1)
    got = [
        (t["index"], t["from"], t["to"]) for t in result.summary()["models"]["fraud"]["transitions"]
    ]
    assert got == expected_transitions(N)
    assert result.warnings == []
    clock = result.summary()["clock"]
    assert (clock["events_with_record_ts"], clock["events_with_ts"], clock["events_untimed"]) == (
        N,
        0,
        0,
    )
    assert clock["first_ts"] == pytest.approx(T0)


def test_a_file_without_any_time_is_warned_about_on_stderr_in_the_summary_and_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `record` of an older version wrote for the demo's traffic: no ts, no record time.
    events = tmp_path / "old.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in untimed(N)))
    policy = write_policy(tmp_path / "policy.yaml")
    summary, report = tmp_path / "s.json", tmp_path / "r.html"
    argv = [
        "replay", str(events), "-c", str(policy), "--summary", str(summary), "--report",
        str(report), "-q",
    ]  # fmt: skip
    assert run_cli(argv) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "event time never advanced over 12000 events" in err
    assert "neither `ts` nor a recorded broker time" in err
    out = json.loads(summary.read_text())
    assert [w["code"] for w in out["warnings"]] == ["clock_never_advanced"]
    assert out["clock"]["span_s"] == 0.0 and out["clock"]["events_untimed"] == N
    assert out["models"]["fraud"]["transitions"] == []
    html = report.read_text()
    assert '<div class="warning" role="alert">' in html
    assert "event time never advanced" in html


def test_a_clock_shorter_than_the_shortest_for_is_warned_about_and_a_normal_one_is_not(
    tmp_path: Path,
) -> None:
    settings = load_settings(write_policy(tmp_path / "policy.yaml"))
    # 150 events over 1.49 s: under the policy's 2 s `for`.
    short = Replay(settings).run(line.encode() for line in lines(150))
    assert [w["code"] for w in short.warnings] == ["clock_shorter_than_for"]
    assert f"less than the shortest `for` ({FOR_S:g} s)" in short.warnings[0]["message"]
    assert short.summary()["clock"]["shortest_for_s"] == FOR_S
    # A few events over a short time are no cause for alarm; a long enough clock neither.
    few = Replay(settings).run(line.encode() for line in lines(20))
    assert few.warnings == []
    assert Replay(settings).run(line.encode() for line in lines(1000)).warnings == []
    # One event, or none: nothing to say about a clock.
    assert Replay(settings).run(iter([b'{"model": "m"}'])).warnings == []
    assert Replay(settings).run(iter([])).warnings == []


def test_hostile_record_times_are_ignored_never_a_bad_line_and_ts_wins_over_record_time(
    tmp_path: Path,
) -> None:
    settings = load_settings(write_policy(tmp_path / "policy.yaml"))
    junk = [b'"soon"', b"true", b"false", b"-1", b"1e300", b"null", b"[1, 2]", b'{"a": 1}']
    stream = [b'{"model": "m", "ts": 100.0, "%s": 5000.0}' % RECORD_TS_FIELD.encode()]
    stream += [b'{"model": "m", "%s": %s}' % (RECORD_TS_FIELD.encode(), v) for v in junk]
    stream += [b'{"model": "m", "%s": 101}' % RECORD_TS_FIELD.encode()]
    result = Replay(settings, chunk_size=1).run(iter(stream))
    assert (result.events, result.bad_lines) == (len(stream), 0)
    assert (result.first_ts, result.last_ts) == (100.0, 101.0)
    clock = result.summary()["clock"]
    assert (clock["events_with_ts"], clock["events_with_record_ts"], clock["events_untimed"]) == (
        1,
        1,
        len(junk),
    )


def test_the_stamp_is_the_last_member_so_it_wins_over_a_producers_own() -> None:
    value = b'{"model": "m", "%s": 1.0}\n' % RECORD_TS_FIELD.encode()
    stamped = stamp_record_time(value, True, 1_700_000_000_007)
    decoded = RecordedEventDecoder(max_bytes=4096).decode(stamped)
    assert not isinstance(decoded, BadRecord)
    assert record_time(decoded) == 1_700_000_000.007
    assert json.loads(stamped)[RECORD_TS_FIELD] == 1_700_000_000.007


@pytest.mark.parametrize("extra", [0, 1])
def test_the_size_limit_applies_to_the_value_as_the_broker_held_it(extra: int) -> None:
    limit = 200
    head = b'{"model": "m", "request_id": "'
    value = head + b"x" * (limit - len(head) - 2 + extra) + b'"}'
    assert len(value) == limit + extra
    stamped = stamp_record_time(value, True, 1_700_000_000_000)
    assert len(stamped) > limit
    decoded = RecordedEventDecoder(max_bytes=limit).decode(stamped)
    if extra == 0:  # the daemon accepted it: so does the replay
        assert record_time(decoded) == 1_700_000_000.0  # type: ignore[arg-type]
    else:
        assert isinstance(decoded, BadRecord) and decoded.reason is BadReason.TOO_LARGE
        assert decoded.detail == f"record is {limit + 1} bytes, over max {limit}"
    # A line over the limit without a stamp is refused as the daemon would.
    plain = RecordedEventDecoder(max_bytes=limit).decode(value + b" " * 40)
    assert isinstance(plain, BadRecord) and plain.reason is BadReason.TOO_LARGE
