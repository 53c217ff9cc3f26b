"""SGD (plain, momentum, Nesterov) and Adam: convergence under noise, projection, state.

The convergence tests exploit that these updates act coordinate by coordinate: one optimizer over
R·3 coordinates runs R independent replicates of a 3-dimensional noisy quadratic at once. Near the
minimum the iteration is a linear system driven by Gaussian noise, whose stationary covariance
(a discrete Lyapunov equation) gives the expected squared error exactly for SGD and to first
order for Adam, whose denominator is nearly constant there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.core import FloatArray
from protocols.base import Optimizer
from protocols.optimizers import SGD, Adam, BoxOptimizer, Recommendation
from protocols.schedules import (
    ConstantSchedule,
    CosineSchedule,
    ExponentialSchedule,
    SpallSchedule,
    StepSchedule,
)

CURVATURES = np.array([0.5, 1.0, 2.0])
REPLICATES = 500
GRADIENT_NOISE = 0.1


def stationary_variance(A: FloatArray, B: FloatArray, sigma: float) -> FloatArray:
    """Var of the first state of s' = A s + B ξ, ξ ~ N(0, σ²), for a batch of systems.

    A is batch × k × k, B is batch × k. Solved by the doubling iteration P ← P + A P Aᵀ, A ← A².
    """
    P = sigma**2 * np.einsum("bi,bj->bij", B, B)
    Ak = A.copy()
    for _ in range(40):  # covers 2⁴⁰ steps; the systems here forget in ~10³
        P = P + Ak @ P @ np.swapaxes(Ak, 1, 2)
        Ak = Ak @ Ak
    variance: FloatArray = P[:, 0, 0]
    return variance


def run_noisy_quadratic(
    optimizer: BoxOptimizer, steps: int, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Minimise ½ Σ h_i (x_i − x*_i)² from noisy gradients; returns (x − x*, curvature)."""
    rng = np.random.default_rng(seed)
    h = np.tile(CURVATURES, REPLICATES)
    target = rng.uniform(-0.5, 0.5, size=h.size)
    optimizer.start(rng.uniform(-1, 1, size=h.size), -np.ones(h.size), np.ones(h.size))
    for _ in range(steps):
        x = optimizer.ask()
        optimizer.tell(h * (x - target) + rng.normal(0.0, GRADIENT_NOISE, size=h.size))
    return optimizer.x - target, h


def check_against_linear_model(error: FloatArray, h: FloatArray, variance: FloatArray) -> None:
    """Mean of e²/Var is 1 ± 4·√(2/R) per curvature (e is Gaussian); mean of e is 0 ± 4 SE."""
    for curvature in CURVATURES:
        sel = h == curvature
        z = error[sel] / np.sqrt(variance[sel])
        assert abs(np.mean(z**2) - 1.0) < 4 * math.sqrt(2 / z.size), (curvature, np.mean(z**2))
        assert abs(np.mean(z)) < 4 / math.sqrt(z.size), (curvature, np.mean(z))


@pytest.mark.parametrize(
    ("lr", "momentum", "nesterov"),
    [(0.1, 0.0, False), (0.01, 0.9, False), (0.01, 0.9, True)],
)
def test_sgd_converges_to_the_predicted_noise_floor(
    lr: float, momentum: float, nesterov: bool
) -> None:
    opt = SGD(SGD.Settings(lr=lr, momentum=momentum, nesterov=nesterov))
    steps = 1500
    error, h = run_noisy_quadratic(opt, steps, seed=1)
    # State (e, v): v' = μv + g, g = h·e + ξ; e' = e − lr·(μ'·v' + g·[nesterov]) written out:
    a = (1 + momentum) if nesterov else 1.0  # weight of g in the step
    b = momentum**2 if nesterov else momentum  # weight of the old velocity in the step
    A = np.zeros((h.size, 2, 2))
    A[:, 0, 0] = 1 - lr * a * h
    A[:, 0, 1] = -lr * b
    A[:, 1, 0] = h
    A[:, 1, 1] = momentum
    B = np.column_stack([np.full(h.size, -lr * a), np.ones(h.size)])
    rho = max(abs(np.linalg.eigvals(A[i])).max() for i in range(3))
    assert rho**steps < 1e-6  # the start is forgotten
    check_against_linear_model(error, h, stationary_variance(A, B, GRADIENT_NOISE))


