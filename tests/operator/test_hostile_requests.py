"""Hostile requests against every route of a real HttpServer carrying the operator API (aiohttp
on a free port, raw bytes over a socket): each malformed request is a 4xx with a JSON error and
leaves pins, silences, the audit trail and the flagd file as they were; the token reaches no
log record, whatever bytes follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from alerts.dispatcher import AlertDispatcher
from monitor.actions.actions import Actions, AuditLog
from monitor.config.policy import LevelActions, ModelPolicy
from monitor.engine.engine import Engine
from monitor.flags.actuator import FlagActuator
from monitor.flags.flagd_file import FlagdFileBackend
from monitor.http.operator import (
    MAX_ACTIVE_SILENCES,
    MAX_NAME_CHARS,
    add_operator_routes,
)
from monitor.http.rollout_gate import add_gate_routes
from monitor.http.server import MAX_REQUEST_BODY_BYTES, HttpServer
from monitor.observability.logs import JsonFormatter
from monitor.observability.metrics import Metrics
from tests.conftest import wait_for

TOKEN = "op-t0ken-3b9d1f7a5c2e4b6d8f0a"
SEEN_MODEL = "ranker"  # has events (a monitor in the engine), no policy of its own
NAMED_MODEL = "fraud"  # named in the policy, no events yet
#: The service's own flag: in the flagd file, set by no policy.
SERVICE_FLAG = "svc-dark-mode"

POLICIES: dict[str, ModelPolicy] = {
    "default": ModelPolicy(),
    NAMED_MODEL: ModelPolicy(
        actions={
            "degraded": LevelActions(
                flags={"fraud-fallback": "rules", "fraud-v2": False, "fraud-threshold": 0.5}
            ),
            "critical": LevelActions(flags={"fraud-fallback": "human-review"}),
        }
    ),
}

T = TypeVar("T")


class _Provider:
    def __init__(self, actions: Actions, engine: Engine) -> None:
        self.actions, self.engine = actions, engine

    def health_problems(self) -> list[str]:
        return []

    def readiness_problems(self) -> list[str]:
        return []

    def status(self) -> dict[str, Any]:
        return {"models": self.engine.snapshot(), "actions": self.actions.status()}


@dataclass
class Served:
    """A real HttpServer with the operator API and the gate, on its own loop in a thread."""

    loop: asyncio.AbstractEventLoop
    server: HttpServer
    actions: Actions
    actuator: FlagActuator
    flags_path: Path
    port: int

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=20)

    def settle(self) -> None:
        """Wait for the actuator's queued writes (and their audit entries) to land."""
        self.run(wait_for(lambda: not self.actuator.pending(), timeout=10, what="flag writes"))

    def state(self) -> tuple[Any, ...]:
        """Everything an operator call may change."""

        async def read() -> tuple[Any, ...]:
            return (
                self.actuator.pins(),
                dict(self.actions.silenced_until),
                len(self.actions.audit.recent),
                self.actuator.pending(),
                self.flags_path.read_bytes(),
            )

        return self.run(read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hostile")
    flags_path = tmp / "flags.json"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="hostile-http", daemon=True)
    thread.start()

    async def build() -> Served:
        backend = FlagdFileBackend(flags_path)
        await backend.set(SERVICE_FLAG, True)
        await backend.set("fraud-v2", True)
        metrics = Metrics.create(CollectorRegistry())
        actuator = FlagActuator(backend, metrics)
        actions = Actions(
            metrics,
            AuditLog(tmp / "audit.jsonl"),
            policy_for=lambda model: POLICIES.get(model, POLICIES["default"]),
            actuator=actuator,
            dispatcher=AlertDispatcher([], metrics),
            operator_token=TOKEN + "\n",  # as a Kubernetes Secret often holds it
        )
        engine = Engine(actions.policy_for, max_models=100)
        assert engine.monitor(SEEN_MODEL, time.time()) is not None

        def routes(app: Any) -> None:
            add_gate_routes(app, engine)
            add_operator_routes(app, actions, engine=engine, policies=POLICIES)

        server = HttpServer(
            "127.0.0.1",
            0,
            metrics,
            _Provider(actions, engine),
            extra_routes=routes,
            # A format that asks for the header: it must still come out redacted.
            access_log_format='%a "%r" %s %{Authorization}i %{User-Agent}i',
        )
        await actions.start()
        await server.start()
        assert server.bound_port is not None
        return Served(loop, server, actions, actuator, flags_path, server.bound_port)

    served = asyncio.run_coroutine_threadsafe(build(), loop).result(timeout=20)
    try:
        yield served
    finally:
        served.run(served.server.stop())
        served.run(served.actions.stop(flush_timeout_s=2))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        """The answer's JSON error message; fails unless the body is strict JSON with one."""
        assert self.headers.get("content-type", "").startswith("application/json"), self
        data = json.loads(self.body, parse_constant=_refuse_constant)
        assert isinstance(data, dict), data
        message = data.get("error")
        assert isinstance(message, str) and message, data
        return message


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON constant {name}")


