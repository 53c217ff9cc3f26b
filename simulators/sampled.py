"""A sampled device: a static map of the driven voltages followed by a realistic output chain.

Both `measure` and `stream` run the same per-sample physics, on the virtual clock:

    V (inputs + controls) ─DAC─► response(V) ─LPF─► ×(1+gain error) + offset
        + white (absolute and signal-proportional) + 1/f + drift ─► saturation ─ADC─► samples

`measure` plays one plateau per input row — a linear ramp from the previous levels, a settling
time, then `samples_per_plateau` samples whose mean is returned — vectorised over all rows at once
(the filter and noise states carry from plateau to plateau exactly as in one long waveform).
`stream` plays an arbitrary waveform sample by sample. Every non-ideality is switched off by its
zero / None value and then has no effect. One spawned random stream per noise source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hil.core import (
    DeviceBase,
    DeviceSpec,
    FloatArray,
    InstrumentDisconnected,
    JSONDict,
    SafetyViolation,
    SeedLike,
    VirtualClock,
    seed_sequence,
)
from hil.core.types import generator_state, restore_generator
from simulators.noise import LowPass, OUBank, Quantizer, flicker_poles

MAX_PLATEAU_SAMPLES = 1_000_000
"""Most samples one simulated plateau may take (ramp + settling + averaged samples)."""


class Timing(BaseModel):
    """How plateaus are played and sampled."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: float = Field(default=10_000.0, gt=0, le=1e9, description="Hz, ADC and DAC")
    ramp_time: float = Field(
        default=5e-4, ge=0, le=60, description="s of linear ramp between plateaus"
    )
    settle_time: float = Field(default=1e-3, ge=0, le=3600, description="s waited before averaging")
    samples_per_plateau: int = Field(
        default=10, ge=1, le=1_000_000, description="samples averaged per plateau"
    )
    real_time: bool = Field(default=False, description="let the virtual clock sleep")

    @model_validator(mode="after")
    def _whole_samples(self) -> Timing:
        total = (self.ramp_time + self.settle_time) * self.sample_rate + self.samples_per_plateau
        if total > MAX_PLATEAU_SAMPLES:
            raise ValueError(
                f"one plateau (ramp, settling and averaging) is {total:.3g} samples at "
                f"{self.sample_rate:g} Hz, more than {MAX_PLATEAU_SAMPLES} (the simulator holds "
                "them in memory); shorten ramp_time or settle_time, or lower sample_rate"
            )
        for name in ("ramp_time", "settle_time"):
            samples = getattr(self, name) * self.sample_rate
            if abs(samples - round(samples)) > 1e-6:
                raise ValueError(
                    f"{name} {getattr(self, name)} s is {samples:g} samples at "
                    f"{self.sample_rate:g} Hz; make it a whole number of samples"
                )
        return self


class Noise(BaseModel):
    """Output-referred temporal noise, in output units; 0 switches a source off."""

    model_config = ConfigDict(extra="forbid")

    white: float = Field(default=0.0, ge=0, description="σ per sample, absolute")
    relative: float = Field(default=0.0, ge=0, description="σ per sample as a fraction of |y|")
    flicker_psd: float = Field(default=0.0, ge=0, description="1/f PSD at flicker_f_ref, unit²/Hz")
    flicker_f_ref: float = Field(default=1000.0, gt=0, description="Hz")
    flicker_f_lo: float = Field(
        default=0.01, ge=1e-9, description="Hz, lowest 1/f corner (at least 1e-9)"
    )
    flicker_f_hi: float | None = Field(default=None, gt=0, description="Hz; None: Nyquist")
    flicker_poles_per_decade: float = Field(default=2.0, gt=0, le=20, description="at most 20")
    drift_std: float = Field(default=0.0, ge=0, description="σ of the slow drift (OU)")
    drift_tau: float = Field(default=600.0, gt=0, description="s, drift correlation time")


@dataclass(frozen=True)
class Chain:
    """The output chain of a sampled device, in output units (built by each simulator)."""

    cutoff: float | None = None  # Hz, first-order low-pass; None = unlimited bandwidth
    gain_error: float = 0.0  # relative
    offset: float = 0.0
    saturation: float | None = None  # outputs clip to ±saturation
    adc_bits: int | None = None  # quantise over ±saturation
    dac_bits: int | None = None  # quantise driven voltages over ±dac_range
    dac_range: float = 10.0


