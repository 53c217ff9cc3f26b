"""A strict SCPI parser, command tree and error queue: the instrument half of a virtual instrument.

A `ScpiDevice` executes one program message (one line) and returns its response or None. It is
as strict as a real instrument and never raises: a header it does not know, a malformed message or
a value it cannot take queues a standard SCPI error (read with `SYST:ERR?`) and produces no
response for that unit. Headers match short and long forms, case-insensitive, with optional
`[:NODE]`s; `;` separates units, and a unit without a leading colon continues the path of the
previous one (IEEE 488.2 / SCPI 1999 §6.2.4). Subclasses list their commands in `commands()` and
restore their power-on state in `reset()`.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ERROR_MESSAGES: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -200: "Execution error",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
    -410: "Query INTERRUPTED",
    -420: "Query UNTERMINATED",
}
"""Standard SCPI error codes (SCPI 1999 Vol. 2 §21.8) the servers emit."""

QUEUE_LENGTH = 10
"""Error-queue capacity; on overflow the newest entry becomes -350 Queue overflow."""

# *ESR bits (IEEE 488.2 §11.5.1) set by each error class.
ESR_OPC, ESR_QYE, ESR_DDE, ESR_EXE, ESR_CME = 1, 4, 8, 16, 32

_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_COMMON = re.compile(r":?\*[A-Za-z]+")
_PATTERN_NODE = re.compile(r"(\[)?:([A-Z]+)([a-z]*)(\])?")
_SPECIAL = {
    "MIN": "MIN",
    "MINIMUM": "MIN",
    "MAX": "MAX",
    "MAXIMUM": "MAX",
    "DEF": "DEF",
    "DEFAULT": "DEF",
}


class ScpiError(Exception):
    """A SCPI error to queue: a code from `ERROR_MESSAGES` (or a device code) and a detail."""

    def __init__(self, code: int, detail: str = "", message: str = "") -> None:
        self.code = code
        self.text = message or ERROR_MESSAGES.get(code, "Device-specific error")
        if detail:
            self.text += f"; {detail}"
        super().__init__(f'{code},"{self.text}"')

    def entry(self) -> str:
        """The error as `SYST:ERR?` answers it: `<code>,"<text>"`."""
        return f'{self.code},"{self.text}"'


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool

    def matches(self, token: str) -> bool:
        upper = token.upper()
        return upper in (self.short, self.long)


Reply = str | bytes
"""A response: text, or bytes where it carries an IEEE 488.2 binary block (sent byte for byte)."""
Setter = Callable[[Sequence[str]], None]
Getter = Callable[[Sequence[str]], Reply]


@dataclass
class Command:
    """One header of the tree, e.g. `:SOURce:VOLTage[:LEVel]`, with its set and query handlers.

    Upper-case letters of each node are its short form, the whole node its long form. A handler
    receives the parameters (split at commas, stripped, quotes kept) and raises `ScpiError`.
    """

    pattern: str
    write: Setter | None = None
    read: Getter | None = None
    nodes: tuple[_Node, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        nodes = []
        consumed = 0
        for m in _PATTERN_NODE.finditer(self.pattern):
            if m.start() != consumed or bool(m.group(1)) != bool(m.group(4)):
                raise ValueError(f"malformed SCPI pattern {self.pattern!r}")
            consumed = m.end()
            short = m.group(2)
            nodes.append(_Node(short, short + m.group(3).upper(), bool(m.group(1))))
        if consumed != len(self.pattern) or not nodes:
            raise ValueError(f"malformed SCPI pattern {self.pattern!r}")
        self.nodes = tuple(nodes)

    def matches(self, tokens: Sequence[str]) -> bool:
        """Whether a header (its colon-separated tokens) names this command."""
        return _match(self.nodes, tokens)


def _match(nodes: Sequence[_Node], tokens: Sequence[str]) -> bool:
    if not nodes:
        return not tokens
    head, rest = nodes[0], nodes[1:]
    if tokens and head.matches(tokens[0]) and _match(rest, tokens[1:]):
        return True
    return head.optional and _match(rest, tokens)


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split at `separator` except inside '…' or "…" strings; an open quote is a -102."""
    parts: list[str] = []
    quote = ""
    start = 0
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == separator:
            parts.append(text[start:i])
            start = i + 1
    if quote:
        raise ScpiError(-102, "unterminated string")
    parts.append(text[start:])
    return parts


