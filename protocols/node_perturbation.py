"""Node perturbation: weight gradients of a layered device from noise on its units.

Works on any device with the `NodePerturbable` capability (`layer_shapes`, `measure_nodes`): the
controls are the layers' weights W_l[i, j] (layer by layer, row-major), the device can add an
offset to every unit's pre-activation a_l and reports what each layer received as input x_l.

**Injected mode** (Williams 1992; Werfel, Xie & Seung 2005). Per estimate, one clean pass
(offsets 0) and K perturbed passes with ξ_l ~ N(0, σ²) per case and unit on the probed layers:

    δ_k = L(y(ξ_k)) − L(y(0))
    ∂L/∂a_{l,c} ≈ δ_k ξ_{l,c,k} / σ²                  (Stein: exact for the σ-smoothed loss)
    ∂L/∂W_l ≈ g_l · Σ_c x_{l,c} (δ_k ξ_{l,c,k} / σ²)ᵀ, averaged over k

with x_l the clean pass's layer inputs (the gradient at the unperturbed operating point) and g_l
the layer's gain ∂a/∂(x·W) (offset units per input unit per control unit; see `layer_gains`).
Subtracting the clean loss does not change the mean (E ξ = 0) but removes L(0)·ξ from the
variance. The variance grows with the number of probed noise dimensions (cases × units), not
with the number of weights: at its best learning rate node perturbation is slower than true
gradient descent by about the number of output units, weight perturbation slower still by the
fan-in (Werfel et al.). The loss is that of the task on the objective's output columns.

**Intrinsic mode** (the "noisy-ours" variant of noise-based reward-modulated learning, García
Fernández, Ahmad & van Gerven 2025, for hardware that cannot switch its noise off): no offsets are
injected; the device's own noise is the probe. P noisy passes at zero offset give outputs y_k;
their mean ȳ stands in for the clean pass and ξ_k = y_k − ȳ for the unobservable noise:

    δ_k = L(y_k) − L(ȳ),  σ̂_j² = mean_{k,c} ξ_{k,c,j}²,  ĝ_{y,c,j} = mean_k δ_k ξ_{k,c,j} / σ̂_j²
    ∂L/∂W_last ≈ g_last · Σ_c x̄_{last,c} ĝ_{y,c}ᵀ

(σ̂² is the mean square of the probes themselves, so the 1 − 1/P shrinkage of ξ from including
y_k in ȳ cancels.) Only the output layer is estimated: noise inside the hidden layers reaches the
outputs only mixed through the later weights and nonlinearities, so it cannot be attributed to
hidden units from the outputs; earlier layers get 0. The estimate assumes output noise that is
independent across cases and units (white membrane noise); noise common to all P passes (slow
drift) cancels in ȳ, noise correlated across cases or units within the passes (1/f) biases it.

Devices that quantise their weights (the analog MLP rounds to integer codes) are fine with an
optimizer that keeps continuous parameters: the gradient is taken at the rounded weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import ConfigError, FloatArray, JSONDict, NodePerturbable, SeedLike, seed_sequence
from hil.core.types import generator_state, restore_generator
from protocols.base import MAX_REPEATS, MIN_PERTURBATION, GradientEstimate, Objective

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
LayerIndex = Annotated[int, Field(ge=0)]


@dataclass(frozen=True)
class OutputProbe:
    """∂L/∂y per noisy pass, with the device's own noise as the probe (NRL's noisy passes
    against their running mean)."""

    samples: FloatArray  # passes × cases × outputs: δ_k ξ_k / σ̂²
    variance: FloatArray  # per output: mean ξ² over passes and cases, (P − 1)/P of σ²
    silent: npt.NDArray[np.bool_]  # per output: no noise above min_sigma seen (gradient 0)
    mean_loss: float  # mean of the noisy passes' losses

    @property
    def sigma(self) -> float:
        """The noise σ, undoing the (P − 1)/P shrinkage of deviations from the passes' mean."""
        passes = self.samples.shape[0]
        return math.sqrt(float(np.mean(self.variance)) * passes / (passes - 1))


