"""Convergence at equal evaluation budgets: the product's recommended gradient path against
pycma, nevergrad TBPSA, noisyopt SPSA and scipy Nelder–Mead on noisy test problems.

Declared before any scored run (and not changed after seeing scored results):

- **One configuration per method.** Ours is the training path `docs/gradients.md` shows for a
  device without streaming (homodyne needs a stream; these problems have none): SPSA with
  Hadamard directions (`directions: hadamard`, "cancels cross-talk exactly") + SGD with the Spall
  schedule, run by `protocols.minimize.minimize(budget=B)` with its calibration (σ from 25
  repeats; the perturbation c by the bias rule, starting at 0.1 × the box width; the rate from a
  target first step over 10 estimates), the Polyak average of the second half as the
  recommendation and one counted final measurement. Two knobs are tuned, as for every peer: the
  target first step (a fraction of the box width) and blocking (off: 2 evaluations per step;
  on: the estimator also measures L(θ) and blocking measures the proposal at 2σ, 4 per step).
- **Tuning on problems and seeds that are not scored.** Each method's small grid (`METHODS`) is
  run on the tuning suite: sphere, separable ellipsoid (condition 10²) and Ackley, d = 10, each
  with the three noise models, seeds 1000–1002; the configuration with the lowest mean
  log10(final regret / starting regret) over those runs is frozen for every scored cell. No
  per-problem tuning: the product's path will also meet a noisy suite that is not in this repo.
- **Scored problems** (`bench.problems`): rotated ellipsoid (condition 10³), rotated Rosenbrock,
  rotated Rastrigin (multimodal); d = 5 and 20; noise additive Gaussian (σ = 1 % of the starting
  regret f(0) − f*), multiplicative (y = f + 0.1 (f − f*) ξ) and Student-t ν = 3 (scale 1 % of the
  starting regret); budget B = 100·d evaluations, every one counted (calibration, blocking and
  final measurements included; a wrapper raises at B + 1). Seeds 0–14: instance (x*, rotation)
  and device noise stream per seed shared by every method (paired); method randomness seeded
  with the seed. Start x0 = 0 in the box [-5, 5]^d.
- **A simulated device** (`bench.problems.dnpu_xor`): XOR on a random DNPU per seed, 5 controls
  in normalized units ([-1, 1], x0 = 0 mid-range), the DNPU's own noise, B = 500, scored on the
  noise-free loss (its optimum is unknown). Disclosure: this cell was added after the first full
  run (the 18 cells above, scored once); no method's configuration changed (they come from the
  tuning suite, which does not include it), and the Holm family grew from 72 to 76 tests.
  Every method's scales are fractions of the narrowest parameter range (10 on the test
  functions, 2 on the DNPU).
- **Score**: the noise-free regret f(x_rec) − f* (DNPU: loss) of each method's own
  recommendation (ours: the Polyak average; pycma: `xfavorite`; nevergrad: `recommend()`;
  noisyopt: its final iterate; Nelder–Mead: its best vertex so far). Per cell: median and IQR.
  Ours against each peer: paired Wilcoxon signed-rank test (two-sided) on log10 of the score,
  Holm-corrected over every (cell, peer)
  test; a win (loss) is a corrected p < 0.05 with the median paired log-ratio below (above)
  zero, anything else a tie.

Prints the tuning table, the per-cell table and the wins/losses/ties, and writes
bench/results/convergence.json (settings, tuning runs, raw finals, tests, versions, load).
`--quick` (5 seeds, d = 5, one tuning seed; about 2 minutes) is a smoke test: 5 paired seeds
cannot reach p < 0.05, so every outcome is a tie; it writes only to `--out` if given.

    .venv/bin/python -m bench.convergence [--quick] [--seeds N] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import optimize, stats

from bench.problems import BOUND, NOISES, Function, NoiseKind, dnpu_xor, make_device
from hil.core import Device, FloatArray, JSONDict
from hil.provenance import environment
from protocols.base import Objective, Task
from protocols.calibration import CalibrationSettings
from protocols.estimators import SPSA
from protocols.external import CMAAdapter, NevergradAdapter, run_population
from protocols.minimize import BlockingSettings, minimize
from protocols.optimizers import SGD, Recommendation
from protocols.schedules import SpallSchedule
from protocols.tasks import MinimizeOutputTask

RESULTS = Path(__file__).resolve().parent / "results" / "convergence.json"
BUDGET_PER_DIM = 100
SCORED: tuple[Function, ...] = ("ellipsoid", "rosenbrock", "rastrigin")
TUNING: tuple[Function, ...] = ("sphere", "ellipsoid-separable", "ackley")
SCORED_DIMS = (5, 20)
TUNING_DIM = 10
TUNING_SEEDS = (1000, 1001, 1002)
CALIBRATION_SEED = 20_000
ALPHA = 0.05
TINY = 1e-300  # regret floor for logarithms

Params = dict[str, Any]


@dataclass(frozen=True)
class Cell:
    """One problem × noise model × dimension, with its evaluation budget."""

    function: Function | Literal["dnpu-xor"]
    noise: NoiseKind | Literal["device"]
    dim: int

    @property
    def budget(self) -> int:
        return BUDGET_PER_DIM * self.dim

    @property
    def key(self) -> str:
        label = "own noise" if self.noise == "device" else NOISES[self.noise].label
        return f"{self.function} d={self.dim} {label}"


DNPU_CELL = Cell("dnpu-xor", "device", 5)


class BudgetExceeded(RuntimeError):
    """A method asked for one evaluation more than its budget."""


class BudgetedObjective(Objective):
    """An objective whose evaluation after the budget raises."""

    def __init__(self, device: Device, task: Task, budget: int, *, normalized: bool) -> None:
        super().__init__(device, task, normalized=normalized)
        self.budget = budget

    @property
    def width(self) -> float:
        """The narrowest parameter range: what the methods' scales are fractions of."""
        return float(np.min(self.upper - self.lower))

    def outputs(self, theta: FloatArray) -> FloatArray:
        if self.evaluations >= self.budget:
            raise BudgetExceeded(f"evaluation {self.evaluations + 1} exceeds the budget")
        return super().outputs(theta)


