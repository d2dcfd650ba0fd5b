"""Detector state to and from bytes (the serialisation behind ``to_bytes``, for checkpoints).

State is msgpack; numpy arrays travel as raw bytes and River objects as pickles that only
River, numpy and a few container classes may be loaded from.
"""

from __future__ import annotations

import io
import logging
import pickle
from typing import Any

import msgspec
import numpy as np

__all__ = ["StateError", "pack", "unpack"]

log = logging.getLogger(__name__)

_ND = "__nd__"
_PICKLE = "__river__"

# A checkpoint topic is shared infrastructure: a crafted record must not run arbitrary code,
# so unpickling is limited to the classes River detectors are made of.
_SAFE_MODULE_PREFIXES = ("river.", "numpy.", "numpy")
_SAFE_BUILTINS = frozenset(
    {
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "float",
        "int",
        "complex",
        "bool",
        "str",
        "bytes",
        "bytearray",
        "slice",
        "range",
        "object",
        "getattr",
    }
)
_SAFE_CLASSES = {
    ("collections", "deque"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("collections", "Counter"),
    ("copyreg", "_reconstructor"),
    ("functools", "partial"),
    ("random", "Random"),
    ("_random", "Random"),
}


class StateError(ValueError):
    """The bytes are not a detector state this version can restore."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _SAFE_CLASSES or module.startswith(_SAFE_MODULE_PREFIXES):
            return super().find_class(module, name)
        raise StateError(f"refusing to restore {module}.{name} from a detector checkpoint")


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {_ND: [obj.dtype.str, list(obj.shape), obj.tobytes()]}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
    if type(obj).__module__.startswith("river."):
        return {_PICKLE: pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)}
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and _ND in obj:
            dtype, shape, raw = obj[_ND]
            return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
        if len(obj) == 1 and _PICKLE in obj:
            return _RestrictedUnpickler(io.BytesIO(obj[_PICKLE])).load()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def pack(state: dict[str, Any]) -> bytes:
    """Encode a state dict of plain values, numpy arrays and River objects.

    >>> unpack(pack({"a": np.arange(3), "b": [1, "x"]}))["a"].tolist()
    [0, 1, 2]
    """
    return msgspec.msgpack.encode(_encode(state))


def unpack(data: bytes) -> dict[str, Any]:
    """Decode bytes made by :func:`pack`."""
    try:
        raw = msgspec.msgpack.decode(data)
    except msgspec.DecodeError as err:
        raise StateError(f"not a detector state ({len(data)} bytes): {err}") from err
    if not isinstance(raw, dict):
        raise StateError(f"not a detector state: top level is {type(raw).__name__}")
    try:
        decoded: dict[str, Any] = _decode(raw)
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as err:
        if isinstance(err, StateError):
            raise
        raise StateError(f"corrupt detector state: {err}") from err
    return decoded
