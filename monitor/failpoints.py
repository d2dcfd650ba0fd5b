"""Named kill points for the crash tests: ``failpoint("name")`` SIGKILLs the process at the
nth time it is reached, when ``DRIFTWARDEN_FAILPOINT=name[:nth]`` is set; otherwise nothing.

The environment is read once at import: in production a failpoint costs one module-level
bool check. Failpoints sit at the delicate places of the effect path (transition, checkpoint,
flag write, notification, commit), never on the per-event hot path.
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["ENV", "armed", "failpoint"]

log = logging.getLogger(__name__)

ENV = "DRIFTWARDEN_FAILPOINT"


def _parse(spec: str) -> tuple[str, int]:
    name, _, nth = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"{ENV}={spec!r}: expected name[:nth], the name is empty")
    try:
        count = int(nth) if nth else 1
    except ValueError:
        raise ValueError(f"{ENV}={spec!r}: nth must be a whole number, got {nth!r}") from None
    if count < 1:
        raise ValueError(f"{ENV}={spec!r}: nth must be at least 1, got {count}")
    return name, count


_spec = os.environ.get(ENV, "").strip()
_ARMED = bool(_spec)
_NAME, _NTH = _parse(_spec) if _ARMED else ("", 0)
_hits = 0


def armed() -> str | None:
    """The armed point as ``name:nth``, or None (production)."""
    return f"{_NAME}:{_NTH}" if _ARMED else None


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL at the armed point's nth hit; a no-op otherwise."""
    if not _ARMED or name != _NAME:
        return
    global _hits
    _hits += 1
    if _hits >= _NTH:
        # Flush what the test reads (its log) and die as kill -9 does: no cleanup, no flush
        # of anything else.
        log.critical("failpoint %s:%d reached: SIGKILL", name, _hits)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
