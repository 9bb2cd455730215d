"""Strict YAML files: parse, interpolate `${VAR}` / `${VAR:-default}`, validate into a pydantic
model, and report any problem with the file, the line and the key path.

Used for config.yaml (proxy) and policies/*.yaml (guard_engine); it lives here because
guard_engine never imports proxy.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from guard_engine.errors import ConfigFileError

M = TypeVar("M", bound=BaseModel)
KeyPath = tuple[str | int, ...]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str], *, path: str, line: int | None, key: str) -> str:
    """Replace `${VAR}` and `${VAR:-default}`; an unset variable without default is an error."""

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigFileError(
                    path, f"environment variable {name} is not set", line=line, key=key
                )
            return default
        return value

    return _VAR.sub(repl, text)


def _dotted(keys: KeyPath) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


def _scalar(node: yaml.Node) -> Any:
    """A scalar node's value, resolved by YAML's safe rules (ints, bools, nulls, strings)."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _construct(
    node: yaml.Node,
    keys: KeyPath,
    lines: dict[KeyPath, int],
    env: Mapping[str, str] | None,
    path: str,
) -> Any:
    """Turn a composed YAML node into Python data, remembering where every key stood."""
    lines[keys] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(_scalar(key_node))
            child = (*keys, key)
            if key in out:
                raise ConfigFileError(
                    path, "duplicate key", line=key_node.start_mark.line + 1, key=_dotted(child)
                )
            out[key] = _construct(value_node, child, lines, env, path)
            lines[child] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*keys, i), lines, env, path) for i, v in enumerate(node.value)]
    value = _scalar(node)
    if env is not None and isinstance(value, str) and "${" in value:
        text = interpolate(value, env, path=path, line=lines[keys], key=_dotted(keys))
        # Re-read interpolated scalars so that `port: ${PORT:-8080}` becomes an int.
        if text != value and getattr(node, "style", None) is None:
            loaded = yaml.safe_load(text) if text.strip() else ""
            return loaded if isinstance(loaded, (int, float, bool)) else text
        return text
    return value


def load_yaml_text(
    text: str, *, path: str, env: Mapping[str, str] | None = None
) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML text; returns the data and a map from key path to line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigFileError(path, f"invalid YAML: {problem}", line=line) from None
    lines: dict[KeyPath, int] = {}
    if node is None:
        return {}, lines
    return _construct(node, (), lines, env, path), lines


def validate(model: type[M], data: Any, *, path: str, lines: dict[KeyPath, int]) -> M:
    """Validate data into `model`; the first error is reported with its file, line and key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc: KeyPath = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
        line = _nearest_line(lines, loc)
        message = {
            "extra_forbidden": "unknown key",
            "missing": "is required",
        }.get(err["type"], err["msg"])
        raise ConfigFileError(path, message, line=line, key=_dotted(loc) or None) from None


def _nearest_line(lines: dict[KeyPath, int], loc: KeyPath) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def environ() -> Mapping[str, str]:
    """The process environment, as the default source of `${VAR}` values."""
    return os.environ
