"""The one rule for a missing test component: fail under CI, skip on a developer machine."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["IN_CI", "missing"]

IN_CI = os.environ.get("CI") == "true"


def missing(message: str) -> NoReturn:
    """Under ``CI=true`` the component must be there: fail; elsewhere skip the test."""
    if IN_CI:
        pytest.fail(f"{message} (CI must install it: see .ci/run)")
    pytest.skip(message)
