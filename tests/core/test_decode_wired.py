"""The daemon's two decode paths side by side (monitor/daemon/batches.py): the same record
stream, hostile records included, through the column decoder and through the event decoder,
gives the same transitions, Readings, dead letters, offsets, counters and checkpoint bytes,
for a named policy, the auto policy (discovery, then columns) and an outcome join."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from monitor.config.policy import ModelPolicy
from monitor.config.settings import Settings, StateSettings
from monitor.daemon.daemon import Daemon
from monitor.engine.engine import describe
from monitor.engine.events import BadRecord
from monitor.engine.health import Transition
from monitor.flags.config import FlagdFileSpec
from monitor.kafka.consumer import Batch
from monitor.observability.metrics import Metrics
from monitor.state.checkpoints import snapshot_model
from tests.fuzz.hostile import hostile_records

MODELS = [f"m{i}" for i in range(12)]
NUMERIC = ["f0", "f1", "f2", "f3"]
SMALL = {"reference": {"size": 60}, "window": 40, "min_samples": 20, "stride": 10}

NAMED = {
    "mode": "shadow",
    "signals": [
        {"name": "features", "source": "features", "features": NUMERIC, "level": "warn",
         "detector": {"type": "ks_window", **SMALL}},
        {"name": "country", "source": "feature", "feature": "country", "level": "warn",
         "detector": {"type": "psi", "reference": {"size": 60}, "window": 40,
                     "min_samples": 20, "stride": 10}},
        {"source": "missing", "features": ["f0", "country"]},
        {"source": "schema", "expect": {**dict.fromkeys(NUMERIC, "numeric"),
                                        "country": "categorical"}},
        {"source": "prediction", "level": "warn", "detector": {"type": "ks_window", **SMALL}},
        {"source": "latency_ms", "level": "degraded",
         "detector": {"type": "quantile", "q": 0.9, "reference": {"size": 60}}},
        {"source": "error", "thresholds": {"degraded": 0.3},
         "detector": {"type": "rate_window", "window": 30, "min_samples": 10, "stride": 5}},
    ],
    "health": {"for": 0, "recover_after": 0},
}  # fmt: skip
AUTO = {
    "mode": "shadow",
    "auto": {"discover_events": 40, "latency_slo_ms": 60},
    "health": {"for": 0, "recover_after": 0},
}
OUTCOMES = {
    "mode": "shadow",
    "outcomes": {"join": "on"},
    "signals": [
        {"source": "label_error", "thresholds": {"degraded": 0.4},
         "detector": {"type": "rate_window", "window": 30, "min_samples": 10, "stride": 5}},
        {"name": "features", "source": "features", "features": ["f0", "f1"],
         "detector": {"type": "ks_window", **SMALL}},
        {"source": "error",
         "detector": {"type": "rate_window", "window": 30, "min_samples": 10, "stride": 5}},
    ],
    "health": {"for": 0, "recover_after": 0},
}  # fmt: skip
#: Enforced, with a review sample while degraded (its records carry the features).
REVIEW = {
    **NAMED,
    "mode": "enforce",
    "actions": {"degraded": {"review": {"sample_rate": 0.5, "max_per_second": 1e6}}},
}
POLICIES = {"named": NAMED, "auto": AUTO, "outcomes": OUTCOMES, "review": REVIEW}


def _body(rng: random.Random, model: str, at: int, drifted: bool) -> dict[str, Any]:
    shift = 4.0 if drifted else 0.0
    features: dict[str, Any] = {f: rng.gauss(shift, 1) for f in NUMERIC}
    features["country"] = rng.choice(["DE", "FR", "US"] if not drifted else ["XX", "YY"])
    if rng.random() < 0.05:
        features["f0"] = None
    if rng.random() < 0.03:
        features["unnamed"] = rng.random()  # refused by the policy type: the exact path
    if rng.random() < 0.02:
        features["f1"] = "n/a"  # a string where a number is read: valid, NaN
    return {
        "model": model,
        "model_version": f"v{at // 500}",
        "request_id": f"{model}-{at}",
        "prediction": min(max(rng.gauss(0.8 if drifted else 0.3, 0.1), 0.0), 1.0),
        "confidence": rng.uniform(0.5, 1.0),
        "latency_ms": rng.lognormvariate(3.0 + (1.0 if drifted else 0.0), 0.3),
        "error": rng.random() < (0.6 if drifted else 0.02),
        "features": features,
    }


def stream(seed: int, batches: int = 30, per_batch: int = 240) -> list[list[bytes | None]]:
    """Batches of record values: steady traffic, then drift on a third of the models, with
    hostile records, outcome events (some joined, some not) and pretty-printed records."""
    rng = random.Random(seed)
    hostile = [p.value for p in hostile_records(batches * 12, seed)]
    out: list[list[bytes | None]] = []
    at = 0
    for b in range(batches):
        values: list[bytes | None] = []
        for _ in range(per_batch):
            model = rng.choice(MODELS)
            drifted = b >= batches // 2 and MODELS.index(model) % 3 == 0
            body = _body(rng, model, at, drifted)
            at += 1
            text = json.dumps(body, indent=1 if rng.random() < 0.02 else None)
            values.append(text.encode())
            if rng.random() < 0.3:  # the outcome of an earlier prediction (or of none)
                label = rng.random() < (0.2 if drifted else 0.7)
                outcome = {"model": model, "request_id": f"{model}-{at - rng.randint(1, 400)}"}
                values.append(json.dumps({**outcome, "label": float(label)}).encode())
        for _ in range(12):
            values.insert(rng.randrange(len(values) + 1), hostile.pop())
        out.append(values)
    return out


def as_batch(values: list[bytes | None], first: int) -> Batch:
    """Two partitions of one topic, records alternating (offsets count per partition)."""
    batch: Batch = {}
    offsets = [first, first]
    for i, value in enumerate(values):
        tp = TopicPartition("events", i % 2)
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topic=tp.topic, partition=tp.partition, offset=offsets[i % 2], timestamp=0,
            timestamp_type=0, key=None, value=value, checksum=None, serialized_key_size=0,
            serialized_value_size=len(value or b""), headers=[],
        )  # fmt: skip
        offsets[i % 2] += 1
        batch.setdefault(tp, []).append(record)
    return batch


class DeadLetterLog:
    """What the applier hands the dead-letter writer: (partition, offset, reason, detail)."""

    def __init__(self) -> None:
        self.written: list[tuple[int, int, str, str]] = []

    async def write(self, bad: list[tuple[ConsumerRecord[bytes, bytes], BadRecord]]) -> bool:
        self.written += [(r.partition, r.offset, b.reason.value, b.detail) for r, b in bad]
        return True

    async def flush_side_records(self) -> bool:
        return True


class ReviewLog:
    """What the applier sends to the side topics (the review samples): (topic, body, key)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, bytes | None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self.sent.append((topic, msgspec.json.decode(value), key))