Runner = Callable[[BudgetedObjective, int, Params], tuple[FloatArray, JSONDict]]


# -- ours: the documented path, minimize(budget=B) with calibration --------------------------------


def run_ours(objective: BudgetedObjective, seed: int, p: Params) -> tuple[FloatArray, JSONDict]:
    """SPSA (Hadamard) + SGD (Spall), calibrated, Polyak average; blocking per `p`."""
    block = bool(p["blocking"])
    estimator = SPSA(
        SPSA.Settings.model_validate(
            {"c": 0.1 * objective.width, "directions": "hadamard", "measure_loss": block}
        ),
        seed=seed,
    )
    result = minimize(
        objective,
        estimator,
        SGD(SGD.Settings(schedule=SpallSchedule())),
        np.zeros(objective.dim),
        budget=objective.budget,
        calibrate=CalibrationSettings(
            target_step=p["target_step"] * objective.width, perturbation=True
        ),
        blocking=BlockingSettings(sigma_multiple=2.0) if block else None,
        recommend=Recommendation(policy="average", average_from=0.5),
        final_repeats=1,
        seed=CALIBRATION_SEED + seed,
    )
    report: JSONDict = result.calibration
    x: FloatArray = np.asarray(result.x, dtype=float)
    return x, {
        "steps": int(result.nit),
        "calibration_evaluations": int(report["evaluations"]),
        "c": report["c"],
        "learning_rate": report["learning_rate"],
        "rejections": int(result.rejections),
    }


# -- peers -----------------------------------------------------------------------------------------