def test_adam_converges_to_the_predicted_noise_floor() -> None:
    s = Adam.Settings(lr=0.01)
    opt = Adam(s)
    steps = 8000  # long against the 1/(1 − β2) = 1000-step memory of the denominator
    error, h = run_noisy_quadratic(opt, steps, seed=2)
    state = opt.state_dict()
    denominator = np.sqrt(np.array(state["v"]) / (1 - s.beta2**steps)) + s.eps
    k = s.lr / denominator  # effective learning rate per coordinate
    A = np.zeros((h.size, 2, 2))
    A[:, 0, 0] = 1 - k * (1 - s.beta1) * h
    A[:, 0, 1] = -k * s.beta1
    A[:, 1, 0] = (1 - s.beta1) * h
    A[:, 1, 1] = s.beta1
    B = np.column_stack([-k * (1 - s.beta1), np.full(h.size, 1 - s.beta1)])
    check_against_linear_model(error, h, stationary_variance(A, B, GRADIENT_NOISE))


def test_first_steps_by_hand() -> None:
    lo, hi = -np.full(2, 10.0), np.full(2, 10.0)
    g1, g2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])

    sgd = SGD(SGD.Settings(lr=0.1, momentum=0.5))
    sgd.start(np.zeros(2), lo, hi)
    sgd.tell(g1)
    sgd.tell(g2)  # v1 = g1, v2 = 0.5·g1 + g2
    np.testing.assert_allclose(sgd.x, -0.1 * g1 - 0.1 * (0.5 * g1 + g2))

    nag = SGD(SGD.Settings(lr=0.1, momentum=0.5, nesterov=True))
    nag.start(np.zeros(2), lo, hi)
    nag.tell(g1)
    nag.tell(g2)  # steps g + μ·v with v1 = g1, v2 = 0.5·g1 + g2
    v2 = 0.5 * g1 + g2
    np.testing.assert_allclose(nag.x, -0.1 * (g1 + 0.5 * g1) - 0.1 * (g2 + 0.5 * v2))

    adam = Adam(Adam.Settings(lr=0.1, eps=1e-12))
    adam.start(np.zeros(2), lo, hi)
    adam.tell(g1)  # bias-corrected first step is lr·sign(g)
    np.testing.assert_allclose(adam.x, -0.1 * np.sign(g1))
    assert adam.iterations == 1


OptimizerFactory = Callable[[], BoxOptimizer]
FACTORIES: dict[str, OptimizerFactory] = {
    "sgd": lambda: SGD(SGD.Settings(lr=0.05)),
    "momentum": lambda: SGD(SGD.Settings(lr=0.05, momentum=0.9)),
    "nesterov": lambda: SGD(SGD.Settings(lr=0.05, momentum=0.5, nesterov=True)),
    "adam": lambda: Adam(Adam.Settings(lr=0.3)),
}


def test_all_implement_the_protocol() -> None:
    for make in FACTORIES.values():
        assert isinstance(make(), Optimizer)


box_and_start = st.integers(min_value=1, max_value=4).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(-100, 100), min_size=n, max_size=n),
        st.lists(st.floats(1e-6, 100), min_size=n, max_size=n),
        st.lists(st.floats(0, 1), min_size=n, max_size=n),
        st.lists(
            st.lists(st.floats(-1e150, 1e150), min_size=n, max_size=n), min_size=1, max_size=8
        ),
    )
)