AUTH = (b"Authorization", b"Bearer " + TOKEN.encode())


def send(
    port: int,
    method: bytes,
    path: bytes,
    body: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    content_length: int | None = None,
    framing: bytes | None = None,
) -> Answer:
    """One HTTP/1.1 request of exactly these bytes; the answer once the server closes.

    ``framing``, when given, replaces the Content-Length header and the body: the raw bytes
    that end the header block and carry the body, as the test wants them (broken or not).
    """
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in [AUTH] if headers is None else headers:
        lines.append(name + b": " + value)
    if framing is not None:
        request = b"\r\n".join(lines) + b"\r\n" + framing
    elif body is not None or content_length is not None:
        lines.append(b"Content-Type: application/json")
        length = content_length if content_length is not None else len(body or b"")
        lines.append(b"Content-Length: " + str(length).encode())
        request = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
    else:
        request = b"\r\n".join(lines) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may answer (413) and close before reading all of it.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        # Read the head, then the body by its Content-Length: after refusing a body it does
        # not read, aiohttp keeps the connection open a while (lingering close).
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in raw and (chunk := sock.recv(65536)):
                raw += chunk
            head, _, payload = raw.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            parsed = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
            length = int(parsed["content-length"])
            while len(payload) < length and (chunk := sock.recv(65536)):
                payload += chunk
    assert raw, "no answer"
    return Answer(int(status_line.split()[1]), parsed, payload[:length])


# ----------------------------------------------------------------------------- the table

PIN, UNPIN = (b"PUT", b"/v1/flags/fraud-v2/pin"), (b"DELETE", b"/v1/flags/fraud-v2/pin")
SILENCE = (b"POST", f"/v1/models/{SEEN_MODEL}/silence".encode())
UNSILENCE = (b"DELETE", f"/v1/models/{SEEN_MODEL}/silence".encode())
ACK = (b"POST", f"/v1/models/{SEEN_MODEL}/ack".encode())
OPERATOR_ROUTES = {"pin": PIN, "unpin": UNPIN, "silence": SILENCE, "unsilence": UNSILENCE}
OPERATOR_ROUTES["ack"] = ACK
#: A valid body of each route, to which the hostile variants are the exceptions.
VALID_BODY: dict[str, bytes | None] = {
    "pin": b'{"value": false}',
    "unpin": None,
    "silence": b'{"duration": "1h"}',
    "unsilence": None,
    "ack": None,
}
ALLOWED_FIELDS = {"pin": {"value"}, "silence": {"duration"}}

#: Bodies no route accepts, whatever fields it takes.
MALFORMED_BODIES: dict[str, bytes] = {
    "invalid utf-8": b'{"value": "\xff\xfe"}',
    "invalid utf-8 lone continuation": b'{"duration": "\x80"}',
    "utf-8 encoded surrogate": b'{"value": "\xed\xa0\x80"}',
    "overlong utf-8": b'{"value": "\xc0\xaf"}',
    "not json": b"value=true",
    "truncated json": b'{"value": ',
    "single quotes": b"{'value': true}",
    "trailing garbage": b'{"value": true} x',
    "nul byte": b"\x00",
    "array": b"[]",
    "string": b'"value"',
    "number": b"1",
    "null": b"null",
    "nested 1000 arrays": b"[" * 1000 + b"]" * 1000,
    "nested 1500 objects": b'{"a":' * 1500 + b"1" + b"}" * 1500,
    "nested 5000 unclosed": b"[" * 5000,
    "NaN": b'{"value": NaN, "duration": NaN}',
    "Infinity": b'{"value": Infinity, "duration": Infinity}',
    "-Infinity": b'{"value": -Infinity, "duration": -Infinity}',
    "1e999": b'{"value": 1e999, "duration": 1e999}',
    "-1e999": b'{"value": -1e999, "duration": -1e999}',
    "5000-digit integer": b'{"value": ' + b"9" * 5000 + b', "duration": 1}',
    "duplicate field": b'{"value": true, "value": "rules", "duration": "1h", "duration": 1}',
    "unknown field": b'{"value": true, "duration": "1h", "by": "me"}',
}

