"""A memristive crossbar: rows × cols analog weights that change only through voltage pulses.

Weights are in aihwkit's normalised units. Every crosspoint has its own, fixed (device-to-device)
bounds, step sizes and up/down asymmetry; every pulse adds cycle-to-cycle step noise and clips to
the device's bounds (constant, linear, soft-bounds, exp or pow step rule). Stuck devices never
move. Reading runs aihwkit's forward pipeline: noise management, DAC, analog MAC, weight read
noise, IR drop, output noise, ADC, iterative bound management. Optional PCM-like retention: the
conductance decays as a power law with a per-device exponent, plus accumulated 1/f read noise.

Pulses, reads and waiting cost time on a virtual clock; every pulse counts against the endurance
of the device that received it. Equations and defaults: shared/reference/simulators.md §1
(aihwkit pulsed devices and IOParameters, PCMLikeNoiseModel).

Layout: inputs drive the rows, outputs are read on the columns, so `measure` returns x W for
inputs x (n_cases × rows) and weights W (rows × cols).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import (
    Channel,
    DeviceBase,
    DeviceSpec,
    FloatArray,
    InstrumentDisconnected,
    IntArray,
    JSONDict,
    Role,
    SafetyViolation,
    SeedLike,
    VirtualClock,
    seed_sequence,
)
from hil.core.types import generator_state, restore_generator

BoolArray = npt.NDArray[np.bool_]
_Array = TypeVar("_Array", bound=np.ndarray[Any, Any])
DeviceModel = Literal["constant", "linear", "soft_bounds", "exp", "pow"]

STATE_VERSION = 1
# One spawned generator per noise source (after the construction stream), in this order.
NOISE_STREAMS = ("step", "write", "read", "retention", "update")
# PCMLikeNoiseModel fits (Nandakumar et al. 2019), in units of ĝ = |w| / w_ref.
_NU_MEAN = (-0.0155, 0.0244, 0.049, 0.1)  # slope on ln ĝ, intercept, clip low, clip high
_NU_STD = (-0.0125, -0.0059, 0.008, 0.045)
_G_FLOOR = 1e-7


class IOParameters(BaseModel):
    """The forward (read) path, aihwkit `IOParameters` in normalised units; 0 switches off."""

    model_config = ConfigDict(extra="forbid")

    inp_bound: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="DAC range ±")
    inp_res: float = Field(
        default=1 / 126, ge=0, description="DAC step / full range (7 bit); > 1: number of steps"
    )
    inp_noise: float = Field(default=0.0, ge=0, description="σ added to the DAC output")
    out_bound: float = Field(default=12.0, gt=0, description="ADC range ± (inf: no clipping)")
    out_res: float = Field(
        default=1 / 510, ge=0, description="ADC step / full range (9 bit); > 1: number of steps"
    )
    out_noise: float = Field(default=0.06, ge=0, description="σ of the output noise")
    w_noise: float = Field(default=0.0, ge=0, description="weight read noise, output-referred")
    w_noise_type: Literal["additive_constant", "pcm_read"] = "additive_constant"
    ir_drop: float = Field(default=0.0, ge=0, description="IR-drop scale (aihwkit formula)")
    ir_drop_g_ratio: float = Field(default=5.7143e5, gt=0, description="wire conductance / g_max")
    noise_management: Literal["abs_max", "none"] = "abs_max"
    bound_management: Literal["iterative", "none"] = "iterative"
    max_bm_factor: float = Field(
        default=1000.0, ge=1, le=1e9, description="largest input down-scaling"
    )
    max_bm_res: float = Field(default=0.25, gt=0, description="largest inp_res × down-scaling")

    @model_validator(mode="after")
    def _finite_adc(self) -> IOParameters:
        if self.out_res > 0 and not math.isfinite(self.out_bound):
            raise ValueError("io.out_res > 0 needs a finite io.out_bound (the ADC's full scale)")
        return self


class Retention(BaseModel):
    """What happens to a programmed weight while time passes (PCMLikeNoiseModel)."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["none", "pcm"] = Field(default="none", description="pcm: power-law drift")
    t0: float = Field(default=20.0, gt=0, description="s, drift reference time after programming")
    t_read: float = Field(default=250e-9, gt=0, description="s, duration of one read (1/f noise)")
    drift_scale: float = Field(default=1.0, ge=0, description="multiplies every exponent ν")
    read_noise_scale: float = Field(default=1.0, ge=0, description="multiplies the 1/f noise")


class CrossbarTiming(BaseModel):
    """What reads and pulses cost in device time."""

    model_config = ConfigDict(extra="forbid")

    read_time: float = Field(default=1e-6, ge=0, le=60, description="s per input vector read")
    pulse_width: float = Field(default=50e-9, ge=0, le=60, description="s per pulse time slot")
    pulse_overhead: float = Field(default=1e-6, ge=0, le=60, description="s per pulse train")
    real_time: bool = Field(default=False, description="let the virtual clock sleep")


class UpdateParameters(BaseModel):
    """Stochastic pulse update (Gokmen & Vlasov 2016), aihwkit defaults."""

    model_config = ConfigDict(extra="forbid")

    desired_bl: int = Field(default=31, ge=1, le=10_000, description="time slots per update")
    update_management: bool = Field(default=True, description="balance row/column probabilities")
    update_bl_management: bool = Field(default=True, description="use fewer slots when possible")


