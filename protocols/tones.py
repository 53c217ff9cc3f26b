"""Tone planning for homodyne gradient extraction: coherent tones free of low-order products.

Each control gets a sine at its own frequency and the output is demodulated by averaging over a
window T. The average nulls every component at a multiple of 1/T away from the reference, so a
plan is sound when every tone completes whole cycles in T and no harmonic, intermodulation
product or mains harmonic lands within 1/T of a tone. `check_plan` names every such problem;
`plan_tones` searches the 1/T grid from low frequencies upwards for a plan without any.

With `harmonics` (e.g. (3,) for amplitude calibration) a plan must also keep the bins h·f_i free:
no other tone, product or mains harmonic within 1/T of them and h·f_i below Nyquist, so the
output can be demodulated there to read the device's own h-th harmonic of tone i. `near_mains` is
the one mains-proximity rule, shared by the planner, the check and the homodyne noise bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, product

import numpy as np
from numpy.typing import ArrayLike, NDArray

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]

_REL = 1e-9  # relative tolerance for frequency comparisons
_CYCLES = 1e-6  # how far f·T may be from an integer and still count as coherent
_SEARCH_BUDGET = 20_000  # partial plans the backtracking search may try before giving up


@dataclass(frozen=True)
class Collision:
    """A problem with one tone: what offends it and how far away it is, in Hz."""

    index: int
    frequency: float
    product: str
    distance: float

    def __str__(self) -> str:
        return f"f{self.index} = {self.frequency:g} Hz: {self.product} ({self.distance:.3g} Hz)"


def _check_args(
    window: float,
    sample_rate: float,
    bandwidth: float,
    mains: float | None,
    mains_harmonics: int,
    mains_guard: float,
    order: int,
    nyquist_fraction: float,
) -> None:
    problems = []
    if not window > 0:
        problems.append(f"window must be > 0 s, got {window}")
    if not sample_rate > 0:
        problems.append(f"sample_rate must be > 0 Hz, got {sample_rate}")
    if not bandwidth > 0:
        problems.append(f"bandwidth must be > 0 Hz, got {bandwidth}")
    if mains is not None and not mains >= 0:
        problems.append(f"mains must be >= 0 Hz (0 or None: no mains check), got {mains}")
    if mains_harmonics < 0:
        problems.append(f"mains_harmonics must be >= 0, got {mains_harmonics}")
    if not mains_guard >= 0:
        problems.append(f"mains_guard must be >= 0 Hz, got {mains_guard}")
    if order < 1:
        problems.append(f"order must be >= 1, got {order}")
    if not 0 < nyquist_fraction <= 1:
        problems.append(f"nyquist_fraction must be in (0, 1], got {nyquist_fraction}")
    if problems:
        raise ValueError("; ".join(problems))


@lru_cache(maxsize=64)
def _vectors(n: int, order: int) -> IntArray:
    """Integer combinations n_j with 1 ≤ Σ|n_j| ≤ order, one of each ± pair (first entry > 0)."""
    rows: list[list[int]] = []
    for size in range(1, min(order, n) + 1):
        for support in combinations(range(n), size):
            for mags in product(range(1, order - size + 2), repeat=size):
                if sum(mags) > order:
                    continue
                for signs in product((1, -1), repeat=size - 1):
                    row = [0] * n
                    row[support[0]] = mags[0]
                    for j, m, s in zip(support[1:], mags[1:], signs, strict=True):
                        row[j] = s * m
                    rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, n)


def _name(vector: IntArray) -> str:
    """'2·f0−f3' for (2, 0, 0, −1): positive terms first, each group by index."""
    terms = [(int(c), j) for j, c in enumerate(vector) if c != 0]
    ordered = [t for t in terms if t[0] > 0] + [t for t in terms if t[0] < 0]
    text = ""
    for k, (c, j) in enumerate(ordered):
        sign = ("" if k == 0 else "+") if c > 0 else "−"
        text += sign + (f"{abs(c)}·" if abs(c) > 1 else "") + f"f{j}"
    return text


def _above(f: float, limit: float) -> bool:
    return f > limit * (1 + _REL)


def _mains_reach(window: float, guard: float) -> float:
    """How close to a mains harmonic a frequency may not come: max(1/T, guard), exclusive."""
    return max(1.0 / window, guard) * (1 - _REL)


def near_mains(
    frequencies: ArrayLike,
    *,
    window: float,
    mains: float | None = 50.0,
    harmonics: int = 20,
    guard: float = 0.5,
) -> BoolArray:
    """Per frequency: within max(1/T, `guard`) of a mains harmonic h·mains, 1 ≤ h ≤ `harmonics`.

    The planner's rule (tones are kept off these), also used for the homodyne noise bins. Mains
    None or 0: nothing is near mains.
    """
    f = np.asarray(frequencies, dtype=float)
    if not mains or harmonics < 1:
        return np.zeros(f.shape, dtype=bool)
    lines = mains * np.arange(1, harmonics + 1)
    near: BoolArray = np.any(
        np.abs(f[..., np.newaxis] - lines) < _mains_reach(window, guard), axis=-1
    )
    return near


def _mains_hits(
    f: float, window: float, mains: float | None, harmonics: int, guard: float
) -> list[tuple[float, float]]:
    """(harmonic, distance) for every mains harmonic that `near_mains` finds near f."""
    if not mains:
        return []
    hits = []
    for h in range(1, harmonics + 1):
        if near_mains(f, window=window, mains=h * mains, harmonics=1, guard=guard):
            hits.append((h * mains, abs(f - h * mains)))
    return hits


def _harmonic_in_band(frequency: FloatArray, sample_rate: float) -> BoolArray:
    """A harmonic can be demodulated only strictly below Nyquist (at fs/2 its sine is 0)."""
    below: BoolArray = np.asarray(frequency) < sample_rate / 2 * (1 - _REL)
    return below


def _check_harmonics(harmonics: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(h) for h in harmonics)
    if any(h < 2 for h in out):
        raise ValueError(f"harmonics must be integers >= 2, got {list(harmonics)}")
    return tuple(sorted(set(out)))


def check_plan(
    frequencies: Sequence[float],
    *,
    window: float,
    sample_rate: float,
    bandwidth: float,
    mains: float | None = 50.0,
    mains_harmonics: int = 20,
    mains_guard: float = 0.5,
    order: int = 3,
    nyquist_fraction: float = 0.25,
    harmonics: Sequence[int] = (),
) -> list[Collision]:
    """Every problem with a tone plan; an empty list means the plan is sound.

    Checks, per tone: within 1/T of DC, f·T not an integer, above `bandwidth` or above
    `nyquist_fraction`·fs/2, within max(1/T, `mains_guard`) of a mains harmonic (up to
    `mains_harmonics`; mains None or 0 skips this), within 1/T of another tone, and within 1/T of
    any product Σ n_j f_j with 2 ≤ Σ|n_j| ≤ `order` (harmonics and intermodulation).
    For every h in `harmonics` also the bin h·f_k: not below fs/2, near mains, or within 1/T of a
    tone or of a product of order ≤ `order` other than h·f_k itself.
    """
    _check_args(
        window,
        sample_rate,
        bandwidth,
        mains,
        mains_harmonics,
        mains_guard,
        order,
        nyquist_fraction,
    )
    kept = _check_harmonics(harmonics)
    f = np.asarray(frequencies, dtype=float)
    if f.ndim != 1:
        raise ValueError(f"frequencies: expected a flat sequence, got shape {f.shape}")
    resolution = 1.0 / window
    reach = resolution * (1 - _REL)
    nyquist = nyquist_fraction * sample_rate / 2
    found: list[Collision] = []
    every = _vectors(f.size, order) if f.size else np.zeros((0, 0), dtype=np.int64)
    every_values = every @ f if f.size else np.zeros(0)
    vectors = every[np.abs(every).sum(axis=1) >= 2]
    values = vectors @ f if f.size else np.zeros(0)
    for k, fk in enumerate(f.tolist()):

        def hit(product: str, distance: float, k: int = k, fk: float = fk) -> None:
            found.append(Collision(k, fk, product, abs(distance)))

        if fk < reach:
            hit(f"DC: within 1/T = {resolution:g} Hz of 0 Hz", fk)
        cycles = fk * window
        if abs(cycles - round(cycles)) > _CYCLES:
            hit(f"not coherent: f·T = {cycles:g}", fk - round(cycles) / window)
        if _above(fk, bandwidth):
            hit(f"above bandwidth {bandwidth:g} Hz", fk - bandwidth)
        if _above(fk, nyquist):
            hit(f"above {nyquist_fraction:g}·fs/2 = {nyquist:g} Hz", fk - nyquist)
        for harmonic, distance in _mains_hits(fk, window, mains, mains_harmonics, mains_guard):
            hit(f"mains {harmonic:g} Hz", distance)
        for j, fj in enumerate(f.tolist()):
            if j != k and abs(fk - fj) < reach:
                hit(f"duplicate of f{j}", fk - fj)
        for i in np.flatnonzero(np.abs(np.abs(values) - fk) < reach):
            v = vectors[i] if values[i] >= 0 else -vectors[i]
            hit(_name(v), abs(values[i]) - fk)
        for h in kept:
            hf, own = h * fk, f"{h}·f{k}"
            if not _harmonic_in_band(np.asarray(hf), sample_rate):
                hit(f"{own} = {hf:g} Hz not below fs/2 = {sample_rate / 2:g} Hz", hf)
            for harmonic, distance in _mains_hits(hf, window, mains, mains_harmonics, mains_guard):
                hit(f"{own} = {hf:g} Hz near mains {harmonic:g} Hz", distance)
            self_vector = np.zeros(f.size, dtype=np.int64)
            self_vector[k] = h
            near = np.abs(np.abs(every_values) - hf) < reach
            for i in np.flatnonzero(near & np.any(every != self_vector, axis=1)):
                v = every[i] if every_values[i] >= 0 else -every[i]
                hit(f"{own} = {hf:g} Hz meets {_name(v)}", abs(every_values[i]) - hf)
    return found


def _forbidden(tones: Sequence[int], order: int) -> IntArray | None:
    """Grid bins m where a new tone would collide with `tones` or their products (None: all).

    With every tone on the 1/T grid, products are on it too, so 'within 1/T' means 'equal'.
    The new tone is the last coordinate c of each combination; q·tones = A is the rest.
    """
    s = len(tones)
    old = np.asarray(tones, dtype=np.int64)
    vectors = _vectors(s + 1, order)
    q, c = vectors[:, :s], vectors[:, s]
    a = q @ old
    parts = [np.abs(a[c == 0])]  # products of the old tones that a new tone must avoid
    a, c, q = a[c != 0], c[c != 0], q[c != 0]
    if s:  # A + c·m = ±t: a product with the new tone lands on an old tone t
        targets = np.concatenate([old, -old])
        num = targets[None, :] - a[:, None]
        div = np.broadcast_to(c[:, None], num.shape)
        exact = num % div == 0
        parts.append(num[exact] // div[exact])
    for sign in (1, -1):  # A + c·m = ±m: a product with the new tone lands on the new tone
        k = c - sign
        if np.any((k == 0) & (a == 0) & q.any(axis=1)):
            return None
        ok = (k != 0) & (a % np.where(k == 0, 1, k) == 0)
        parts.append(-a[ok] // k[ok])
    out = np.unique(np.concatenate(parts))
    found: IntArray = out[out > 0]
    return found


def _harmonics_clear(tones: Sequence[int], harmonics: tuple[int, ...], order: int) -> bool:
    """No tone or product of order ≤ `order` on h·t (other than h·t itself), on the 1/T grid."""
    bins = np.asarray(tones, dtype=np.int64)
    vectors = _vectors(bins.size, order)
    values = np.abs(vectors @ bins)
    for k, t in enumerate(bins.tolist()):
        for h in harmonics:
            own = np.zeros(bins.size, dtype=np.int64)
            own[k] = h
            if np.any((values == h * t) & np.any(vectors != own, axis=1)):
                return False
    return True


def _search(
    n: int,
    allowed: IntArray,
    order: int,
    accept: Callable[[list[int]], bool] | None = None,
) -> tuple[list[int], list[int], bool]:
    """Depth-first from low bins (the first path is the greedy one): (plan, best partial, done).

    `accept` (if given) must hold for every partial plan; it is checked on each extension.
    """
    best: list[int] = []
    tries = 0

    def extend(tones: list[int]) -> list[int] | None:
        nonlocal best, tries
        if len(tones) > len(best):
            best = list(tones)
        if len(tones) == n:
            return tones
        forbidden = _forbidden(tones, order)
        if forbidden is None:
            return None
        start = tones[-1] + 1 if tones else 0
        candidates = allowed[allowed >= start]
        candidates = candidates[~np.isin(candidates, forbidden)]
        for i, m in enumerate(candidates.tolist()):
            if candidates.size - i < n - len(tones) or tries >= _SEARCH_BUDGET:
                return None
            tries += 1
            if accept is not None and not accept([*tones, m]):
                continue
            plan = extend([*tones, m])
            if plan is not None:
                return plan
        return None

    plan = extend([])
    return (plan or [], best, tries < _SEARCH_BUDGET)


def plan_tones(
    n: int,
    *,
    window: float,
    sample_rate: float,
    bandwidth: float,
    mains: float | None = 50.0,
    mains_harmonics: int = 20,
    mains_guard: float = 0.5,
    order: int = 3,
    nyquist_fraction: float = 0.25,
    f_min: float | None = None,
    harmonics: Sequence[int] = (),
) -> list[float]:
    """n coherent tones (multiples of 1/T, ascending) that `check_plan` finds no fault with.

    Searches the 1/T grid from max(`f_min`, 1/T) up to min(bandwidth, nyquist_fraction·fs/2),
    lowest tones first; raises ValueError, saying what to change, if no plan is found. With
    `harmonics` the bins h·f_i are kept free too (see `check_plan`).
    """
    _check_args(
        window,
        sample_rate,
        bandwidth,
        mains,
        mains_harmonics,
        mains_guard,
        order,
        nyquist_fraction,
    )
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if f_min is not None and not f_min >= 0:
        raise ValueError(f"f_min must be >= 0 Hz, got {f_min}")
    kept = _check_harmonics(harmonics)
    nyquist = nyquist_fraction * sample_rate / 2
    top = min(bandwidth, nyquist)
    lo = max(1, math.ceil((f_min or 0.0) * window * (1 - _REL)))
    hi = math.floor(top * window * (1 + _REL))
    while hi >= lo and _above(hi / window, top):
        hi -= 1
    bins = np.arange(lo, max(hi, lo - 1) + 1, dtype=np.int64)

    def clear(f: FloatArray) -> BoolArray:
        off: BoolArray = ~near_mains(
            f, window=window, mains=mains, harmonics=mains_harmonics, guard=mains_guard
        )
        return off

    keep = clear(bins / window)
    for h in kept:  # each tone's harmonic bins must lie below Nyquist and away from mains
        keep &= _harmonic_in_band(h * bins / window, sample_rate) & clear(h * bins / window)
    allowed = bins[keep]
    accept = (lambda plan: _harmonics_clear(plan, kept, order)) if kept else None
    plan, best, complete = _search(n, allowed, order, accept)
    if len(plan) == n:
        return [m / window for m in plan]
    raise_limit = (
        f"a higher bandwidth (the limit is {bandwidth:g} Hz)"
        if bandwidth <= nyquist
        else f"a higher sample rate or nyquist_fraction (the limit is {nyquist:g} Hz)"
    )
    how = "no" if complete else f"the search stopped after {_SEARCH_BUDGET} tries without a"
    raise ValueError(
        f"{how} collision-free set of {n} tones between {lo / window:g} and {top:g} Hz "
        f"on the 1/T = {1 / window:g} Hz grid (order {order}"
        + (f", harmonics {list(kept)} kept free" if kept else "")
        + "); "
        + (
            f"only {allowed.size} grid frequencies clear of mains. "
            if allowed.size < n
            else f"the best partial plan: {[m / window for m in best]} Hz. "
        )
        + f"Use a longer window, {raise_limit}"
        + (", a lower f_min" if f_min else "")
        + " or fewer controls"
    )
