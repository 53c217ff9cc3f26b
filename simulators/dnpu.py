"""Dopant-network processing unit (DNPU): 7 voltage electrodes, one current output.

The core is a fixed, smooth, non-monotonic map of the 7 electrode voltages to a current: a random
multilayer network drawn from `device_seed` (a different seed is a different device) and scaled to
about ±`output_scale` nA, or a surrogate network fitted to a measured device, loaded from an .npz
file (arrays weight_0 … weight_L (out × in) and bias_0 … bias_L). `curvature` sharpens the random
core (a larger input gain, the same output range), so a dither amplitude costs bias as it does on
measured devices. The current is read through a transimpedance amplifier and an ADC
(±`adc_full_scale` V × `amplification` nA/V), with the noise, bandwidth and quantisation of
`simulators.sampled`. Outputs are in nA, as the lab reads them.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from hil.core import Channel, DeviceSpec, FloatArray, Role, SeedLike, seed_sequence
from hil.core.paths import DATA_LIMIT, ConfigPath, float_array, load_npz
from simulators.sampled import Chain, Noise, SampledDevice, SampledSettings, Timing

Activation = Literal["tanh", "softplus", "relu"]
N_ELECTRODES = 7
RANDOM_CORE_ONLY = {
    "device_seed": "draws the random core only; a weights_file network is fixed",
    "hidden": "sets the random core's layer widths only; a weights_file network has the widths "
    "of its arrays",
    "output_scale": "scales the random core only; a weights_file network is scaled by "
    "weights_scale (nA per network unit)",
    "curvature": "sharpens the random core only; a weights_file network has the curvature of "
    "the device it was fitted to",
}
"""Settings of the random core that a weights_file network refuses unless at their default."""


class MLPCore:
    """A fully connected network y = W_L σ(… σ(W_0 V + b_0) …) + b_L with its exact gradient."""

    def __init__(
        self, weights: list[FloatArray], biases: list[FloatArray], activation: Activation
    ) -> None:
        self.weights = weights
        self.biases = biases
        self.activation = activation

    def __call__(self, v: FloatArray) -> FloatArray:
        h = v
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = _act(h @ w.T + b, self.activation)
        y: FloatArray = (h @ self.weights[-1].T + self.biases[-1])[:, 0]
        return y

    def gradient(self, v: FloatArray) -> FloatArray:
        """∂y/∂V per row (n × n_in), by backpropagation."""
        pre: list[FloatArray] = []
        h = v
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            z = h @ w.T + b
            pre.append(z)
            h = _act(z, self.activation)
        g = np.broadcast_to(self.weights[-1], (v.shape[0], self.weights[-1].shape[1]))
        for w, z in zip(reversed(self.weights[:-1]), reversed(pre), strict=True):
            g = (g * _act_derivative(z, self.activation)) @ w
        grad: FloatArray = np.ascontiguousarray(g)
        return grad


def _act(z: FloatArray, kind: Activation) -> FloatArray:
    if kind == "tanh":
        return np.tanh(z)
    if kind == "softplus":
        return np.logaddexp(0.0, z)
    return np.maximum(z, 0.0)


def _act_derivative(z: FloatArray, kind: Activation) -> FloatArray:
    if kind == "tanh":
        out: FloatArray = 1.0 - np.tanh(z) ** 2
        return out
    if kind == "softplus":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, overflow-free
    return (z > 0).astype(float)


class DNPUNoise(Noise):
    """DNPU defaults, nA: σ² = (0.01·I)² + (0.1 nA)² white, 1/f 1e-5 nA²/Hz at 1 kHz
    (Boon et al. 2025), and a slow drift of 0.5 nA over 10 minutes."""

    white: float = Field(default=0.1, ge=0, description="nA per sample")
    relative: float = Field(default=0.01, ge=0, description="fraction of |I| per sample")
    flicker_psd: float = Field(default=1e-5, ge=0, description="nA²/Hz at flicker_f_ref")
    drift_std: float = Field(default=0.5, ge=0, description="nA")


class DNPUDevice(SampledDevice):
    """Simulated DNPU: which electrodes carry data and which are trained is configurable."""

    class Settings(SampledSettings):
        """Electrodes, the core network, the readout chain; noise and timing from the base."""

        input_electrodes: list[int] = Field(
            default=[1, 2], description="electrodes that carry data inputs; the rest are controls"
        )
        electrode_ranges: list[tuple[float, float]] = Field(
            default=[(-1.2, 0.6)] * 5 + [(-0.7, 0.3)] * 2,
            description="V, per electrode 0…6",
        )
        hard_limit: float = Field(default=1.6, gt=0, description="V the device must never see")
        max_slew: float = Field(default=math.inf, gt=0, description="V/s on every electrode")
        device_seed: int = Field(default=0, ge=0, description="draws the random core network")
        hidden: list[int] = Field(
            default=[32] * 3,
            max_length=16,
            description="hidden layer widths (at most 16 layers of at most 4096)",
        )
        activation: Activation | None = Field(
            default=None, description="default: tanh for the random core, relu for a file"
        )
        output_scale: float = Field(default=100.0, gt=0, description="nA, max |I| of the core")
        curvature: float = Field(
            default=1.0,
            gt=0,
            le=64,
            description="input gain of the random core: the map bends this much more sharply",
        )
        weights_file: ConfigPath | None = Field(
            default=None,
            description=".npz surrogate network (relative to the config file; at most 64 MiB); "
            "`hil surrogate-convert` writes one from a PyTorch checkpoint",
        )
        weights_scale: float = Field(
            default=1.0,
            description="nA per unit of the file network's output: for a network trained on "
            "amplifier-scaled outputs (SkyNEt, brains-py) its recorded amplification",
        )
        amplification: float = Field(default=28.5, gt=0, description="nA per ADC volt")
        adc_full_scale: float = Field(default=4.0, gt=0, description="V, the ADC clips here")
        inverted_output: bool = Field(default=False, description="inverting amplifier")
        cutoff: float | None = Field(default=1000.0, gt=0, description="Hz, amplifier bandwidth")
        adc_bits: int | None = Field(default=16, ge=1, le=32)
        dac_bits: int | None = Field(default=16, ge=1, le=32)
        dac_range: float = Field(default=10.0, gt=0, description="V, DAC full scale ±")
        timing: Timing = Field(default_factory=Timing)
        noise: DNPUNoise = Field(default_factory=lambda: DNPUNoise())

        @field_validator("electrode_ranges", mode="before")
        @classmethod
        def _pairs(cls, value: Any) -> Any:
            """[lo, hi] lists as the pairs they stand for (YAML has no tuples)."""
            if isinstance(value, list):
                return [tuple(v) if isinstance(v, list) else v for v in value]
            return value

        @model_validator(mode="after")
        def _consistent(self) -> DNPUDevice.Settings:
            if len(self.electrode_ranges) != N_ELECTRODES:
                raise ValueError(
                    f"electrode_ranges: give {N_ELECTRODES} ranges, "
                    f"got {len(self.electrode_ranges)}"
                )
            for i, (lo, hi) in enumerate(self.electrode_ranges):
                if not -self.hard_limit <= lo < hi <= self.hard_limit:
                    raise ValueError(
                        f"electrode_ranges[{i}] = [{lo}, {hi}] must be ordered and within the "
                        f"hard limit ±{self.hard_limit} V"
                    )
            inputs = self.input_electrodes
            if len(set(inputs)) != len(inputs) or any(not 0 <= i < N_ELECTRODES for i in inputs):
                raise ValueError(
                    f"input_electrodes {inputs}: distinct electrode numbers 0…{N_ELECTRODES - 1}"
                )
            if len(inputs) == N_ELECTRODES:
                raise ValueError("input_electrodes: leave at least one electrode as a control")
            if any(not 1 <= w <= 4096 for w in self.hidden):
                raise ValueError(f"hidden: layer widths must lie in 1…4096, got {self.hidden}")
            return self

        @model_validator(mode="after")
        def _one_core(self) -> DNPUDevice.Settings:
            """A setting of the core not in use is a mistake, not a no-op: refuse it. Compared
            with the default, not `model_fields_set`: a resumed run re-validates a resolved
            config that spells out every default."""
            fields = type(self).model_fields
            if self.weights_file is None:
                if self.weights_scale != fields["weights_scale"].default:
                    raise ValueError(
                        "weights_scale scales a weights_file network only; the random core's "
                        "range is output_scale: remove weights_scale or give a weights_file"
                    )
                return self
            for name, reason in RANDOM_CORE_ONLY.items():
                if getattr(self, name) != fields[name].get_default(call_default_factory=True):
                    raise ValueError(f"{name} {reason}: remove {name} or weights_file")
            return self

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = s = settings if settings is not None else self.Settings()
        self._inputs_idx = list(s.input_electrodes)
        self._controls_idx = [i for i in range(N_ELECTRODES) if i not in s.input_electrodes]
        self.core = _load_core(s) if s.weights_file is not None else _random_core(s)
        self._sign = -1.0 if s.inverted_output else 1.0
        chain = Chain(
            cutoff=s.cutoff,
            saturation=s.adc_full_scale * s.amplification,
            adc_bits=s.adc_bits,
            dac_bits=s.dac_bits,
            dac_range=s.dac_range,
        )
        super().__init__(self._make_spec(), s, chain, seed)

    def _make_spec(self) -> DeviceSpec:
        s = self.settings
        channels = [
            Channel(
                name=f"E{i}",
                role=Role.INPUT if i in self._inputs_idx else Role.CONTROL,
                min=lo,
                max=hi,
                max_slew=s.max_slew,
            )
            for i, (lo, hi) in enumerate(s.electrode_ranges)
        ]
        channels.append(Channel(name="Iout", role=Role.OUTPUT, unit="nA"))
        t = s.timing
        return DeviceSpec(
            name="dnpu",
            channels=tuple(channels),
            sample_rate=t.sample_rate,
            settle_time=t.settle_time,
            ramp_time=t.ramp_time,
            plateau_samples=t.samples_per_plateau,
            output_gain=s.amplification,
        )

    def electrode_voltages(self, levels: FloatArray) -> FloatArray:
        """Driven levels (inputs then controls, spec order) to electrode order E0…E6."""
        v = np.empty((levels.shape[0], N_ELECTRODES))
        v[:, self._inputs_idx] = levels[:, : self._n_in]
        v[:, self._controls_idx] = levels[:, self._n_in :]
        return v

    def _response(self, levels: FloatArray) -> FloatArray:
        current = self._sign * self.core(self.electrode_voltages(levels))
        return current[:, np.newaxis]

    def true_gradient(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """∂I/∂θ per case (n_cases × n_controls), nA/V."""
        levels = self._oracle_levels(theta, inputs)
        grad = self.core.gradient(self.electrode_voltages(levels))
        out: FloatArray = self._sign * grad[:, self._controls_idx]
        return out


def _random_core(s: DNPUDevice.Settings) -> MLPCore:
    """A random tanh/softplus network, scaled so max |I| over the voltage box is output_scale.

    `curvature` c multiplies the first layer's weights: the core is the c = 1 network read at
    centre + c·(V − centre), rescaled to the same output range, so at matching points
    |F‴/F′| is c² larger (about c^1.25 at random points, docs/simulators.md).
    """
    rng = np.random.default_rng(seed_sequence(s.device_seed))
    sizes = [N_ELECTRODES, *s.hidden, 1]
    lo = np.array([r[0] for r in s.electrode_ranges])
    hi = np.array([r[1] for r in s.electrode_ranges])
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    weights, biases = [], []
    for j, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        gain = 2.0 if j < len(sizes) - 2 else 1.0  # strong enough to be non-monotonic in the box
        w = rng.normal(0.0, gain / math.sqrt(n_in), size=(n_out, n_in))
        b = rng.normal(0.0, 0.3, size=n_out)
        if j == 0:  # act on voltages relative to the centre of each electrode's range
            w = s.curvature * w / half  # 1.0·w is w: the default device is unchanged
            b = b - w @ centre
        weights.append(w)
        biases.append(b)
    activation = s.activation or "tanh"
    probe = lo + (hi - lo) * rng.uniform(size=(4096, N_ELECTRODES))
    y = MLPCore(weights, biases, activation)(probe)
    centre_y = float(np.median(y))
    scale = s.output_scale / float(np.max(np.abs(y - centre_y)))
    weights[-1] = weights[-1] * scale
    biases[-1] = (biases[-1] - centre_y) * scale
    return MLPCore(weights, biases, activation)


def _load_core(s: DNPUDevice.Settings) -> MLPCore:
    """A surrogate network from an .npz file (weight_j out × in, bias_j), scaled to nA."""
    path = s.weights_file
    assert path is not None
    data = load_npz(path, limit=DATA_LIMIT, what="weights_file")
    n_layers = sum(1 for k in data if k.startswith("weight_"))
    if n_layers == 0:
        raise ValueError(f"weights_file {path}: no arrays weight_0, weight_1, … found")
    try:
        weights = [float_array(data, f"weight_{j}", path, "weights_file") for j in range(n_layers)]
        biases = [float_array(data, f"bias_{j}", path, "weights_file") for j in range(n_layers)]
    except KeyError as exc:
        raise ValueError(f"weights_file {path}: missing array {exc}") from None
    if any(w.ndim != 2 for w in weights) or any(b.ndim != 1 for b in biases):
        raise ValueError(f"weights_file {path}: weight_j must be 2-D (out × in), bias_j 1-D")
    if weights[0].shape[1] != N_ELECTRODES or weights[-1].shape[0] != 1:
        raise ValueError(
            f"weights_file {path}: the network must map {N_ELECTRODES} voltages to 1 current, "
            f"got {weights[0].shape[1]} → {weights[-1].shape[0]}"
        )
    for j, (w, b) in enumerate(zip(weights, biases, strict=True)):
        fits = j == 0 or w.shape[1] == weights[j - 1].shape[0]
        if (
            not fits
            or b.shape != (w.shape[0],)
            or not (np.isfinite(w).all() and np.isfinite(b).all())
        ):
            raise ValueError(
                f"weights_file {path}: layer {j} (weight {w.shape}, bias {b.shape}) does not "
                "follow the previous layer, or holds NaN/inf; check the file"
            )
    weights[-1] = weights[-1] * s.weights_scale
    biases[-1] = biases[-1] * s.weights_scale
    return MLPCore(weights, biases, s.activation or "relu")
