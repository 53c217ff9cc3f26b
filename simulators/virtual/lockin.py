"""Virtual Stanford Research SR830 and SR860 lock-in amplifiers, backed by a `LockinSignal`.

Neither speaks SCPI, but their messages parse much the same way: a mnemonic (four letters on
the SR830, longer on the SR860), `?` for a query, parameters separated by commas, units separated
by `;`, case-insensitive; the SR830 ignores embedded spaces (`SENS10` = `SENS 10`). The engine
here is the one of `ScpiDevice` with that header syntax: a mnemonic the manual does not define
sets the command-error bit (*ESR bit 5), a parameter out of range the execution-error bit
(*ESR bit 4); a bad query answers nothing. Each reading asks the signal for X and Y at the
detection frequency, rotates them by the reference phase, and sets the latched LIA status bits
for an output overload (|X| or |Y| above the sensitivity) and a reference unlock (external
reference with no signal on REF IN). Numbers are answered with 6 significant digits.

Emulated (SR830): `FMOD FREQ HARM PHAS SLVL ISRC ICPL IGND ILIN RMOD SENS OFLT OFSL SYNC`
(each with its query), `OUTP? i`, `SNAP? i,j[,…]`, `LIAS? [i]`, `ERRS? [i]`, `*IDN? *RST *CLS
*ESR? *OPC *WAI`. SR860: `RSRC FREQ FREQINT HARM PHAS ISRC IVMD ICUR ICPL IGND IRNG SCAL OFLT
OFSL SYNC`, `FREQEXT? FREQDET? OUTP? SNAP? LIAS? ERRS? CUROVLDSTAT?` and the common commands;
`OUTP?`/`SNAP?` take indices or names (`X`, `Y`, `R`, `THeta`, …). Dual and chop references are
refused as not emulated (execution error).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

from simulators.virtual.scpi import ScpiDevice, ScpiError, no_args

Setter = Callable[[Sequence[str]], None]
Getter = Callable[[Sequence[str]], str | bytes]

_UNIT = re.compile(r"(\*?[A-Za-z]+)(\?)?(.*)", re.DOTALL)
_SENS = tuple(float(f"{m * 10.0**e:.12g}") for e in range(-9, 1) for m in (1, 2, 5))
_TC = tuple(float(f"{m * 10.0**e:.12g}") for e in range(-6, 5) for m in (1, 3))
SR830_SENSITIVITIES = _SENS[1:-2]
"""SENS i → V: 2 nV (0) … 1 V (26)."""
SR830_TIME_CONSTANTS = _TC[2:]
"""OFLT i → s: 10 µs (0) … 30 ks (19)."""
SR860_SENSITIVITIES = tuple(reversed(_SENS[:-2]))
"""SCAL i → V: 1 V (0) … 1 nV (27)."""
SR860_TIME_CONSTANTS = _TC
"""OFLT i → s: 1 µs (0) … 30 ks (21)."""
SR860_INPUT_RANGES = (1.0, 0.3, 0.1, 0.03, 0.01)
"""IRNG i → V peak."""
CURRENT_GAIN = 1e6
"""V per A on a current input: the full scale there is the sensitivity × 1 µA/V."""

# LIA status bits set here (SR830 manual, ch. 5: 0 input, 1 filter, 2 output overload, 3 unlock;
# SR860: 0-1 output (scale) overloads, 3 unlock, 4 input range).
SR830_OUTPUT_OVERLOAD = 4
REFERENCE_UNLOCK = 8
SR860_X_OVERLOAD, SR860_Y_OVERLOAD, SR860_INPUT_RANGE = 1, 2, 16


class LockinSignal(Protocol):
    """What arrives at the lock-in's signal and reference inputs."""

    def xy(self, frequency: float, harmonic: int, time_constant: float) -> tuple[float, float]:
        """In-phase and quadrature amplitude (V rms at the input) of the signal at
        harmonic × frequency."""
        ...

    def reference_frequency(self) -> float:
        """The frequency of the external reference (the AWG sync), Hz; 0 when none."""
        ...


