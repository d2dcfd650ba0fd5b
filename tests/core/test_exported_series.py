"""Series a live daemon exports: the lag of every assigned partition from its assignment on
(also one that has applied no record yet: a partition stuck from its start must be visible),
and a finite effect size per signal or none (a NaN only leaves gaps in a panel)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.config.settings import load_settings
from monitor.daemon.daemon import Daemon
from monitor.observability.metrics import Metrics
from monitor.tools.embedded_broker import EmbeddedBroker
from tests.conftest import fast_rate_window, kafka_section, wait_for
from tests.core.kafka_helpers import create_topic, event, produce

pytestmark = pytest.mark.integration


async def test_lag_of_every_partition_from_assignment_and_finite_effect_sizes_only(
    broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    topic = f"lag-{unique}"
    await create_topic(broker.bootstrap_servers, topic, partitions=3)
    # One key: every record lands on one partition; the two others never apply a record.
    await produce(broker.bootstrap_servers, topic, [event("only", i) for i in range(100)])
    config = {
        "kafka": kafka_section(broker.bootstrap_servers, topic),
        "http": {"host": "127.0.0.1", "port": 0},
        "flags": {"type": "flagd_file", "path": str(tmp_path / "flags.json")},
        "actions": {"audit_log": str(tmp_path / "audit.jsonl")},
        "models": {
            "default": {
                "signals": [
                    # an absolute limit: no reference, so no effect size
                    {
                        "name": "error_rate",
                        "source": "error",
                        "detector": fast_rate_window(),
                        "thresholds": {"degraded": 0.2},
                    },
                    {
                        "name": "latency",
                        "source": "latency_ms",
                        "detector": {
                            "type": "ks_window",
                            "window": 50,
                            "min_samples": 20,
                            "stride": 10,
                            "reference": {"size": 50},
                        },
                    },
                ]
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    metrics = Metrics.create(CollectorRegistry())
    daemon = Daemon(load_settings(path), metrics=metrics)
    task = asyncio.create_task(daemon.run())

    def lag(partition: int) -> float | None:
        return metrics.registry.get_sample_value(
            "driftwarden_consumer_lag_records", {"topic": topic, "partition": str(partition)}
        )

    try:
        await wait_for(lambda: daemon.applied_events == 100, timeout=90, what="all events")
        await wait_for(
            lambda: all(lag(p) is not None for p in range(3)),
            timeout=60,
            what=lambda: f"a lag series per partition, got {[lag(p) for p in range(3)]}",
        )
        assert [lag(p) for p in range(3)] == [0.0, 0.0, 0.0]

        def series(name: str) -> dict[str, float]:
            return {
                s.labels["signal"]: s.value
                for family in metrics.registry.collect()
                for s in family.samples
                if s.name == name and s.labels.get("model") == "only"
            }

        await wait_for(
            lambda: set(series("driftwarden_signal_value")) == {"error_rate", "latency"},
            timeout=30,
            what="both signals published",
        )
        await wait_for(lambda: "latency" in series("driftwarden_signal_effect_size"), timeout=30)
        effects = series("driftwarden_signal_effect_size")
        assert set(effects) == {"latency"}  # error_rate has no effect size: no series
        assert all(math.isfinite(v) for v in effects.values()), effects
    finally:
        daemon.request_stop("test over")
        assert await asyncio.wait_for(task, 30) == 0