class SigmaNevergrad(NevergradAdapter):
    """`NevergradAdapter` whose parametrization starts with mutation scale `sigma`."""

    def __init__(self, settings: NevergradAdapter.Settings, sigma: float, seed: int) -> None:
        super().__init__(settings, seed=seed)
        self.sigma = sigma

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        ng, s = self._ng, self.settings
        parametrization = ng.p.Array(init=x0).set_bounds(lower, upper)
        parametrization.set_mutation(sigma=self.sigma)
        parametrization.random_state = np.random.RandomState(self._seed)
        parametrization.function.deterministic = not s.noisy
        factory = ng.optimizers.registry[s.optimizer]
        self._opt = factory(parametrization=parametrization, budget=s.budget, num_workers=1)
        self._lower, self._upper, self._pending = lower.copy(), upper.copy(), []


def population(
    objective: BudgetedObjective, optimizer: CMAAdapter | NevergradAdapter
) -> tuple[FloatArray, JSONDict]:
    result = run_population(objective, optimizer, objective.budget, x0=np.zeros(objective.dim))
    x: FloatArray = result.x
    return x, {"message": str(result.message)}


def run_pycma(objective: BudgetedObjective, seed: int, p: Params) -> tuple[FloatArray, JSONDict]:
    settings = CMAAdapter.Settings(
        sigma0=p["sigma0"] * objective.width, noise_handler=p["noise_handler"]
    )
    return population(objective, CMAAdapter(settings, seed=seed))


def run_tbpsa(objective: BudgetedObjective, seed: int, p: Params) -> tuple[FloatArray, JSONDict]:
    settings = NevergradAdapter.Settings(optimizer="TBPSA", budget=objective.budget)
    return population(objective, SigmaNevergrad(settings, p["sigma"] * objective.width, seed))


def run_noisyopt(objective: BudgetedObjective, seed: int, p: Params) -> tuple[FloatArray, JSONDict]:
    """noisyopt.minimizeSPSA, paired=False (a device has no common random numbers); it measures
    f once at the end, so niter = (B − 1) // 2. Directions from numpy's global state."""
    noisyopt: Any = importlib.import_module("noisyopt")
    np.random.seed(seed)
    bounds = np.column_stack([objective.lower, objective.upper])
    result = noisyopt.minimizeSPSA(
        lambda x: objective(np.asarray(x, dtype=float)),
        np.zeros(objective.dim),
        bounds=bounds,
        niter=(objective.budget - 1) // 2,
        paired=False,
        a=p["a"],
        c=p["c"],
    )
    return np.array(result.x, dtype=float), {}


def run_nelder_mead(
    objective: BudgetedObjective, seed: int, p: Params
) -> tuple[FloatArray, JSONDict]:
    """scipy Nelder–Mead with bounds, no tolerance stop; stopped at the budget, the best vertex
    of the last finished iteration is the recommendation (deterministic: `seed` is unused)."""
    dim = objective.dim
    best = [np.zeros(dim)]
    simplex = np.vstack([np.zeros(dim), p["simplex"] * objective.width * np.eye(dim)])

    def keep(xk: FloatArray) -> None:
        best[0] = np.array(xk, dtype=float)

    with contextlib.suppress(BudgetExceeded):
        optimize.minimize(
            objective,
            np.zeros(dim),
            method="Nelder-Mead",
            bounds=list(zip(objective.lower, objective.upper, strict=True)),
            callback=keep,
            options={
                "initial_simplex": simplex,
                "maxfev": objective.budget,
                "xatol": 0.0,
                "fatol": 0.0,
                "maxiter": 10 * objective.budget,
            },
        )
    return best[0], {}


@dataclass(frozen=True)
class Method:
    """A method: its runner, the fixed parts of its configuration, and its tuning grid."""

    runner: Runner
    fixed: str
    grid: tuple[Params, ...]
    ours: bool = False


def grid(**axes: tuple[Any, ...]) -> tuple[Params, ...]:
    """Every combination of the axes' values."""
    combos: list[Params] = [{}]
    for name, values in axes.items():
        combos = [{**c, name: v} for c in combos for v in values]
    return tuple(combos)


