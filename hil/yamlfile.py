"""YAML loading that remembers where each key was, so errors can point at a line, and that is
safe on any input: a config file is read only if it is a regular UTF-8 text file of at most
`TEXT_LIMIT` bytes; nesting deeper than `MAX_DEPTH`, more than `MAX_NODES` nodes once aliases are
expanded (an alias bomb), recursive aliases, non-finite numbers and numbers beyond
`MAX_NUMBER` / `MAX_INT` are refused with a one-line error naming file and line.

Floats follow YAML 1.2 as well as 1.1: `1e-3` and `1e8` are numbers (PyYAML alone reads them as
strings, which strict validation would then refuse).
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError

from hil.core import ConfigError
from hil.core.paths import TEXT_LIMIT, read_regular_file

KeyPath = tuple[str | int, ...]

MAX_DEPTH = 64
"""Deepest nesting of mappings and sequences (configs use fewer than 10 levels)."""

MAX_NODES = 200_000
"""Most YAML nodes in a document, each alias counted as the whole node it repeats."""

MAX_NUMBER = 1e15
"""Largest |float| in a config file; settings have their own, tighter bounds."""

MAX_INT = 2**63 - 1
"""Largest |int| in a config file (it must fit a 64-bit integer)."""

# Characters YAML does not allow in a stream (PyYAML's reader rejects them); their presence
# means the file is binary or in another encoding (UTF-16 without a byte-order mark has NULs).
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")

_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


@dataclass
class YamlDocument:
    """Parsed YAML data plus the line (1-based) of every mapping key and sequence item.

    `strict`: the data come from a file a person wrote (`load_yaml`), so types are checked
    strictly (no bool or string for a number, no float for an int). False for records the program
    wrote itself (run.json), whose values were checked when written and whose non-finite floats
    are stored as the strings 'inf', '-inf' and 'nan'.
    """

    path: Path
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)
    strict: bool = False

    def where(self, loc: KeyPath) -> str:
        """`file:line` for the deepest known prefix of `loc` (a mapping key that is not a
        string, such as `1:`, is found as written)."""
        written: list[str | int] = []
        line = None
        for part in loc:
            for candidate in (part, str(part)):
                found = self.lines.get((*written, candidate))
                if found is not None:
                    break
            else:
                break
            written.append(candidate)
            line = found
        return f"{self.path}:{line}" if line is not None else str(self.path)


def dotted(loc: KeyPath) -> str:
    """A key path as written in messages: `estimator.amplitudes[2]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def one_line(message: str) -> str:
    """A message with its line breaks and runs of spaces folded, for one-line errors."""
    return " ".join(message.split())


def _composer_error(problem: str, mark: Any) -> ComposerError:
    return ComposerError(None, None, problem, mark)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that bounds nesting depth and alias expansion and refuses recursive aliases."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._expanded = 0  # nodes so far, each alias counted at its target's size
        self._open: set[str] = set()  # anchors whose node is still being composed
        self._sizes: dict[int, int] = {}  # id(anchored node) -> its expanded size

    def _grow(self, n: int, mark: Any) -> None:
        self._expanded += n
        if self._expanded > MAX_NODES:
            raise _composer_error(
                f"the document expands to more than {MAX_NODES} nodes (aliases repeat whole "
                "nodes; an alias bomb?); write a smaller file",
                mark,
            )

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _composer_error(
                    f"alias *{event.anchor} refers to a node that contains it (a recursive "
                    "alias); configs must be trees",
                    event.start_mark,
                )
            target = super().compose_node(parent, index)
            self._grow(self._sizes.get(id(target), 1), event.start_mark)
            return target
        if self._depth >= MAX_DEPTH:
            raise _composer_error(
                f"nested more than {MAX_DEPTH} levels deep; flatten the structure",
                event.start_mark,
            )
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        self._depth += 1
        before = self._expanded
        self._grow(1, event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)
        if anchor is not None:
            self._sizes[id(node)] = self._expanded - before
        return node


_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789")
)


def _walk(node: yaml.Node, prefix: KeyPath, lines: dict[KeyPath, int], path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                raise ConfigError(
                    f"{path}:{key_node.start_mark.line + 1}: key "
                    f"{dotted((*prefix, key))!r} appears twice; keep one of them"
                )
            seen.add(key)
            lines[(*prefix, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*prefix, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*prefix, i)] = item.start_mark.line + 1
            _walk(item, (*prefix, i), lines, path)


_NOT_CONFIG_VALUES: dict[type, str] = {
    datetime.date: "a date",
    datetime.datetime: "a timestamp",
    bytes: "binary data",
    set: "a set",
}


def _value_problem(value: Any) -> str | None:
    """What is wrong with a scalar value in any config, or None."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            return (
                f"an integer of {value.bit_length()} bits is too large (limit ±{MAX_INT}); "
                "use a smaller one"
            )
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return (
                f"{value} is not a finite number; give a finite value (omit the key for its "
                "default)"
            )
        if abs(value) > MAX_NUMBER:
            return f"{value:g} is too large (limit ±{MAX_NUMBER:g}); use a smaller value"
        return None
    for kind, name in _NOT_CONFIG_VALUES.items():
        if isinstance(value, kind):
            return f"{name} is not a config value; quote it if it is meant as text"
    return f"a {type(value).__name__} is not a config value"


def _check_values(doc: YamlDocument) -> None:
    """Every scalar a plain config value and every number finite and within bounds."""
    stack: list[tuple[KeyPath, Any]] = [((), doc.data)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(((*loc, k if isinstance(k, int) else str(k)), v) for k, v in value.items())
            for key in value:
                problem = _value_problem(key)
                if problem is not None:
                    raise ConfigError(f"{doc.where(loc)}: {dotted(loc)}: key {problem}")
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in enumerate(value))
        else:
            problem = _value_problem(value)
            if problem is not None:
                raise ConfigError(f"{doc.where(loc)}: {dotted(loc)}: {problem}", key=loc)


_NOT_UTF8 = "not UTF-8 text (binary, or another encoding such as UTF-16); save it as UTF-8"


def _decode(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {_NOT_UTF8}") from None
    bad = _NOT_TEXT.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(f"{path}:{line}: {_NOT_UTF8}")
    return text


def load_yaml(path: Path, *, what: str = "config file") -> YamlDocument:
    """Read a YAML config file; every problem becomes a one-line ConfigError naming the spot."""
    text = _decode(path, read_regular_file(path, limit=TEXT_LIMIT, what=what))
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and exc.context_mark:
            problem += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        if ";" not in problem:  # the loader's own messages already say what to do
            problem += "; fix the syntax there"
        raise ConfigError(one_line(f"{where}: invalid YAML: {problem}")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(one_line(f"{path}: invalid YAML: {exc}")) from None
    except ValueError:  # an integer literal beyond Python's digit limit
        raise ConfigError(
            f"{path}: a number literal is too long to read (thousands of digits); "
            "use a smaller number"
        ) from None
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, path)
    doc = YamlDocument(path=path, data=data, lines=lines, strict=True)
    _check_values(doc)
    return doc