class Run:
    """One daemon (in process, no broker) fed the stream on one path, with what it did."""

    def __init__(self, tmp: Path, policy: dict[str, Any], columnar: bool) -> None:
        name = "columns" if columnar else "events"
        (tmp / f"{name}-state").mkdir()
        settings = Settings(
            flags=FlagdFileSpec(path=tmp / f"{name}-flags.json"),
            state=StateSettings(backend="file", path=str(tmp / f"{name}-state")),
            models={"default": ModelPolicy.model_validate(policy)},
            kafka={"review_topic": "review"},
        )
        self.metrics = Metrics.create(CollectorRegistry())
        self.daemon = Daemon(settings, metrics=self.metrics)
        self.applier = self.daemon.batches
        if not columnar:
            self.applier.columnar = None
        self.dead = DeadLetterLog()
        self.applier.dead_letters = self.dead  # type: ignore[assignment]
        self.review = ReviewLog()
        self.applier.side_writer = self.review  # type: ignore[assignment]
        self.transitions: list[str] = []
        self.offsets: list[dict[str, dict[TopicPartition, int]]] = []
        decide = self.applier.on_transitions

        async def on_transitions(
            found: list[Transition], now: float, offsets: dict[str, dict[TopicPartition, int]]
        ) -> None:
            self.transitions += [t.describe() for t in found]
            self.offsets.append({m: dict(o) for m, o in offsets.items()})
            await decide(found, now, offsets)

        self.applier.on_transitions = on_transitions  # type: ignore[method-assign]

    async def apply(self, batch: Batch) -> None:
        assert await self.applier.apply(batch)

    def state(self) -> dict[str, Any]:
        engine = self.daemon.engine
        get = self.metrics.registry.get_sample_value
        owned = self.daemon.ownership.owned
        return {
            "models": {m: describe(monitor) for m, monitor in engine.models.items()},
            "checkpoints": {
                m: _checkpoint(snapshot_model(monitor, self.daemon.actions, None))
                for m, monitor in engine.models.items()
            },
            "applied": self.applier.applied_events,
            "applied_metric": get("driftwarden_events_applied_total"),
            "bad": {r.value: get("driftwarden_bad_records_total", {"reason": r.value})
                    for r in _reasons()},
            "applied_offsets": {m: list(o.items()) for m, o in owned.applied_offsets.items()},
            "partition": dict(owned.partition),
            "dirty": sorted(owned.dirty),
            "received": list(engine.received),
        }  # fmt: skip