@settings(max_examples=60, deadline=None)
@given(case=box_and_start, name=st.sampled_from(sorted(FACTORIES)))
def test_every_iterate_stays_in_the_box(
    case: tuple[list[float], list[float], list[float], list[list[float]]], name: str
) -> None:
    low, width, fraction, gradients = case
    lower = np.array(low)
    upper = lower + np.array(width)
    x0 = np.clip(lower + np.array(fraction) * (upper - lower), lower, upper)
    opt = FACTORIES[name]()
    opt.start(x0, lower, upper)
    for g in gradients:
        opt.tell(np.array(g))
        x = opt.ask()
        assert np.all(np.isfinite(x))
        assert np.all(x >= lower)
        assert np.all(x <= upper)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_start_rejects_points_outside_the_box(name: str) -> None:
    opt = FACTORIES[name]()
    lo, hi = -np.ones(3), np.ones(3)
    with pytest.raises(ValueError, match=r"x0\[1\] = 1\.5 is outside its range \[-1\.0, 1\.0\]"):
        opt.start(np.array([0.0, 1.5, 0.0]), lo, hi)
    with pytest.raises(ValueError, match=r"x0\[2\] = nan"):
        opt.start(np.array([0.0, 0.0, math.nan]), lo, hi)
    with pytest.raises(ValueError, match="coordinate 0"):
        opt.start(np.zeros(3), np.array([0.5, -1, -1]), np.array([0.0, 1, 1]))
    with pytest.raises(ValueError, match="one length"):
        opt.start(np.zeros(3), -np.ones(2), np.ones(2))
    with pytest.raises(RuntimeError, match="start"):
        opt.ask()


def test_tell_refuses_bad_gradients_without_moving() -> None:
    opt = SGD()
    opt.start(np.zeros(2), -np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match=r"gradient\[1\] = inf"):
        opt.tell(np.array([0.0, math.inf]))
    with pytest.raises(ValueError, match="shape"):
        opt.tell(np.zeros(3))
    np.testing.assert_array_equal(opt.x, np.zeros(2))
    assert opt.iterations == 0


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_round_trip_continues_identically(name: str) -> None:
    rng = np.random.default_rng(3)
    gradients = rng.normal(size=(20, 3))
    original = FACTORIES[name]()
    lower = np.array([-1.0, -math.inf, -2.0])
    upper = np.array([1.0, 2.0, math.inf])
    original.start(np.array([0.2, -0.3, 0.1]), lower, upper)
    for g in gradients[:10]:
        original.tell(g)
    text = json.dumps(original.state_dict(), allow_nan=False)  # strict JSON
    restored = FACTORIES[name]()
    restored.load_state_dict(json.loads(text))
    assert restored.iterations == original.iterations == 10
    for g in gradients[10:]:
        original.tell(g)
        restored.tell(g)
        np.testing.assert_array_equal(restored.ask(), original.ask())
    assert restored.state_dict() == original.state_dict()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="lr"):
        SGD.Settings(lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD.Settings(momentum=1.0)
    with pytest.raises(ValueError, match="nesterov"):
        SGD.Settings(nesterov=True)
    with pytest.raises(ValueError, match="beta2"):
        Adam.Settings(beta2=1.0)
    with pytest.raises(ValueError, match="extra"):
        Adam.Settings.model_validate({"learning_rate": 0.1})


# -- schedules, learning rate, reject, recommendation ------------------------------------------


def test_the_schedule_sets_each_steps_rate() -> None:
    opt = SGD(SGD.Settings(lr=0.1, schedule=ExponentialSchedule(decay=0.5)))
    opt.start(np.zeros(1), -np.ones(1), np.ones(1))
    rates = []
    for _ in range(3):
        rates.append(opt.learning_rate)
        opt.tell(np.ones(1))
    assert rates == [0.1, 0.05, 0.025]
    np.testing.assert_allclose(opt.x, [-0.175])
    adam = Adam(Adam.Settings(lr=0.2, eps=1e-12, schedule=StepSchedule(every=1, gamma=0.5)))
    adam.start(np.zeros(1), -np.ones(1), np.ones(1))
    adam.tell(np.ones(1))
    adam.tell(np.ones(1))  # constant gradient: every bias-corrected step is lr_k
    np.testing.assert_allclose(adam.x, [-0.3])


def test_spall_schedule_takes_its_stability_constant_from_the_horizon() -> None:
    opt = SGD(SGD.Settings(lr=1.0, schedule=SpallSchedule()))
    with pytest.raises(ValueError, match="give `A` or a horizon"):
        opt.start(np.zeros(2), -np.ones(2), np.ones(2))
    opt.horizon = 100  # A = 10
    opt.start(np.zeros(2), -np.ones(2), np.ones(2))
    assert opt.learning_rate == 1.0
    for _ in range(5):
        opt.tell(np.zeros(2))
    assert opt.learning_rate == pytest.approx((11 / 16) ** 0.602)
    with pytest.raises(ValueError, match="horizon"):
        opt.horizon = 0


def test_set_learning_rate_rescales_the_schedule() -> None:
    opt = SGD(SGD.Settings(lr=0.1, schedule=ExponentialSchedule(decay=0.5)))
    opt.start(np.zeros(1), -np.ones(1), np.ones(1))
    opt.tell(np.zeros(1))
    opt.set_learning_rate(0.8)
    assert opt.base_learning_rate == 0.8
    assert opt.learning_rate == 0.4
    assert opt.settings.lr == 0.1  # the configuration is left as written
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="finite and > 0"):
            opt.set_learning_rate(bad)


