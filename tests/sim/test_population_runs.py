"""Population methods (CMA-ES, nevergrad, the DNPU GA) as procedures, end to end on the simulated
DNPU: they realise gates and stop, miss an unreachable target, count every measurement, and a run
paused by a device fault resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from hil.core import ConfigError, FloatArray, RunError
from hil.report import write_report
from hil.rundir import seal
from hil.runner import RunStatus, resume_run, start_run
from protocols.external import CMAAdapter, NevergradAdapter, ResumablePopulationOptimizer
from protocols.genetic import GeneticAdapter
from simulators.dnpu import DNPUDevice

from experiments import ROOT, dnpu_station, journal_steps
from faulty import FlakyDNPU

UNREACHABLE = "{type: gate, gate: XNOR, margin: 1.0e9}"  # never reached: every check is judged

# small populations keep the file fast; sizes are in normalized units
METHODS = {
    "cma": "cma: {sigma0: 0.3, popsize: 6}",
    "genetic": "genetic: {popsize: 10, elites: 2}",
    "nevergrad": "nevergrad: {optimizer: TBPSA, sigma: 0.3, per_generation: 6}",
}


class CountingDNPU(DNPUDevice):
    """The simulated DNPU, counting its `measure` calls (the ground truth of the accounting)."""

    measures: ClassVar[int] = 0

    def measure(self, inputs: FloatArray) -> FloatArray:
        CountingDNPU.measures += 1
        return super().measure(inputs)


@pytest.fixture(autouse=True)
def _no_injected_fault() -> Iterator[None]:
    FlakyDNPU.fail_at = None
    yield
    FlakyDNPU.fail_at = None


def _experiment(
    tmp_path: Path,
    method: str,
    *,
    task: str = "{type: gate, gate: AND}",
    generations: int = 30,
    settings: str | None = None,
    target: str = "{}",
    device: str = "dnpu",
) -> Path:
    """A population run of `method` on the simulated DNPU."""
    station = dnpu_station(tmp_path, device)
    config = tmp_path / "experiment.yaml"
    config.write_text(
        f"""name: population
station: {station}
seed: 11
procedure:
  type: population
  method: {method}
  generations: {generations}
  {settings if settings is not None else METHODS[method]}
  target: {target}
