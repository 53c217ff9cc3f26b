"""Lock-in amplifiers on PyMeasure's drivers: Stanford Research SR830 and SR860.

A `LockIn` demodulates its input at the reference (an AWG's sync, or its own oscillator) and
returns X and Y. At connect every setting is checked against the instrument's allowed list (a value
not in the list is refused, never rounded), written, read back (a mismatch refuses to start) and
the standard event status is checked for command and execution errors. Readings take X and Y at
one instant (`SNAP?`) and check the latched LIA status for overloads and reference unlock.

Both build on `drivers.instruments.PyMeasureSession` (open, identify, readback checks, fault
translation, retried queries, release).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol, Self, runtime_checkable

from pydantic import Field, ValidationInfo, field_validator, model_validator

from drivers.instruments import InstrumentSettings, PyMeasureSession, as_float
from hil.core import Clock, DeviceSaturated, InstrumentError, SafetyViolation

SLOPES = (6, 12, 18, 24)
"""Output filter slopes, dB/oct (1 to 4 cascaded RC stages)."""
SETTLE_FACTOR = {6: 4.61, 12: 6.64, 18: 8.41, 24: 10.05}
"""Time constants until a step settles within 1 % through n cascaded RC stages (the SR830 and
SR860 output filters): the root of e^-x Σ_{k<n} x^k/k! = 0.01 for n = 1…4."""

ESR_EXECUTION, ESR_COMMAND = 1 << 4, 1 << 5  # *ESR bits: parameter out of range / bad command

InputConfig = Literal["A", "A-B", "I1M", "I100M"]


def _decades(mantissas: Sequence[float], low: int, high: int) -> tuple[float, ...]:
    """Values m × 10^e for e in [low, high], rounded to 12 significant digits."""
    return tuple(float(f"{m * 10.0**e:.12g}") for e in range(low, high + 1) for m in mantissas)


SR830_SENSITIVITIES = _decades((1, 2, 5), -9, 0)[1:-2]  # 2 nV … 1 V
SR830_TIME_CONSTANTS = _decades((1, 3), -5, 4)  # 10 µs … 30 ks
SR860_SENSITIVITIES = _decades((1, 2, 5), -9, 0)[:-2]  # 1 nV … 1 V
SR860_TIME_CONSTANTS = _decades((1, 3), -6, 4)  # 1 µs … 30 ks
SR860_INPUT_RANGES = (1.0, 0.3, 0.1, 0.03, 0.01)  # V peak, IRNG 0…4
_SR860_RANGE_NAMES = ("1V", "300M", "100M", "30M", "10M")  # PyMeasure's `input_range` values


def check_in_list(value: float, allowed: Sequence[float], what: str, who: str) -> None:
    """Refuse a value that is not in an instrument's allowed list (`SafetyViolation`, before
    anything is sent): a value between two steps is not rounded."""
    if any(math.isclose(value, v, rel_tol=1e-9) for v in allowed):
        return
    raise SafetyViolation(
        who,
        value,
        f"the allowed {what} values of {who} ({allowed[0]:g} … {allowed[-1]:g})",
        f"use one of {', '.join(f'{v:g}' for v in allowed)}",
    )


@runtime_checkable
class LockIn(Protocol):
    """A lock-in amplifier channel: demodulate the input at the reference, return X and Y."""

    @property
    def name(self) -> str: ...

    def connect(self, instrument: Any | None = None) -> None:
        """Open the instrument (or adopt `instrument`), configure it and read every setting back."""
        ...

    def configure(self, settings: LockInSettings | None = None) -> None:
        """Write the settings (new ones, or the current ones again) and read them back."""
        ...

    def identify(self) -> str: ...

    def clear_status(self) -> None:
        """Clear the latched status, so the next reading reports only what happens after it."""
        ...

    def read_xy(self) -> tuple[float, float]:
        """X and Y taken at one instant, V rms (A rms on a current input)."""
        ...

    def reference_frequency(self) -> float:
        """The reference frequency the lock-in is locked to, Hz."""
        ...

    def overloaded(self) -> bool:
        """Whether an overload was latched since the status was last read (reading clears it)."""
        ...

    def settle_time(self) -> float:
        """How long the output filter takes to settle within 1 % after a step, s."""
        ...

    def close(self) -> None: ...


class LockInSettings(InstrumentSettings):
    """A lock-in's demodulation settings from the station file (ramp keys are unused)."""

    sensitivity: float = Field(gt=0, description="full scale, V (on a current input: × 1 µA/V)")
    time_constant: float = Field(gt=0, description="output filter time constant, s")
    filter_slope: Literal[6, 12, 18, 24] = Field(default=24, description="dB/oct")
    reference: Literal["external", "internal"] = Field(
        default="external", description="external: the AWG's sync into REF IN"
    )
    harmonic: int = Field(default=1, ge=1, description="detect at harmonic × reference")
    input: InputConfig = Field(
        default="A", description="A, A-B, or the current input I1M (1 MΩ) / I100M (100 MΩ)"
    )
    coupling: Literal["AC", "DC"] = "AC"
    reserve: Literal["high", "normal", "low_noise"] | None = Field(
        default=None, description="dynamic reserve (SR830 only); None keeps the instrument's"
    )

    sensitivities: ClassVar[tuple[float, ...]] = SR830_SENSITIVITIES
    time_constants: ClassVar[tuple[float, ...]] = SR830_TIME_CONSTANTS
    max_harmonic: ClassVar[int] = 19998
    has_reserve: ClassVar[bool] = True

    @field_validator("sensitivity", "time_constant")
    @classmethod
    def _in_list(cls, value: float, info: ValidationInfo) -> float:
        """The instrument's own value for `value` (within 1e-9); anything else is refused."""
        allowed = cls.sensitivities if info.field_name == "sensitivity" else cls.time_constants
        for v in allowed:
            if math.isclose(value, v, rel_tol=1e-9):
                return v
        listed = ", ".join(f"{v:g}" for v in allowed)
        raise ValueError(f"{value:g} is not one of the instrument's values ({listed})")

    @model_validator(mode="after")
    def _within_instrument(self) -> Self:
        if self.harmonic > self.max_harmonic:
            raise ValueError(f"harmonic {self.harmonic} exceeds {self.max_harmonic}")
        if self.reserve is not None and not self.has_reserve:
            raise ValueError("reserve: this instrument has no dynamic reserve setting")
        return self


