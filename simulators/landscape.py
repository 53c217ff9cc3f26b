"""Noisy test landscapes as a device: the standard problems optimizers are compared on.

y(θ) = f(θ) + noise, with f a shifted quadratic bowl (condition number κ) or a shifted Rosenbrock
valley, the minimum x* drawn from `model_seed` inside the box (or given), and the noise additive
white (σ), proportional to f − f* (relative, as in COCO's bbob-noisy), or Student-t heavy-tailed.
The device has controls θ and one output and no data inputs; each measured case costs
`eval_time` device seconds. The noise-free value and gradient are exact (`true_value`,
`true_gradient`), so convergence can be scored on the noise-free loss of the recommendation.
"""

from __future__ import annotations

import math
from typing import Literal

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


class LandscapeDevice(DeviceBase):
    """A d-dimensional noisy test function with a known minimum, as a device."""

    class Settings(BaseModel):
        """Function, dimension, box, minimum, noise model and evaluation time."""

        model_config = ConfigDict(extra="forbid")

        function: Literal["quadratic", "rosenbrock"] = "quadratic"
        dim: int = Field(default=10, ge=1, le=1000, description="number of controls")
        bound: float = Field(default=5.0, gt=0, description="controls lie in [-bound, bound] V")
        condition: float = Field(
            default=1.0, ge=1, description="quadratic: eigenvalues log-spaced from 1 to this"
        )
        scale: float = Field(default=1.0, gt=0, description="multiplies f")
        minimum: list[float] | None = Field(
            default=None, description="x*; default drawn uniformly in ±minimum_spread"
        )
        minimum_spread: float = Field(default=2.0, ge=0, description="x* ~ U[-spread, spread]")
        model_seed: int = Field(default=0, ge=0, description="draws x* (the problem instance)")
        noise: float = Field(default=0.0, ge=0, description="additive noise σ per evaluation")
        relative_noise: float = Field(
            default=0.0, ge=0, description="noise σ proportional to f − f*: y = f + r·(f − f*)·ξ"
        )
        heavy_tails: float | None = Field(
            default=None, gt=2, description="Student-t ν for the additive noise (None: Gaussian)"
        )
        eval_time: float = Field(default=1e-3, ge=0, le=3600, description="device seconds per case")

        @model_validator(mode="after")
        def _minimum_inside(self) -> LandscapeDevice.Settings:
            if self.minimum is not None:
                if len(self.minimum) != self.dim:
                    raise ValueError(f"minimum has {len(self.minimum)} values for dim {self.dim}")
                if any(abs(v) > self.bound for v in self.minimum):
                    raise ValueError(f"minimum {self.minimum} lies outside ±bound {self.bound}")
            elif self.minimum_spread > self.bound:
                raise ValueError(f"minimum_spread {self.minimum_spread} exceeds bound {self.bound}")
            return self

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = s = settings if settings is not None else self.Settings()
        instance = np.random.default_rng(seed_sequence(s.model_seed))
        self.minimum: FloatArray = (
            np.array(s.minimum, dtype=float)
            if s.minimum is not None
            else instance.uniform(-s.minimum_spread, s.minimum_spread, size=s.dim)
        )
        self.curvatures: FloatArray = (
            np.logspace(0.0, math.log10(s.condition), s.dim) if s.dim > 1 else np.ones(1)
        )
        (noise_seed,) = seed_sequence(seed).spawn(1)
        self.noise_streams = {"white": np.random.default_rng(noise_seed)}
        self._theta = np.zeros(s.dim)
        self._clock = VirtualClock()
        controls = [
            Channel(name=f"x{i}", role=Role.CONTROL, min=-s.bound, max=s.bound)
            for i in range(s.dim)
        ]
        output = Channel(name="f", role=Role.OUTPUT, unit="a.u.")
        self._spec = DeviceSpec(
            name=f"landscape-{s.function}", channels=(*controls, output), settle_time=s.eval_time
        )
        self._closed = False

    # -- oracle ----------------------------------------------------------------------------------

    def true_value(self, theta: FloatArray) -> float:
        """f(θ) − f* (the noise-free value; 0 at the minimum)."""
        z = np.asarray(theta, dtype=float) - self.minimum
        if self.settings.function == "quadratic":
            return float(self.settings.scale * 0.5 * np.sum(self.curvatures * z**2))
        u = z + 1.0  # Rosenbrock's minimum sits at u = 1, i.e. at θ = x*
        value = np.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)
        return float(self.settings.scale * value)

    def true_output(self, theta: FloatArray, inputs: FloatArray) -> FloatArray:
        """The noise-free output f(θ) − f* for each input row, n_cases × 1."""
        n = len(np.asarray(inputs, dtype=float))
        return np.full((n, 1), self.true_value(theta))

    def true_gradient(self, theta: FloatArray, inputs: FloatArray | None = None) -> FloatArray:
        """∇f(θ), exact: a vector, or one row per input row when `inputs` are given."""
        grad = self._gradient(np.asarray(theta, dtype=float) - self.minimum)
        if inputs is None:
            return grad
        n = len(np.asarray(inputs, dtype=float))
        rows: FloatArray = np.tile(grad, (n, 1))
        return rows

    def _gradient(self, z: FloatArray) -> FloatArray:
        s = self.settings.scale
        if self.settings.function == "quadratic":
            quad: FloatArray = s * self.curvatures * z
            return quad
        u = z + 1.0
        g = np.zeros_like(u)
        r = u[1:] - u[:-1] ** 2
        g[:-1] += -400.0 * u[:-1] * r - 2.0 * (1.0 - u[:-1])
        g[1:] += 200.0 * r
        grad: FloatArray = s * g
        return grad

    # -- Device interface -------------------------------------------------------------------------

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def clock(self) -> VirtualClock:
        return self._clock

    def set_controls(self, values: FloatArray) -> None:
        """Set θ; values outside ±bound are refused, never clamped."""
        self._check_open()
        v = np.array(values, dtype=float)
        if v.shape != self._theta.shape:
            raise ValueError(f"set_controls: expected shape {self._theta.shape}, got {v.shape}")
        bound = self.settings.bound
        bad = np.flatnonzero(~np.isfinite(v) | (np.abs(v) > bound))
        if bad.size:
            i = int(bad[0])
            raise SafetyViolation(
                f"x{i}",
                float(v[i]),
                f"the device range [-{bound:g}, {bound:g}] V",
                "nothing was applied",
            )
        self._theta = v

    def measure(self, inputs: FloatArray) -> FloatArray:
        """f(θ) + noise once per row of `inputs` (n_cases × 0); n_cases × 1."""
        self._check_open()
        x = np.asarray(inputs, dtype=float)
        if x.ndim != 2 or x.shape[1] != 0 or x.shape[0] < 1:
            raise ValueError(f"measure: expected shape (n_cases, 0), got {x.shape}")
        n, s, rng = x.shape[0], self.settings, self.noise_streams["white"]
        value = self.true_value(self._theta)
        y = np.full(n, value)
        if s.noise > 0:
            draws = rng.standard_t(s.heavy_tails, n) if s.heavy_tails else rng.standard_normal(n)
            y = y + s.noise * draws
        if s.relative_noise > 0:
            y = y + s.relative_noise * value * rng.standard_normal(n)
        self._clock.advance(n * s.eval_time)
        out: FloatArray = y[:, np.newaxis]
        return out

    def safe_state(self) -> None:
        """θ back to 0 (nothing physical to protect; kept for the interface)."""
        self._theta = np.zeros_like(self._theta)

    def close(self) -> None:
        self._closed = True

    # -- checkpoint -------------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        return {
            "theta": self._theta.tolist(),
            "clock": self._clock.now(),
            "white": generator_state(self.noise_streams["white"]),
        }

    def restored_levels(self, state: JSONDict) -> dict[str, float]:
        """The control levels `load_state_dict(state)` restores."""
        theta = np.array(state["theta"], dtype=float)
        if theta.shape != self._theta.shape:
            raise ValueError(f"state theta has shape {theta.shape}, expected {self._theta.shape}")
        return dict(zip((c.name for c in self.spec.controls), theta.tolist(), strict=True))

    def load_state_dict(self, state: JSONDict) -> None:
        theta = np.array(state["theta"], dtype=float)
        if theta.shape != self._theta.shape:
            raise ValueError(f"state theta has shape {theta.shape}, expected {self._theta.shape}")
        self._theta = theta
        self._clock.set(float(state["clock"]))
        restore_generator(self.noise_streams["white"], state["white"])

    def _check_open(self) -> None:
        if self._closed:
            raise InstrumentDisconnected(f"device {self._spec.name!r} is closed")
