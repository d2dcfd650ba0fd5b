"""/metrics rendered incrementally: the per-model gauges' text kept per model and re-rendered
only for the models whose series changed shows the same families, labels and values as
prometheus_client's ``generate_latest`` over the whole registry, through Readings that change,
effects that turn non-finite, hostile model ids, outcomes and models that leave.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config.policy import ModelPolicy
from monitor.engine.engine import Engine
from monitor.engine.events import Event
from monitor.http.server import Exposition
from monitor.observability.metrics import MODEL_GAUGES, Metrics
from monitor.observability.publisher import SeriesPublisher

POLICY = ModelPolicy.model_validate(
    {
        "health": {"for": 0, "recover_after": 0, "cooldown": 0},
        "signals": [
            {
                "name": "error_rate",
                "source": "error",
                "detector": {"type": "rate_window", "window": 20, "min_samples": 10, "stride": 5},
                "thresholds": {"warn": 0.1, "degraded": 0.2},
            },
            {
                "name": "latency_p95",
                "source": "latency_ms",
                "detector": {
                    "type": "quantile",
                    "q": 0.95,
                    "window": 20,
                    "min_samples": 10,
                    "stride": 5,
                },
            },
            {
                "name": "features",
                "source": "features",
                "features": ["amount", "score"],
                "detector": {
                    "type": "ks_window",
                    "window": 20,
                    "min_samples": 10,
                    "stride": 10,
                    "reference": {"size": 50},
                },
            },
            {"source": "label_error"},
        ],
    }
)

#: Ids a sender may use: quotes, backslashes, newlines, braces and non-ASCII in a label value.
MODELS = ["fraud", 'quo"te', "back\\slash", "new\nline", "br{ace}=,", "ünï-cødé", "m" * 200]

Families = dict[str, tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], str]]]]


def families(text: str) -> Families:
    """Each family's type, help and samples (sorted; values as text, so NaN equals NaN)."""
    found: Families = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in found, f"family {family.name} twice"
        samples = sorted(
            (s.name, tuple(sorted(s.labels.items())), repr(float(s.value))) for s in family.samples
        )
        found[family.name] = (family.type, family.documentation, samples)
    return found


def render(metrics: Metrics) -> str:
    return asyncio.run(Exposition(metrics.registry, metrics).render()).decode("utf-8")


def assert_same(metrics: Metrics) -> Families:
    assert metrics.model_series is not None  # the incremental path is the one compared
    expected = families(generate_latest(metrics.registry).decode("utf-8"))
    shown = families(render(metrics))
    assert shown.keys() == expected.keys()
    for name, family in expected.items():
        # The _created samples of counters are timestamps: present in both, same labels.
        assert shown[name] == family, name
    return shown


def events(model: str, n: int, rng: random.Random, *, shifted: bool = False) -> list[Event]:
    shift = 5.0 if shifted else 0.0
    return [
        Event(
            model=model,
            request_id=f"{model}-{rng.random()}",
            prediction=rng.random(),
            latency_ms=rng.gauss(20.0 + 30 * shift, 3.0),
            error=rng.random() < (0.5 if shifted else 0.02),
            features={"amount": rng.gauss(shift, 1.0), "score": rng.random()},
        )
        for _ in range(n)
    ]


