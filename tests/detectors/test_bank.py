"""A bank of ks_window members reports, at every call, the Readings its per-object twins report
for the same values in the same order, and writes the same checkpoint bytes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from detectors import Detector, Reading, Verdict, build_detector, restore_detector
from detectors.bank import (
    KSWindowBank,
    MissingRateBank,
    QuantileBank,
    RateWindowBank,
    g_statistics_2x2,
)
from detectors.calibration import g_statistic_2x2
from detectors.extremes import MAGNITUDE_LIMIT
from detectors.missing import MissingRateSpec
from detectors.numeric import KSWindowDetector, KSWindowSpec
from detectors.quantile import QuantileSpec
from detectors.rates import RateWindowSpec
from detectors.serialization import StateError, pack, unpack

KINDS = (
    "normal", "discrete", "missing", "extreme", "constant", "autocorrelated", "fenced", "echo",
)  # fmt: skip


def bits(reading: Reading) -> tuple[str, ...]:
    """A Reading as exact text: repr round-trips floats, tells -0.0 from 0.0, NaN equals NaN."""
    return (
        repr(reading.statistic),
        repr(reading.effect),
        reading.verdict.value,
        repr(reading.samples),
        repr(reading.threshold),
    )


def stream(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A stream of ``kind`` that drifts (in location or scale) somewhere in its second half."""
    turn = int(rng.integers(size // 2, size))
    if kind == "discrete":
        values = rng.integers(0, 6, size).astype(np.float64)
        values[turn:] += rng.integers(0, 3)
    elif kind == "constant":
        values = np.full(size, 3.0)
        values[turn:] = rng.choice([3.0, 4.0, -2.0])
    elif kind == "autocorrelated":
        noise = rng.normal(size=size)
        values = np.empty(size)
        level = 0.0
        for i in range(size):
            level = 0.9 * level + noise[i]
            values[i] = level
        values[turn:] += rng.choice([0.0, 2.0])
    else:
        values = rng.normal(rng.normal(0.0, 100.0), rng.lognormal(0.0, 1.0), size)
        values[turn:] = values[turn:] * rng.choice([1.0, 2.5]) + rng.choice([0.0, 1e3])
    if kind == "missing":
        values[rng.random(size) < 0.2] = np.nan
        if rng.random() < 0.3:
            values[turn : turn + 300] = np.nan
    if kind == "extreme":
        hits = rng.random(size) < 0.01
        values[hits] = rng.choice([np.inf, -np.inf, 1e200, -1e300, 1e150, -1e150], hits.sum())
    if kind == "fenced":
        # Values clipped to the fence (so equal to its ends, and to grid points clipped there
        # too), exactly +-MAGNITUDE_LIMIT, both zeros and the neighbours of a value.
        special = [1e6, -1e6, MAGNITUDE_LIMIT, -MAGNITUDE_LIMIT, 0.0, -0.0, 1.0]
        special += [math.nextafter(1.0, 2.0), math.nextafter(1.0, 0.0)]
        hits = rng.random(size) < rng.choice([0.02, 0.3])
        values[hits] = rng.choice(special, hits.sum())
    if kind == "echo":
        # Continuous values that recur: the window holds the reference's own values, which
        # are the grid's points (or, past 2,048, some of them), so ranks tie with the grid.
        pool = values[: int(rng.integers(1, 400))]
        echoed = rng.random(size) < 0.7
        values[echoed] = rng.choice(pool, int(echoed.sum()))
    return values


def assert_ranks_exact(bank: KSWindowBank) -> None:
    """Every banked row's ranks are searchsorted's over its grid (the KS distance rests on
    them: a wrong rank could still give the right distance now and then)."""
    for member in range(len(bank)):
        if not bank.banked(member):
            continue
        row = bank._row_of[member]
        grid = bank._grid[row, : bank._grid_size]
        window = bank._win[row]
        assert np.array_equal(bank._upto[row], grid.searchsorted(window, "right"))
        assert np.array_equal(bank._below[row], grid.searchsorted(window, "left"))


def assert_same(bank: KSWindowBank, twins: list[KSWindowDetector], members: list[int]) -> None:
    for member in members:
        twin = twins[member]
        assert bits(bank.reading(member)) == bits(twin.reading()), f"member {member}"
        assert bank.events_until_test(member) == twin.events_until_test()
        assert bank.to_bytes(member) == twin.to_bytes(), f"checkpoint of member {member}"
    assert_ranks_exact(bank)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bank_readings_and_checkpoints_equal_the_per_object_detectors(data: Any) -> None:
    window = data.draw(st.integers(10, 150), label="window")
    # A stride of the whole window rewrites the ring from its first slot.
    stride = data.draw(st.one_of(st.integers(1, window), st.just(window)), label="stride")
    spec = KSWindowSpec(
        window=window,
        stride=stride,
        min_samples=data.draw(st.integers(1, window), label="min_samples"),
        persist=data.draw(st.sampled_from([0, 1, 37, 200]), label="persist"),
        calibration=data.draw(st.sampled_from(["analytic", "bootstrap"]), label="calibration"),
        autocorrelation=data.draw(st.booleans(), label="autocorrelation"),
        min_shift=data.draw(st.sampled_from([0.0, 0.25, 1.0]), label="min_shift"),
        min_scale_ratio=data.draw(st.sampled_from([1.0, 1.3, 3.0]), label="min_scale_ratio"),
        false_alarm_every=data.draw(st.sampled_from([1e3, 1e7]), label="false_alarm_every"),
        # Past 2,048 the reference is read through its quantile grid, not its values; the
        # sampled sizes are grids of a power of two points, one less, one more (the rank
        # search's padding and segments).
        reference={
            "size": data.draw(
                st.one_of(
                    st.integers(50, 400),
                    st.sampled_from([63, 64, 65, 127, 128, 129, 1023, 1024, 1025]),
                    st.integers(2040, 2600),
                ),
                label="reference",
            )
        },
    )
    size = data.draw(st.integers(1, 10), label="members")
    kinds = data.draw(st.lists(st.sampled_from(KINDS), min_size=size, max_size=size))
    families = data.draw(st.lists(st.integers(1, 20), min_size=size, max_size=size))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    streams = [stream(kind, 4000, rng) for kind in kinds]
    bank = KSWindowBank(spec, capacity=data.draw(st.integers(1, 4), label="capacity"))
    twins = []
    for member, family in enumerate(families):
        assert bank.add(family_size=family, seed=member) == member
        twins.append(KSWindowDetector(spec, family_size=family, seed=member))
    cursor = [0] * size
    sizes = [
        0,
        1,
        2,
        stride - 1,
        stride,
        stride + 1,
        window,
        2 * window + 3,
        250,
        900,
    ]  # 900: past a large reference
    for _ in range(data.draw(st.integers(5, 40), label="calls")):
        chosen = [int(i) for i in rng.permutation(size)[: int(rng.integers(1, size + 1))]]
        batches = []
        for member in chosen:
            take = max(0, int(rng.choice(sizes)))
            start = cursor[member] % 3000
            batches.append(streams[member][start : start + take])
            cursor[member] += take
        readings = bank.update_many(chosen, batches)
        for member, batch, reading in zip(chosen, batches, readings, strict=True):
            assert bits(reading) == bits(twins[member].update_many(batch)), f"member {member}"
        assert_same(bank, twins, chosen)
    event(f"some member banked: {any(bank.banked(i) for i in range(size))}")


def test_bank_of_a_ten_feature_family_with_a_full_size_reference_equals_the_detectors() -> None:
    # The calibrated default's shape: a reference larger than the grid (2,048 quantiles).
    spec = KSWindowSpec(reference={"size": 5000}, window=1000, stride=100, persist=200)
    rng = np.random.default_rng(16)
    bank = KSWindowBank(spec)
    twins = [KSWindowDetector(spec, family_size=10, seed=i) for i in range(10)]
    for i in range(10):
        bank.add(family_size=10, seed=i)
    streams = [stream(KINDS[i % len(KINDS)], 12_000, rng) for i in range(10)]
    verdicts: set[Verdict] = set()
    for start in range(0, 12_000, 250):
        batches = [s[start : start + 250] for s in streams]
        for i, reading in enumerate(bank.update_many(list(range(10)), batches)):
            assert bits(reading) == bits(twins[i].update_many(batches[i]))
            verdicts.add(reading.verdict)
    assert all(bank.banked(i) for i in range(10))
    assert {Verdict.OK, Verdict.DRIFT} <= verdicts
    assert_same(bank, twins, list(range(10)))


def test_a_checkpoint_moves_between_bank_and_detector_either_way_mid_stream() -> None:
    spec = KSWindowSpec(reference={"size": 300}, window=100, min_samples=50, stride=10)
    rng = np.random.default_rng(5)
    values = stream("extreme", 3000, rng)
    bank = KSWindowBank(spec)
    twin = KSWindowDetector(spec, family_size=3, seed=4)
    bank.add(family_size=3, seed=4)
    bank.update_many([0], [values[:1000]])
    twin.update_many(values[:1000])
    assert bank.banked(0)
    # Detector -> bank: a second bank restores the twin's checkpoint and goes on the same.
    other = KSWindowBank(spec)
    assert other.add_from_bytes(twin.to_bytes()) == 0 and other.banked(0)
    # Bank -> detector: the bank's checkpoint restores as an ordinary detector.
    restored = restore_detector(bank.to_bytes(0))
    assert isinstance(restored, KSWindowDetector)
    for start in range(1000, 3000, 37):
        batch = values[start : start + 37]
        expected = bits(twin.update_many(batch))
        assert bits(bank.update_many([0], [batch])[0]) == expected
        assert bits(other.update_many([0], [batch])[0]) == expected
        assert bits(restored.update_many(batch)) == expected
    assert bank.to_bytes(0) == other.to_bytes(0) == twin.to_bytes() == restored.to_bytes()
    assert bank.detector(0).to_bytes() == twin.to_bytes()


def test_a_filling_checkpoint_restores_per_object_and_joins_the_bank_once_steady() -> None:
    spec = KSWindowSpec(reference={"size": 200}, window=100, min_samples=50, stride=10)
    twin = KSWindowDetector(spec)
    values = np.random.default_rng(2).normal(size=600)
    twin.update_many(values[:150])
    bank = KSWindowBank(spec)
    bank.add_from_bytes(twin.to_bytes())
    assert not bank.banked(0)
    assert bits(bank.update_many([0], [values[150:400]])[0]) == bits(
        twin.update_many(values[150:400])
    )
    assert bank.banked(0)
    bank.reset(0)
    twin.reset()
    assert not bank.banked(0) and bank.to_bytes(0) == twin.to_bytes()


def test_rolling_members_stay_per_object_and_still_match() -> None:
    spec = KSWindowSpec(
        reference={"size": 100, "mode": "rolling"}, window=50, min_samples=20, stride=10
    )
    bank = KSWindowBank(spec)
    twin = KSWindowDetector(spec)
    bank.add()
    values = np.random.default_rng(3).normal(size=2000)
    for start in range(0, 2000, 90):
        batch = values[start : start + 90]
        assert bits(bank.update_many([0], [batch])[0]) == bits(twin.update_many(batch))
    assert not bank.banked(0)


@pytest.mark.parametrize(
    ("members", "batches", "message"),
    [
        ([0, 1], [np.zeros(3)], "one batch per member: 2 members, 1 batches"),
        ([0, 0], [np.zeros(3), np.zeros(3)], "at most once per call"),
        ([7], [np.zeros(3)], "no member 7 in a bank of 2"),
        ([-1], [np.zeros(3)], "no member -1"),
    ],
)
def test_bad_calls_are_refused_naming_what(
    members: list[int], batches: list[Any], message: str
) -> None:
    bank = KSWindowBank(KSWindowSpec(reference={"size": 50}, window=20, min_samples=10, stride=5))
    bank.add()
    bank.add()
    with pytest.raises((ValueError, IndexError), match=message):
        bank.update_many(members, batches)


def test_bad_values_and_foreign_checkpoints_are_refused() -> None:
    spec = KSWindowSpec(reference={"size": 50}, window=20, min_samples=10, stride=5)
    bank = KSWindowBank(spec)
    bank.add()
    bank.update_many([0], [np.arange(100.0)])
    assert bank.banked(0)
    with pytest.raises(ValueError, match="could not convert"):
        bank.update_many([0], [["a", "b"]])
    other = KSWindowDetector(
        KSWindowSpec(reference={"size": 60}, window=20, min_samples=10, stride=5)
    )
    with pytest.raises(StateError, match="not this bank's"):
        bank.add_from_bytes(other.to_bytes())
    with pytest.raises(StateError):
        bank.add_from_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="holds ks_window detectors, not QuantileSpec"):
        KSWindowBank(QuantileSpec())  # type: ignore[arg-type]
    assert math.isnan(bank.update_many([0], [[math.nan]])[0].statistic)


def test_update_flat_over_a_column_equals_update_many_and_reports_only_changed_readings() -> None:
    spec = KSWindowSpec(reference={"size": 100}, window=50, min_samples=20, stride=10)
    rng = np.random.default_rng(8)
    flat_bank, list_bank = KSWindowBank(spec), KSWindowBank(spec)
    twins = [KSWindowDetector(spec, family_size=4, seed=i) for i in range(4)]
    for i in range(4):
        flat_bank.add(family_size=4, seed=i)
        list_bank.add(family_size=4, seed=i)
    reported = 0
    for _ in range(60):
        lengths = rng.integers(0, 25, 4)
        column = stream("missing", int(lengths.sum()), rng)
        members = rng.permutation(4)
        before = [flat_bank.reading(i) for i in range(4)]
        changed, readings = flat_bank.update_flat(members, column, lengths)
        cuts = np.cumsum(lengths)[:-1]
        batches = np.split(column, cuts)
        expected = [twins[int(m)].update_many(b) for m, b in zip(members, batches, strict=True)]
        assert [bits(r) for r in list_bank.update_many(list(members), batches)] == [
            bits(r) for r in expected
        ]
        for j in range(4):
            member = int(members[j])
            if j in changed.tolist():
                assert bits(readings[changed.tolist().index(j)]) == bits(expected[j])
            else:
                # Not reported: the Reading stands, the same object as before the call.
                assert flat_bank.reading(member) is before[member]
                assert bits(before[member]) == bits(expected[j])
            assert flat_bank.to_bytes(member) == twins[member].to_bytes()
        reported += changed.size
    assert all(flat_bank.banked(i) for i in range(4))
    assert 0 < reported < 240


@pytest.mark.parametrize(
    ("members", "values", "lengths", "message"),
    [
        (np.array([0, 1]), np.zeros(4), np.array([2]), "one length per member"),
        (np.array([0, 1]), np.zeros(4), np.array([2, 3]), "add up to the 4 values, got a sum of 5"),
        (np.array([0, 1]), np.zeros(4), np.array([5, -1]), r"smallest -1"),
        (np.array([0.0, 1.0]), np.zeros(4), np.array([2, 2]), "must be integers"),
        (np.array([1, 1]), np.zeros(4), np.array([2, 2]), "at most once per call"),
        (np.array([0, 2]), np.zeros(4), np.array([2, 2]), "no member 2 in a bank of 2"),
    ],
)
def test_bad_flat_calls_are_refused_naming_what(
    members: np.ndarray, values: np.ndarray, lengths: np.ndarray, message: str
) -> None:
    bank = KSWindowBank(KSWindowSpec(reference={"size": 50}, window=20, min_samples=10, stride=5))
    bank.add()
    bank.add()
    with pytest.raises((ValueError, IndexError), match=message):
        bank.update_flat(members, values, lengths)


@pytest.mark.parametrize("window", [10, 127, 1000, 4096])
def test_row_sums_and_stacked_dot_products_equal_the_one_dimensional_ones(window: int) -> None:
    # The bank's moments rest on these two being bit for bit what a 1-D window computes.
    rng = np.random.default_rng(window)
    rows = rng.normal(size=(40, window)) * rng.lognormal(0.0, 3.0, (40, 1)) + 1e6
    sums = rows.sum(axis=1)
    dots = np.matmul(rows[:, None, :], rows[:, :, None]).reshape(-1)
    for i in range(40):
        assert sums[i] == rows[i].sum()
        assert dots[i] == rows[i] @ rows[i]


@pytest.mark.parametrize("window", [10, 300, 512, 513, 1000])
@pytest.mark.parametrize("kind", ["discrete", "normal", "echo"])
def test_each_rank_sort_gives_the_detectors_readings(window: int, kind: str) -> None:
    # The sort a test uses (the sorting network for windows up to 512 where numpy has it,
    # the radix sort otherwise) must not change one bit of a Reading: every kind forced on
    # the same bank state, each against the per-object twins, ties to the grid included.
    spec = KSWindowSpec(
        reference={"size": 400}, window=window, min_samples=min(window, 200), stride=10
    )
    rng = np.random.default_rng(window)
    streams = [stream(kind, 3 * window + 1200, rng) for _ in range(6)]
    for sort_kind in ("stable", "quicksort"):
        bank = KSWindowBank(spec)
        bank._sort_kind = sort_kind
        twins = [KSWindowDetector(spec, family_size=6, seed=i) for i in range(6)]
        for i in range(6):
            bank.add(family_size=6, seed=i)
        for start in range(0, streams[0].size, 97):
            batches = [s[start : start + 97] for s in streams]
            for i, reading in enumerate(bank.update_many(list(range(6)), batches)):
                assert bits(reading) == bits(twins[i].update_many(batches[i])), sort_kind
        assert all(bank.banked(i) for i in range(6))
        assert_same(bank, twins, list(range(6)))


def test_readings_built_field_by_field_are_the_constructors_readings() -> None:
    from detectors.bank import _READING_SETTERS, _readings

    # The bank builds a round's Readings slot by slot; they must be Readings in every way
    # the constructor's are (fields, equality, hash, repr, frozen), NaN and -0.0 included.
    assert _READING_SETTERS is not None, "Reading changed shape: the bank calls its constructor"
    stats = [0.5, math.nan, -0.0, math.inf]
    effects = [1.0, math.nan, 0.0, -2.5]
    verdicts = [Verdict.OK, Verdict.INCONCLUSIVE, Verdict.DRIFT, Verdict.ANOMALY]
    limits = [0.1, 0.2, math.nan, 3.0]
    built = _readings(stats, effects, verdicts, 77, limits)
    expected = [
        Reading(stat, effect, verdict, 77, limit)
        for stat, effect, verdict, limit in zip(stats, effects, verdicts, limits, strict=True)
    ]
    assert [type(r) for r in built] == [Reading] * 4
    assert [bits(r) for r in built] == [bits(r) for r in expected]
    assert [repr(r) for r in built] == [repr(r) for r in expected]
    assert built[0] == expected[0] and hash(built[0]) == hash(expected[0])
    assert [r.breached for r in built] == [False, False, True, True]
    with pytest.raises(AttributeError):
        built[0].statistic = 1.0  # type: ignore[misc]
    assert _readings([], [], [], 5, []) == []


def test_the_sorting_network_is_used_only_for_the_windows_it_takes() -> None:
    from detectors.bank import _NETWORK, _rank_sort_kind, _sort_network

    assert _rank_sort_kind(_NETWORK + 1) == "stable"
    assert _rank_sort_kind(_NETWORK) == ("quicksort" if _sort_network() else "stable")
    assert KSWindowBank(KSWindowSpec(window=1000))._sort_kind == "stable"


def test_a_bank_member_handle_is_a_detector_with_the_twins_readings_and_bytes() -> None:
    spec = KSWindowSpec(reference={"size": 120}, window=60, min_samples=30, stride=7)
    bank = KSWindowBank(spec)
    handle = bank.handle(bank.add(family_size=2, seed=9))
    twin = KSWindowDetector(spec, family_size=2, seed=9)
    assert isinstance(handle, Detector)
    values = stream("discrete", 1500, np.random.default_rng(4))
    for start in range(0, 1500, 23):
        batch = values[start : start + 23]
        assert bits(handle.update_many(batch)) == bits(twin.update_many(batch))
        assert handle.events_until_test() == twin.events_until_test()
    assert bits(handle.update(4.0)) == bits(twin.update(4.0))
    assert handle.to_bytes() == twin.to_bytes() and bits(handle.reading()) == bits(twin.reading())
    handle.reset()
    twin.reset()
    assert handle.to_bytes() == twin.to_bytes()
    with pytest.raises(IndexError, match="no member 3"):
        bank.handle(3)


def test_checkpoints_of_other_detectors_or_damaged_ones_are_refused_with_a_state_error() -> None:
    spec = KSWindowSpec(reference={"size": 50}, window=20, min_samples=10, stride=5)
    bank = KSWindowBank(spec)
    quantile = build_detector(
        QuantileSpec(reference={"size": 50}, window=20, min_samples=10, stride=5)
    )
    with pytest.raises(StateError, match="not a ks_window detector's checkpoint"):
        bank.add_from_bytes(quantile.to_bytes())
    raw = unpack(KSWindowDetector(spec).to_bytes())
    del raw["state"]["window"]
    with pytest.raises(StateError, match="corrupt ks_window checkpoint"):
        bank.add_from_bytes(pack(raw))
    raw = unpack(KSWindowDetector(spec).to_bytes())
    raw["v"] = 99
    with pytest.raises(StateError, match="version 99"):
        bank.add_from_bytes(pack(raw))
    assert len(bank) == 0


def binary_stream(size: int, rng: np.random.Generator) -> np.ndarray:
    """0 / 1 values (and other non-zero values, which count as 1) whose rate moves in its
    second half, with missing values."""
    turn = int(rng.integers(size // 2, size))
    rate = np.where(np.arange(size) < turn, rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.5))
    values = (rng.random(size) < rate).astype(np.float64)
    odd = rng.random(size) < 0.02
    values[odd] = rng.choice([2.0, -1.0, 1e300, np.inf], odd.sum())
    values[rng.random(size) < rng.choice([0.0, 0.1])] = np.nan
    return values


RATE_BANKS = [(RateWindowSpec, RateWindowBank), (MissingRateSpec, MissingRateBank)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rate_bank_readings_and_checkpoints_equal_the_per_object_detectors(data: Any) -> None:
    # ``missing_rate`` runs the same test under its own spec, in its own bank class.
    spec_class, bank_class = data.draw(st.sampled_from(RATE_BANKS), label="kind")
    window = data.draw(st.integers(10, 150), label="window")
    stride = data.draw(st.one_of(st.integers(1, window), st.just(window)), label="stride")
    spec = spec_class(
        window=window,
        stride=stride,
        min_samples=data.draw(st.integers(1, window), label="min_samples"),
        persist=data.draw(st.sampled_from([0, 1, 37, 200]), label="persist"),
        threshold=data.draw(st.sampled_from([None, None, 0.0, 0.05, 0.3]), label="threshold"),
        alert_on=data.draw(st.sampled_from(["increase", "decrease", "both"]), label="alert_on"),
        min_difference=data.draw(st.sampled_from([0.0, 0.01, 0.1]), label="min_difference"),
        false_alarm_every=data.draw(st.sampled_from([1e3, 1e7]), label="false_alarm_every"),
        reference={"size": data.draw(st.integers(50, 400), label="reference")},
    )
    size = data.draw(st.integers(1, 8), label="members")
    families = data.draw(st.lists(st.integers(1, 20), min_size=size, max_size=size))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    streams = [binary_stream(4000, rng) for _ in range(size)]
    bank = bank_class(spec, capacity=data.draw(st.integers(1, 4), label="capacity"))
    twins = []
    for member, family in enumerate(families):
        bank.add(family_size=family, seed=member)
        twins.append(build_detector(spec, family_size=family, seed=member))
    cursor = [0] * size
    sizes = [0, 1, 2, stride - 1, stride, stride + 1, window, 2 * window + 3, 250]
    for _ in range(data.draw(st.integers(5, 40), label="calls")):
        chosen = [int(i) for i in rng.permutation(size)[: int(rng.integers(1, size + 1))]]
        batches = []
        for member in chosen:
            take = max(0, int(rng.choice(sizes)))
            start = cursor[member] % 3000
            batches.append(streams[member][start : start + take])
            cursor[member] += take
        readings = bank.update_many(chosen, batches)
        for member, batch, reading in zip(chosen, batches, readings, strict=True):
            assert bits(reading) == bits(twins[member].update_many(batch)), f"member {member}"
        for member in chosen:
            assert bits(bank.reading(member)) == bits(twins[member].reading())
            assert bank.events_until_test(member) == twins[member].events_until_test()
            assert bank.to_bytes(member) == twins[member].to_bytes()
    event(f"some member banked: {any(bank.banked(i) for i in range(size))}")


@pytest.mark.parametrize(
    ("spec_class", "bank_class", "detectors"),
    [
        (RateWindowSpec, RateWindowBank, ("RateWindowDetector", "RateLimitDetector")),
        (MissingRateSpec, MissingRateBank, ("MissingRateDetector", "MissingRateLimitDetector")),
    ],
)
def test_rate_bank_members_join_the_rows_and_checkpoints_move_either_way(
    spec_class: type[RateWindowSpec] | type[MissingRateSpec],
    bank_class: type[RateWindowBank],
    detectors: tuple[str, str],
) -> None:
    spec = spec_class(reference={"size": 300}, window=100, min_samples=50, stride=10)
    limit = spec_class(threshold=0.1, window=100, min_samples=50, stride=10)
    rng = np.random.default_rng(6)
    for each, detector_class in zip((spec, limit), detectors, strict=True):
        # A rate of 2%, then of 40% from event 1,800 on: both variants breach.
        values = (rng.random(3000) < np.where(np.arange(3000) < 1800, 0.02, 0.4)) * 1.0
        values[rng.random(3000) < 0.05] = np.nan
        bank = bank_class(each)
        twin = build_detector(each, family_size=2)
        assert type(twin).__name__ == detector_class
        bank.add(family_size=2)
        bank.update_many([0], [values[:1000]])
        twin.update_many(values[:1000])
        assert bank.banked(0)
        assert bank.to_bytes(0) == twin.to_bytes()
        other = bank_class(each)
        other.add_from_bytes(twin.to_bytes())
        assert other.banked(0)
        restored = restore_detector(bank.to_bytes(0))
        # Restored from the bank's bytes: the spec's own detector class, not another's.
        assert type(restored).__name__ == detector_class
        assert type(bank.detector(0)).__name__ == detector_class
        verdicts = set()
        for start in range(1000, 3000, 41):
            batch = values[start : start + 41]
            expected = bits(twin.update_many(batch))
            verdicts.add(expected[2])
            assert bits(bank.update_many([0], [batch])[0]) == expected
            assert bits(other.update_many([0], [batch])[0]) == expected
            assert bits(restored.update_many(batch)) == expected
        assert bank.to_bytes(0) == other.to_bytes(0) == twin.to_bytes() == restored.to_bytes()
        assert verdicts == {"ok", "drift" if each.threshold is None else "anomaly"}
    with pytest.raises(ValueError, match=f"holds {spec.type} detectors, not KSWindowSpec"):
        bank_class(KSWindowSpec())  # type: ignore[arg-type]


def test_rate_and_missing_rate_banks_refuse_each_others_specs_and_checkpoints() -> None:
    """Same test, same rows, different detectors: a bank holds its own spec type only, so a
    checkpoint restores into the detector (and bank) of the kind that wrote it."""
    shape = {"reference": {"size": 100}, "window": 50, "min_samples": 20, "stride": 5}
    rate, missing = RateWindowSpec(**shape), MissingRateSpec(**shape)
    with pytest.raises(ValueError, match="holds missing_rate detectors, not RateWindowSpec"):
        MissingRateBank(rate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds rate_window detectors, not MissingRateSpec"):
        RateWindowBank(missing)
    values = (np.random.default_rng(2).random(400) < 0.1) * 1.0
    for spec, foreign in ((rate, MissingRateBank(missing)), (missing, RateWindowBank(rate))):
        home = (MissingRateBank if spec is missing else RateWindowBank)(spec)
        home.update_many([home.add()], [values])
        assert home.banked(0)
        with pytest.raises(StateError, match=f"not a {foreign.spec.type} detector's checkpoint"):
            foreign.add_from_bytes(home.to_bytes(0))
        assert len(foreign) == 0


def counts(total: int) -> st.SearchStrategy[int]:
    """A count out of ``total``: the edges (0, 1, total - 1, total) as often as any other."""
    edges = st.sampled_from(sorted({0, min(1, total), max(total - 1, 0), total}))
    return st.one_of(edges, st.integers(0, total))


@st.composite
def rate_tables(draw: st.DrawFn) -> tuple[float, float, float, float]:
    """The four counts a rate test reads: a window of ``w`` values with ``ones`` 1s against
    a reference of ``n`` with ``ref_ones`` (0 for an absolute limit's empty reference); the
    windows and references a spec allows, 10 to 1,000,000, and their edges."""
    w = draw(st.one_of(st.sampled_from([10, 11, 1000, 10_000, 1_000_000]), st.integers(10, 10**6)))
    n = draw(st.one_of(st.sampled_from([0, 50, 10_000, 1_000_000]), st.integers(50, 10**6)))
    ones = draw(counts(w))
    ref_ones = draw(counts(n))
    return float(ones), float(w - ones), float(ref_ones), float(n - ref_ones)


@settings(max_examples=300, deadline=None)
@given(tables=st.lists(rate_tables(), min_size=1, max_size=40))
def test_g_statistics_of_a_block_of_rows_equal_the_scalar_bit_for_bit(
    tables: list[tuple[float, float, float, float]],
) -> None:
    # The bank's operands as it passes them: window - ones, ref_n (int64) - ref_ones.
    w0, w1, r0, r1 = (np.array(column) for column in zip(*tables, strict=True))
    ref_n = (r0 + r1).astype(np.int64)
    window = w0 + w1
    got = g_statistics_2x2(w0, window - w0, r0, ref_n - r0)
    want = [g_statistic_2x2(*table) for table in tables]
    assert [repr(g) for g in got.tolist()] == [repr(g) for g in want], tables


def test_g_statistics_of_every_small_table_equal_the_scalar_bit_for_bit() -> None:
    """Every table of counts up to 12 (zeros in every cell and combination of cells), and
    rows of one table spread over blocks of other sizes."""
    small = np.array(
        [(a, b, c, d) for a in range(13) for b in range(13) for c in range(13) for d in range(13)],
        dtype=np.float64,
    )
    got = g_statistics_2x2(*small.T)
    want = np.array([g_statistic_2x2(*row) for row in small.tolist()])
    assert np.array_equal(got.view(np.int64), want.view(np.int64))
    assert (want > 0).sum() > small.shape[0] // 2
    for size in (1, 2, 3, 7, 65):
        part = small[:size]
        assert np.array_equal(g_statistics_2x2(*part.T).view(np.int64), want[:size].view(np.int64))


def latency_stream(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Latency-like values (lognormal, zeros, constant, with extremes and holes) whose tail
    grows somewhere in the second half."""
    turn = int(rng.integers(size // 2, size))
    if kind == "constant":
        values = np.full(size, 5.0)
        values[turn:] = rng.choice([5.0, 9.0])
    elif kind == "zeros":
        values = np.where(rng.random(size) < 0.97, 0.0, rng.lognormal(0.0, 1.0, size))
    else:
        values = rng.lognormal(np.log(100.0), rng.uniform(0.1, 1.0), size)
        values[turn:] *= rng.choice([1.0, 1.5, 4.0])
    if kind == "extreme":
        hits = rng.random(size) < 0.01
        values[hits] = rng.choice([np.inf, -np.inf, 1e200, 1e150, -5.0], hits.sum())
    values[rng.random(size) < rng.choice([0.0, 0.1])] = np.nan
    return values


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_quantile_bank_readings_and_checkpoints_equal_the_per_object_detectors(data: Any) -> None:
    window = data.draw(st.integers(10, 150), label="window")
    stride = data.draw(st.one_of(st.integers(1, window), st.just(window)), label="stride")
    spec = QuantileSpec(
        window=window,
        stride=stride,
        min_samples=data.draw(st.integers(1, window), label="min_samples"),
        persist=data.draw(st.sampled_from([0, 1, 37, 200]), label="persist"),
        q=data.draw(st.sampled_from([0.01, 0.5, 0.9, 0.99, 0.999]), label="q"),
        threshold=data.draw(st.sampled_from([None, None, 0.0, 150.0, 1e6]), label="threshold"),
        max_ratio=data.draw(st.sampled_from([1.01, 1.5, 3.0]), label="max_ratio"),
        false_alarm_every=data.draw(st.sampled_from([1e3, 1e7]), label="false_alarm_every"),
        reference={"size": data.draw(st.integers(50, 400), label="reference")},
    )
    size = data.draw(st.integers(1, 8), label="members")
    kinds = data.draw(
        st.lists(
            st.sampled_from(["lognormal", "extreme", "constant", "zeros"]),
            min_size=size,
            max_size=size,
        )
    )
    families = data.draw(st.lists(st.integers(1, 20), min_size=size, max_size=size))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    streams = [latency_stream(kind, 4000, rng) for kind in kinds]
    bank = QuantileBank(spec, capacity=data.draw(st.integers(1, 4), label="capacity"))
    twins = []
    for member, family in enumerate(families):
        bank.add(family_size=family, seed=member)
        twins.append(build_detector(spec, family_size=family, seed=member))
    cursor = [0] * size
    sizes = [0, 1, 2, stride - 1, stride, stride + 1, window, 2 * window + 3, 250]
    for _ in range(data.draw(st.integers(5, 40), label="calls")):
        chosen = [int(i) for i in rng.permutation(size)[: int(rng.integers(1, size + 1))]]
        batches = []
        for member in chosen:
            take = max(0, int(rng.choice(sizes)))
            start = cursor[member] % 3000
            batches.append(streams[member][start : start + take])
            cursor[member] += take
        readings = bank.update_many(chosen, batches)
        for member, batch, reading in zip(chosen, batches, readings, strict=True):
            assert bits(reading) == bits(twins[member].update_many(batch)), f"member {member}"
        for member in chosen:
            assert bits(bank.reading(member)) == bits(twins[member].reading())
            assert bank.events_until_test(member) == twins[member].events_until_test()
            assert bank.to_bytes(member) == twins[member].to_bytes()
    event(f"some member banked: {any(bank.banked(i) for i in range(size))}")


def test_quantile_bank_members_breach_as_their_detectors_and_checkpoints_move() -> None:
    rng = np.random.default_rng(12)
    for each in (
        QuantileSpec(q=0.99, reference={"size": 500}, window=200, min_samples=100, stride=20),
        QuantileSpec(q=0.99, threshold=300.0, window=200, min_samples=100, stride=20),
    ):
        values = rng.lognormal(np.log(100.0), 0.3, 4000)
        values[2500:] *= 3.0
        bank = QuantileBank(each)
        twin = build_detector(each, family_size=3)
        bank.add(family_size=3)
        bank.update_many([0], [values[:1000]])
        twin.update_many(values[:1000])
        assert bank.banked(0)
        restored = restore_detector(bank.to_bytes(0))
        other = QuantileBank(each)
        other.add_from_bytes(twin.to_bytes())
        verdicts = set()
        for start in range(1000, 4000, 33):
            batch = values[start : start + 33]
            expected = bits(twin.update_many(batch))
            verdicts.add(expected[2])
            assert bits(bank.update_many([0], [batch])[0]) == expected
            assert bits(other.update_many([0], [batch])[0]) == expected
            assert bits(restored.update_many(batch)) == expected
        assert bank.to_bytes(0) == other.to_bytes(0) == twin.to_bytes() == restored.to_bytes()
        assert verdicts == {"ok", "drift" if each.threshold is None else "anomaly"}


@pytest.mark.parametrize(
    "bank_class", [KSWindowBank, RateWindowBank, MissingRateBank, QuantileBank]
)
def test_a_removed_member_frees_its_row_and_number_and_its_handle_fails(
    bank_class: type[KSWindowBank] | type[RateWindowBank] | type[QuantileBank],
) -> None:
    spec_class: Any = {
        KSWindowBank: KSWindowSpec,
        RateWindowBank: RateWindowSpec,
        MissingRateBank: MissingRateSpec,
    }.get(bank_class, QuantileSpec)
    spec = spec_class(window=100, min_samples=50, stride=10, reference={"size": 200})
    bank: Any = bank_class(spec, capacity=2)
    rng = np.random.default_rng(3)
    handles = [bank.handle(bank.add(seed=i)) for i in range(3)]
    twins = [build_detector(spec, seed=i) for i in range(3)]
    for _ in range(4):
        values = [rng.lognormal(0.0, 0.5, 120) for _ in range(3)]
        for handle, twin, v in zip(handles, twins, values, strict=True):
            assert bits(handle.update_many(v)) == bits(twin.update_many(v))
    assert all(bank.banked(h.number) for h in handles) and bank._rows == 3
    gone = handles[1]
    bank.remove(gone.number)
    assert len(bank) == 2 and not gone.live
    with pytest.raises(LookupError, match="removed"):
        gone.update_many(np.ones(5))
    with pytest.raises(IndexError, match="no member"):
        bank.update_flat(np.array([gone.number]), np.ones(5), np.array([5]))
    # The next member takes the number and the row, and starts afresh.
    fresh = bank.handle(bank.add(seed=9))
    assert fresh.number == gone.number and not gone.live and bank._rows == 3
    twins[1] = build_detector(spec, seed=9)
    handles[1] = fresh
    for _ in range(4):
        values = [rng.lognormal(0.0, 0.5, 120) for _ in range(3)]
        for handle, twin, v in zip(handles, twins, values, strict=True):
            assert bits(handle.update_many(v)) == bits(twin.update_many(v))
            assert handle.to_bytes() == twin.to_bytes()
    assert bank._rows == 3, "the freed row was reused"


@pytest.mark.parametrize("other_size", [31, 32, 33, 250, 299])
def test_a_member_whose_grid_has_another_size_stays_per_object_and_matches(
    other_size: int,
) -> None:
    # A reference read from a file that changed between runs: the bank's rows hold the grid
    # size of its first steady member; a checkpoint with another one is run per object.
    spec = KSWindowSpec(reference={"size": 300}, window=100, min_samples=50, stride=10)
    rng = np.random.default_rng(other_size)
    bank = KSWindowBank(spec)
    first = KSWindowDetector(spec, family_size=2, seed=0)
    other = KSWindowDetector(spec, family_size=2, seed=1)
    for detector in (first, other):
        detector.update_many(stream("echo", 500, rng))
    raw = unpack(other.to_bytes())
    grid = raw["state"]["extra"]["grid"]
    raw["state"]["extra"]["grid"] = grid[np.linspace(0, grid.size - 1, other_size).astype(int)]
    other = restore_detector(pack(raw))
    assert isinstance(other, KSWindowDetector)
    bank.add_from_bytes(first.to_bytes())
    bank.add_from_bytes(other.to_bytes())
    assert bank.banked(0) and not bank.banked(1)
    twins = [first, other]
    for _ in range(30):
        batches = [stream("fenced", int(rng.integers(1, 40)), rng) for _ in twins]
        readings = bank.update_many([0, 1], batches)
        for member, twin in enumerate(twins):
            assert bits(readings[member]) == bits(twin.update_many(batches[member]))
        assert_same(bank, twins, [0, 1])