class CrossbarSettings(BaseModel):
    """Shape, pulsed-device model (aihwkit defaults), read path, retention, timing."""

    model_config = ConfigDict(extra="forbid")

    rows: int = Field(default=64, ge=1, le=1024, description="input lines")
    cols: int = Field(default=32, ge=1, le=1024, description="output lines")
    construction_seed: int | None = Field(
        default=None, ge=0, description="draws the device-to-device pattern; None: from the seed"
    )
    device_model: DeviceModel = "soft_bounds"
    dw_min: float = Field(default=0.001, gt=0, description="mean step per pulse")
    dw_min_dtod: float = Field(default=0.3, ge=0, description="d2d spread of the step, relative")
    dw_min_std: float = Field(default=0.3, ge=0, description="c2c noise per pulse, relative")
    up_down: float = Field(default=0.0, description="mean up/down asymmetry β")
    up_down_dtod: float = Field(default=0.01, ge=0, description="d2d spread of β")
    w_min: float = Field(default=-0.6, lt=0, description="mean lower bound")
    w_max: float = Field(default=0.6, gt=0, description="mean upper bound")
    w_min_dtod: float = Field(default=0.3, ge=0, description="d2d spread of w_min, relative")
    w_max_dtod: float = Field(default=0.3, ge=0, description="d2d spread of w_max, relative")
    mult_noise: bool = Field(default=True, description="linear/soft_bounds: step noise × step")
    gamma_up: float = Field(default=0.0, description="linear: step decrease towards w_max")
    gamma_down: float = Field(default=0.0, description="linear: step decrease towards w_min")
    gamma_up_dtod: float = Field(default=0.05, ge=0)
    gamma_down_dtod: float = Field(default=0.05, ge=0)
    mean_bound_reference: bool = Field(default=True, description="linear: slopes use mean bounds")
    exp_amp_up: float = Field(default=0.00081, description="exp: A_up")
    exp_amp_down: float = Field(default=0.36833, description="exp: A_down")
    exp_gamma_up: float = Field(default=12.44625, description="exp: γ_up")
    exp_gamma_down: float = Field(default=12.78785, description="exp: γ_down")
    exp_a: float = Field(default=0.244, description="exp: a")
    exp_b: float = Field(default=0.2425, description="exp: b")
    pow_gamma: float = Field(default=1.0, ge=0, description="pow: exponent γ")
    pow_gamma_dtod: float = Field(default=0.1, ge=0, description="pow: d2d spread of γ")
    pow_up_down: float = Field(default=0.0, description="pow: exponent asymmetry")
    write_noise_std: float = Field(default=0.0, ge=0, description="apparent-weight σ / dw_min")
    corrupt_devices_prob: float = Field(default=0.0, ge=0, le=1, description="stuck fraction")
    corrupt_devices_range: float = Field(default=0.1, ge=0, description="stuck values in ±range")
    max_pulse_count: int = Field(
        default=100_000, ge=1, le=1_000_000, description="refuse larger |counts|"
    )
    io: IOParameters = Field(default_factory=IOParameters)
    retention: Retention = Field(default_factory=Retention)
    timing: CrossbarTiming = Field(default_factory=CrossbarTiming)
    update: UpdateParameters = Field(default_factory=UpdateParameters)


@dataclass(frozen=True)
class ProgramResult:
    """Outcome of write-verify programming."""

    iterations: int  # read-then-pulse rounds
    converged: bool  # every |read − target| ≤ tolerance at the final read
    max_error: float  # max |read − target| at the final read
    errors: FloatArray  # final read − target, rows × cols
    pulses: int  # pulses sent in all


