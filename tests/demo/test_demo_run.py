"""`driftwarden demo` end to end on the real embedded broker, and its status page in a real
headless Chromium."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from monitor.demo import Demo, DemoOptions, run_demo
from monitor.traffic import DEMO_MODELS, DEMO_SCRIPT
from tests.conftest import require_tansu, wait_for
from tests.demo.browser import chromium, require_chromium

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: The script's last recovery lands ~41 s after traffic starts (see traffic.DEMO_SCRIPT).
DURATION_S = 47.0


def _transitions(audit_log: Path) -> list[tuple[str, str, str]]:
    entries = [json.loads(line) for line in audit_log.read_text().splitlines() if line]
    return [(e["model"], e["from"], e["to"]) for e in entries if e["kind"] == "transition"]


async def test_demo_run_each_scripted_incident_flips_its_flag_and_recovers(
    tmp_path: Path,
) -> None:
    require_tansu()
    out = io.StringIO()
    flags_file = tmp_path / "flags.json"
    started = time.monotonic()
    result = await run_demo(
        DemoOptions(
            duration=DURATION_S, port=0, ui=False, flags_file=flags_file, handle_signals=False
        ),
        console=Console(file=out, width=200),
    )
    took = time.monotonic() - started
    print(out.getvalue())
    print(f"demo run took {took:.1f}s; {result.events_produced} events produced")

    assert result.exit_code == 0
    assert [r.incident for r in result.reports] == sorted(DEMO_SCRIPT, key=lambda i: i.start_s)
    for report in result.reports:
        name = report.incident.name
        assert report.detected, f"{name} was not detected"
        assert report.flipped, f"{name}: flag {report.incident.flag} was not flipped"
        assert report.recovered, f"{name}: the model did not recover"
        assert report.restored, f"{name}: flag {report.incident.flag} was not restored"
        assert report.worst == report.incident.level, name
        # Detected while it lasted, restored only after it ended.
        assert report.detected_at is not None and report.detected_at < report.incident.end_s
        assert report.restored_at is not None and report.restored_at > report.incident.end_s
    assert result.final_states == {m: "ok" for m in DEMO_MODELS}
    assert result.final_flags == {i.flag: i.healthy for i in DEMO_SCRIPT}
    assert json.loads(flags_file.read_text())["flags"].keys() == {i.flag for i in DEMO_SCRIPT}
    # One transition up and one down per incident: no false alarm, no flapping.
    assert result.audit_log is not None
    expected = sorted(
        t for i in DEMO_SCRIPT for t in ((i.model, "ok", i.level), (i.model, i.level, "ok"))
    )
    assert sorted(_transitions(result.audit_log)) == expected
    assert result.events_applied >= 0.95 * result.events_produced
    assert "4 incidents: 4 detected, 4 recovered, 4 flags flipped, 4 restored" in out.getvalue()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_status_page_in_headless_chromium_shows_each_model_state(tmp_path: Path) -> None:
    require_tansu()
    require_chromium()
    demo = Demo(
        DemoOptions(duration=None, port=0, ui=False, handle_signals=False),
        console=Console(file=io.StringIO()),
    )
    task = asyncio.create_task(demo.run())
    try:

        def incidents_showing() -> bool:
            if task.done():
                return True
            if demo.url is None or demo.daemon is None:
                return False
            models = demo.daemon.status()["models"]
            unhealthy = [m for m, d in models.items() if d["state"] != "ok"]
            return set(models) == set(DEMO_MODELS) and len(unhealthy) >= 2

        await wait_for(incidents_showing, timeout=60, what="two models unhealthy in the demo")
        assert not task.done(), "the demo ended early"
        assert demo.url is not None and demo.daemon is not None
        states = {m: d["state"] for m, d in demo.daemon.status()["models"].items()}
        url = demo.url + "?refresh=250"
        png = tmp_path / "status-page.png"
        shot, dom = await asyncio.gather(
            asyncio.to_thread(chromium, url, tmp_path / "p1", f"--screenshot={png}"),
            asyncio.to_thread(chromium, url, tmp_path / "p2", "--dump-dom"),
        )
    finally:
        demo.request_stop("test over")
        result = await asyncio.wait_for(task, 60)
    assert result.exit_code == 0
    assert shot.returncode == 0, shot.stderr.decode(errors="replace")[-2000:]
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]

    assert png.exists() and png.stat().st_size > 20_000, "blank or tiny screenshot"
    assert _png_size(png) == (1280, 900)
    html = dom.stdout.decode()
    for model in DEMO_MODELS:
        assert f'data-model="{model}"' in html, f"{model} missing from the page"
    rendered = dict(re.findall(r'data-model="([^"]+)" data-state="([^"]+)"', html))
    assert set(rendered) == set(DEMO_MODELS)
    # The page drew the daemon's states; the incidents it waited for last 8-10 s, longer
    # than the shot takes, so at least one model is still shown unhealthy.
    assert sum(s != "ok" for s in rendered.values()) >= 1, rendered
    assert all(s in ("ok", "warn", "degraded", "critical") for s in rendered.values())
    assert 'class="spark"' in html
    assert html.count("<polyline") >= len(DEMO_MODELS)
    print(f"daemon states before the shot {states}; page showed {rendered}")

    # The README's screenshot is refreshed on request, so a test run leaves the tree clean.
    if os.environ.get("DRIFTWARDEN_UPDATE_SCREENSHOTS") == "1":
        docs = ROOT / "docs" / "img"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, docs / "status-page.png")


DEMO_MAIN = (
    "import argparse, sys\n"
    "from monitor import cli_demo\n"
    "parser = argparse.ArgumentParser(prog='driftwarden')\n"
    "cli_demo.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


async def test_ctrl_c_stops_the_demo_cleanly_with_exit_code_zero(tmp_path: Path) -> None:
    require_tansu()
    out_path = tmp_path / "demo.out"
    proc = _spawn_demo(out_path)
    try:
        await wait_for(
            lambda: b"status page: http://127.0.0.1:" in out_path.read_bytes(),
            timeout=60,
            what="the demo's status page line",
        )
        tansu = [p for p in _children(proc.pid) if "tansu" in p[1]]
        assert tansu, "no embedded broker child process"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    output = out_path.read_text()
    assert code == 0, output[-3000:]
    assert took < 15, f"Ctrl-C to exit took {took:.1f}s"
    assert "graceful stop: demo ending" in output
    assert "shutdown complete" in output
    assert "Traceback" not in output
    assert " incidents: " in output  # the closing summary
    # The broker went with it.
    assert not any(_alive(pid) for pid, _ in tansu)
    print(f"\nCtrl-C to exit: {took:.2f}s")


def _spawn_demo(out_path: Path) -> subprocess.Popen[bytes]:
    with out_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", DEMO_MAIN, "demo", "--no-ui", "--port", "0"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        )


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append((int(entry.name), cmdline))
    return found


async def test_busy_status_port_ends_the_demo_with_exit_code_one_and_the_reason(
    tmp_path: Path,
) -> None:
    require_tansu()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = io.StringIO()
        result = await asyncio.wait_for(
            run_demo(
                DemoOptions(duration=5, port=port, ui=False, handle_signals=False),
                console=Console(file=out, width=200),
            ),
            60,
        )
    assert result.exit_code == 1
    assert "the daemon did not start" in out.getvalue()
    assert "--port 0" in out.getvalue()
