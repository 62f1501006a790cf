"""Strict config sections, and YAML read into them; errors name the file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from device.common.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section that rejects unknown keys."""

    model_config = ConfigDict(extra="forbid")


def _resolve(node: yaml.Node | None, loc: tuple) -> tuple[int | None, tuple]:
    """Return (1-based line, display path) of the YAML node at `loc`.

    A part that names no key of the document and is not the last (a tagged union's tag) is left out
    of the path; a missing last part (a required key) is shown.
    """
    line = node.start_mark.line + 1 if node is not None else None
    shown: list = []
    for i, key in enumerate(loc):
        nxt = None
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
            if nxt is None:  # an unknown key: point at the key itself
                nxt = next((k for k, _ in node.value if getattr(k, "value", None) == key), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            nxt = node.value[key]
        if nxt is None:
            if i == len(loc) - 1 or not isinstance(key, str):
                shown.append(key)
            continue
        node = nxt
        shown.append(key)
        line = node.start_mark.line + 1
    return line, tuple(shown)


def format_validation_error(exc: ValidationError, source: str, root: yaml.Node | None) -> str:
    """Render each pydantic error as `file:line: key: message`."""
    lines = []
    for err in exc.errors():
        line, loc = _resolve(root, tuple(err["loc"]))
        key = ".".join(str(p) for p in loc) or "(top level)"
        where = f"{source}:{line}" if line else source
        msg = "unknown key (not allowed here)" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def load_yaml_model(model: type[M], path: str | Path | None, overrides: dict | None = None) -> M:
    """Validate the YAML file at `path` (defaults when None), with dotted-key overrides applied on top."""
    data: dict = {}
    root = None
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config file ({exc.strerror})") from None
        try:
            root = yaml.compose(text)
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}:1: the top level must be a mapping of keys")
    for dotted, value in (overrides or {}).items():
        target = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root)) from None