class CrossbarDevice(DeviceBase):
    """A rows × cols crossbar of pulsed memristive devices, read through an ADC/DAC periphery.

    The device-to-device pattern comes from a construction stream (a spawned child of `seed`, or
    `construction_seed`); each noise source has its own spawned stream (`noise_streams`).
    """

    Settings = CrossbarSettings

    def __init__(self, settings: CrossbarSettings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = s = settings if settings is not None else CrossbarSettings()
        construction, *streams = seed_sequence(seed).spawn(1 + len(NOISE_STREAMS))
        if s.construction_seed is not None:
            construction = np.random.SeedSequence(s.construction_seed)
        self.noise_streams: dict[str, np.random.Generator] = {
            name: np.random.default_rng(ss) for name, ss in zip(NOISE_STREAMS, streams, strict=True)
        }
        self._shape = (s.rows, s.cols)
        self._d2d, self._stuck, self._w = _draw_devices(s, np.random.default_rng(construction))
        self._up_down = _up_down_pairs(self._d2d)
        self._write_noise: FloatArray = np.zeros(self._shape)
        self._t_prog: FloatArray = np.zeros(self._shape)
        self._drift = s.retention.model == "pcm"
        self._w_ref = max(abs(s.w_min), abs(s.w_max))  # the weight that maps to g_max
        self._nu = self._exponents()
        # Without drift nothing reads ν while pulsing, so devices programmed since are only
        # marked here and their ν is brought up to date when it is read (`_current_exponents`).
        self._nu_stale: BoolArray = np.zeros(self._shape, dtype=bool)
        self._endurance: IntArray = np.zeros(self._shape, dtype=np.int64)
        self._clock = VirtualClock(real_time=s.timing.real_time)
        self._spec = _make_spec(s)
        self._inp_step = 2 * s.io.inp_bound * _resolution(s.io.inp_res)
        self._out_step = 2 * s.io.out_bound * _resolution(s.io.out_res)
        position = 1.0 - np.arange(s.rows) / s.rows
        self._ir_position: FloatArray = 1.0 - position**2
        self._measurements = 0
        self._reads = 0
        self._pulse_trains = 0
        self._closed = False

    # -- Device interface ------------------------------------------------------------------------

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> VirtualClock:
        return self._clock

    def set_controls(self, values: FloatArray) -> None:
        """A crossbar has no control electrodes: only an empty array is accepted."""
        arr = np.asarray(values, dtype=float)
        if arr.shape != (0,):
            raise ValueError(
                f"set_controls: a crossbar has no control channels (expected shape (0,), got "
                f"{arr.shape}); its weights change through apply_pulses / pulse_train / "
                "outer_product_update / program"
            )

    def measure(self, inputs: FloatArray) -> FloatArray:
        """Read x W for each input row (n_cases × rows → n_cases × cols) through the periphery.

        Costs read_time per input vector, including the repeats of bound management.
        """
        self._check_open()
        x = self._inputs(inputs)
        peak = _row_max(np.abs(x))  # NaN if a row holds one
        if not peak.max(initial=0.0) <= self.settings.io.inp_bound:
            raise self._range_violation(x)
        weights = self._read_weights()
        y, passes = self._forward(x, peak, weights)
        self._clock.advance(passes * self.settings.timing.read_time)
        self._measurements += x.shape[0]
        self._reads += passes
        return y

    def safe_state(self) -> None:
        """Nothing to ramp: rows are driven only during a read, so the array idles at 0 V."""

    def close(self) -> None:
        self._closed = True

    # -- ProgrammableState -----------------------------------------------------------------------

    def apply_pulses(self, pulses: npt.ArrayLike) -> None:
        """Send signed pulse counts (rows × cols; positive = potentiation), one pulse at a time.

        All devices pulse in parallel slots: the train lasts max|count| slots plus the overhead.
        """
        self._check_open()
        counts, magnitude, n_slots = self._counts(pulses)
        if n_slots == 0:
            return
        movable = np.flatnonzero((counts != 0) & ~self._stuck)
        active: npt.NDArray[np.intp]
        if n_slots == 1:  # one pulse each: no ordering needed
            order, active = movable, np.array([movable.size])
        else:
            order = movable[np.argsort(-magnitude.take(movable), kind="stable")]
            # devices still pulsing in slot k are the first active[k] of `order`
            active = np.searchsorted(-magnitude.take(order), -np.arange(n_slots), side="left")
        rng = self.noise_streams["step"]
        with self._pulse_train(order, n_slots):
            batch = _PulseBatch(self, order, counts.take(order) > 0)
            for m in active:
                batch.pulse(int(m), rng)
            batch.store(self._w)
            self._endurance += magnitude

    def pulse_train(self, row_pulses: npt.ArrayLike, col_pulses: npt.ArrayLike) -> int:
        """Play row and column pulse trains (n_slots × rows, n_slots × cols; sign or 0 per slot).

        A device gets a pulse in a slot when its row and its column both fire, in the direction
        sign(row)·sign(column). Returns the number of device pulses delivered.
        """
        self._check_open()
        rows, cols = self._slots(row_pulses, col_pulses)
        n_slots = rows.shape[0]
        if n_slots == 0:
            return 0
        coincidences = (np.abs(rows).T @ np.abs(cols)).astype(np.int64)
        touched = np.flatnonzero((coincidences > 0) & ~self._stuck)
        stuck = self._stuck.ravel()
        with self._pulse_train(touched, n_slots):
            for r, c in zip(rows, cols, strict=True):
                ri, ci = np.flatnonzero(r), np.flatnonzero(c)
                if ri.size == 0 or ci.size == 0:
                    continue
                idx = (ri[:, np.newaxis] * self.settings.cols + ci[np.newaxis, :]).ravel()
                up = (np.outer(r[ri], c[ci]) > 0).ravel()
                keep = ~stuck[idx]
                batch = _PulseBatch(self, idx[keep], up[keep])
                batch.pulse(batch.size, self.noise_streams["step"])
                batch.store(self._w)
            self._endurance += coincidences
        return int(coincidences.sum())

    def outer_product_update(
        self, x: npt.ArrayLike, d: npt.ArrayLike, lr: float, bl: int | None = None
    ) -> int:
        """Stochastic pulse update with E[Δw] ≈ lr·x dᵀ (x per row, d per column).

        Rows fire each of BL slots with probability A|x_i|, columns with B|d_j|, A·B = lr/(BL·
        dw_min); update management balances A and B, BL management uses only as many slots as
        keep the probabilities ≤ 1. Returns the number of device pulses delivered.
        """
        self._check_open()
        s, u = self.settings, self.settings.update
        xv = _vector(x, s.rows, "x")
        dv = _vector(d, s.cols, "d")
        if not math.isfinite(lr):
            raise ValueError(f"outer_product_update: lr must be finite, got {lr}")
        if lr < 0:
            lr, dv = -lr, -dv
        x_max, d_max = float(np.max(np.abs(xv))), float(np.max(np.abs(dv)))
        if lr == 0 or x_max == 0 or d_max == 0:
            return 0
        n_slots = u.desired_bl if bl is None else int(bl)
        if n_slots < 1:
            raise ValueError(f"outer_product_update: bl must be ≥ 1, got {bl}")
        if u.update_bl_management:
            n_slots = max(1, min(n_slots, math.ceil(lr * x_max * d_max / s.dw_min)))
        base = math.sqrt(lr / (n_slots * s.dw_min))
        ratio = math.sqrt(d_max / x_max) if u.update_management else 1.0
        p_row = np.minimum(base * ratio * np.abs(xv), 1.0)
        p_col = np.minimum(base / ratio * np.abs(dv), 1.0)
        rng = self.noise_streams["update"]
        rows = np.sign(xv) * (rng.random((n_slots, s.rows)) < p_row)
        cols = np.sign(dv) * (rng.random((n_slots, s.cols)) < p_col)
        return self.pulse_train(rows, cols)

    def read_state(self) -> FloatArray:
        """Read the apparent weights (write noise, drift and read noise included).

        Costs one read per row (the array is read row by row).
        """
        self._check_open()
        weights = self._read_weights()
        self._clock.advance(self.settings.rows * self.settings.timing.read_time)
        self._reads += self.settings.rows
        return weights

    def program(
        self,
        target: npt.ArrayLike,
        tolerance: float = 0.005,
        max_iterations: int = 20,
        *,
        max_pulses: int | None = None,
        patience: int = 3,
    ) -> ProgramResult:
        """Write-verify: read the state, pulse every device that is off by more than `tolerance`
        towards `target`, repeat. Step sizes are learnt per device and direction from what the
        pulses did; at most `max_pulses` per device and round (default: the full range in
        nominal steps). A device whose error shrank by less than 10 % in each of `patience`
        rounds of ≥ 10 pulses (at a bound, stuck) is left alone to spare its endurance; it shows
        in `errors`. Every read and pulse train costs device time.
        """
        self._check_open()
        s = self.settings
        goal = np.asarray(target, dtype=float)
        if goal.shape != self._shape or not np.all(np.isfinite(goal)):
            raise ValueError(f"program: target must be finite with shape {self._shape}")
        if not tolerance > 0 or max_iterations < 0 or patience < 1:
            raise ValueError("program: needs tolerance > 0, max_iterations ≥ 0, patience ≥ 1")
        cap = max_pulses if max_pulses is not None else math.ceil((s.w_max - s.w_min) / s.dw_min)
        cap = max(1, min(cap, s.max_pulse_count))
        step_up = np.full(self._shape, s.dw_min)  # learnt |Δw| per pulse, each direction
        step_down = np.full(self._shape, s.dw_min)
        stalled = np.zeros(self._shape, dtype=np.int64)
        state = self.read_state()
        sent, iterations = 0, 0
        while iterations < max_iterations:
            error = goal - state
            off = (np.abs(error) > tolerance) & (stalled < patience)
            if not off.any():
                break
            step = np.where(error > 0, step_up, step_down)
            n = np.where(off, np.rint(error / step), 0.0)
            n = np.where(off & (n == 0), np.sign(error), n)
            n = np.clip(n, -cap, cap).astype(np.int64)
            self.apply_pulses(n)
            sent += int(np.abs(n).sum())
            iterations += 1
            new = self.read_state()
            # only rounds of ≥ 10 pulses say much about a device's step (noise averages out)
            informative = np.abs(n) >= 10
            moved = (new - state) * np.sign(n)
            learn = informative & (moved > 0)
            observed = np.divide(moved, np.abs(n), out=np.zeros(self._shape), where=learn)
            # geometric blend of the old and the observed step, kept within sane limits
            blended = np.sqrt(step * np.clip(observed, 0.02 * s.dw_min, 50 * s.dw_min))
            step_up = np.where(learn & (n > 0), blended, step_up)
            step_down = np.where(learn & (n < 0), blended, step_down)
            # the error shrank by less than 10 %: no progress this round
            no_progress = np.abs(goal - new) > 0.9 * np.abs(error)
            stalled = np.where(informative, np.where(no_progress, stalled + 1, 0), stalled)
            state = new
        errors = state - goal
        max_error = float(np.max(np.abs(errors)))
        return ProgramResult(iterations, max_error <= tolerance, max_error, errors, sent)

    def advance(self, seconds: float) -> None:
        """Let `seconds` of device time pass with the array idle (retention: drift, 1/f)."""
        if not seconds >= 0:
            raise ValueError(f"advance: time must be ≥ 0, got {seconds}")
        self._clock.advance(seconds)

    idle = advance

    # -- oracle ----------------------------------------------------------------------------------

    @property
    def weights(self) -> FloatArray:
        """Hidden weights now (drift included; no write or read noise), a copy."""
        factor = self._drift_factor()
        return self._w.copy() if factor is None else self._w * factor

    def true_output(self, inputs: FloatArray) -> FloatArray:
        """Ideal read x W of the hidden weights, n_cases × cols; costs no device time."""
        x = self._inputs(inputs)
        y: FloatArray = x @ self.weights
        return y

    @property
    def d2d(self) -> Mapping[str, FloatArray]:
        """The frozen device-to-device parameters, rows × cols each, read-only.

        Always: w_min_bound, w_max_bound, step_up, step_down (|Δw| per pulse before the model
        factor), asymmetry (β), drift_xi (the ξ of the drift exponent); linear and soft_bounds:
        gamma_up, gamma_down (factor 1 + γ·w); pow: pow_gamma_up, pow_gamma_down.
        """
        return {name: _read_only(a) for name, a in self._d2d.items()}

    @property
    def stuck(self) -> BoolArray:
        """Which devices are stuck (never move), read-only."""
        return _read_only(self._stuck)

    @property
    def drift_exponents(self) -> FloatArray:
        """Each device's current drift exponent ν (0 for stuck devices), read-only."""
        return _read_only(self._current_exponents())

    @property
    def endurance(self) -> IntArray:
        """Pulses each device has received so far (stuck devices count too), read-only."""
        return _read_only(self._endurance)

    @property
    def measurements(self) -> int:
        """Input vectors measured (cases of `measure`)."""
        return self._measurements

    @property
    def reads(self) -> int:
        """Input vectors sent through the array (bound-management repeats and state reads too)."""
        return self._reads

    @property
    def pulse_trains(self) -> int:
        """Pulse trains sent."""
        return self._pulse_trains

    # -- what reaches the rows (for the guard) ---------------------------------------------------

    def applied_levels(self, values: FloatArray, channels: Sequence[str]) -> FloatArray:
        """The row DAC's levels for input rows: noise management divides each row by its max |x|
        before the DAC (so a row is driven at full scale), then the DAC rounds; bound management
        only divides further. Needs every row channel, as `measure` does."""
        names = [c.name for c in self._spec.inputs]
        if list(channels) != names:
            raise ValueError(f"the crossbar drives all its rows together: expected {names}")
        x = np.array(values, dtype=float)
        io = self.settings.io
        peak = _row_max(np.abs(x))
        alpha = None
        x_max = float(np.max(peak, initial=0.0))
        if io.noise_management == "abs_max":
            alpha = np.where(peak == 0, 1.0, peak)
            x_max = 1.0
        return _quantize_in_place(_normalised(x, alpha), self._inp_step, io.inp_bound, x_max)

    def restored_levels(self, state: JSONDict) -> dict[str, float]:
        """None: rows are driven only during a read, so a restored array idles at 0 V."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"CrossbarDevice state version {state.get('version')!r}, expected {STATE_VERSION}"
            )
        return {}

    # -- checkpoint --------------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Weights, device parameters, counters, clock and every generator (JSON-serialisable)."""
        return {
            "version": STATE_VERSION,
            "shape": list(self._shape),
            "device_model": self.settings.device_model,
            "clock": self._clock.now(),
            "weights": self._w.tolist(),
            "write_noise": self._write_noise.tolist(),
            "programmed_at": self._t_prog.tolist(),
            "drift_exponents": self._current_exponents().tolist(),
            "endurance": self._endurance.tolist(),
            "stuck": self._stuck.tolist(),
            "d2d": {name: a.tolist() for name, a in self._d2d.items()},
            "counters": {
                "measurements": self._measurements,
                "reads": self._reads,
                "pulse_trains": self._pulse_trains,
            },
            "rng": {name: generator_state(g) for name, g in self.noise_streams.items()},
        }

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore a state from `state_dict` of a device with the same shape and model."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"CrossbarDevice state version {state.get('version')!r}, expected {STATE_VERSION}"
            )
        if tuple(state["shape"]) != self._shape or state["device_model"] != (
            self.settings.device_model
        ):
            raise ValueError(
                f"CrossbarDevice state is for a {tuple(state['shape'])} {state['device_model']} "
                f"array; this one is {self._shape} {self.settings.device_model}"
            )
        if set(state["d2d"]) != set(self._d2d) or set(state["rng"]) != set(self.noise_streams):
            raise ValueError("CrossbarDevice state: device parameters or generators do not match")
        arrays = {
            name: _grid(state[name], self._shape)
            for name in ("weights", "write_noise", "programmed_at", "drift_exponents")
        }
        endurance = _grid(state["endurance"], self._shape).astype(np.int64)
        stuck = _grid(state["stuck"], self._shape) != 0
        d2d = {name: _grid(v, self._shape) for name, v in state["d2d"].items()}
        for name, g in self.noise_streams.items():
            restore_generator(g, state["rng"][name])
        self._w = arrays["weights"]
        self._write_noise = arrays["write_noise"]
        self._t_prog = arrays["programmed_at"]
        self._nu = arrays["drift_exponents"]
        self._nu_stale = np.zeros(self._shape, dtype=bool)
        self._endurance = endurance
        self._stuck = stuck
        self._d2d = d2d
        self._up_down = _up_down_pairs(d2d)
        self._clock.set(float(state["clock"]))
        counters = state["counters"]
        self._measurements = int(counters["measurements"])
        self._reads = int(counters["reads"])
        self._pulse_trains = int(counters["pulse_trains"])

    # -- read path -------------------------------------------------------------------------------

    def _read_weights(self) -> FloatArray:
        """The weights one read sees: apparent (write noise), drifted, with 1/f read noise."""
        w = self._w + self._write_noise
        factor = self._drift_factor()
        if factor is None:
            return w
        r = self.settings.retention
        w = w * factor
        if r.read_noise_scale > 0:
            g = np.abs(self._w) / self._w_ref
            q_s = np.minimum(0.0088 / np.maximum(g**0.65, 1e-3), 0.2)
            t = self._clock.now() - self._t_prog + r.t0
            sigma = q_s * np.sqrt(np.log((t + r.t_read) / (2 * r.t_read)))
            xi = self.noise_streams["retention"].standard_normal(self._shape)
            w = w * np.maximum(1.0 + r.read_noise_scale * sigma * xi, 0.0)
        return w

    def _forward(
        self, x: FloatArray, peak: FloatArray, weights: FloatArray
    ) -> tuple[FloatArray, int]:
        """y = F(W, x) for every row of x; returns y and the number of passes made.

        `peak` (max |x| per row) becomes the noise-management divisor, so it is changed.
        """
        io = self.settings.io
        n = x.shape[0]
        alpha: FloatArray | None = None  # noise management: each row divided by its max |x|
        if io.noise_management == "abs_max":
            alpha = peak
            alpha[alpha == 0] = 1.0
            x_max = 1.0  # bounds max |x / alpha|
        else:
            x_max = float(np.max(peak, initial=0.0))
        y, clipped = self._single_pass(_normalised(x, alpha), x_max, weights)
        passes = n
        scale: FloatArray | None = None  # bound management: inputs divided down further
        if io.bound_management == "iterative" and clipped.any():
            scale = np.ones(n)
            inp_res = _resolution(io.inp_res)
            todo = clipped
            while todo.any():
                doubled = 2 * scale
                todo &= doubled <= io.max_bm_factor
                if inp_res > 0:
                    todo &= inp_res * doubled <= io.max_bm_res
                redo = np.flatnonzero(todo)
                if redo.size == 0:
                    break
                scale[redo] = doubled[redo]
                xt = _normalised(x[redo], None if alpha is None else alpha[redo])
                xt /= scale[redo, np.newaxis]
                y[redo], again = self._single_pass(xt, x_max, weights)
                passes += redo.size
                todo = np.zeros(n, dtype=bool)
                todo[redo] = again
        if scale is not None:
            y *= (scale if alpha is None else scale * alpha)[:, np.newaxis]
        elif alpha is not None:
            y *= alpha[:, np.newaxis]
        return y, passes

    def _single_pass(
        self, xt: FloatArray, x_max: float, weights: FloatArray
    ) -> tuple[FloatArray, BoolArray]:
        """One analog pass on normalised inputs: DAC, MAC, read noise, IR drop, noise, ADC.

        `xt` (|xt| ≤ x_max) is the caller's fresh array: the DAC rounds it in place. In-place
        where possible: fewer large temporaries keep batches fast.
        """
        io = self.settings.io
        rng = self.noise_streams["read"]
        xq = _quantize_in_place(xt, self._inp_step, io.inp_bound, x_max)
        if io.inp_noise > 0:
            xq += io.inp_noise * rng.standard_normal(xq.shape)
        y: FloatArray = xq @ weights
        if io.w_noise > 0:
            if io.w_noise_type == "additive_constant":
                spread = np.sqrt(np.sum(xq**2, axis=1, keepdims=True))
            else:
                spread = np.sqrt(xq**2 @ np.abs(weights))
            y += io.w_noise * spread * rng.standard_normal(y.shape)
        if io.ir_drop > 0:
            a = (self.settings.rows / io.ir_drop_g_ratio) * (np.abs(xq) @ np.abs(weights))
            c = a * (a * (0.05 * a - 0.2) + 0.5)
            y -= io.ir_drop * c * ((xq * self._ir_position) @ weights)
        if io.out_noise > 0:
            noise = rng.standard_normal(y.shape)
            noise *= io.out_noise
            y += noise
        if self._out_step > 0:
            y /= self._out_step
            np.rint(y, out=y)
            y *= self._out_step
        return y, _saturate(y, io.out_bound)

    # -- pulses and retention ----------------------------------------------------------------------

    @contextmanager
    def _pulse_train(self, touched: IntArray, n_slots: int) -> Iterator[None]:
        """Around one train: settle the drift of the touched devices (flat indices), charge the
        time, then re-program their retention state and write noise."""
        factor = self._drift_factor(touched)
        if factor is not None:
            _flat(self._w)[touched] *= factor
        yield
        t = self.settings.timing
        self._clock.advance(n_slots * t.pulse_width + t.pulse_overhead)
        self._pulse_trains += 1
        if touched.size == 0:
            return
        _flat(self._t_prog)[touched] = self._clock.now()
        if self._drift:
            _flat(self._nu)[touched] = self._exponents(touched)
        else:
            _flat(self._nu_stale)[touched] = True
        sigma = self.settings.write_noise_std * self.settings.dw_min
        if sigma > 0:
            noise = sigma * self.noise_streams["write"].standard_normal(touched.size)
            _flat(self._write_noise)[touched] = noise

    def _drift_factor(self, devices: IntArray | None = None) -> FloatArray | None:
        """(t/t0)^−ν per device since its last programming, or None without drift; given flat
        indices, only for those devices."""
        if not self._drift:
            return None
        r = self.settings.retention
        t_prog, nu = self._t_prog, self._nu
        if devices is not None:
            t_prog, nu = t_prog.take(devices), nu.take(devices)
        t = self._clock.now() - t_prog + r.t0
        factor: FloatArray = (t / r.t0) ** (-r.drift_scale * nu)
        return factor

    def _exponents(self, devices: IntArray | None = None) -> FloatArray:
        """PCM drift exponents ν = |μ(ĝ) + σ(ĝ)ξ| at the weights now (stuck devices: 0); given
        flat indices, only for those devices."""
        w, xi, stuck = self._w, self._d2d["drift_xi"], self._stuck
        if devices is not None:
            w, xi, stuck = w.take(devices), xi.take(devices), stuck.take(devices)
        log_g = np.log(np.maximum(np.abs(w) / self._w_ref, _G_FLOOR))
        mu = np.clip(_NU_MEAN[0] * log_g + _NU_MEAN[1], _NU_MEAN[2], _NU_MEAN[3])
        sd = np.clip(_NU_STD[0] * log_g + _NU_STD[1], _NU_STD[2], _NU_STD[3])
        nu = np.abs(mu + sd * xi)
        return np.where(stuck, 0.0, nu)

    def _current_exponents(self) -> FloatArray:
        """ν, first brought up to date for the devices programmed while drift was off."""
        if self._nu_stale.any():
            self._nu[self._nu_stale] = self._exponents(np.flatnonzero(self._nu_stale))
            self._nu_stale[:] = False
        return self._nu

    # -- checks ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentDisconnected(
                f"device {self._spec.name!r} is closed; build a new one to use it again"
            )

    def _inputs(self, inputs: object) -> FloatArray:
        x = np.asarray(inputs, dtype=float)  # only read, never written
        if x.ndim != 2 or x.shape[1] != self.settings.rows:
            raise ValueError(
                f"inputs: expected shape (n_cases, {self.settings.rows}), got {x.shape}"
            )
        return x

    def _range_violation(self, x: FloatArray) -> SafetyViolation:
        """The refusal (never a clamp) of inputs x that hold a non-finite value or one outside
        ±inp_bound: about the first such value."""
        bound = self.settings.io.inp_bound
        bad = ~np.isfinite(x) | (np.abs(x) > bound)
        row, col = (int(i) for i in np.argwhere(bad)[0])
        return SafetyViolation(
            f"row{col}",
            float(x[row, col]),
            f"the device range [{-bound:g}, {bound:g}] V",
            f"input case {row}; the simulator refuses it as the instrument would",
        )

    def _counts(self, pulses: object) -> tuple[IntArray, IntArray, int]:
        """Checked pulse counts as int64 (possibly the caller's array), their magnitudes and the
        largest magnitude."""
        arr = np.asarray(pulses)
        if arr.shape != self._shape:
            raise ValueError(f"apply_pulses: expected shape {self._shape}, got {arr.shape}")
        if arr.dtype.kind not in "iuf":  # signed, unsigned, floating (bool is kind "b")
            raise ValueError(f"apply_pulses: expected integer pulse counts, got {arr.dtype}")
        if arr.dtype.kind == "f" and not (np.all(np.isfinite(arr)) and np.all(arr == np.rint(arr))):
            raise ValueError("apply_pulses: pulse counts must be finite whole numbers")
        limit = self.settings.max_pulse_count
        low, high = int(arr.min()), int(arr.max())  # before the cast to int64 could wrap
        if max(-low, high) > limit:
            raise ValueError(
                f"apply_pulses: |count| {max(-low, high)} exceeds max_pulse_count {limit}"
            )
        counts = arr.astype(np.int64, copy=False)
        return counts, np.abs(counts), max(-low, high)

    def _slots(self, row_pulses: object, col_pulses: object) -> tuple[FloatArray, FloatArray]:
        s = self.settings
        rows = np.array(row_pulses, dtype=float)
        cols = np.array(col_pulses, dtype=float)
        if rows.ndim != 2 or rows.shape[1] != s.rows or cols.ndim != 2 or cols.shape[1] != s.cols:
            raise ValueError(
                f"pulse_train: expected (n_slots, {s.rows}) and (n_slots, {s.cols}), got "
                f"{rows.shape} and {cols.shape}"
            )
        if rows.shape[0] != cols.shape[0]:
            raise ValueError(f"pulse_train: {rows.shape[0]} row slots but {cols.shape[0]} column")
        if not (np.all(np.isfinite(rows)) and np.all(np.isfinite(cols))):
            raise ValueError("pulse_train: pulse levels must be finite")
        if rows.shape[0] > s.max_pulse_count:
            raise ValueError(f"pulse_train: more than max_pulse_count {s.max_pulse_count} slots")
        return np.sign(rows), np.sign(cols)


