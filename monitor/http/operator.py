"""The operator API (pin a flag, silence a model, acknowledge) behind a bearer token.

Owns the validation of everything an operator request carries (the Authorization header, the
model id or flag name in the path, the JSON body and its values): a malformed request is a 4xx
``{"error": ...}`` naming the field, decided before any state (pins, silences, the flag
backend) is touched. The limits are the constants below; docs/operator-api.md states them.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from alerts.base import Alert
from monitor.actions.actions import ALERTNAME
from monitor.config.policy import ModelPolicy, parse_duration
from monitor.flags.base import FlagValue
from monitor.http.server import LOG_REDACTOR, MAX_REQUEST_BODY_BYTES

if TYPE_CHECKING:
    from monitor.actions.actions import Actions
    from monitor.engine.engine import Engine

__all__ = [
    "MAX_ACTIVE_SILENCES",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_NAME_CHARS",
    "MAX_PIN_INTEGER",
    "MAX_PIN_STRING_CHARS",
    "MAX_SILENCE_S",
    "Refused",
    "add_operator_routes",
    "check_model_id",
    "json_response",
    "policy_flag_kinds",
    "refusal",
]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Largest body the server reads (413 above it); operator bodies are a few dozen bytes.
MAX_BODY_BYTES = MAX_REQUEST_BODY_BYTES
#: Operator bodies are flat objects; deeper nesting is refused before the JSON is parsed.
MAX_JSON_DEPTH = 8
#: Longest model id or flag name accepted in a path.
MAX_NAME_CHARS = 200
#: A flag name: letters, digits and ``. _ : ~ -`` (safe in a flagd key and an Unleash URL).
_FLAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~-]*")
#: Longest string a flag can be pinned to.
MAX_PIN_STRING_CHARS = 256
#: Largest integer magnitude a flag can be pinned to: integers beyond 2**53 are not exact in
#: JSON readers that hold numbers as doubles (flagd's Go and JavaScript providers).
MAX_PIN_INTEGER = 2**53
#: Longest silence; a longer one is refused, not shortened.
MAX_SILENCE_S = 7 * 86400.0
#: Most models silenced at once; one more is a 429 until a silence ends.
MAX_ACTIVE_SILENCES = 1000
#: Longest wait for the flag backend's current value when checking a pin's type.
BACKEND_READ_TIMEOUT_S = 2.0
#: Longest duration string (``"1.5h"``, ``"90s"``): anything longer is not a duration.
_MAX_DURATION_CHARS = 32

_JSON_TYPE = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


class Refused(Exception):
    """A request refused with ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, default=str, allow_nan=False),
        status=status,
        content_type="application/json",
    )


def _shown(text: str, limit: int = 40) -> str:
    """``text`` for an error message: escaped, and cut when long (it may be hostile).

    >>> _shown("fraud"), _shown("a\\nb"), _shown("x" * 50)
    ("'fraud'", "'a\\\\nb'", "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (50 characters)")
    """
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def _json_type(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return _JSON_TYPE.get(type(value), type(value).__name__)


def _flag_kind(value: Any) -> str:
    """The JSON kind of a flag value: ``boolean``, ``string`` or ``number``."""
    return _json_type(value)


def _bad_character(text: str) -> int | None:
    """Index of the first control, format, surrogate, private or unassigned character."""
    for index, char in enumerate(text):
        if unicodedata.category(char).startswith("C"):
            return index
    return None


def check_model_id(model: str) -> str:
    if not model:
        raise Refused(400, "model: the model id is empty")
    if len(model) > MAX_NAME_CHARS:
        raise Refused(
            400, f"model: the id is {len(model)} characters, over the maximum of {MAX_NAME_CHARS}"
        )
    bad = _bad_character(model)
    if bad is not None:
        raise Refused(400, f"model: the id holds a control or invalid character at {bad}")
    return model


def _check_flag_name(flag: str) -> str:
    if len(flag) > MAX_NAME_CHARS:
        raise Refused(
            400, f"flag: the name is {len(flag)} characters, over the maximum of {MAX_NAME_CHARS}"
        )
    if not _FLAG_NAME.fullmatch(flag):
        raise Refused(
            400,
            f"flag: {_shown(flag)} is not a flag name (letters, digits and . _ : ~ -, "
            "starting with a letter or digit)",
        )
    return flag


def _too_deep(text: str, limit: int) -> bool:
    """Whether ``text`` nests arrays or objects deeper than ``limit`` (strings skipped).

    >>> _too_deep('{"a": [1, {"b": "[[[["}]}', 3), _too_deep("[" * 4 + "]" * 4, 3)
    (False, True)
    """
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


class _BadNumber:
    """A number the body holds that no flag or duration can be: kept while parsing, so the
    refusal names the field it is in."""

    __slots__ = ("text", "why")

    def __init__(self, text: str, why: str) -> None:
        self.text, self.why = text, why

    def __str__(self) -> str:
        return f"{_shown(self.text)} is {self.why}"


def _no_constant(name: str) -> _BadNumber:
    return _BadNumber(name, "not a JSON number (only finite numbers are)")


def _finite_float(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text, "out of range (not finite)")


def _bounded_int(text: str) -> int | _BadNumber:
    # Python refuses to parse integers over 4300 digits with a ValueError; refuse far earlier.
    if len(text.lstrip("-")) > 20:
        return _BadNumber(text, "an integer out of range")
    return int(text)


def _bad_number_in(value: Any) -> _BadNumber | None:
    """The first bad number in a parsed value (its depth is bounded by ``MAX_JSON_DEPTH``)."""
    if isinstance(value, _BadNumber):
        return value
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    for child in children:
        found = _bad_number_in(child)
        if found is not None:
            return found
    return None


def _field(key: str) -> str:
    """A field's name for an error message: itself when it is a plain name.

    >>> _field("value"), _field("a b")
    ('value', "'a b'")
    """
    return key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,39}", key) else _shown(key)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise Refused(400, f"body: field {_shown(key)} appears more than once")
        data[key] = value
    return data