def integer(arg: str, low: int, high: int) -> int:
    """An integer parameter (integer, float or exponent form) in [low, high]."""
    try:
        value = float(arg)
    except ValueError:
        raise ScpiError(-104, f"{arg!r} is not a number") from None
    if not value.is_integer() or not low <= value <= high:
        raise ScpiError(-222, f"{arg} outside the integers {low}…{high}")
    return int(value)


def real(arg: str, low: float, high: float) -> float:
    """A real parameter in [low, high]."""
    try:
        value = float(arg)
    except ValueError:
        raise ScpiError(-104, f"{arg!r} is not a number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ScpiError(-222, f"{arg} outside [{low:g}, {high:g}]")
    return value


def g6(value: float) -> str:
    """A number as the lock-ins answer it: 6 significant digits."""
    return f"{value:.6g}"


class _SRSLockin(ScpiDevice):
    """The SRS lock-in command engine and the physics both models share."""

    strip_spaces: ClassVar[bool] = False
    max_frequency: ClassVar[float] = 102e3
    defaults: ClassVar[dict[str, float]] = {}
    overload_bits: ClassVar[int] = SR830_OUTPUT_OVERLOAD

    def __init__(self, signal: LockinSignal) -> None:
        self.signal = signal
        self.state: dict[str, float] = dict(self.defaults)
        self.lias = 0
        self.errs = 0
        super().__init__()
        self.table: dict[str, tuple[Setter | None, Getter | None]] = {
            "*IDN": (None, self._common["*IDN"].read),
            "*RST": (self._common["*RST"].write, None),
            "*CLS": (self._clear, None),
            "*ESR": (None, self._esr_bits),
            "*OPC": (self._common["*OPC"].write, self._common["*OPC"].read),
            "*WAI": (no_args, None),
            "LIAS": (None, self._status_query("lias")),
            "ERRS": (None, self._status_query("errs")),
            **self.model_commands(),
        }

    # Subclass interface.

    def model_commands(self) -> dict[str, tuple[Setter | None, Getter | None]]:
        """The model's own mnemonics."""
        return {}

    def sensitivity(self) -> float:
        """Full scale, V (V-equivalent on a current input)."""
        raise NotImplementedError

    def time_constant(self) -> float:
        raise NotImplementedError

    def external(self) -> bool:
        raise NotImplementedError

    def current_input(self) -> bool:
        raise NotImplementedError

    def input_overload(self, x: float, y: float) -> int:
        """LIA bits for an overload of the input stage (none by default)."""
        return 0

    def reset(self) -> None:
        self.state = dict(self.defaults)

    # Engine.

    def execute(self, message: str) -> str | None:
        """Run one line of `;`-separated units; return the answers (one line each) or None."""
        if not message.strip():
            return None
        with self.lock:
            replies: list[str] = []
            for unit in message.split(";"):
                text = re.sub(r"\s+", "", unit) if self.strip_spaces else unit.strip()
                if not text:
                    continue
                try:
                    reply = self._run(text)
                except ScpiError as error:
                    self.push_error(error)
                    break  # the rest of the line is discarded
                if reply is not None:
                    replies.append(reply)
            return "\n".join(replies) if replies else None

    def _run(self, text: str) -> str | None:
        match = _UNIT.fullmatch(text)
        if match is None:
            raise ScpiError(-102, f"bad command {text!r}")
        header, query, rest = match.group(1).upper(), match.group(2), match.group(3).strip()
        args = [a.strip() for a in rest.split(",")] if rest else []
        if any(not a for a in args):
            raise ScpiError(-102, "empty parameter")
        setter, getter = self.table.get(header, (None, None))
        if query:
            if getter is None:
                raise ScpiError(-113, f"{header}? is not a query")
            reply = getter(args)
            return reply.decode("ascii") if isinstance(reply, bytes) else reply  # text only
        if setter is None:
            raise ScpiError(-113, f"{header} is not a command")
        setter(args)
        return None

    # Shared handlers.

    def setting(
        self, key: str, parse: Callable[[str], float], answer: Callable[[float], str] = g6
    ) -> tuple[Setter, Getter]:
        """A one-parameter setting stored in `state[key]`, with its query."""

        def write(args: Sequence[str]) -> None:
            if len(args) != 1:
                raise ScpiError(-109 if not args else -108)
            self.state[key] = parse(args[0])

        def read(args: Sequence[str]) -> str:
            no_args(args)
            return answer(self.state[key])

        return write, read

    def index(self, key: str, count: int) -> tuple[Setter, Getter]:
        """An index setting 0…count-1."""
        return self.setting(key, lambda a: integer(a, 0, count - 1), lambda v: str(int(v)))

    def _clear(self, args: Sequence[str]) -> None:
        self._common["*CLS"].write(args)  # type: ignore[misc]
        self.lias = self.errs = 0

    def _esr_bits(self, args: Sequence[str]) -> str | bytes:
        if not args:
            return self._common["*ESR"].read(args)  # type: ignore[misc]
        bit = integer(args[0], 0, 7) if len(args) == 1 else -1
        if bit < 0:
            raise ScpiError(-108)
        value = (self._esr >> bit) & 1
        self._esr &= ~(1 << bit)
        return str(value)

    def _status_query(self, register: str) -> Getter:
        """`LIAS? [i]` / `ERRS? [i]`: the byte (or bit i); reading clears what it returns."""

        def read(args: Sequence[str]) -> str:
            if register == "lias":
                self.outputs()  # the status reflects the present input too
            value = getattr(self, register)
            if not args:
                setattr(self, register, 0)
                return str(value)
            if len(args) > 1:
                raise ScpiError(-108)
            bit = integer(args[0], 0, 15)
            setattr(self, register, value & ~(1 << bit))
            return str((value >> bit) & 1)

        return read

    # Physics.

    def reference(self) -> float:
        """The reference frequency, Hz: the signal's on an external reference, else FREQ."""
        if self.external():
            return self.signal.reference_frequency()
        return self.state["freq"]

    def outputs(self) -> tuple[float, float]:
        """X and Y now (A on a current input), latching unlock and overload bits."""
        frequency = self.reference()
        if frequency <= 0:
            self.lias |= REFERENCE_UNLOCK
            frequency = 0.0
        harmonic = int(self.state["harm"])
        x, y = self.signal.xy(frequency, harmonic, self.time_constant())
        phase = math.radians(self.state["phas"])
        x, y = x * math.cos(phase) + y * math.sin(phase), y * math.cos(phase) - x * math.sin(phase)
        gain = CURRENT_GAIN if self.current_input() else 1.0
        if max(abs(x), abs(y)) * gain > self.sensitivity():
            self.lias |= self.overload_bits
        self.lias |= self.input_overload(x * gain, y * gain)
        return x, y

    def quantity(self, which: int, xy: tuple[float, float]) -> float:
        """Output `which`: 0 X, 1 Y, 2 R, 3 θ (degrees), 4 reference frequency."""
        x, y = xy
        if which == 0:
            return x
        if which == 1:
            return y
        if which == 2:
            return math.hypot(x, y)
        if which == 3:
            return math.degrees(math.atan2(y, x))
        return self.reference()


SR830_SNAP = {1: 0, 2: 1, 3: 2, 4: 3, 9: 4}
"""SNAP? parameters the SR830 emulation answers from the signal; 5-8 (aux in) read 0 V, 10-11
(displays) are X and Y."""


class SR830(_SRSLockin):
    """A virtual SR830 DSP lock-in."""

    idn = "Stanford_Research_Systems,SR830,s/n86666,ver1.07"
    strip_spaces = True
    defaults: ClassVar[dict[str, float]] = {
        "fmod": 1, "freq": 1000.0, "harm": 1, "phas": 0.0, "slvl": 1.0, "isrc": 0, "icpl": 0,
        "ignd": 0, "ilin": 0, "rmod": 1, "sens": 26, "oflt": 8, "ofsl": 1, "sync": 0,
    }  # fmt: skip

    def model_commands(self) -> dict[str, tuple[Setter | None, Getter | None]]:
        freq_set, _ = self.setting("freq", lambda a: real(a, 1e-3, self.max_frequency))
        harm_set, harm_get = self.index("harm", 20000)

        def set_freq(args: Sequence[str]) -> None:
            if self.external():
                raise ScpiError(-221, "FREQ sets the internal oscillator only")
            freq_set(args)

        def get_freq(args: Sequence[str]) -> str:
            no_args(args)
            return g6(self.reference())

        def set_harm(args: Sequence[str]) -> None:
            old = self.state["harm"]
            harm_set(args)
            if self.state["harm"] < 1 or self.state["harm"] * self.reference() > 102e3:
                self.state["harm"] = old
                raise ScpiError(-222, "harmonic × frequency must be within 1…102 kHz")

        return {
            "FMOD": self.index("fmod", 2),
            "FREQ": (set_freq, get_freq),
            "HARM": (set_harm, harm_get),
            "PHAS": self.setting("phas", lambda a: real(a, -360.0, 729.99)),
            "SLVL": self.setting("slvl", lambda a: real(a, 0.004, 5.0)),
            "ISRC": self.index("isrc", 4),
            "ICPL": self.index("icpl", 2),
            "IGND": self.index("ignd", 2),
            "ILIN": self.index("ilin", 4),
            "RMOD": self.index("rmod", 3),
            "SENS": self.index("sens", len(SR830_SENSITIVITIES)),
            "OFLT": self.index("oflt", len(SR830_TIME_CONSTANTS)),
            "OFSL": self.index("ofsl", 4),
            "SYNC": self.index("sync", 2),
            "OUTP": (None, self._outp),
            "SNAP": (None, self._snap),
        }

    def sensitivity(self) -> float:
        return SR830_SENSITIVITIES[int(self.state["sens"])]

    def time_constant(self) -> float:
        return SR830_TIME_CONSTANTS[int(self.state["oflt"])]

    def external(self) -> bool:
        return self.state["fmod"] == 0

    def current_input(self) -> bool:
        return self.state["isrc"] >= 2

    def _outp(self, args: Sequence[str]) -> str:
        if len(args) != 1:
            raise ScpiError(-109 if not args else -108)
        return g6(self.quantity(integer(args[0], 1, 4) - 1, self.outputs()))

    def _snap(self, args: Sequence[str]) -> str:
        if not 2 <= len(args) <= 6:
            raise ScpiError(-108 if args else -109, "SNAP? takes 2 to 6 parameters")
        which = [integer(a, 1, 11) for a in args]
        xy = self.outputs()
        values = []
        for w in which:
            if 5 <= w <= 8:
                values.append(0.0)
            else:
                values.append(self.quantity(SR830_SNAP.get(w, w - 10), xy))
        return ",".join(g6(v) for v in values)


SR860_PARAMETERS = (
    ("X", "X"), ("Y", "Y"), ("R", "R"), ("TH", "THETA"), ("IN1", "IN1"), ("IN2", "IN2"),
    ("IN3", "IN3"), ("IN4", "IN4"), ("XNO", "XNOISE"), ("YNO", "YNOISE"), ("OUT1", "OUT1"),
    ("OUT2", "OUT2"), ("PHA", "PHASE"), ("SAM", "SAMP"), ("LEV", "LEVEL"), ("FI", "FINT"),
    ("FE", "FEXT"),
)  # fmt: skip
"""`OUTP?`/`SNAP?` parameter names (short, long) by index 0…16."""


def sr860_parameter(arg: str) -> int:
    """An SR860 output parameter by index or name."""
    upper = arg.upper()
    for i, names in enumerate(SR860_PARAMETERS):
        if upper in names:
            return i
    return integer(arg, 0, len(SR860_PARAMETERS) - 1)


class SR860(_SRSLockin):
    """A virtual SR860 lock-in (500 kHz)."""

    idn = "Stanford_Research_Systems,SR860,003141,v1.51"
    max_frequency = 500e3
    overload_bits = SR860_X_OVERLOAD | SR860_Y_OVERLOAD
    defaults: ClassVar[dict[str, float]] = {
        "rsrc": 0, "freq": 1000.0, "harm": 1, "phas": 0.0, "isrc": 0, "ivmd": 0, "icur": 0,
        "icpl": 0, "ignd": 0, "irng": 0, "scal": 0, "oflt": 12, "ofsl": 1, "sync": 0,
    }  # fmt: skip

    def model_commands(self) -> dict[str, tuple[Setter | None, Getter | None]]:
        rsrc_set, rsrc_get = self.index("rsrc", 4)
        freq_set, freq_get = self.setting("freq", lambda a: real(a, 1e-3, self.max_frequency))
        harm_set, harm_get = self.index("harm", 100)

        def set_rsrc(args: Sequence[str]) -> None:
            rsrc_set(args)
            if self.state["rsrc"] >= 2:
                self.state["rsrc"] = 0
                raise ScpiError(-221, "dual and chop references are not emulated")

        def set_harm(args: Sequence[str]) -> None:
            old = self.state["harm"]
            harm_set(args)
            if self.state["harm"] < 1 or self.state["harm"] * self.reference() > 500e3:
                self.state["harm"] = old
                raise ScpiError(-222, "harmonic × frequency must be within 1…500 kHz")

        def set_freq(args: Sequence[str]) -> None:
            if self.external():
                raise ScpiError(-221, "FREQ sets the internal oscillator only")
            freq_set(args)

        def reference(args: Sequence[str]) -> str:
            no_args(args)
            return g6(self.reference())

        def external(args: Sequence[str]) -> str:
            no_args(args)
            return g6(self.signal.reference_frequency())

        def detected(args: Sequence[str]) -> str:
            no_args(args)
            return g6(self.reference() * self.state["harm"])

        return {
            "RSRC": (set_rsrc, rsrc_get),
            "FREQ": (set_freq, reference),
            "FREQINT": (freq_set, freq_get),
            "FREQEXT": (None, external),
            "FREQDET": (None, detected),
            "HARM": (set_harm, harm_get),
            "PHAS": self.setting("phas", lambda a: real(a, -360000.0, 360000.0)),
            "ISRC": self.index("isrc", 2),
            "IVMD": self.index("ivmd", 2),
            "ICUR": self.index("icur", 2),
            "ICPL": self.index("icpl", 2),
            "IGND": self.index("ignd", 2),
            "IRNG": self.index("irng", len(SR860_INPUT_RANGES)),
            "SCAL": self.index("scal", len(SR860_SENSITIVITIES)),
            "OFLT": self.index("oflt", len(SR860_TIME_CONSTANTS)),
            "OFSL": self.index("ofsl", 4),
            "SYNC": self.index("sync", 2),
            "OUTP": (None, self._outp),
            "SNAP": (None, self._snap),
            "CUROVLDSTAT": (None, self._overload_now),
        }

    def sensitivity(self) -> float:
        return SR860_SENSITIVITIES[int(self.state["scal"])]

    def time_constant(self) -> float:
        return SR860_TIME_CONSTANTS[int(self.state["oflt"])]

    def external(self) -> bool:
        return self.state["rsrc"] == 1

    def current_input(self) -> bool:
        return self.state["ivmd"] == 1

    def input_overload(self, x: float, y: float) -> int:
        """The input range (voltage input) is a peak: overload above range / √2 rms."""
        if self.current_input():
            return 0
        top = SR860_INPUT_RANGES[int(self.state["irng"])]
        return SR860_INPUT_RANGE if math.hypot(x, y) * math.sqrt(2) > top else 0

    def _value(self, which: int, xy: tuple[float, float]) -> float:
        if which <= 3:
            return self.quantity(which, xy)
        if which == 12:
            return self.state["phas"]
        if which == 15:
            return self.state["freq"]
        if which == 16:
            return self.signal.reference_frequency()
        return 0.0  # aux inputs and outputs, noise, sine out: nothing connected

    def _outp(self, args: Sequence[str]) -> str:
        if len(args) != 1:
            raise ScpiError(-109 if not args else -108)
        return g6(self._value(sr860_parameter(args[0]), self.outputs()))

    def _snap(self, args: Sequence[str]) -> str:
        if not 2 <= len(args) <= 3:
            raise ScpiError(-108 if args else -109, "SNAP? takes 2 or 3 parameters")
        which = [sr860_parameter(a) for a in args]
        xy = self.outputs()
        return ",".join(g6(self._value(w, xy)) for w in which)

    def _overload_now(self, args: Sequence[str]) -> str:
        """`CUROVLDSTAT?`: the overload and unlock conditions now (not latched)."""
        no_args(args)
        latched, self.lias = self.lias, 0
        self.outputs()
        now, self.lias = self.lias, latched | self.lias
        return str(now)
