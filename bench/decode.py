"""Decode bench: the ways a batch of records can become the columns a policy reads, side by
side in one run, in microseconds per record, and what each does with a bad record.

Run: ``python bench/decode.py [--records 5000 --models 1000 --rounds 15]``; Arrow and Polars
are measured when ``pyarrow`` / ``polars`` import (``pip install pyarrow polars``), simdjson
when ``pysimdjson`` does. Prints a markdown report (``bench/results/decode.md`` holds one).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.config.policy import ModelPolicy, SignalPolicy
from monitor.engine.columns import Column, EventColumns, extractors_for
from monitor.engine.decode import ColumnDecoder, DecodedBatch
from monitor.engine.discovery import ObservedSchema, resolved
from monitor.engine.events import BadRecord, Event, EventDecoder
from monitor.tools.traffic import SYNTHETIC_CATEGORIES, synthetic_batches

NUMERIC = [f"f{i}" for i in range(10)]
CATEGORICAL = list(SYNTHETIC_CATEGORIES)
MAX_BYTES = 1 << 20

#: The bench policy (bench/policy_bench.yaml) plus the feedback rate: 17 columns.
SIGNALS = [
    SignalPolicy.model_validate(s)
    for s in (
        {"name": "features", "source": "features", "features": NUMERIC},
        {"name": "categories", "source": "features", "features": CATEGORICAL,
         "detector": {"type": "psi"}},
        {"source": "prediction"},
        {"source": "confidence"},
        {"source": "latency_ms", "detector": {"type": "quantile", "q": 0.99}},
        {"source": "error"},
        {"source": "feedback"},
    )
]  # fmt: skip

Columns = dict[Hashable, Any]


def make_records(n: int, n_models: int, seed: int = 7) -> list[bytes]:
    """``n`` v1 records of ``synthetic_batches`` (10 numeric + 2 categorical features,
    prediction, confidence, latency, error) with a request id and, on 60 %, feedback."""
    rng = np.random.default_rng(seed + 1)
    _, values = next(synthetic_batches(n, n_models, seed=seed, chunk=n))
    out = []
    for i, value in enumerate(values):
        body = msgspec.json.decode(value)
        body["request_id"] = f"req-{i}"
        body["model_version"] = "2026.11.1"
        if rng.random() < 0.6:
            body["feedback"] = int(rng.random() < 0.8)
        out.append(msgspec.json.encode(body))
    return out


def policy_columns() -> dict[Hashable, Column]:
    found: dict[Hashable, Column] = {}
    for signal in SIGNALS:
        for _, column in extractors_for(signal):
            found.setdefault(column.key, column)
    return found


# ---------------------------------------------------------------------------- candidates


def today(records: Sequence[bytes]) -> Columns:
    """EventDecoder per record (an Event with a features dict), then columns.py."""
    decode = EventDecoder(MAX_BYTES).decode
    events = []
    for value in records:
        found = decode(value)
        if isinstance(found, Event):
            events.append(found)
    cols = EventColumns(events)
    return {key: cols.get(column) for key, column in COLUMNS.items()}


_EVENT_LINES = msgspec.json.Decoder(Event)


def event_lines(records: Sequence[bytes]) -> Columns:
    """Today's Event type, the batch in one decode_lines call, then columns.py."""
    events = _EVENT_LINES.decode_lines(b"\n".join(records))
    cols = EventColumns(events)
    return {key: cols.get(column) for key, column in COLUMNS.items()}


def policy_batch(records: Sequence[bytes]) -> Columns:
    """The policy type, the batch in one decode_lines call (no fallback), then the
    prototype's columns: what a vectorised read of the policy type would cost."""
    rows = DECODER._rows.decode_lines(b"\n".join(records))
    batch = DecodedBatch(list(range(len(rows))), [r.model for r in rows], rows)
    DECODER._build_columns(batch, wide=False)
    return batch.columns


def prototype(records: Sequence[bytes]) -> Columns:
    """The prototype (monitor/engine/decode.py): the policy type, one call per record, the
    event decoder for a record it refuses."""
    return DECODER.decode(records).columns


