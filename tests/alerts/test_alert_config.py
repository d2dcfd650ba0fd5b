"""Alert sink specs: the discriminated union, strictness, secrets from the environment."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from alerts.alertmanager import AlertmanagerSink
from alerts.config import AlertSinkSpec, build_sink, build_sinks
from alerts.console import ConsoleSink
from alerts.errors import ConfigError
from alerts.pagerduty import PagerDutySink
from alerts.slack import SlackSink
from alerts.webhook import WebhookSink

SPECS = TypeAdapter(list[AlertSinkSpec])
ENV = {
    "DRIFTWARDEN_PAGERDUTY_ROUTING_KEY": "pd-key-0123456789",
    "DRIFTWARDEN_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T1/B1/slacktoken99",
    "HOOK_SECRET": "hmac-secret-42",
}


def test_each_type_builds_its_sink_with_secrets_from_the_environment() -> None:
    specs = SPECS.validate_python(
        [
            {"type": "alertmanager", "url": "http://alertmanager:9093", "resend_interval_s": 30},
            {"type": "pagerduty", "min_severity": "page"},
            {"type": "slack"},
            {"type": "webhook", "url": "https://hooks.example.com/x", "secret_env": "HOOK_SECRET"},
            {"type": "console", "output": "stderr"},
        ]
    )
    sinks = build_sinks(specs, environ=ENV)
    assert [type(s) for s in sinks] == [
        AlertmanagerSink,
        PagerDutySink,
        SlackSink,
        WebhookSink,
        ConsoleSink,
    ]
    assert [s.name for s in sinks] == ["alertmanager", "pagerduty", "slack", "webhook", "console"]
    assert isinstance(sinks[0], AlertmanagerSink)
    assert sinks[0].resend_interval_s == 30
    assert isinstance(sinks[1], PagerDutySink)
    assert sinks[1].min_severity == "page"
    assert sinks[1].url == "https://events.pagerduty.com/v2/enqueue"
    shown = " ".join(repr(s) for s in sinks) + " ".join(repr(s) for s in specs)
    for secret in ENV.values():
        assert secret not in shown


def test_unknown_field_and_unknown_type_are_refused() -> None:
    with pytest.raises(ValidationError, match="routing_key"):
        SPECS.validate_python([{"type": "pagerduty", "routing_key": "inline-secret"}])
    with pytest.raises(ValidationError, match="opsgenie"):
        SPECS.validate_python([{"type": "opsgenie"}])


def test_resend_interval_must_stay_below_alertmanager_resolve_timeout() -> None:
    with pytest.raises(ValidationError, match="resend_interval_s \\(300\\) must be less than"):
        SPECS.validate_python(
            [{"type": "alertmanager", "url": "http://am:9093", "resend_interval_s": 300}]
        )


def test_url_must_be_http() -> None:
    with pytest.raises(ValidationError, match="expected an http\\(s\\) URL, got 'am:9093'"):
        SPECS.validate_python([{"type": "alertmanager", "url": "am:9093"}])


def test_missing_secret_names_the_variable_and_the_field_path() -> None:
    specs = SPECS.validate_python(
        [{"type": "console"}, {"type": "pagerduty"}, {"type": "webhook", "url": "http://h/x"}]
    )
    with pytest.raises(ConfigError) as caught:
        build_sinks(specs, environ={})
    assert caught.value.problems == [
        "alerts.sinks[1].routing_key_env: environment variable "
        "DRIFTWARDEN_PAGERDUTY_ROUTING_KEY is not set or empty",
        "alerts.sinks[2].secret_env: environment variable "
        "DRIFTWARDEN_WEBHOOK_SECRET is not set or empty",
    ]


def test_slack_url_that_is_not_http_is_refused_without_showing_it() -> None:
    [spec] = SPECS.validate_python([{"type": "slack"}])
    with pytest.raises(ConfigError) as caught:
        build_sink(spec, environ={"DRIFTWARDEN_SLACK_WEBHOOK_URL": "hooks/T1/secrettoken"})
    assert "DRIFTWARDEN_SLACK_WEBHOOK_URL does not hold an http(s) URL" in str(caught.value)
    assert "secrettoken" not in str(caught.value)


def test_build_sink_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTWARDEN_PAGERDUTY_ROUTING_KEY", "from-os-environ")
    [spec] = SPECS.validate_python([{"type": "pagerduty", "name": "oncall"}])
    sink = build_sink(spec)
    assert isinstance(sink, PagerDutySink)
    assert sink.name == "oncall"


def test_two_sinks_with_the_same_name_are_refused() -> None:
    specs = SPECS.validate_python([{"type": "console"}, {"type": "console"}])
    with pytest.raises(ConfigError, match=r"alerts.sinks\[1\].name: sink name 'console'"):
        build_sinks(specs, environ={})
