"""Flag backends and the actuator that drives them.

A backend sets one feature flag idempotently (flagd file, Unleash, generic HTTP); the
actuator queues, coalesces and retries their writes so consumption never waits on them.
"""

from __future__ import annotations

from monitor.flags.actuator import FlagActuator
from monitor.flags.base import FlagBackend, FlagValue
from monitor.flags.config import (
    FlagBackendSpec,
    FlagdFileSpec,
    HttpFlagSpec,
    UnleashSpec,
    build_backend,
)
from monitor.flags.flagd_file import FlagdFileBackend
from monitor.flags.http import HttpFlagBackend
from monitor.flags.unleash import UnleashBackend

__all__ = [
    "FlagActuator",
    "FlagBackend",
    "FlagBackendSpec",
    "FlagValue",
    "FlagdFileBackend",
    "FlagdFileSpec",
    "HttpFlagBackend",
    "HttpFlagSpec",
    "UnleashBackend",
    "UnleashSpec",
    "build_backend",
]