class SampledSettings(BaseModel):
    """Settings every sampled simulator shares."""

    model_config = ConfigDict(extra="forbid")

    timing: Timing = Field(default_factory=Timing)
    noise: Noise = Field(default_factory=Noise)

    @model_validator(mode="after")
    def _flicker_band(self) -> SampledSettings:
        n, nyquist = self.noise, self.timing.sample_rate / 2
        hi = n.flicker_f_hi if n.flicker_f_hi is not None else nyquist
        if hi > nyquist:
            raise ValueError(
                f"noise.flicker_f_hi {hi} Hz is above the Nyquist frequency {nyquist} Hz; "
                "lower it or raise timing.sample_rate"
            )
        if n.flicker_psd > 0 and not n.flicker_f_lo * 10 <= hi:
            raise ValueError(
                f"noise.flicker_f_lo {n.flicker_f_lo} Hz must lie at least a decade below the "
                f"top of the 1/f band ({hi} Hz: flicker_f_hi or Nyquist)"
            )
        return self


STATE_VERSION = 1


class SampledDevice(DeviceBase):
    """Base of simulators with a static response and a sampled output chain.

    Subclasses give the spec, the chain, and `_response(V)` for driven levels V (N × n_driven,
    inputs then controls in spec order) returning N × n_outputs.
    """

    def __init__(
        self, spec: DeviceSpec, sampled: SampledSettings, chain: Chain, seed: SeedLike
    ) -> None:
        self._spec = spec
        self._timing = sampled.timing
        self._noise_cfg = sampled.noise
        self._chain = chain
        self._dt = 1.0 / sampled.timing.sample_rate
        self._clock = VirtualClock(real_time=sampled.timing.real_time)
        inputs, controls = spec.inputs, spec.controls
        self._n_in, self._n_ctrl, self._n_out = len(inputs), len(controls), len(spec.outputs)
        driven = (*inputs, *controls)
        self._lo = np.array([c.min for c in driven])
        self._hi = np.array([c.max for c in driven])
        self._driven_names = [c.name for c in driven]
        self._levels: FloatArray = np.zeros(len(driven))
        streams = seed_sequence(seed).spawn(3)
        self.noise_streams: dict[str, np.random.Generator] = {
            name: np.random.default_rng(s)
            for name, s in zip(("white", "flicker", "drift"), streams, strict=True)
        }
        n = sampled.noise
        if n.flicker_psd > 0:
            f_hi = n.flicker_f_hi if n.flicker_f_hi is not None else sampled.timing.sample_rate / 2
            # The level is quoted at f_ref. Where f_ref lies outside the part of the band where a
            # pole bank follows 1/f closely (a decade inside its corners), the same law
            # S(f)·f = const is pinned at the nearest point of that part instead.
            lo_in, hi_in = n.flicker_f_lo * 10, f_hi / 10
            if lo_in <= hi_in:
                f_pin = min(max(n.flicker_f_ref, lo_in), hi_in)
            else:
                f_pin = math.sqrt(n.flicker_f_lo * f_hi)
            taus, sigmas = flicker_poles(
                n.flicker_psd * n.flicker_f_ref / f_pin,
                f_pin,
                n.flicker_f_lo,
                f_hi,
                n.flicker_poles_per_decade,
            )
        else:
            taus, sigmas = [], []
        self._flicker = OUBank(taus, sigmas, self._n_out, self.noise_streams["flicker"])
        drift = ([n.drift_tau], [n.drift_std]) if n.drift_std > 0 else ([], [])
        self._drift = OUBank(*drift, self._n_out, self.noise_streams["drift"])
        self._lowpass = (
            LowPass(chain.cutoff, self._dt, self._n_out) if chain.cutoff is not None else None
        )
        self._adc = (
            Quantizer(chain.adc_bits, -chain.saturation, chain.saturation)
            if chain.adc_bits is not None and chain.saturation is not None
            else None
        )
        self._dac = (
            Quantizer(chain.dac_bits, -chain.dac_range, chain.dac_range)
            if chain.dac_bits is not None
            else None
        )
        self._plateaus = 0
        self._closed = False

    # -- what subclasses provide ---------------------------------------------------------------

    def _response(self, levels: FloatArray) -> FloatArray:
        raise NotImplementedError

    # -- Device interface ------------------------------------------------------------------------

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> VirtualClock:
        return self._clock

    @property
    def controls(self) -> FloatArray:
        """Current DC control levels (a copy)."""
        return self._levels[self._n_in :].copy()

    @property
    def plateaus(self) -> int:
        """Plateaus measured so far."""
        return self._plateaus

    @property
    def plateau_samples(self) -> int:
        """Samples each measured plateau averages (`timing.samples_per_plateau`)."""
        return self._timing.samples_per_plateau

    def set_plateau_samples(self, samples: int) -> None:
        """Average `samples` per plateau from the next `measure` on (the `Averaging` capability);
        a count the timing cannot hold raises ValueError and changes nothing."""
        self._check_open()
        if isinstance(samples, bool) or int(samples) != samples:
            raise ValueError(f"plateau samples must be a whole number, got {samples!r}")
        update = self._timing.model_dump() | {"samples_per_plateau": int(samples)}
        try:
            self._timing = Timing.model_validate(update)
        except ValidationError as exc:
            raise ValueError(f"plateau samples {samples}: {exc.errors()[0]['msg']}") from None
        self._spec = self._spec.model_copy(update={"plateau_samples": int(samples)})

    def set_controls(self, values: FloatArray) -> None:
        """Set the DC controls; out-of-range values are refused by the instrument, not clamped."""
        self._check_open()
        v = np.array(values, dtype=float)
        if v.shape != (self._n_ctrl,):
            raise ValueError(f"set_controls: expected shape ({self._n_ctrl},), got {v.shape}")
        self._check_range(v[np.newaxis, :], slice(self._n_in, None))
        self._levels[self._n_in :] = v

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One plateau per input row (ramp, settle, average); returns n_cases × n_outputs."""
        self._check_open()
        x = np.array(inputs, dtype=float)
        if x.ndim != 2 or x.shape[1] != self._n_in or x.shape[0] < 1:
            raise ValueError(f"measure: expected shape (n_cases, {self._n_in}), got {x.shape}")
        self._check_range(x, slice(0, self._n_in))
        t = self._timing
        n_ramp = round(t.ramp_time / self._dt)
        n_hold = round(t.settle_time / self._dt) + t.samples_per_plateau
        n_cases = x.shape[0]
        targets = np.tile(self._levels, (n_cases, 1))
        targets[:, : self._n_in] = x
        starts = np.vstack([self._levels[np.newaxis, :], targets[:-1]])
        fractions = np.arange(1, n_ramp + 1) / n_ramp if n_ramp else np.zeros(0)
        ramps = starts[:, None, :] + (targets - starts)[:, None, :] * fractions[None, :, None]
        y_ramp = self._response(self._dac_levels(ramps.reshape(-1, targets.shape[1])))
        y_hold = self._response(self._dac_levels(targets))
        signal = np.concatenate(
            [
                y_ramp.reshape(n_cases, n_ramp, self._n_out),
                np.broadcast_to(y_hold[:, None, :], (n_cases, n_hold, self._n_out)),
            ],
            axis=1,
        )
        if self._lowpass is not None:
            signal = self._lowpass.filter_blocks(signal)
        n_avg = t.samples_per_plateau
        window = signal[:, -n_avg:, :]
        gap = (signal.shape[1] - n_avg) * self._dt
        slow = self._flicker.windows(n_cases, n_avg, self._dt, gap) + self._drift.windows(
            n_cases, n_avg, self._dt, gap
        )
        samples = self._readout(window, slow)
        self._clock.advance(n_cases * signal.shape[1] * self._dt)
        self._levels = targets[-1].copy()
        self._plateaus += n_cases
        mean: FloatArray = samples.mean(axis=1)
        return mean

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        """Play a sampled waveform on named inputs/controls; others hold their levels.

        Returns n_samples × n_outputs; afterwards every driven channel sits at its last sample.
        """
        self._check_open()
        names = list(channels)
        w = np.array(waveform, dtype=float)
        if w.ndim != 2 or w.shape[1] != len(names) or w.shape[0] < 1:
            raise ValueError(f"stream: expected shape (n_samples, {len(names)}), got {w.shape}")
        if len(set(names)) != len(names):
            raise ValueError(f"stream: duplicate channel names in {names}")
        columns = self._columns(names)
        levels = np.tile(self._levels, (w.shape[0], 1))
        levels[:, columns] = w
        self._check_range(levels, slice(None))
        signal = self._response(self._dac_levels(levels))
        if self._lowpass is not None:
            signal = self._lowpass.filter(signal)
        n = w.shape[0]
        slow = self._flicker.samples(n, self._dt) + self._drift.samples(n, self._dt)
        out: FloatArray = self._readout(signal[np.newaxis], slow[np.newaxis])[0]
        self._clock.advance(n * self._dt)
        self._levels = levels[-1].copy()
        return out

    def idle(self, seconds: float) -> None:
        """Let device time pass with the levels held: filter settles, noise processes evolve."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"idle: need a finite time >= 0 s, got {seconds}")
        if self._lowpass is not None:
            target = self._response(self._dac_levels(self._levels[np.newaxis, :]))[0]
            decay = math.exp(-2 * math.pi * self._lowpass.cutoff * seconds)
            self._lowpass.reset(target + (self._lowpass.state - target) * decay)
        self._flicker.advance(seconds)
        self._drift.advance(seconds)
        self._clock.advance(seconds)

    def safe_state(self) -> None:
        """Every driven electrode to 0 V."""
        self._levels = np.zeros_like(self._levels)

    def close(self) -> None:
        self._closed = True

    # -- what reaches the electrodes (for the guard) -----------------------------------------------

    def applied_levels(self, values: FloatArray, channels: Sequence[str]) -> FloatArray:
        """The DAC's output for requested levels on the named driven channels (rows × channels)."""
        v = np.array(values, dtype=float)
        self._columns(channels)
        return self._dac_levels(v)

    def restored_levels(self, state: JSONDict) -> dict[str, float]:
        """The level every driven electrode holds after `load_state_dict(state)`."""
        return dict(zip(self._driven_names, self._state_levels(state).tolist(), strict=True))

    # -- oracle ------------------------------------------------------------------------------------

    def true_output(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """Settled, noise-free response (no gain error, offset, saturation or quantisation)."""
        return self._response(self._oracle_levels(theta, inputs))

    def lowpass_response(self, frequency: float | FloatArray) -> complex | np.ndarray:
        """The exact discrete-time transfer function of the output filter (1 without one)."""
        if self._lowpass is None:
            return np.ones_like(np.asarray(frequency, dtype=complex))
        return self._lowpass.response(np.asarray(frequency, dtype=float))

    # -- checkpoint ------------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        return {
            "version": STATE_VERSION,
            "clock": self._clock.now(),
            "levels": self._levels.tolist(),
            "plateaus": self._plateaus,
            "white": generator_state(self.noise_streams["white"]),
            "flicker": self._flicker.state_dict(),
            "drift": self._drift.state_dict(),
            "lowpass": None if self._lowpass is None else self._lowpass.state_dict(),
        }

    def load_state_dict(self, state: JSONDict) -> None:
        levels = self._state_levels(state)
        self._clock.set(float(state["clock"]))
        self._levels = levels
        self._plateaus = int(state["plateaus"])
        restore_generator(self.noise_streams["white"], state["white"])
        self._flicker.load_state_dict(state["flicker"])
        self._drift.load_state_dict(state["drift"])
        if self._lowpass is not None:
            self._lowpass.load_state_dict(state["lowpass"])

    # -- internals -------------------------------------------------------------------------------

    def _state_levels(self, state: JSONDict) -> FloatArray:
        """The driven levels of a state, its version and shape checked."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"{type(self).__name__} state version {state.get('version')!r}, "
                f"expected {STATE_VERSION}"
            )
        levels = np.array(state["levels"], dtype=float)
        if levels.shape != self._levels.shape:
            raise ValueError(f"state levels: expected {self._levels.shape}, got {levels.shape}")
        return levels

    def _columns(self, names: Sequence[str]) -> list[int]:
        """Column of each named driven channel in the levels vector."""
        unknown = [n for n in names if n not in self._driven_names]
        if unknown:
            raise ValueError(
                f"{unknown} are not input or control channels of {self._spec.name!r}; "
                f"driven channels are {self._driven_names}"
            )
        return [self._driven_names.index(n) for n in names]

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentDisconnected(
                f"device {self._spec.name!r} is closed; build a new one to measure again"
            )

    def _check_range(self, values: FloatArray, columns: slice) -> None:
        """The instrument's own range check: refuse (never clamp) anything outside the spec."""
        lo, hi = self._lo[columns], self._hi[columns]
        names = self._driven_names[columns]
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise SafetyViolation(
                names[col],
                float(values[row, col]),
                f"the device range [{lo[col]:g}, {hi[col]:g}] "
                f"{self._spec.channel(names[col]).unit}",
                "the simulator refuses it as the instrument would; nothing was applied",
            )

    def _dac_levels(self, levels: FloatArray) -> FloatArray:
        return self._dac(levels) if self._dac is not None else levels

    def _readout(self, signal: FloatArray, slow: FloatArray) -> FloatArray:
        """Gain, offset, noise, saturation and ADC on blocks of samples (B × L × n_outputs)."""
        c, n = self._chain, self._noise_cfg
        y = signal * (1.0 + c.gain_error) + c.offset + slow
        if n.white > 0 or n.relative > 0:
            sigma = np.sqrt(n.white**2 + (n.relative * signal) ** 2)
            y = y + sigma * self.noise_streams["white"].standard_normal(signal.shape)
        if c.saturation is not None:
            y = np.clip(y, -c.saturation, c.saturation)
        if self._adc is not None:
            y = self._adc(y)
        return y

    def _oracle_levels(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """Driven levels for oracle calls: θ is one vector or one row per case."""
        x = np.array(inputs, dtype=float)
        if x.ndim != 2 or x.shape[1] != self._n_in:
            raise ValueError(f"inputs: expected shape (n_cases, {self._n_in}), got {x.shape}")
        t = np.array(theta, dtype=float)
        if t.shape not in ((self._n_ctrl,), (x.shape[0], self._n_ctrl)):
            raise ValueError(
                f"theta: expected shape ({self._n_ctrl},) or ({x.shape[0]}, {self._n_ctrl}), "
                f"got {t.shape}"
            )
        return np.hstack([x, np.broadcast_to(t, (x.shape[0], self._n_ctrl))])
