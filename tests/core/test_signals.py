"""Column extraction: a feature family built in one pass reads exactly what one column at a
time reads, for every shape of value the contract allows."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.config.policy import SignalPolicy
from monitor.engine.columns import EventColumns, _numbers, extractors_for
from monitor.engine.events import Event

FAMILY = ["a", "b", "c"]


def _family_policy() -> SignalPolicy:
    return SignalPolicy.model_validate(
        {
            "name": "feats",
            "source": "features",
            "features": FAMILY,
            "detector": {"type": "ks_window"},
        }
    )


def _one_at_a_time(events: list[Event], name: str) -> np.ndarray:
    return _numbers([(e.features or {}).get(name) for e in events])


@pytest.mark.parametrize(
    "features",
    [
        [{"a": 1.0, "b": 2, "c": True}, {"a": -3.5, "b": 0, "c": False}],
        [{"a": 1.0}, None, {"b": None, "c": 4.0}, {}],  # absent keys, no mapping, null
        [{"a": "1.5", "b": 2.0, "c": 3.0}, {"a": 1.0, "b": "x", "c": 1.0}],  # strings: NaN
        [],
    ],
    ids=["numbers-and-bools", "missing", "strings", "empty-batch"],
)
def test_family_columns_equal_single_columns(features: list[dict[str, object] | None]) -> None:
    events = [Event(model="m", features=f) for f in features]  # type: ignore[arg-type]
    columns = EventColumns(events)
    members = extractors_for(_family_policy())
    assert [name for name, _ in members] == [f"feats.{f}" for f in FAMILY]
    for (_, column), feature in zip(members, FAMILY, strict=True):
        got = columns.get(column)
        want = _one_at_a_time(events, feature)
        assert got.dtype == np.float64 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
        # Sliced for one model, called on a model's own events: the same values.
        np.testing.assert_array_equal(column(events), want)


def test_strings_in_a_numeric_feature_are_missing_not_parsed() -> None:
    events = [Event(model="m", features={"a": "1.5", "b": 1.0, "c": 2.0})]
    columns = EventColumns(events)
    a = columns.get(extractors_for(_family_policy())[0][1])
    assert np.isnan(a).all()