def test_first_step_rate_gives_the_target_first_step() -> None:
    g = np.array([0.5, -2.0])
    for opt in (
        SGD(SGD.Settings(lr=1.0)),
        SGD(SGD.Settings(lr=1.0, momentum=0.5, nesterov=True)),
        Adam(Adam.Settings(lr=1.0, eps=1e-12)),
    ):
        opt.start(np.zeros(2), -np.full(2, 10.0), np.full(2, 10.0))
        scale = float(np.mean(np.abs(g)))
        opt.set_learning_rate(opt.first_step_rate(0.3, scale))
        opt.tell(g)
        assert np.mean(np.abs(opt.x)) == pytest.approx(0.3), type(opt).__name__


def test_reject_restores_the_previous_iterate() -> None:
    opt = SGD(SGD.Settings(lr=0.1, momentum=0.5))
    opt.start(np.array([0.2, -0.1]), -np.ones(2), np.ones(2))
    with pytest.raises(RuntimeError, match="no step to take back"):
        opt.reject()
    opt.tell(np.array([1.0, -1.0]))
    before = opt.x
    opt.tell(np.array([3.0, 2.0]))
    assert not np.array_equal(opt.x, before)
    opt.reject()
    np.testing.assert_array_equal(opt.x, before)
    assert (opt.iterations, opt.rejections) == (2, 1)  # the step still counts for the schedule
    with pytest.raises(RuntimeError, match="once, after tell"):
        opt.reject()


def test_recommend_average_is_the_mean_of_the_late_iterates() -> None:
    opt = SGD(SGD.Settings(lr=1.0))
    opt.set_recommendation(Recommendation(policy="average", average_from=0.5))
    opt.horizon = 4  # iterates x_2, x_3, x_4 enter the mean
    opt.start(np.zeros(1), -np.full(1, 10.0), np.full(1, 10.0))
    for k in range(4):
        if k <= 2:  # until x_2 has a successor the mean is the iterate itself
            np.testing.assert_array_equal(opt.recommend(), opt.x)
        opt.tell(np.array([-1.0]))
    np.testing.assert_allclose(opt.recommend(), [(2 + 3 + 4) / 3])
    np.testing.assert_array_equal(opt.x, [4.0])
    opt.tell(np.array([-1.0]))
    opt.reject()  # x_5 is x_4 again
    np.testing.assert_allclose(opt.recommend(), [(2 + 3 + 4 + 4) / 4])
    assert Recommendation.model_validate("average").policy == "average"
    assert Recommendation(policy="average", average_from_step=3).start_step(100) == 3