task: {task}
faults: {{retries: 0}}
"""
    )
    return config


def _checks_in(record: dict[str, Any]) -> int:
    return sum(key in record for key in ("target_start", "target", "target_confirmation"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_realises_an_easy_gate_and_stops(tmp_path: Path, method: str) -> None:
    outcome = start_run(_experiment(tmp_path / "cfg", method), tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    assert "target reached" in outcome.reason
    assert "AND realised" in outcome.reason
    summary = outcome.summary
    assert summary["method"] == method
    assert summary["steps_done"] < summary["total_steps"]  # stopped early
    assert summary["target"]["reached"]
    assert summary["target"]["case_labels"] == [0, 0, 0, 1]
    steps = journal_steps(outcome.path)
    assert steps[0]["target_start"]["step"] == 0  # judged (and the loss scaled) first
    last = steps[-1]
    assert last["target"]["reached"]
    assert last["target_confirmation"]["reached"]
    for record in steps:
        assert record["loss"] <= record["loss_median"] <= record["loss_max"]
        assert record["evaluations"] == record["candidates"] + 4 * _checks_in(record)
        assert record["device_seconds"] > 0
        assert len(record["controls"]) == 5
        assert record["optimizer"]["library"] == method
    assert [r["best_loss"] for r in steps] == sorted((r["best_loss"] for r in steps), reverse=True)
    assert set(summary["final_controls"]) == set(summary["best_controls"])


def test_the_shipped_cma_config_realises_xor(tmp_path: Path) -> None:
    outcome = start_run(ROOT / "configs" / "dnpu-gate-cma.yaml", tmp_path / "runs")
    assert outcome.status is RunStatus.COMPLETED, outcome.reason
    assert "XOR realised" in outcome.reason
    assert outcome.summary["target"]["reached"]
    assert outcome.summary["steps_done"] < outcome.summary["total_steps"]
    page = (write_report(outcome.path) / "report.html").read_text()
    assert "Outputs per case at the final point" in page  # the gate plot
    assert "<h3>Procedure</h3>" in page  # no estimator or optimizer: the procedure's settings


def test_an_unreachable_target_ends_missed(tmp_path: Path) -> None:
    config = _experiment(tmp_path / "cfg", "genetic", task=UNREACHABLE, generations=6)
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.MISSED, outcome.reason
    assert "target NOT reached" in outcome.reason
    summary = json.loads((outcome.path / "summary.json").read_text())
    assert summary["status"] == "missed"
    assert summary["steps_done"] == 6
    assert summary["target"]["reached"] is False
    with pytest.raises(RunError, match="without reaching its target"):
        resume_run(outcome.path)


def test_the_journal_accounts_for_every_measurement(tmp_path: Path) -> None:
    """Steps and the final measurement together add up to the device's own count."""
    CountingDNPU.measures = 0
    config = _experiment(
        tmp_path / "cfg",
        "cma",
        task=UNREACHABLE,
        generations=5,
        device="test_population_runs:CountingDNPU",
    )
    outcome = start_run(config, tmp_path / "runs")
    assert outcome.status is RunStatus.MISSED
    steps = journal_steps(outcome.path)
    summary = outcome.summary
    final_checks = summary["target"]["checks"] - sum(_checks_in(r) for r in steps)
    assert final_checks in (1, 2)  # the recommendation, and the best point checked if another
    final = 4 * final_checks + 1  # target.repeats per check, final_repeats
    assert sum(r["evaluations"] for r in steps) + final == CountingDNPU.measures
    assert summary["evaluations"] == CountingDNPU.measures
    assert sum(r["device_seconds"] for r in steps) == pytest.approx(steps[-1]["device_time"])


RESUMED = {  # settings and target of each method's resumed run: both restart on the way
    # pycma stops after 3 generations (maxiter) and restarts IPOP-style, once, with popsize 12
    "cma": ("cma: {sigma0: 0.3, popsize: 6, restarts: 1, options: {maxiter: 3}}", "{}"),
    # a check every generation, and every start looks flat: three restarts from random points
    "genetic": (METHODS["genetic"], "{budget: 0.5, restart: {flat: 1.0e12, max_restarts: 3}}"),
    "nevergrad": (METHODS["nevergrad"], "{budget: 0.5, restart: {flat: 1.0e12, max_restarts: 2}}"),
}


@pytest.mark.parametrize("method", sorted(RESUMED))
def test_a_run_paused_by_a_device_fault_resumes_exactly(tmp_path: Path, method: str) -> None:
    settings, target = RESUMED[method]
    kwargs: dict[str, Any] = {
        "task": UNREACHABLE,
        "generations": 10,
        "settings": settings,
        "target": target,
    }
    reference = start_run(_experiment(tmp_path / "ref", method, **kwargs), tmp_path / "ref_runs")
    assert reference.status is RunStatus.MISSED, reference.reason
    FlakyDNPU.fail_at = 4 * 55  # plateaus: 4 cases per evaluation, so within evaluation 55
    config = _experiment(tmp_path / "cfg", method, device="faulty:FlakyDNPU", **kwargs)
    paused = start_run(config, tmp_path / "runs")
    assert paused.status is RunStatus.PAUSED, paused.reason
    assert 0 < paused.summary["steps_done"] < reference.summary["steps_done"]
    FlakyDNPU.fail_at = None
    resumed = resume_run(paused.path)
    assert resumed.status is RunStatus.MISSED
    volatile = {"ended_at"}
    assert {k: v for k, v in resumed.summary.items() if k not in volatile} == {
        k: v for k, v in reference.summary.items() if k not in volatile
    }
    strip = {"time", "seq", "sha256"}
    assert [{k: v for k, v in r.items() if k not in strip} for r in journal_steps(paused.path)] == [
        {k: v for k, v in r.items() if k not in strip} for r in journal_steps(reference.path)
    ]
    restarts = [r["restart"] for r in journal_steps(reference.path) if "restart" in r]
    assert restarts  # the resumed part restarted like the reference did
    if method == "cma":
        assert any(r.get("popsize") == 12 for r in restarts)  # the IPOP restart


