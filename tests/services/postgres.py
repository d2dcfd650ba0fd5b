"""A throwaway PostgreSQL cluster for integration tests (initdb + pg_ctl on a free port).

Owns finding the server binaries, running them as the ``postgres`` user when tests run as root,
and removing the cluster afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from tests.services.availability import missing

__all__ = ["PostgresServer", "find_postgres_bindir", "free_port", "running_postgres", "unavailable"]

log = logging.getLogger(__name__)


def unavailable(component: str, why: str) -> NoReturn:
    """Fail under CI (the component must be there), skip on a developer machine."""
    missing(f"{component} unavailable: {why}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, newest major version first."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], check=True, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            candidates.insert(0, Path(out))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


class PostgresServer:
    """One private cluster: ``start()`` runs initdb and pg_ctl, ``stop()`` removes it all."""

    def __init__(self, bindir: Path, *, port: int | None = None) -> None:
        self.bindir = bindir
        self.port = port or free_port()
        self.user = "postgres"
        self._as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="driftwarden-pg-"))
        self.data = self.root / "data"
        self.log_file = self.root / "postgres.log"
        if self._as_postgres:
            # initdb refuses to run as root; the cluster must belong to the postgres user.
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, args: Sequence[str | Path], timeout: float = 60) -> None:
        command = [str(a) for a in args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}: {result.stderr or result.stdout}"
            )

    def start(self) -> None:
        self._run(
            [
                self.bindir / "initdb",
                "-D",
                self.data,
                "-A",
                "trust",
                "-U",
                self.user,
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            [
                *(self.bindir / "pg_ctl", "-D", self.data, "-o", options),
                *("-l", self.log_file, "-w", "-t", "30", "start"),
            ]
        )
        log.info("postgres started on 127.0.0.1:%d", self.port)

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        self._run(
            [
                self.bindir / "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                self.user,
                name,
            ]
        )
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run([self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop"])
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                log.warning("pg_ctl stop failed: %s", err)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started cluster for the duration of the block; skips or fails when unavailable."""
    bindir = find_postgres_bindir()
    if bindir is None:
        unavailable("postgresql", "initdb/pg_ctl not found (apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            unavailable("postgresql", "running as root and there is no 'postgres' user")
        if shutil.which("runuser") is None:
            unavailable("postgresql", "running as root and runuser is missing")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
