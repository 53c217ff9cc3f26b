"""External population optimizers (pycma, nevergrad) run through an `Objective`.

The adapters only propose and digest candidates; `run_population` is the one place that measures,
so the accounting is the same as for our own estimators: every call to the objective counts
towards the evaluation budget and device seconds come from the device clock.

    optimizer = CMAAdapter(CMAAdapter.Settings(sigma0=0.5), seed=1)
    result = run_population(objective, optimizer, budget=2000, x0=theta0)
    result.x, result.nfev, result.device_seconds

Recommendations follow each library's advice under noise: pycma's distribution mean
(`es.result.xfavorite`, not the best noisy sample `xbest`), nevergrad's `recommend()` with the
function declared noisy. The recommendation is not measured (that would cost an evaluation).

Both libraries are untyped optional dependencies (the `bench` extra). They are imported when an
adapter is built, through `importlib`, so `protocols` imports without them and every value
crossing the boundary is converted to a float array here. pycma (and its `NoiseHandler`) draw from
numpy's global random state, which pycma seeds from its `seed` option, and so do some nevergrad
optimizers. Each adapter keeps a global state of its own and swaps it in around every call into
its library (`_NumpyGlobal`), so its run is reproducible whatever else draws from the global state.

Checkpoints (`checkpoint()` / `restore()`): the libraries' optimizer objects are not JSON, so the
adapters save them pickled, base64 in the JSON state, with the sha256 of the pickle bytes and the
library's version; `restore` verifies both before it unpickles (a mismatch is a ValueError saying
the run cannot resume exactly). The digest detects damage, not forgery: unpickling runs code, so
restore only checkpoints of your own runs. The pickle holds the adapter's numpy global state too,
so a resumed run is bit-identical to one that was never interrupted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import io
import math
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.optimize import OptimizeResult

from hil.core import FloatArray, JSONDict, SeedLike, seed_sequence
from protocols.base import Objective

INSTALL_HINT = "pip install 'hil[bench]'"


def _import_optional(name: str) -> ModuleType:
    """The optional library `name`, or an error that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"the external optimizers need the optional package {name!r}, which is not "
            f"installed: {INSTALL_HINT}",
            name=name,
        ) from exc


def _int_seed(seed: SeedLike) -> int:
    """A positive 31-bit integer seed (pycma treats 0 and None as 'seed from the time')."""
    return int(seed_sequence(seed).generate_state(1)[0]) % (2**31 - 2) + 1


def _start_seed(seed: int, starts: int) -> int:
    """The library seed of start number `starts` (0: the adapter's seed; a restart gets its own,
    so it does not replay the first start's random stream)."""
    return seed if starts == 0 else _int_seed(np.random.SeedSequence([seed, starts]))


class _NumpyGlobal:
    """numpy's global random state as one library left it, swapped in around its calls."""

    def __init__(self, seed: int) -> None:
        self.state: Any = np.random.RandomState(seed).get_state()

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Run the block on this state; afterwards keep what it left and put the outside back."""
        outside = np.random.get_state()
        np.random.set_state(self.state)
        try:
            yield
        finally:
            self.state = np.random.get_state()
            np.random.set_state(outside)


_GLOBAL_RANDOM = "numpy.random.mtrand._rand"


def _global_random() -> Any:
    """The RandomState behind numpy's global functions (np.random.randn, ...)."""
    return np.random.mtrand._rand