def test_a_damaged_optimizer_state_is_refused(tmp_path: Path) -> None:
    FlakyDNPU.fail_at = 4 * 30
    config = _experiment(
        tmp_path / "cfg", "cma", task=UNREACHABLE, generations=10, device="faulty:FlakyDNPU"
    )
    paused = start_run(config, tmp_path / "runs")
    FlakyDNPU.fail_at = None
    assert paused.status is RunStatus.PAUSED, paused.reason
    path = paused.path / "checkpoint.json"
    checkpoint = json.loads(path.read_text())
    checkpoint.pop("sha256")
    saved = checkpoint["procedure"]["optimizer"]
    assert saved["encoding"] == "pickle+base64"
    assert saved["library"] == "cma"
    saved["sha256"] = "0" * 64
    path.write_text(json.dumps(seal(checkpoint)))  # the file's own checksum is valid again
    with pytest.raises(RunError, match=r"optimizer state is damaged.*cannot resume exactly"):
        resume_run(paused.path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("estimator: {type: spsa}\n", r"estimator: procedure population .* drop the `estimator:`"),
        ("optimizer: {type: adam}\n", r"optimizer: procedure population .* drop the `optimizer:`"),
    ],
)
def test_gradient_parts_are_refused(tmp_path: Path, edit: str, message: str) -> None:
    config = _experiment(tmp_path / "cfg", "genetic")
    config.write_text(config.read_text() + edit)
    with pytest.raises(ConfigError, match=message):
        start_run(config, tmp_path / "runs")


def test_settings_of_another_method_are_refused(tmp_path: Path) -> None:
    config = _experiment(tmp_path / "cfg", "cma", settings="genetic: {popsize: 8}")
    with pytest.raises(ConfigError, match=r"`genetic:` settings are given but method is 'cma'"):
        start_run(config, tmp_path / "runs")


def _sphere(points: list[FloatArray]) -> list[float]:
    return [float(np.sum((np.asarray(x) - 0.3) ** 2)) for x in points]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: CMAAdapter(
                CMAAdapter.Settings(sigma0=0.3, popsize=6, noise_handler=True), seed=2
            ),
            id="cma-noise-handler",
        ),
        pytest.param(
            lambda: NevergradAdapter(
                NevergradAdapter.Settings(optimizer="NGOpt", budget=60, sigma=0.3), seed=2
            ),
            id="nevergrad-NGOpt",
        ),
        pytest.param(
            lambda: GeneticAdapter(GeneticAdapter.Settings(popsize=6, elites=1), seed=2),
            id="genetic",
        ),
    ],
)
def test_adapter_checkpoints_continue_exactly_whatever_else_draws(
    make: Callable[[], ResumablePopulationOptimizer],
) -> None:
    """A restored adapter proposes what the original does, with numpy's global state disturbed
    in between (pycma and nevergrad keep a global state of their own)."""
    box = (np.zeros(4), -np.ones(4), np.ones(4))
    original = make()
    original.start(*box)
    for _ in range(3):
        asked = original.ask()
        original.tell(asked, _sphere(asked))
    saved = json.loads(json.dumps(original.checkpoint()))
    restored = make()
    restored.start(*box)
    restored.restore(saved)
    for _ in range(5):
        np.random.seed(12345)  # someone else uses the global state
        asked = original.ask()
        np.random.rand(3)
        assert all(np.array_equal(a, b) for a, b in zip(asked, restored.ask(), strict=True))
        original.tell(asked, _sphere(asked))
        restored.tell(asked, _sphere(asked))
    assert np.array_equal(original.recommend(), restored.recommend())
