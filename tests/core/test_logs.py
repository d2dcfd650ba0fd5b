"""Logs: one JSON object per line (ts, level, logger, msg, extra fields) or plain text, and a
bad-record log line at most once per reason per 10 s, with the count of the lines it stands for.
"""

from __future__ import annotations

import json
import logging
import re
import time
import types
from collections.abc import Iterator
from pathlib import PurePosixPath

import pytest
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry

from monitor.config.settings import KafkaSettings
from monitor.engine.events import BadReason, BadRecord
from monitor.kafka import side_topics as side_topics_module
from monitor.kafka.side_topics import SideTopicWriter
from monitor.observability.logs import configure_logging
from monitor.observability.metrics import Metrics

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging() replaces the root handlers (pytest's among them): put them back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("aiokafka", "aiohttp.access")}
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def test_json_logs_are_one_object_per_line_with_ts_level_logger_msg_and_extra_fields(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "INFO")
    log = logging.getLogger("monitor.test")
    log.info("applied %d events\nof model %s", 3, "fraud", extra={"model": "fraud", "n": 3})
    log.debug("not at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("batch failed", extra={"partition": ("events", 1)})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert TS.match(first["ts"]), first["ts"]
    assert first == {
        "ts": first["ts"],
        "level": "info",
        "logger": "monitor.test",
        "msg": "applied 3 events\nof model fraud",
        "model": "fraud",
        "n": 3,
    }
    assert second["level"] == "error"
    assert second["msg"] == "batch failed"
    assert second["partition"] == ["events", 1]
    assert "ValueError: boom" in second["exc"]
    assert "Traceback" in second["exc"]


def test_json_logs_render_values_json_cannot_hold_as_text(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "INFO")
    logging.getLogger("monitor.test").warning("saved", extra={"path": PurePosixPath("/a/b")})
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["path"] == "/a/b"


def test_text_logs_are_plain_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("text", "WARNING")
    log = logging.getLogger("monitor.test")
    log.info("hidden below WARNING")
    log.warning("broker %s unreachable", "127.0.0.1:9092", extra={"model": "fraud"})
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING monitor\.test: "
        r"broker 127\.0\.0\.1:9092 unreachable",
        line,
    ), line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_configure_logging_quiets_aiokafka_connection_retries(restore_logging: None) -> None:
    configure_logging("json", "DEBUG")
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("aiokafka").level == logging.WARNING


def bad_record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="events",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"not json",
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=8,
        headers=(),
    )


def test_bad_record_log_lines_are_rate_limited_per_reason_with_the_suppressed_count(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    # Only this module's clock moves: the rest of the process keeps the real one.
    clock = types.SimpleNamespace(
        **{name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    )
    clock.monotonic = lambda: now[0]
    monkeypatch.setattr(side_topics_module, "time", clock)
    writer = SideTopicWriter(KafkaSettings(), Metrics.create(CollectorRegistry()))
    not_json = BadRecord(BadReason.NOT_JSON, "expected JSON")
    missing = BadRecord(BadReason.MISSING_MODEL, "no 'model' field")
    caplog.set_level(logging.WARNING, logger="monitor.kafka.side_topics")

    for offset in range(5):
        writer._log_rate_limited(bad_record(offset), not_json)
        now[0] += 1.0
    writer._log_rate_limited(bad_record(5), missing)
    now[0] = 1009.9
    writer._log_rate_limited(bad_record(6), not_json)
    now[0] = 1010.0
    writer._log_rate_limited(bad_record(7), not_json)
    now[0] = 1014.9
    writer._log_rate_limited(bad_record(8), not_json)
    writer._log_rate_limited(bad_record(9), missing)  # 9.9 s after its first line
    now[0] = 1015.0
    writer._log_rate_limited(bad_record(10), missing)

    assert [r.getMessage() for r in caplog.records] == [
        "bad record at events[0]@0: not_json: expected JSON",
        "bad record at events[0]@5: missing_model: no 'model' field",
        "bad record at events[0]@7: not_json: expected JSON (5 more like it not logged)",
        "bad record at events[0]@10: missing_model: no 'model' field (1 more like it not logged)",
    ]
    assert {r.levelname for r in caplog.records} == {"WARNING"}