def _checkpoint(data: bytes) -> bytes:
    """A checkpoint's bytes but its wall-clock ``saved_at`` (the one member that differs)."""
    raw = msgspec.msgpack.decode(data)
    assert isinstance(raw["saved_at"], float)
    raw["saved_at"] = 0.0
    return msgspec.msgpack.encode(raw)


def _reasons() -> list[Any]:
    from monitor.engine.events import BadReason

    return list(BadReason)


@pytest.mark.parametrize("policy", POLICIES)
async def test_the_column_path_equals_the_event_path(tmp_path: Path, policy: str) -> None:
    columns = Run(tmp_path, POLICIES[policy], columnar=True)
    events = Run(tmp_path, POLICIES[policy], columnar=False)
    first = 0
    for i, values in enumerate(stream(seed=len(policy))):
        batch = as_batch(values, first)
        first += len(values)
        now = 1000.0 + i
        columns.applier.clock = events.applier.clock = lambda now=now: now
        await columns.apply(batch)
        await events.apply(batch)
        assert columns.state() == events.state(), f"batch {i}"
    assert columns.transitions == events.transitions
    assert columns.offsets == events.offsets
    assert columns.dead.written == events.dead.written
    assert columns.review.sent == events.review.sent
    if policy == "review":  # samples were sent, with their features
        assert len(columns.review.sent) >= 20
        assert all("features" in body for _, body, _ in columns.review.sent)
    path = columns.applier.columnar
    assert path is not None
    # The stream did reach both paths, and what is compared is not empty.
    assert path.columnar_batches >= 10, (path.columnar_batches, path.event_batches)
    assert len(columns.dead.written) >= 300
    if policy != "auto":
        assert len(columns.transitions) >= 2, columns.transitions


def test_features_no_signal_reads_are_named_in_the_type_one_off_names_are_not() -> None:
    from monitor.engine.decode import MAX_UNREAD, ColumnarPath
    from monitor.engine.engine import Engine

    policy = ModelPolicy.model_validate(
        {"signals": [{"source": "feature", "feature": "f0", "detector": {"type": "ks_window"}}]}
    )
    engine = Engine(lambda _: policy, max_models=10)
    path = ColumnarPath(engine, 64 * 1024)
    rng = random.Random(3)

    def batch(extra: bool) -> list[bytes | None]:
        out: list[bytes | None] = []
        for i in range(500):
            features = {"f0": rng.random(), "c0": rng.choice("ab")}
            if extra:
                features[f"once-{rng.getrandbits(64)}"] = 1.0
            out.append(json.dumps({"model": f"m{i % 3}", "features": features}).encode())
        return out

    path.note(["m0"])  # the first batch took the event path: a decoder for the models
    first = path.decode(batch(False))
    assert first is not None and len(first.exact) == 500  # c0 is no signal's: refused
    assert path.decoder is not None and path.decoder.unread == ("c0",)
    again = path.decode(batch(False))
    assert again is not None and again.exact == []  # now of the policy type
    flood = path.decode(batch(True))
    assert flood is not None and len(flood.exact) == 500  # one-off names: the exact path
    assert path.decoder.unread == ("c0",) and MAX_UNREAD < 500


