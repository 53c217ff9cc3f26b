"""YAML loading that remembers where each key was, so errors can point at a line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hil.core import ConfigError

KeyPath = tuple[str | int, ...]


@dataclass
class YamlDocument:
    """Parsed YAML data plus the line (1-based) of every mapping key and sequence item."""

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def where(self, loc: KeyPath) -> str:
        """`file:line` for the deepest known prefix of `loc`."""
        for n in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:n]))
            if line is not None:
                return f"{self.path}:{line}"
        return str(self.path)


def _walk(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                dotted = ".".join(str(p) for p in (*prefix, key))
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: key {dotted!r} appears twice; "
                    "keep one of them"
                )
            seen.add(key)
            lines[(*prefix, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*prefix, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*prefix, i)] = item.start_mark.line + 1
            _walk(item, (*prefix, i), lines, path)


def load_yaml(path: Path) -> YamlDocument:
    """Read a YAML file; a missing file or a syntax error becomes a ConfigError naming the spot."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; check the path") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark:
            problem += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{where}: invalid YAML: {problem}; fix the syntax there") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, path)
    return YamlDocument(path=path, data=data, lines=lines)