#: Bodies well-formed as JSON but wrong for the route's fields.
WRONG_FIELDS: dict[str, dict[str, bytes]] = {
    "pin": {
        "no value": b"{}",
        "empty body": b"",
        "case of the field": b'{"Value": false}',
        "null": b'{"value": null}',
        "array": b'{"value": [true]}',
        "object": b'{"value": {"on": true}}',
        "string on a boolean flag": b'{"value": "rules"}',
        "number on a boolean flag": b'{"value": 0}',
        "empty string": b'{"value": ""}',
        "long string": b'{"value": "' + b"r" * 300 + b'"}',
        "control character": b'{"value": "ru\\u0000les"}',
        "integer past 2**53": b'{"value": 9007199254740993}',
    },
    "silence": {
        "boolean": b'{"duration": true}',
        "null": b'{"duration": null}',
        "array": b'{"duration": ["1h"]}',
        "negative": b'{"duration": -60}',
        "zero": b'{"duration": 0}',
        "zero string": b'{"duration": "0s"}',
        "1e308 seconds": b'{"duration": 1e308}',
        "8 days": b'{"duration": "8d"}',
        "just over 7 days": b'{"duration": 604801}',
        "not a duration": b'{"duration": "soon"}',
        "long digits": b'{"duration": "' + b"1" * 100 + b's"}',
        "a field of pin": b'{"value": true}',
    },
    "unpin": {"any field": b'{"value": true}', "empty object with garbage": b"{} {}"},
    "unsilence": {"any field": b'{"duration": "1h"}'},
    "ack": {"any field": b'{"note": "on it"}'},
}

#: Header-block endings and bodies whose framing is broken (``send(framing=...)``).
FRAMINGS: dict[str, bytes] = {
    "bad chunk size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "short chunk": b"Transfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n",
    "chunked, over the body maximum": b"Transfer-Encoding: chunked\r\n\r\n"
    + f"{MAX_REQUEST_BODY_BYTES + 10:x}".encode()
    + b"\r\n"
    + b" " * (MAX_REQUEST_BODY_BYTES + 10)
    + b"\r\n0\r\n\r\n",
    "two content lengths": b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "length and chunked": b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    "negative length": b"Content-Length: -2\r\n\r\n{}",
    "gzip that is not": b"Content-Encoding: gzip\r\nContent-Length: 5\r\n\r\n{}{}{",
    "deflate that is not": b"Content-Encoding: deflate\r\nContent-Length: 2\r\n\r\n{}",
    "header line over 8 KiB": b"X-Padding: " + b"p" * 9000 + b"\r\n\r\n",
}

#: Path segments that are no model id or flag name (as sent, percent-encoded or raw).
HOSTILE_SEGMENTS: dict[str, bytes] = {
    "very long": b"m" * (MAX_NAME_CHARS + 1),
    "very very long": b"m" * 6000,
    "nul": b"a%00b",
    "newline": b"a%0D%0Ab",
    "bidi override": b"a%E2%80%AEb",
    "invalid utf-8 escaped": b"%FF%FE",
    "raw non-ascii": b"\xc3\xa9t\xc3\xa9",
    "raw invalid utf-8": b"\xff",
}
#: Flag names that are refused whatever the model ids allow.
HOSTILE_FLAGS: dict[str, bytes] = {
    "dot-dot": b"..",
    "space": b"a%20b",
    "encoded slash": b"a%2Fb",
    "leading dash": b"-x",
    "semicolon": b"a;b",
    "unicode letter": b"caf%C3%A9",
}


