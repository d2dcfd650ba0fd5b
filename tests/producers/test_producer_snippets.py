"""The producer snippets of docs/producers.md, run as they are against the real broker:
each one's records reach the topic and driftwarden's decoder accepts every one of them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from monitor.engine.events import Event, EventDecoder
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import require_component
from tests.core.kafka_helpers import create_topic, read_all

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "producers.md"
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```(\w+)\n(.*?)\n```", re.DOTALL)


def snippets() -> dict[str, tuple[str, str]]:
    return {name: (lang, code) for name, lang, code in SNIPPET.findall(DOC.read_text())}


def test_the_doc_has_every_snippet() -> None:
    assert set(snippets()) == {"aiokafka", "confluent-kafka", "kcat", "mapping"}


def _run(cmd: list[str], broker: EmbeddedBroker, topic: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap_servers, "TOPIC": topic}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


async def _decoded(broker: EmbeddedBroker, topic: str, count: int) -> list[tuple[bytes, Event]]:
    decoder = EventDecoder(max_bytes=1_048_576)
    out = []
    for record in await read_all(broker.bootstrap_servers, topic, count):
        event = decoder.decode(record.value)
        assert isinstance(event, Event), (record.value, event)
        assert record.key == event.model.encode(), "the record key is the model id"
        out.append((record.key, event))
    return out


@pytest.mark.parametrize(
    ("name", "models"),
    [("aiokafka", ["fraud-scorer"]), ("confluent-kafka", ["search-ranker"])],
)
async def test_python_snippet_publishes_events_driftwarden_decodes(
    broker: EmbeddedBroker, unique: str, name: str, models: list[str]
) -> None:
    if name == "confluent-kafka":
        found = importlib.util.find_spec("confluent_kafka") is not None
        require_component(found, "confluent-kafka (the dev extra)")
    lang, code = snippets()[name]
    assert lang == "python"
    topic = f"producers-{unique}"
    await create_topic(broker.bootstrap_servers, topic)
    _run([sys.executable, "-c", code], broker, topic)
    decoded = await _decoded(broker, topic, len(models))
    assert [event.model for _, event in decoded] == models


def test_kcat_snippet_lines_are_keyed_events_driftwarden_decodes() -> None:
    # Not run through kcat: Tansu, the suite's broker, answers Debian's kcat 1.7.1
    # (librdkafka 2.0) ApiVersions request with "Read underflow". Its records are checked.
    lang, code = snippets()["kcat"]
    assert lang == "sh"
    assert "-K '|'" in code and "-X acks=all" in code
    decoder = EventDecoder(max_bytes=4096)
    lines = re.findall(r"'([^'|]+)\|(\{.*?\})'", code)
    assert len(lines) == 2
    events = []
    for key, value in lines:
        event = decoder.decode(value.encode())
        assert isinstance(event, Event), (value, event)
        assert event.model == key
        events.append(event)
    prediction, outcome = events
    assert (prediction.request_id, prediction.prediction) == ("req-3", 0.91)
    assert (outcome.request_id, outcome.label, outcome.prediction) == ("req-3", True, None)


def test_mapping_snippet_runs_and_its_output_is_a_valid_event() -> None:
    lang, code = snippets()["mapping"]
    assert lang == "python"
    namespace: dict[str, Any] = {}
    exec(compile(code, f"{DOC}:mapping", "exec"), namespace)  # runs its own assert too
    event = EventDecoder(max_bytes=4096).decode(
        json.dumps(namespace["to_v1"](namespace["existing"])).encode()
    )
    assert isinstance(event, Event)
    assert (event.model, event.latency_ms, event.error) == ("fraud-scorer", 41.2, False)