async def test_a_checkpoint_mid_batch_names_the_offsets_every_models_state_holds(
    tmp_path: Path,
) -> None:
    """A transition checkpoints mid-batch; after a store outage every model is written then,
    not only the deciding ones. Every model of the batch already holds its span (the banks
    feed them all before any evaluates), so each checkpoint must name the batch's offsets:
    with the offsets before the batch, a kill -9 then a restart would apply the batch to that
    model twice (its replay would not skip it)."""
    from monitor.state.checkpoints import read_header

    run = Run(tmp_path, NAMED, columnar=True)
    ownership = run.daemon.ownership
    engine = run.daemon.engine
    decide = run.applier.on_transitions
    checked: list[str] = []
    wrong: list[tuple[str, Any, Any]] = []

    async def on_transitions(
        found: list[Transition], now: float, offsets: dict[str, dict[TopicPartition, int]]
    ) -> None:
        await decide(found, now, offsets)
        # With banks, every model of the batch was fed before the first one evaluated.
        assert engine.banks is not None
        batch_models = {model for model, _n in engine.received}
        # What an all-models write (the one after a store outage) saves at this point.
        for model, batch_offsets in (offsets or {}).items():
            monitor = engine.models.get(model)
            if monitor is None or model not in batch_models:
                continue
            data = ownership._snapshot(model)
            assert data is not None
            held = read_header(data).applied_offsets()
            checked.append(model)
            if any(held.get(tp) != last for tp, last in batch_offsets.items()):
                wrong.append((model, held, batch_offsets))

    run.applier.on_transitions = on_transitions  # type: ignore[method-assign]
    first = 0
    for i, values in enumerate(stream(seed=5)):
        batch = as_batch(values, first)
        first += len(values)
        run.applier.clock = lambda now=1000.0 + i: now
        await run.apply(batch)
    # Transitions happened mid-batch, beside other models of their batch.
    assert len(set(checked)) > 2, checked
    assert not wrong, wrong[:3]


def test_learning_unread_names_counts_a_bounded_number_of_names_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records of a thousand one-off feature names each: the column path counts at most
    ``UNREAD_BUDGET`` names per batch (not a million: five times the event decoder's cost of
    the whole batch), and none once the type names ``MAX_UNREAD`` unread features."""
    import monitor.engine.decode as decode_module
    from monitor.engine.engine import Engine

    counted: list[int] = []

    class CountingCounter(decode_module.Counter):  # type: ignore[type-arg]
        def update(self, *args: Any, **kwargs: Any) -> None:
            if not args or args[0] is None:  # Counter() itself calls update(None)
                super().update(**kwargs)
                return
            names = list(args[0])
            counted.append(len(names))
            super().update(names, **kwargs)

    monkeypatch.setattr(decode_module, "Counter", CountingCounter)
    policy = ModelPolicy.model_validate(
        {"signals": [{"source": "feature", "feature": "f0", "detector": {"type": "ks_window"}}]}
    )
    path = decode_module.ColumnarPath(Engine(lambda _: policy, max_models=10), 1 << 22)
    path.note(["m0"])

    def batch(b: int, common: int) -> list[bytes | None]:
        return [
            json.dumps(
                {
                    "model": "m0",
                    "features": {
                        "f0": float(i),
                        **{f"c{b}-{k}": 1 for k in range(common)},
                        **{f"once-{b}-{i}-{k}": 1 for k in range(999 - common)},
                    },
                }
            ).encode()
            for i in range(1000)
        ]

    for b in range(3):
        counted.clear()
        found = path.decode(batch(b, 0))
        assert found is not None and len(found.rows) == 1000
        assert counted and sum(counted) <= 101_000, sum(counted)  # UNREAD_BUDGET and a row
    # Names every row carries are still learnt, within the budget.
    assert path.decode(batch(7, 3)) is not None
    assert set(path._unread) >= {"c7-0", "c7-1", "c7-2"}, path._unread
    # Once the type names MAX_UNREAD of them, nothing is counted.
    path._unread = tuple(f"u{k}" for k in range(decode_module.MAX_UNREAD))
    counted.clear()
    assert path.decode(batch(8, 0)) is not None
    assert counted == []
