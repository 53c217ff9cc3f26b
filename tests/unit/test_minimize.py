"""minimize(): accounting against the device's own count, callbacks, blocking, convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from hil.core import FloatArray, JSONDict
from protocols.base import GradientEstimate, Objective
from protocols.calibration import CalibrationSettings
from protocols.estimators import SPSA, CentralDifference
from protocols.minimize import BlockingSettings, minimize, optimization_step
from protocols.optimizers import SGD, Adam, Recommendation
from protocols.schedules import SpallSchedule
from protocols.tasks import MinimizeOutputTask
from simulators.landscape import LandscapeDevice

EVAL_TIME = 1e-3


class CountingLandscape(LandscapeDevice):
    """Counts measurements where they happen: at the device."""

    measurements = 0

    def measure(self, inputs: FloatArray) -> FloatArray:
        self.measurements += 1
        return super().measure(inputs)


def landscape(seed: int = 0, **settings: object) -> tuple[Objective, CountingLandscape]:
    device = CountingLandscape(
        LandscapeDevice.Settings.model_validate({"eval_time": EVAL_TIME, **settings}), seed=seed
    )
    return Objective(device, MinimizeOutputTask()), device


def test_nfev_is_every_device_measurement() -> None:
    objective, device = landscape(dim=4, noise=0.05)
    seen: list[tuple[int, int]] = []

    def watch(intermediate: OptimizeResult) -> None:
        seen.append((intermediate.nfev, device.measurements))

    result = minimize(
        objective,
        SPSA(SPSA.Settings(c=0.1), seed=1),
        SGD(SGD.Settings(lr=0.05, schedule=SpallSchedule())),
        np.zeros(4),
        steps=25,
        callback=watch,
        blocking=True,
        calibrate=CalibrationSettings(noise_repeats=10, target_step=0.2, perturbation=True),
        recommend="average",
        final_repeats=3,
        seed=2,
    )
    assert result.success
    assert result.status == 0
    assert result.nfev == device.measurements
    assert result.device_seconds == pytest.approx(device.measurements * EVAL_TIME)
    assert all(nfev == count for nfev, count in seen)  # the callback costs nothing
    assert result.nfev == result.evaluations[-1] + 3  # + the final measurements
    calibration = result.calibration
    steps_cost = 25 * (3 + 1)  # loss, ± pair, blocking check
    assert result.nfev == calibration["evaluations"] + steps_cost + 3
    assert result.allowed_increase == pytest.approx(2 * calibration["sigma"])
    assert result.nit == 25
    assert len(result.losses) == 25


def test_stop_iteration_in_the_callback_stops_after_that_step() -> None:
    objective, device = landscape(dim=3, noise=0.01)
    opt = Adam(Adam.Settings(lr=0.1))

    def stop_at_seven(intermediate: OptimizeResult) -> None:
        if intermediate.nit == 7:
            raise StopIteration

    result = minimize(objective, SPSA(seed=0), opt, np.zeros(3), steps=50, callback=stop_at_seven)
    assert (result.nit, opt.iterations, len(result.losses)) == (7, 7, 7)
    assert not result.success
    assert result.status == 99
    assert "StopIteration" in result.message
    assert "step 7 of 50" in result.message
    assert result.nfev == device.measurements == 7 * 3 + 1
    assert math.isfinite(result.fun)
    np.testing.assert_array_equal(result.x, opt.x)


class SabotagedSPSA(SPSA):
    """SPSA that reports a huge uphill gradient at one estimate."""

    bad_estimate = 2

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        k = self.k
        estimate = super().estimate(objective, theta)
        if k != self.bad_estimate:
            return estimate
        return GradientEstimate(
            gradient=-50.0 * np.sign(estimate.gradient),
            loss=estimate.loss,
            evaluations=estimate.evaluations,
            device_seconds=estimate.device_seconds,
        )


def test_blocking_rejects_an_artificially_bad_step() -> None:
    objective, _ = landscape(dim=5, noise=0.01, minimum_spread=1.0)
    iterates: list[FloatArray] = []
    opt = SGD(SGD.Settings(lr=0.05))

    def record(intermediate: OptimizeResult) -> None:
        iterates.append(opt.x)

    result = minimize(
        objective,
        SabotagedSPSA(SPSA.Settings(c=0.1), seed=3),
        opt,
        np.zeros(5),
        steps=8,
        callback=record,
        blocking=BlockingSettings(noise_repeats=20, sigma_multiple=4.0),  # no false alarms
    )
    assert result.rejected.tolist() == [False, False, True] + [False] * 5
    np.testing.assert_array_equal(iterates[2], iterates[1])  # the bad step was taken back
    assert result.rejections == 1
    assert opt.rejections == 1
    assert result.proposed_losses[2] > result.losses[2] + result.allowed_increase
    assert result.losses[-1] < result.losses[0]


def test_blocking_with_a_fixed_allowance_measures_no_noise() -> None:
    objective, device = landscape(dim=2, noise=0.01)
    result = minimize(
        objective,
        CentralDifference(CentralDifference.Settings(h=0.1)),
        SGD(SGD.Settings(lr=0.2)),
        np.zeros(2),
        steps=4,
        blocking=BlockingSettings(allowed_increase=0.5, repeats=2),
    )
    assert result.sigma is None
    assert result.allowed_increase == 0.5
    assert result.nfev == device.measurements == 4 * (5 + 2) + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spsa_and_sgd_with_spall_gains_converge_on_a_noisy_10d_quadratic(seed: int) -> None:
    """The reference's hand-SPSA setup (calibrated first step 0.5, A = 10 % of the steps, Polyak
    average of the second half) on ½‖θ − x*‖², σ = 0.1: from f ≈ 6.7 to well below 1 %."""
    objective, device = landscape(seed=seed, dim=10, noise=0.1, model_seed=seed)
    result = minimize(
        objective,
        SPSA(SPSA.Settings(c=0.2, measure_loss=False), seed=seed),
        SGD(SGD.Settings(lr=0.01, schedule=SpallSchedule())),
        np.zeros(10),
        steps=600,
        calibrate=CalibrationSettings(target_step=0.5, noise_repeats=10),
        recommend=Recommendation(policy="average", average_from=0.5),
    )
    start = device.true_value(np.zeros(10))
    assert device.true_value(result.x) < 0.005 * start, (device.true_value(result.x), start)
    assert result.nfev == device.measurements


def test_x0_none_starts_at_the_box_centre_or_continues() -> None:
    objective, device = landscape(dim=2, noise=0.0, bound=2.0)
    idle = minimize(objective, SPSA(seed=0), SGD(), steps=0)
    np.testing.assert_array_equal(idle.x, np.zeros(2))  # the centre of [-2, 2]²
    assert idle.fun == device.true_value(np.zeros(2))
    assert idle.nfev == 1
    opt = SGD(SGD.Settings(lr=0.1, schedule=SpallSchedule()))
    minimize(objective, SPSA(seed=0), opt, steps=3)
    assert (opt.iterations, opt.horizon) == (3, 3)
    minimize(objective, SPSA(seed=0), opt, steps=5)
    assert (opt.iterations, opt.horizon) == (8, 8)  # continued, horizon extended


class _Plain:
    """An optimizer with only ask/tell."""

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        self.x = np.array(x0)

    def ask(self) -> FloatArray:
        return self.x.copy()

    def tell(self, gradient: FloatArray) -> None:
        self.x = self.x - 0.1 * gradient

    def state_dict(self) -> JSONDict:
        return {}

    def load_state_dict(self, state: JSONDict) -> None:
        pass


def test_plain_optimizers_step_but_cannot_block_or_drive_minimize() -> None:
    objective, _ = landscape(dim=2)
    plain = _Plain()
    plain.start(np.zeros(2), objective.lower, objective.upper)
    outcome = optimization_step(objective, SPSA(seed=0), plain)
    assert outcome.learning_rate is None
    assert not outcome.rejected
    with pytest.raises(TypeError, match="reject"):
        optimization_step(objective, SPSA(seed=0), plain, allowed_increase=0.1)
    with pytest.raises(TypeError, match="learning rate, reject"):
        minimize(objective, SPSA(), plain, np.zeros(2), steps=1)  # type: ignore[arg-type]