class SR830Settings(LockInSettings):
    """SR830: sensitivities 2 nV…1 V (1-2-5), time constants 10 µs…30 ks (1-3), harmonics up
    to 19998 (PyMeasure's validator stops one short of the manual's 19999)."""


class SR860Settings(LockInSettings):
    """SR860: sensitivities 1 nV…1 V, time constants 1 µs…30 ks, harmonics up to 98
    (PyMeasure's validator stops one short of the manual's 99); no dynamic reserve."""

    input_range: float | None = Field(
        default=None, description="voltage input range, V peak: 1, 0.3, 0.1, 0.03, 0.01"
    )

    sensitivities: ClassVar[tuple[float, ...]] = SR860_SENSITIVITIES
    time_constants: ClassVar[tuple[float, ...]] = SR860_TIME_CONSTANTS
    max_harmonic: ClassVar[int] = 98
    has_reserve: ClassVar[bool] = False

    @field_validator("input_range")
    @classmethod
    def _range_in_list(cls, value: float | None) -> float | None:
        if value is None or value in SR860_INPUT_RANGES:
            return value
        raise ValueError(f"{value:g} V is not one of {SR860_INPUT_RANGES}")


class _SRSLockIn(PyMeasureSession):
    """What the SR830 and SR860 share: configure, read-back, SNAP, LIA status."""

    settings: LockInSettings
    settings_class: ClassVar[type[LockInSettings]]
    overload_bits: ClassVar[int]
    unlock_bit: ClassVar[int] = 1 << 3  # LIA status bit 3: reference unlock (both models)

    def __init__(self, settings: LockInSettings, clock: Clock | None = None) -> None:
        if not isinstance(settings, self.settings_class):
            raise TypeError(f"{type(self).__name__} needs {self.settings_class.__name__}")
        super().__init__(settings, clock)

    @abstractmethod
    def _write_settings(self, s: LockInSettings) -> None: ...

    @abstractmethod
    def read_back(self, *, live: bool = False) -> None:
        """Every setting connect wrote (all hold while running, so `live` checks the same)."""

    @abstractmethod
    def _snap(self) -> list[Any]:
        """The raw `SNAP?` reply values for X and Y."""

    def _check_allowed(self, s: LockInSettings) -> None:
        """Refuse values outside the allowed lists before anything is sent (settings that
        bypassed validation, e.g. built with `model_construct`)."""
        check_in_list(s.sensitivity, s.sensitivities, "sensitivity", self.who)
        check_in_list(s.time_constant, s.time_constants, "time constant", self.who)
        if not 1 <= s.harmonic <= s.max_harmonic:
            raise SafetyViolation(self.name, s.harmonic, f"harmonics 1…{s.max_harmonic}")

    def _configure(self) -> None:
        s = self.settings
        self._check_allowed(s)
        self._write_settings(s)
        self.read_back()
        # Raw: PyMeasure has no standard-event-status property for either model.
        esr = int(as_float(self.instrument.ask("*ESR?")))
        if esr & (ESR_COMMAND | ESR_EXECUTION):
            raise InstrumentError(
                f"{self.who}: the instrument flagged a command or execution error while "
                f"configuring (*ESR {esr}); refusing to start"
            )
        self.instrument.write("*CLS")

    def configure(self, settings: LockInSettings | None = None) -> None:
        """Write `settings` (or the current ones again) and read them back. A refusal keeps the
        previous settings object, but the instrument may hold part of the new ones: configure
        again before reading."""
        if settings is not None:
            settings = self.settings_class.model_validate(settings.model_dump())
            previous, self.settings = self.settings, settings
            try:
                self._call("configure", self._configure)
            except BaseException:
                self.settings = previous
                raise
        else:
            self._call("configure", self._configure)

    def clear_status(self) -> None:
        # Raw *CLS: PyMeasure's SR860 has no clear() (the SR830's sends the same).
        self._call("clear status", lambda: self.instrument.write("*CLS"))

    def read_xy(self) -> tuple[float, float]:
        x, y = self._query("read X,Y", self._xy)
        status = self._status()
        if status & self.unlock_bit and self.settings.reference == "external":
            raise InstrumentError(
                f"{self.who}: reference unlocked while reading (LIA status {status}): check the "
                "AWG sync into REF IN and that the AWG output runs"
            )
        if status & self.overload_bits:
            raise DeviceSaturated(
                f"{self.who}: overload while reading X={x:g}, Y={y:g} at sensitivity "
                f"{self.settings.sensitivity:g} (LIA status {status}); the reading is clipped "
                "(choose a larger full scale or a smaller dither)"
            )
        return x, y

    def overloaded(self) -> bool:
        return bool(self._status() & self.overload_bits)

    def go_safe(self) -> None:
        """Nothing to do: the lock-in measures; no setting this driver writes drives an output."""

    def reference_frequency(self) -> float:
        return self._query("read reference frequency", lambda: as_float(self.instrument.frequency))

    def settle_time(self) -> float:
        return SETTLE_FACTOR[self.settings.filter_slope] * self.settings.time_constant

    def _xy(self) -> tuple[float, float]:
        values = self._snap()
        if len(values) != 2:
            raise ValueError(f"SNAP? answered {values!r}, not X and Y")
        return as_float(values[0]), as_float(values[1])

    def _status(self) -> int:
        """The latched LIA status (reading clears it, so it is never retried: a garbled reply
        would otherwise be followed by a clean, already cleared, status)."""
        # Raw query: PyMeasure's SR860 has no LIA status property (its SR830 one sends the same).
        return self._call("read status", lambda: int(as_float(self.instrument.ask("LIAS?"))))