METHODS: dict[str, Method] = {
    "ours: SPSA-H + SGD": Method(
        run_ours,
        "SPSA directions hadamard, c0 = 0.1·width, SGD + Spall schedule, minimize(budget=B) "
        "calibration (σ: 25 repeats; c: bias rule; lr: target first step over 10 estimates), "
        "Polyak average of the 2nd half, 1 final measurement",
        grid(target_step=(0.01, 0.03, 0.1), blocking=(False, True)),
        ours=True,
    ),
    "pycma": Method(
        run_pycma,
        "CMA-ES (pycma), default population 4 + 3 ln d, recommendation xfavorite",
        grid(sigma0=(0.03, 0.1, 0.3), noise_handler=(False, True)),
    ),
    "nevergrad TBPSA": Method(
        run_tbpsa,
        "nevergrad TBPSA, budget = B declared, function declared noisy, recommend()",
        grid(sigma=(0.03, 0.1, 0.3)),
    ),
    "noisyopt SPSA": Method(
        run_noisyopt,
        "noisyopt.minimizeSPSA paired=False, alpha 0.602, gamma 0.101, final iterate",
        grid(a=(0.01, 0.1, 1.0), c=(0.1, 1.0)),
    ),
    "scipy Nelder–Mead": Method(
        run_nelder_mead,
        "scipy.optimize.minimize Nelder-Mead with bounds, simplex = x0 + s·width·e_i",
        grid(simplex=(0.03, 0.1, 0.3)),
    ),
}
OURS = next(name for name, m in METHODS.items() if m.ours)
PEERS = [name for name in METHODS if name != OURS]


def run_one(name: str, cell: Cell, seed: int, params: Params) -> JSONDict:
    """One run of a method on one instance: the noise-free loss of its recommendation (the
    regret f − f* on the test functions) and at the start x0 = 0."""
    truth: Callable[[FloatArray], float]
    if cell.function == "dnpu-xor":
        dnpu, task = dnpu_xor(seed)
        objective = BudgetedObjective(dnpu, task, cell.budget, normalized=True)

        def truth(x: FloatArray) -> float:
            physical = objective.physical(x)
            return task.loss(dnpu.true_output(physical, objective.device_inputs))
    else:
        assert cell.noise != "device", f"{cell.function} has no noise of its own"
        device = make_device(cell.function, NOISES[cell.noise], cell.dim, seed)
        objective = BudgetedObjective(device, MinimizeOutputTask(), cell.budget, normalized=False)
        truth = device.true_value
    x, extra = METHODS[name].runner(objective, seed, params)
    assert objective.evaluations <= cell.budget, (name, seed, objective.evaluations)
    return {
        "seed": seed,
        "final": truth(x),
        "start": truth(np.zeros(cell.dim)),
        "nfev": objective.evaluations,
        **extra,
    }


def log_ratio(run: JSONDict) -> float:
    return float(np.log10(max(run["final"], TINY) / run["start"]))


def tune(console: Console, seeds: tuple[int, ...]) -> JSONDict:
    """Each method's grid on the tuning suite; the lowest mean log10(final / start) wins."""
    cells = [Cell(f, n, TUNING_DIM) for f in TUNING for n in NOISES]
    tuning: JSONDict = {}
    for name, method in METHODS.items():
        t0 = time.perf_counter()
        configs: list[JSONDict] = []
        for params in method.grid:
            runs = [
                {"cell": cell.key, **run_one(name, cell, seed, params)}
                for cell in cells
                for seed in seeds
            ]
            score = float(np.mean([log_ratio(r) for r in runs]))
            configs.append({"params": params, "score": score, "runs": runs})
        chosen = int(np.argmin([c["score"] for c in configs]))
        tuning[name] = {
            "fixed": method.fixed,
            "configs": configs,
            "chosen": configs[chosen]["params"],
            "wall_seconds": time.perf_counter() - t0,
        }
        console.print(
            f"  tuned {name:<22} → {configs[chosen]['params']}  ({time.perf_counter() - t0:.0f} s)"
        )
    return tuning


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    return q1, median, q3


