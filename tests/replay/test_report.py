"""The replay report reads well: the policy it ran, round axis ticks and times, distinct
colours per level, no horizontal scroll in a 1,000 px window (headless Chromium), and
``replay --compare`` with two policies side by side and their scores."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from monitor.cli.replay import register
from monitor.tools.report import LEVEL_COLOURS, nice_ticks, time_ticks
from tests.demo.browser import chromium, require_chromium
from tests.replay.streams import write_policy, write_stream

N = 20_000


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    policy = write_policy(root / "policy.yaml")
    other = root / "slower.yaml"
    text = policy.read_text()
    slower = re.sub(r"recover_after: [^,}\n]+", "recover_after: 40s", text)
    assert slower != text, "the test policy names no recover_after"
    other.write_text(slower)
    events = write_stream(root / "events.jsonl", N)
    single, compared = root / "single.html", root / "compared.html"
    assert run_cli(["replay", str(events), "-c", str(policy), "--report", str(single), "-q"]) == 0
    argv = ["replay", str(events), "-c", str(policy), "--compare", str(other), "-q"]
    assert run_cli([*argv, "--report", str(compared)]) == 0
    return {"single": single, "compared": compared, "policy": policy, "other": other,
            "events": events, "root": root}  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_value_ticks_are_round_cover_the_range_and_are_few(seed: int) -> None:
    rng = random.Random(seed)
    scale = 10.0 ** rng.randint(-4, 5)
    lo = rng.uniform(-1, 1) * scale
    hi = lo + rng.uniform(0.01, 3) * scale
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5, 10)) < 1e-6, (step, ticks)
    assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 7, ticks
    assert all(abs(t / step - round(t / step)) < 1e-6 for t in ticks), ticks


@pytest.mark.parametrize(
    ("span_s", "step_s"), [(3.0, 0.5), (40.0, 10), (245.0, 60), (3600.0, 600), (86400.0, 14400)]
)
def test_time_ticks_land_on_round_times(span_s: float, step_s: float) -> None:
    t0 = 1718000059.995  # 06:14:19.995, the odd start of the issue
    ticks, step = time_ticks(t0, t0 + span_s)
    assert step <= step_s * 1.5 and 2 <= len(ticks) <= 7, (step, ticks)
    for tick in ticks:
        assert t0 <= tick <= t0 + span_s
        assert abs(tick / step - round(tick / step)) < 1e-6, tick


def test_level_colours_are_far_apart() -> None:
    def rgb(hex_colour: str) -> tuple[int, ...]:
        return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))

    for (a, ca), (b, cb) in itertools.combinations(LEVEL_COLOURS.items(), 2):
        distance = math.dist(rgb(ca), rgb(cb))
        assert distance > 100, f"{a} {ca} and {b} {cb} are too alike ({distance:.0f})"


def test_report_shows_the_policy_it_ran(reports: dict[str, Path]) -> None:
    page = reports["single"].read_text()
    [section] = re.findall(r"<h3>Policy</h3>(.*?)<svg", page, re.S)[:1]
    assert re.search(r"<b>for</b> \S+ · <b>recover_after</b> \S+ · <b>cooldown</b> \S+", section)
    assert "error_rate" in section and "rate_window" in section
    assert "on entering" in section and "alert page" in section


def test_axis_labels_are_round_values_and_round_times(reports: dict[str, Path]) -> None:
    page = reports["single"].read_text()
    labels = re.findall(r'class="tick">([^<]+)<', page)
    times = [label for label in labels if ":" in label]
    values = [label for label in labels if ":" not in label]
    assert times and values
    for label in times:
        # HH:MM or HH:MM:SS, on a round step: never a millisecond part.
        assert re.fullmatch(r"\d\d:\d\d(:\d\d(\.\d)?)?", label), label
    seconds = {int(label[6:8]) for label in times if len(label) == 8}
    assert seconds <= set(range(0, 60, 5)), seconds
    for label in values:
        assert re.fullmatch(r"-?[\d,]+(\.\d{1,4})?", label), label
    # Thresholds drawn in their level's colour and labelled.
    assert f'stroke="{LEVEL_COLOURS["degraded"]}"' in page and "degraded threshold" in page


def test_compare_puts_two_policies_side_by_side_with_their_scores(
    reports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    page = reports["compared"].read_text()
    assert page.count("<svg") == 2 * page.count('class="pair"') == 2  # one model: fraud
    assert page.count('data-policy="A"') == page.count('data-policy="B"') == 1
    assert str(reports["policy"]) in page and str(reports["other"]) in page
    assert "recover_after</b> 40s" in page
    scores = re.search(r"<h2>Scores</h2>(.*?)</table>", page, re.S)
    assert scores and "time not ok" in scores.group(1) and "transitions" in scores.group(1)
    # The slower recovery keeps the model unhealthy longer: the scores differ.
    row = re.search(r"<td>fraud</td><td>time not ok</td>(.*?)</tr>", scores.group(1))
    assert row is not None
    a, b = re.findall(r'<td class="num">([^<]+)</td>', row.group(1))
    assert a != b, (a, b)
    argv = ["replay", str(reports["events"]), "-c", str(reports["policy"]), "--no-report", "-q"]
    capsys.readouterr()
    assert run_cli([*argv, "--compare", str(reports["other"])]) == 0
    out = capsys.readouterr().out
    assert "compared: A " in out and re.search(r"fraud\s+time not ok\s+\S+\s+\S+", out)


def test_compare_refuses_stdin_and_a_bad_policy(
    reports: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["replay", "-c", str(reports["policy"]), "--no-report", "-q"]
    assert run_cli([*base[:1], "-", *base[1:], "--compare", str(reports["other"])]) == 2
    assert "--compare reads EVENTS twice" in capsys.readouterr().err
    bad = reports["root"] / "bad.yaml"
    bad.write_text("models:\n  default:\n    health: {for: soon}\n")
    assert run_cli([*base[:1], str(reports["events"]), *base[1:], "--compare", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err


SCROLL_PROBE = (
    "<script>document.body.setAttribute('data-scroll-width', "
    "String(document.documentElement.scrollWidth));</script></body>"
)


@pytest.mark.parametrize("which", ["single", "compared"])
async def test_report_fits_a_1000px_window_in_chromium(
    reports: dict[str, Path], which: str, tmp_path: Path
) -> None:
    require_chromium()
    # A copy with a probe: the report itself carries no script.
    probe = tmp_path / f"{which}.html"
    probe.write_text(reports[which].read_text().replace("</body>", SCROLL_PROBE, 1))
    dom = await asyncio.to_thread(
        chromium, probe.as_uri(), tmp_path / "profile", "--dump-dom", window="1000,800"
    )
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    found = re.search(r'data-scroll-width="(\d+)"', dom.stdout.decode())
    assert found, "the probe did not run"
    assert int(found.group(1)) <= 1000, f"{which} scrolls sideways: {found.group(1)} px"


def test_the_time_axis_says_its_date_and_zone(reports: dict[str, Path]) -> None:
    page = reports["single"].read_text()
    day = datetime.fromtimestamp(1_700_000_000, UTC).strftime("%Y-%m-%d")
    assert f"event time (UTC), {day}" in page
