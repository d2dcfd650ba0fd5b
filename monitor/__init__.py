"""driftwarden's daemon: settings, policy, events, consumer, engine, health, flags, HTTP, CLI.

The detectors live in :mod:`detectors` and the alert sinks in :mod:`alerts`.
"""

__version__ = "0.1.0"
