"""The genetic algorithm of the DNPU papers, as a `PopulationOptimizer` (our own implementation).

Source: the dopant-network processors were first trained by artificial evolution (Chen et al.,
Nature 577, 341–345, 2020), with the GA of the group's framework, brains-py's
`GeneticOptimizer` (`brainspy/algorithms/ga.py`; see the shared reference notes,
algorithms.md §1.7–1.8 and §7 "Evolution / GA", and peers_lab.md §1 "Training algorithms").
What it does, and what we keep:

- a population of P control vectors in the box, the first generation uniform in it (ours: the
  start point and P − 1 uniform points); fitness = −loss;
- the E best (brains-py's `partition[0]`) pass unchanged to the next generation, where they are
  measured again: under noise an elite's lucky measurement does not make it immortal;
- the rest are bred from two parents each, chosen by linear ranking with stochastic universal
  sampling (brains-py; selection pressure 1.5) or, here also, by tournament;
- crossover BLX-α-β (brains-py, α = 0.6 towards the fitter parent, β = 0.4 towards the other),
  or uniform crossover;
- mutation: brains-py redraws a gene from a triangular distribution over the whole range with a
  rate that decays over the run; ours adds Gaussian noise of a size relative to the box width,
  to each gene with a probability (the rate); rate and size may decay geometrically per
  generation; children are clipped to the box.

Every random draw comes from one `numpy.random.Generator` seeded from the procedure's seed, and
the state is JSON (population, last losses, generator state), so a resumed run is exact.
The recommendation is the member with the lowest loss in the last measured generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.core import FloatArray, IntArray, JSONDict, SeedLike, seed_sequence
from hil.core.types import generator_state, restore_generator
from protocols.external import check_box, told_losses


class GeneticAdapter:
    """Elitist GA with rank or tournament selection, blend or uniform crossover and Gaussian
    mutation, in ask/tell form: `ask` hands out the whole generation, `tell` breeds the next."""

    class Settings(BaseModel):
        """Population, elites, selection, crossover and mutation (sizes relative to the box)."""

        model_config = ConfigDict(extra="forbid")

        popsize: int = Field(default=20, ge=2, le=10_000, description="members per generation")
        elites: int = Field(
            default=4, ge=0, description="best members kept unchanged (and measured again)"
        )
        selection: Literal["rank", "tournament"] = Field(
            default="rank",
            description="'rank': linear ranking with stochastic universal sampling; "
            "'tournament': the best of `tournament` members drawn at random",
        )
        pressure: float = Field(
            default=1.5,
            ge=1.0,
            le=2.0,
            description="linear ranking: expected offspring of the best member (the worst gets "
            "2 − pressure)",
        )
        tournament: int = Field(default=3, ge=2, description="members per tournament")
        crossover: Literal["blend", "uniform"] = Field(
            default="blend",
            description="'blend': BLX-α-β, each gene uniform in the parents' interval widened "
            "by α towards the fitter parent and β towards the other; 'uniform': each gene from "
            "either parent",
        )
        alpha: float = Field(default=0.6, ge=0, le=2, description="BLX widening, fitter side")
        beta: float = Field(default=0.4, ge=0, le=2, description="BLX widening, other side")
        mutation_rate: float = Field(
            default=0.3, ge=0, le=1, description="probability that a child's gene is mutated"
        )
        mutation_size: float = Field(
            default=0.1,
            ge=0,
            le=10,
            description="σ of a mutation as a fraction of the coordinate's box width",
        )
        mutation_decay: float = Field(
            default=1.0,
            gt=0,
            le=1,
            description="factor on mutation rate and size per generation (1: no decay)",
        )

        @model_validator(mode="after")
        def _fits(self) -> GeneticAdapter.Settings:
            if self.elites >= self.popsize:
                raise ValueError(
                    f"elites ({self.elites}) must be fewer than popsize ({self.popsize}): "
                    "some members must be bred"
                )
            if self.selection == "tournament" and self.tournament > self.popsize:
                raise ValueError(f"tournament ({self.tournament}) exceeds popsize")
            return self

    def __init__(self, settings: Settings | None = None, *, seed: SeedLike = None) -> None:
        self.settings = settings if settings is not None else self.Settings()
        self._rng = np.random.default_rng(seed_sequence(seed))
        self._lower: FloatArray = np.zeros(0)
        self._upper: FloatArray = np.zeros(0)
        self._population: FloatArray = np.zeros((0, 0))
        self._x0: FloatArray = np.zeros(0)
        self._last: FloatArray | None = None  # the last measured generation, best first
        self._last_losses: FloatArray | None = None
        self._generation = 0

    # -- PopulationOptimizer -----------------------------------------------------------------

    def start(self, x0: FloatArray, lower: FloatArray, upper: FloatArray) -> None:
        """A first generation of x0 and popsize − 1 uniform points of the box."""
        x, lo, hi = check_box(x0, lower, upper)
        others = self._rng.uniform(lo, hi, size=(self.settings.popsize - 1, x.size))
        self._population = np.vstack([x, others])
        self._lower, self._upper, self._x0 = lo, hi, x
        self._last = self._last_losses = None
        self._generation = 0

    @property
    def partial_batches(self) -> bool:
        """Selection ranks the whole generation: tell all of it."""
        return False

    @property
    def stop_reason(self) -> str | None:
        return None

    def ask(self) -> list[FloatArray]:
        self._require()
        return [member.copy() for member in self._population]

    def tell(self, candidates: Sequence[FloatArray], losses: Sequence[float]) -> None:
        """Rank the generation, keep the elites, breed the rest."""
        self._require()
        values = self._check_tell(candidates, losses)
        order = np.argsort(values, kind="stable")
        ranked, ranked_losses = self._population[order], values[order]
        self._last, self._last_losses = ranked.copy(), ranked_losses
        s = self.settings
        pairs = self._pairs(len(ranked), s.popsize - s.elites)
        children = [self._child(ranked[i], ranked[j]) for i, j in pairs]
        self._population = np.vstack([ranked[: s.elites], *children])
        self._generation += 1

    def recommend(self) -> FloatArray:
        """The member with the lowest loss in the last measured generation (before any: x0)."""
        self._require()
        best = self._x0 if self._last is None else self._last[0]
        return np.array(best, dtype=float)

    def state(self) -> JSONDict:
        self._require()
        rate, size = self._mutation()
        losses = self._last_losses
        return {
            "library": "genetic",
            "generation": self._generation,
            "popsize": self.settings.popsize,
            "elites": self.settings.elites,
            "mutation_rate": rate,
            "mutation_size": size,
            "best_loss": None if losses is None else float(losses[0]),
            "spread": float(
                np.mean(np.std(self._population, axis=0) / (self._upper - self._lower))
            ),
        }

    # -- checkpoint ----------------------------------------------------------------------------

    def checkpoint(self) -> JSONDict:
        """JSON: the box, the population to measure next, the last generation and its losses,
        the generation count and the generator's state."""
        self._require()
        return {
            "generation": self._generation,
            "lower": self._lower.tolist(),
            "upper": self._upper.tolist(),
            "x0": self._x0.tolist(),
            "population": self._population.tolist(),
            "last": None if self._last is None else self._last.tolist(),
            "last_losses": None if self._last_losses is None else self._last_losses.tolist(),
            "rng": generator_state(self._rng),
        }

    def restore(self, state: JSONDict) -> None:
        population = np.array(state["population"], dtype=float)
        if population.ndim != 2 or population.shape[0] != self.settings.popsize:
            raise ValueError(
                f"GeneticAdapter: the checkpoint's population has shape {population.shape}, the "
                f"settings ask for {self.settings.popsize} members"
            )
        self._generation = int(state["generation"])
        self._lower = np.array(state["lower"], dtype=float)
        self._upper = np.array(state["upper"], dtype=float)
        self._x0 = np.array(state["x0"], dtype=float)
        self._population = population
        last, losses = state["last"], state["last_losses"]
        self._last = None if last is None else np.array(last, dtype=float)
        self._last_losses = None if losses is None else np.array(losses, dtype=float)
        restore_generator(self._rng, state["rng"])

    # -- breeding ------------------------------------------------------------------------------

    def _mutation(self) -> tuple[float, float]:
        """This generation's mutation rate and size (after the decay)."""
        s = self.settings
        factor = s.mutation_decay**self._generation
        return s.mutation_rate * factor, s.mutation_size * factor

    def _child(self, better: FloatArray, worse: FloatArray) -> FloatArray:
        """A child of two parents (`better` has the lower loss), mutated and clipped."""
        if self.settings.crossover == "blend":
            child = self._blend(better, worse)
        else:
            child = np.where(self._rng.random(better.size) < 0.5, better, worse)
        rate, size = self._mutation()
        mutate = self._rng.random(child.size) < rate
        noise = self._rng.normal(0.0, 1.0, child.size) * size * (self._upper - self._lower)
        mutated: FloatArray = np.clip(child + mutate * noise, self._lower, self._upper)
        return mutated

    def _pairs(self, n: int, count: int) -> list[tuple[int, int]]:
        """`count` pairs of distinct ranks (0 = best), the better rank first: 2·count parents
        drawn at once by the selection scheme, shuffled and paired."""
        chosen: IntArray
        if self.settings.selection == "rank":
            chosen = self._universal_sampling(n, 2 * count)
        else:
            chosen = np.array([self._tournament(n) for _ in range(2 * count)])
        pairs = []
        for a, b in zip(chosen[0::2].tolist(), chosen[1::2].tolist(), strict=True):
            if a == b:  # the same member twice: pair it with its neighbour in rank
                b = a + 1 if a + 1 < n else a - 1
            pairs.append((min(a, b), max(a, b)))
        return pairs

    def _universal_sampling(self, n: int, k: int) -> IntArray:
        """k ranks by stochastic universal sampling on linear-ranking probabilities."""
        eta = self.settings.pressure
        rank = np.arange(n)
        probability = (eta - (2.0 * eta - 2.0) * rank / max(n - 1, 1)) / n
        edges = np.cumsum(probability)
        edges[-1] = 1.0
        pointers = (self._rng.random() + np.arange(k)) / k
        chosen: IntArray = np.searchsorted(edges, pointers, side="right")
        shuffled: IntArray = self._rng.permutation(np.minimum(chosen, n - 1))
        return shuffled

    def _tournament(self, n: int) -> int:
        """The best rank among `tournament` drawn without replacement."""
        return int(np.min(self._rng.choice(n, size=self.settings.tournament, replace=False)))

    def _blend(self, better: FloatArray, worse: FloatArray) -> FloatArray:
        """BLX-α-β: uniform in [min − w·d, max + w'·d] per gene, widened by α on the fitter
        parent's side and by β on the other."""
        s = self.settings
        low, high = np.minimum(better, worse), np.maximum(better, worse)
        d = high - low
        better_high = better >= worse
        below = np.where(better_high, s.beta, s.alpha) * d
        above = np.where(better_high, s.alpha, s.beta) * d
        drawn: FloatArray = self._rng.uniform(low - below, high + above)
        return drawn

    # -- checks --------------------------------------------------------------------------------

    def _require(self) -> None:
        if self._population.size == 0:
            raise RuntimeError("GeneticAdapter: call start(x0, lower, upper) first")

    def _check_tell(self, candidates: Sequence[FloatArray], losses: Sequence[float]) -> FloatArray:
        whole = f"generation of {len(self._population)} members"
        return told_losses("GeneticAdapter", whole, list(self._population), candidates, losses)
