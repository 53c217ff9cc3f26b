"""Noisy test problems for the convergence benchmark: rotated, ill-conditioned and multimodal.

`TestFunctionDevice` is a `LandscapeDevice` (same box, minimum x* drawn from `model_seed`, same
noise models: additive Gaussian σ, Student-t heavy tails, noise proportional to f − f*) whose
noise-free value is one of the functions below, evaluated at y = R (θ − x*) with a random rotation
R drawn from the instance seed (identity for the separable tuning problems):

- `ellipsoid`: ½ Σ λ_i y_i², λ log-spaced from 1 to 10³ (condition 10³), rotated;
- `rosenbrock`: Σ 100 (u_{i+1} − u_i²)² + (1 − u_i)², u = y + 1, rotated;
- `rastrigin`: Σ y_i² + 10 Σ (1 − cos 2π y_i), rotated (multimodal: a local minimum near every
  integer point of y);
- tuning only: `sphere` ½ Σ y_i²; `ellipsoid-separable` (condition 10², not rotated); `ackley`
  (multimodal, not rotated).

Noise levels are set per instance from its starting regret f(x0) − f* at x0 = 0, so one rule
fits every function and dimension (`NOISES`).

`dnpu_xor`: a simulated device as a problem — XOR (±20 nA) on a random DNPU (`device_seed` = the
instance), 5 controls in normalized units, the DNPU's default noise (white, relative, 1/f, drift)
and the sim-dnpu station's electrode ranges; its optimum is unknown, so it is scored on the
noise-free loss, not a regret.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hil.core import FloatArray, SeedLike, seed_sequence
from protocols.tasks import RegressionTask
from simulators.dnpu import DNPUDevice
from simulators.landscape import LandscapeDevice

Function = Literal[
    "ellipsoid", "rosenbrock", "rastrigin", "sphere", "ellipsoid-separable", "ackley"
]
NoiseKind = Literal["additive", "multiplicative", "student-t"]

BOUND = 5.0
NOISE_SEED = 10_000  # device noise stream of instance s: NOISE_SEED + s
ROTATED: frozenset[str] = frozenset({"ellipsoid", "rosenbrock", "rastrigin"})
CONDITION: dict[str, float] = {"ellipsoid": 1e3, "ellipsoid-separable": 1e2}


@dataclass(frozen=True)
class Noise:
    """A noise model with its level relative to the instance's starting regret."""

    kind: NoiseKind
    level: float  # additive / Student-t: σ = level · (f(x0) − f*); multiplicative: r
    nu: float | None = None  # Student-t degrees of freedom

    @property
    def label(self) -> str:
        if self.kind == "multiplicative":
            return f"mult r={self.level:g}"
        if self.kind == "student-t":
            return f"t(ν={self.nu:g}) {self.level:g}·f0"
        return f"add {self.level:g}·f0"


NOISES: dict[NoiseKind, Noise] = {
    "additive": Noise("additive", 0.01),
    "multiplicative": Noise("multiplicative", 0.1),
    "student-t": Noise("student-t", 0.01, nu=3.0),
}


def orthogonal(dim: int, rng: np.random.Generator) -> FloatArray:
    """A random rotation (Haar-distributed orthogonal matrix, QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    rotation: FloatArray = q * np.sign(np.diag(r))
    return rotation


class TestFunctionDevice(LandscapeDevice):
    """A `LandscapeDevice` whose noise-free value is one of this module's test functions."""

    def __init__(
        self, function: Function, settings: LandscapeDevice.Settings, *, seed: SeedLike = None
    ) -> None:
        super().__init__(settings, seed=seed)
        self.function = function
        dim = settings.dim
        rng = np.random.default_rng(seed_sequence(settings.model_seed).spawn(2)[1])
        self.rotation: FloatArray = orthogonal(dim, rng) if function in ROTATED else np.eye(dim)
        condition = CONDITION.get(function, 1.0)
        self.weights: FloatArray = (
            np.logspace(0.0, math.log10(condition), dim) if dim > 1 else np.ones(1)
        )

    def true_value(self, theta: FloatArray) -> float:
        """f(θ) − f* (noise-free; 0 at x*)."""
        y = self.rotation @ (np.asarray(theta, dtype=float) - self.minimum)
        f = self.function
        if f in ("ellipsoid", "ellipsoid-separable", "sphere"):
            return float(0.5 * np.sum(self.weights * y**2))
        if f == "rosenbrock":
            u = y + 1.0
            return float(np.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2))
        if f == "rastrigin":
            return float(np.sum(y**2) + 10.0 * np.sum(1.0 - np.cos(2.0 * math.pi * y)))
        root = math.sqrt(float(np.mean(y**2)))
        waves = float(np.mean(np.cos(2.0 * math.pi * y)))
        return -20.0 * math.exp(-0.2 * root) - math.exp(waves) + 20.0 + math.e

    def _gradient(self, z: FloatArray) -> FloatArray:
        raise NotImplementedError("the benchmark scores values only; no exact gradient here")


def make_device(function: Function, noise: Noise, dim: int, seed: int) -> TestFunctionDevice:
    """Instance `seed` of `function` in d = `dim`, box ±BOUND, noise set from f(0) − f*.

    The instance (x*, rotation) comes from `seed`; the noise stream from NOISE_SEED + `seed`,
    so every method meets the same instance and the same noise sequence.
    """
    settings = LandscapeDevice.Settings(dim=dim, bound=BOUND, model_seed=seed)
    device = TestFunctionDevice(function, settings, seed=NOISE_SEED + seed)
    start = device.true_value(np.zeros(dim))
    update: dict[str, float | None] = {}
    if noise.kind == "multiplicative":
        update["relative_noise"] = noise.level
    else:
        update["noise"] = noise.level * start
        update["heavy_tails"] = noise.nu
    device.settings = device.settings.model_copy(update=update)
    return device


XOR_TARGETS = (-20.0, 20.0, 20.0, -20.0)  # nA, as configs/dnpu-virtual.yaml
DATA_RANGE = (-1.2, 0.6)  # V, the data electrodes' range in configs/stations/sim-dnpu.yaml


def dnpu_xor(seed: int) -> tuple[DNPUDevice, RegressionTask]:
    """Instance `seed`: a random DNPU (device_seed = seed, noise stream NOISE_SEED + seed) and
    XOR with the data electrodes at the ends of their range."""
    device = DNPUDevice(DNPUDevice.Settings(device_seed=seed), seed=NOISE_SEED + seed)
    lo, hi = DATA_RANGE
    task = RegressionTask.from_arrays([[lo, lo], [lo, hi], [hi, lo], [hi, hi]], XOR_TARGETS)
    return device, task
