"""A test device with a known gradient: a smooth random function of controls and inputs.

y(θ, x) = Σ_k c_k·tanh(a_k·θ + b_k·x + d_k) + ½ θᵀ Q θ, plus white output noise. The noise-free
output, its gradient and its Hessian in θ are exposed as an oracle, so estimators and optimizers can
be checked against the truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import (
    Channel,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    InstrumentDisconnected,
    JSONDict,
    Role,
    SafetyViolation,
    SeedLike,
    VirtualClock,
    seed_sequence,
)
from hil.core.types import generator_state, restore_generator

STATE_VERSION = 1


class AnalyticDevice(DeviceBase):
    """Simulated device whose output, gradient and Hessian are known in closed form.

    The function coefficients come from `model_seed` (the "device under test"); the measurement
    noise comes from `seed`, so one device can be measured with many noise realisations.
    """

    class Settings(BaseModel):
        """Shape of the function, channel ranges, noise and timing."""

        model_config = ConfigDict(extra="forbid")

        n_inputs: int = Field(default=2, ge=0, description="number of data-input channels")
        n_controls: int = Field(default=5, ge=1, description="number of control channels")
        n_terms: int = Field(default=8, ge=0, description="number K of tanh terms")
        model_seed: int = Field(default=0, ge=0, description="draws the function coefficients")
        control_min: float = Field(default=-1.0, description="V")
        control_max: float = Field(default=1.0, description="V")
        input_min: float = Field(default=-1.0, description="V")
        input_max: float = Field(default=1.0, description="V")
        curvature: float = Field(default=0.5, ge=0, description="scale of the quadratic term")
        noise_std: float = Field(default=1e-3, ge=0, description="white output noise per sample, V")
        settle_time: float = Field(default=1e-3, ge=0, description="s before each plateau")
        ramp_time: float = Field(
            default=0.0, ge=0, description="s the inputs take to ramp between plateaus"
        )
        samples_per_plateau: int = Field(default=10, ge=1, description="samples averaged")
        sample_rate: float = Field(default=1000.0, gt=0, description="Hz")
        max_slew: float = Field(default=math.inf, gt=0, description="V/s on inputs and controls")
        real_time: bool = Field(default=False, description="let the clock sleep")

        @model_validator(mode="after")
        def _ordered_ranges(self) -> AnalyticDevice.Settings:
            for what in ("control", "input"):
                lo, hi = getattr(self, f"{what}_min"), getattr(self, f"{what}_max")
                if not lo < hi:
                    raise ValueError(f"{what}_min ({lo}) must be below {what}_max ({hi})")
            if math.isfinite(self.max_slew) and self.ramp_time == 0:
                raise ValueError(
                    f"max_slew {self.max_slew} V/s needs ramp_time > 0: with instant plateau "
                    "changes every input step would exceed it"
                )
            return self

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = s = settings if settings is not None else self.Settings()
        self._a, self._b, self._c, self._d, self._Q = _draw_model(s)
        (noise_seed,) = seed_sequence(seed).spawn(1)
        self._noise = np.random.default_rng(noise_seed)
        self._clock = VirtualClock(real_time=s.real_time)
        self._spec = _make_spec(s)
        self._input_lo, self._input_hi = self._spec.bounds(Role.INPUT)
        self._control_lo, self._control_hi = self._spec.bounds(Role.CONTROL)
        self._controls: FloatArray = np.zeros(s.n_controls)
        self._measurements = 0
        self._closed = False

    # -- Device interface ----------------------------------------------------------------------

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> VirtualClock:
        return self._clock

    @property
    def controls(self) -> FloatArray:
        """Current DC control values (a copy)."""
        return self._controls.copy()

    @property
    def measurements(self) -> int:
        """Number of plateaus measured so far."""
        return self._measurements

    def set_controls(self, values: FloatArray) -> None:
        """Set the DC controls; values outside the instrument range are refused, not clamped."""
        self._check_open()
        v = _as_shape(values, (self.settings.n_controls,), "controls")
        _check_range(v[np.newaxis, :], self._spec.controls, self._control_lo, self._control_hi)
        self._controls = v.copy()

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One plateau per input row: settle, average `samples_per_plateau` noisy samples.

        The mean of n white samples is drawn directly as N(0, σ/√n) on top of the true output.
        """
        self._check_open()
        s = self.settings
        x = _as_2d(inputs, s.n_inputs, "inputs")
        _check_range(x, self._spec.inputs, self._input_lo, self._input_hi)
        n_cases = x.shape[0]
        dt = s.ramp_time + s.settle_time + s.samples_per_plateau / s.sample_rate
        for _ in range(n_cases):
            self._clock.advance(dt)
        sigma = s.noise_std / math.sqrt(s.samples_per_plateau)
        noise = self._noise.normal(0.0, sigma, size=(n_cases, 1))
        self._measurements += n_cases
        return self._evaluate(self._controls, x)[:, np.newaxis] + noise

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        """Play sampled values on named input/control channels; one noisy output per sample.

        Driven channels not named hold their current DC value (controls) or zero (inputs). The DC
        controls are unchanged afterwards. Range and slew are checked for the whole waveform before
        anything is played.
        """
        self._check_open()
        s = self.settings
        names = list(channels)
        w = np.asarray(waveform, dtype=float)
        if w.ndim != 2 or w.shape[1] != len(names):
            raise ValueError(
                f"waveform: expected shape (n_samples, {len(names)}) for channels {names}, "
                f"got {w.shape}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"stream: duplicate channel names in {names}")
        n_samples = w.shape[0]
        theta = np.tile(self._controls, (n_samples, 1))
        x = np.zeros((n_samples, s.n_inputs))
        chans: list[Channel] = []
        for j, name in enumerate(names):
            chan = self._spec.channel(name)
            if chan.role is Role.OUTPUT:
                raise ValueError(f"stream: {name!r} is an output channel; name inputs or controls")
            chans.append(chan)
            target = theta if chan.role is Role.CONTROL else x
            target[:, self._spec.by_role(chan.role).index(chan)] = w[:, j]
        lo = np.array([c.min for c in chans])
        hi = np.array([c.max for c in chans])
        _check_range(w, chans, lo, hi)
        _check_slew(w, chans, s.sample_rate)
        self._clock.advance(n_samples / s.sample_rate)
        noise = self._noise.normal(0.0, s.noise_std, size=(n_samples, 1))
        return self._evaluate(theta, x)[:, np.newaxis] + noise

    def safe_state(self) -> None:
        """Controls to zero volts (inputs are only driven during a measurement)."""
        self._controls = np.zeros(self.settings.n_controls)

    def close(self) -> None:
        self._closed = True

    # -- Oracle --------------------------------------------------------------------------------

    def true_output(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """Noise-free output, n_cases × 1; θ is one vector or one row per case."""
        t, x = self._oracle_args(theta, inputs)
        return self._evaluate(t, x)[:, np.newaxis]

    def true_gradient(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """∂y/∂θ per case, n_cases × n_controls."""
        t, x = self._oracle_args(theta, inputs)
        sech2 = 1.0 - np.tanh(self._pre_activation(t, x)) ** 2  # n_cases × K
        t2 = np.broadcast_to(t, (x.shape[0], self.settings.n_controls))
        grad: FloatArray = (sech2 * self._c) @ self._a + t2 @ self._Q
        return grad

    def true_hessian(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """∂²y/∂θ² per case, n_cases × n_controls × n_controls."""
        t, x = self._oracle_args(theta, inputs)
        th = np.tanh(self._pre_activation(t, x))
        weight = -2.0 * th * (1.0 - th**2) * self._c  # n_cases × K
        hess = np.einsum("nk,ki,kj->nij", weight, self._a, self._a) + self._Q
        symmetric: FloatArray = 0.5 * (hess + np.swapaxes(hess, 1, 2))
        return symmetric

    # -- Checkpoint ----------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Clock, DC controls, measurement count and noise-generator state (JSON-serialisable)."""
        return {
            "version": STATE_VERSION,
            "clock": self._clock.now(),
            "controls": [float(v) for v in self._controls],
            "measurements": self._measurements,
            "rng": {"noise": generator_state(self._noise)},
        }

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore a state taken with `state_dict` on a device with the same settings."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"AnalyticDevice state has version {state.get('version')!r}, "
                f"expected {STATE_VERSION}"
            )
        controls = _as_shape(state["controls"], (self.settings.n_controls,), "state controls")
        _check_range(
            controls[np.newaxis, :], self._spec.controls, self._control_lo, self._control_hi
        )
        restore_generator(self._noise, state["rng"]["noise"])
        self._clock.set(float(state["clock"]))
        self._controls = controls.copy()
        self._measurements = int(state["measurements"])

    # -- Internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentDisconnected(
                f"device {self._spec.name!r} is closed; build a new one to measure again"
            )

    def _oracle_args(self, theta: FloatArray, inputs: FloatArray) -> tuple[FloatArray, FloatArray]:
        s = self.settings
        x = _as_2d(inputs, s.n_inputs, "inputs")
        t = np.asarray(theta, dtype=float)
        if t.shape not in ((s.n_controls,), (x.shape[0], s.n_controls)):
            raise ValueError(
                f"theta: expected shape ({s.n_controls},) or ({x.shape[0]}, {s.n_controls}), "
                f"got {t.shape}"
            )
        return t, x

    def _pre_activation(self, theta: FloatArray, x: FloatArray) -> FloatArray:
        z: FloatArray = theta @ self._a.T + x @ self._b.T + self._d
        return z

    def _evaluate(self, theta: FloatArray, x: FloatArray) -> FloatArray:
        """y for each case; θ is one vector or one row per case."""
        t2 = np.broadcast_to(theta, (x.shape[0], self.settings.n_controls))
        quad = 0.5 * np.einsum("ni,ij,nj->n", t2, self._Q, t2)
        y: FloatArray = np.tanh(self._pre_activation(theta, x)) @ self._c + quad
        return y


def _draw_model(
    s: AnalyticDevice.Settings,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Coefficients a (K×n_controls), b (K×n_inputs), c (K), d (K) and Q, from `model_seed`.

    a and b are scaled so that a·θ + b·x has unit variance for θ, x uniform on [-1, 1].
    """
    rng = np.random.default_rng(seed_sequence(s.model_seed))
    k, n, m = s.n_terms, s.n_controls, s.n_inputs
    a = rng.normal(0.0, math.sqrt(3.0 / n), size=(k, n))
    b = rng.normal(0.0, math.sqrt(3.0 / max(m, 1)), size=(k, m))
    c = rng.normal(0.0, 1.0, size=k)
    d = rng.uniform(-0.5, 0.5, size=k)
    M = rng.normal(0.0, 1.0, size=(n, n))
    Q = s.curvature * (M @ M.T / n + np.eye(n))
    Q = 0.5 * (Q + Q.T)  # exactly symmetric, whatever the BLAS rounding
    return a, b, c, d, Q


def _make_spec(s: AnalyticDevice.Settings) -> DeviceSpec:
    inputs = [
        Channel(
            name=f"in{i}", role=Role.INPUT, min=s.input_min, max=s.input_max, max_slew=s.max_slew
        )
        for i in range(s.n_inputs)
    ]
    controls = [
        Channel(
            name=f"ctrl{i}",
            role=Role.CONTROL,
            min=s.control_min,
            max=s.control_max,
            max_slew=s.max_slew,
        )
        for i in range(s.n_controls)
    ]
    out = Channel(name="out", role=Role.OUTPUT, unit="V")
    return DeviceSpec(
        name="analytic",
        channels=(*inputs, *controls, out),
        sample_rate=s.sample_rate,
        settle_time=s.settle_time,
        ramp_time=s.ramp_time,
        plateau_samples=s.samples_per_plateau,
    )


def _as_shape(values: object, shape: tuple[int, ...], name: str) -> FloatArray:
    arr = np.asarray(values, dtype=float)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {arr.shape}")
    return arr


def _as_2d(values: object, n_cols: int, name: str) -> FloatArray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != n_cols:
        raise ValueError(f"{name}: expected shape (n_cases, {n_cols}), got {arr.shape}")
    return arr


def _check_range(
    values: FloatArray, chans: Sequence[Channel], lo: FloatArray, hi: FloatArray
) -> None:
    """Refuse non-finite or out-of-range values (columns follow `chans`); nothing is clamped."""
    bad = ~np.isfinite(values) | (values < lo) | (values > hi)
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    chan, value = chans[col], float(values[row, col])
    where = f" (row {row})" if values.shape[0] > 1 else ""
    if not math.isfinite(value):
        raise SafetyViolation(chan.name, value, "finite values only", f"refused{where}")
    raise SafetyViolation(
        chan.name,
        value,
        f"the instrument range [{chan.min}, {chan.max}] {chan.unit}",
        f"refused{where}; nothing was applied",
    )


def _check_slew(values: FloatArray, chans: Sequence[Channel], sample_rate: float) -> None:
    """Refuse a waveform whose sample-to-sample step exceeds a channel's max_slew."""
    if values.shape[0] < 2:
        return
    rate = np.abs(np.diff(values, axis=0)) * sample_rate
    limit = np.array([c.max_slew for c in chans])
    bad = rate > limit
    if not bad.any():
        return
    row, col = (int(i) for i in np.argwhere(bad)[0])
    chan = chans[col]
    raise SafetyViolation(
        chan.name,
        float(values[row + 1, col]),
        f"max slew {chan.max_slew} {chan.unit}/s",
        f"step of {float(rate[row, col]):.3g} {chan.unit}/s at sample {row + 1}",
    )
