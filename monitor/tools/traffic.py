"""Synthetic inference traffic, the one generator of the demo, the benchmarks and the tests.

- ``TrafficGenerator`` produces events to Kafka at a steady rate per model, keyed by model,
  following a script of incidents (the demo's: feature drift, latency spike, error surge,
  engagement drop) and incidents begun and ended by hand (a test's). What an event says comes
  from an ``EventMaker``: ``make_event`` (the demo's three models) or ``ErrorEvents`` (any
  model: an error flag at a settable rate). Knobs: models, rate and per-model weights, seed,
  with or without ``ts``, a duration, and a hook that sees every event the broker acknowledged.
- ``event_stream`` is the same without Kafka or pacing: a reproducible list of events with
  event times ``step_s`` apart (replay and record tests).
- ``synthetic_batches`` is the throughput bench's workload: many models, ten numeric and two
  categorical features, encoded in bulk with numpy (a per-event Python loop would be slower
  than the daemon it feeds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import msgspec
import numpy as np
from aiokafka import AIOKafkaProducer

__all__ = [
    "DEMO_MODELS",
    "DEMO_SCRIPT",
    "SCRIPT_PERIOD_S",
    "SYNTHETIC_CATEGORIES",
    "ErrorEvents",
    "EventMaker",
    "Incident",
    "IncidentKind",
    "TrafficGenerator",
    "demo_script",
    "event_stream",
    "make_event",
    "script_length",
    "synthetic_batches",
    "synthetic_models",
]

log = logging.getLogger(__name__)

IncidentKind = Literal["feature_drift", "latency_spike", "error_surge", "engagement_drop"]

DEMO_MODELS = ("fraud-scorer", "search-ranker", "chat-assistant")


@dataclass(frozen=True, slots=True)
class Incident:
    """One scripted incident: what breaks, when (seconds after traffic starts), and the flag
    the demo policy flips for it (to ``value`` while it lasts, back to ``healthy`` after)."""

    model: str
    kind: IncidentKind
    start_s: float
    end_s: float
    flag: str
    value: bool | str
    healthy: bool | str
    #: The health level the policy reaches for it.
    level: str

    @property
    def name(self) -> str:
        return f"{self.model}/{self.kind}"

    def active(self, elapsed: float) -> bool:
        return self.start_s <= elapsed < self.end_s


#: Seconds of healthy traffic before the first incident (the drift detector's reference fills).
LEAD_S = 6.0
#: How long each scripted incident lasts.
INCIDENT_S = 8.0
#: After an incident ends: the detectors' windows drain (~1 s), the model stays healthy for
#: the policy's ``recover_after`` (5 s) and the flag is restored (~7 s in all, more on a busy
#: machine); then a few quiet seconds before the next incident.
RECOVERY_S = 12.0
#: The closest two incidents start (one at a time: each one's cause, detection, flag and
#: recovery read on their own) and the widest (a long run does not go quiet for minutes).
MIN_SLOT_S = INCIDENT_S + RECOVERY_S
MAX_SLOT_S = 30.0

#: What breaks, in the order it breaks: one model has two incidents, far enough apart for the
#: first to recover and the health machine's ``cooldown`` to pass before the second.
_ORDER: tuple[tuple[str, IncidentKind, str, bool | str, bool | str, str], ...] = (
    ("fraud-scorer", "feature_drift", "fraud-scorer-variant", "rules", "model", "degraded"),
    ("search-ranker", "latency_spike", "search-ranker-variant", "fallback", "model", "degraded"),
    ("chat-assistant", "engagement_drop", "chat-assistant-model", "previous", "current",
     "degraded"),
    ("search-ranker", "error_surge", "search-ranker-enabled", False, True, "critical"),
)  # fmt: skip


def script_length(slot_s: float = MIN_SLOT_S) -> float:
    """Seconds the whole script takes, its last recovery included, with incidents ``slot_s``
    apart.

    >>> script_length()
    86.0
    """
    return LEAD_S + (len(_ORDER) - 1) * slot_s + INCIDENT_S + RECOVERY_S


def demo_script(duration_s: float | None = None) -> tuple[Incident, ...]:
    """The incidents, one at a time, spread over a run of ``duration_s`` seconds.

    Without a duration (the script repeats) they are ``MIN_SLOT_S`` apart. A longer run spaces
    them out (up to ``MAX_SLOT_S``); a run too short for all of them keeps those that finish,
    the first one at least.

    >>> [i.start_s for i in demo_script()]
    [6.0, 26.0, 46.0, 66.0]
    >>> [i.start_s for i in demo_script(92.0)]
    [6.0, 28.0, 50.0, 72.0]
    >>> [i.name for i in demo_script(70.0)]
    ['fraud-scorer/feature_drift', 'search-ranker/latency_spike', 'chat-assistant/engagement_drop']
    """
    slot = MIN_SLOT_S
    if duration_s is not None and duration_s > script_length():
        slot = min(MAX_SLOT_S, (duration_s - script_length(0.0)) / (len(_ORDER) - 1))
    incidents = []
    for index, (model, kind, flag, value, healthy, level) in enumerate(_ORDER):
        start = LEAD_S + index * slot
        if index and duration_s is not None and start + INCIDENT_S + RECOVERY_S > duration_s:
            break
        incidents.append(
            Incident(model, kind, start, start + INCIDENT_S, flag, value, healthy, level)
        )
    return tuple(incidents)


#: The demo's script when it repeats (no ``--duration``).
DEMO_SCRIPT: tuple[Incident, ...] = demo_script()

#: Seconds after which the script starts over (when the demo runs without ``--duration``).
SCRIPT_PERIOD_S = script_length() + 4.0


#: What one event of ``model`` says: its number ``i`` (unique over the traffic), the incident
#: kinds active on the model and the traffic's random source.
EventMaker = Callable[[str, int, frozenset[str], random.Random], dict[str, Any]]


def make_event(model: str, i: int, kinds: frozenset[str], rng: random.Random) -> dict[str, Any]:
    """One inference event of ``model`` while the incidents ``kinds`` are active.

    >>> import random
    >>> e = make_event("search-ranker", 7, frozenset(), random.Random(0))
    >>> e["model"], e["request_id"], e["latency_ms"] < 250, e["error"] in (True, False)
    ('search-ranker', 'search-ranker-7', True, True)
    >>> slow = [make_event("search-ranker", i, frozenset({"latency_spike"}), random.Random(i))
    ...         for i in range(200)]
    >>> sum(e["latency_ms"] > 250 for e in slow) > 150
    True
    """
    latency_median = {"fraud-scorer": 40.0, "search-ranker": 80.0, "chat-assistant": 900.0}[model]
    if "latency_spike" in kinds:
        latency_median *= 8.0
    error_rate = 0.45 if "error_surge" in kinds else 0.005
    event: dict[str, Any] = {
        "model": model,
        "model_version": "2024.06.1",
        "request_id": f"{model}-{i}",
        "latency_ms": round(latency_median * math.exp(rng.gauss(0.0, 0.25)), 2),
        "error": rng.random() < error_rate,
    }
    if model == "fraud-scorer":
        # A new merchant's traffic: amounts several times larger than the model ever saw.
        amount = math.exp(rng.gauss(3.5 + (2.0 if "feature_drift" in kinds else 0.0), 0.6))
        event["features"] = {
            "amount": round(amount, 2),
            "country": rng.choice(("DE", "FR", "US", "US", "GB")),
            "card_present": rng.random() < 0.7,
        }
        score = min(1.0, max(0.0, rng.betavariate(1.2, 12.0)))
        event["prediction"] = round(score, 4)
        event["confidence"] = round(1.0 - score, 4)
    elif model == "search-ranker":
        event["features"] = {"query_len": rng.randint(1, 12), "locale": rng.choice(("en", "de"))}
        event["prediction"] = round(rng.random(), 4)
    else:
        event["features"] = {"turns": rng.randint(1, 20)}
        event["confidence"] = round(rng.uniform(0.5, 1.0), 4)
        if rng.random() < 0.6:
            liked = 0.25 if "engagement_drop" in kinds else 0.8
            event["feedback"] = 1 if rng.random() < liked else 0
    return event


@dataclass(slots=True)
class ErrorEvents:
    """Events of any model that carry an error flag and a fixed latency: a share
    ``error_rate`` of them fail, ``surge_error_rate`` while an ``error_surge`` is active on the
    model. The rates are attributes, so a test may also change them mid-run.

    With ``scored``, each event also has a uniform ``confidence`` and the ``prediction`` it
    rounds to (what review sampling and the label signals read).

    >>> import random
    >>> make = ErrorEvents(error_rate=0.0)
    >>> make("m", 3, frozenset(), random.Random(0))
    {'model': 'm', 'request_id': 'm-3', 'latency_ms': 20.0, 'error': False}
    >>> surge = [make("m", i, frozenset({"error_surge"}), random.Random(i)) for i in range(200)]
    >>> 0.4 < sum(e["error"] for e in surge) / 200 < 0.8
    True
    """

    error_rate: float = 0.0
    surge_error_rate: float = 0.6
    latency_ms: float = 20.0
    scored: bool = False

    def __post_init__(self) -> None:
        for name in ("error_rate", "surge_error_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate!r}.")

    def __call__(
        self, model: str, i: int, kinds: frozenset[str], rng: random.Random
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "model": model,
            "request_id": f"{model}-{i}",
            "latency_ms": self.latency_ms,
        }
        if self.scored:
            confidence = round(rng.random(), 4)
            event["prediction"] = 1.0 if confidence >= 0.5 else 0.0
            event["confidence"] = confidence
        rate = self.surge_error_rate if "error_surge" in kinds else self.error_rate
        event["error"] = rng.random() < rate
        return event


def event_stream(
    n: int,
    make: EventMaker,
    *,
    models: Sequence[str] = DEMO_MODELS,
    incidents: Mapping[str, Callable[[int], frozenset[str]]] | None = None,
    seed: int = 0,
    t0: float | None = None,
    step_s: float = 0.01,
) -> Iterator[dict[str, Any]]:
    """``n`` events, the models taking turns, without Kafka or pacing (a recorded topic).

    ``incidents`` maps a model to the incident kinds active at each event number; with
    ``t0`` the ``i``-th event has ``ts = t0 + i * step_s``, without it no ``ts`` at all.

    >>> [e["request_id"] for e in event_stream(3, ErrorEvents(), models=("a", "b"))]
    ['a-0', 'b-1', 'a-2']
    >>> [e["ts"] for e in event_stream(2, ErrorEvents(), models=("a",), t0=100.0, step_s=0.5)]
    [100.0, 100.5]
    """
    if not models:
        raise ValueError("event_stream needs at least one model.")
    rng = random.Random(seed)
    none: frozenset[str] = frozenset()
    for i in range(n):
        model = models[i % len(models)]
        active = incidents.get(model) if incidents else None
        event = make(model, i, active(i) if active else none, rng)
        if t0 is not None:
            event["ts"] = t0 + i * step_s
        yield event


class TrafficGenerator:
    """Produces ``rate_per_model`` events per second for each model, following ``script``.

    Parameters
    ----------
    bootstrap_servers
        The broker.
    topic
        The topic the daemon consumes; the record key is the model id.
    rate_per_model
        Events per second per model.
    models
        The models; the demo's three by default.
    script
        The incidents; each is active between its ``start_s`` and ``end_s`` after ``start``.
        ``begin`` and ``end`` add and remove incidents by hand besides.
    period_s
        Start the script over after this many seconds; None plays it once.
    seed
        Seeds the random source handed to ``make``.
    make
        What each event says (``make_event``: the demo's models; ``ErrorEvents``: any model).
    weights
        Rate multipliers per model (a model not named keeps 1): a busy model among quiet ones.
    timestamps
        Give each event a ``ts`` (epoch seconds, ``wall_clock`` at production); without,
        events carry none and the daemon uses the receive time, as for the demo.
    duration_s
        Stop producing after this many seconds (``finished`` returns then); None runs until
        ``stop``.
    observe
        Called with each event once the broker acknowledged it (a test keeps what it sent).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        rate_per_model: float = 200.0,
        models: Sequence[str] = DEMO_MODELS,
        script: Sequence[Incident] = DEMO_SCRIPT,
        period_s: float | None = None,
        seed: int = 0,
        tick_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        make: EventMaker = make_event,
        weights: Mapping[str, float] | None = None,
        timestamps: bool = False,
        wall_clock: Callable[[], float] = time.time,
        duration_s: float | None = None,
        observe: Callable[[dict[str, Any]], None] | None = None,
        linger_ms: int = 20,
        client_id: str = "driftwarden-demo-traffic",
    ) -> None:
        if rate_per_model <= 0:
            raise ValueError(f"rate_per_model must be positive, got {rate_per_model!r}.")
        weights = dict(weights or {})
        for model, weight in weights.items():
            if model not in models:
                raise ValueError(f"weights name {model!r}, which is not one of the models.")
            if not weight > 0:
                raise ValueError(f"the weight of {model!r} must be positive, got {weight!r}.")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration_s must be positive, got {duration_s!r}.")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.rate_per_model = rate_per_model
        self.models = tuple(models)
        self.script = tuple(script)
        self.period_s = period_s
        self.tick_s = tick_s
        self.clock = clock
        self.make = make
        self.weights = weights
        self.timestamps = timestamps
        self.wall_clock = wall_clock
        self.duration_s = duration_s
        self.observe = observe
        self.linger_ms = linger_ms
        self.client_id = client_id
        self.produced = 0
        self.started_at: float | None = None
        self._manual: dict[str, set[str]] = {}
        self._rng = random.Random(seed)
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def elapsed(self) -> float:
        """Seconds since the traffic started (0 before)."""
        return 0.0 if self.started_at is None else self.clock() - self.started_at

    def script_time(self, elapsed: float | None = None) -> float:
        t = self.elapsed if elapsed is None else elapsed
        return t % self.period_s if self.period_s else t

    def active(self, elapsed: float | None = None) -> list[Incident]:
        """The incidents running at ``elapsed`` (now by default)."""
        t = self.script_time(elapsed)
        return [incident for incident in self.script if incident.active(t)]

    def begin(self, model: str, kind: str) -> None:
        """An incident of ``kind`` on ``model`` from the next tick on, until ``end``."""
        if model not in self.models:
            raise ValueError(f"{model!r} is not one of the traffic's models.")
        self._manual.setdefault(model, set()).add(kind)

    def end(self, model: str, kind: str) -> None:
        """End an incident ``begin`` started (one that is not running is no error)."""
        self._manual.get(model, set()).discard(kind)

    async def send(self, body: dict[str, Any]) -> None:
        """One extra record on the topic, keyed by its model (e.g. a label event)."""
        if self._producer is None:
            raise RuntimeError("the traffic is not started.")
        key = str(body["model"]).encode()
        await (await self._producer.send(self.topic, json.dumps(body).encode(), key=key))

    async def finished(self) -> None:
        """Wait until a traffic with a ``duration_s`` has produced (and had acknowledged) its
        last event."""
        if self.duration_s is None:
            raise RuntimeError("a traffic without duration_s never finishes.")
        if self._task is not None:
            await asyncio.shield(self._task)

    async def start(self) -> None:
        if self._task is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            linger_ms=self.linger_ms,
            acks=1,
        )
        await producer.start()
        self._producer = producer
        self.started_at = self.clock()
        self._task = asyncio.create_task(self._run(), name="demo-traffic")
        log.info("traffic: %d models at %.0f events/s each", len(self.models), self.rate_per_model)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
            log.info("traffic stopped after %d events", self.produced)

    async def __aenter__(self) -> TrafficGenerator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        assert self._producer is not None and self.started_at is not None
        producer = self._producer
        rng = self._rng
        make = self.make
        weight = [self.weights.get(model, 1.0) for model in self.models]
        owed = [0.0] * len(self.models)
        last = self.clock()
        while self.duration_s is None or self.elapsed < self.duration_s:
            await asyncio.sleep(self.tick_s)
            now = self.clock()
            # Pay what the elapsed time owes, so a slow tick does not lower the rate.
            counts = []
            for index in range(len(self.models)):
                owed[index] += (now - last) * self.rate_per_model * weight[index]
                count = int(owed[index])
                owed[index] -= count
                counts.append(count)
            last = now
            if not any(counts):
                continue
            kinds_of: dict[str, set[str]] = {m: set(self._manual.get(m, ())) for m in self.models}
            for incident in self.active():
                kinds_of.setdefault(incident.model, set()).add(incident.kind)
            futures = []
            bodies = []
            try:
                for model, count in zip(self.models, counts, strict=True):
                    kinds = frozenset(kinds_of[model])
                    key = model.encode()
                    for _ in range(count):
                        body = make(model, self.produced, kinds, rng)
                        if self.timestamps:
                            body["ts"] = self.wall_clock()
                        self.produced += 1
                        futures.append(
                            await producer.send(self.topic, json.dumps(body).encode(), key=key)
                        )
                        bodies.append(body)
                await asyncio.gather(*futures)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                # The broker may be stopping under us at shutdown; keep trying meanwhile.
                log.warning("traffic: produce failed: %r", err)
                continue
            if self.observe is not None:
                for body in bodies:
                    self.observe(body)