def arrow(records: Sequence[bytes], threads: bool = False) -> Columns:
    """pyarrow.json.read_json over the joined batch with an explicit schema, plus the
    contract checks Arrow cannot express in a schema (model bytes and printability, string
    lengths, number range)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    table = pj.read_json(
        io.BytesIO(b"\n".join(records)),
        read_options=pj.ReadOptions(use_threads=threads, block_size=1 << 26),
        parse_options=pj.ParseOptions(
            explicit_schema=ARROW_SCHEMA, unexpected_field_behavior="ignore"
        ),
    )
    model = table.column("model")
    bad = pc.or_(pc.greater(pc.binary_length(model), 180), pc.invert(pc.utf8_is_printable(model)))
    feats = table.column("features").combine_chunks()
    out: Columns = {}
    for name in NUMERIC:
        values = feats.field(name)
        bad = pc.or_kleene(bad, pc.greater(pc.abs(values), 1e100))
        out[("feature", name)] = values.to_numpy(zero_copy_only=False)
    for name in CATEGORICAL:
        values = feats.field(name)
        bad = pc.or_kleene(bad, pc.greater(pc.utf8_length(values), 1024))
        out[("feature_category", name)] = values.to_pylist()
    for name in ("prediction", "confidence", "latency_ms", "feedback"):
        out[(name,)] = table.column(name).to_numpy()
    err = table.column("error").cast(pa.float64()).fill_null(0.0)
    out[("error",)] = err.to_numpy()
    out["bad"] = np.asarray(pc.fill_null(bad, False))
    out["models"] = model.to_pylist()
    return out


def arrow_threads(records: Sequence[bytes]) -> Columns:
    """As ``arrow``, the reader on its thread pool (2 cores here, shared)."""
    return arrow(records, threads=True)


def polars(records: Sequence[bytes]) -> Columns:
    """polars.read_ndjson over the joined batch with a schema, plus the same checks."""
    import polars as pl

    frame = pl.read_ndjson(io.BytesIO(b"\n".join(records)), schema=POLARS_SCHEMA)
    checks = [
        (pl.col("model").str.len_bytes() > 180)
        | pl.col("model").str.contains(r"[\x00-\x1f\x7f-\x9f]")
    ]
    feats = frame.get_column("features").struct.unnest()
    checks += [pl.col(n).abs() > 1e100 for n in NUMERIC]
    checks += [pl.col(n).str.len_chars() > 1024 for n in CATEGORICAL]
    joined = pl.concat([frame.select("model"), feats], how="horizontal")
    out: Columns = {"bad": joined.select(pl.any_horizontal(checks)).to_series().to_numpy()}
    for name in NUMERIC:
        out[("feature", name)] = feats.get_column(name).to_numpy()
    for name in CATEGORICAL:
        out[("feature_category", name)] = feats.get_column(name).to_list()
    for name in ("prediction", "confidence", "latency_ms", "feedback"):
        out[(name,)] = frame.get_column(name).to_numpy()
    out[("error",)] = frame.get_column("error").cast(pl.Float64).fill_null(0.0).to_numpy()
    out["models"] = frame.get_column("model").to_list()
    return out


def simdjson_each(records: Sequence[bytes]) -> Columns:
    """pysimdjson per record, reading only the policy's members (no validation at all)."""
    import simdjson

    parser = simdjson.Parser()
    numeric: list[list[Any]] = [[] for _ in NUMERIC]
    cats: list[list[Any]] = [[] for _ in CATEGORICAL]
    top: dict[str, list[Any]] = {k: [] for k in ("prediction", "confidence", "latency_ms")}
    models = []
    for value in records:
        doc = parser.parse(value)
        models.append(doc["model"])
        feats = doc["features"]
        for j, name in enumerate(NUMERIC):
            numeric[j].append(feats.get(name))
        for j, name in enumerate(CATEGORICAL):
            cats[j].append(feats.get(name))
        for name, column in top.items():
            column.append(doc.get(name))
        del doc, feats
    out: Columns = {
        ("feature", n): np.array(v, dtype=np.float64) for n, v in zip(NUMERIC, numeric, strict=True)
    }
    out.update({("feature_category", n): v for n, v in zip(CATEGORICAL, cats, strict=True)})
    out.update({(n,): np.array(v, dtype=np.float64) for n, v in top.items()})
    out["models"] = models
    return out


