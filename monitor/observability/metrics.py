"""Every Prometheus metric driftwarden exports, created by one factory over a registry.

Names follow ``driftwarden_<noun>_<unit>``; counters end in ``_total``. Tests build their own
``CollectorRegistry`` so nothing touches the global one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from monitor import __version__
from monitor.engine.admission import Refusal

__all__ = ["HEALTH_STATES", "MODEL_GAUGES", "Metrics"]

HEALTH_STATES = ("ok", "warn", "degraded", "critical")

#: The per-model gauges (most of the series at scale) whose exposition text the publisher
#: keeps per model (``monitor.observability.publisher``), in the order /metrics shows them.
#: Their Gauges stay in ``Metrics.registry`` as the values' truth (``get_sample_value``).
MODEL_GAUGES = (
    "health_state",
    "health_level",
    "signal_value",
    "signal_effect",
    "signal_threshold",
    "signal_breached",
    "signal_samples",
)


def _with_children(counter: Counter, values: list[str]) -> Counter:
    """``counter`` with a zero series per label value: rates and alerts see it from the
    start, not only after its first increment."""
    for value in values:
        counter.labels(value)
    return counter


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry
    build_info: Info
    # consumer
    records_consumed: Counter
    events_applied: Counter
    bad_records: Counter
    dead_lettered: Counter
    dead_letters_dropped: Counter
    dead_letters_truncated: Counter
    batch_in_flight: Gauge
    batches: Counter
    batch_duration: Histogram
    consumer_lag: Gauge
    committed_offset: Gauge
    commit_failures: Counter
    broker_up: Gauge
    partitions_assigned: Gauge
    partition_unreadable: Gauge
    fetch_errors: Counter
    loop_lag: Gauge
    # engine
    models_active: Gauge
    models_dropped_events: Counter
    events_refused: Counter
    models_evicted: Counter
    model_events: Counter
    signal_value: Gauge
    signal_effect: Gauge
    signal_threshold: Gauge
    signal_breached: Gauge
    signal_samples: Gauge
    # the outcome join (monitor/engine/outcomes.py)
    outcomes: Counter
    outcome_evictions: Counter
    outcome_pending: Gauge
    # health and actions
    health_state: Gauge
    health_level: Gauge
    transitions: Counter
    actions: Counter
    flag_backend_up: Gauge
    flag_queue_depth: Gauge
    flag_writes: Counter
    alert_sink_up: Gauge
    alert_queue_depth: Gauge
    alerts_sent: Counter
    review_events: Counter
    # state
    checkpoints: Counter
    checkpoint_failures: Counter
    last_checkpoint: Gauge
    checkpoint_failing_models: Gauge
    #: Every collector of ``registry`` but the ``MODEL_GAUGES``: what /metrics renders with
    #: prometheus_client when a publisher renders those (``model_series``).
    core: CollectorRegistry = field(default_factory=CollectorRegistry)
    #: The publisher that renders the ``MODEL_GAUGES``' text (None: none, or several share
    #: these metrics; /metrics then renders the whole registry).
    model_series: Any = None
    #: Whether a second publisher was bound to these metrics (``bind_model_series``).
    model_series_shared: bool = False

    def bind_model_series(self, publisher: Any) -> None:
        """Let ``publisher`` render the per-model gauges' text; a second one on the same
        metrics turns that off (each would render only its own models)."""
        if self.model_series is None and not self.model_series_shared:
            self.model_series = publisher
        elif self.model_series is not publisher:
            self.model_series, self.model_series_shared = None, True

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        build_info = Info("driftwarden_build", "Build information.", registry=r)
        build_info.info({"version": __version__})
        metrics = cls(
            registry=r,
            build_info=build_info,
            records_consumed=Counter(
                "driftwarden_records_consumed_total",
                "Kafka records fetched, good or bad.",
                ["topic"],
                registry=r,
            ),
            events_applied=Counter(
                "driftwarden_events_applied_total",
                "Decoded events applied to a model's detectors.",
                registry=r,
            ),
            bad_records=Counter(
                "driftwarden_bad_records_total",
                "Records that could not be decoded, by reason.",
                ["reason"],
                registry=r,
            ),
            dead_lettered=Counter(
                "driftwarden_dead_lettered_total",
                "Records written to the dead-letter topic.",
                registry=r,
            ),
            dead_letters_dropped=Counter(
                "driftwarden_dead_letters_dropped_total",
                "Bad records whose dead letter the broker refused for good, by reason "
                "(too_large, not_authorized, invalid_topic, rejected); each is logged.",
                ["reason"],
                registry=r,
            ),
            dead_letters_truncated=Counter(
                "driftwarden_dead_letters_truncated_total",
                "Dead letters written with their value cut to kafka.dead_letter_max_bytes.",
                registry=r,
            ),
            batch_in_flight=Gauge(
                "driftwarden_batch_in_flight_seconds",
                "Age of the batch being applied, 0 between batches; it grows while the "
                "batch's dead letters wait for the broker.",
                registry=r,
            ),
            batches=Counter(
                "driftwarden_batches_total", "Batches fully applied and committed.", registry=r
            ),
            batch_duration=Histogram(
                "driftwarden_batch_duration_seconds",
                "Time to apply one fetched batch (decode, detectors, health, commit).",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=r,
            ),
            consumer_lag=Gauge(
                "driftwarden_consumer_lag_records",
                "Records between the high watermark and the next offset to consume.",
                ["topic", "partition"],
                registry=r,
            ),
            committed_offset=Gauge(
                "driftwarden_committed_offset",
                "Last offset committed to the consumer group.",
                ["topic", "partition"],
                registry=r,
            ),
            commit_failures=Counter(
                "driftwarden_commit_failures_total", "Offset commits that failed.", registry=r
            ),
            broker_up=Gauge(
                "driftwarden_broker_up",
                "1 when the last broker call answered within its deadline.",
                registry=r,
            ),
            partitions_assigned=Gauge(
                "driftwarden_partitions_assigned",
                "Partitions assigned to this replica.",
                registry=r,
            ),
            partition_unreadable=Gauge(
                "driftwarden_partition_unreadable",
                "1 while a partition's records cannot be read (paused, retried with backoff).",
                ["topic", "partition"],
                registry=r,
            ),
            fetch_errors=Counter(
                "driftwarden_fetch_errors_total",
                "Reads of a partition's records that failed (the error: log, /readyz, /status).",
                ["topic", "partition"],
                registry=r,
            ),
            loop_lag=Gauge(
                "driftwarden_event_loop_lag_seconds",
                "How late the event loop's heartbeat last ran.",
                registry=r,
            ),
            models_active=Gauge(
                "driftwarden_models_active", "Models with a live monitor.", registry=r
            ),
            models_dropped_events=Counter(
                "driftwarden_model_limit_dropped_events_total",
                "Events dropped because their model got no monitor (sum of "
                "driftwarden_events_refused_total; kept for existing dashboards).",
                registry=r,
            ),
            events_refused=_with_children(
                Counter(
                    "driftwarden_events_refused_total",
                    "Events of models that got no monitor (not applied), by reason: "
                    "probation (a new id past max_models not seen often enough yet), "
                    "model_limit (no watched model could be evicted for it).",
                    ["reason"],
                    registry=r,
                ),
                [reason.value for reason in Refusal],
            ),
            models_evicted=Counter(
                "driftwarden_models_evicted_total",
                "Unnamed models evicted (healthy, holding nothing) to watch a new model.",
                registry=r,
            ),
            model_events=Counter(
                "driftwarden_model_events_total",
                "Events a model received (counted per batch, whether they fed a test yet).",
                ["model"],
                registry=r,
            ),
            signal_value=Gauge(
                "driftwarden_signal_value",
                "Latest statistic of a model's signal.",
                ["model", "signal"],
                registry=r,
            ),
            signal_effect=Gauge(
                "driftwarden_signal_effect_size",
                "Latest effect size of a model's signal.",
                ["model", "signal"],
                registry=r,
            ),
            signal_threshold=Gauge(
                "driftwarden_signal_threshold",
                "Threshold a signal's statistic is compared with, by level.",
                ["model", "signal", "level"],
                registry=r,
            ),
            signal_breached=Gauge(
                "driftwarden_signal_breached",
                "1 while the signal's detector reports drift or anomaly.",
                ["model", "signal"],
                registry=r,
            ),
            signal_samples=Gauge(
                "driftwarden_signal_samples",
                "Samples the signal's latest reading rests on.",
                ["model", "signal"],
                registry=r,
            ),
            outcomes=Counter(
                "driftwarden_outcomes_total",
                "Outcome events (a label and no prediction) by result: joined (met its "
                "prediction), late (its prediction had been evicted), unmatched (no prediction "
                "of that request_id kept), duplicate (its prediction already met one).",
                ["model", "result"],
                registry=r,
            ),
            outcome_evictions=Counter(
                "driftwarden_outcome_predictions_evicted_total",
                "Predictions that left the outcome join unmet, by reason: age (past "
                "outcomes.horizon), count (past outcomes.max_pending or the model's share of "
                "engine.max_pending_outcomes), replaced (a newer event of its request_id).",
                ["model", "reason"],
                registry=r,
            ),
            outcome_pending=Gauge(
                "driftwarden_outcome_predictions_pending",
                "Predictions a model keeps waiting for their outcome.",
                ["model"],
                registry=r,
            ),
            health_state=Gauge(
                "driftwarden_model_health_state",
                "1 for the model's current health state, 0 for the others.",
                ["model", "state"],
                registry=r,
            ),
            health_level=Gauge(
                "driftwarden_model_health_level",
                "Model health as a number: 0 ok, 1 warn, 2 degraded, 3 critical.",
                ["model"],
                registry=r,
            ),
            transitions=Counter(
                "driftwarden_health_transitions_total",
                "Health state transitions.",
                ["model", "from_state", "to_state"],
                registry=r,
            ),
            actions=Counter(
                "driftwarden_actions_total",
                "Actions decided on a transition, by kind and outcome (applied, shadow, ...).",
                ["kind", "outcome"],
                registry=r,
            ),
            flag_backend_up=Gauge(
                "driftwarden_flag_backend_up",
                "1 when the flag backend's last call succeeded.",
                ["backend"],
                registry=r,
            ),
            flag_queue_depth=Gauge(
                "driftwarden_flag_queue_depth",
                "Flag writes waiting for their backend.",
                ["backend"],
                registry=r,
            ),
            flag_writes=Counter(
                "driftwarden_flag_writes_total",
                "Flag write attempts by outcome (ok, retry, failed, dropped).",
                ["backend", "outcome"],
                registry=r,
            ),
            alert_sink_up=Gauge(
                "driftwarden_alert_sink_up",
                "1 when the alert sink's last delivery succeeded.",
                ["sink"],
                registry=r,
            ),
            alert_queue_depth=Gauge(
                "driftwarden_alert_queue_depth",
                "Alert deliveries waiting for their sink.",
                ["sink"],
                registry=r,
            ),
            alerts_sent=Counter(
                "driftwarden_alert_deliveries_total",
                "Alert delivery attempts by sink, alert status and outcome.",
                ["sink", "status", "outcome"],
                registry=r,
            ),
            review_events=Counter(
                "driftwarden_review_events_total",
                "Events sampled to the human review topic.",
                ["model"],
                registry=r,
            ),
            checkpoints=Counter(
                "driftwarden_checkpoints_total", "State checkpoints written.", registry=r
            ),
            checkpoint_failures=Counter(
                "driftwarden_checkpoint_failures_total",
                "State checkpoints that failed.",
                registry=r,
            ),
            last_checkpoint=Gauge(
                "driftwarden_last_checkpoint_timestamp_seconds",
                "Unix time of the last successful checkpoint.",
                registry=r,
            ),
            checkpoint_failing_models=Gauge(
                "driftwarden_checkpoint_failing_models",
                "Models whose last checkpoint attempt failed.",
                registry=r,
            ),
        )
        skipped = {id(getattr(metrics, name)) for name in MODEL_GAUGES}
        for spec in fields(cls):
            collector = getattr(metrics, spec.name)
            if isinstance(collector, MetricWrapperBase) and id(collector) not in skipped:
                metrics.core.register(collector)
        return metrics