def intrinsic_output_gradient(
    passes: FloatArray, loss: Callable[[FloatArray], float], min_sigma: float = 0.0
) -> OutputProbe:
    """From P noisy measurements Y_k (P × cases × outputs): ξ_k = Y_k − Ȳ, δ_k = L(Y_k) − L(Ȳ),
    ∂L/∂y ≈ δ_k ξ_k / σ̂² per pass, σ̂² the mean ξ² per output (the same (P − 1)/P shrinkage as
    E[δ ξ], so the ratio is unbiased). Outputs with σ̂ ≤ `min_sigma` carry no probe: 0."""
    y = np.asarray(passes, dtype=float)
    mean = y.mean(axis=0)
    xi = y - mean
    losses = np.array([loss(p) for p in y])
    delta = losses - loss(mean)
    variance = np.mean(xi**2, axis=(0, 1))
    silent = variance <= min_sigma**2
    inverse = np.divide(1.0, variance, out=np.zeros_like(variance), where=~silent)
    samples: FloatArray = delta[:, np.newaxis, np.newaxis] * xi * inverse
    return OutputProbe(samples, variance, silent, float(np.mean(losses)))


class NodePerturbation:
    """Gradient estimator for `NodePerturbable` devices: noise on units, credit to weights.

    See the module docstring for the two modes. `estimate` costs 1 + `perturbations` passes
    (injected) or `passes` passes (intrinsic) over the task's cases; each pass counts as one
    objective evaluation, and the device time is read from the device clock.
    """

    class Settings(BaseModel):
        """Probe size and count, probed layers, mode, and the layers' gains."""

        model_config = ConfigDict(extra="forbid")

        mode: Literal["injected", "intrinsic"] = Field(
            default="injected",
            description="'injected': Gaussian offsets ξ on the units against a clean pass; "
            "'intrinsic': the device's own output noise against the mean of noisy passes "
            "(output layer only)",
        )
        sigma: float = Field(
            default=4.0,
            ge=MIN_PERTURBATION,
            description="injected: σ of the unit offsets, in the device's pre-activation units "
            "(output LSB on the analog MLP); keep it well above the output quantum and well "
            "below the device's offset limit",
        )
        perturbations: int = Field(
            default=8,
            ge=1,
            le=MAX_REPEATS,
            description="injected: perturbed passes averaged per estimate",
        )
        layers: Literal["all", "last"] | list[LayerIndex] = Field(
            default="all",
            description="injected: the layers probed (indices from 0); the others get 0. "
            "intrinsic: must include the last layer",
        )
        passes: int = Field(
            default=32,
            ge=2,
            le=MAX_REPEATS,
            description="intrinsic: noisy passes per estimate (their mean ȳ)",
        )
        layer_gains: list[PositiveFloat] | None = Field(
            default=None,
            description="∂(pre-activation)/∂(input·weight) per layer; None: the device's own "
            "`layer_gains` (give them to correct a device's nominal figures)",
        )

        @model_validator(mode="after")
        def _distinct_layers(self) -> NodePerturbation.Settings:
            if isinstance(self.layers, list):
                if not self.layers:
                    raise ValueError("layers: name at least one layer, or 'all' / 'last'")
                if len(set(self.layers)) != len(self.layers):
                    raise ValueError(f"layers: {self.layers} repeats a layer")
            return self

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        (noise_seed,) = seed_sequence(seed).spawn(1)
        self._rng = np.random.default_rng(noise_seed)
        self._k = 0

    @property
    def k(self) -> int:
        """Number of estimates done so far."""
        return self._k

    def preflight(self, objective: Objective, theta: FloatArray) -> None:
        """The device's capability, its layers against `layers` and `layer_gains`, without
        measuring."""
        device = _node_device(objective)
        n_layers = len(device.layer_shapes)
        self._probed_layers(n_layers)
        self._gains(device, n_layers)

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        """Gradient of the objective at θ (in the objective's parameter space)."""
        s = self.settings
        device = _node_device(objective)
        shapes = device.layer_shapes
        t = np.asarray(theta, dtype=float)
        if t.shape != (objective.dim,):
            raise ValueError(f"theta: expected shape ({objective.dim},), got {t.shape}")
        layers = self._probed_layers(len(shapes))
        gains = self._gains(device, len(shapes))
        t0, e0 = objective.device_time(), objective.evaluations
        objective.device.set_controls(objective.physical(t))
        if s.mode == "injected":
            samples, loss, extras = self._injected(objective, device, layers, gains)
        else:
            samples, loss, extras = self._intrinsic(objective, device, gains)
        self._k += 1
        scale = objective.parameter_scale()
        n = samples.shape[0]
        gradient: FloatArray = samples.mean(axis=0) * scale
        stderr = samples.std(axis=0, ddof=1) / math.sqrt(n) * scale if n > 1 else None
        return GradientEstimate(
            gradient=gradient,
            loss=loss,
            evaluations=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            stderr=stderr,
            extras={
                **extras,
                "passes": float(objective.evaluations - e0),
                "intrinsic": float(s.mode == "intrinsic"),
                "layers_probed": float(len(layers) if s.mode == "injected" else 1),
            },
        )

    # -- the two modes ---------------------------------------------------------------------------

    def _injected(
        self,
        objective: Objective,
        device: NodePerturbable,
        layers: list[int],
        gains: list[float],
    ) -> tuple[FloatArray, float, dict[str, float]]:
        """Per-perturbation weight-gradient samples (K × dim), the clean loss, extras."""
        s = self.settings
        shapes = device.layer_shapes
        n_cases = objective.device_inputs.shape[0]
        zeros = [np.zeros((n_cases, n_out)) for _, n_out in shapes]
        y0, x0 = _pass(objective, device, zeros)
        clean = objective.task.loss(y0)
        samples = np.zeros((s.perturbations, objective.dim))
        starts = _starts(shapes)
        for k in range(s.perturbations):
            xi = list(zeros)
            for layer in layers:
                xi[layer] = s.sigma * self._rng.standard_normal((n_cases, shapes[layer][1]))
            y, _ = _pass(objective, device, xi)
            delta = objective.task.loss(y) - clean
            for layer in layers:
                g = gains[layer] * x0[layer].T @ (delta * xi[layer] / s.sigma**2)
                samples[k, starts[layer] : starts[layer + 1]] = g.reshape(-1)
        return samples, float(clean), {"sigma": s.sigma}

    def _intrinsic(
        self, objective: Objective, device: NodePerturbable, gains: list[float]
    ) -> tuple[FloatArray, float, dict[str, float]]:
        """Per-pass output-layer gradient samples (P × dim), the mean noisy loss, extras."""
        s = self.settings
        shapes = device.layer_shapes
        n_cases = objective.device_inputs.shape[0]
        zeros = [np.zeros((n_cases, n_out)) for _, n_out in shapes]
        ys, xs = [], []
        for _ in range(s.passes):
            y, seen = _pass(objective, device, zeros)
            ys.append(y)
            xs.append(seen[-1])
        probe = intrinsic_output_gradient(np.stack(ys), objective.task.loss)
        x_last = np.mean(xs, axis=0)  # cases × n_in of the output layer
        last = len(shapes) - 1
        n_in, n_out = shapes[last]
        full = np.zeros((s.passes, n_in, n_out))
        full[:, :, objective.output_columns] = gains[last] * np.einsum(
            "ci,pcj->pij", x_last, probe.samples
        )
        samples = np.zeros((s.passes, objective.dim))
        start = _starts(shapes)[last]
        samples[:, start:] = full.reshape(s.passes, -1)
        return (
            samples,
            probe.mean_loss,
            {"sigma": probe.sigma, "silent_outputs": float(np.count_nonzero(probe.silent))},
        )

    # -- settings against the device -----------------------------------------------------------

    def _probed_layers(self, n_layers: int) -> list[int]:
        chosen = self.settings.layers
        if chosen == "all":
            layers = list(range(n_layers))
        elif chosen == "last":
            layers = [n_layers - 1]
        else:
            bad = [layer for layer in chosen if layer >= n_layers]
            if bad:
                raise ConfigError(
                    f"estimator.layers {chosen}: the device has layers 0…{n_layers - 1}",
                    key=("estimator", "layers"),
                )
            layers = sorted(chosen)
        if self.settings.mode == "intrinsic" and n_layers - 1 not in layers:
            raise ConfigError(
                f"estimator.layers {chosen}: intrinsic mode estimates only the output layer "
                f"({n_layers - 1}); include it (or use 'all' / 'last')",
                key=("estimator", "layers"),
            )
        return layers

    def _gains(self, device: NodePerturbable, n_layers: int) -> list[float]:
        given = self.settings.layer_gains
        if given is not None:
            if len(given) != n_layers:
                raise ConfigError(
                    f"estimator.layer_gains: {len(given)} values for a device of {n_layers} "
                    "layers; give one per layer",
                    key=("estimator", "layer_gains"),
                )
            return list(given)
        return [float(g) for g in device.layer_gains]

    # -- state -----------------------------------------------------------------------------------

    def state_dict(self) -> JSONDict:
        """Estimate count and noise-generator state (JSON-serialisable)."""
        return {"k": self._k, "rng": generator_state(self._rng)}

    def load_state_dict(self, state: JSONDict) -> None:
        k = int(state["k"])
        if k < 0:
            raise ValueError(f"NodePerturbation state: k must be >= 0, got {k}")
        restore_generator(self._rng, state["rng"])
        self._k = k


