"""How a bad configuration is explained: YAML loaded with the line of every field, pydantic
errors turned into ``WHERE: field.path: what was expected`` lines with "did you mean" hints.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from monitor.errors import ConfigError

__all__ = [
    "LoadedYaml",
    "field_path",
    "format_validation_error",
    "load_yaml_with_lines",
]

#: A path into the loaded data: mapping keys and list indexes.
Path = tuple[str | int, ...]


@dataclass
class LoadedYaml:
    """The data of a YAML file and the 1-based line where each field path starts."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its closest ancestor present in the file."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def load_yaml_with_lines(text: str, source: str) -> LoadedYaml:
    """Parse ``text`` like ``yaml.safe_load`` and record where each field starts.

    Raises ConfigError (naming ``source`` and the line) on a YAML syntax error.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([f"{source}: {where}not valid YAML: {problem}"]) from err
    finally:
        loader.dispose()
    loaded = LoadedYaml(data)
    if node is not None:
        _record_lines(node, (), loaded.lines)
    return loaded


def _record_lines(node: yaml.Node, path: Path, lines: dict[Path, int]) -> None:
    # Construction has already flattened merge keys (``<<: *anchor``) into node.value.
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key_path = (*path, str(key_node.value))
            lines.setdefault(key_path, key_node.start_mark.line + 1)
            _record_lines(value_node, key_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            item_path = (*path, index)
            lines.setdefault(item_path, item.start_mark.line + 1)
            _record_lines(item, item_path, lines)


# ----------------------------------------------------------------- field paths


def _data_path(loc: tuple[int | str, ...], data: Any) -> tuple[Path, bool]:
    """The path into the file's data of a pydantic error location, and whether the error is
    about a mapping key itself (``[key]`` in the location) rather than its value.

    Tagged unions put the tag (e.g. the detector ``type``) into the location and validators
    their own names; neither is a key of the file, so both are dropped by walking the data
    alongside.
    """
    path: list[str | int] = []
    node = data
    about_key = False
    for item in loc:
        if isinstance(item, int):
            path.append(item)
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if item == "[key]":
            about_key = True
            continue
        if isinstance(node, dict) and item not in node and node.get("type") == item:
            continue
        if item.startswith("function-") or item in ("str", "int", "float", "bool"):
            continue
        if isinstance(node, dict) and item not in node and _is_model_name(item):
            continue
        path.append(item)
        node = node.get(item) if isinstance(node, dict) else None
    return tuple(path), about_key


def _is_model_name(item: str) -> bool:
    # Untagged unions of models name the member class (``ConsoleSpec``) in the location.
    return item[:1].isupper() and item.isidentifier()


def field_path(path: Path) -> str:
    """``models.fraud.signals[2].threshold`` from a path into the data."""
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else ("." if text else "") + item
    return text or "<root>"


# ----------------------------------------------------------------- "did you mean"


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional, Annotated and unions removed)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        members: list[Any] = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                members.extend(_unwrap(arg))
        return members
    return [annotation]


def _field_names(model: type[BaseModel]) -> dict[str, Any]:
    """Every name a field of ``model`` may be given in a file (its name and alias)."""
    names: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        names[name] = info.annotation
        if info.alias:
            names[info.alias] = info.annotation
    return names


def _tag_of(model: type[BaseModel]) -> str | None:
    info = model.model_fields.get("type")
    if info is None:
        return None
    args = typing.get_args(info.annotation)
    return str(args[0]) if typing.get_origin(info.annotation) is typing.Literal and args else None


def _resolve(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[Any]:
    """The types that may sit at ``loc`` (a pydantic location), walking from ``root``."""
    current: list[Any] = [root]
    for item in loc:
        following: list[Any] = []
        for annotation in current:
            for kind in _unwrap(annotation):
                following.extend(_step(kind, item))
        if not following:
            return []
        current = following
    return [kind for annotation in current for kind in _unwrap(annotation)]


def _step(kind: Any, item: int | str) -> list[Any]:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        if isinstance(item, str):
            if item == _tag_of(kind) or item == kind.__name__:
                return [kind]  # the location names the union member, not a field
            annotation = _field_names(kind).get(item)
            return [] if annotation is None else [annotation]
        return []
    if origin in (list, tuple) and isinstance(item, int) and args:
        return [args[0]]
    if origin is dict and isinstance(item, str) and len(args) == 2:
        return [kind] if item == "[key]" else [args[1]]
    return []


def _suggest(word: Any, choices: list[str]) -> str:
    if not isinstance(word, str) or not choices:
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _quoted(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected)


# ----------------------------------------------------------------- error lines


def environment_paths(environ: Mapping[str, str], prefix: str) -> dict[Path, str]:
    """Field paths set from the environment (``DRIFTWARDEN_HTTP__PORT`` -> ``http.port``)."""
    paths: dict[Path, str] = {}
    for name in environ:
        if name.upper().startswith(prefix):
            rest = name[len(prefix) :].lower()
            if rest:
                paths[tuple(rest.split("__"))] = name
    return paths


def format_validation_error(
    source: str,
    err: ValidationError,
    loaded: LoadedYaml,
    *,
    root: type[BaseModel] | None = None,
    env_prefix: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """One line per problem: ``WHERE: field.path: what was expected (got VALUE)``.

    WHERE is ``FILE:LINE`` for a value from the file and ``environment VARIABLE`` for one
    set from the environment (which wins over the file).
    """
    from_env = environment_paths(os.environ if environ is None else environ, env_prefix or "")
    lines = []
    for problem in err.errors(include_url=False):
        loc = tuple(problem["loc"])
        path, about_key = _data_path(loc, loaded.data)
        variable = _variable_of(path, from_env) if env_prefix else None
        message = problem["msg"].removeprefix("Value error, ")
        got = problem.get("input")
        ctx = problem.get("ctx") or {}
        kind = problem["type"]
        hint = ""
        if kind == "extra_forbidden":
            message = "unknown field (check its spelling and indentation)"
            if root is not None and path:
                names = {
                    name
                    for parent in _resolve(root, loc[:-1])
                    if isinstance(parent, type) and issubclass(parent, BaseModel)
                    for name in _field_names(parent)
                }
                hint = _suggest(str(path[-1]), sorted(names))
        elif kind == "missing":
            message = "required field is missing"
        elif kind in ("literal_error", "enum") and "expected" in ctx:
            hint = _suggest(got, _quoted(str(ctx["expected"])))
        elif kind == "union_tag_invalid" and "expected_tags" in ctx:
            hint = _suggest(ctx.get("tag"), _quoted(str(ctx["expected_tags"])))
        if about_key:
            message = f"{got!r} is not a valid key: {message}"
        suffix = ""
        if (
            not about_key
            and kind not in ("missing", "extra_forbidden")
            and not isinstance(got, dict | list)
            and "got " not in message
        ):
            suffix = f" (got {got!r})"
        if variable is not None:
            where = f"environment {variable}"
        else:
            line = loaded.line_of(path)
            where = source if line is None else f"{source}:{line}"
        lines.append(f"{where}: {field_path(path)}: {message}{suffix}{hint}")
    return lines


def _variable_of(path: Path, from_env: dict[Path, str]) -> str | None:
    keys = tuple(str(item) for item in path)
    for env_path, variable in from_env.items():
        if keys[: len(env_path)] == env_path:
            return variable
    return None
