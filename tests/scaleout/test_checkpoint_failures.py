"""Checkpoints never block commits for ever: a model id never becomes a file name, one
model the store refuses holds back the others' commits for a bounded number of rounds, and
repeated failure shows on /readyz, /status and /metrics.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from monitor.config.policy import ModelPolicy
from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.engine.engine import ModelMonitor
from monitor.observability.metrics import Metrics
from monitor.state.checkpoints import CheckpointError, DirectoryStore, snapshot_model
from monitor.tools.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import kafka_section, wait_for
from tests.core.kafka_helpers import committed_offsets, create_topic, event, produce

HOSTILE_IDS = [
    "m" * 10_000,  # far past NAME_MAX (255 bytes) as base64
    "../../etc/passwd",
    "a/b\\c",
    "nul\x00byte",
    "ünïcødé-模型-🙂" * 20,
    ".",
    "",
    "CON",
]


def _snapshot(model: str) -> bytes:
    policy = ModelPolicy.model_validate({"mode": "enforce"})
    return snapshot_model(ModelMonitor.build(model, policy, 0.0), None, None)


async def test_any_model_id_checkpoints_to_a_bounded_file_name(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "state")
    await store.start()
    await store.save({model: _snapshot(model) for model in HOSTILE_IDS})
    files = list((tmp_path / "state").iterdir())
    assert len(files) == len(HOSTILE_IDS)
    assert {len(f.name) for f in files} == {45}
    assert sorted(await store.load_all()) == sorted(HOSTILE_IDS)
    await store.delete(HOSTILE_IDS)
    assert await store.load_all() == {}


async def test_a_checkpoint_under_its_old_file_name_is_read_and_renamed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    legacy = state / (base64.urlsafe_b64encode(b"fraud").decode().rstrip("=") + ".ckpt")
    legacy.write_bytes(_snapshot("fraud"))
    store = DirectoryStore(state)
    assert list(await store.load_all()) == ["fraud"]
    assert not legacy.exists()
    assert [len(f.name) for f in state.iterdir()] == [45]


async def test_a_directory_store_that_cannot_write_reports_the_store_failed(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    store = DirectoryStore(state)
    await store.start()
    state.rmdir()
    state.write_text("not a directory")
    with pytest.raises(CheckpointError) as caught:
        await store.save({"a": _snapshot("a"), "b": _snapshot("b")})
    # The store as a whole failed: no model is singled out, nothing was written.
    assert caught.value.failed == {}


def _config(tmp_path: Path, broker: EmbeddedBroker, topic: str) -> Path:
    big_reference = {
        "name": "latency",
        "source": "latency_ms",
        "detector": {
            "type": "ks_window",
            "window": 5000,
            "min_samples": 100,
            "stride": 50,
            "reference": {"size": 20_000},
        },
    }
    data: dict[str, Any] = {
        "kafka": kafka_section(broker.bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": free_port()},
        "lifecycle": {"log_format": "text", "grace_period_s": 10},
        # The smallest checkpoint size allowed: model "big" holds a reference far larger.
        "state": {
            "backend": "kafka",
            "topic": f"{topic}-state",
            "interval_s": 0.3,
            "max_bytes": 65_536,
            "max_failed_rounds": 3,
        },
        "flags": None,
        "models": {
            "default": {"mode": "enforce", "signals": []},
            "big": {"mode": "enforce", "signals": [big_reference]},
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.integration
async def test_one_model_the_store_refuses_stops_blocking_commits_and_shows_on_readyz(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"ckfail-{unique}"
    await create_topic(broker.bootstrap_servers, topic)
    settings = load_settings(_config(tmp_path, broker, topic))
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(settings, metrics=metrics)
    task = asyncio.create_task(daemon.run())
    base = f"http://127.0.0.1:{settings.http.port}"
    try:
        produced = await produce(
            broker.bootstrap_servers,
            topic,
            [event("big", i, latency_ms=float(i % 997)) for i in range(12_000)]
            + [event("small", i) for i in range(500)],
        )
        await wait_for(lambda: daemon.applied_events >= produced, timeout=60, what="applied")
        get = metrics.registry.get_sample_value
        await wait_for(
            lambda: get("driftwarden_checkpoint_failing_models") == 1.0,
            timeout=30,
            what="the refused model counted",
        )

        async def committed_to_the_end() -> bool:
            offsets = await committed_offsets(broker.bootstrap_servers, f"g-{topic}", topic)
            return offsets.get(0) == produced

        # Without the bound, "big" would hold back every commit for ever.
        await wait_for(committed_to_the_end, timeout=30, what="offsets committed to the end")
        assert daemon.store is not None
        saved = await daemon.store.load_all()
        events_in = {m: msgspec.msgpack.decode(d)["events"] for m, d in saved.items()}
        # "small" is checkpointed whole; "big" only from before its reference outgrew the
        # store's limit (its last good checkpoint, where a crash would restart it).
        assert events_in["small"] == 500
        assert events_in.get("big", 0) < daemon.engine.models["big"].events == 12_000
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503
                body = await resp.text()
            async with http.get(f"{base}/status") as resp:
                status = await resp.json()
        assert "checkpoint of 1 models refused 3+ rounds in a row" in body
        assert "'big'" in body and "MessageSizeTooLarge" in body
        failing = status["checkpoints"]["failing_models"]
        assert list(failing) == ["big"] and failing["big"]["rounds"] >= 3
    finally:
        daemon.request_stop("done")
        assert await asyncio.wait_for(task, 30) == 0