def score_cell(cell: Cell, seeds: list[int], chosen: dict[str, Params]) -> JSONDict:
    methods: JSONDict = {}
    for name in METHODS:
        t0 = time.perf_counter()
        runs = [run_one(name, cell, seed, chosen[name]) for seed in seeds]
        finals = [r["final"] for r in runs]
        q1, median, q3 = quartiles(finals)
        methods[name] = {
            "median": median,
            "q1": q1,
            "q3": q3,
            "finals": finals,
            "runs": runs,
            "wall_seconds": time.perf_counter() - t0,
        }
    starts = [r["start"] for r in methods[OURS]["runs"]]
    return {
        "function": cell.function,
        "noise": cell.noise,
        "dim": cell.dim,
        "budget": cell.budget,
        "start_median": float(np.median(starts)),
        "methods": methods,
    }


def paired_test(ours: list[float], peer: list[float]) -> tuple[float, float]:
    """(two-sided Wilcoxon p, median of log10(ours / peer)) over paired seeds."""
    diff = np.log10(np.maximum(ours, TINY)) - np.log10(np.maximum(peer, TINY))
    if not np.any(diff != 0):
        return 1.0, 0.0
    p = float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
    return p, float(np.median(diff))


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone)."""
    order = np.argsort(pvalues)
    m = len(pvalues)
    adjusted = np.zeros(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return [float(a) for a in adjusted]


def compare(cells: dict[str, JSONDict]) -> list[JSONDict]:
    """Ours vs each peer per cell: ratio of medians, Wilcoxon p, Holm p, win/loss/tie."""
    tests: list[JSONDict] = []
    for key, cell in cells.items():
        ours = cell["methods"][OURS]
        for peer in PEERS:
            other = cell["methods"][peer]
            p, log_diff = paired_test(ours["finals"], other["finals"])
            tests.append(
                {
                    "cell": key,
                    "peer": peer,
                    "ratio_of_medians": ours["median"] / max(other["median"], TINY),
                    "median_log10_ratio": log_diff,
                    "p": p,
                }
            )
    for test, adjusted in zip(tests, holm([t["p"] for t in tests]), strict=True):
        test["p_holm"] = adjusted
        significant = adjusted < ALPHA
        test["outcome"] = (
            "win"
            if significant and test["median_log10_ratio"] < 0
            else "loss"
            if significant and test["median_log10_ratio"] > 0
            else "tie"
        )
    return tests


def tally(tests: list[JSONDict], cells: dict[str, JSONDict]) -> JSONDict:
    """Wins/losses/ties per peer, and per function, noise model and dimension."""
    by: JSONDict = {"peer": {}, "function": {}, "noise": {}, "dim": {}}
    for t in tests:
        cell = cells[t["cell"]]
        for axis, value in (
            ("peer", t["peer"]),
            ("function", cell["function"]),
            ("noise", cell["noise"]),
            ("dim", f"d={cell['dim']}"),
        ):
            counts = by[axis].setdefault(value, {"win": 0, "loss": 0, "tie": 0})
            counts[t["outcome"]] += 1
    return by


def print_tables(
    console: Console,
    tuning: JSONDict,
    cells: dict[str, JSONDict],
    tests: list[JSONDict],
    totals: JSONDict,
) -> None:
    table = Table("method", "config", "mean log10(final/start)", title="tuning (not scored)")
    for name, t in tuning.items():
        for config in t["configs"]:
            chosen = config["params"] == t["chosen"]
            mark = "[bold]← chosen[/bold]" if chosen else ""
            table.add_row(name, json.dumps(config["params"]), f"{config['score']:.2f} {mark}")
        table.add_section()
    console.print(table)

    table = Table(
        "cell (B = 100·d)",
        "start",
        *METHODS,
        title="noise-free regret (DNPU: loss) of the recommendation: median [IQR]; bold = best",
    )
    for key, cell in cells.items():
        best = min(METHODS, key=lambda n: cell["methods"][n]["median"])
        row = []
        for name in METHODS:
            m = cell["methods"][name]
            text = f"{m['median']:.3g} [{m['q1']:.2g}, {m['q3']:.2g}]"
            row.append(f"[bold]{text}[/bold]" if name == best else text)
        table.add_row(key, f"{cell['start_median']:.3g}", *row)
    console.print(table)

    table = Table("cell", *PEERS, title="ours / peer (ratio of medians), Holm p, outcome for ours")
    for key in cells:
        row = []
        for peer in PEERS:
            t = next(t for t in tests if t["cell"] == key and t["peer"] == peer)
            row.append(f"{t['ratio_of_medians']:.2g}× p={t['p_holm']:.2g} {t['outcome']}")
        table.add_row(key, *row)
    console.print(table)

    table = Table(
        "group",
        "wins",
        "losses",
        "ties",
        title=f"ours: wins / losses / ties (Wilcoxon, Holm over {len(tests)} tests, α = {ALPHA})",
    )
    for axis, groups in totals.items():
        for value, counts in groups.items():
            table.add_row(f"{axis}: {value}", *(str(counts[k]) for k in ("win", "loss", "tie")))
        table.add_section()
    console.print(table)


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("hil", "numpy", "scipy", "cma", "nevergrad", "noisyopt"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=15, help="scored seeds 0 … N−1")
    parser.add_argument(
        "--quick", action="store_true", help="5 scored seeds, d = 5 only, one tuning seed"
    )
    parser.add_argument("--out", type=Path, help=f"JSON path (full runs: default {RESULTS})")
    args = parser.parse_args()
    # expected at the grid's largest TBPSA σ: nevergrad advises bounds ≥ 3σ apart
    warnings.filterwarnings("ignore", message="Bounds are .* sigma away")
    out: Path | None = args.out if args.out is not None or args.quick else RESULTS
    seeds = list(range(5 if args.quick else args.seeds))
    dims = SCORED_DIMS[:1] if args.quick else SCORED_DIMS
    tuning_seeds = TUNING_SEEDS[:1] if args.quick else TUNING_SEEDS
    console = Console(width=None if sys.stdout.isatty() else 220)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    console.print(f"tuning on {TUNING} d={TUNING_DIM}, seeds {tuning_seeds}")
    tuning = tune(console, tuning_seeds)
    chosen = {name: t["chosen"] for name, t in tuning.items()}
    tuning_wall = time.perf_counter() - t0
    cells: dict[str, JSONDict] = {}
    scored = [Cell(f, n, d) for f in SCORED for d in dims for n in get_args(NoiseKind)]
    for cell in [*scored, DNPU_CELL]:
        cells[cell.key] = score_cell(cell, seeds, chosen)
        walls = " ".join(f"{m['wall_seconds']:.0f}" for m in cells[cell.key]["methods"].values())
        console.print(f"  scored {cell.key:<36} wall s per method: {walls}")
    tests = compare(cells)
    totals = tally(tests, cells)
    wall = time.perf_counter() - t0
    result: JSONDict = {
        "benchmark": "convergence",
        "declared": __doc__,
        "settings": {
            "quick": args.quick,
            "scored_seeds": seeds,
            "tuning_seeds": list(tuning_seeds),
            "scored_functions": list(SCORED),
            "tuning_functions": list(TUNING),
            "dims": list(dims),
            "tuning_dim": TUNING_DIM,
            "budget": f"{BUDGET_PER_DIM}·d evaluations",
            "noises": {k: vars(v) for k, v in NOISES.items()},
            "box": [-BOUND, BOUND],
            "x0": "zeros",
            "methods": {
                n: {"fixed": m.fixed, "grid": list(m.grid), "chosen": chosen[n]}
                for n, m in METHODS.items()
            },
            "test": f"two-sided Wilcoxon signed-rank on log10 final loss, paired by seed, Holm "
            f"over all (cell, peer) tests, alpha {ALPHA}",
        },
        "tuning": tuning,
        "cells": cells,
        "tests": tests,
        "totals": totals,
        "versions": versions(),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "wall_seconds": {"total": wall, "tuning": tuning_wall},
        "environment": environment(),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print_tables(console, tuning, cells, tests, totals)
    console.print(f"{len(seeds)} seeds, {wall:.0f} s (tuning {tuning_wall:.0f} s); JSON: {out}")


if __name__ == "__main__":
    main()