class _PulseBatch:
    """Devices that receive pulses in one direction each, their parameters gathered once.

    `pulse(m, rng)` gives one pulse to the first m of them (callers order devices so that the
    ones still pulsing come first); `store` writes the weights back.
    """

    p1: FloatArray  # linear/soft_bounds: γ; exp: 2a/(b_max − b_min); pow: exponent
    amp: FloatArray
    gam: FloatArray
    ref: FloatArray
    inv_range: FloatArray

    def __init__(self, device: CrossbarDevice, idx: IntArray, up: BoolArray) -> None:
        s = device.settings
        d2d = device._d2d
        self.idx = idx
        self.size = int(idx.size)
        self.model = s.device_model
        self.sign = np.where(up, 1.0, -1.0)
        self.lo = d2d["w_min_bound"].take(idx)
        self.hi = d2d["w_max_bound"].take(idx)
        pick = idx + up * device._w.size  # into the (down, up) pairs of `_up_down_pairs`
        self.scale = device._up_down["step"].take(pick)
        self.w = device._w.take(idx)
        self.std = s.dw_min_std
        self.additive = self.model in ("linear", "soft_bounds") and not s.mult_noise
        if self.model in ("linear", "soft_bounds"):
            self.p1 = device._up_down["gamma"].take(pick)
        elif self.model == "exp":
            self.p1 = 2 * s.exp_a / (self.hi - self.lo)  # z = p1·w + b
            self.amp = np.where(up, s.exp_amp_up, s.exp_amp_down)
            self.gam = np.where(up, s.exp_gamma_up, -s.exp_gamma_down)
            self.b = s.exp_b
        elif self.model == "pow":
            self.p1 = device._up_down["pow_gamma"].take(pick)
            self.ref = np.where(up, self.hi, self.lo)
            self.inv_range = 1.0 / (self.hi - self.lo)

    def factor(self, w: FloatArray, m: int) -> FloatArray | None:
        """The model's step factor at weights w (the first m devices); None means 1."""
        if self.model in ("linear", "soft_bounds"):
            return np.maximum(1.0 + self.p1[:m] * w, 0.0)
        if self.model == "exp":
            z = self.p1[:m] * w + self.b
            return np.maximum(1.0 - self.amp[:m] * np.exp(self.gam[:m] * z), 0.0)
        if self.model == "pow":
            omega = self.sign[:m] * (self.ref[:m] - w) * self.inv_range[:m]
            power: FloatArray = np.maximum(omega, 0.0) ** self.p1[:m]
            return power
        return None

    def pulse(self, m: int, rng: np.random.Generator) -> None:
        if m == 0:
            return
        w = self.w[:m]
        factor = self.factor(w, m)
        step = self.scale[:m] if factor is None else self.scale[:m] * factor
        if self.std > 0:
            xi = rng.standard_normal(m)
            if self.additive:
                step = self.scale[:m] * ((1.0 if factor is None else factor) + self.std * xi)
            else:
                step = step * (1.0 + self.std * xi)
        # np.clip(w + sign·step, lo, hi, out=w), which is slower with array bounds
        np.maximum(w + self.sign[:m] * step, self.lo[:m], out=w)
        np.minimum(w, self.hi[:m], out=w)

    def store(self, weights: FloatArray) -> None:
        _flat(weights)[self.idx] = self.w


