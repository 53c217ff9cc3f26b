"""Which harmonic and intermodulation products a tone plan must avoid, at a given window.

A product Σ n_j f_j of order N = Σ|n_j| ≤ `order` can land on a tone and bias its demodulated
gradient. The planner in `tones` either avoids every one (`product_vectors`) or, with a
`ProductSizes` rule, only those predicted to stand out of the noise in a bin; the bar √(S/T)
falls with the window T, so which products count depends on the window (`counted_vectors`).
Kept apart from the planner so the product rule can be read, tested and tuned on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, product

import numpy as np
from numpy.typing import ArrayLike, NDArray

SmallArray = NDArray[np.int8]  # combinations n_j: |n_j| <= order, stored small
BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ProductSizes:
    """Predicted product amplitudes at the output, and the bar a product must clear to count.

    A product Σ n_j f_j of order N = Σ|n_j| enters through the N-th Taylor term with amplitude
        a = D_N · Π A_j^|n_j| / (Π |n_j|! · 2^(N−1))
    e.g. f_i ± f_j: D₂A_iA_j/2, 2f_i: D₂A_i²/4, 3f_i: D₃A_i³/24, 2f_i ± f_j: D₃A_i²A_j/8,
    f_i ± f_j ± f_k: D₃A_iA_jA_k/4 (leading order in A). D_N bounds the N-th partial derivatives
    involved: `second[i]` ≥ |∂²y/∂θ_i∂θ_j| and `third[i]` ≥ |∂³y/∂θ_i∂θ_j∂θ_k| for every j, k,
    so a mixed product takes the smallest bound of its controls (one value: every control).
    Demodulated over T, a bin's noise is √(S/T), S the one-sided output noise density (take its
    lowest value in the band). A product is significant when a > `fraction`·√(S/T); only those
    must keep off the tones. Products above 3rd order have no bound here and always count.
    `amplitudes` A_i are indexed like the plan's tones (one value: every tone).
    """

    amplitudes: float | tuple[float, ...]
    noise_density: float
    second: float | tuple[float, ...]
    third: float | tuple[float, ...]
    fraction: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        for name in ("amplitudes", "second", "third"):
            raw = getattr(self, name)
            values = tuple(float(v) for v in np.atleast_1d(np.asarray(raw, dtype=float)))
            if not values or not all(math.isfinite(v) and v >= 0 for v in values):
                problems.append(f"{name} must be finite and >= 0, got {raw}")
            else:  # sequences become tuples, so the rule is hashable (a cache key)
                object.__setattr__(self, name, values if np.ndim(raw) else values[0])
        if not (math.isfinite(self.noise_density) and self.noise_density >= 0):
            problems.append(f"noise_density must be finite and >= 0, got {self.noise_density}")
        if not self.fraction > 0:
            problems.append(f"fraction must be > 0, got {self.fraction}")
        if problems:
            raise ValueError("ProductSizes: " + "; ".join(problems))

    def per_control(self, name: str, n: int) -> FloatArray:
        """`amplitudes`, `second` or `third` for the first n tones (one value repeated)."""
        values = np.atleast_1d(np.asarray(getattr(self, name), dtype=float))
        if values.size == 1:
            return np.full(n, values[0])
        if values.size < n:
            raise ValueError(f"ProductSizes.{name}: {values.size} values for {n} tones")
        return values[:n]

    def amplitude(self, vectors: ArrayLike) -> FloatArray:
        """Predicted amplitude of each product (rows n_j over the first tones); inf where there
        is no bound (a tone itself, or above 3rd order)."""
        v = np.abs(np.atleast_2d(np.asarray(vectors, dtype=np.int64)))
        order = v.sum(axis=1)
        factorial = np.cumprod(np.r_[1, np.arange(1, max(int(v.max(initial=0)), 1) + 1)])
        terms = self.per_control("amplitudes", v.shape[1]) ** v / factorial[v]
        size = np.prod(terms, axis=1) / 2.0 ** (order - 1)
        out = np.full(v.shape[0], np.inf)
        for n_th, name in ((2, "second"), (3, "third")):
            bound = np.where(v > 0, self.per_control(name, v.shape[1]), np.inf).min(axis=1)
            out = np.where(order == n_th, bound * size, out)
        return out

    def significant(self, vectors: ArrayLike, window: float) -> BoolArray:
        """Per product: predicted amplitude above `fraction`·√(S/T), or without a bound."""
        bar = self.fraction * math.sqrt(self.noise_density / window)
        above: BoolArray = ~(self.amplitude(vectors) <= bar)
        return above


@lru_cache(maxsize=64)
def product_vectors(n: int, order: int) -> SmallArray:
    """Integer combinations n_j with 1 ≤ Σ|n_j| ≤ order, one of each ± pair (first entry > 0)."""
    blocks = [np.zeros((0, n), dtype=np.int8)]
    for size in range(1, min(order, n) + 1):
        patterns = [  # the entries on a support: magnitudes, signs after the first
            [m * s for m, s in zip(mags, (1, *signs), strict=True)]
            for mags in product(range(1, order - size + 2), repeat=size)
            if sum(mags) <= order
            for signs in product((1, -1), repeat=size - 1)
        ]
        supports = np.array(list(combinations(range(n), size)), dtype=np.int64)
        rows = np.zeros((len(supports), len(patterns), n), dtype=np.int8)
        for p, pattern in enumerate(patterns):
            rows[np.arange(len(supports))[:, None], p, supports] = pattern
        blocks.append(rows.reshape(-1, n))  # support by support, as combinations lists them
    out: SmallArray = np.concatenate(blocks)
    return out


def counted_vectors(n: int, order: int, products: ProductSizes | None, window: float) -> SmallArray:
    """The combinations that count: all, or the tones and the significant products."""
    return (
        product_vectors(n, order) if products is None else _significant(n, order, products, window)
    )


@lru_cache(maxsize=256)
def _significant(n: int, order: int, products: ProductSizes, window: float) -> SmallArray:
    """The tones and the products above the bar; skips enumerating when none can be, and
    shares the full table when all are."""
    bar = products.fraction * math.sqrt(products.noise_density / window)
    amps = products.per_control("amplitudes", n)
    high, low = [], []  # per order 2, 3 counted: the largest and smallest possible amplitude
    for k, name in ((2, "second"), (3, "third"))[: order - 1]:
        d = products.per_control(name, n)
        high.append(d.max(initial=0) * amps.max(initial=0) ** k / 2 ** (k - 1))
        low.append(d.min(initial=math.inf) * amps.min(initial=math.inf) ** k / 2 ** (k - 1))
        low[-1] /= math.factorial(k)  # Π|n_j|! ≤ N!
    if order <= 3 and max(high, default=0.0) <= bar:
        return np.eye(n, dtype=np.int8)  # every product is below the bar: only distinct tones
    every = product_vectors(n, order)
    if min(low, default=math.inf) > bar:
        return every  # every product is above the bar
    keep = _amplitudes(n, order, products) > bar
    return every if keep.all() else every[keep]


@lru_cache(maxsize=256)
def _amplitudes(n: int, order: int, products: ProductSizes) -> FloatArray:
    """`ProductSizes.amplitude` of every combination of `product_vectors` (inf for the tones)."""
    return products.amplitude(product_vectors(n, order))


def clear_caches() -> None:
    """Forget every cached product table (for timing a cold planner)."""
    for cached in (product_vectors, _significant, _amplitudes):
        cached.cache_clear()