class _Pickler(pickle.Pickler):
    """Pickles numpy's global RandomState by reference: pycma holds `np.random.randn` (a bound
    method of it), and a copy would cut the restored strategy off the global stream."""

    def persistent_id(self, obj: Any) -> str | None:
        return _GLOBAL_RANDOM if obj is _global_random() else None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid == _GLOBAL_RANDOM:
            return _global_random()
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def pickled(payload: object, library: str) -> JSONDict:
    """`payload` pickled for a JSON checkpoint: base64 text, the sha256 of the pickle bytes and
    the version of the library whose objects it holds."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    data = buffer.getvalue()
    return {
        "encoding": "pickle+base64",
        "library": library,
        "version": str(getattr(_import_optional(library), "__version__", "unknown")),
        "sha256": hashlib.sha256(data).hexdigest(),
        "pickle": base64.b64encode(data).decode("ascii"),
    }


def unpickled(state: JSONDict, library: str, what: str) -> Any:
    """The payload of `pickled`, once its digest and library version are verified."""
    damaged = (
        f"{what}: the checkpoint's optimizer state is damaged (its pickle does not match the "
        "recorded sha256); the run cannot resume exactly — restore checkpoint.json from a backup "
        "or start a new run"
    )
    try:
        data = base64.b64decode(str(state["pickle"]).encode("ascii"), validate=True)
        recorded = str(state["sha256"])
    except (KeyError, TypeError, UnicodeEncodeError, binascii.Error):
        raise ValueError(damaged) from None
    if hashlib.sha256(data).hexdigest() != recorded:
        raise ValueError(damaged)
    installed = str(getattr(_import_optional(library), "__version__", "unknown"))
    if state.get("version") != installed:
        raise ValueError(
            f"{what}: the checkpoint's optimizer state was saved with {library} "
            f"{state.get('version')}, {installed} is installed; the run cannot resume exactly — "
            f"install {library}=={state.get('version')} or start a new run"
        )
    return _Unpickler(io.BytesIO(data)).load()  # verified above; checkpoints of one's own runs


def _vector(value: Any, n: int, what: str) -> FloatArray:
    v = np.array(value, dtype=float).reshape(-1)
    if v.shape != (n,):
        raise ValueError(f"{what}: expected {n} values, got shape {v.shape}")
    return v


@runtime_checkable
class PopulationOptimizer(Protocol):
    """Ask/tell optimizer that proposes batches of points and learns from their losses."""

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        """Begin at x0 inside the finite box [lower, upper]."""
        ...

    def ask(self) -> list[FloatArray]:
        """The next candidates to measure (inside the box)."""
        ...

    def tell(self, candidates: Sequence[FloatArray], losses: Sequence[float]) -> None:
        """The measured losses of the candidates of the last `ask` (a prefix of them if
        `partial_batches`)."""
        ...

    def recommend(self) -> FloatArray:
        """The point the optimizer currently considers best (not measured)."""
        ...

    @property
    def partial_batches(self) -> bool:
        """Whether `tell` accepts the first few candidates of a batch (used at the budget)."""
        ...

    @property
    def stop_reason(self) -> str | None:
        """Why the library has stopped by its own criteria, or None while it goes on."""
        ...

    def state(self) -> JSONDict:
        """A JSON summary of the optimizer's state, for reports (not a checkpoint)."""
        ...


@runtime_checkable
class ResumablePopulationOptimizer(PopulationOptimizer, Protocol):
    """A population optimizer whose state a run checkpoints and restores exactly.

    (Not `state_dict`/`load_state_dict`: these optimizers are not gradient `Optimizer`s.)
    """

    def checkpoint(self) -> JSONDict:
        """Everything needed to continue exactly, as JSON (between a tell and the next ask)."""
        ...

    def restore(self, state: JSONDict) -> None:
        """Continue from a `checkpoint` of an optimizer built with the same settings."""
        ...


def check_box(x0: FloatArray, lower: FloatArray, upper: FloatArray) -> tuple[FloatArray, ...]:
    """x0, lower and upper as float vectors of one length; the box finite, x0 inside it."""
    x = np.array(x0, dtype=float)
    lo = np.array(lower, dtype=float)
    hi = np.array(upper, dtype=float)
    if x.ndim != 1 or x.size == 0 or lo.shape != x.shape or hi.shape != x.shape:
        raise ValueError(
            f"x0, lower and upper must be non-empty vectors of one length, got shapes "
            f"{x.shape}, {lo.shape}, {hi.shape}"
        )
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ValueError(
            "population optimizers need a finite box with lower < upper in every coordinate "
            "(set the control limits, or use a normalized objective)"
        )
    if not (np.all(np.isfinite(x)) and np.all(lo <= x) and np.all(x <= hi)):
        raise ValueError(f"x0 = {x.tolist()} is not inside the box")
    return x, lo, hi


def told_losses(
    owner: str,
    whole: str,
    asked: Sequence[FloatArray],
    candidates: Sequence[FloatArray],
    losses: Sequence[float],
) -> FloatArray:
    """The finite losses of exactly the candidates asked (`whole` names them in the message,
    e.g. "batch of 8 candidates"), as a float array."""
    if len(candidates) != len(asked) or len(losses) != len(asked):
        raise ValueError(
            f"{owner}: tell the whole {whole}, got {len(candidates)} candidates and "
            f"{len(losses)} losses"
        )
    for got, point in zip(candidates, asked, strict=True):
        if not np.array_equal(np.asarray(got, dtype=float), point):
            raise ValueError(f"{owner}: the candidates told are not the ones asked")
    values = np.array(losses, dtype=float)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{owner}: losses must be finite")
    return values


