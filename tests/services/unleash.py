"""A real unleash-server (npm, pinned in tests/services/unleash/package.json) for integration tests.

Owns locating the install, starting it on a free port over a PostgreSQL database with known
admin and client tokens, and stopping or restarting it (to test a backend that is down).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.services.postgres import PostgresServer, free_port, unavailable
from tests.waiting import wait_for_sync

__all__ = ["UnleashServer", "find_unleash_dir", "running_unleash"]

log = logging.getLogger(__name__)

UNLEASH_DIR = Path(__file__).resolve().parent / "unleash"
SERVER_JS = Path("node_modules/unleash-server/dist/server.js")


def find_unleash_dir() -> Path | None:
    """The npm prefix holding unleash-server: ``$DRIFTWARDEN_UNLEASH_DIR`` or ours."""
    override = os.environ.get("DRIFTWARDEN_UNLEASH_DIR")
    for candidate in ([Path(override)] if override else []) + [UNLEASH_DIR]:
        # Accept either the prefix or its node_modules directory.
        for prefix in (candidate, candidate.parent):
            if (prefix / SERVER_JS).is_file():
                return prefix
    return None


class UnleashServer:
    """One unleash-server process on 127.0.0.1, restartable over the same database."""

    def __init__(
        self, prefix: Path, node: str, database_url: str, *, environment: str = "development"
    ) -> None:
        self.prefix = prefix
        self.node = node
        self.database_url = database_url
        self.environment = environment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = f"*:*.{secrets.token_hex(16)}"
        self.client_token = f"default:{environment}.{secrets.token_hex(16)}"
        self.log_file = Path(tempfile.mkstemp(prefix="driftwarden-unleash-", suffix=".log")[1])
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "DATABASE_URL": self.database_url,
            "DATABASE_SSL": "false",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.port),
            "INIT_ADMIN_API_TOKENS": self.admin_token,
            "INIT_BACKEND_API_TOKENS": self.client_token,
            "LOG_LEVEL": "warn",
            # Nothing may leave the machine during tests.
            "CHECK_VERSION": "false",
            "SEND_TELEMETRY": "false",
        }
        with self.log_file.open("ab") as log_out:
            self._process = subprocess.Popen(
                [self.node, str(self.prefix / SERVER_JS)],
                cwd=self.prefix,
                env=env,
                stdout=log_out,
                stderr=subprocess.STDOUT,
            )
        self._wait_healthy(timeout_s)
        log.info("unleash-server up on %s", self.url)

    def _wait_healthy(self, timeout_s: float) -> None:
        def healthy() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"unleash-server exited {self._process.returncode}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{self.url}/health", timeout=1) as response,
            ):
                return bool(json.loads(response.read()).get("health") == "GOOD")
            return False

        wait_for_sync(
            healthy,
            timeout=timeout_s,
            what=lambda: f"unleash-server healthy; its log ends:\n{self.log_tail()}",
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def admin(self, method: str, path: str, body: object | None = None) -> object:
        """One Admin API call, for test setup and assertions."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": self.admin_token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None


@contextlib.contextmanager
def running_unleash(postgres: PostgresServer) -> Iterator[UnleashServer]:
    """A healthy unleash-server over a fresh database; skips or fails when unavailable."""
    node = shutil.which("node")
    if node is None:
        unavailable("unleash-server", "node is not on PATH")
    prefix = find_unleash_dir()
    if prefix is None:
        unavailable(
            "unleash-server",
            f"not installed: run `npm ci --prefix {UNLEASH_DIR}` or set DRIFTWARDEN_UNLEASH_DIR",
        )
    database_url = postgres.create_database(f"unleash_{secrets.token_hex(4)}")
    server = UnleashServer(prefix, node, database_url)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.log_file.unlink(missing_ok=True)
