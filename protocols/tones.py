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

With `products` (a `tone_windows.ProductSizes`, the rule for which products count) only products
predicted to stand out of the noise count: at small amplitude and curvature a plan needs only
distinct tones off mains, so its top bin grows ~d rather than the ~d^2.5 of a plan free of every
product. Plans are cached (`tone_plan`), and `shortest_window` finds the shortest window whose
plan fits the band (here, not in `tone_windows`: it runs this module's search).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols import tone_windows
from protocols.tone_windows import (
    BoolArray,
    FloatArray,
    ProductSizes,
    SmallArray,
    counted_vectors,
)

IntArray = NDArray[np.int64]

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


@dataclass(frozen=True)
class _Rules:
    """What a plan obeys besides n and the window, checked (hashable: part of the cache keys)."""

    sample_rate: float
    bandwidth: float
    mains: float | None
    mains_harmonics: int
    mains_guard: float
    order: int
    nyquist_fraction: float
    f_min: float | None
    harmonics: tuple[int, ...]
    products: ProductSizes | None

    def __post_init__(self) -> None:
        problems = []
        if not self.sample_rate > 0:
            problems.append(f"sample_rate must be > 0 Hz, got {self.sample_rate}")
        if not self.bandwidth > 0:
            problems.append(f"bandwidth must be > 0 Hz, got {self.bandwidth}")
        if self.mains is not None and not self.mains >= 0:
            problems.append(f"mains must be >= 0 Hz (0 or None: no mains check), got {self.mains}")
        if self.mains_harmonics < 0:
            problems.append(f"mains_harmonics must be >= 0, got {self.mains_harmonics}")
        if not self.mains_guard >= 0:
            problems.append(f"mains_guard must be >= 0 Hz, got {self.mains_guard}")
        if self.order < 1:
            problems.append(f"order must be >= 1, got {self.order}")
        if not 0 < self.nyquist_fraction <= 1:
            problems.append(f"nyquist_fraction must be in (0, 1], got {self.nyquist_fraction}")
        if self.f_min is not None and not self.f_min >= 0:
            problems.append(f"f_min must be >= 0 Hz, got {self.f_min}")
        if problems:
            raise ValueError("; ".join(problems))
        object.__setattr__(self, "harmonics", _check_harmonics(self.harmonics))

    def check(self, n: int, window: float) -> None:
        """Raise ValueError for a window ≤ 0, n < 0 or product sizes for fewer than n tones."""
        if not window > 0:
            raise ValueError(f"window must be > 0 s, got {window}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self.products is not None:
            for name in ("amplitudes", "second", "third"):
                self.products.per_control(name, n)

    @property
    def nyquist(self) -> float:
        return self.nyquist_fraction * self.sample_rate / 2

    @property
    def top(self) -> float:
        return min(self.bandwidth, self.nyquist)

    def lowest(self, window: float) -> int:
        return max(1, math.ceil((self.f_min or 0.0) * window * (1 - _REL)))

    def highest(self, window: float) -> int:
        hi = math.floor(self.top * window * (1 + _REL))
        while hi >= self.lowest(window) and _above(hi / window, self.top):
            hi -= 1
        return hi

    def allowed(self, bins: IntArray, window: float, *, in_band: bool = True) -> BoolArray:
        """Bins whose tone and kept harmonics are clear of mains (and, in band, below fs/2)."""
        keep: BoolArray = np.ones(bins.shape, dtype=bool)
        for h in (1, *self.harmonics):
            f = h * bins / window
            keep &= ~near_mains(
                f,
                window=window,
                mains=self.mains,
                harmonics=self.mains_harmonics,
                guard=self.mains_guard,
            )
            if in_band and h > 1:
                keep &= _harmonic_in_band(f, self.sample_rate)
        return keep

    def vectors(self, window: float) -> Callable[[int], SmallArray]:
        """n → the combinations that count over the first n tones, at this window."""
        return lambda n: counted_vectors(n, self.order, self.products, window)

    def accept(self, window: float) -> Callable[[list[int]], bool] | None:
        """The check each partial plan must pass: its harmonic bins free (None: no harmonics)."""
        if not self.harmonics:
            return None
        vectors = self.vectors(window)
        return lambda plan: _harmonics_clear(plan, self.harmonics, vectors(len(plan)))


def _name(vector: SmallArray) -> str:
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
    products: ProductSizes | None = None,
) -> list[Collision]:
    """Every problem with a tone plan; an empty list means the plan is sound.

    Checks, per tone: within 1/T of DC, f·T not an integer, above `bandwidth` or above
    `nyquist_fraction`·fs/2, within max(1/T, `mains_guard`) of a mains harmonic (up to
    `mains_harmonics`; mains None or 0 skips this), within 1/T of another tone, and within 1/T of
    any product Σ n_j f_j with 2 ≤ Σ|n_j| ≤ `order` (harmonics and intermodulation).
    For every h in `harmonics` also the bin h·f_k: not below fs/2, near mains, or within 1/T of a
    tone or of a product of order ≤ `order` other than h·f_k itself. With `products` only the
    products it finds significant at this window count (tone k has amplitude A_k).
    """
    rules = _Rules(
        sample_rate,
        bandwidth,
        mains,
        mains_harmonics,
        mains_guard,
        order,
        nyquist_fraction,
        None,
        tuple(harmonics),
        products,
    )
    f = np.asarray(frequencies, dtype=float)
    if f.ndim != 1:
        raise ValueError(f"frequencies: expected a flat sequence, got shape {f.shape}")
    rules.check(f.size, window)
    kept = rules.harmonics
    resolution = 1.0 / window
    reach = resolution * (1 - _REL)
    nyquist = nyquist_fraction * sample_rate / 2
    found: list[Collision] = []
    every = (
        counted_vectors(f.size, order, products, window) if f.size else np.zeros((0, 0), np.int8)
    )
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


def _forbidden(tones: Sequence[int], vectors: SmallArray, top: int) -> BoolArray | None:
    """Per grid bin 0…top: a new tone there collides with `tones` or their products (None: all).

    With every tone on the 1/T grid, products are on it too, so 'within 1/T' means 'equal'.
    The new tone is the last coordinate c of each combination (`vectors`, over len(tones) + 1
    tones); q·tones = A is the rest.
    """
    s = len(tones)
    old = np.asarray(tones, dtype=np.int64)
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
    mask: BoolArray = np.zeros(top + 1, dtype=bool)
    for part in parts:
        mask[part[(part > 0) & (part <= top)]] = True
    return mask


def _harmonics_clear(tones: Sequence[int], harmonics: tuple[int, ...], vectors: SmallArray) -> bool:
    """No tone or counted product (`vectors`) on h·t (other than h·t itself), on the 1/T grid."""
    bins = np.asarray(tones, dtype=np.int64)
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
    vectors: Callable[[int], SmallArray],
    accept: Callable[[list[int]], bool] | None = None,
) -> tuple[list[int], list[int], bool]:
    """Depth-first from low bins (the first path is the greedy one): (plan, best partial, done).

    `accept` (if given) must hold for every partial plan; it is checked on each extension.
    """
    best: list[int] = []
    tries = 0
    top = int(allowed.max(initial=0))

    def extend(tones: list[int]) -> list[int] | None:
        nonlocal best, tries
        if len(tones) > len(best):
            best = list(tones)
        if len(tones) == n:
            return tones
        forbidden = _forbidden(tones, vectors(len(tones) + 1), top)
        if forbidden is None:
            return None
        start = tones[-1] + 1 if tones else 0
        candidates = allowed[allowed >= start]
        candidates = candidates[~forbidden[candidates]]
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


