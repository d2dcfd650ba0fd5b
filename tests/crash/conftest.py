"""Fixtures of the crash tests: the alert factory of the sink tests."""

from tests.alerts.conftest import make_alert

__all__ = ["make_alert"]
