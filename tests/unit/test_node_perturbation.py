"""NodePerturbation on the analog MLP chip: exact means on a linear layer, the intrinsic variant,
accounting, state, configuration errors, and training with Adam.

The exact gradient of a 1-layer chip. Noise-free, the chip gives y = floor(a + ξ) with the
pre-activation a = g·XW (g = gain·n_sends) and the injected offset ξ ~ N(0, σ²) per case and unit.
For σ ≳ 1 LSB, E floor(a + ξ) = a − ½ and Var floor(a + ξ) = σ² + 1/12, both up to terms of order
exp(−2π²σ²) (Fourier series of the sawtooth). So the σ-smoothed MSE over N = cases × outputs,
E L = mean((a − ½ − t)²) + const, has ∂E L/∂a = 2(a − ½ − t)/N, and with ∂a_cj/∂W_ij = g·x_ci

    ∂L/∂W = g · Xᵀ · 2(a − ½ − t)/N.

Node perturbation is unbiased for it: by Stein's identity E[L(a + ξ) ξ]/σ² = ∇_a E L(a + ξ)
exactly for Gaussian ξ, and the subtracted clean loss is a constant (E ξ = 0).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from hil.core import ConfigError, FloatArray
from protocols.base import GradientEstimator, Objective
from protocols.node_perturbation import NodePerturbation
from protocols.optimizers import Adam
from protocols.tasks import RegressionTask
from protocols.training import TrainingProcedure
from simulators.analog_mlp import AnalogMLPDevice
from simulators.analytic import AnalyticDevice


def chip(
    layers: list[int], *, membrane: float = 0.0, seed: int = 1, **extra: Any
) -> AnalogMLPDevice:
    """An analog MLP with mismatch, slow noise and settling off; white membrane noise as given."""
    settings = {
        "layers": layers,
        "mismatch": {"gain": 0.0, "offset": 0.0},
        "noise": {"membrane": membrane, "flicker_psd": 0.0, "drift_std": 0.0},
        "timing": {"tau": None},
        **extra,
    }
    return AnalogMLPDevice(AnalogMLPDevice.Settings.model_validate(settings), seed=seed)


def estimator(seed: int = 0, **settings: Any) -> NodePerturbation:
    return NodePerturbation(NodePerturbation.Settings.model_validate(settings), seed=seed)


def cosine(a: FloatArray, b: FloatArray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def linear_problem(
    membrane: float = 0.0, seed: int = 1
) -> tuple[AnalogMLPDevice, Objective, FloatArray, FloatArray]:
    """A 3 → 2 chip at integer weights W, 12 cases, targets 15 LSB above the outputs (plus
    scatter); returns the device, objective, θ = W and the exact ∂L/∂W (module docstring)."""
    device = chip([3, 2], membrane=membrane, seed=seed, n_sends=10)  # g = 0.02
    rng = np.random.default_rng(0)
    x = rng.integers(0, 32, (12, 3)).astype(float)
    w = rng.integers(-20, 21, (3, 2)).astype(float)
    g = device.layer_gains[0]
    a = g * x @ w
    t = a + 15.0 + rng.normal(0, 5, a.shape)
    assert np.all(np.abs(a) + 30 < 128)  # σ-probes never reach the rails
    exact = g * x.T @ (2 * (a - 0.5 - t) / t.size)
    return device, Objective(device, RegressionTask.from_arrays(x, t)), w.reshape(-1), exact


# -- injected offsets ------------------------------------------------------------------------------


def test_injected_mean_is_the_exact_gradient_of_a_linear_layer_within_3_stderr() -> None:
    _, objective, theta, exact = linear_problem()
    est = estimator(seed=3, sigma=4.0, perturbations=400).estimate(objective, theta)
    assert isinstance(estimator(), GradientEstimator)
    assert est.stderr is not None
    z = (est.gradient - exact.reshape(-1)) / est.stderr
    assert np.all(np.abs(z) < 3.0), z
    # ...and the check has power: the standard errors are well below the gradient.
    assert float(np.max(est.stderr / np.abs(exact.reshape(-1)))) < 0.2
    assert cosine(est.gradient, exact.reshape(-1)) > 0.98


def test_last_layer_of_an_mlp_within_3_stderr_and_unprobed_layers_zero() -> None:
    """layers='last' on a 3 → 6 → 2 chip: the last layer sees the hidden codes H as inputs, so
    its exact gradient is g₁·Hᵀ·2(a − ½ − t)/N; the first layer's weights get exactly 0."""
    device = chip([3, 6, 2])
    rng = np.random.default_rng(2)
    x = rng.integers(0, 32, (10, 3)).astype(float)
    theta = rng.integers(-31, 32, len(device.spec.controls)).astype(float)
    w0, w1 = theta[:18].reshape(3, 6), theta[18:].reshape(6, 2)
    g0, g1 = device.layer_gains
    h = np.clip(np.floor(np.clip(np.floor(g0 * x @ w0), 0, 127) / 4), 0, 31)
    a = g1 * h @ w1
    assert h.max() > 0
    assert np.all(np.abs(a) + 30 < 128)
    t = a - 12.0
    exact = g1 * h.T @ (2 * (a - 0.5 - t) / t.size)
    objective = Objective(device, RegressionTask.from_arrays(x, t))
    est = estimator(seed=5, layers="last", perturbations=400).estimate(objective, theta)
    assert est.stderr is not None
    np.testing.assert_array_equal(est.gradient[:18], 0.0)
    live = exact.reshape(-1) != 0  # hidden units that are off carry no gradient
    np.testing.assert_array_equal(est.gradient[18:][~live], 0.0)
    z = (est.gradient[18:][live] - exact.reshape(-1)[live]) / est.stderr[18:][live]
    assert np.all(np.abs(z) < 3.0), z
    assert est.extras["layers_probed"] == 1.0