@lru_cache(maxsize=1024)
def _solve(n: int, window: float, rules: _Rules) -> tuple[float, ...] | str:
    """The plan, or why there is none (failures are cached too: a failed search is slow)."""
    lo, hi = rules.lowest(window), rules.highest(window)
    bins = np.arange(lo, max(hi, lo - 1) + 1, dtype=np.int64)
    allowed = bins[rules.allowed(bins, window)]
    plan, best, complete = _search(n, allowed, rules.vectors(window), rules.accept(window))
    if len(plan) == n:
        return tuple(m / window for m in plan)
    raise_limit = (
        f"a higher bandwidth (the limit is {rules.bandwidth:g} Hz)"
        if rules.bandwidth <= rules.nyquist
        else f"a higher sample rate or nyquist_fraction (the limit is {rules.nyquist:g} Hz)"
    )
    how = "no" if complete else f"the search stopped after {_SEARCH_BUDGET} tries without a"
    kept = rules.harmonics
    return (
        f"{how} collision-free set of {n} tones between {lo / window:g} and {rules.top:g} Hz "
        f"on the 1/T = {1 / window:g} Hz grid (order {rules.order}"
        + (f", harmonics {list(kept)} kept free" if kept else "")
        + (", significant products only" if rules.products else "")
        + "); "
        + (
            f"only {allowed.size} grid frequencies clear of mains. "
            if allowed.size < n
            else f"the best partial plan: {[m / window for m in best]} Hz. "
        )
        + f"Use a longer window, {raise_limit}"
        + (", a lower f_min" if rules.f_min else "")
        + " or fewer controls"
    )