def _draw_devices(
    s: CrossbarSettings, rng: np.random.Generator
) -> tuple[dict[str, FloatArray], BoolArray, FloatArray]:
    """The d2d parameters, the stuck mask and the initial weights (0, or the stuck value).

    Every ξ is drawn whatever the settings, so one construction seed is one fixed pattern.
    """
    shape = (s.rows, s.cols)
    names = ("w_max", "w_min", "dw", "up_down", "gamma_up", "gamma_down", "pow_gamma", "nu")
    xi = {name: rng.standard_normal(shape) for name in names}
    stuck = rng.random(shape) < s.corrupt_devices_prob
    stuck_value = s.corrupt_devices_range * rng.uniform(-1.0, 1.0, shape)
    b_max = np.abs(s.w_max * (1 + s.w_max_dtod * xi["w_max"]))
    b_min = -np.abs(s.w_min * (1 + s.w_min_dtod * xi["w_min"]))
    beta = s.up_down + s.up_down_dtod * xi["up_down"]
    d2d: dict[str, FloatArray] = {
        "asymmetry": beta,
        "step_up": s.dw_min * np.abs(1 + beta + s.dw_min_dtod * xi["dw"]),
        "step_down": s.dw_min * np.abs(1 - beta + s.dw_min_dtod * xi["dw"]),
        "drift_xi": xi["nu"],
    }
    if s.device_model == "linear":
        ref_max = s.w_max if s.mean_bound_reference else b_max
        ref_min = s.w_min if s.mean_bound_reference else b_min
        d2d["gamma_up"] = -np.abs(s.gamma_up + s.gamma_up_dtod * xi["gamma_up"]) / ref_max
        d2d["gamma_down"] = -np.abs(s.gamma_down + s.gamma_down_dtod * xi["gamma_down"]) / ref_min
    elif s.device_model == "soft_bounds":
        d2d["gamma_up"] = -1.0 / b_max
        d2d["gamma_down"] = -1.0 / b_min
    elif s.device_model == "pow":
        spread = s.pow_gamma_dtod * xi["pow_gamma"]
        d2d["pow_gamma_up"] = s.pow_gamma * np.abs(1 + s.pow_up_down + spread)
        d2d["pow_gamma_down"] = s.pow_gamma * np.abs(1 - s.pow_up_down + spread)
    d2d["w_max_bound"] = np.where(stuck, stuck_value, b_max)
    d2d["w_min_bound"] = np.where(stuck, stuck_value, b_min)
    weights = np.where(stuck, stuck_value, 0.0)
    return d2d, stuck, weights