def test_accounting_loss_and_extras() -> None:
    device, objective, theta, _ = linear_problem()
    objective.evaluations = 5
    est = estimator(perturbations=6, sigma=3.0).estimate(objective, theta)
    assert est.evaluations == 7  # one clean pass and six perturbed ones
    assert objective.evaluations == 12
    assert device.evaluations == 7 * 12  # every pass plays the 12 cases
    assert est.device_seconds == pytest.approx(7 * 12 * device.evaluation_time, rel=1e-12)
    # The reported loss is the clean pass's (noise-free chip: the nominal output).
    x = objective.device_inputs
    assert est.loss == objective.task.loss(device.true_output(theta, x))
    assert est.extras == {"sigma": 3.0, "passes": 7.0, "intrinsic": 0.0, "layers_probed": 1.0}
    assert estimator(perturbations=1).estimate(objective, theta).stderr is None


def test_normalized_parameters_scale_the_gradient_by_half_the_span() -> None:
    device, physical, theta, _ = linear_problem()
    normalized = Objective(device, physical.task, normalized=True)
    g_physical = estimator(seed=9).estimate(physical, theta)
    g_normalized = estimator(seed=9).estimate(normalized, normalized.parameters(theta))
    np.testing.assert_allclose(g_normalized.gradient, 31.0 * g_physical.gradient, rtol=1e-12)
    assert g_physical.stderr is not None
    assert g_normalized.stderr is not None
    np.testing.assert_allclose(g_normalized.stderr, 31.0 * g_physical.stderr, rtol=1e-12)


def test_layer_gains_setting_overrides_the_device() -> None:
    _, objective, theta, _ = linear_problem()
    own = estimator(seed=4).estimate(objective, theta).gradient
    unit = estimator(seed=4, layer_gains=[1.0]).estimate(objective, theta).gradient
    np.testing.assert_allclose(unit, own / 0.02, rtol=1e-12)


# -- the device's own noise (intrinsic) --------------------------------------------------------


