"""The decision core: pure rules from a model's transitions to what the daemon does.

No I/O, no asyncio, no clock of its own. The daemon's actions and the offline replay both call
it, so a replay reports what the daemon would really do.
"""

from __future__ import annotations

from monitor.config.policy import Level, ModelPolicy
from monitor.flags.base import FlagValue

__all__ = ["flags_at"]


def flags_at(policy: ModelPolicy, level: Level) -> dict[str, FlagValue]:
    """The flags in effect at ``level``: every level's flags up to it, higher levels winning.

    >>> from monitor.config.policy import LevelActions
    >>> p = ModelPolicy(actions={"degraded": LevelActions(flags={"v": "rules"}),
    ...                          "critical": LevelActions(flags={"on": False, "v": "off"})})
    >>> flags_at(p, Level.WARN), flags_at(p, Level.DEGRADED), flags_at(p, Level.CRITICAL)
    ({}, {'v': 'rules'}, {'v': 'off', 'on': False})
    """
    merged: dict[str, FlagValue] = {}
    for lvl in (Level.WARN, Level.DEGRADED, Level.CRITICAL):
        if lvl > level:
            break
        actions = policy.actions.get(lvl.label)  # type: ignore[call-overload]
        if actions is not None:
            merged.update(actions.flags)
    return merged
