"""Flag backend settings: one pydantic spec per backend type, and the factory that builds it.

Secrets are never in a spec: it names the environment variable that holds them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitor.errors import ConfigError
from monitor.flags.base import FlagBackend
from monitor.flags.flagd_file import FlagdFileBackend
from monitor.flags.http import HttpFlagBackend, render_body
from monitor.flags.unleash import UnleashBackend

__all__ = [
    "FlagBackendSpec",
    "FlagdFileSpec",
    "HttpFlagSpec",
    "UnleashSpec",
    "build_backend",
]


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlagdFileSpec(_Spec):
    """A flagd flag-definition file (the embedded default)."""

    type: Literal["flagd_file"] = "flagd_file"
    name: str = "flagd_file"
    path: Path = Path("/var/run/driftwarden/flags.json")


class UnleashSpec(_Spec):
    """An Unleash server, written through its Admin API."""

    type: Literal["unleash"]
    name: str = "unleash"
    url: str
    token_env: str = "DRIFTWARDEN_UNLEASH_TOKEN"
    project: str = "default"
    environment: str = "production"
    create_missing: bool = True
    feature_type: str = "kill-switch"
    timeout_s: float = Field(default=5.0, gt=0)

    _url = field_validator("url")(_check_url)


class HttpFlagSpec(_Spec):
    """Any flag service that takes one templated HTTP request per write."""

    type: Literal["http"]
    name: str = "http"
    url: str
    method: Literal["PUT", "POST", "PATCH"] = "PUT"
    body: str | None = '{"flag": "{flag}", "value": {value}}'
    auth_header: str = "Authorization"
    auth_env: str | None = None
    get_url: str | None = None
    get_value_path: str = "value"
    timeout_s: float = Field(default=5.0, gt=0)

    _url = field_validator("url")(_check_url)

    @field_validator("get_url")
    @classmethod
    def _get_url(cls, url: str | None) -> str | None:
        return None if url is None else _check_url(url)

    @field_validator("body")
    @classmethod
    def _body_is_json(cls, body: str | None) -> str | None:
        # Catch a broken template at start, not on the first incident.
        if body is not None:
            for sample in (True, "rules", 0.5):
                try:
                    json.loads(render_body(body, "flag", sample))
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"body template {body!r} is not JSON once rendered: {err}"
                    ) from err
        return body


FlagBackendSpec = Annotated[FlagdFileSpec | UnleashSpec | HttpFlagSpec, Field(discriminator="type")]


def build_backend(spec: FlagBackendSpec, environ: Mapping[str, str] | None = None) -> FlagBackend:
    """Build the backend a spec describes, reading its secrets from the environment.

    Raises
    ------
    ConfigError
        When an environment variable the spec names is unset or empty.

    Examples
    --------
    >>> build_backend(FlagdFileSpec(path="/tmp/flags.json")).name
    'flagd_file'
    >>> build_backend(UnleashSpec(type="unleash", url="http://unleash:4242"), environ={})
    Traceback (most recent call last):
    ...
    alerts.errors.ConfigError: flags.backend 'unleash': environment variable DRIFTWARDEN_UNLEASH_TOKEN is not set
    """  # noqa: E501
    env = os.environ if environ is None else environ
    if isinstance(spec, FlagdFileSpec):
        return FlagdFileBackend(spec.path, name=spec.name)
    if isinstance(spec, UnleashSpec):
        return UnleashBackend(
            spec.url,
            _secret(env, spec.name, spec.token_env),
            project=spec.project,
            environment=spec.environment,
            create_missing=spec.create_missing,
            feature_type=spec.feature_type,
            timeout_s=spec.timeout_s,
            name=spec.name,
        )
    auth = None if spec.auth_env is None else _secret(env, spec.name, spec.auth_env)
    return HttpFlagBackend(
        spec.url,
        method=spec.method,
        body=spec.body,
        auth_header=spec.auth_header,
        auth_value=auth,
        get_url=spec.get_url,
        get_value_path=spec.get_value_path,
        timeout_s=spec.timeout_s,
        name=spec.name,
    )


def _secret(env: Mapping[str, str], backend: str, variable: str) -> str:
    value = env.get(variable, "")
    if not value:
        raise ConfigError(
            [f"flags.backend {backend!r}: environment variable {variable} is not set"]
        )
    return value