_SR830_INPUTS = {"A": "A", "A-B": "A - B", "I1M": "I (1 MOhm)", "I100M": "I (100 MOhm)"}
_SR830_RESERVES = {"high": "High Reserve", "normal": "Normal", "low_noise": "Low Noise"}


class SR830LockIn(_SRSLockIn):
    """Stanford Research SR830 through PyMeasure's `SR830`.

    All settings go through PyMeasure's properties (their validators would round a value between
    steps up; the allowed lists are checked first, so none is). Status: `LIAS?` bits 0-2 are the
    input/amplifier, filter and output overloads, bit 3 the reference unlock (manual, ch. 5).
    """

    settings_class = SR830Settings
    overload_bits = 0b111

    def _open(self) -> Any:
        from pymeasure.instruments.srs import SR830

        return SR830(self.settings.address, **self.settings.adapter_kwargs())

    def _write_settings(self, s: LockInSettings) -> None:
        # Time constant last: it is a low-priority setting that a change of sensitivity,
        # reserve or slope may raise to the new minimum (manual, "Time Constant").
        li = self.instrument
        li.reference_source = "External" if s.reference == "external" else "Internal"
        li.harmonic = s.harmonic
        li.input_config = _SR830_INPUTS[s.input]
        li.input_coupling = s.coupling
        if s.reserve is not None:
            li.reserve = _SR830_RESERVES[s.reserve]
        li.sensitivity = s.sensitivity
        li.filter_slope = s.filter_slope
        li.time_constant = s.time_constant

    def read_back(self, *, live: bool = False) -> None:
        s, li = self.settings, self.instrument
        ref = "External" if s.reference == "external" else "Internal"
        self.check_readback("reference", ref, li.reference_source)
        self.check_readback("harmonic", s.harmonic, li.harmonic)
        self.check_readback("input", _SR830_INPUTS[s.input], li.input_config)
        self.check_readback("coupling", s.coupling, li.input_coupling)
        if s.reserve is not None:
            self.check_readback("reserve", _SR830_RESERVES[s.reserve], li.reserve)
        self.check_readback("sensitivity", s.sensitivity, li.sensitivity)
        self.check_readback("filter_slope", s.filter_slope, li.filter_slope)
        self.check_readback("time_constant", s.time_constant, li.time_constant)

    def _snap(self) -> list[Any]:
        return list(self.instrument.snap("X", "Y"))  # SNAP? 1,2