# ---------------------------------------------------------------------------- harness

COLUMNS = policy_columns()
DECODER = ColumnDecoder(SIGNALS, MAX_BYTES)


def use_auto_policy(records: Sequence[bytes]) -> None:
    """Measure with what auto coverage watches on these records (``signals: auto``: the
    families, a missing rate and a schema check over every feature, each top-level member)."""
    global COLUMNS, DECODER
    schema = ObservedSchema()
    schema.observe([msgspec.json.decode(value, type=Event) for value in records[:2_000]])
    SIGNALS[:] = resolved(ModelPolicy.model_validate({"signals": "auto"}), schema).signals
    COLUMNS = policy_columns()
    DECODER = ColumnDecoder(SIGNALS, MAX_BYTES)


ARROW_SCHEMA: Any = None
POLARS_SCHEMA: Any = None


def available() -> dict[str, Callable[[Sequence[bytes]], Columns]]:
    global ARROW_SCHEMA, POLARS_SCHEMA
    found: dict[str, Callable[[Sequence[bytes]], Columns]] = {
        "today: EventDecoder per record + columns.py": today,
        "Event type, one decode_lines + columns.py": event_lines,
        "policy type, one decode_lines (no fallback) + columns": policy_batch,
        "prototype: policy type per record (+ EventDecoder fallback) + columns": prototype,
    }
    try:
        import pyarrow as pa

        feats = pa.struct(
            [(n, pa.float64()) for n in NUMERIC] + [(n, pa.string()) for n in CATEGORICAL]
        )
        ARROW_SCHEMA = pa.schema(
            [("model", pa.string()), ("features", feats), ("error", pa.bool_())]
            + [(n, pa.float64()) for n in ("prediction", "confidence", "latency_ms", "feedback")]
        )
        found["Arrow read_json, 1 thread (+ contract checks)"] = arrow
        found["Arrow read_json, thread pool (+ contract checks)"] = arrow_threads
    except ImportError:
        print("pyarrow not installed: Arrow not measured", file=sys.stderr)
    try:
        import polars as pl

        POLARS_SCHEMA = {
            "model": pl.String,
            "features": pl.Struct(
                {**{n: pl.Float64 for n in NUMERIC}, **{n: pl.String for n in CATEGORICAL}}
            ),
            "error": pl.Boolean,
            **{n: pl.Float64 for n in ("prediction", "confidence", "latency_ms", "feedback")},
        }
        found["Polars read_ndjson (+ contract checks)"] = polars
    except ImportError:
        print("polars not installed: Polars not measured", file=sys.stderr)
    try:
        import simdjson  # noqa: F401

        found["pysimdjson per record, members read lazily (no checks)"] = simdjson_each
    except ImportError:
        print("pysimdjson not installed: simdjson not measured", file=sys.stderr)
    return found


def check_same_values(found: Columns, expected: Columns) -> str:
    """'same' when every column ``found`` has equals today's (NaN = NaN)."""
    for key, want in expected.items():
        got = found.get(key)
        if got is None:
            continue
        if isinstance(want, np.ndarray):
            if not np.array_equal(np.asarray(got, dtype=np.float64), want, equal_nan=True):
                return f"differs in {key}"
        elif list(got) != list(want):
            return f"differs in {key}"
    return "same"


