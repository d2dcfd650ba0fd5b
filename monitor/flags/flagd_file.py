"""The flagd file backend: driftwarden's embedded default flag store.

Owns one flagd flag-definition JSON file, rewritten atomically, that any OpenFeature flagd
provider in file mode reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from monitor.errors import FlagBackendError
from monitor.flags.base import FlagValue

__all__ = ["FLAGD_SCHEMA", "FlagdFileBackend", "variant_name"]

log = logging.getLogger(__name__)

FLAGD_SCHEMA = "https://flagd.dev/schema/v0/flags.json"


def variant_name(value: FlagValue) -> str:
    """The flagd variant that holds ``value``.

    Booleans use flagd's conventional ``on``/``off``; other values a variant named after them.

    >>> variant_name(True), variant_name(False), variant_name("rules"), variant_name(0.5)
    ('on', 'off', 'rules', '0.5')
    """
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "object"


class FlagdFileBackend:
    """Sets flags by rewriting the ``defaultVariant`` of a flagd flag-definition file.

    Flags and variants the service defined are kept untouched; a missing flag or variant is
    added. Every write goes to a temporary file in the same directory, is fsynced and then
    renamed over the target, so a reader sees the old file or the new one, never a part.

    Parameters
    ----------
    path
        The flagd JSON file; created (with its directory) when missing.
    name
        The backend's name in metrics and logs.

    Examples
    --------
    >>> import asyncio, json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "flags.json"
    >>> backend = FlagdFileBackend(path)
    >>> asyncio.run(backend.set("fraud-fallback", True))
    >>> json.loads(path.read_text())["flags"]["fraud-fallback"]["defaultVariant"]
    'on'
    >>> asyncio.run(backend.get("fraud-fallback"))
    True
    """

    def __init__(self, path: str | os.PathLike[str], *, name: str = "flagd_file") -> None:
        self.path = Path(path)
        self.name = name
        # One writer at a time: two concurrent read-modify-write cycles would lose an update.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def __aenter__(self) -> FlagdFileBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def get(self, flag: str) -> FlagValue | None:
        document = await asyncio.to_thread(self._read)
        definition = document["flags"].get(flag)
        if not isinstance(definition, dict):
            return None
        variants = definition.get("variants")
        default = definition.get("defaultVariant")
        if not isinstance(variants, dict) or default not in variants:
            return None
        value = variants[default]
        if isinstance(value, bool | str | int | float):
            return value
        # An object variant is a service's own configuration, not a value driftwarden sets.
        return None

    async def set(self, flag: str, value: FlagValue) -> None:
        async with self._lock:
            changed = await asyncio.to_thread(self._update, flag, value)
        if changed:
            log.info("flagd file %s: flag %s set to %r", self.path, flag, value)

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"$schema": FLAGD_SCHEMA, "flags": {}}
        except OSError as err:
            raise FlagBackendError(f"cannot read flagd file {self.path}: {err}") from err
        try:
            document = json.loads(text)
        except json.JSONDecodeError as err:
            # Overwriting a file we cannot parse would destroy the service's flags.
            raise FlagBackendError(
                f"flagd file {self.path} is not valid JSON: {err}", retriable=False
            ) from err
        if not isinstance(document, dict) or not isinstance(document.get("flags", {}), dict):
            raise FlagBackendError(f"flagd file {self.path} has no 'flags' object", retriable=False)
        document.setdefault("flags", {})
        return document

    def _update(self, flag: str, value: FlagValue) -> bool:
        document = self._read()
        flags: dict[str, Any] = document["flags"]
        existing = flags.get(flag)
        definition: dict[str, Any]
        if isinstance(existing, dict):
            definition = existing
        else:
            definition = {"state": "ENABLED", "variants": {}, "defaultVariant": None}
            if isinstance(value, bool):
                definition["variants"] = {"on": True, "off": False}
        variants = definition.setdefault("variants", {})
        if not isinstance(variants, dict):
            raise FlagBackendError(
                f"flagd file {self.path}: flag {flag!r} has variants {variants!r}, "
                "expected an object",
                retriable=False,
            )
        kinds = {_kind(v) for v in variants.values()}
        if kinds and kinds != {_kind(value)}:
            # flagd requires one variant type per flag; a mixed flag fails the whole file.
            raise FlagBackendError(
                f"flagd file {self.path}: flag {flag!r} has {'/'.join(sorted(kinds))} "
                f"variants and cannot hold {value!r}",
                retriable=False,
            )
        wanted = self._variant_for(variants, value)
        current = variants.get(wanted)
        if (
            existing is definition
            and type(current) is type(value)
            and current == value
            and definition.get("defaultVariant") == wanted
            and definition.get("state") == "ENABLED"
        ):
            return False
        variants[wanted] = value
        definition["defaultVariant"] = wanted
        # A DISABLED flag makes providers return the caller's default, not our variant.
        definition["state"] = "ENABLED"
        flags[flag] = definition
        document.setdefault("$schema", FLAGD_SCHEMA)
        self._write(document)
        return True

    @staticmethod
    def _variant_for(variants: dict[str, Any], value: FlagValue) -> str:
        # Reuse a variant the service already defined with this exact value and type.
        for key, existing in variants.items():
            if type(existing) is type(value) and existing == value:
                return str(key)
        name = variant_name(value)
        # The service's variant of that name holds another value: never redefine it.
        return f"driftwarden-{name}" if name in variants else name

    def _write(self, document: dict[str, Any]) -> None:
        data = json.dumps(document, indent=2, sort_keys=False).encode("utf-8") + b"\n"
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        except OSError as err:
            raise FlagBackendError(f"cannot write flagd file {self.path}: {err}") from err
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            # mkstemp creates 0600; readers (another container's provider) need to read it.
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, self.path)
            self._fsync_dir(directory)
        except OSError as err:
            Path(tmp_name).unlink(missing_ok=True)
            raise FlagBackendError(f"cannot write flagd file {self.path}: {err}") from err

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        # The rename is durable only once the directory entry is on disk.
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
