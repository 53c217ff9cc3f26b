"""pycma and nevergrad through an Objective: budget, box, convergence under noise, stopping.

The device counts what it really measured (calls to `measure`) and records every control vector
it was given, independently of the Objective's own counter.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from hil.core import FloatArray
from protocols.base import Objective
from protocols.external import (
    CMAAdapter,
    NevergradAdapter,
    PopulationOptimizer,
    run_population,
)
from protocols.tasks import MinimizeOutputTask
from simulators.landscape import LandscapeDevice

DIM = 5
BOUND = 5.0


class CountingDevice(LandscapeDevice):
    """A landscape device that counts its measurements and keeps every control vector set."""

    def __init__(self, settings: LandscapeDevice.Settings, *, seed: int) -> None:
        super().__init__(settings, seed=seed)
        self.measurements = 0
        self.applied: list[FloatArray] = []

    def set_controls(self, values: FloatArray) -> None:
        self.applied.append(np.array(values, dtype=float))
        super().set_controls(values)

    def measure(self, inputs: FloatArray) -> FloatArray:
        self.measurements += 1
        return super().measure(inputs)


def make(
    *, noise: float = 0.1, model_seed: int = 0, minimum: list[float] | None = None
) -> tuple[CountingDevice, Objective]:
    settings = LandscapeDevice.Settings(
        dim=DIM, bound=BOUND, noise=noise, model_seed=model_seed, minimum=minimum
    )
    device = CountingDevice(settings, seed=1000 + model_seed)
    return device, Objective(device, MinimizeOutputTask())


Factory = Callable[[int, int], PopulationOptimizer]

ADAPTERS: dict[str, Factory] = {
    "cma": lambda seed, budget: CMAAdapter(seed=seed),
    "cma-noise-handler": lambda seed, budget: CMAAdapter(
        CMAAdapter.Settings(noise_handler=True), seed=seed
    ),
    "tbpsa": lambda seed, budget: NevergradAdapter(
        NevergradAdapter.Settings(budget=budget), seed=seed
    ),
    "ng-cma": lambda seed, budget: NevergradAdapter(
        NevergradAdapter.Settings(optimizer="CMA", budget=budget), seed=seed
    ),
}


def test_adapters_satisfy_the_protocol() -> None:
    for name, factory in ADAPTERS.items():
        assert isinstance(factory(0, 10), PopulationOptimizer), name


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_budget_is_respected_and_counted_on_the_device(name: str) -> None:
    budget = 157  # not a multiple of pycma's population of 8
    device, objective = make()
    result = run_population(objective, ADAPTERS[name](3, budget), budget, x0=np.zeros(DIM))
    assert result.nfev == objective.evaluations == device.measurements
    assert result.device_seconds == pytest.approx(device.measurements * 1e-3)
    if name == "cma":  # whole generations of 8 only: the last 5 evaluations are left unspent
        assert result.nfev == 152
        assert result.status == 2
        assert "5 evaluations left" in result.message
    elif name == "cma-noise-handler":  # batches of 8 × (1..30) and re-evaluations
        assert result.nfev <= budget
        assert result.status in (0, 2)
    else:  # one candidate per ask: the budget is spent exactly
        assert result.nfev == budget
        assert result.status == 0
    assert result.x.shape == (DIM,)


def test_cma_whole_generations_spend_the_budget_exactly() -> None:
    device, objective = make()
    result = run_population(objective, CMAAdapter(seed=1), 80, x0=np.zeros(DIM))
    assert result.nfev == device.measurements == 80
    assert result.nit == 10
    assert "budget is spent" in result.message


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_candidates_never_leave_the_box(name: str) -> None:
    # the minimum sits in a corner and the first step is large, so the box is pressed hard
    device, objective = make(minimum=[BOUND, -BOUND, BOUND, BOUND * 0.99, -BOUND])
    optimizer = ADAPTERS[name](5, 400)
    if isinstance(optimizer, CMAAdapter):
        optimizer.settings = CMAAdapter.Settings(
            sigma0=2 * BOUND, noise_handler=optimizer.settings.noise_handler
        )
    result = run_population(objective, optimizer, 400, x0=np.zeros(DIM))
    applied = np.array(device.applied)
    assert len(applied) == result.nfev
    assert np.all(np.abs(applied) <= BOUND)
    assert np.all(np.abs(result.x) <= BOUND)
    assert result.projections == 0  # the libraries' own bound handling sufficed


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_reduces_the_noise_free_value_on_a_noisy_quadratic(name: str) -> None:
    """5-D quadratic, σ = 0.1, 600 evaluations: the noise-free value of the recommendation drops
    at least 10× from the start for each of three problem instances (typically 50-500×)."""
    for seed in range(3):
        device, objective = make(noise=0.1, model_seed=seed)
        x0 = np.zeros(DIM)
        result = run_population(objective, ADAPTERS[name](seed, 600), 600, x0=x0)
        assert device.true_value(result.x) < device.true_value(x0) / 10, (name, seed)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_stop_iteration_in_the_callback_stops(name: str) -> None:
    device, objective = make()
    seen: list[OptimizeResult] = []

    def callback(intermediate: OptimizeResult) -> None:
        seen.append(intermediate)
        if intermediate.nit == 3:
            raise StopIteration

    result = run_population(
        objective, ADAPTERS[name](0, 500), 500, x0=np.zeros(DIM), callback=callback
    )
    assert result.nit == 3 == len(seen)
    assert result.status == 3
    assert "callback" in result.message
    assert result.nfev == seen[-1].nfev == device.measurements
    assert [r.nfev for r in seen] == sorted({r.nfev for r in seen})


def test_noise_handler_measures_candidates_again() -> None:
    device, objective = make(noise=1.0)
    optimizer = CMAAdapter(CMAAdapter.Settings(noise_handler=True), seed=2)
    result = run_population(objective, optimizer, 800, x0=np.zeros(DIM))
    state = result.optimizer_state
    assert state["noise_sigma_factors"] > 0
    # re-evaluations are extra measurements beyond one per candidate and generation
    assert result.nfev == device.measurements > state["generation"] * state["popsize"]


def test_same_seed_same_run() -> None:
    runs = []
    for _ in range(2):
        _, objective = make()
        runs.append(run_population(objective, CMAAdapter(seed=7), 160, x0=np.zeros(DIM)).x)
    np.testing.assert_array_equal(runs[0], runs[1])
    tbpsa = []
    for _ in range(2):
        _, objective = make()
        optimizer = NevergradAdapter(NevergradAdapter.Settings(budget=100), seed=7)
        tbpsa.append(run_population(objective, optimizer, 100, x0=np.zeros(DIM)).x)
    np.testing.assert_array_equal(tbpsa[0], tbpsa[1])


def test_zero_budget_measures_nothing() -> None:
    device, objective = make()
    result = run_population(objective, CMAAdapter(seed=0), 0, x0=np.full(DIM, 0.5))
    assert result.nfev == device.measurements == 0
    np.testing.assert_allclose(result.x, 0.5)


def test_start_checks_the_box() -> None:
    with pytest.raises(ValueError, match="inside the box"):
        CMAAdapter().start(np.full(2, 3.0), -np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match="finite box"):
        NevergradAdapter().start(np.zeros(2), np.array([-1.0, -np.inf]), np.ones(2))
    with pytest.raises(RuntimeError, match="start"):
        CMAAdapter().ask()


def test_tell_must_match_the_ask() -> None:
    optimizer = CMAAdapter(seed=0)
    optimizer.start(np.zeros(3), -np.ones(3), np.ones(3))
    batch = optimizer.ask()
    with pytest.raises(ValueError, match="whole batch"):
        optimizer.tell(batch[:2], [0.0, 0.0])
    with pytest.raises(ValueError, match="not the ones asked"):
        optimizer.tell([b + 0.1 for b in batch], [0.0] * len(batch))


def test_settings_refuse_options_the_adapter_sets() -> None:
    with pytest.raises(ValueError, match="bounds"):
        CMAAdapter.Settings(options={"bounds": [0, 1]})
    with pytest.raises(ValueError, match="no optimizer"):
        NevergradAdapter(NevergradAdapter.Settings(optimizer="NoSuchThing"))


@pytest.mark.parametrize(
    ("module", "build"),
    [("cma", lambda: CMAAdapter()), ("nevergrad", lambda: NevergradAdapter())],
)
def test_missing_library_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, build: Callable[[], object]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'hil\[bench\]'"):
        build()
