"""minimize(): accounting against the device's own count, callbacks, blocking, convergence."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from hil.core import FloatArray, JSONDict
from protocols.base import GradientEstimate, GradientEstimator, Objective
from protocols.calibration import CalibrationSettings
from protocols.estimators import SPSA, CentralDifference
from protocols.minimize import BlockingSettings, minimize, optimization_step
from protocols.optimizers import SGD, Adam, Recommendation
from protocols.schedules import CosineSchedule, SpallSchedule
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


# -- budget= -------------------------------------------------------------------------------------

SPALL_ALPHA = 0.602


def spall_rate(lr: float, k: int, horizon: int) -> float:
    a = 0.1 * horizon
    return float(lr * ((1 + a) / (k + 1 + a)) ** SPALL_ALPHA)


@dataclass(frozen=True)
class BudgetCase:
    make_estimator: Callable[[], GradientEstimator]
    calibration: CalibrationSettings | None
    blocking: BlockingSettings | bool | None
    dim: int
    step_cost: int  # evaluations per step: estimate + blocking


CALIBRATION = CalibrationSettings(noise_repeats=10, target_step=0.2, perturbation=True)
BUDGET_CASES = {
    "spsa, calibrated, blocking": BudgetCase(
        lambda: SPSA(SPSA.Settings(c=0.1), seed=1), CALIBRATION, True, 4, 2 + 1 + 1
    ),
    "central differences, calibrated": BudgetCase(
        lambda: CentralDifference(CentralDifference.Settings(h=0.1)), CALIBRATION, None, 3, 7
    ),
    "spsa without loss, blocking's own sigma": BudgetCase(
        lambda: SPSA(SPSA.Settings(c=0.1, measure_loss=False), seed=1),
        None,
        BlockingSettings(noise_repeats=10, repeats=2),
        4,
        2 + 2,
    ),
}


def run_budget_case(
    case: str, *, budget: int | None = None, steps: int | None = None, seed: int = 0
) -> tuple[OptimizeResult, CountingLandscape, SGD]:
    c = BUDGET_CASES[case]
    objective, device = landscape(seed=seed, dim=c.dim, noise=0.05)
    optimizer = SGD(SGD.Settings(lr=0.05, schedule=SpallSchedule()))
    result = minimize(
        objective,
        c.make_estimator(),
        optimizer,
        np.zeros(c.dim),
        steps=steps,
        budget=budget,
        calibrate=c.calibration,
        blocking=c.blocking,
        recommend="average",
        final_repeats=2,
        seed=seed + 10,
    )
    return result, device, optimizer


@pytest.mark.parametrize("case", list(BUDGET_CASES))
@pytest.mark.parametrize("budget", [250, 401])
def test_a_budget_runs_the_steps_it_affords_as_that_step_count_would(
    case: str, budget: int
) -> None:
    result, device, optimizer = run_budget_case(case, budget=budget)
    cost = BUDGET_CASES[case].step_cost
    assert result.nfev == device.measurements <= budget
    assert budget - result.nfev < cost  # within one step's cost
    assert (result.budget, result.unspent) == (budget, budget - result.nfev)
    assert result.success
    assert f"budget of {budget} evaluations" in result.message
    assert f"{budget - result.nfev} unspent" in result.message
    steps = result.nit
    assert steps > 5
    assert np.all(np.diff(result.evaluations) == cost)
    # the horizon is the number of steps that fit: Spall's A and the average's start follow it
    assert optimizer.horizon == result.horizon == steps
    assert isinstance(optimizer.schedule, SpallSchedule)
    assert optimizer.schedule.stability(optimizer.horizon) == pytest.approx(0.1 * steps)
    # ... so the run is the one steps=<that count> makes, bit for bit
    same, same_device, _ = run_budget_case(case, steps=steps)
    assert same.nfev == same_device.measurements == result.nfev
    np.testing.assert_array_equal(same.x, result.x)
    for key in ("losses", "proposed_losses", "learning_rates", "rejected", "evaluations"):
        np.testing.assert_array_equal(same[key], result[key])
    assert same.fun == result.fun


def test_the_horizon_from_the_budget_sets_every_rate_and_the_average_start() -> None:
    objective, device = landscape(dim=3, noise=0.05)
    optimizer = SGD(SGD.Settings(lr=0.05, schedule=SpallSchedule()))
    iterates = [np.zeros(3)]
    result = minimize(
        objective,
        SPSA(SPSA.Settings(c=0.1), seed=0),
        optimizer,
        np.zeros(3),
        budget=200,
        callback=lambda _: iterates.append(optimizer.x),
        calibrate=CalibrationSettings(noise_repeats=10, target_step=0.2),
        recommend="average",
    )
    n = result.nit
    lr = optimizer.base_learning_rate  # the calibrated rate
    assert result.nfev == device.measurements == 10 + 10 * 3 + n * 3 + 1 <= 200 < result.nfev + 3
    assert result.learning_rates[0] == lr  # step 0 uses lr whatever the horizon
    expected = [spall_rate(lr, k, n) for k in range(n)]
    np.testing.assert_allclose(result.learning_rates, expected, rtol=1e-12)
    start = math.ceil(0.5 * n)  # the average of the iterates x_k, k >= n/2 of the horizon
    np.testing.assert_allclose(result.x, np.mean(iterates[start:], axis=0), rtol=1e-12)


def test_a_continued_run_plans_its_budget_from_the_optimizers_step_count() -> None:
    objective, device = landscape(dim=2, noise=0.05)
    optimizer = SGD(SGD.Settings(lr=0.05, schedule=SpallSchedule()))
    minimize(objective, SPSA(seed=0), optimizer, np.zeros(2), steps=4)
    before = device.measurements
    result = minimize(objective, SPSA(seed=1), optimizer, budget=40)  # continues at step 4
    assert result.nfev == device.measurements - before == 40 - 1 + 1  # 13 steps of 3, final 1
    assert (result.nit, optimizer.iterations, optimizer.horizon) == (13, 17, 17)
    # the horizon was fixed before the continuation's first step read its rate
    expected = [spall_rate(0.05, 4 + k, 17) for k in range(13)]
    np.testing.assert_allclose(result.learning_rates, expected, rtol=1e-12)


def test_a_cosine_schedule_runs_over_the_horizon_the_budget_allows() -> None:
    objective, _ = landscape(dim=2, noise=0.05)
    optimizer = Adam(Adam.Settings(lr=0.1, schedule=CosineSchedule(lr_min=0.01)))
    result = minimize(
        objective, CentralDifference(), optimizer, np.zeros(2), budget=101, final_repeats=1
    )
    assert (result.nit, optimizer.horizon, result.unspent) == (20, 20, 0)  # 20 × 5 + 1
    expected = [optimizer.schedule.learning_rate(0.1, k, 20) for k in range(20)]
    np.testing.assert_allclose(result.learning_rates, expected, rtol=1e-12)
    assert result.learning_rates[0] == 0.1
    assert result.learning_rates[-1] == pytest.approx(
        0.01 + 0.09 * 0.5 * (1 + math.cos(0.95 * math.pi))
    )


class OpaqueSPSA:
    """SPSA behind a wrapper, so minimize cannot tell what its next estimate costs."""

    def __init__(self, settings: SPSA.Settings) -> None:
        self.inner = SPSA(settings, seed=0)

    def estimate(self, objective: Objective, theta: FloatArray) -> GradientEstimate:
        return self.inner.estimate(objective, theta)

    def state_dict(self) -> JSONDict:
        return self.inner.state_dict()

    def load_state_dict(self, state: JSONDict) -> None:
        self.inner.load_state_dict(state)


RESAMPLED = SPSA.Settings(c=0.1, resamples={0: 1, 5: 3})  # 3 evaluations per step, then 7


def test_a_resample_schedule_is_planned_ahead() -> None:
    objective, device = landscape(dim=3, noise=0.05)
    optimizer = SGD(SGD.Settings(lr=0.05, schedule=SpallSchedule()))
    result = minimize(objective, SPSA(RESAMPLED, seed=0), optimizer, np.zeros(3), budget=60)
    # 59 for steps: 5 × 3 + 6 × 7 = 57; the 12th step (7) does not fit in 2
    assert np.diff(result.evaluations, prepend=0).tolist() == [3] * 5 + [7] * 6
    assert result.nfev == device.measurements == 58
    assert (result.nit, optimizer.horizon) == (11, 11)
    assert "2 unspent, less than the next step's 7" in result.message


def test_an_estimator_that_cannot_tell_its_cost_is_stopped_by_the_largest_seen() -> None:
    objective, device = landscape(dim=3, noise=0.05)
    optimizer = SGD(SGD.Settings(lr=0.05, schedule=SpallSchedule()))
    result = minimize(objective, OpaqueSPSA(RESAMPLED), optimizer, np.zeros(3), budget=60)
    assert result.nfev == device.measurements == 58
    assert result.nit == 11
    assert optimizer.horizon == 1 + (59 - 3) // 3  # planned from the first step's cost
    assert "less than the largest step cost seen (7)" in result.message
    assert "OpaqueSPSA cannot tell its next cost in advance" in result.message
    # a cost that grows beyond every cost seen cannot be foreseen: the message says so
    objective, device = landscape(dim=3, noise=0.05)
    optimizer = SGD(SGD.Settings(lr=0.05))
    over = minimize(objective, OpaqueSPSA(RESAMPLED), optimizer, np.zeros(3), budget=21)
    assert over.nfev == device.measurements == 5 * 3 + 7 + 1
    assert over.unspent == -2
    assert "EXCEEDED by 2" in over.message


def test_budget_runs_are_reproducible_with_a_seed() -> None:
    first, _, _ = run_budget_case("spsa, calibrated, blocking", budget=200, seed=4)
    second, _, _ = run_budget_case("spsa, calibrated, blocking", budget=200, seed=4)
    np.testing.assert_array_equal(first.x, second.x)
    np.testing.assert_array_equal(first.losses, second.losses)
    assert (first.nfev, first.fun, first.message) == (second.nfev, second.fun, second.message)
    assert first.calibration == second.calibration


def test_steps_and_budget_exclude_each_other_and_a_budget_must_cover_the_setup() -> None:
    objective, device = landscape(dim=2, noise=0.05)
    with pytest.raises(ValueError, match=r"exactly one of steps= .* got both"):
        minimize(objective, SPSA(seed=0), SGD(), np.zeros(2), steps=5, budget=50)
    with pytest.raises(ValueError, match=r"exactly one of steps= .* got neither"):
        minimize(objective, SPSA(seed=0), SGD(), np.zeros(2))
    with pytest.raises(ValueError, match="budget must cover"):  # σ's 25 + the final 1
        minimize(objective, SPSA(seed=0), SGD(), np.zeros(2), budget=20, calibrate=True)
    assert device.measurements == 0  # refused before any evaluation
    calibration = CalibrationSettings(noise_repeats=10, perturbation=True)  # 32+ evaluations
    with pytest.raises(ValueError, match="calibration used"):
        minimize(objective, SPSA(seed=0), SGD(), np.zeros(2), budget=20, calibrate=calibration)


def test_a_budget_without_room_for_a_step_only_measures_the_start() -> None:
    objective, device = landscape(dim=2, noise=0.05)
    optimizer = SGD(SGD.Settings(schedule=SpallSchedule()))
    result = minimize(objective, SPSA(seed=0), optimizer, np.zeros(2), budget=3)
    assert (result.nit, result.nfev, device.measurements, result.unspent) == (0, 1, 1, 2)
    assert optimizer.horizon == 1  # a schedule needs one; no step was planned
    np.testing.assert_array_equal(result.x, np.zeros(2))
    assert "less than the next step's 3" in result.message


def test_stop_iteration_with_a_budget_names_the_planned_steps_and_the_budget() -> None:
    objective, _ = landscape(dim=2, noise=0.05)

    def stop_at_three(intermediate: OptimizeResult) -> None:
        if intermediate.nit == 3:
            raise StopIteration

    result = minimize(
        objective, SPSA(seed=0), SGD(), np.zeros(2), budget=31, callback=stop_at_three
    )
    assert result.status == 99
    assert "after step 3 of 10" in result.message
    assert "budget of 31 evaluations" in result.message
    assert "21 unspent" in result.message  # 31 − 3 × 3 − 1
