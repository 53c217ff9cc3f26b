"""Labelled two-class data for classification tasks: generated rings and spheres, .npz files,
and a stratified hold-out split.

Labels are 0/1 with class 1 the one that must give the high output.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import brentq

from hil.core import ConfigError, FloatArray, IntArray
from hil.core.paths import DATA_LIMIT, UnreadableFile, float_array, load_npz
from protocols.tasks import MAX_CASES

LABEL_ARRAYS = ("target", "targets", "labels")
"""Names a data file may give its label array (exactly one of them)."""

_SAVE_HINT = (
    "save the points as 'inputs' (n_cases × n_inputs) and the classes as 'target' "
    "(n_cases values, 0 or 1; class 1 gives the high output) with numpy.savez"
)


class Generate(BaseModel):
    """A generated two-class set: class 0 fills a ball around the origin, class 1 a shell around
    it, `gap` apart, both inside [-1, 1]^dim (see `radii`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: Literal["ring", "sphere"] = Field(
        description="'ring': 2-D disc inside an annulus; 'sphere': 3-D ball inside a shell"
    )
    n: int = Field(default=200, ge=4, le=MAX_CASES, description="cases, half of each class")
    gap: float = Field(
        default=0.4,
        gt=0,
        lt=1,
        allow_inf_nan=False,
        description="radial gap between the classes (input units, [-1, 1] spans a range)",
    )
    seed: int = Field(default=0, ge=0, description="the same seed gives the same points")


def radii(dim: int, gap: float) -> tuple[float, float]:
    """(r0, r_out): class 0 fills the ball of radius r0, class 1 the shell from r0 + gap to
    r_out = 1 (the largest that stays inside [-1, 1]^dim). r0 makes ball and shell equal in
    volume, r0^dim + (r0 + gap)^dim = 1, so both classes have the same density: for gap 0.4,
    r0 = 0.478 (ring) and 0.543 (sphere)."""
    if not 0 < gap < 1:
        raise ValueError(f"gap {gap} must lie in (0, 1) for both classes to fit in the unit ball")
    r0 = float(brentq(lambda r: r**dim + (r + gap) ** dim - 1.0, 0.0, 1.0 - gap))
    return r0, 1.0


def _in_shell(rng: np.random.Generator, n: int, dim: int, inner: float, outer: float) -> FloatArray:
    """n points uniform in the shell inner ≤ |x| ≤ outer of `dim` dimensions (inner 0: a ball)."""
    directions = rng.standard_normal((n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    u = rng.random(n)
    r = np.clip((inner**dim + u * (outer**dim - inner**dim)) ** (1.0 / dim), inner, outer)
    points: FloatArray = directions * r[:, np.newaxis]
    return points


def generate(spec: Generate) -> tuple[FloatArray, IntArray]:
    """(inputs n × dim, labels n): n // 2 cases of class 0 and the rest of class 1, in a random
    order; deterministic from `spec.seed`."""
    dim = 2 if spec.shape == "ring" else 3
    r0, r_out = radii(dim, spec.gap)
    rng = np.random.default_rng(spec.seed)
    n0 = spec.n // 2
    points = np.concatenate(
        [_in_shell(rng, n0, dim, 0.0, r0), _in_shell(rng, spec.n - n0, dim, r0 + spec.gap, r_out)]
    )
    labels = np.concatenate([np.zeros(n0, np.int64), np.ones(spec.n - n0, np.int64)])
    order = rng.permutation(spec.n)
    return points[order], labels[order]


def check_labelled(inputs: FloatArray, labels: FloatArray, source: str) -> IntArray:
    """The labels as 0/1 integers if `inputs` (n × k) and `labels` (n, or n × 1) form a valid
    two-class set; else ValueError saying what is wrong and what to give."""
    if inputs.ndim != 2 or inputs.shape[0] == 0 or inputs.shape[1] == 0:
        raise ValueError(
            f"{source}: 'inputs' must be n_cases × n_inputs with both non-zero, "
            f"got shape {inputs.shape}"
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"{source}: the labels have shape {labels.shape} for {inputs.shape[0]} input rows; "
            "give one label (0 or 1) per input row"
        )
    if inputs.shape[0] > MAX_CASES:
        raise ValueError(
            f"{source}: {inputs.shape[0]} cases, more than {MAX_CASES}; use fewer cases"
        )
    if not np.isfinite(inputs).all():
        raise ValueError(f"{source}: 'inputs' contains NaN or infinite values")
    bad = labels[(labels != 0) & (labels != 1)]
    if bad.size:
        raise ValueError(
            f"{source}: the labels hold values other than 0 and 1 (e.g. {bad[0]:g}); label "
            "class 0 as 0 and class 1 (the high output) as 1"
        )
    classes: IntArray = labels.astype(np.int64)
    for c in (0, 1):
        if not np.any(classes == c):
            raise ValueError(f"{source}: no case of class {c}; give cases of both classes")
    return classes


def load_labelled(path: Path) -> tuple[FloatArray, IntArray]:
    """(inputs, labels) from an .npz with 'inputs' and one of LABEL_ARRAYS; problems are
    ConfigErrors at the `data` key."""
    try:
        arrays = load_npz(path, limit=DATA_LIMIT, what="task data file")
    except UnreadableFile as exc:
        exc.key = ("task", "data")
        raise
    names = [k for k in LABEL_ARRAYS if k in arrays]
    problem = ""
    if "inputs" not in arrays:
        problem = "has no array 'inputs'"
    elif not names:
        problem = f"has no label array (one of {list(LABEL_ARRAYS)})"
    elif len(names) > 1:
        problem = f"has several label arrays {names} (keep one)"
    if problem:
        raise ConfigError(
            f"task data file '{path}' {problem}; it holds {sorted(arrays)}: {_SAVE_HINT}",
            key=("task", "data"),
        )
    try:
        inputs = float_array(arrays, "inputs", path, "task data file")
        labels = float_array(arrays, names[0], path, "task data file")
        return inputs, check_labelled(inputs, labels, f"task data file '{path}' ({names[0]!r})")
    except ValueError as exc:
        raise ConfigError(str(exc), key=("task", "data")) from None


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def split(labels: IntArray, fraction: float, seed: int) -> tuple[IntArray, IntArray]:
    """(training, held-out) case indices, sorted: `fraction` of each class held out (rounded),
    chosen at random from `seed`. Each part must keep a case of each class (the held-out part
    may be empty only when `fraction` is 0); else a ConfigError at the `validation` key."""
    rng = np.random.default_rng(seed)
    train: list[IntArray] = []
    held: list[IntArray] = []
    for c in (0, 1):
        cases = rng.permutation(np.flatnonzero(labels == c))
        k = _half_up(fraction * cases.size)
        if fraction > 0 and k == 0:
            raise ConfigError(
                f"holding out {fraction:g} of the {cases.size} class-{c} cases keeps none for "
                "validation; raise `validation`, use more cases, or set it to 0",
                key=("task", "validation"),
            )
        if k == cases.size:
            raise ConfigError(
                f"holding out {fraction:g} of the {cases.size} class-{c} cases leaves none for "
                "training; lower `validation` or use more cases",
                key=("task", "validation"),
            )
        held.append(cases[:k])
        train.append(cases[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