@dataclass(frozen=True)
class Case:
    name: str
    method: bytes
    path: bytes
    body: bytes | None
    headers: list[tuple[bytes, bytes]] | None = None
    status: int | None = None  # None: any 4xx
    content_length: int | None = None
    framing: bytes | None = None


def cases() -> Iterator[Case]:
    for route, (method, path) in OPERATOR_ROUTES.items():
        for name, body in MALFORMED_BODIES.items():
            if route in ("unpin", "unsilence", "ack") and name == "unknown field":
                continue  # covered by WRONG_FIELDS with a field that is not in the body
            yield Case(f"{route}: {name}", method, path, body, status=400)
        for name, body in WRONG_FIELDS[route].items():
            yield Case(f"{route}: {name}", method, path, body, status=400)
        valid = VALID_BODY[route]
        # Bodies past the documented maximum: announced, and sent.
        yield Case(
            f"{route}: declared huge body",
            method,
            path,
            b"",
            status=413,
            content_length=MAX_REQUEST_BODY_BYTES + 1,
        )
        huge = b'{"value": "' + b"x" * (MAX_REQUEST_BODY_BYTES + 10) + b'"}'
        yield Case(f"{route}: huge body", method, path, huge, status=413)
        # Headers: missing, wrong, and the real token followed by hostile bytes.
        token = TOKEN.encode()
        for name, value in {
            "no scheme": token,
            "basic": b"Basic " + token,
            "empty": b"",
            "near miss": b"Bearer " + token[:-1] + b"X",
            "token + utf-8": b"Bearer " + token + "é".encode(),
            "token + latin-1 byte": b"Bearer " + token + b"\xe9",
            "token + invalid utf-8": b"Bearer " + token + b"\xff",
            "non-ascii token": "Bearer é".encode() * 20,
            "token + tab": b"Bearer " + token + b"\tx",
        }.items():
            yield Case(
                f"{route}: authorization {name}",
                method,
                path,
                valid,
                headers=[(b"Authorization", value)],
                status=401,
            )
        yield Case(
            f"{route}: two authorization headers",
            method,
            path,
            valid,
            headers=[AUTH, AUTH],
            status=401,
        )
        for name, suffix in {
            "nul": b"\x00",
            "bare cr": b"\rX-Evil: 1",
            "control byte": b"\x01",
            "del": b"\x7f",
        }.items():
            yield Case(
                f"{route}: authorization token + {name}",
                method,
                path,
                valid,
                headers=[(AUTH[0], AUTH[1] + suffix)],
                status=400,
            )
        yield Case(
            f"{route}: control byte in another header",
            method,
            path,
            valid,
            headers=[AUTH, (b"X-Request-Note", b"a\x00b")],
            status=400,
        )
        # Body framing aiohttp cannot read: chunked, lengths, encodings.
        for name, framing in FRAMINGS.items():
            status = 413 if "over the body maximum" in name else 400
            yield Case(f"{route}: {name}", method, path, None, status=status, framing=framing)
        # Path segments that are no name.
        prefix, _, suffix = path.partition(b"fraud-v2" if route in ("pin", "unpin") else b"ranker")
        for name, segment in HOSTILE_SEGMENTS.items():
            yield Case(f"{route}: path {name}", method, prefix + segment + suffix, valid)
        if route in ("pin", "unpin"):
            for name, segment in HOSTILE_FLAGS.items():
                yield Case(f"{route}: flag {name}", method, prefix + segment + suffix, valid)
    # Names that are well formed but unknown.
    yield Case("pin: flag nobody knows", *PIN[:1], b"/v1/flags/nobody-knows/pin", b'{"value": 1}')
    yield Case(
        "silence: model never seen nor named",
        b"POST",
        b"/v1/models/nobody/silence",
        b'{"duration": "1h"}',
        status=404,
    )
    yield Case("ack: model without incident", b"POST", b"/v1/models/nobody/ack", None, status=404)
    # The read-only routes and the gate: hostile paths, methods and headers.
    for name, segment in HOSTILE_SEGMENTS.items():
        for method in (b"GET", b"POST"):
            yield Case(
                f"gate {method.decode()}: path {name}",
                method,
                b"/v1/models/" + segment + b"/health",
                None,
            )
    for path in (b"/status", b"/healthz", b"/readyz", b"/metrics", b"/v1/models/ranker/health"):
        yield Case(f"{path.decode()}: wrong method", b"DELETE", path, None, status=405)
        yield Case(
            f"{path.decode()}: token + nul",
            b"GET",
            path,
            None,
            headers=[(AUTH[0], AUTH[1] + b"\x00")],
            status=400,
        )
    yield Case("unknown route", b"GET", b"/v1/nothing-here", None, status=404)
    yield Case("bad request line", b"GET /x", b"HTTP/9", None, status=400)


