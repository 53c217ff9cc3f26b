"""Pulse-programmed training of a crossbar: weight gradients, whole pulses, honest scaling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hil.core import ConfigError
from hil.safety import SafetyGuard, SafetyLimits
from protocols.base import Objective
from protocols.estimators import SPSA
from protocols.optimizers import SGD
from protocols.pulsed import DeltaRule, IntrinsicNodePerturbation, PulseTrainingProcedure
from protocols.tasks import RegressionTask
from simulators.analytic import AnalyticDevice
from simulators.crossbar import CrossbarDevice, CrossbarSettings, IOParameters

ROWS, COLS = 6, 2


def _task(seed: int = 0, n: int = 20) -> RegressionTask:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, ROWS))
    return RegressionTask.from_arrays(x, x @ rng.uniform(-0.3, 0.3, (ROWS, COLS)))


def _crossbar(seed: int = 1, **io: float) -> CrossbarDevice:
    settings = CrossbarSettings(rows=ROWS, cols=COLS, construction_seed=0, io=IOParameters(**io))
    return CrossbarDevice(settings, seed=seed)


def _true_weight_gradient(device: CrossbarDevice, task: RegressionTask) -> np.ndarray:
    """Xᵀ·∂L/∂Y at the array's noise-free outputs."""
    outputs = device.true_output(task.inputs)
    return task.inputs.T @ task.output_gradient(outputs)


def test_intrinsic_node_perturbation_is_unbiased() -> None:
    """The mean of many estimates lies within 3.5 standard errors of Xᵀ·∂L/∂Y on every weight.

    Each estimate uses only the array's read noise (σ = 0.06) as the probe; the spread of the
    repeated estimates gives the standard error of their mean (M = 300 repeats)."""
    device, task = _crossbar(out_noise=0.06), _task()
    objective = Objective(device, task)
    estimator = IntrinsicNodePerturbation(IntrinsicNodePerturbation.Settings(passes=16))
    samples = np.array([estimator.weight_gradient(objective).gradient for _ in range(300)])
    truth = _true_weight_gradient(device, task)
    se = samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])
    z = np.abs(samples.mean(axis=0) - truth) / se
    assert np.all(z < 3.5), z
    # and it carries real information: the truth is many standard errors away from zero
    assert np.linalg.norm(truth / se) > 10


def test_delta_rule_matches_the_noise_free_gradient_without_noise() -> None:
    device, task = _crossbar(out_noise=0.0), _task()
    estimate = DeltaRule().weight_gradient(Objective(device, task))
    truth = _true_weight_gradient(device, task)
    # the periphery quantises inputs (7 bit) and outputs (9 bit): agreement to a few LSB
    np.testing.assert_allclose(estimate.gradient, truth, atol=0.02 * np.abs(truth).max())
    assert estimate.evaluations == 1


def _procedure(
    device: object, *, estimator: object, max_pulses: int = 8, steps: int = 60, lr: float = 0.05
) -> PulseTrainingProcedure:
    return PulseTrainingProcedure(
        PulseTrainingProcedure.Settings(
            steps=steps, pulse_step=0.001, max_pulses=max_pulses, weight_min=-0.6, weight_max=0.6
        ),
        device=device,  # type: ignore[arg-type]
        task=_task(),
        estimator=estimator,
        optimizer=SGD(SGD.Settings(lr=lr)),
    )


@pytest.mark.parametrize(
    "estimator",
    [DeltaRule(), IntrinsicNodePerturbation(IntrinsicNodePerturbation.Settings(passes=32))],
    ids=["delta-rule", "intrinsic-node-perturbation"],
)
def test_pulse_training_lowers_the_loss(estimator: object) -> None:
    guard = SafetyGuard(_crossbar(), SafetyLimits(max_abs_voltage=1.0, max_pulses_per_device=8))
    procedure = _procedure(guard, estimator=estimator)
    first = procedure.step()["loss"]
    while not procedure.done:
        procedure.step()
    final = procedure.finish()
    assert final["final_loss"] < first / 3.0
    assert final["pulses"] > 0


