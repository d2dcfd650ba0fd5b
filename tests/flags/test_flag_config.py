"""Flag backend specs: the discriminated union, strictness, and secrets from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from monitor.errors import ConfigError
from monitor.flags.config import FlagBackendSpec, HttpFlagSpec, UnleashSpec, build_backend
from monitor.flags.flagd_file import FlagdFileBackend
from monitor.flags.http import HttpFlagBackend
from monitor.flags.unleash import UnleashBackend

ADAPTER: TypeAdapter[FlagBackendSpec] = TypeAdapter(FlagBackendSpec)


def test_type_selects_the_backend() -> None:
    env = {"DRIFTWARDEN_UNLEASH_TOKEN": "*:*.x", "HOOK_TOKEN": "Bearer y"}
    flagd = build_backend(ADAPTER.validate_python({"type": "flagd_file", "path": "/tmp/f.json"}))
    unleash = build_backend(
        ADAPTER.validate_python(
            {"type": "unleash", "url": "http://unleash:4242", "environment": "development"}
        ),
        environ=env,
    )
    http = build_backend(
        ADAPTER.validate_python(
            {"type": "http", "url": "http://flags/{flag}", "auth_env": "HOOK_TOKEN"}
        ),
        environ=env,
    )

    assert isinstance(flagd, FlagdFileBackend) and flagd.path == Path("/tmp/f.json")
    assert isinstance(unleash, UnleashBackend) and unleash.environment == "development"
    assert isinstance(http, HttpFlagBackend) and http.method == "PUT"


def test_unset_secret_is_a_config_error_naming_the_variable() -> None:
    spec = UnleashSpec(type="unleash", url="http://unleash:4242", token_env="MY_UNLEASH_TOKEN")

    with pytest.raises(ConfigError) as caught:
        build_backend(spec, environ={})

    assert caught.value.problems == [
        "flags.backend 'unleash': environment variable MY_UNLEASH_TOKEN is not set"
    ]


def test_unknown_field_and_unknown_type_are_rejected() -> None:
    with pytest.raises(ValidationError, match="token"):
        ADAPTER.validate_python({"type": "unleash", "url": "http://u:4242", "token": "x"})
    with pytest.raises(ValidationError, match="launchdarkly"):
        ADAPTER.validate_python({"type": "launchdarkly"})


def test_body_template_that_does_not_render_to_json_is_rejected() -> None:
    with pytest.raises(ValidationError, match="not JSON once rendered"):
        HttpFlagSpec(type="http", url="http://flags/{flag}", body='{"value": "{value}"')


def test_url_must_be_http() -> None:
    with pytest.raises(ValidationError, match="ftp://flags"):
        HttpFlagSpec(type="http", url="ftp://flags/{flag}")