def tone_plan(
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
    products: ProductSizes | None = None,
) -> tuple[float, ...]:
    """`plan_tones`' plan, cached: the same arguments return the same tuple without a search."""
    rules = _Rules(
        sample_rate,
        bandwidth,
        mains,
        mains_harmonics,
        mains_guard,
        order,
        nyquist_fraction,
        f_min,
        tuple(harmonics),
        products,
    )
    rules.check(n, window)
    plan = _solve(n, window, rules)
    if isinstance(plan, str):
        raise ValueError(plan)
    return plan


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
    products: ProductSizes | None = None,
) -> list[float]:
    """n coherent tones (multiples of 1/T, ascending) that `check_plan` finds no fault with.

    Searches the 1/T grid from max(`f_min`, 1/T) up to min(bandwidth, nyquist_fraction·fs/2),
    lowest tones first; raises ValueError, saying what to change, if no plan is found. With
    `harmonics` the bins h·f_i are kept free too; with `products` only significant products
    are avoided (see `check_plan`). Cached (`tone_plan`): a repeated call does not search.
    """
    return list(
        tone_plan(
            n,
            window=window,
            sample_rate=sample_rate,
            bandwidth=bandwidth,
            mains=mains,
            mains_harmonics=mains_harmonics,
            mains_guard=mains_guard,
            order=order,
            nyquist_fraction=nyquist_fraction,
            f_min=f_min,
            harmonics=harmonics,
            products=products,
        )
    )


def _greedy(n: int, window: float, rules: _Rules, limit: int) -> list[int] | None:
    """The search's first (greedy) path on the 1/T grid up to bin `limit`, past the band."""
    lo = rules.lowest(window)
    bins = np.arange(lo, limit + 1, dtype=np.int64)
    free = np.zeros(limit + 1, dtype=bool)
    free[bins[rules.allowed(bins, window, in_band=False)]] = True
    vectors, accept = rules.vectors(window), rules.accept(window)
    tones: list[int] = []
    while len(tones) < n:
        forbidden = _forbidden(tones, vectors(len(tones) + 1), limit)
        if forbidden is None:
            return None
        ok = free & ~forbidden
        ok[: tones[-1] + 1 if tones else 0] = False
        for m in np.flatnonzero(ok).tolist():
            if accept is None or accept([*tones, m]):
                tones.append(m)
                break
        else:
            return None
    return tones


@lru_cache(maxsize=256)
def _shortest(n: int, rules: _Rules, longest: float) -> float | str:
    """Window m/top (in whole samples) for the smallest m whose greedy plan fits below m.

    Jumps m to the greedy plan's top bin until it fits (mains, f_min and the noise bar move
    with T), bisects back down between the last miss and the fit, then confirms the window
    with the planner itself (stepping on by one bin if, e.g., a kept harmonic is out of band).
    """
    rate, top = rules.sample_rate, rules.top
    limit = math.floor(top * longest * (1 + _REL))

    def window(m: int) -> float:
        return math.ceil(m / top * rate * (1 - _REL)) / rate

    def top_bin(m: int) -> int | None:
        plan = _greedy(n, window(m), rules, limit)
        return None if plan is None else max(plan, default=0)

    low, m = 0, max(n, 1)
    while (reached := top_bin(m)) is not None and reached > rules.highest(window(m)):
        low, m = m, max(reached, m + 1)
    while reached is not None and m - low > 1:
        mid = (low + m) // 2
        if (at := top_bin(mid)) is not None and at <= rules.highest(window(mid)):
            m = mid
        else:
            low = mid
    for step in range(m, m + 8) if reached is not None else ():
        if not _above(window(step), longest) and isinstance(_solve(n, window(step), rules), tuple):
            return window(step)
    return (
        f"no window up to {longest:g} s fits {n} tones below {top:g} Hz (order {rules.order}"
        + (", significant products only" if rules.products else "")
        + "); use fewer controls, a higher bandwidth or a longer `longest`"
    )


def shortest_window(
    n: int,
    *,
    sample_rate: float,
    bandwidth: float,
    mains: float | None = 50.0,
    mains_harmonics: int = 20,
    mains_guard: float = 0.5,
    order: int = 3,
    nyquist_fraction: float = 0.25,
    f_min: float | None = None,
    harmonics: Sequence[int] = (),
    products: ProductSizes | None = None,
    longest: float = 600.0,
) -> float:
    """The shortest window (whole samples) whose greedy plan `tone_plan` finds, cached.

    For choosing between parallel, grouped and sequential modes: the window is about the plan's
    top bin / min(bandwidth, nyquist_fraction·fs/2), and the top bin grows ~d^2.5 when every
    product counts but ~d when `products` finds them negligible. ValueError beyond `longest`.
    """
    rules = _Rules(
        sample_rate,
        bandwidth,
        mains,
        mains_harmonics,
        mains_guard,
        order,
        nyquist_fraction,
        f_min,
        tuple(harmonics),
        products,
    )
    rules.check(n, longest)
    window = _shortest(n, rules, longest)
    if isinstance(window, str):
        raise ValueError(window)
    return window


def clear_caches() -> None:
    """Forget every cached plan, window and product table (for timing a cold planner)."""
    tone_windows.clear_caches()
    for cached in (_solve, _shortest):
        cached.cache_clear()