def _up_down_pairs(d2d: Mapping[str, FloatArray]) -> dict[str, FloatArray]:
    """The d2d parameters that depend on the pulse direction, flat (down, up) pairs: entry i
    is device i's value for a pulse down, entry i + size for a pulse up (one gather each)."""
    names = {
        "step": ("step_down", "step_up"),
        "gamma": ("gamma_down", "gamma_up"),
        "pow_gamma": ("pow_gamma_down", "pow_gamma_up"),
    }
    return {
        name: np.concatenate((d2d[down].ravel(), d2d[up].ravel()))
        for name, (down, up) in names.items()
        if up in d2d
    }


def _make_spec(s: CrossbarSettings) -> DeviceSpec:
    bound = s.io.inp_bound
    inputs = [
        Channel(name=f"row{i}", role=Role.INPUT, min=-bound, max=bound, unit="V")
        for i in range(s.rows)
    ]
    outputs = [Channel(name=f"col{j}", role=Role.OUTPUT, unit="a.u.") for j in range(s.cols)]
    return DeviceSpec(name="crossbar", channels=(*inputs, *outputs), settle_time=s.timing.read_time)


def _resolution(res: float) -> float:
    """aihwkit resolution: a fraction of the full range, or (> 1) a number of steps; 0 = off."""
    if res <= 0:
        return 0.0
    return 1.0 / res if res > 1 else res