class CMAAdapter:
    """pycma's `CMAEvolutionStrategy` with the objective's box as bounds.

    Bounds go through pycma's default `BoundTransform`, so candidates are feasible. With
    `noise_handler`, pycma's `NoiseHandler` (Hansen et al. 2009) runs in ask/tell form: each
    generation's candidates are measured `evaluations` times (median), then a few of them are
    measured again in a second batch, and the rank changes between the two raise σ and the number
    of evaluations per candidate. This mirrors `NoiseHandler.__call__` with the re-evaluations
    asked for instead of made inside pycma, so every one of them is counted.
    """

    class Settings(BaseModel):
        """Initial step size, population, noise handling and extra pycma options."""

        model_config = ConfigDict(extra="forbid")

        sigma0: float | None = Field(
            default=None,
            gt=0,
            description="initial step size in θ units; None: 0.1 × the narrowest box width",
        )
        popsize: int | None = Field(
            default=None,
            ge=2,
            le=10_000,
            description="candidates per generation; None: 4 + ⌊3 ln d⌋",
        )
        noise_handler: bool = Field(
            default=False, description="use pycma's NoiseHandler (re-evaluations, σ increase)"
        )
        noise_maxevals: list[int] = Field(
            default_factory=lambda: [1, 1, 30],
            description="NoiseHandler maxevals: [min, initial, max] evaluations per candidate",
        )
        options: dict[str, Any] = Field(
            default_factory=dict,
            description="further pycma options (not bounds, seed, popsize or verbosity)",
        )

        @field_validator("options")
        @classmethod
        def _not_ours(cls, value: dict[str, Any]) -> dict[str, Any]:
            ours = {"bounds", "seed", "popsize", "verbose", "verb_disp", "verb_log"}
            taken = sorted(ours & set(value))
            if taken:
                raise ValueError(f"options {taken} are set by the adapter; use the settings")
            return value

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._cma = _import_optional("cma")
        self._seed = _int_seed(seed)
        self._starts = 0
        self._global = _NumpyGlobal(self._seed)
        self._es: Any = None
        self._nh: Any = None
        self._lower: FloatArray = np.zeros(0)
        self._upper: FloatArray = np.zeros(0)
        # the batch handed out by the last ask: the generation's solutions (as pycma gave them),
        # the points to measure, and which solution each point belongs to
        self._phase = "generation"
        self._solutions: list[Any] = []
        self._points: list[FloatArray] = []
        self._owner: list[int] = []
        self._fit: list[float] = []
        self._reeval: list[int] = []
        self._sigma_factors: list[float] = []

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        x, lo, hi = check_box(x0, lower, upper)
        s = self.settings
        sigma0 = s.sigma0 if s.sigma0 is not None else 0.1 * float(np.min(hi - lo))
        options: dict[str, Any] = {
            **s.options,
            "bounds": [lo.tolist(), hi.tolist()],
            "seed": _start_seed(self._seed, self._starts),
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        if s.popsize is not None:
            options["popsize"] = s.popsize
        with self._global.swapped():  # pycma seeds the global state from `seed` here
            self._es = self._cma.CMAEvolutionStrategy(x.tolist(), sigma0, options)
            self._nh = (
                self._cma.NoiseHandler(x.size, maxevals=list(s.noise_maxevals))
                if s.noise_handler
                else None
            )
        self._starts += 1
        self._lower, self._upper = lo, hi
        self._phase, self._points, self._sigma_factors = "generation", [], []

    @property
    def partial_batches(self) -> bool:
        """pycma needs the whole generation (or at least μ of it) in one tell."""
        return False

    @property
    def stop_reason(self) -> str | None:
        if self._es is None:
            return None
        stop = dict(self._es.stop())
        return ", ".join(f"{k}={v}" for k, v in stop.items()) or None

    def ask(self) -> list[FloatArray]:
        es = self._require()
        if self._phase == "generation":
            with self._global.swapped():
                self._solutions = list(es.ask())
            repeats = self._evaluations_per_candidate()
            self._owner = [i for i in range(len(self._solutions)) for _ in range(repeats)]
            self._points = [self._feasible(self._solutions[i]) for i in self._owner]
        return [p.copy() for p in self._points]

    def tell(self, candidates: Sequence[FloatArray], losses: Sequence[float]) -> None:
        values = self._check_tell(candidates, losses)
        with self._global.swapped():
            self._tell(values)

    def _tell(self, values: FloatArray) -> None:
        es = self._require()
        per_owner = self._aggregate(values)
        if self._phase == "generation":
            self._fit = [per_owner[i] for i in range(len(self._solutions))]
            es.evaluations_per_f_value = self._evaluations_per_candidate()  # for pycma's count
            es.tell(self._solutions, self._fit)
            self._points = []
            if self._nh is not None:
                self._ask_reevaluations()
            return
        # phase "reevaluation": the NoiseHandler's two fitness lists are complete
        nh = self._nh
        fitre = list(self._fit)
        for i in self._reeval:
            fitre[i] = per_owner[i]
        nh.fit, nh.fitre, nh.idx = list(self._fit), fitre, np.asarray(self._reeval)
        nh.evaluations_just_done = len(values)
        nh.update_measure()
        factor = float(nh.treat())
        es.sigma *= factor
        self._sigma_factors.append(factor)
        self._phase, self._points = "generation", []

    @property
    def generation_complete(self) -> bool:
        """False while the NoiseHandler's re-evaluations of the last generation are to be asked."""
        return self._phase == "generation"

    def recommend(self) -> FloatArray:
        """The distribution mean (`es.result.xfavorite`), clipped to the box."""
        es = self._require()
        x = _vector(es.result.xfavorite, self._lower.size, "pycma xfavorite")
        inside: FloatArray = np.clip(x, self._lower, self._upper)
        return inside

    def state(self) -> JSONDict:
        es = self._require()
        report: JSONDict = {
            "library": "cma",
            "generation": int(es.countiter),
            "sigma": float(es.sigma),
            "popsize": int(es.popsize),
            "library_evaluations": int(es.countevals),
            "phase": self._phase,
        }
        if self._nh is not None:
            report["noise_evaluations_per_candidate"] = int(self._nh.evaluations)
            report["noise_sigma_factors"] = len(self._sigma_factors)
            report["noise_last_sigma_factor"] = (
                self._sigma_factors[-1] if self._sigma_factors else None
            )
        return report

    _SAVED = (
        "_es",
        "_nh",
        "_starts",
        "_lower",
        "_upper",
        "_phase",
        "_solutions",
        "_points",
        "_owner",
        "_fit",
        "_reeval",
        "_sigma_factors",
    )

    def checkpoint(self) -> JSONDict:
        """The strategy, NoiseHandler, pending batch and numpy global state, pickled."""
        self._require()
        payload = {name: getattr(self, name) for name in self._SAVED}
        payload["numpy_global"] = self._global.state
        return pickled(payload, "cma")

    def restore(self, state: JSONDict) -> None:
        payload = unpickled(state, "cma", "CMAAdapter")
        if not isinstance(payload, dict) or set(payload) != {*self._SAVED, "numpy_global"}:
            raise ValueError("CMAAdapter: the checkpoint holds no CMAAdapter state")
        for name in self._SAVED:
            setattr(self, name, payload[name])
        self._global.state = payload["numpy_global"]

    # -- internals -------------------------------------------------------------------------------

    def _require(self) -> Any:
        if self._es is None:
            raise RuntimeError("CMAAdapter: call start(x0, lower, upper) first")
        return self._es

    def _evaluations_per_candidate(self) -> int:
        return 1 if self._nh is None else max(1, int(self._nh.evaluations))

    def _feasible(self, solution: Any) -> FloatArray:
        x = _vector(solution, self._lower.size, "pycma candidate")
        inside: FloatArray = np.clip(x, self._lower, self._upper)
        return inside

    def _check_tell(self, candidates: Sequence[FloatArray], losses: Sequence[float]) -> FloatArray:
        if not self._points:
            raise RuntimeError("CMAAdapter: tell without a pending ask")
        whole = f"batch of {len(self._points)} candidates"
        return told_losses("CMAAdapter", whole, self._points, candidates, losses)

    def _aggregate(self, values: FloatArray) -> dict[int, float]:
        """Median of the repeated measurements of each solution (pycma's aggregation)."""
        owners = np.array(self._owner)
        return {int(i): float(np.median(values[owners == i])) for i in np.unique(owners)}

    def _ask_reevaluations(self) -> None:
        """Pick the solutions to measure again, as `NoiseHandler.reeval` would."""
        nh, es = self._nh, self._require()
        if not nh.maxevals or nh.lam_reeval == 0:
            return
        self._reeval = [int(i) for i in nh.indices(self._fit)]
        if not self._reeval:
            return
        repeats = max(1, int(nh.evaluations))
        self._owner, self._points = [], []
        for i in self._reeval:
            for _ in range(repeats):
                # the NoiseHandler measures a slightly disturbed copy of the solution
                point = es.ask(1, self._solutions[i], nh.epsilon)[0] if nh.epsilon else None
                self._owner.append(i)
                self._points.append(self._feasible(self._solutions[i] if point is None else point))
        self._phase = "reevaluation"


class NevergradAdapter:
    """Any nevergrad optimizer by registry name on `ng.p.Array(init=x0).set_bounds(lo, hi)`.

    One candidate per ask (num_workers = 1). The function is declared noisy by default, which
    makes nevergrad fall back to its pessimistic best rather than the lowest noisy value. Avoid
    nevergrad's `SPSA` (learning rate fixed at 1e-5) and `NoisyOnePlusOne` (re-evaluates a few
    dozen points for budgets below about 10⁴).
    """

    class Settings(BaseModel):
        """Optimizer name, the budget nevergrad plans for, and the noise declaration."""

        model_config = ConfigDict(extra="forbid")

        optimizer: str = Field(default="TBPSA", description="a name in ng.optimizers.registry")
        budget: int | None = Field(
            default=None,
            ge=1,
            le=100_000_000,
            description="evaluations nevergrad plans for (set it to the run's budget)",
        )
        noisy: bool = Field(
            default=True, description="declare the function non-deterministic to nevergrad"
        )
        sigma: float | None = Field(
            default=None,
            gt=0,
            description="initial mutation scale in θ units; None: nevergrad's default (1)",
        )

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._ng = _import_optional("nevergrad")
        if self.settings.optimizer not in self._ng.optimizers.registry:
            raise ValueError(f"nevergrad has no optimizer {self.settings.optimizer!r}")
        self._seed = _int_seed(seed)
        self._starts = 0
        self._global = _NumpyGlobal(self._seed)
        self._opt: Any = None
        self._lower: FloatArray = np.zeros(0)
        self._upper: FloatArray = np.zeros(0)
        self._pending: list[tuple[Any, FloatArray]] = []

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        x, lo, hi = check_box(x0, lower, upper)
        ng, s = self._ng, self.settings
        seed = _start_seed(self._seed, self._starts)
        self._global = _NumpyGlobal(seed)
        parametrization = ng.p.Array(init=x)
        if s.sigma is not None:  # before the bounds, which check it against the box
            parametrization.set_mutation(sigma=s.sigma)
        parametrization.set_bounds(lo, hi)
        parametrization.random_state = np.random.RandomState(seed)
        if s.noisy:
            parametrization.function.deterministic = False
        factory = ng.optimizers.registry[s.optimizer]
        with self._global.swapped():
            self._opt = factory(parametrization=parametrization, budget=s.budget, num_workers=1)
        self._starts += 1
        self._lower, self._upper, self._pending = lo, hi, []

    @property
    def partial_batches(self) -> bool:
        return True

    @property
    def stop_reason(self) -> str | None:
        return None

    def ask(self) -> list[FloatArray]:
        opt = self._require()
        if self._pending:
            raise RuntimeError("NevergradAdapter: tell the last candidate before asking again")
        with self._global.swapped():
            candidate = opt.ask()
        x = _vector(candidate.value, self._lower.size, "nevergrad candidate")
        point: FloatArray = np.clip(x, self._lower, self._upper)
        self._pending = [(candidate, point)]
        return [point.copy()]

    def tell(self, candidates: Sequence[FloatArray], losses: Sequence[float]) -> None:
        opt = self._require()
        if len(candidates) != len(losses) or len(candidates) > len(self._pending):
            raise ValueError(
                f"NevergradAdapter: {len(candidates)} candidates and {len(losses)} losses for "
                f"{len(self._pending)} asked"
            )
        for got, loss, (candidate, asked) in zip(candidates, losses, self._pending, strict=False):
            if not np.array_equal(np.asarray(got, dtype=float), asked):
                raise ValueError("NevergradAdapter: the candidates told are not the ones asked")
            if not math.isfinite(loss):
                raise ValueError("NevergradAdapter: losses must be finite")
            with self._global.swapped():
                opt.tell(candidate, float(loss))
        self._pending = []

    def recommend(self) -> FloatArray:
        """nevergrad's `recommend()`, clipped to the box."""
        opt = self._require()
        with self._global.swapped():
            recommended = opt.recommend()
        x = _vector(recommended.value, self._lower.size, "nevergrad recommendation")
        inside: FloatArray = np.clip(x, self._lower, self._upper)
        return inside

    def state(self) -> JSONDict:
        opt = self._require()
        return {
            "library": "nevergrad",
            "optimizer": self.settings.optimizer,
            "class": type(opt).__name__,
            "num_ask": int(opt.num_ask),
            "num_tell": int(opt.num_tell),
        }

    def checkpoint(self) -> JSONDict:
        """The nevergrad optimizer (with its parametrization's random state) and the numpy
        global state, pickled; nothing may be pending (tell every candidate asked first)."""
        opt = self._require()
        if self._pending:
            raise RuntimeError("NevergradAdapter: tell the last candidate before a checkpoint")
        payload = {
            "opt": opt,
            "starts": self._starts,
            "lower": self._lower,
            "upper": self._upper,
            "numpy_global": self._global.state,
        }
        return pickled(payload, "nevergrad")

    def restore(self, state: JSONDict) -> None:
        payload = unpickled(state, "nevergrad", "NevergradAdapter")
        if not isinstance(payload, dict) or "opt" not in payload:
            raise ValueError("NevergradAdapter: the checkpoint holds no NevergradAdapter state")
        self._opt, self._starts = payload["opt"], int(payload["starts"])
        self._lower, self._upper = payload["lower"], payload["upper"]
        self._global.state = payload["numpy_global"]
        self._pending = []

    def _require(self) -> Any:
        if self._opt is None:
            raise RuntimeError("NevergradAdapter: call start(x0, lower, upper) first")
        return self._opt


Callback = Callable[[OptimizeResult], object]


def run_population(
    objective: Objective,
    optimizer: PopulationOptimizer,
    budget: int,
    *,
    x0: FloatArray | None = None,
    callback: Callback | None = None,
) -> OptimizeResult:
    """Run `optimizer` on `objective` for at most `budget` evaluations.

    With x0 the optimizer is started there on the objective's box (else it must be started).
    Candidates are projected onto the box before they are measured (each projection that moved a
    point is counted in `projections`; the adapters' candidates should never need one). The run
    ends at the budget exactly: an optimizer with `partial_batches` gets its last batch cut to
    what is left; one without stops before a batch that does not fit, leaving those evaluations
    unspent. It also ends when the library stops by its own criteria, or when `callback` (called
    after every tell with an intermediate result) raises StopIteration.

    Returns an OptimizeResult with x (the recommendation), nfev (evaluations counted by the
    objective during the run), device_seconds (device clock), nit (tells), message, status
    (0 budget, 1 library stop, 2 batch larger than the budget left, 3 callback),
    projections and optimizer_state. There is no `fun`: measuring x would cost an evaluation.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if x0 is not None:
        optimizer.start(x0, objective.lower, objective.upper)
    e0, t0 = objective.evaluations, objective.device_time()
    nit = projections = 0

    def result(message: str, status: int) -> OptimizeResult:
        return OptimizeResult(
            x=optimizer.recommend(),
            nfev=objective.evaluations - e0,
            device_seconds=objective.device_time() - t0,
            nit=nit,
            message=message,
            status=status,
            success=True,
            projections=projections,
            optimizer_state=optimizer.state(),
        )

    while True:
        left = budget - (objective.evaluations - e0)
        if left <= 0:
            return result("the evaluation budget is spent", 0)
        reason = optimizer.stop_reason
        if reason is not None:
            return result(f"the optimizer stopped by its own criteria: {reason}", 1)
        candidates = optimizer.ask()
        if not candidates:
            raise RuntimeError(f"{type(optimizer).__name__}.ask() returned no candidates")
        if len(candidates) > left:
            if not optimizer.partial_batches:
                return result(
                    f"{left} evaluations left, fewer than the next batch of {len(candidates)}; "
                    "they were not spent",
                    2,
                )
            candidates = candidates[:left]
        losses: list[float] = []
        for candidate in candidates:
            x = np.asarray(candidate, dtype=float)
            inside = objective.project(x)
            if not np.array_equal(inside, x):
                projections += 1
            losses.append(objective(inside))
        optimizer.tell(candidates, losses)
        nit += 1
        if callback is not None:
            try:
                callback(result("running", -1))
            except StopIteration:
                return result("stopped by the callback", 3)