# Parameter helpers for command handlers.


def no_args(args: Sequence[str]) -> None:
    """Refuse parameters on a command that takes none (-108)."""
    if args:
        raise ScpiError(-108)


def one_arg(args: Sequence[str]) -> str:
    """The single parameter of a command (-109 when missing, -108 when more)."""
    if not args or not args[0]:
        raise ScpiError(-109)
    if len(args) > 1:
        raise ScpiError(-108)
    return args[0]


def special(arg: str) -> str | None:
    """`MIN`, `MAX` or `DEF` when the parameter is one of them (any case, long forms too)."""
    return _SPECIAL.get(arg.upper())


def number(arg: str, low: float, high: float, specials: dict[str, float] | None = None) -> float:
    """A decimal numeric parameter in [low, high] (-222 outside, -104 not a number).

    `specials` maps `MIN`/`MAX`/`DEF` to values where the instrument takes them; elsewhere they
    are -224.
    """
    name = special(arg)
    if name is not None:
        if specials is None or name not in specials:
            raise ScpiError(-224, f"{arg} not allowed here")
        return specials[name]
    try:
        value = float(arg)
    except ValueError:
        raise ScpiError(-104, f"{arg!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ScpiError(-104, f"{arg!r} is not a finite number")
    if not low <= value <= high:
        raise ScpiError(-222, f"{value:g} outside [{low:g}, {high:g}]")
    return value


def boolean(arg: str) -> bool:
    """A SCPI boolean: ON, OFF, 1 or 0 (-224 otherwise)."""
    upper = arg.upper()
    if upper in ("ON", "1"):
        return True
    if upper in ("OFF", "0"):
        return False
    raise ScpiError(-224, f"{arg!r} is not ON, OFF, 1 or 0")


def mnemonic(arg: str, choices: Sequence[str]) -> str:
    """A character parameter matched against `choices` given as `VOLTage` (short and long form).

    Returns the short form of the choice; anything else is -224.
    """
    for choice in choices:
        node = Command(":" + choice).nodes[0]
        if node.matches(arg):
            return node.short
    raise ScpiError(-224, f"{arg!r} is not one of {', '.join(choices)}")


def string_arg(arg: str) -> str:
    """A quoted string parameter ('…' or "…"), unquoted (-104 when not quoted)."""
    if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "'\"":
        return arg[1:-1]
    raise ScpiError(-104, f"{arg!r} is not a quoted string")


def nr3(value: float) -> str:
    """A number as SCPI instruments answer it: `+1.000000E-04`."""
    return f"{value:+.6E}"


def _joined(replies: Sequence[Reply]) -> Reply | None:
    """The responses of one message, `;`-separated as IEEE 488.2 joins them; bytes if any is."""
    if not replies:
        return None
    texts = [r for r in replies if isinstance(r, str)]
    if len(texts) == len(replies):
        return ";".join(texts)
    return b";".join(r.encode("ascii", "replace") if isinstance(r, str) else r for r in replies)


class ScpiDevice:
    """The SCPI engine of one instrument: parser, common commands, error queue, status register.

    Thread-safe: one lock serialises every message, so several connections see one instrument.
    """

    idn = "HIL,VIRTUAL SCPI DEVICE,0,0"
    """The `*IDN?` answer: manufacturer, model, serial, firmware."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._errors: deque[ScpiError] = deque()
        self._esr = 0
        self._tree = [*self._system_commands(), *self.commands()]
        self._common: dict[str, Command] = {
            "*IDN": Command(":IDN", read=self._idn),
            "*RST": Command(":RST", write=self._rst),
            "*CLS": Command(":CLS", write=self._cls),
            "*OPC": Command(":OPC", write=self._opc, read=self._opc_query),
            "*ESR": Command(":ESR", read=self._esr_query),
            "*WAI": Command(":WAI", write=no_args),
        }

    # Subclass interface.

    def commands(self) -> list[Command]:
        """The instrument's own command tree (beyond the common and system commands)."""
        return []

    def reset(self) -> None:
        """Restore the `*RST` state (the error queue is left alone, as `*RST` does)."""

    # Engine.

    def execute(self, message: str) -> Reply | None:
        """Run one program message; return the response line (without terminator) or None.

        The responses of its units are joined by `;`: as text, or as bytes when one of them is
        a binary block (`ScpiServer` sends bytes unchanged)."""
        if not message.strip():
            return None  # an empty line is no message
        with self.lock:
            try:
                units = split_outside_quotes(message, ";")
            except ScpiError as error:
                self.push_error(error)
                return None
            replies: list[Reply] = []
            path: list[str] = []
            for i, unit in enumerate(units):
                text = unit.strip()
                if not text:
                    if i == len(units) - 1 and i > 0:
                        break  # a trailing ';' is tolerated
                    self.push_error(ScpiError(-102, "empty command"))
                    break
                try:
                    reply = self._unit(text, path)
                except ScpiError as error:
                    self.push_error(error)
                    break  # the rest of the message is discarded, as IEEE 488.2 parsers do
                if reply is not None:
                    replies.append(reply)
            return _joined(replies)

    def push_error(self, error: ScpiError) -> None:
        """Queue an error and set its *ESR bit."""
        code = error.code
        if -199 <= code <= -100:
            self._esr |= ESR_CME
        elif -299 <= code <= -200:
            self._esr |= ESR_EXE
        elif -499 <= code <= -400:
            self._esr |= ESR_QYE
        else:
            self._esr |= ESR_DDE
        if len(self._errors) >= QUEUE_LENGTH:
            self._errors[-1] = ScpiError(-350)
        else:
            self._errors.append(error)

    def _unit(self, text: str, path: list[str]) -> Reply | None:
        header, _, params = text.replace("\t", " ").partition(" ")
        params = params.strip()
        query = header.endswith("?")
        if query:
            header = header[:-1]
        args = [p.strip() for p in split_outside_quotes(params, ",")] if params else []
        if any(not a for a in args):
            raise ScpiError(-102, "empty parameter")
        if header.startswith((":*", "*")):
            if not _COMMON.fullmatch(header):
                raise ScpiError(-102, f"bad header {header!r}")
            command = self._common.get(header.lstrip(":").upper())
            if command is None:
                raise ScpiError(-113, header)
        else:
            absolute = header.startswith(":")
            tokens = (header[1:] if absolute else header).split(":")
            if not all(_TOKEN.fullmatch(t) for t in tokens):
                raise ScpiError(-102, f"bad header {header!r}")
            full = tokens if absolute or not path else [*path, *tokens]
            found = next((c for c in self._tree if c.matches(full)), None)
            if found is None:
                raise ScpiError(-113, header)
            command = found
            path[:] = full[:-1]
        if query:
            if command.read is None:
                raise ScpiError(-113, f"{header} has no query form")
            return command.read(args)
        if command.write is None:
            raise ScpiError(-113, f"{header} is a query only")
        command.write(args)
        return None

    def _system_commands(self) -> list[Command]:
        return [
            Command(":SYSTem:ERRor[:NEXT]", read=self._next_error),
            Command(":SYSTem:ERRor:COUNt", read=self._error_count),
            Command(":STATus:QUEue[:NEXT]", read=self._next_error),
            Command(":STATus:QUEue:CLEar", write=self._clear_queue),
            Command(":STATus:PRESet", write=no_args),
        ]

    def _next_error(self, args: Sequence[str]) -> str:
        no_args(args)
        return self._errors.popleft().entry() if self._errors else '0,"No error"'

    def _error_count(self, args: Sequence[str]) -> str:
        no_args(args)
        return str(len(self._errors))

    def _clear_queue(self, args: Sequence[str]) -> None:
        no_args(args)
        self._errors.clear()

    def _opc_query(self, args: Sequence[str]) -> str:
        no_args(args)
        return "1"

    def _idn(self, args: Sequence[str]) -> str:
        no_args(args)
        return self.idn

    def _rst(self, args: Sequence[str]) -> None:
        no_args(args)
        self.reset()

    def _cls(self, args: Sequence[str]) -> None:
        no_args(args)
        self._errors.clear()
        self._esr = 0

    def _opc(self, args: Sequence[str]) -> None:
        no_args(args)
        self._esr |= ESR_OPC

    def _esr_query(self, args: Sequence[str]) -> str:
        no_args(args)
        value, self._esr = self._esr, 0
        return str(value)