ALL_CASES = list(cases())


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_a_malformed_request_is_a_4xx_json_error_and_changes_nothing(
    served: Served, case: Case
) -> None:
    before = served.state()
    answer = send(
        served.port,
        case.method,
        case.path,
        case.body,
        case.headers,
        content_length=case.content_length,
        framing=case.framing,
    )
    if case.status is None:
        assert 400 <= answer.status < 500, (answer.status, answer.body[:300])
    else:
        assert answer.status == case.status, (answer.status, answer.body[:300])
    message = answer.error()
    assert TOKEN not in answer.body.decode("utf-8", "replace")
    assert len(message) < 400, message  # no echo of a huge input
    assert served.state() == before


def test_the_valid_requests_of_the_table_succeed_and_do_change_state(served: Served) -> None:
    """The table's requests differ from these only in what makes them hostile."""
    for route in ("pin", "silence", "unsilence", "unpin"):
        method, path = OPERATOR_ROUTES[route]
        before = served.state()
        answer = send(served.port, method, path, VALID_BODY[route])
        assert answer.status == 200, (route, answer.body)
        served.settle()
        assert served.state() != before, route
    # A non-ASCII byte in a header other than Authorization is obs-text (RFC 9110): accepted.
    answer = send(served.port, b"GET", b"/status", None, [(b"User-Agent", b"caf\xc3\xa9")])
    assert answer.status == 200


def test_a_pin_takes_only_finite_values_of_the_flags_type(served: Served) -> None:
    def pin(flag: str, body: bytes) -> Answer:
        return send(served.port, b"PUT", f"/v1/flags/{flag}/pin".encode(), body)

    # The policy sets fraud-fallback to strings, fraud-threshold to numbers, fraud-v2 to
    # booleans; the service's own flag is a boolean in the flagd file.
    for flag, good, bad in [
        ("fraud-fallback", b'"rules"', [b"true", b"1", b"0.5"]),
        ("fraud-threshold", b"0.25", [b'"0.25"', b"false"]),
        ("fraud-v2", b"true", [b'"rules"', b"1", b"0"]),
        (SERVICE_FLAG, b"false", [b'"rules"', b"1"]),
    ]:
        for value in bad:
            before = served.state()
            answer = pin(flag, b'{"value": ' + value + b"}")
            assert answer.status == 400, (flag, value, answer.body)
            assert "value" in answer.error()
            assert served.state() == before
        answer = pin(flag, b'{"value": ' + good + b"}")
        assert answer.status == 200, (flag, answer.body)
        assert served.actuator.pins()[flag] == json.loads(good)
        served.settle()
        assert send(served.port, b"DELETE", f"/v1/flags/{flag}/pin".encode()).status == 200
        served.settle()
    answer = pin("nobody-knows", b'{"value": true}')
    assert answer.status == 404 and "unknown" in answer.error()


