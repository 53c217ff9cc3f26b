"""A test device with a known gradient: the oracle for estimators and optimizers.

y(θ, x) = Σ_k c_k·tanh(a_k·θ + b_k·x + d_k) + ½ θᵀ Q θ, played through the sampled output chain of
`simulators.sampled` (white, signal-proportional, 1/f and drift noise, a first-order low-pass with
exactly known gain and phase, gain and offset error, saturation, DAC and ADC quantisation), each
switchable. The noise-free output, its gradient and its Hessian in θ are exact.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field, model_validator

from hil.core import Channel, DeviceSpec, FloatArray, Role, SeedLike, seed_sequence
from simulators.sampled import Chain, SampledDevice, SampledSettings, Timing


class AnalyticTiming(Timing):
    """The analytic device's timing defaults: 1 kHz, no ramp, 1 ms settling, 10 samples."""

    sample_rate: float = Field(default=1000.0, gt=0, description="Hz, ADC and DAC")
    ramp_time: float = Field(default=0.0, ge=0, description="s of linear ramp between plateaus")


class AnalyticDevice(SampledDevice):
    """Simulated device whose output, gradient and Hessian are known in closed form.

    The function coefficients come from `model_seed` (the "device under test"); the measurement
    noise comes from `seed`, so one device can be measured with many noise realisations.
    """

    class Settings(SampledSettings):
        """Shape of the function, channel ranges, and the output chain's knobs."""

        n_inputs: int = Field(default=2, ge=0, le=1000, description="number of data-input channels")
        n_controls: int = Field(default=5, ge=1, le=1000, description="number of control channels")
        n_terms: int = Field(default=8, ge=0, le=1000, description="number K of tanh terms")
        model_seed: int = Field(default=0, ge=0, description="draws the function coefficients")
        control_min: float = Field(default=-1.0, description="V")
        control_max: float = Field(default=1.0, description="V")
        input_min: float = Field(default=-1.0, description="V")
        input_max: float = Field(default=1.0, description="V")
        curvature: float = Field(default=0.5, ge=0, description="scale of the quadratic term")
        max_slew: float = Field(default=math.inf, gt=0, description="V/s on inputs and controls")
        timing: AnalyticTiming = Field(default_factory=lambda: AnalyticTiming())
        cutoff: float | None = Field(default=None, gt=0, description="Hz, output low-pass")
        gain_error: float = Field(default=0.0, description="relative output gain error")
        offset: float = Field(default=0.0, description="V, output offset")
        saturation: float | None = Field(default=None, gt=0, description="V, outputs clip here")
        adc_bits: int | None = Field(default=None, ge=1, le=32, description="over ±saturation")
        dac_bits: int | None = Field(default=None, ge=1, le=32, description="over ±dac_range")
        dac_range: float = Field(default=10.0, gt=0, description="V")

        @model_validator(mode="after")
        def _consistent(self) -> AnalyticDevice.Settings:
            for what in ("control", "input"):
                lo, hi = getattr(self, f"{what}_min"), getattr(self, f"{what}_max")
                if not lo < hi:
                    raise ValueError(f"{what}_min ({lo}) must be below {what}_max ({hi})")
            if math.isfinite(self.max_slew) and self.timing.ramp_time == 0:
                raise ValueError(
                    f"max_slew {self.max_slew} V/s needs timing.ramp_time > 0: with instant "
                    "plateau changes every input step would exceed it"
                )
            if self.adc_bits is not None and self.saturation is None:
                raise ValueError("adc_bits needs saturation (the ADC's full scale is ±saturation)")
            return self

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = s = settings if settings is not None else self.Settings()
        self._a, self._b, self._c, self._d, self._Q = _draw_model(s)
        chain = Chain(
            cutoff=s.cutoff,
            gain_error=s.gain_error,
            offset=s.offset,
            saturation=s.saturation,
            adc_bits=s.adc_bits,
            dac_bits=s.dac_bits,
            dac_range=s.dac_range,
        )
        super().__init__(_make_spec(s), s, chain, seed)

    # -- oracle ------------------------------------------------------------------------------------

    def true_gradient(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """∂y/∂θ per case, n_cases × n_controls."""
        levels = self._oracle_levels(theta, inputs)
        x, t = levels[:, : self._n_in], levels[:, self._n_in :]
        sech2 = 1.0 - np.tanh(self._pre_activation(t, x)) ** 2  # n_cases × K
        grad: FloatArray = (sech2 * self._c) @ self._a + t @ self._Q
        return grad

    def true_hessian(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """∂²y/∂θ² per case, n_cases × n_controls × n_controls."""
        levels = self._oracle_levels(theta, inputs)
        x, t = levels[:, : self._n_in], levels[:, self._n_in :]
        th = np.tanh(self._pre_activation(t, x))
        weight = -2.0 * th * (1.0 - th**2) * self._c  # n_cases × K
        hess = np.einsum("nk,ki,kj->nij", weight, self._a, self._a) + self._Q
        symmetric: FloatArray = 0.5 * (hess + np.swapaxes(hess, 1, 2))
        return symmetric

    # -- the function ------------------------------------------------------------------------------

    def _pre_activation(self, theta: FloatArray, x: FloatArray) -> FloatArray:
        z: FloatArray = theta @ self._a.T + x @ self._b.T + self._d
        return z

    def _response(self, levels: FloatArray) -> FloatArray:
        x, t = levels[:, : self._n_in], levels[:, self._n_in :]
        quad = 0.5 * np.einsum("ni,ij,nj->n", t, self._Q, t)
        y: FloatArray = np.tanh(self._pre_activation(t, x)) @ self._c + quad
        return y[:, np.newaxis]


def _draw_model(
    s: AnalyticDevice.Settings,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Coefficients a (K×n_controls), b (K×n_inputs), c (K), d (K) and Q, from `model_seed`.

    a and b are scaled so that a·θ and b·x each have unit variance for θ, x uniform on [-1, 1].
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
    def channel(name: str, role: Role, lo: float, hi: float) -> Channel:
        return Channel(name=name, role=role, min=lo, max=hi, max_slew=s.max_slew)

    inputs = [channel(f"in{i}", Role.INPUT, s.input_min, s.input_max) for i in range(s.n_inputs)]
    controls = [
        channel(f"ctrl{i}", Role.CONTROL, s.control_min, s.control_max) for i in range(s.n_controls)
    ]
    out = Channel(name="out", role=Role.OUTPUT, unit="V")
    t = s.timing
    return DeviceSpec(
        name="analytic",
        channels=(*inputs, *controls, out),
        sample_rate=t.sample_rate,
        settle_time=t.settle_time,
        ramp_time=t.ramp_time,
        plateau_samples=t.samples_per_plateau,
    )