# ------------------------------------------------------------------ the bench's bulk workload

#: The categorical features of ``synthetic_batches`` and their levels.
SYNTHETIC_CATEGORIES = {"c0": [f"a{i}" for i in range(5)], "c1": [f"b{i}" for i in range(20)]}


def synthetic_models(n_models: int) -> list[str]:
    """The model ids of ``synthetic_batches``: ``model-0000`` on.

    >>> synthetic_models(2)
    ['model-0000', 'model-0001']
    """
    return [f"model-{i:04d}" for i in range(n_models)]


def synthetic_batches(
    n: int, n_models: int, seed: int = 7, chunk: int = 50_000, n_numeric: int = 10
) -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """Chunks of (model index per event, encoded v1 events): steady traffic per model,
    ``n_numeric`` numeric features ``f0..`` and two categorical ones, a prediction, its
    confidence, a log-normal latency and 1 % errors; no ``ts``.

    >>> idx, values = next(synthetic_batches(3, 2, seed=1))
    >>> len(values), sorted(msgspec.json.decode(values[0]))
    (3, ['confidence', 'error', 'features', 'latency_ms', 'model', 'prediction'])
    """
    rng = np.random.default_rng(seed)
    names = synthetic_models(n_models)
    numeric = [f"f{i}" for i in range(n_numeric)]
    centres = rng.normal(0.0, 3.0, size=(n_models, n_numeric))
    encode = msgspec.json.Encoder().encode
    done = 0
    while done < n:
        k = min(chunk, n - done)
        idx = rng.integers(0, n_models, size=k)
        feats = centres[idx] + rng.normal(size=(k, n_numeric))
        c0 = rng.integers(0, 5, size=k)
        c1 = rng.integers(0, 20, size=k)
        pred = 1.0 / (1.0 + np.exp(-feats[:, 0]))
        conf = rng.uniform(0.5, 1.0, size=k)
        lat = rng.lognormal(3.0, 0.4, size=k)
        err = rng.random(k) < 0.01
        feats_l = np.round(feats, 4).tolist()
        pred_l, conf_l, lat_l = pred.tolist(), conf.tolist(), np.round(lat, 2).tolist()
        c0_l, c1_l, err_l = c0.tolist(), c1.tolist(), err.tolist()
        values = []
        for j in range(k):
            features: dict[str, Any] = dict(zip(numeric, feats_l[j], strict=True))
            features["c0"] = SYNTHETIC_CATEGORIES["c0"][c0_l[j]]
            features["c1"] = SYNTHETIC_CATEGORIES["c1"][c1_l[j]]
            values.append(
                encode(
                    {
                        "model": names[idx[j]],
                        "features": features,
                        "prediction": pred_l[j],
                        "confidence": conf_l[j],
                        "latency_ms": lat_l[j],
                        "error": err_l[j],
                    }
                )
            )
        done += k
        yield idx, values