def test_intrinsic_estimate_correlates_with_the_exact_gradient() -> None:
    """2 LSB white membrane noise as the only probe, 64 passes.

    Threshold: each pass gives δ_k ξ_k/σ² with per-element variance ≈ ‖∂L/∂y‖² (first order),
    so the cosine to the truth is ≈ ‖g‖/√(‖g‖² + Σ stderr²), ≈ 0.97 here. Over 40 device and
    estimator seeds the cosine was 0.985 ± 0.014 (smallest 0.94): 0.9 is 6 spreads below."""
    _, objective, theta, exact = linear_problem(membrane=2.0, seed=11)
    est = estimator(seed=1, mode="intrinsic", passes=64).estimate(objective, theta)
    assert est.stderr is not None
    predicted = np.linalg.norm(exact) / np.sqrt(np.sum(exact**2) + np.sum(est.stderr**2))
    assert predicted > 0.95
    assert cosine(est.gradient, exact.reshape(-1)) > 0.9
    assert est.evaluations == 64
    assert est.extras["sigma"] == pytest.approx(2.0, rel=0.1)  # membrane σ, √(4 + 1/12) floored
    assert est.extras["intrinsic"] == 1.0
    assert est.extras["silent_outputs"] == 0.0


def test_intrinsic_mode_estimates_only_the_output_layer() -> None:
    device = chip([3, 4, 2], membrane=2.0)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 32, (6, 3)).astype(float)
    objective = Objective(device, RegressionTask.from_arrays(x, np.full(6, 40.0)))
    theta = rng.integers(5, 32, len(device.spec.controls)).astype(float)
    est = estimator(mode="intrinsic", passes=8).estimate(objective, theta)
    np.testing.assert_array_equal(est.gradient[:12], 0.0)
    assert np.any(est.gradient[12:] != 0)
    # Only y0 is scored: the weights into y1 carry no gradient.
    np.testing.assert_array_equal(est.gradient[12:].reshape(4, 2)[:, 1], 0.0)
    # On a noise-free chip nothing moves: the outputs are reported silent, the gradient is 0.
    quiet = Objective(chip([3, 4, 2]), objective.task)
    silent = estimator(mode="intrinsic", passes=4).estimate(quiet, theta)
    np.testing.assert_array_equal(silent.gradient, 0.0)
    assert silent.extras["silent_outputs"] == 1.0


# -- seeds, state, configuration --------------------------------------------------------------


def test_seeded_and_the_state_survives_a_json_round_trip() -> None:
    _, objective, theta, _ = linear_problem()
    first, second = estimator(seed=7), estimator(seed=7)
    np.testing.assert_array_equal(
        first.estimate(objective, theta).gradient, second.estimate(objective, theta).gradient
    )
    state = json.loads(json.dumps(first.state_dict()))
    assert state["k"] == 1
    restored = estimator(seed=99)
    restored.load_state_dict(state)
    assert restored.k == 1
    np.testing.assert_array_equal(
        restored.estimate(objective, theta).gradient, first.estimate(objective, theta).gradient
    )
    with pytest.raises(ValueError, match="k must be"):
        restored.load_state_dict({**state, "k": -1})


def test_a_device_without_the_capability_is_a_config_error() -> None:
    device = AnalyticDevice()
    objective = Objective(device, RegressionTask.from_arrays([[0.1, 0.2]], [0.0]))
    with pytest.raises(ConfigError, match=r"NodePerturbable.*'analytic' \(AnalyticDevice\)"):
        estimator().estimate(objective, np.zeros(objective.dim))
    assert objective.evaluations == 0


