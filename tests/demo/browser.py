"""Headless Chromium for the page tests: a screenshot or the DOM after the page's scripts ran."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import require_component

CHROMIUM = os.environ.get("DRIFTWARDEN_CHROMIUM", "/usr/bin/chromium")


def require_chromium() -> None:
    require_component(
        shutil.which(CHROMIUM) is not None, f"Chromium ({CHROMIUM}, Debian package chromium)"
    )


def chromium(
    url: str, profile: Path, *extra: str, window: str = "1280,900", budget_ms: int = 5000
) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium on ``url`` with ``extra`` (``--dump-dom``, ``--screenshot=...``)."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size={window}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