class SR860LockIn(_SRSLockIn):
    """Stanford Research SR860 through PyMeasure's `SR860`.

    PyMeasure's `filter_slope` takes the index (0-3), so the slope is mapped here. The input is
    set by `IVMD` (voltage/current), then `ISRC` (A, A-B) or `ICUR` (1 MΩ, 100 MΩ); PyMeasure's
    `input_signal` must be given "VOLT"/"CURR" (its lower-case aliases map to wrong indices).
    Status: `LIAS?` bits 0-1 and 8-11 are output (scale) overloads, bit 4 the input range
    overload, bit 3 the external reference unlock.
    """

    settings_class = SR860Settings
    overload_bits = 0b1111_0001_0011

    def _open(self) -> Any:
        from pymeasure.instruments.srs import SR860

        return SR860(self.settings.address, **self.settings.adapter_kwargs())

    def _query_identity(self) -> str:
        # Raw *IDN?: PyMeasure's SR860 has no `id` (its base refuses one for non-SCPI classes).
        return str(self.instrument.ask("*IDN?")).strip()

    def _write_settings(self, s: LockInSettings) -> None:
        assert isinstance(s, SR860Settings)
        li = self.instrument
        li.reference_source = "EXT" if s.reference == "external" else "INT"
        li.harmonic = s.harmonic
        current = s.input in ("I1M", "I100M")
        li.input_signal = "CURR" if current else "VOLT"
        if current:
            li.input_current_gain = "1MEG" if s.input == "I1M" else "100MEG"
        else:
            li.input_voltage_mode = s.input
            if s.input_range is not None:
                li.input_range = _SR860_RANGE_NAMES[SR860_INPUT_RANGES.index(s.input_range)]
        li.input_coupling = s.coupling
        li.sensitivity = s.sensitivity
        li.filter_slope = SLOPES.index(s.filter_slope)
        li.time_constant = s.time_constant

    def read_back(self, *, live: bool = False) -> None:
        s, li = self.settings, self.instrument
        assert isinstance(s, SR860Settings)
        ref = "EXT" if s.reference == "external" else "INT"
        self.check_readback("reference", ref, li.reference_source)
        self.check_readback("harmonic", s.harmonic, li.harmonic)
        current = s.input in ("I1M", "I100M")
        self.check_readback("input signal", "CURR" if current else "VOLT", li.input_signal)
        if current:
            gain = "1MEG" if s.input == "I1M" else "100MEG"
            self.check_readback("input current gain", gain, li.input_current_gain)
        else:
            self.check_readback("input", s.input, li.input_voltage_mode)
            if s.input_range is not None:
                name = _SR860_RANGE_NAMES[SR860_INPUT_RANGES.index(s.input_range)]
                self.check_readback("input_range", name, li.input_range)
        self.check_readback("coupling", s.coupling, li.input_coupling)
        self.check_readback("sensitivity", s.sensitivity, li.sensitivity)
        self.check_readback("filter_slope", SLOPES.index(s.filter_slope), li.filter_slope)
        self.check_readback("time_constant", s.time_constant, li.time_constant)

    def _snap(self) -> list[Any]:
        return list(self.instrument.snap("X", "Y"))  # SNAP? X, Y