def test_settings_and_their_fit_to_the_device_are_checked() -> None:
    bad_settings: list[dict[str, Any]] = [
        {"sigma": 0.0},
        {"perturbations": 0},
        {"passes": 1},
        {"layers": []},
        {"layers": [0, 0]},
        {"layers": "first"},
        {"mode": "both"},
        {"layer_gains": [0.0]},
        {"sigmaa": 1.0},
    ]
    for bad in bad_settings:
        with pytest.raises(ValidationError):
            NodePerturbation.Settings.model_validate(bad)
    device = chip([3, 4, 2])
    objective = Objective(device, RegressionTask.from_arrays(np.ones((2, 3)), [1.0, 2.0]))
    theta = np.zeros(objective.dim)
    with pytest.raises(ConfigError, match=r"layers 0…1"):
        estimator(layers=[2]).estimate(objective, theta)
    with pytest.raises(ConfigError, match="output layer"):
        estimator(mode="intrinsic", layers=[0]).estimate(objective, theta)
    with pytest.raises(ConfigError, match="one per layer"):
        estimator(layer_gains=[1.0]).estimate(objective, theta)
    with pytest.raises(ValueError, match="shape"):
        estimator().estimate(objective, np.zeros(3))
    assert objective.evaluations == 0


# -- training ------------------------------------------------------------------------------------


def test_training_an_analog_mlp_with_adam_reduces_the_loss_50_fold() -> None:
    """A 3 → 6 → 1 chip with every non-ideality at its default (mismatch, membrane, 1/f, drift,
    settling) learns y = 2x₀ − x₁ + x₂/2 on 16 cases from random weights: 150 steps of 1 + 8
    passes, Adam at 1 LSB per step. Over device seeds 0…5 the loss fell 65…229-fold (seed 0:
    1798 → 7.9 LSB², near the membrane-noise floor); 50-fold is asserted."""
    device = AnalogMLPDevice(AnalogMLPDevice.Settings.model_validate({"layers": [3, 6, 1]}), seed=0)
    rng = np.random.default_rng(7)
    x = rng.integers(0, 32, (16, 3)).astype(float)
    task = RegressionTask.from_arrays(x, 2.0 * x[:, 0] - x[:, 1] + x[:, 2] / 2)
    start = rng.uniform(-10, 10, len(device.spec.controls))
    initial = float(np.mean([Objective(device, task)(start) for _ in range(8)]))
    procedure = TrainingProcedure(
        TrainingProcedure.Settings(steps=150, initial_controls=start.tolist(), final_repeats=8),
        device=device,
        task=task,
        estimator=estimator(seed=0, sigma=4.0, perturbations=8),
        optimizer=Adam(Adam.Settings(lr=1.0)),
    )
    while not procedure.done:
        record = procedure.step()
    assert record["evaluations"] == 9
    final = procedure.finish()["final_loss"]
    assert initial > 1000.0
    assert final < initial / 50, (initial, final)


def test_through_the_safety_guard_the_estimate_is_the_same_and_offsets_are_limited() -> None:
    """Station files wrap the chip in a guard: it passes node perturbation through unchanged,
    and refuses offsets beyond `limits.max_node_offset` before anything reaches the chip."""
    from hil.core import SafetyViolation
    from hil.safety import SafetyGuard, SafetyLimits

    _, bare, theta, _ = linear_problem(membrane=1.0, seed=4)
    device, _, _, _ = linear_problem(membrane=1.0, seed=4)
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    guarded = Objective(guard, bare.task)
    a = estimator(seed=3, perturbations=4).estimate(bare, theta)
    b = estimator(seed=3, perturbations=4).estimate(guarded, theta)
    np.testing.assert_array_equal(a.gradient, b.gradient)
    tight = SafetyGuard(
        chip([3, 2], n_sends=10), SafetyLimits(max_abs_voltage=1.0, max_node_offset=2.0)
    )
    before = tight.unguarded_device("test: count evaluations").evaluations  # type: ignore[attr-defined]
    with pytest.raises(SafetyViolation, match="max_node_offset"):
        estimator(sigma=4.0).estimate(Objective(tight, bare.task), theta)
    # the clean pass ran; no perturbed pass did
    assert tight.unguarded_device("test: count evaluations").evaluations - before == 12  # type: ignore[attr-defined]
