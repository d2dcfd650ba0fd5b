"""A model's decided effects not yet known to be carried out (intent before effect): flag
plans, unacknowledged flag writes and the notification outbox, persisted with its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.base import Alert
from monitor.flags.base import FlagValue

__all__ = ["OUTBOX_LIMIT", "Effects", "FlagPlan", "Notice"]


@dataclass(slots=True)
class FlagPlan:
    model: str
    key: str
    set_flags: dict[str, FlagValue]
    restore: list[str]


@dataclass(slots=True)
class Notice:
    """One notification of an incident, decided and persisted before any sink sees it."""

    action: str  # "fire" or "resolve"
    alert: Alert  # carries the idempotency key
    #: Sinks it was queued for and that have not confirmed it; None: not queued yet.
    sinks: list[str] | None = None


@dataclass(slots=True)
class Effects:
    """A model's decided effects not yet known to be carried out, persisted with its
    checkpoint (intent before effect): after a crash, a restart carries them out again,
    idempotently (same flag values, same idempotency keys).
    """

    #: The open incident's id (model and first transition time) and its last sequence number.
    incident: str | None = None
    seq: int = 0
    #: Flag plans decided and not yet handed entirely to the actuator, in decision order.
    plans: list[FlagPlan] = field(default_factory=list)
    #: Flag writes handed to the actuator and not yet acknowledged (incident values and
    #: restores of pre-incident values alike): flag -> value. A restart requests them again.
    writing: dict[str, FlagValue] = field(default_factory=dict)
    #: Notifications not yet confirmed by every sink they were queued for, oldest first.
    outbox: list[Notice] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.incident is None and not (self.plans or self.writing or self.outbox)


#: A model's outbox keeps at most this many notifications (a newer one supersedes an older
#: one at every sink anyway; the bound only matters for a sink that never answers).
OUTBOX_LIMIT = 16
