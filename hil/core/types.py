"""Shared type aliases and the one way to turn a seed into generators."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float64]
IntArray: TypeAlias = npt.NDArray[np.int64]
SeedLike: TypeAlias = int | np.random.SeedSequence | None
JSONDict: TypeAlias = dict[str, Any]


def seed_sequence(seed: SeedLike) -> np.random.SeedSequence:
    """A SeedSequence from an int, an existing sequence, or fresh OS entropy (None)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(seed)


def generator_state(rng: np.random.Generator) -> JSONDict:
    """The JSON-serialisable state of a generator (restores the exact future)."""
    state: JSONDict = dict(rng.bit_generator.state)
    return state


def restore_generator(rng: np.random.Generator, state: JSONDict) -> None:
    """Put a generator back to a state taken with `generator_state`."""
    rng.bit_generator.state = state