@settings(max_examples=60, deadline=None)
@given(
    case=box_and_start,
    name=st.sampled_from(sorted(FACTORIES)),
    rejects=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_iterates_and_averages_stay_in_the_box_with_schedules_and_rejects(
    case: tuple[list[float], list[float], list[float], list[list[float]]],
    name: str,
    rejects: list[bool],
) -> None:
    low, width, fraction, gradients = case
    lower = np.array(low)
    upper = lower + np.array(width)
    x0 = np.clip(lower + np.array(fraction) * (upper - lower), lower, upper)
    opt = FACTORIES[name]()
    opt.schedule = SpallSchedule()
    opt.horizon = len(gradients)
    opt.set_recommendation(Recommendation(policy="average", average_from=0.0))
    opt.start(x0, lower, upper)
    for g, reject in zip(gradients, rejects, strict=False):
        opt.tell(np.array(g))
        if reject:
            opt.reject()
        for x in (opt.ask(), opt.recommend()):
            assert np.all(np.isfinite(x))
            assert np.all(x >= lower)
            assert np.all(x <= upper)


def test_state_round_trip_keeps_rate_rejection_and_average() -> None:
    rng = np.random.default_rng(5)
    gradients = rng.normal(size=(20, 3))

    def make() -> SGD:
        opt = SGD(SGD.Settings(lr=0.05, momentum=0.5, schedule=SpallSchedule()))
        opt.horizon = 20
        opt.set_recommendation(Recommendation(policy="average"))
        return opt

    original = make()
    original.start(np.zeros(3), -np.ones(3), np.ones(3))
    original.set_learning_rate(0.2)
    for g in gradients[:12]:
        original.tell(g)
    restored = make()
    restored.load_state_dict(json.loads(json.dumps(original.state_dict(), allow_nan=False)))
    assert restored.learning_rate == original.learning_rate
    for r in (original, restored):
        r.reject()
    for g in gradients[12:]:
        original.tell(g)
        restored.tell(g)
    np.testing.assert_array_equal(restored.recommend(), original.recommend())
    assert restored.state_dict() == original.state_dict()


def test_states_from_before_schedules_still_load() -> None:
    opt = Adam(Adam.Settings(lr=0.3))
    opt.start(np.array([0.1, 0.2]), -np.ones(2), np.ones(2))
    opt.tell(np.array([1.0, 1.0]))
    old = {
        k: v
        for k, v in opt.state_dict().items()
        if k not in {"lr", "horizon", "previous", "rejections", "average", "average_count"}
    }
    restored = Adam(Adam.Settings(lr=0.3))
    restored.load_state_dict(old)
    np.testing.assert_array_equal(restored.x, opt.x)
    assert restored.learning_rate == 0.3
    with pytest.raises(RuntimeError, match="no step to take back"):
        restored.reject()
    broken = {**opt.state_dict(), "average": [0.0]}
    with pytest.raises(ValueError, match="'average' has shape"):
        restored.load_state_dict(broken)


def test_schedule_settings_in_files() -> None:
    sgd = SGD.Settings.model_validate({"lr": 0.1, "schedule": {"type": "cosine", "lr_min": 0.01}})
    assert isinstance(sgd.schedule, CosineSchedule)
    assert isinstance(Adam.Settings().schedule, ConstantSchedule)  # existing configs unchanged
    with pytest.raises(ValueError, match="schedule"):
        Adam.Settings.model_validate({"schedule": {"type": "spall", "alpha": 2}})