def test_large_steps_are_scaled_whole_and_reported() -> None:
    """A step needing more pulses than allowed is scaled down as a whole; the guard (limit equal
    to max_pulses) would refuse any count above it, so passing proves no count exceeded it."""
    guard = SafetyGuard(_crossbar(), SafetyLimits(max_abs_voltage=1.0, max_pulses_per_device=2))
    procedure = _procedure(guard, estimator=DeltaRule(), max_pulses=2, lr=1.0)
    record = procedure.step()
    assert record["step_scaled"] < 1.0
    assert record["pulses"] > 0


def test_refuses_devices_without_programmable_state() -> None:
    with pytest.raises(ConfigError, match="programmable weights"):
        _procedure(AnalyticDevice(), estimator=DeltaRule())


def test_refuses_a_control_gradient_estimator() -> None:
    with pytest.raises(ConfigError, match="weight-gradient estimator"):
        _procedure(_crossbar(), estimator=SPSA())


def test_state_round_trip_continues_identically() -> None:
    def run(split: bool) -> list[float]:
        device = _crossbar(seed=5)
        est = IntrinsicNodePerturbation(IntrinsicNodePerturbation.Settings(passes=8))
        procedure = _procedure(device, estimator=est, steps=6)
        losses = [procedure.step()["loss"] for _ in range(3)]
        if split:
            state, device_state = procedure.state_dict(), device.state_dict()
            device = _crossbar(seed=99)
            device.load_state_dict(device_state)
            est = IntrinsicNodePerturbation(IntrinsicNodePerturbation.Settings(passes=8))
            procedure = _procedure(device, estimator=est, steps=6)
            procedure.load_state_dict(state)
        return losses + [procedure.step()["loss"] for _ in range(3)]

    assert run(split=False) == run(split=True)


def test_steps_smaller_than_a_pulse_are_sent_later_not_lost() -> None:
    """With lr so small that every step asks for under half a pulse, rounding each step alone
    would send nothing for ever; the pending remainder is kept and sent once it adds up."""
    procedure = _procedure(_crossbar(out_noise=0.0), estimator=DeltaRule(), steps=30, lr=0.002)
    first = procedure.step()
    assert first["pulses"] == 0  # the first step is below half a pulse on every weight
    while not procedure.done:
        procedure.step()
    assert procedure.finish()["pulses"] > 0
    pending = np.abs(procedure.optimizer.ask() - procedure._sent)
    assert np.all(pending <= 0.001 / 2 + 1e-12)  # never more than half a pulse outstanding


def test_resync_reads_the_array_back_and_continues_from_it() -> None:
    """Noisy pulses (50 % cycle-to-cycle spread) take the array away from the intended weights;
    reading back every 5 steps restarts from the real weights, so they end closer."""

    def run(resync: int | None) -> tuple[list[dict[str, Any]], float]:
        device = CrossbarDevice(
            CrossbarSettings(rows=ROWS, cols=COLS, construction_seed=0, dw_min_std=0.5), seed=2
        )
        procedure = PulseTrainingProcedure(
            PulseTrainingProcedure.Settings(
                steps=28, pulse_step=0.001, max_pulses=8, resync_every=resync
            ),
            device=device,
            task=_task(),
            estimator=DeltaRule(),
            optimizer=SGD(SGD.Settings(lr=0.05)),
        )
        records = [procedure.step() for _ in range(28)]
        return records, float(procedure.finish()["weights_vs_intended_rms"])

    plain, gap_plain = run(None)
    synced, gap_synced = run(5)
    assert all("resynced" not in r for r in plain)
    assert [r["step"] for r in synced if r.get("resynced")] == [5, 10, 15, 20, 25]
    assert all(r["intended_vs_read_rms"] > 0 for r in synced if r.get("resynced"))
    # three noisy steps after the last read-back against 28 without any
    assert gap_synced < 0.7 * gap_plain, (gap_synced, gap_plain)