def test_incremental_exposition_equals_generate_latest_through_changes_and_removals() -> None:
    rng = random.Random(7)
    engine = Engine(lambda model: POLICY, max_models=100, defer=False)
    metrics = Metrics.create(CollectorRegistry())
    publisher = SeriesPublisher(metrics, engine.models)
    now = 1_000.0

    def batch(batch_events: list[Event]) -> None:
        nonlocal now
        now += 1.0
        engine.apply(batch_events, now)
        publisher.count_events(engine.received)
        publisher.publish(set(engine.changed))

    assert_same(metrics)  # no model yet: the families' headers only
    batch([e for model in MODELS for e in events(model, 5, rng)])  # inconclusive: NaN
    assert_same(metrics)
    for _ in range(6):
        batch([e for model in MODELS for e in events(model, 10, rng)])
        assert_same(metrics)
    # Some models drift (levels and effects move), the others keep their text as it was.
    for _ in range(4):
        batch([e for model in MODELS[:3] for e in events(model, 10, rng, shifted=True)])
        shown = assert_same(metrics)
    levels = {
        dict(labels)["model"]: value
        for _, labels, value in shown["driftwarden_model_health_level"][2]
    }
    assert set(levels) == set(MODELS)
    assert any(float(v) > 0 for m, v in levels.items() if m in MODELS[:3]), levels
    # Outcomes of predictions (counters and the pending gauge, rendered by prometheus_client).
    outcomes = [Event(model="fraud", request_id="fraud-x", prediction=1.0)]
    outcomes.append(Event(model="fraud", request_id="fraud-x", label=1.0))
    batch(outcomes)
    assert_same(metrics)
    # A model handed over, one dropped for good: their series leave both renders.
    publisher.unpublish(MODELS[1])
    engine.drop(MODELS[1])
    publisher.unpublish(MODELS[2], counters=True)
    engine.drop(MODELS[2])
    shown = assert_same(metrics)
    shown_models = {dict(labels)["model"] for _, labels, _ in shown["driftwarden_signal_value"][2]}
    assert shown_models == set(MODELS) - {MODELS[1], MODELS[2]}
    # The tick's publish of every model changes nothing that is already shown.
    publisher.publish(set(engine.models))
    assert_same(metrics)


def test_a_scrape_renders_only_the_models_that_changed_since_the_last_one() -> None:
    rng = random.Random(3)
    engine = Engine(lambda model: POLICY, max_models=100, defer=False)
    metrics = Metrics.create(CollectorRegistry())
    publisher = SeriesPublisher(metrics, engine.models)
    models = [f"m{i}" for i in range(20)]
    engine.apply([e for m in models for e in events(m, 40, rng)], 1.0)
    publisher.publish(set(engine.changed))
    render(metrics)
    kept: dict[str, Any] = {m: s.text for m, s in publisher._models.items()}
    assert all(text is not None for text in kept.values())
    engine.apply(events("m3", 10, rng, shifted=True), 2.0)
    publisher.publish(set(engine.changed))
    assert engine.changed == ["m3"]
    render(metrics)
    again = {m: s.text for m, s in publisher._models.items()}
    assert [m for m in models if again[m] is not kept[m]] == ["m3"]


def test_two_publishers_on_one_registry_fall_back_to_the_whole_render() -> None:
    metrics = Metrics.create(CollectorRegistry())
    engine = Engine(lambda model: POLICY, max_models=10, defer=False)
    first = SeriesPublisher(metrics, engine.models)
    assert metrics.model_series is first
    SeriesPublisher(metrics, engine.models)
    assert metrics.model_series is None
    engine.apply(events("a", 30, random.Random(1)), 1.0)
    first.publish({"a"})
    text = asyncio.run(Exposition(metrics.registry, metrics).render()).decode("utf-8")
    assert families(text) == families(generate_latest(metrics.registry).decode("utf-8"))


def test_every_model_gauge_is_left_out_of_the_core_registry_and_nothing_else() -> None:
    metrics = Metrics.create(CollectorRegistry())
    whole = {f.name for f in metrics.registry.collect()}
    core = {f.name for f in metrics.core.collect()}
    left_out = {getattr(metrics, name).describe()[0].name for name in MODEL_GAUGES}
    assert whole - core == left_out and core <= whole