def test_silences_are_bounded_in_duration_and_number(served: Served) -> None:
    def silence(model: str, duration: bytes) -> Answer:
        path = f"/v1/models/{model}/silence".encode()
        return send(served.port, b"POST", path, b'{"duration": ' + duration + b"}")

    answer = silence(NAMED_MODEL, b'"7d"')  # named in the policy, never seen: allowed
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["silenced_until"] <= time.time() + 7 * 86400 + 5
    assert silence(NAMED_MODEL, b'"168h"').status == 200
    assert silence(NAMED_MODEL, b'"169h"').status == 400
    assert silence("nobody", b'"1h"').status == 404

    # Fill up to the maximum with models already silenced (a restored checkpoint can hold
    # models this replica has not seen yet); one more is refused, a renewal is not.
    async def fill() -> None:
        far = time.time() + 3600
        for index in range(MAX_ACTIVE_SILENCES - len(served.actions.silenced_until)):
            served.actions.silenced_until[f"restored-{index}"] = far

    served.run(fill())
    try:
        before = served.state()
        answer = silence(SEEN_MODEL, b'"1h"')
        assert answer.status == 429, answer.body
        assert "silence" in answer.error()
        assert served.state() == before
        assert silence(NAMED_MODEL, b'"2h"').status == 200  # renewing an existing silence
    finally:

        async def clear() -> None:
            served.actions.silenced_until.clear()

        served.run(clear())


# ----------------------------------------------------------------------------- hypothesis

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _accepted_shape(route: str, body: bytes) -> bool:
    """Whether ``body`` is a strict JSON object of only the route's fields (maybe valid)."""
    if not body.strip():
        return route != "pin"
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return False
    if not isinstance(data, dict):
        return False
    return set(data) <= ALLOWED_FIELDS.get(route, set())


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(sorted(OPERATOR_ROUTES)),
    body=st.one_of(
        st.binary(max_size=200),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.text(max_size=10), JSON_VALUES, min_size=1).map(
            lambda v: json.dumps(v).encode()
        ),
    ),
)
def test_fuzzed_bodies_are_refused_with_a_json_error_and_change_nothing(
    served: Served, route: str, body: bytes
) -> None:
    assume(not _accepted_shape(route, body))
    method, path = OPERATOR_ROUTES[route]
    before = served.state()
    answer = send(served.port, method, path, body)
    assert answer.status == 400, (route, body, answer.status, answer.body)
    answer.error()
    assert served.state() == before


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=JSON_VALUES.filter(lambda v: not isinstance(v, str)))
def test_fuzzed_pin_values_of_the_wrong_kind_are_refused(served: Served, value: Any) -> None:
    # The policy sets fraud-fallback to strings only.
    before = served.state()
    body = json.dumps({"value": value}).encode()
    answer = send(served.port, b"PUT", b"/v1/flags/fraud-fallback/pin", body)
    assert answer.status == 400, (value, answer.body)
    assert "value" in answer.error()
    assert served.state() == before


# ----------------------------------------------------------------------------- logs


def test_the_token_reaches_no_log_record_whatever_follows_it(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the access log included
    token = TOKEN.encode()
    suffixes = [b"\x00", b"\x00\x01", b"\r", b"\rInjected: 1", b"\n", b"\xff", "é".encode()]
    suffixes += [b"\x7f", b" ", b"", b"\t\x00"]
    for suffix in suffixes:
        for method, path in [PIN, SILENCE, (b"GET", b"/status"), (b"GET", b"/nowhere")]:
            for header in (b"Authorization", b"authorization", b"X-Forwarded-Authorization"):
                answer = send(
                    served.port,
                    method,
                    path,
                    b'{"value": false}',
                    [(header, b"Bearer " + token + suffix)],
                )
                assert TOKEN not in answer.body.decode("utf-8", "replace"), (suffix, answer.body)
                assert answer.status < 500, (suffix, answer.status, answer.body)
    # The token alone in a header, a query string and a body, too.
    send(served.port, b"GET", b"/status?token=Bearer%20" + token, None, [(b"X-Token", token)])

    def drained() -> bool:
        return any(r.name == "aiohttp.access" for r in caplog.records)

    assert drained(), "the access log is on and was captured"
    records = list(caplog.records)
    assert any(r.name == "aiohttp.access" and "<redacted>" in r.getMessage() for r in records)
    assert any(r.name == "monitor.http.server" and "malformed" in r.getMessage() for r in records)
    text_formatter = logging.Formatter("%(name)s %(message)s")
    json_formatter = JsonFormatter()
    for record in records:
        rendered = [
            text_formatter.format(record),
            json_formatter.format(record),
            repr(record.__dict__),
        ]
        for text in rendered:
            assert TOKEN not in text, (record.name, text[:500])
    assert TOKEN not in caplog.text
