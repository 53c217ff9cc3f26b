"""A mixed-signal MLP chip (BrainScaleS-2 / hxtorch-like) as a training device.

Every layer is an analog multiply-accumulate (MAC) on a synapse array whose rows carry the layer's
inputs and whose columns (neurons) sum them; the weights sit in volatile weight DACs and are the
trainable controls. One evaluation of one input row runs the layers in turn:

    x ─input DAC─► codes 0…2^input_bits−1 (UInt5)
    per analog pass (≤ rows_per_block inputs, 128 as on the chip):
        u = G_j · gain·n_sends · Σ_i x_i W_ij + o_j        # G, o: per-column fixed pattern
            + flicker_j(t) + drift_j(t)                    # slow per-column noise (OU banks)
        s = settle(u)                                      # first-order, from the last pass
        y = sat(floor(s + membrane·ξ))                     # ADC: floor, clamp to int8
    sum the passes digitally, clamp to int8
    hidden layers: ReLU, then shift right by `activation_shift` bits and clamp to the next layer's
    input codes (hxtorch's converting ReLU: int8 0…127 ≫ 2 = 0…31); the last layer is returned.

Interfaces are quantised as on the chip: fractional inputs are rounded to the nearest input code
and fractional weights to the nearest weight code (ties to even, as numpy/torch `round`), outputs
are floored as in hxtorch's MAC model (in float64). Inputs, weights and outputs are in LSB (codes).
Weights are signed ±(2^(weight_bits−1) − 1), ±31 for 6 bits: a symmetric sign-magnitude range, so
+w and −w are both exact and 0 is a code. BrainScaleS-2 builds a signed weight from two 6-bit
unsigned synapses on a pair of rows, which reaches ±63: that chip is weight_bits = 7.

Non-idealities (each off at 0 / None, and then without any effect on the output): per-column gain
and offset mismatch (a fixed pattern drawn once from `chip_seed`, not from the run seed: another
`chip_seed` is another chip, and the pattern is the same across resets and runs so calibration has
something real to remove), white membrane noise per pass, 1/f noise and OU drift per column
(sampled once per evaluation, so they evolve with device time), incomplete settling (time constant
`timing.tau`: a pass keeps exp(−settle_time/τ) of the column's previous pass), saturation at the
int8 rails. The digital interfaces (input, weight and output codes, the converting ReLU) are the
chip's protocol, not non-idealities; their widths are settings. Each layer has its own columns (a
tiled chip); BrainScaleS-2 runs the layers one after another on one array, which would share the
fixed pattern between layers.

Node perturbation (the `NodePerturbable` capability): `measure_nodes(inputs, offsets)` is `measure`
with an extra offset per case and neuron added to every layer's pre-activation, in output LSB (the
membrane units), before settling, membrane noise and the ADC floor; on BrainScaleS-2 this is a
per-neuron offset current (a DAC on the neuron's membrane), which, unlike the synapse drive, does
not go through the column gain. It is injected on the first analog pass of a layer, so the
layer's summed output moves by the offset once. It also reports what every layer received: the
input codes for layer 0 and the converted ReLU codes for the later layers (readable on the chip
through the CADC). Offsets beyond ±`max_node_offset` are refused like any out-of-range request.

Time: one evaluation takes `timing.settle_time + timing.conversion_time` per analog pass (every
pass of every layer, in turn); `measure` advances the virtual clock by that per input row, and
`spec.plateau_time()` is that time. Writing weights costs no device time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated

import numpy as np
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
from simulators.noise import LowPass, OUBank, flicker_poles

STATE_VERSION = 1

#: Evaluation time of the default network ([4, 8, 2]: 2 passes × (5 + 2) µs), used only to derive
#: the default 1/f level below.
_DEFAULT_EVALUATION_TIME = 2 * (5e-6 + 2e-6)
#: One-sided PSD (LSB²/Hz) of the 2-LSB white membrane noise sampled once per default evaluation,
#: 2σ²·T; the default 1/f noise meets it at 100 Hz, the reference's corner assumption.
_DEFAULT_FLICKER_PSD = 2 * 2.0**2 * _DEFAULT_EVALUATION_TIME

SendCount = Annotated[int, Field(ge=1, le=10_000)]
MAX_WEIGHTS = 20_000
"""Most weights (control channels) of a simulated chip."""


class Mismatch(BaseModel):
    """Per-column fixed pattern (drawn once from `chip_seed`); 0 switches a part off."""

    model_config = ConfigDict(extra="forbid")

    gain: float = Field(
        default=0.03, ge=0, le=0.2, description="σ of the relative column gain error G − 1"
    )
    offset: float = Field(default=2.0, ge=0, description="σ of the column offset, LSB")


class AnalogNoise(BaseModel):
    """Temporal noise per column, in output LSB; 0 switches a source off."""

    model_config = ConfigDict(extra="forbid")

    membrane: float = Field(default=2.0, ge=0, description="white σ per analog pass, LSB")
    flicker_psd: float = Field(
        default=_DEFAULT_FLICKER_PSD,
        ge=0,
        description="1/f PSD at flicker_f_ref, LSB²/Hz (default: meets the white membrane noise "
        "of the default evaluation rate at 100 Hz)",
    )
    flicker_f_ref: float = Field(default=100.0, gt=0, description="Hz")
    flicker_f_lo: float = Field(
        default=0.01, ge=1e-9, description="Hz, lowest 1/f corner (at least 1e-9)"
    )
    flicker_f_hi: float | None = Field(
        default=None, gt=0, description="Hz, highest 1/f corner; None: half the evaluation rate"
    )
    flicker_poles_per_decade: float = Field(default=2.0, gt=0, le=20, description="at most 20")
    drift_std: float = Field(default=1.0, ge=0, description="σ of the slow OU drift, LSB")
    drift_tau: float = Field(default=300.0, gt=0, description="s, drift correlation time")


class AnalogTiming(BaseModel):
    """Device time per analog pass, and the settling of the columns."""

    model_config = ConfigDict(extra="forbid")

    settle_time: float = Field(
        default=5e-6, ge=0, le=60, description="s per analog pass before the ADC"
    )
    conversion_time: float = Field(default=2e-6, ge=0, le=60, description="s per ADC conversion")
    tau: float | None = Field(
        default=1e-6,
        gt=0,
        description="s, column time constant; a pass keeps exp(−settle_time/tau) of the "
        "column's previous value; None: settles completely",
    )
    real_time: bool = Field(default=False, description="let the virtual clock sleep")

    @model_validator(mode="after")
    def _settling(self) -> AnalogTiming:
        if self.tau is not None and self.settle_time == 0:
            raise ValueError(
                "timing.tau needs timing.settle_time > 0 (with no settling time a column never "
                "leaves its previous value); set a settle_time or tau: null"
            )
        if self.settle_time + self.conversion_time <= 0:
            raise ValueError("timing: settle_time + conversion_time must be > 0")
        return self


class AnalogMLPDevice(DeviceBase):
    """Simulated analog MLP chip: weights are the controls, int8 outputs of the last layer.

    Channels: inputs "x0…" (LSB, [0, 2^input_bits − 1]), controls "w{layer}_{row}_{col}" (LSB,
    ±(2^(weight_bits−1) − 1)) with row the synapse row (the layer's input) and col the neuron
    column (the layer's output), in layer, row, col order; outputs "y0…" (LSB). The temporal noise
    comes from `seed` (three spawned streams), the fixed pattern from `settings.chip_seed`.
    """

    class Settings(BaseModel):
        """Network shape, interface widths, analog gain, fixed pattern, noise and timing."""

        model_config = ConfigDict(extra="forbid")

        layers: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
            default=[4, 8, 2],
            min_length=2,
            max_length=9,
            description="inputs, hidden widths…, outputs (at most 4096 each, 20000 weights)",
        )
        chip_seed: int = Field(default=0, ge=0, description="draws the fixed pattern: the chip")
        input_bits: int = Field(default=5, ge=1, le=16, description="unsigned input codes")
        weight_bits: int = Field(
            default=6, ge=2, le=16, description="signed weights ±(2^(bits−1) − 1)"
        )
        output_bits: int = Field(default=8, ge=2, le=16, description="signed ADC codes")
        gain: float = Field(default=0.002, gt=0, description="LSB per (input·weight) per send")
        n_sends: SendCount | list[SendCount] | None = Field(
            default=None,
            description="input repetitions per pass, one for all layers or one per layer; None: "
            "per layer, so typical inputs and uniform weights give outputs of σ ≈ a quarter of "
            "the positive output range (see _n_sends)",
        )
        activation_shift: int | None = Field(
            default=None,
            ge=0,
            le=32,
            description="bits the ReLU'd hidden outputs are shifted right; None: "
            "output_bits − 1 − input_bits (int8 0…127 to 5-bit 0…31)",
        )
        rows_per_block: Annotated[int, Field(ge=1, le=4096)] = Field(
            default=128, description="inputs per analog pass; wider layers take several passes"
        )
        saturation: bool = Field(default=True, description="clamp each pass and sum to the rails")
        max_node_offset: float | None = Field(
            default=None,
            ge=0,
            description="largest |offset| measure_nodes accepts, output LSB; None: "
            "2^(output_bits−1), the output range (128 for int8)",
        )
        mismatch: Mismatch = Field(default_factory=Mismatch)
        noise: AnalogNoise = Field(default_factory=AnalogNoise)
        timing: AnalogTiming = Field(default_factory=AnalogTiming)

        @model_validator(mode="after")
        def _consistent(self) -> AnalogMLPDevice.Settings:
            n_layers = len(self.layers) - 1
            weights = sum(a * b for a, b in itertools.pairwise(self.layers))
            if weights > MAX_WEIGHTS:
                raise ValueError(
                    f"layers {self.layers} have {weights} weights, more than {MAX_WEIGHTS}; "
                    "use smaller layers"
                )
            if isinstance(self.n_sends, list) and len(self.n_sends) != n_layers:
                raise ValueError(
                    f"n_sends: give one value per layer ({n_layers}), got {len(self.n_sends)}"
                )
            n = self.noise
            nyquist = 0.5 / evaluation_time(self)
            hi = n.flicker_f_hi if n.flicker_f_hi is not None else nyquist
            if n.flicker_psd > 0:
                if hi > nyquist:
                    raise ValueError(
                        f"noise.flicker_f_hi {hi} Hz is above half the evaluation rate "
                        f"({nyquist:g} Hz); lower it"
                    )
                if not n.flicker_f_lo < hi:
                    raise ValueError(
                        f"noise.flicker_f_lo {n.flicker_f_lo} Hz must be below the top of the "
                        f"1/f band ({hi:g} Hz)"
                    )
                if not n.flicker_f_lo <= n.flicker_f_ref <= hi:
                    raise ValueError(
                        f"noise.flicker_f_ref {n.flicker_f_ref} Hz must lie in the 1/f band "
                        f"[{n.flicker_f_lo}, {hi:g}] Hz"
                    )
            return self

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = s = settings if settings is not None else self.Settings()
        self._sizes = list(zip(s.layers[:-1], s.layers[1:], strict=True))
        self._x_max = 2**s.input_bits - 1
        self._w_max = 2 ** (s.weight_bits - 1) - 1
        self._y_min = -(2 ** (s.output_bits - 1))
        self._y_max = 2 ** (s.output_bits - 1) - 1
        self._node_offset_limit = (
            s.max_node_offset if s.max_node_offset is not None else float(2 ** (s.output_bits - 1))
        )
        self._shift = (
            s.activation_shift
            if s.activation_shift is not None
            else max(0, s.output_bits - 1 - s.input_bits)
        )
        self._n_sends = _n_sends(s, self._x_max, self._w_max, self._shift)
        self._layer_gains = [s.gain * n for n in self._n_sends]
        self._eval_time = evaluation_time(s)
        self._passes = [math.ceil(n_in / s.rows_per_block) for n_in, _ in self._sizes]
        n_columns = [n_out for _, n_out in self._sizes]
        self._col_start = np.concatenate([[0], np.cumsum(n_columns)]).astype(int)
        self._gains, self._offsets = _fixed_pattern(s, n_columns)
        self._weights: list[IntArray] = [
            np.zeros((n_in, n_out), dtype=np.int64) for n_in, n_out in self._sizes
        ]
        self._clock = VirtualClock(real_time=s.timing.real_time)
        self._spec = self._make_spec()
        streams = seed_sequence(seed).spawn(3)
        self.noise_streams: dict[str, np.random.Generator] = {
            name: np.random.default_rng(ss)
            for name, ss in zip(("white", "flicker", "drift"), streams, strict=True)
        }
        n, total = s.noise, int(self._col_start[-1])
        if n.flicker_psd > 0:
            f_hi = n.flicker_f_hi if n.flicker_f_hi is not None else 0.5 / self._eval_time
            taus, sigmas = flicker_poles(
                n.flicker_psd, n.flicker_f_ref, n.flicker_f_lo, f_hi, n.flicker_poles_per_decade
            )
        else:
            taus, sigmas = [], []
        self._flicker = OUBank(taus, sigmas, total, self.noise_streams["flicker"])
        drift = ([n.drift_tau], [n.drift_std]) if n.drift_std > 0 else ([], [])
        self._drift = OUBank(*drift, total, self.noise_streams["drift"])
        t = s.timing
        self._settling = (
            [LowPass(1.0 / (2 * math.pi * t.tau), t.settle_time, c) for c in n_columns]
            if t.tau is not None
            else None
        )
        self._evaluations = 0
        self._closed = False

    def _make_spec(self) -> DeviceSpec:
        s = self.settings
        inputs = [
            Channel(name=f"x{i}", role=Role.INPUT, min=0.0, max=float(self._x_max), unit="LSB")
            for i in range(s.layers[0])
        ]
        controls = [
            Channel(
                name=f"w{layer}_{row}_{col}",
                role=Role.CONTROL,
                min=float(-self._w_max),
                max=float(self._w_max),
                unit="LSB",
            )
            for layer, (n_in, n_out) in enumerate(self._sizes)
            for row in range(n_in)
            for col in range(n_out)
        ]
        lo, hi = (self._y_min, self._y_max) if s.saturation else (-math.inf, math.inf)
        outputs = [
            Channel(name=f"y{j}", role=Role.OUTPUT, min=lo, max=hi, unit="LSB")
            for j in range(s.layers[-1])
        ]
        return DeviceSpec(
            name="analog-mlp",
            channels=(*inputs, *controls, *outputs),
            settle_time=self._eval_time,
        )

    # -- Device interface ------------------------------------------------------------------------

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> VirtualClock:
        return self._clock

    def set_controls(self, values: FloatArray) -> None:
        """Write every weight; rounded to integer codes by the weight DAC, out of range refused."""
        self._check_open()
        v = np.array(values, dtype=float)
        n = len(self._spec.controls)
        if v.shape != (n,):
            raise ValueError(f"set_controls: expected shape ({n},), got {v.shape}")
        self._check_range(v[np.newaxis, :], self._spec.controls)
        self._weights = self._unflatten(np.rint(v).astype(np.int64))

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One network evaluation per input row, with every non-ideality; n_cases × n_outputs."""
        self._check_open()
        x = self._checked_inputs(inputs, "measure")
        y, _ = self._evaluate(x, None)
        return y

    # -- NodePerturbable ---------------------------------------------------------------------------

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """(n_in, n_out) of every layer, first to last (the controls are W_l row-major)."""
        return tuple((n_in, n_out) for n_in, n_out in self._sizes)

    @property
    def node_offset_limit(self) -> float:
        """Largest |offset| `measure_nodes` accepts, output LSB (`settings.max_node_offset`)."""
        return self._node_offset_limit

    def measure_nodes(
        self, inputs: FloatArray, offsets: Sequence[FloatArray]
    ) -> tuple[FloatArray, tuple[FloatArray, ...]]:
        """`measure` with offsets[l] (n_cases × n_out_l, output LSB) added to layer l's
        pre-activations before settling, membrane noise and the ADC floor (a per-neuron offset
        current, on the layer's first analog pass). Same checks, noise, device time and
        evaluation count as `measure`; zero offsets give exactly what `measure` gives.

        Returns the outputs (n_cases × n_outputs) and each layer's input codes (n_cases × n_in_l:
        the rounded input codes for layer 0, the converted ReLU codes after). Offsets of the
        wrong shape or not finite raise ValueError; beyond ±`node_offset_limit`, SafetyViolation.
        Nothing is evaluated (no noise drawn, no time spent) when a check fails.
        """
        self._check_open()
        x = self._checked_inputs(inputs, "measure_nodes")
        node = self._checked_offsets(offsets, x.shape[0], "measure_nodes")
        limit = self._node_offset_limit
        for layer, o in enumerate(node):
            bad = np.abs(o) > limit
            if bad.any():
                row, unit = (int(i) for i in np.argwhere(bad)[0])
                raise SafetyViolation(
                    f"offset{layer}_{unit}",
                    float(o[row, unit]),
                    f"the node-offset range ±{limit:g} LSB (settings.max_node_offset)",
                    f"case {row}; the simulator refuses it as the chip's offset DAC would; "
                    "nothing was applied",
                )
        y, seen = self._evaluate(x, node)
        return y, tuple(seen)

    def idle(self, seconds: float) -> None:
        """Let device time pass without evaluating: 1/f noise and drift evolve, and the column
        memory of the last analog pass relaxes to rest (0) with the settling time constant."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"idle: need a finite time >= 0 s, got {seconds}")
        for column in self._settling or []:
            column.reset(column.state * math.exp(-2 * math.pi * column.cutoff * seconds))
        self._flicker.advance(seconds)
        self._drift.advance(seconds)
        self._clock.advance(seconds)

    def safe_state(self) -> None:
        """Every weight to 0 (the inputs are only driven during an evaluation)."""
        self._weights = [np.zeros_like(w) for w in self._weights]

    def close(self) -> None:
        self._closed = True

    # -- chip description and oracle ---------------------------------------------------------------

    @property
    def weights(self) -> tuple[IntArray, ...]:
        """Current weight codes per layer, each n_in × n_out (row = input, col = output); copies."""
        return tuple(w.copy() for w in self._weights)

    @property
    def controls(self) -> FloatArray:
        """Current weight codes as the flat control vector (spec order)."""
        return np.concatenate([w.reshape(-1) for w in self._weights]).astype(float)

    @property
    def column_gains(self) -> tuple[FloatArray, ...]:
        """Fixed-pattern column gains G per layer (1 + mismatch.gain·ξ); read-only."""
        return tuple(_read_only(g) for g in self._gains)

    @property
    def column_offsets(self) -> tuple[FloatArray, ...]:
        """Fixed-pattern column offsets o per layer, LSB per analog pass; read-only."""
        return tuple(_read_only(o) for o in self._offsets)

    @property
    def n_sends(self) -> tuple[int, ...]:
        """Input repetitions per pass, per layer (given or derived)."""
        return tuple(self._n_sends)

    @property
    def layer_gains(self) -> tuple[float, ...]:
        """Nominal LSB per (input code · weight code), gain·n_sends, per layer."""
        return tuple(self._layer_gains)

    @property
    def activation_shift(self) -> int:
        """Bits the ReLU'd hidden outputs are shifted right into the next layer's input codes."""
        return self._shift

    @property
    def evaluation_time(self) -> float:
        """Device seconds of one evaluation (every analog pass: settling plus conversion)."""
        return self._eval_time

    @property
    def evaluations(self) -> int:
        """Input rows evaluated so far."""
        return self._evaluations

    def true_output(
        self,
        theta: FloatArray,
        inputs: FloatArray,
        offsets: Sequence[FloatArray] | None = None,
    ) -> FloatArray:
        """The nominal chip's output: the same quantisation (input and weight codes, floor, rails,
        converting ReLU) without mismatch, noise or settling error. n_cases × n_outputs.

        θ and the inputs are rounded like the DACs do; values outside the ranges raise ValueError.
        `offsets` (as in `measure_nodes`, any finite size) are added to the pre-activations.
        """
        x = np.array(inputs, dtype=float)
        n_in, n_ctrl = self.settings.layers[0], len(self._spec.controls)
        if x.ndim != 2 or x.shape[1] != n_in:
            raise ValueError(f"inputs: expected shape (n_cases, {n_in}), got {x.shape}")
        t = np.array(theta, dtype=float)
        if t.shape != (n_ctrl,):
            raise ValueError(f"theta: expected shape ({n_ctrl},), got {t.shape}")
        if not np.all(np.isfinite(x) & (x >= 0) & (x <= self._x_max)):
            raise ValueError(f"inputs must be finite and within [0, {self._x_max}] LSB")
        if not np.all(np.isfinite(t) & (np.abs(t) <= self._w_max)):
            raise ValueError(f"theta must be finite and within ±{self._w_max} LSB")
        node = None if offsets is None else self._checked_offsets(offsets, x.shape[0], "offsets")
        y, _ = self._forward(np.rint(x), self._unflatten(np.rint(t).astype(np.int64)), None, node)
        return y

    # -- what reaches the chip (for the guard) ---------------------------------------------------

    def applied_levels(self, values: FloatArray, channels: Sequence[str]) -> FloatArray:
        """Input and weight DAC codes for requested values: the nearest integer (ties to even)."""
        driven = {c.name for c in (*self._spec.inputs, *self._spec.controls)}
        unknown = [n for n in channels if n not in driven]
        if unknown:
            raise ValueError(f"{unknown} are not inputs or weights of the analog-mlp chip")
        codes: FloatArray = np.rint(np.array(values, dtype=float))
        return codes

    def restored_levels(self, state: JSONDict) -> dict[str, float]:
        """The weight code every weight DAC holds after `load_state_dict(state)` (inputs are
        driven only during an evaluation)."""
        flat = np.concatenate(
            [
                np.array(w, dtype=float).reshape(shape).ravel()
                for w, shape in zip(state["weights"], self._sizes, strict=True)
            ]
        )
        names = [c.name for c in self._spec.controls]
        if flat.shape != (len(names),):
            raise ValueError(f"state weights: expected {len(names)} values, got {flat.shape}")
        return dict(zip(names, flat.tolist(), strict=True))

    # -- checkpoint --------------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Weights, clock, noise generators and processes, column settling states (JSON)."""
        return {
            "version": STATE_VERSION,
            "layers": list(self.settings.layers),
            "chip_seed": self.settings.chip_seed,
            "clock": self._clock.now(),
            "evaluations": self._evaluations,
            "weights": [w.tolist() for w in self._weights],
            "white": generator_state(self.noise_streams["white"]),
            "flicker": self._flicker.state_dict(),
            "drift": self._drift.state_dict(),
            "settling": None
            if self._settling is None
            else [f.state_dict() for f in self._settling],
        }

    def load_state_dict(self, state: JSONDict) -> None:
        """Restore a state taken with `state_dict` on a device with the same settings."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"AnalogMLPDevice state version {state.get('version')!r}, expected {STATE_VERSION}"
            )
        s = self.settings
        if list(state["layers"]) != s.layers or state["chip_seed"] != s.chip_seed:
            raise ValueError(
                f"state is for layers {state['layers']} on chip_seed {state['chip_seed']}; this "
                f"device has layers {s.layers} on chip_seed {s.chip_seed}: build it with those"
            )
        weights = [
            np.array(w, dtype=np.int64).reshape(shape)
            for w, shape in zip(state["weights"], self._sizes, strict=True)
        ]
        if any(np.any(np.abs(w) > self._w_max) for w in weights):
            raise ValueError(f"state weights exceed ±{self._w_max}")
        if (state["settling"] is None) != (self._settling is None):
            raise ValueError("state and device disagree on timing.tau (column settling on/off)")
        self._flicker.load_state_dict(state["flicker"])
        self._drift.load_state_dict(state["drift"])
        if self._settling is not None:
            for f, fs in zip(self._settling, state["settling"], strict=True):
                f.load_state_dict(fs)
        restore_generator(self.noise_streams["white"], state["white"])
        self._weights = weights
        self._clock.set(float(state["clock"]))
        self._evaluations = int(state["evaluations"])

    # -- internals ---------------------------------------------------------------------------------

    def _checked_inputs(self, inputs: FloatArray, what: str) -> FloatArray:
        """The input rows as floats, shape and range checked (refused, never clamped)."""
        x = np.array(inputs, dtype=float)
        n_in = self.settings.layers[0]
        if x.ndim != 2 or x.shape[1] != n_in or x.shape[0] < 1:
            raise ValueError(f"{what}: expected shape (n_cases, {n_in}), got {x.shape}")
        self._check_range(x, self._spec.inputs)
        return x

    def _checked_offsets(
        self, offsets: Sequence[FloatArray], n_cases: int, what: str
    ) -> list[FloatArray]:
        """Offsets as float copies, one n_cases × n_out per layer, all finite (else ValueError)."""
        n_layers = len(self._sizes)
        if isinstance(offsets, np.ndarray) or len(offsets) != n_layers:
            raise ValueError(
                f"{what}: give a sequence of {n_layers} offset arrays, one per layer "
                f"(shapes {[(n_cases, n_out) for _, n_out in self._sizes]})"
            )
        out = []
        for layer, (o, (_, n_out)) in enumerate(zip(offsets, self._sizes, strict=True)):
            arr = np.array(o, dtype=float)
            if arr.shape != (n_cases, n_out):
                raise ValueError(
                    f"{what}: offsets[{layer}] must have shape ({n_cases}, {n_out}) "
                    f"(n_cases × units of layer {layer}), got {arr.shape}"
                )
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{what}: offsets[{layer}] must be finite")
            out.append(arr)
        return out

    def _evaluate(
        self, x: FloatArray, offsets: list[FloatArray] | None
    ) -> tuple[FloatArray, list[FloatArray]]:
        """One evaluation of checked input rows on the real chip: slow noise, forward, time."""
        n_cases = x.shape[0]
        slow = self._flicker.samples(n_cases, self._eval_time) + self._drift.samples(
            n_cases, self._eval_time
        )
        y, seen = self._forward(np.rint(x), self._weights, slow, offsets)
        self._clock.advance(n_cases * self._eval_time)
        self._evaluations += n_cases
        return y, seen

    def _forward(
        self,
        x: FloatArray,
        weights: list[IntArray],
        slow: FloatArray | None,
        offsets: list[FloatArray] | None = None,
    ) -> tuple[FloatArray, list[FloatArray]]:
        """The layers on input codes x (n × n_in); `slow` None = the nominal (oracle) chip.

        Returns the last layer's output and every layer's input codes; `offsets` (one
        n × n_out per layer) are added to the pre-activations of each layer's first pass.
        """
        s = self.settings
        n_cases = x.shape[0]
        y = x
        seen: list[FloatArray] = []
        for layer, w in enumerate(weights):
            seen.append(x)
            n_out = w.shape[1]
            k = self._passes[layer]
            acc = np.zeros((n_cases, k, n_out))
            for p in range(k):
                rows = slice(p * s.rows_per_block, (p + 1) * s.rows_per_block)
                acc[:, p, :] = x[:, rows] @ w[rows, :].astype(float)
            u = self._layer_gains[layer] * acc
            node = None if offsets is None else offsets[layer]
            if slow is not None:
                u = self._analog(u, layer, slow, node)
            elif node is not None:
                u[:, 0, :] += node
            y = np.floor(u)
            if s.saturation:
                y = np.clip(y, self._y_min, self._y_max)
            y = y.sum(axis=1)
            if s.saturation:
                y = np.clip(y, self._y_min, self._y_max)
            if layer < len(weights) - 1:
                x = np.minimum(np.floor(np.maximum(y, 0.0) / 2**self._shift), self._x_max)
        out: FloatArray = y
        return out, seen

    def _analog(
        self, u: FloatArray, layer: int, slow: FloatArray, node: FloatArray | None = None
    ) -> FloatArray:
        """Mismatch, slow noise, node offsets (first pass), settling and membrane noise on the
        passes u (n × passes × cols)."""
        cols = slice(int(self._col_start[layer]), int(self._col_start[layer + 1]))
        v = self._gains[layer] * u + self._offsets[layer] + slow[:, np.newaxis, cols]
        if node is not None:
            v[:, 0, :] += node
        if self._settling is not None:
            n, k, c = v.shape
            v = self._settling[layer].filter(v.reshape(n * k, c)).reshape(n, k, c)
        sigma = self.settings.noise.membrane
        if sigma > 0:
            v = v + sigma * self.noise_streams["white"].standard_normal(v.shape)
        return v

    def _unflatten(self, flat: IntArray) -> list[IntArray]:
        out, start = [], 0
        for n_in, n_out in self._sizes:
            out.append(flat[start : start + n_in * n_out].reshape(n_in, n_out).copy())
            start += n_in * n_out
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentDisconnected(
                f"device {self._spec.name!r} is closed; build a new one to measure again"
            )

    def _check_range(self, values: FloatArray, channels: tuple[Channel, ...]) -> None:
        """The chip's own range check: refuse (never clamp) anything outside the spec."""
        lo = np.array([c.min for c in channels])
        hi = np.array([c.max for c in channels])
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            ch = channels[col]
            raise SafetyViolation(
                ch.name,
                float(values[row, col]),
                f"the device range [{ch.min:g}, {ch.max:g}] {ch.unit}",
                "the simulator refuses it as the chip's DAC would; nothing was applied",
            )


def evaluation_time(s: AnalogMLPDevice.Settings) -> float:
    """Device seconds of one evaluation: every analog pass of every layer settles and converts."""
    passes = sum(math.ceil(n_in / s.rows_per_block) for n_in in s.layers[:-1])
    return passes * (s.timing.settle_time + s.timing.conversion_time)


def _n_sends(s: AnalogMLPDevice.Settings, x_max: int, w_max: int, shift: int) -> list[int]:
    """Given n_sends, or per layer the count that gives outputs of σ ≈ a quarter of the positive
    range, for weights uniform over their codes and typical inputs: uniform codes in the first
    layer; in hidden layers the converting ReLU of a zero-mean output with that σ (rms σ/√2,
    shifted). The output σ is then rms x · rms w · √n_in · gain · n_sends."""
    n_layers = len(s.layers) - 1
    if isinstance(s.n_sends, int):
        return [s.n_sends] * n_layers
    if isinstance(s.n_sends, list):
        return list(s.n_sends)
    target = 2 ** (s.output_bits - 1) / 4
    rms_w = math.sqrt(w_max * (w_max + 1) / 3)  # uniform on −w_max…w_max
    rms_in = [math.sqrt(x_max * (2 * x_max + 1) / 6)]  # uniform on 0…x_max
    rms_in += [min(target / math.sqrt(2) / 2**shift, x_max)] * (n_layers - 1)
    return [
        max(1, round(target / (s.gain * rms_x * rms_w * math.sqrt(n_in))))
        for rms_x, n_in in zip(rms_in, s.layers[:-1], strict=True)
    ]


def _fixed_pattern(
    s: AnalogMLPDevice.Settings, n_columns: list[int]
) -> tuple[list[FloatArray], list[FloatArray]]:
    """Column gains and offsets per layer from `chip_seed`: one spawned stream per layer and
    quantity, so the pattern of a column does not depend on the other settings, and the unit
    normal draws are scaled by σ (changing σ scales the same pattern)."""
    gains, offsets = [], []
    for layer_seq, n in zip(
        seed_sequence(s.chip_seed).spawn(len(n_columns)), n_columns, strict=True
    ):
        gain_seq, offset_seq = layer_seq.spawn(2)
        xi_g = np.random.default_rng(gain_seq).standard_normal(n)
        xi_o = np.random.default_rng(offset_seq).standard_normal(n)
        gains.append(1.0 + s.mismatch.gain * xi_g)
        offsets.append(s.mismatch.offset * xi_o)
    return gains, offsets


def _read_only(a: FloatArray) -> FloatArray:
    out = a.copy()
    out.flags.writeable = False
    return out