def test_renders_in_a_thread_while_the_loop_publishes_end_equal_to_generate_latest() -> None:
    """The scrape's thread reads the publisher while batches bind and set series: no render
    fails, and once publishing stops the next render shows exactly the registry."""
    rng = random.Random(9)
    engine = Engine(lambda model: POLICY, max_models=400, defer=False)
    metrics = Metrics.create(CollectorRegistry())
    publisher = SeriesPublisher(metrics, engine.models)
    exposition = Exposition(metrics.registry, metrics)
    failures: list[BaseException] = []
    renders = 0
    stop = threading.Event()

    def scrape() -> None:
        nonlocal renders
        while not stop.is_set():
            try:
                exposition._render()
                renders += 1
            except BaseException as err:  # recorded: the test fails on it
                failures.append(err)
                return

    scraper = threading.Thread(target=scrape)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often: a race shows within the test
    scraper.start()
    try:
        now = 0.0
        for step in range(30):
            now += 1.0
            # New models join as the loop goes (their series bound mid-render).
            models = [f"m{i}" for i in range(10 * step, 10 * step + 40)]
            engine.apply([e for m in models for e in events(m, 10, rng)], now)
            publisher.publish(set(engine.changed))
            if step % 10 == 9:
                for model in models[:5]:
                    publisher.unpublish(model, counters=True)
                    engine.drop(model)
    finally:
        stop.set()
        scraper.join(timeout=60)
        sys.setswitchinterval(switch)
    assert not failures, failures
    assert renders > 0
    assert_same(metrics)


def test_a_render_between_the_version_bump_and_the_reading_is_not_kept_stale(
    monkeypatch: Any,
) -> None:
    """The scrape's thread may run between any two steps of ``publish``: whatever it renders
    then, the next render after ``publish`` shows the registry. Deterministic: the thread's
    render is run at every change of a model's version (where a thread switch hurts most)."""
    import monitor.observability.publisher as publisher_module

    renders: list[int] = []
    holder: dict[str, SeriesPublisher] = {}

    class RenderedAtEveryBump(publisher_module.ModelSeries):
        """A ModelSeries whose every version change lets the scrape's thread render."""

        @property  # type: ignore[override]
        def version(self) -> int:
            return int(self.__dict__.get("_version", 0))

        @version.setter
        def version(self, value: int) -> None:
            self.__dict__["_version"] = value
            if "publisher" in holder:
                holder["publisher"].exposition()
                renders.append(value)

    monkeypatch.setattr(publisher_module, "ModelSeries", RenderedAtEveryBump)
    rng = random.Random(11)
    engine = Engine(lambda model: POLICY, max_models=100, defer=False)
    metrics = Metrics.create(CollectorRegistry())
    publisher = holder["publisher"] = SeriesPublisher(metrics, engine.models)
    now = 0.0
    for step in range(8):
        now += 1.0
        engine.apply([e for m in MODELS[:3] for e in events(m, 10, rng, shifted=step > 4)], now)
        publisher.publish(set(engine.changed))
        assert_same(metrics)
    assert renders, "no render ran mid-publish: the test checks nothing"


def test_a_model_restored_in_place_with_fewer_outcomes_is_published_without_error() -> None:
    """A monitor replaced by one restored from an older checkpoint (fewer outcomes counted):
    its outcome counters go on from there (never down, which prometheus_client refuses with
    an error that would stop the batch loop)."""
    from monitor.state.checkpoints import restore_model, snapshot_model

    policy = ModelPolicy.model_validate(
        {"outcomes": {"join": "on"}, "signals": [{"source": "label_error"}]}
    )
    engine = Engine(lambda model: policy, max_models=10)
    metrics = Metrics.create(CollectorRegistry())
    publisher = SeriesPublisher(metrics, engine.models)

    def outcome(k: int, now: float) -> None:
        engine.apply([Event(model="a", request_id=f"r{k}", prediction=1.0)], now)
        engine.apply([Event(model="a", request_id=f"r{k}", label=1.0)], now)
        publisher.publish({"a"})

    outcome(0, 1.0)
    older = snapshot_model(engine.models["a"], None, None)
    for k in range(1, 5):
        outcome(k, 1.0 + k)
    joined = {"model": "a", "result": "joined"}
    shown = metrics.registry.get_sample_value("driftwarden_outcomes_total", joined)
    assert shown == 5.0
    assert engine.adopt("a", restore_model(older, policy, 10.0, None))
    publisher.publish({"a"})
    outcome(9, 11.0)
    assert metrics.registry.get_sample_value("driftwarden_outcomes_total", joined) == 6.0
    assert_same(metrics)