def _flat(a: _Array) -> _Array:
    """A flat view of a C-contiguous array (every state array is): writes go through to `a`."""
    if not a.flags.c_contiguous:
        raise ValueError("a flat view needs a C-contiguous array")
    return a.reshape(-1)  # type: ignore[return-value]


def _normalised(x: FloatArray, alpha: FloatArray | None) -> FloatArray:
    """x with each row divided by its alpha (None: all 1), in a new array."""
    return x.copy() if alpha is None else x / alpha[:, np.newaxis]


def _quantize_in_place(v: FloatArray, step: float, bound: float, v_max: float) -> FloatArray:
    """Round v to multiples of `step` (0: no rounding) and clip to ±bound, in place.

    v_max bounds |v|; rounding is monotonic and symmetric, so when even v_max stays within
    ±bound after rounding, clipping cannot change anything and is skipped.
    """
    if step > 0:
        v /= step
        np.rint(v, out=v)
        v *= step
        v_max = float(np.rint(v_max / step)) * step
    if v_max > bound:
        np.clip(v, -bound, bound, out=v)
    return v


def _row_max(a: FloatArray) -> FloatArray:
    """The maximum of each row of a 2-D array (NaN if the row holds one).

    Same values as a.max(axis=1), but reduced over row segments of the flat array, which is
    about twice as fast for short rows.
    """
    n, width = a.shape
    flat = _flat(np.ascontiguousarray(a))
    row_max: FloatArray = np.maximum.reduceat(flat, np.arange(0, n * width, width))
    return row_max


def _saturate(y: FloatArray, bound: float) -> BoolArray:
    """Clip y to ±bound in place; which rows reached the bound."""
    if y.max(initial=-np.inf) < bound and y.min(initial=np.inf) > -bound:
        return np.zeros(y.shape[0], dtype=bool)  # the common case: nothing to clip
    clipped: BoolArray = np.any((y >= bound) | (y <= -bound), axis=1)
    np.clip(y, -bound, bound, out=y)
    return clipped


def _vector(values: npt.ArrayLike, n: int, name: str) -> FloatArray:
    v = np.array(values, dtype=float)
    if v.shape != (n,) or not np.all(np.isfinite(v)):
        raise ValueError(f"outer_product_update: {name} must be finite with shape ({n},)")
    return v


def _grid(values: object, shape: tuple[int, int]) -> FloatArray:
    arr = np.array(values, dtype=float)
    if arr.shape != shape:
        raise ValueError(f"CrossbarDevice state: expected an array of shape {shape}")
    return arr


def _read_only(a: _Array) -> _Array:
    view = a.view()
    view.flags.writeable = False
    return view
