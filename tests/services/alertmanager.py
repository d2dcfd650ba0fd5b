"""A real Alertmanager for tests, with a local aiohttp webhook receiver that records notifications.

Usage: ``async with running_alertmanager(tmp_path) as am: ...``; ``am.url`` is the base URL to
give :class:`alerts.AlertmanagerSink`, ``am.receiver.notifications`` what Alertmanager sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import require_component
from tests.fakes.server import LocalServer
from tests.services.postgres import free_port
from tests.waiting import wait_for

__all__ = [
    "AlertmanagerService",
    "WebhookReceiver",
    "alertmanager_binary",
    "running_alertmanager",
]

ALERTMANAGER_BIN = "prometheus-alertmanager"
_CONFIG = """\
global:
  resolve_timeout: {resolve_timeout}
route:
  receiver: recorder
  group_by: ["alertname", "model"]
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: 24h
receivers:
  - name: recorder
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
"""


def alertmanager_binary() -> str:
    """The Alertmanager binary's path; fails under CI=true and skips elsewhere when missing."""
    path = shutil.which(ALERTMANAGER_BIN) or shutil.which("alertmanager")
    require_component(path is not None, f"{ALERTMANAGER_BIN} (apt-get install {ALERTMANAGER_BIN})")
    assert path is not None
    return path


@dataclass
class WebhookReceiver(LocalServer):
    """Records every JSON body POSTed to ``/hook`` (Alertmanager's webhook receiver)."""

    notifications: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.base_url}/hook"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/hook", self._record)

    async def _record(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response(text="ok")

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every alert of every notification, optionally only those with ``status``."""
        return [
            alert
            for n in self.notifications
            for alert in n["alerts"]
            if status is None or alert["status"] == status
        ]


@dataclass
class AlertmanagerService:
    url: str
    receiver: WebhookReceiver
    process: asyncio.subprocess.Process

    async def alerts(self) -> list[dict[str, Any]]:
        """Alertmanager's own view: GET /api/v2/alerts."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v2/alerts") as resp,
        ):
            resp.raise_for_status()
            result: list[dict[str, Any]] = await resp.json()
            return result


async def _wait_ready(
    url: str, process: asyncio.subprocess.Process, log_file: Path, within_s: float
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:

        async def ready() -> bool:
            if process.returncode is not None:
                pytest.fail(
                    f"alertmanager at {url} exited {process.returncode} before it was ready:\n"
                    f"{_log_tail(log_file)}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/-/ready") as resp:
                    return resp.status == 200
            return False

        await wait_for(
            ready,
            timeout=within_s,
            what=lambda: f"alertmanager at {url} ready:\n{_log_tail(log_file)}",
        )


def _log_tail(log_file: Path) -> str:
    return log_file.read_text()[-2000:]


@contextlib.asynccontextmanager
async def running_alertmanager(
    workdir: Path,
    *,
    group_wait: str = "1s",
    group_interval: str = "1s",
    resolve_timeout: str = "5m",
    ready_within_s: float = 20.0,
) -> AsyncIterator[AlertmanagerService]:
    """Run Alertmanager on a free loopback port with a recording webhook receiver.

    Clustering is off and storage lives in ``workdir``; the process is stopped on exit.
    """
    binary = alertmanager_binary()
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        config = workdir / "alertmanager.yml"
        config.write_text(
            _CONFIG.format(
                resolve_timeout=resolve_timeout,
                group_wait=group_wait,
                group_interval=group_interval,
                webhook_url=receiver.url,
            )
        )
        storage = workdir / "alertmanager-data"
        storage.mkdir(exist_ok=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_file = workdir / "alertmanager.log"
        with log_file.open("wb") as log_out:
            process = await asyncio.create_subprocess_exec(
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                f"--storage.path={storage}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_out,
            )
        try:
            await _wait_ready(url, process, log_file, ready_within_s)
            yield AlertmanagerService(url=url, receiver=receiver, process=process)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    finally:
        await receiver.stop()
