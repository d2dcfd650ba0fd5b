"""The demo's scripted traffic: inference events of three models, healthy except during
scripted incidents (feature drift, latency spike, error surge, engagement drop), produced to Kafka.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from aiokafka import AIOKafkaProducer

__all__ = [
    "DEMO_MODELS",
    "DEMO_SCRIPT",
    "SCRIPT_PERIOD_S",
    "Incident",
    "IncidentKind",
    "TrafficGenerator",
    "demo_script",
    "make_event",
    "script_length",
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
    script
        The incidents; each is active between its ``start_s`` and ``end_s`` after ``start``.
    period_s
        Start the script over after this many seconds; None plays it once.
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
    ) -> None:
        if rate_per_model <= 0:
            raise ValueError(f"rate_per_model must be positive, got {rate_per_model!r}.")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.rate_per_model = rate_per_model
        self.models = tuple(models)
        self.script = tuple(script)
        self.period_s = period_s
        self.tick_s = tick_s
        self.clock = clock
        self.produced = 0
        self.started_at: float | None = None
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

    async def start(self) -> None:
        if self._task is not None:
            return
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id="driftwarden-demo-traffic",
            linger_ms=20,
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
        owed = 0.0
        last = self.clock()
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock()
            # Pay what the elapsed time owes, so a slow tick does not lower the rate.
            owed += (now - last) * self.rate_per_model
            last = now
            count = int(owed)
            owed -= count
            if count == 0:
                continue
            kinds_of: dict[str, set[str]] = {m: set() for m in self.models}
            for incident in self.active():
                kinds_of.setdefault(incident.model, set()).add(incident.kind)
            futures = []
            try:
                for model in self.models:
                    kinds = frozenset(kinds_of[model])
                    key = model.encode()
                    for _ in range(count):
                        body = make_event(model, self.produced, kinds, rng)
                        self.produced += 1
                        futures.append(
                            await producer.send(self.topic, json.dumps(body).encode(), key=key)
                        )
                await asyncio.gather(*futures)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                # The broker may be stopping under us at shutdown; keep trying meanwhile.
                log.warning("traffic: produce failed: %r", err)