def _node_device(objective: Objective) -> NodePerturbable:
    """The objective's device as a NodePerturbable whose controls are its layers' weights."""
    device = objective.device
    name, kind = device.spec.name, type(device).__name__
    if not isinstance(device, NodePerturbable):
        raise ConfigError(
            f"node perturbation needs a device that can offset its units (the NodePerturbable "
            f"capability: layer_shapes, measure_nodes); device {name!r} ({kind}) has not. "
            "Use a perturbative estimator on the controls (SPSA, central differences) instead",
            key=("estimator", "type"),
        )
    shapes = device.layer_shapes
    n_weights = sum(n_in * n_out for n_in, n_out in shapes)
    if n_weights != objective.dim:
        raise ConfigError(
            f"device {name!r} reports layers {list(shapes)} ({n_weights} weights) but has "
            f"{objective.dim} controls; node perturbation needs the controls to be the weights"
        )
    if len(device.spec.outputs) != shapes[-1][1]:
        raise ConfigError(
            f"device {name!r} has {len(device.spec.outputs)} outputs but its last layer has "
            f"{shapes[-1][1]} units; node perturbation needs the outputs to be the last layer"
        )
    return device


def _pass(
    objective: Objective, device: NodePerturbable, offsets: list[FloatArray]
) -> tuple[FloatArray, tuple[FloatArray, ...]]:
    """One pass over the task's cases (one objective evaluation): scored outputs, layer inputs."""
    objective.evaluations += 1
    y, seen = device.measure_nodes(objective.device_inputs, offsets)
    scored: FloatArray = y[:, objective.output_columns]
    return scored, seen


def _starts(shapes: tuple[tuple[int, int], ...]) -> list[int]:
    """Offsets of every layer's weights in the control vector (and the total at the end)."""
    return [0, *np.cumsum([n_in * n_out for n_in, n_out in shapes]).tolist()]