def parse_body(raw: bytes, allowed: Collection[str]) -> dict[str, Any]:
    """The JSON object of an operator request's body, refused unless it is strict JSON.

    An empty body is ``{}``. Refused (400): not UTF-8, not JSON, NaN or Infinity, a number out
    of range, nesting deeper than ``MAX_JSON_DEPTH``, a repeated field, not an object, a field
    not in ``allowed``.

    >>> parse_body(b'{"value": true}', {"value"})
    {'value': True}
    >>> parse_body(b'{"value": NaN}', {"value"})
    Traceback (most recent call last):
    ...
    monitor.http.operator.Refused: value: 'NaN' is not a JSON number (only finite numbers are)
    """
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Refused(400, f"body: not UTF-8 (invalid byte at offset {err.start})") from err
    if _too_deep(text, MAX_JSON_DEPTH):
        raise Refused(400, f"body: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as err:
        raise Refused(
            400, f"body: not JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from err
    except (ValueError, RecursionError) as err:
        raise Refused(400, f"body: not JSON: {type(err).__name__}") from err
    if not isinstance(data, dict):
        bad = _bad_number_in(data)
        if bad is not None:
            raise Refused(400, f"body: {bad}")
        raise Refused(400, f"body: must be a JSON object, got {_json_type(data)}")
    for key, value in data.items():
        bad = _bad_number_in(value)
        if bad is not None:
            raise Refused(400, f"{_field(key)}: {bad}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        expected = ", ".join(sorted(allowed)) or "no fields"
        raise Refused(400, f"body: unknown field {_shown(unknown[0])} (expected {expected})")
    return data


async def _read_body(request: web.Request, allowed: Collection[str]) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise Refused(413, f"body: over the maximum of {MAX_BODY_BYTES} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise Refused(413, f"body: over the maximum of {MAX_BODY_BYTES} bytes") from err
    except (RequestPayloadError, HttpProcessingError) as err:
        # A broken chunked framing or content encoding: the bytes are not a body at all.
        cause = err.__cause__ if isinstance(err, RequestPayloadError) else err
        what = getattr(cause, "message", None) or type(cause).__name__
        reason = str(what).strip().splitlines()[0].rstrip(" :") if str(what).strip() else "?"
        raise Refused(400, f"body: cannot be read ({reason[:80]})") from err
    return parse_body(raw, allowed)


def _check_pin_value(data: Mapping[str, Any]) -> FlagValue:
    if "value" not in data:
        raise Refused(400, 'value: required, as in {"value": <boolean, string or number>}')
    value = data["value"]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_PIN_INTEGER:
            raise Refused(400, f"value: integers are limited to +/-2**53, got {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Refused(400, "value: must be a finite number")
        return value
    if isinstance(value, str):
        if not value:
            raise Refused(400, "value: an empty string is not a flag value")
        if len(value) > MAX_PIN_STRING_CHARS:
            raise Refused(
                400,
                f"value: the string is {len(value)} characters, over the maximum of "
                f"{MAX_PIN_STRING_CHARS}",
            )
        bad = _bad_character(value)
        if bad is not None:
            raise Refused(400, f"value: the string holds a control or invalid character at {bad}")
        return value
    raise Refused(400, f"value: must be a boolean, string or number, got {_json_type(value)}")


def _check_duration(data: Mapping[str, Any]) -> float:
    duration = data.get("duration", "1h")
    if isinstance(duration, bool) or not isinstance(duration, str | int | float):
        raise Refused(
            400,
            f"duration: expected a string such as 30m or 2h, or seconds, got "
            f"{_json_type(duration)}",
        )
    if isinstance(duration, str) and len(duration) > _MAX_DURATION_CHARS:
        raise Refused(400, f"duration: {_shown(duration)} is not a duration")
    try:
        seconds = parse_duration(duration)
    except ValueError as err:
        raise Refused(400, f"duration: {err}") from err
    if seconds <= 0:
        raise Refused(400, "duration: must be longer than zero")
    if seconds > MAX_SILENCE_S:
        raise Refused(
            400, f"duration: {seconds:g}s is over the maximum of {MAX_SILENCE_S:g}s (7 days)"
        )
    return seconds


def policy_flag_kinds(policies: Mapping[str, ModelPolicy]) -> dict[str, frozenset[str]]:
    """Per flag, the kinds of value (boolean, string, number) the policies set it to.

    >>> from monitor.config.policy import LevelActions
    >>> p = ModelPolicy(actions={"degraded": LevelActions(flags={"v": "rules", "on": False}),
    ...                          "critical": LevelActions(flags={"v": "off"})})
    >>> sorted((f, sorted(k)) for f, k in policy_flag_kinds({"default": p}).items())
    [('on', ['boolean']), ('v', ['string'])]
    """
    kinds: dict[str, set[str]] = {}
    for policy in policies.values():
        for actions in policy.actions.values():
            if actions is None:
                continue
            for flag, value in actions.flags.items():
                kinds.setdefault(flag, set()).add(_flag_kind(value))
    return {flag: frozenset(found) for flag, found in kinds.items()}


def refusal(err: Refused) -> web.Response:
    return json_response({"error": err.message}, err.status)


def _header_is_clean(value: str) -> bool:
    """Printable ASCII only: a token is ASCII (RFC 6750), anything else is not ours."""
    return value.isascii() and all(0x20 <= ord(char) < 0x7F for char in value)


def add_operator_routes(
    app: web.Application,
    actions: Actions,
    *,
    engine: Engine | None = None,
    policies: Mapping[str, ModelPolicy] | None = None,
) -> None:
    """Mount the operator API when a token is configured; otherwise it does not exist.

    ``engine`` (the models seen) and ``policies`` (the models named, and the flags they set
    with the kinds of value) bound what can be silenced and pinned: a silence needs a model
    seen or named, a pin a flag some policy sets or the backend holds, with a value of its kind.
    """
    token = actions.operator_token
    if not token:
        log.info("operator API off: no token configured")
        return
    redactor = app.get(LOG_REDACTOR)
    if redactor is not None:
        redactor.add_secret(token)
    # A token from a Kubernetes Secret often ends with a newline nobody sends back.
    expected = token.strip().encode("utf-8")
    named_models = frozenset(m for m in (policies or {}) if m != "default")
    flag_kinds = policy_flag_kinds(policies or {})

    def unauthorized(request: web.Request, why: str) -> web.Response:
        # Never log what was presented: it may be a near-miss of the real token.
        log.warning(
            "operator API: unauthorized %s %r from %s (%s)",
            request.method,
            request.path[:MAX_NAME_CHARS],
            request.remote,
            why,
        )
        response = json_response({"error": "unauthorized"}, 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="driftwarden"'
        return response

    def guarded(handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            presented_headers = request.headers.getall("Authorization", [])
            if not presented_headers:
                return unauthorized(request, "no Authorization header")
            if len(presented_headers) > 1:
                return unauthorized(request, "more than one Authorization header")
            header = presented_headers[0]
            if not _header_is_clean(header):
                return unauthorized(request, "Authorization header not printable ASCII")
            # The scheme is case-insensitive (RFC 7235); the token is compared in constant time.
            scheme, _, presented = header.partition(" ")
            matches = hmac.compare_digest(presented.strip().encode("ascii"), expected)
            if not matches or scheme.lower() != "bearer":
                return unauthorized(request, "wrong scheme or token")
            try:
                return await handler(request)
            except Refused as err:
                return refusal(err)

        return check

    def known_model(model: str) -> bool:
        return (
            model in named_models
            or model in actions.silenced_until
            or (engine is not None and model in engine.models)
        )

    async def pin(request: web.Request) -> web.Response:
        flag = _check_flag_name(request.match_info["flag"])
        value = _check_pin_value(await _read_body(request, {"value"}))
        actuator = actions.actuator
        if actuator is None:
            return json_response({"error": "no flag backend configured"}, 409)
        wanted = _flag_kind(value)
        policy_kinds = flag_kinds.get(flag, frozenset())
        held = await actuator.current(flag, timeout_s=BACKEND_READ_TIMEOUT_S)
        if not policy_kinds and held is None:
            raise Refused(
                404,
                f"flag: {_shown(flag)} is unknown: no policy sets it and the flag backend "
                "has no such flag",
            )
        if policy_kinds and wanted not in policy_kinds:
            raise Refused(
                400,
                f"value: flag {_shown(flag)} takes {'/'.join(sorted(policy_kinds))} values "
                f"(the policy sets it so), got a {wanted}",
            )
        if held is not None and _flag_kind(held) != wanted:
            raise Refused(
                400,
                f"value: flag {_shown(flag)} holds a {_flag_kind(held)} value in the flag "
                f"backend, got a {wanted}",
            )
        actuator.pin(flag, value, key=f"operator-pin:{flag}")
        actions.audit.write(
            {
                "kind": "flag_pinned",
                "at": actions.clock(),
                "flag": flag,
                "value": value,
                "by": "operator",
            }
        )
        return json_response({"flag": flag, "pinned": value})

    async def unpin(request: web.Request) -> web.Response:
        flag = _check_flag_name(request.match_info["flag"])
        await _read_body(request, ())
        if actions.actuator is None:
            return json_response({"error": "no flag backend configured"}, 409)
        actions.actuator.unpin(flag)
        actions.audit.write(
            {"kind": "flag_released", "at": actions.clock(), "flag": flag, "by": "operator"}
        )
        return json_response({"flag": flag, "pinned": None})

    async def silence(request: web.Request) -> web.Response:
        model = check_model_id(request.match_info["model"])
        seconds = _check_duration(await _read_body(request, {"duration"}))
        if not known_model(model):
            raise Refused(
                404, f"model: {_shown(model)} is unknown: no events seen and no policy names it"
            )
        now = actions.clock()
        active = sum(1 for until in actions.silenced_until.values() if until > now)
        if model not in actions.silenced_until and active >= MAX_ACTIVE_SILENCES:
            raise Refused(
                429, f"silences: {active} models are silenced, the maximum is {MAX_ACTIVE_SILENCES}"
            )
        until = now + seconds
        actions.silenced_until[model] = until
        actions.audit.write(
            {
                "kind": "silenced",
                "at": now,
                "model": model,
                "until": until,
                "by": "operator",
            }
        )
        return json_response({"model": model, "silenced_until": until})

    async def unsilence(request: web.Request) -> web.Response:
        model = check_model_id(request.match_info["model"])
        await _read_body(request, ())
        if not known_model(model):
            raise Refused(
                404, f"model: {_shown(model)} is unknown: no events seen and no policy names it"
            )
        actions.silenced_until.pop(model, None)
        actions.audit.write(
            {"kind": "unsilenced", "at": actions.clock(), "model": model, "by": "operator"}
        )
        return json_response({"model": model, "silenced_until": None})

    async def acknowledge(request: web.Request) -> web.Response:
        model = check_model_id(request.match_info["model"])
        await _read_body(request, ())
        if actions.dispatcher is None:
            return json_response({"error": "no alert sinks configured"}, 409)
        probe = Alert(
            model=model,
            alertname=ALERTNAME,
            severity="info",
            state="",
            signals=(),
            summary="",
            description="",
            runbook_url="",
            starts_at=datetime.now(UTC),
        )
        if not actions.dispatcher.acknowledge(probe):
            return json_response({"error": f"model: no active incident for {_shown(model)}"}, 404)
        actions.audit.write(
            {"kind": "acknowledged", "at": actions.clock(), "model": model, "by": "operator"}
        )
        return json_response({"model": model, "acknowledged": True})

    app.router.add_put("/v1/flags/{flag}/pin", guarded(pin))
    app.router.add_delete("/v1/flags/{flag}/pin", guarded(unpin))
    app.router.add_post("/v1/models/{model}/silence", guarded(silence))
    app.router.add_delete("/v1/models/{model}/silence", guarded(unsilence))
    app.router.add_post("/v1/models/{model}/ack", guarded(acknowledge))
