"""Settings: one YAML file (``--config``) with every scalar overridable from the environment
as ``DRIFTWARDEN_<SECTION>__<FIELD>``; config errors name the file, the field path and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from alerts.config import AlertSinkSpec, ConsoleSpec
from monitor.config.diagnostics import LoadedYaml, load_yaml_with_lines
from monitor.config.diagnostics import format_validation_error as _format_errors
from monitor.config.policy import ModelPolicy
from monitor.errors import ConfigError
from monitor.flags.config import FlagBackendSpec, FlagdFileSpec

__all__ = [
    "EngineSettings",
    "HttpSettings",
    "KafkaSettings",
    "LifecycleSettings",
    "Settings",
    "format_validation_error",
    "load_settings",
]

ENV_PREFIX = "DRIFTWARDEN_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    #: Topics to consume; or ``topic_pattern``, a regular expression, instead.
    topics: list[str] = Field(default_factory=lambda: ["inference-events"])
    topic_pattern: str | None = None
    group_id: str = "driftwarden"
    client_id: str = "driftwarden"
    dead_letter_topic: str = "driftwarden-dead-letter"
    review_topic: str = "driftwarden-review"
    #: Where new consumer groups start: ``latest`` for live monitoring, ``earliest`` to replay.
    auto_offset_reset: Literal["earliest", "latest"] = "latest"
    max_poll_records: int = Field(default=5000, ge=1, le=1_000_000)
    fetch_timeout_ms: int = Field(default=500, ge=1, le=60_000)
    #: After a fetch that returned records, keep merging what the fetcher already holds for
    #: up to this long (bigger batches: fewer, cheaper detector updates). 0 turns it off.
    batch_max_wait_ms: int = Field(default=50, ge=0, le=10_000)
    #: Deadline of any single broker call (fetch, commit, produce); past it the broker is
    #: considered down and the call is retried.
    broker_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Records larger than this go to the dead-letter topic undecoded.
    max_record_bytes: int = Field(default=1_048_576, ge=64)
    #: Largest dead letter written (key, value and headers together; keep it under the
    #: broker's ``message.max.bytes``, 1 MiB by default). A longer value is cut to fit and
    #: the dead letter carries ``driftwarden.truncated: <original size>``; one the broker
    #: still refuses as too large is written with no value, then counted as dropped.
    dead_letter_max_bytes: int = Field(default=1_000_000, ge=4096, le=100 * 1024 * 1024)
    #: How long one batch's dead letters are retried while the broker times out or is
    #: unreachable. Past it the daemon exits 1 without committing the batch (a restart
    #: replays it). Errors a retry cannot fix (too large, not authorized, invalid topic)
    #: are not retried: the dead letter is counted as dropped and logged.
    dead_letter_retry_s: float = Field(default=120.0, gt=0, le=3600)
    create_topics: bool = True
    # Security: passed through to aiokafka unchanged.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    #: From the environment (``DRIFTWARDEN_KAFKA__SASL_PLAIN_PASSWORD``), never the file.
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @field_validator("topic_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {err}") from err
        return pattern

    @model_validator(mode="after")
    def _topics_or_pattern(self) -> KafkaSettings:
        if self.topic_pattern is None and not self.topics:
            raise ValueError("set 'topics' (a list) or 'topic_pattern' (a regular expression)")
        return self

    def consumes(self, topic: str) -> bool:
        """Whether ``topic`` is one of the event topics (by name or by the pattern)."""
        if self.topic_pattern is not None:
            # aiokafka matches the pattern with re.match (anchored at the start only).
            return re.match(self.topic_pattern, topic) is not None
        return topic in self.topics

    def client_options(self) -> dict[str, Any]:
        """Connection and security options for aiokafka clients."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_plain_username
            if self.sasl_plain_password is not None:
                options["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return options


class HttpSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    #: /healthz fails when the event loop's heartbeat is later than this.
    max_loop_lag_s: float = Field(default=5.0, gt=0)


class EngineSettings(_Section):
    """Which models get detectors (docs/scaling.md, "Model admission")."""

    #: Models not named in the policy (``models.<id>``) watched at most at once, so memory
    #: stays bounded; named models are always watched and do not count. Past it, events of
    #: unnamed ids are refused (and counted) unless probation and eviction let them in.
    max_models: int = Field(default=10_000, ge=1)
    #: Once ``max_models`` is reached, a new unnamed id needs this many events within about
    #: ``probation_window_s`` before it may take an evictable model's place (one-shot ids of
    #: a flood never do). A model admitted with fewer events is "unproven" and the first
    #: to be evicted.
    admit_after_events: int = Field(default=3, ge=1, le=1_000_000)
    probation_window_s: float = Field(default=300.0, gt=0, le=86400)
    #: A watched unnamed model with at least ``admit_after_events`` events is evicted for a
    #: newcomer only after this long without events (and only when healthy, holding no
    #: flag, with no open incident).
    evict_idle_s: float = Field(default=600.0, gt=0)
    #: A model with no event for this long is dropped (and its checkpoint deleted), so
    #: retired models do not hold memory or checkpoint space forever.
    model_idle_ttl_s: float = Field(default=7 * 86400.0, gt=0)
    #: Predictions waiting for their outcome, every model's together (docs/outcomes.md): each
    #: joining model keeps at most this divided by the joining models (and its own
    #: ``outcomes.max_pending``). About 200 bytes each.
    max_pending_outcomes: int = Field(default=1_000_000, ge=1, le=100_000_000)
    #: Forensics: append the ``request_id`` of every applied event to this file before its
    #: offset is committed (an audit of at-least-once delivery). Costly at high rates.
    applied_log: str | None = None


class LifecycleSettings(_Section):
    #: SIGTERM to exit: stop fetching, finish the batch, commit, flush; all within this.
    grace_period_s: float = Field(default=25.0, gt=0, le=3600)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def _console_only() -> list[AlertSinkSpec]:
    return [ConsoleSpec(type="console")]


class AlertsSettings(_Section):
    #: Where alerts go; secrets of each sink are named environment variables.
    sinks: list[AlertSinkSpec] = Field(default_factory=_console_only)
    #: Pending deliveries per sink; past it the oldest is dropped (and counted).
    queue_size: int = Field(default=1000, ge=1)
    #: Runbook of driftwarden's own alerts (flag backend or alert sink down), one URL for
    #: both; ``self_runbook_base_url`` wins when set.
    self_runbook_url: str = ""
    #: Where the runbooks of driftwarden's own alerts live: each alert links
    #: ``<base>/<alertname>.md`` (``FlagBackendDown.md``, ``AlertSinkDown.md``).
    self_runbook_base_url: str = ""


class ActionsSettings(_Section):
    #: Global shadow switch: every model runs as ``mode: shadow`` whatever its policy says
    #: (decide and record, touch no flag, page nobody). ``DRIFTWARDEN_ACTIONS__SHADOW=true``.
    shadow: bool = False
    #: JSON lines of every transition and action (the audit trail, where shadow decisions
    #: are read); on by default, relative to the working directory; ``null`` turns it off.
    audit_log: str | None = "var/driftwarden/audit.jsonl"
    #: Flags waiting for their backend; requests for one flag coalesce.
    flag_queue_size: int = Field(default=1000, ge=1)


class StateSettings(_Section):
    """Checkpoints of detector, health and action state (see docs/scaling.md)."""

    #: ``kafka``: a compacted topic shared by the replicas of a consumer group; ``file``: a
    #: directory, for a single instance; ``none``: state lives in memory only.
    backend: Literal["none", "file", "kafka"] = "none"
    path: str = "var/driftwarden/state"
    topic: str = "driftwarden-state"
    #: Checkpoint every model touched since the last one this often; offsets are committed
    #: right after each checkpoint, so state and offsets stay consistent.
    interval_s: float = Field(default=5.0, gt=0, le=3600)
    #: Largest checkpoint of one model (producer max_request_size for the topic backend).
    max_bytes: int = Field(default=16_777_216, ge=65_536)
    #: A model whose checkpoint fails this many rounds in a row stops holding back the offset
    #: commits of every other model: its last good checkpoint stays (a crash replays it from
    #: there), it is named on /readyz and counted in driftwarden_checkpoint_failing_models.
    #: Until then (a transient failure) offsets wait, so state and offsets stay consistent.
    max_failed_rounds: int = Field(default=3, ge=1, le=1000)


class OperatorSettings(_Section):
    #: Environment variable holding the operator API's bearer token; the API is off when
    #: the variable is unset or empty.
    token_env: str = Field(
        default="DRIFTWARDEN_OPERATOR_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )


class Settings(BaseSettings):
    """Everything the daemon reads at start; see ``examples/policy.yaml``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    #: The flag backend; a flagd-format JSON file by default (any flagd provider reads it).
    flags: FlagBackendSpec | None = Field(
        default_factory=lambda: FlagdFileSpec(path=Path("var/driftwarden/flags.json"))
    )
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    actions: ActionsSettings = Field(default_factory=ActionsSettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    #: Policy per model id; ``default`` applies to every model not listed, and a listed
    #: model inherits from ``default`` each top-level key it does not set.
    models: dict[str, ModelPolicy] = Field(default_factory=lambda: {"default": ModelPolicy()})

    _yaml_data: ClassVar[dict[str, Any]] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: Kubernetes overrides a ConfigMap's values per pod.
        return (init_settings, env_settings, _YamlData(settings_cls, cls._yaml_data))

    @model_validator(mode="after")
    def _side_topics_not_consumed(self) -> Settings:
        # Reading its own dead letters (or review samples, or checkpoints) back as events
        # would turn one bad record into an endless loop.
        for field, topic in (
            ("kafka.dead_letter_topic", self.kafka.dead_letter_topic),
            ("kafka.review_topic", self.kafka.review_topic),
            ("state.topic", self.state.topic),
        ):
            if self.kafka.consumes(topic):
                which = "topic_pattern" if self.kafka.topic_pattern is not None else "topics"
                raise ValueError(
                    f"kafka.{which} would consume {field} {topic!r}: driftwarden would read "
                    "its own output back; rename that topic or narrow the subscription"
                )
        return self

    def named_models(self) -> frozenset[str]:
        """Models the policy names (every key of ``models`` but ``default``)."""
        return frozenset(self.models) - {"default"}

    def policy_for(self, model: str) -> ModelPolicy:
        """The policy of ``model``: its own entry over ``default``'s, key by key."""
        default = self.models.get("default", ModelPolicy())
        own = self.models.get(model)
        policy = (
            default
            if own is None
            else default.model_copy(update={k: getattr(own, k) for k in own.model_fields_set})
        )
        if self.actions.shadow and policy.mode != "shadow":
            policy = policy.model_copy(update={"mode": "shadow"})
        return policy


class _YamlData(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def format_validation_error(source: str, err: ValidationError, data: Any) -> list[str]:
    """One line per problem: ``FILE:LINE: field.path: what was expected (got VALUE)``.

    ``data`` is the file's data, or a LoadedYaml that also knows each field's line.
    """
    loaded = data if isinstance(data, LoadedYaml) else LoadedYaml(data)
    return _format_errors(source, err, loaded, root=Settings, env_prefix=ENV_PREFIX)


def load_settings(path: str | os.PathLike[str] | None) -> Settings:
    """Read and validate the settings file (or only the environment when ``path`` is None).

    Raises ConfigError with one line per problem.
    """
    source = str(path) if path is not None else "<environment>"
    loaded = LoadedYaml({})
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError([f"{source}: cannot read the file: {err.strerror}"]) from err
        except UnicodeDecodeError as err:
            raise ConfigError([f"{source}: not UTF-8 text: {err.reason}"]) from err
        loaded = load_yaml_with_lines(text, source)
        if loaded.data is None or loaded.data == {}:
            # Most likely the wrong file, or a ConfigMap mounted empty: running on defaults
            # alone would watch the wrong topic and act on nothing without saying so.
            raise ConfigError(
                [
                    f"{source}: <root>: the file is empty; expected a mapping of sections "
                    "(kafka, models, ...), see examples/policy.yaml"
                ]
            )
        if not isinstance(loaded.data, dict):
            raise ConfigError(
                [
                    f"{source}: <root>: expected a mapping of sections, "
                    f"got {type(loaded.data).__name__}"
                ]
            )
    Settings._yaml_data = loaded.data
    try:
        return Settings()
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err, loaded)) from err
    finally:
        Settings._yaml_data = {}