def bad_record_outcome(fn: Callable[[Sequence[bytes]], Columns], records: list[bytes]) -> str:
    """What the candidate does with a batch holding one record of a wrong type."""
    batch = list(records)
    batch[len(batch) // 2] = b'{"model": "m", "latency_ms": "slow"}'
    try:
        out = fn(batch)
    except Exception as err:
        return f"whole batch fails: {type(err).__name__}: {str(err)[:70]}"
    if fn is prototype:
        decoded = DECODER.decode(batch)
        (at, bad), *_ = decoded.bad
        return f"{len(decoded.bad)} bad, record {at}: {bad.reason.value}; the rest decoded"
    n = len(out.get("models", out.get(("latency_ms",), [])))
    return f"no error; {n} rows out (the bad value read as missing or as a string)"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of the process, all its threads; wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(records: list[bytes], rounds: int) -> list[tuple[str, float, float, float, str, str]]:
    """Per candidate: CPU us/record (median, best), wall us/record (best), columns, bad
    record."""
    candidates = available()
    expected = today(records)
    cpu: dict[str, list[float]] = {name: [] for name in candidates}
    wall: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():  # warm-up (imports, type caches)
        fn(records)
    for _ in range(rounds):  # interleaved: each round runs every candidate once
        for name, fn in candidates.items():
            took_cpu, took_wall = timed(lambda fn=fn: fn(records))  # type: ignore[misc]
            cpu[name].append(took_cpu)
            wall[name].append(took_wall)
    rows = []
    n = len(records)
    for name, fn in candidates.items():
        rows.append(
            (name, statistics.median(cpu[name]) / n * 1e6, min(cpu[name]) / n * 1e6,
             min(wall[name]) / n * 1e6,
             check_same_values(fn(records), expected), bad_record_outcome(fn, records))
        )  # fmt: skip
    return rows


def fallback_costs(records: list[bytes], rounds: int) -> list[tuple[str, float, float]]:
    """The prototype's cost on batches that take its slower paths."""
    one_bad = list(records)
    one_bad[len(records) // 2] = b'{"model": "m", "latency_ms": "slow"}'
    unnamed = list(records)
    for i in range(0, len(records), 100):  # 1 % of records carry a feature no signal names
        unnamed[i] = records[i].replace(b'"features":{', b'"features":{"new_feature":1,')
    every_64 = list(records)
    for i in range(0, len(records), 64):
        every_64[i] = b"not json"
    cases = {
        "all valid": records,
        "one bad record in the batch": one_bad,
        "1 % of records with an unnamed feature": unnamed,
        "a bad record (not JSON) every 64 records": every_64,
        "pretty-printed records (a space and a newline in each)": [
            r.replace(b",", b", ", 1).replace(b":", b":\n", 1) for r in records
        ],
    }
    out = []
    for name, batch in cases.items():
        DECODER.decode(batch)
        took = [timed(lambda batch=batch: DECODER.decode(batch))[0] for _ in range(rounds)]
        out.append((name, statistics.median(took) / len(batch) * 1e6, min(took) / len(batch) * 1e6))
    return out


def parts(records: list[bytes], rounds: int) -> list[tuple[str, float, float]]:
    """Decoding alone (no columns) and columns alone, CPU us/record (median, best)."""
    event = msgspec.json.Decoder(Event).decode
    row = DECODER._rows.decode
    events = [event(v) for v in records]
    rows = [row(v) for v in records]
    batch = DecodedBatch(list(range(len(rows))), [r.model for r in rows], rows)

    def today_columns() -> None:
        cols = EventColumns(events)
        for column in COLUMNS.values():
            cols.get(column)

    cases: dict[str, Callable[[], object]] = {
        "decode: Event type, per record": lambda: [event(v) for v in records],
        "decode: policy type, per record": lambda: [row(v) for v in records],
        "columns: columns.py from Events": today_columns,
        "columns: the prototype's from policy rows": lambda: DECODER._build_columns(batch, False),
    }
    took: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            took[name].append(timed(fn)[0])
    n = len(records)
    return [(name, statistics.median(t) / n * 1e6, min(t) / n * 1e6) for name, t in took.items()]


#: Records of a class the event decoder dead-letters, or of one it accepts.
HOSTILE = {
    "an unnamed feature holding a list": b'{"model":"a","features":{"zz":[1,2]}}',
    "an unnamed feature of 1e400": b'{"model":"a","features":{"zz":1e400}}',
    "1,001 features": b'{"model":"a","features":{'
    + b",".join(b'"g%d":1' % i for i in range(1001))
    + b"}}",
    "a string in a numeric feature": b'{"model":"a","features":{"f0":"n/a"}}',
    "`latency_ms: true`": b'{"model":"a","latency_ms":true}',
    "an unknown field nested 3,000 deep": b'{"model":"a","x":' + b"[" * 3000 + b"]" * 3000 + b"}",
    '`latency_ms: "12"`': b'{"model":"a","latency_ms":"12"}',
}


def hostile_outcomes() -> list[str]:
    """What EventDecoder, the prototype, Arrow and Polars do with one record of each class."""
    events = EventDecoder(MAX_BYTES)
    lines = [
        "| record | EventDecoder | prototype | Arrow read_json | Polars read_ndjson |",
        "| --- | --- | --- | --- | --- |",
    ]
    readers = [
        fn for fn in (arrow, polars) if fn.__name__ in {f.__name__ for f in available().values()}
    ]
    for name, record in HOSTILE.items():
        verdict = events.decode(record)
        found = [verdict.reason.value if isinstance(verdict, BadRecord) else "valid"]
        batch = DECODER.decode([record])
        found.append(batch.bad[0][1].reason.value if batch.bad else "valid")
        for fn in readers:
            try:
                fn([record])
                found.append("accepted")
            except Exception:
                found.append("whole batch fails")
        lines.append(f"| {name} | " + " | ".join(found) + " |")
    return lines


def report(args: argparse.Namespace) -> str:
    records = make_records(args.records, args.models)
    if args.policy == "auto":
        use_auto_policy(records)
    # As the daemon runs (monitor/daemon/runtime.py): a high collector threshold.
    gc.set_threshold(50_000)
    rows = measure(records, args.rounds)
    base = rows[0][1]
    load = os.getloadavg()[0]
    size = sum(map(len, records)) / len(records)
    lines = [
        f"Policy {args.policy}: {args.records:,} records of {args.models:,} models, {size:.0f} bytes each on "
        f"average; {len(COLUMNS)} columns; {args.rounds} interleaved rounds; CPU time of "
        f"the process (every thread) per record, median and best; wall time, best; "
        f"{os.cpu_count()} cores, load {load:.1f} at the end; "
        f"Python {platform.python_version()}, msgspec {msgspec.__version__}.",
        "",
        "| candidate | CPU us/record, median | x today | CPU, best | wall, best "
        "| columns vs today | one bad record in the batch |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name, per_record, best_cpu, best_wall, same, bad in rows:
        lines.append(
            f"| {name} | {per_record:.2f} | {base / per_record:.2f} | {best_cpu:.2f} "
            f"| {best_wall:.2f} | {same} | {bad} |"
        )
    lines += ["", "The prototype on batches that take its slower paths:", ""]
    lines += ["| batch | CPU us/record, median | best |", "| --- | ---: | ---: |"]
    for name, per_record, best in fallback_costs(records, args.rounds):
        lines.append(f"| {name} | {per_record:.2f} | {best:.2f} |")
    lines += ["", "Where the time goes (the same records):", ""]
    lines += ["| part | CPU us/record, median | best |", "| --- | ---: | ---: |"]
    for name, per_record, best in parts(records, args.rounds):
        lines.append(f"| {name} | {per_record:.2f} | {best:.2f} |")
    lines += ["", "One record of each class (Arrow, Polars: over the bench's schema):", ""]
    lines += hostile_outcomes()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--policy",
        choices=["bench", "auto"],
        default="bench",
        help="bench: policy_bench.yaml's signals and feedback; auto: `signals: auto` "
        "(Arrow and Polars then still build the bench's columns only, no missing or schema)",
    )
    args = parser.parse_args(argv)
    print(report(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
