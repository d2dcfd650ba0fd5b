"""The alert sinks' configuration (pydantic specs, one per ``type``) and the factory over them.

Secrets are never in a spec: a spec names the environment variable that holds each one, and
:func:`build_sink` reads it when the sink is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from alerts.alertmanager import AlertmanagerSink
from alerts.base import AlertSink
from alerts.console import ConsoleSink
from alerts.errors import ConfigError
from alerts.pagerduty import DEFAULT_EVENTS_URL, PagerDutySink
from alerts.slack import SlackSink
from alerts.webhook import WebhookSink

__all__ = [
    "AlertSinkSpec",
    "AlertmanagerSpec",
    "ConsoleSpec",
    "PagerDutySpec",
    "SlackSpec",
    "WebhookSpec",
    "build_sink",
    "build_sinks",
]

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "page", "critical"]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class _SinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    #: The sink's name in metrics, logs and ``/status``; defaults to its type.
    name: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Alerts below this severity are not sent to this sink.
    min_severity: Severity = "info"

    @property
    def sink_name(self) -> str:
        return self.name or self.type


class _UrlSpec(_SinkSpec):
    url: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not _is_http_url(url):
            raise ValueError(f"expected an http(s) URL, got {url!r}")
        return url


class AlertmanagerSpec(_UrlSpec):
    """Alertmanager v2; ``url`` is its base URL (``http://alertmanager:9093``)."""

    type: Literal["alertmanager"]
    #: Re-send period of a firing alert; must stay below Alertmanager's ``resolve_timeout``,
    #: or Alertmanager resolves the alert between two re-sends.
    resend_interval_s: float = Field(default=60.0, gt=0)
    #: Alertmanager's ``global.resolve_timeout`` (its default is 5m), to check the above.
    resolve_timeout_s: float = Field(default=300.0, gt=0)
    generator_url: str | None = None
    #: Env var of a bearer token, when Alertmanager sits behind an authenticating proxy.
    bearer_token_env: str | None = Field(default=None, pattern=_ENV_NAME)

    @model_validator(mode="after")
    def _resend_before_resolve(self) -> AlertmanagerSpec:
        if self.resend_interval_s >= self.resolve_timeout_s:
            raise ValueError(
                f"resend_interval_s ({self.resend_interval_s:g}) must be less than "
                f"resolve_timeout_s ({self.resolve_timeout_s:g})"
            )
        return self


class PagerDutySpec(_UrlSpec):
    """PagerDuty Events v2; the routing key is read from ``routing_key_env``."""

    type: Literal["pagerduty"]
    url: str = DEFAULT_EVENTS_URL
    routing_key_env: str = Field(default="DRIFTWARDEN_PAGERDUTY_ROUTING_KEY", pattern=_ENV_NAME)
    source: str = "driftwarden"


class SlackSpec(_SinkSpec):
    """Slack incoming webhook; its URL (which holds the token) is read from ``webhook_url_env``."""

    type: Literal["slack"]
    webhook_url_env: str = Field(default="DRIFTWARDEN_SLACK_WEBHOOK_URL", pattern=_ENV_NAME)


class WebhookSpec(_UrlSpec):
    """Generic webhook signed with HMAC-SHA256; the key is read from ``secret_env``."""

    type: Literal["webhook"]
    secret_env: str = Field(default="DRIFTWARDEN_WEBHOOK_SECRET", pattern=_ENV_NAME)


class ConsoleSpec(_SinkSpec):
    """Log or print alerts; no service needed."""

    type: Literal["console"]
    output: Literal["log", "stdout", "stderr"] = "log"


AlertSinkSpec = Annotated[
    AlertmanagerSpec | PagerDutySpec | SlackSpec | WebhookSpec | ConsoleSpec,
    Field(discriminator="type"),
]


class _Env:
    """Reads secrets for one spec and collects a problem per missing one."""

    def __init__(self, environ: Mapping[str, str], where: str) -> None:
        self.environ = environ
        self.where = where
        self.problems: list[str] = []

    def secret(self, field: str, var: str) -> SecretStr:
        value = self.environ.get(var, "")
        if not value:
            self.problems.append(
                f"{self.where}.{field}: environment variable {var} is not set or empty"
            )
        return SecretStr(value)

    def check(self) -> None:
        """Raise before a sink is built with a secret that is missing."""
        if self.problems:
            raise ConfigError(self.problems)


def build_sink(
    spec: AlertSinkSpec, *, environ: Mapping[str, str] | None = None, where: str = "sink"
) -> AlertSink:
    """Build the sink ``spec`` describes, reading its secrets from the environment now.

    Parameters
    ----------
    spec
        One validated sink spec.
    environ
        Where secrets are read; ``os.environ`` by default.
    where
        The spec's path in the configuration, prefixed to every problem.

    Raises
    ------
    ConfigError
        A secret's environment variable is unset or empty, or holds something unusable; the
        message names the variable, never its value.
    """
    env = _Env(os.environ if environ is None else environ, where)
    common = {"name": spec.sink_name, "min_severity": spec.min_severity}
    sink: AlertSink
    match spec:
        case AlertmanagerSpec():
            token = (
                env.secret("bearer_token_env", spec.bearer_token_env)
                if spec.bearer_token_env
                else None
            )
            env.check()
            sink = AlertmanagerSink(
                spec.url,
                resend_interval_s=spec.resend_interval_s,
                generator_url=spec.generator_url,
                bearer_token=token,
                timeout_s=spec.timeout_s,
                **common,
            )
        case PagerDutySpec():
            key = env.secret("routing_key_env", spec.routing_key_env)
            env.check()
            sink = PagerDutySink(
                key, url=spec.url, source=spec.source, timeout_s=spec.timeout_s, **common
            )
        case SlackSpec():
            url = env.secret("webhook_url_env", spec.webhook_url_env)
            if url.get_secret_value() and not _is_http_url(url.get_secret_value()):
                env.problems.append(
                    f"{where}.webhook_url_env: environment variable {spec.webhook_url_env} "
                    "does not hold an http(s) URL"
                )
            env.check()
            sink = SlackSink(url, timeout_s=spec.timeout_s, **common)
        case WebhookSpec():
            secret = env.secret("secret_env", spec.secret_env)
            env.check()
            sink = WebhookSink(spec.url, secret, timeout_s=spec.timeout_s, **common)
        case ConsoleSpec():
            sink = ConsoleSink(spec.output, **common)
    return sink


def build_sinks(
    specs: Sequence[AlertSinkSpec],
    *,
    environ: Mapping[str, str] | None = None,
    where: str = "alerts.sinks",
) -> list[AlertSink]:
    """Build every sink, reporting all problems at once (missing secrets, duplicate names).

    Raises
    ------
    ConfigError
        With one line per problem, e.g. ``alerts.sinks[1].routing_key_env: environment variable
        DRIFTWARDEN_PAGERDUTY_ROUTING_KEY is not set or empty``.
    """
    problems: list[str] = []
    sinks: list[AlertSink] = []
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        path = f"{where}[{i}]"
        name = spec.sink_name
        if name in seen:
            problems.append(
                f"{path}.name: sink name {name!r} is already used by {where}[{seen[name]}]; "
                "give each sink of the same type a distinct name"
            )
        seen.setdefault(name, i)
        try:
            sinks.append(build_sink(spec, environ=environ, where=path))
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    log.debug("built alert sinks: %s", ", ".join(s.name for s in sinks))
    return sinks
