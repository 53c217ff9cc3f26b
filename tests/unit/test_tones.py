"""Tone planning for homodyne gradient extraction: collisions are named, plans have none."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from protocols.tone_windows import ProductSizes
from protocols.tones import (
    Collision,
    check_plan,
    clear_caches,
    near_mains,
    plan_tones,
    shortest_window,
    tone_plan,
)

FS, BW = 1000.0, 100.0  # the rig: 1 kHz sampling, 100 Hz device bandwidth


def products(collisions: list[Collision]) -> set[tuple[int, str]]:
    return {(c.index, c.product) for c in collisions}


def test_published_dnpu_set_8_to_40_hz_collides() -> None:
    """SkyNEt Boolean GD: 8·[1..5] Hz at 1 kHz, 0.125 s per input case."""
    found = check_plan([8, 16, 24, 32, 40], window=0.125, sample_rate=FS, bandwidth=BW)
    assert {
        (1, "2·f0"),
        (2, "f0+f1"),
        (2, "3·f0"),
        (3, "2·f1"),
        (3, "f0+f2"),
        (4, "f1+f2"),
        (4, "f0+f3"),
        (0, "f1−f0"),
        (2, "2·f1−f0"),
    } <= products(found)
    assert all(c.distance == pytest.approx(0, abs=1e-9) for c in found)
    assert {c.index for c in found} == {0, 1, 2, 3, 4}


def test_published_gradient_accuracy_set_1_to_7_hz_collides() -> None:
    found = check_plan([1, 2, 3, 4, 5, 6, 7], window=1.0, sample_rate=FS, bandwidth=BW)
    assert {
        (1, "2·f0"),
        (2, "f0+f1"),
        (2, "3·f0"),
        (4, "f0+f3"),
        (6, "f2+f3"),
        (6, "2·f1+f2"),
        (0, "f1−f0"),
        (4, "2·f2−f0"),
    } <= products(found)


def test_published_multiwave_set_collides() -> None:
    """5·[23, 19, 13, 9, 3, 5, 2] Hz: 10 + 15 = 25 and 2·10 + 25 = 45."""
    found = check_plan(
        [115, 95, 65, 45, 15, 25, 10], window=1.0, sample_rate=2000.0, bandwidth=200.0
    )
    assert {(5, "f4+f6"), (3, "f5+2·f6"), (3, "3·f4")} <= products(found)


def test_a_hand_made_plan_passes() -> None:
    # 2·10 = 20, 10 + 23 = 33, 23 − 10 = 13, 2·23 − 10 = 36, 23 − 2·10 = 3, ... : none on a tone
    assert check_plan([10, 23], window=1.0, sample_rate=FS, bandwidth=BW) == []
    assert check_plan([11, 17, 37], window=1.0, sample_rate=FS, bandwidth=BW) == []
    # one tone off and a third-order product lands: 11 + 2·13 = 37
    assert (2, "f0+2·f1") in products(
        check_plan([11, 13, 37], window=1.0, sample_rate=FS, bandwidth=BW)
    )
    assert check_plan([11, 13, 37], window=1.0, order=2, sample_rate=FS, bandwidth=BW) == []


def test_a_near_miss_within_one_bin_collides() -> None:
    # 2·10.5 = 21 is 0.5 Hz from 21.5; with T = 2 s the tones are coherent but 1/T = 0.5 Hz ...
    assert check_plan([10.5, 21.5], window=2.0, sample_rate=FS, bandwidth=BW) == []
    # ... and with T = 4 s (1/T = 0.25 Hz) 2·10.5 = 21 is 0.25 Hz from 21.25: on a sinc null
    assert check_plan([10.5, 21.25], window=4.0, sample_rate=FS, bandwidth=BW) == []
    # within 1/T of a product counts, not only exact hits
    found = check_plan([10.5, 21.25], window=2.0, sample_rate=FS, bandwidth=BW)
    assert (1, "2·f0") in products(found)
    (hit,) = [c for c in found if c.product == "2·f0"]
    assert hit.distance == pytest.approx(0.25)


def test_mains_harmonics_are_caught() -> None:
    found = check_plan([11, 150], window=1.0, sample_rate=2000.0, bandwidth=200.0)
    assert products(found) == {(1, "mains 150 Hz")}
    found = check_plan([11, 180], window=1.0, sample_rate=2000.0, bandwidth=200.0, mains=60.0)
    assert products(found) == {(1, "mains 180 Hz")}
    # a long window still keeps the guard band around each harmonic
    assert (0, "mains 150 Hz") in products(
        check_plan([150.3], window=10.0, sample_rate=2000.0, bandwidth=200.0)
    )
    assert check_plan([151], window=10.0, sample_rate=2000.0, bandwidth=200.0) == []
    assert check_plan([150], window=1.0, sample_rate=2000.0, bandwidth=200.0, mains=None) == []


def test_near_mains_is_the_rule_the_check_uses() -> None:
    # reach max(1/T, guard): 1 Hz at T = 1 s, the 0.5 Hz guard at T = 10 s; exclusive
    f = np.array([49.01, 49.0, 150.4, 150.5, 1000.0, 1050.0])
    np.testing.assert_array_equal(near_mains(f, window=1.0), [True, False, True, True, True, False])
    np.testing.assert_array_equal(
        near_mains(f, window=10.0), [False, False, True, False, True, False]
    )
    # 1050 Hz is the 21st harmonic: beyond the default 20
    assert near_mains(1050.0, window=1.0, harmonics=21)
    assert not near_mains(f, window=1.0, mains=None).any()
    for fk, window in ((49.01, 1.0), (150.4, 10.0), (150.5, 10.0)):
        flagged = any(
            "mains" in c.product
            for c in check_plan([fk], window=window, sample_rate=4000.0, bandwidth=2000.0)
        )
        assert flagged == bool(near_mains(fk, window=window))


def test_harmonic_bins_are_checked() -> None:
    # 3·10 = 30 = 13 + 17: the third harmonic of f0 meets a product of the other tones
    found = check_plan([10, 13, 17], window=1.0, sample_rate=FS, bandwidth=BW, harmonics=(3,))
    assert (0, "3·f0 = 30 Hz meets f1+f2") in products(found)
    # without harmonics the plan is sound
    assert check_plan([10, 13, 17], window=1.0, sample_rate=FS, bandwidth=BW) == []
    # 2·11 = 22 is another tone; with 37 no tone or product up to third order is 22
    assert check_plan([11, 37], window=1.0, sample_rate=FS, bandwidth=BW, harmonics=(2,)) == []
    found = check_plan([11, 22], window=1.0, sample_rate=FS, bandwidth=BW, harmonics=(2,))
    assert (0, "2·f0 = 22 Hz meets f1") in products(found)
    # harmonics must lie below Nyquist and away from mains
    found = check_plan([90], window=1.0, sample_rate=500.0, bandwidth=BW, harmonics=(3,))
    assert (0, "3·f0 = 270 Hz not below fs/2 = 250 Hz") in products(found)
    found = check_plan([16.8], window=10.0, sample_rate=FS, bandwidth=BW, harmonics=(3,))
    assert (0, "3·f0 = 50.4 Hz near mains 50 Hz") in products(found)
    with pytest.raises(ValueError, match="harmonics"):
        check_plan([10], window=1.0, sample_rate=FS, bandwidth=BW, harmonics=(1,))


def test_a_plan_can_keep_third_harmonics_free() -> None:
    plain = plan_tones(5, window=0.5, sample_rate=FS, bandwidth=BW)
    # the default plan has 3·f0 = 6 Hz = f1 − f0
    assert check_plan(plain, window=0.5, sample_rate=FS, bandwidth=BW, harmonics=(3,))
    free = plan_tones(5, window=0.5, sample_rate=FS, bandwidth=BW, harmonics=(3,))
    assert check_plan(free, window=0.5, sample_rate=FS, bandwidth=BW, harmonics=(3,)) == []
    both = plan_tones(4, window=0.5, sample_rate=FS, bandwidth=BW, harmonics=(2, 3))
    assert check_plan(both, window=0.5, sample_rate=FS, bandwidth=BW, harmonics=(2, 3)) == []
    with pytest.raises(ValueError, match="harmonics"):
        plan_tones(7, window=0.2, sample_rate=FS, bandwidth=BW, harmonics=(3,))


def test_incoherent_tones_are_caught() -> None:
    found = check_plan([12.5, 31], window=1.0, sample_rate=FS, bandwidth=BW)
    assert products(found) == {(0, "not coherent: f·T = 12.5")}
    assert found[0].distance == pytest.approx(0.5)
    assert check_plan([12.5, 31], window=2.0, sample_rate=FS, bandwidth=BW) == []


def test_bandwidth_and_nyquist_limits_are_caught() -> None:
    found = check_plan([11, 120], window=1.0, sample_rate=1000.0, bandwidth=100.0)
    assert products(found) == {(1, "above bandwidth 100 Hz")}
    assert found[0].distance == pytest.approx(20)
    # 0.25·fs/2 = 50 Hz at fs = 400 Hz
    found = check_plan([11, 62], window=1.0, sample_rate=400.0, bandwidth=100.0)
    assert products(found) == {(1, "above 0.25·fs/2 = 50 Hz")}
    found = check_plan(
        [11, 62], window=1.0, sample_rate=400.0, bandwidth=100.0, nyquist_fraction=0.5
    )
    assert found == []


def test_dc_and_duplicates_are_caught() -> None:
    found = products(check_plan([0.5, 11, 11], window=2.0, sample_rate=FS, bandwidth=BW))
    assert (0, "DC: within 1/T = 0.5 Hz of 0 Hz") not in found  # one cycle in T is fine
    found = products(check_plan([0.0, 11, 11], window=2.0, sample_rate=FS, bandwidth=BW))
    assert {(0, "DC: within 1/T = 0.5 Hz of 0 Hz"), (1, "duplicate of f2")} <= found
    assert (2, "duplicate of f1") in found


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="window"):
        check_plan([10], window=0.0, sample_rate=FS, bandwidth=BW)
    with pytest.raises(ValueError, match="nyquist_fraction"):
        plan_tones(2, window=1.0, nyquist_fraction=1.5, sample_rate=FS, bandwidth=BW)


def test_plan_for_seven_controls() -> None:
    plan = plan_tones(7, window=1.0, sample_rate=FS, bandwidth=BW)
    assert len(plan) == 7
    assert plan == sorted(plan)
    assert max(plan) <= 100
    assert check_plan(plan, window=1.0, sample_rate=FS, bandwidth=BW) == []
    # mains 50 Hz and 100 Hz are avoided, and f_min moves the plan up
    high = plan_tones(7, window=1.0, f_min=20.0, sample_rate=FS, bandwidth=BW)
    assert min(high) >= 20
    assert check_plan(high, window=1.0, sample_rate=FS, bandwidth=BW) == []


def test_impossible_plan_says_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"longer window.*bandwidth.*fewer controls"):
        plan_tones(7, window=0.1, sample_rate=FS, bandwidth=BW)
    with pytest.raises(ValueError, match="higher sample rate"):
        plan_tones(7, window=0.1, sample_rate=400.0, bandwidth=100.0)


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 7),
    window=st.one_of(st.sampled_from([0.1, 0.125, 0.3, 0.5, 1.0, 2.0]), st.floats(0.1, 2.0)),
    sample_rate=st.sampled_from([200.0, 500.0, 1000.0, 2000.0, 10000.0]),
    bandwidth=st.floats(5.0, 500.0),
    order=st.integers(1, 3),
    mains=st.sampled_from([50.0, 60.0, None]),
    harmonics=st.sampled_from([(), (), (3,), (2, 3)]),
    products=st.sampled_from(
        [None, None, ProductSizes(0.01, 1e-4, 1.0, 10.0), ProductSizes(0.2, 1e-4, 1.0, 10.0)]
    ),
)
def test_every_plan_passes_the_check(
    n: int,
    window: float,
    sample_rate: float,
    bandwidth: float,
    order: int,
    mains: float | None,
    harmonics: tuple[int, ...],
    products: ProductSizes | None,
) -> None:
    failure = ""
    try:
        plan = plan_tones(
            n,
            window=window,
            sample_rate=sample_rate,
            bandwidth=bandwidth,
            order=order,
            mains=mains,
            harmonics=harmonics,
            products=products,
        )
    except ValueError as error:
        failure, plan = str(error), []
    if failure:
        assert "fewer controls" in failure
        return
    assert len(plan) == n
    assert (
        check_plan(
            plan,
            window=window,
            sample_rate=sample_rate,
            bandwidth=bandwidth,
            order=order,
            mains=mains,
            harmonics=harmonics,
            products=products,
        )
        == []
    )


# -- order-aware plans: only products above a fraction of the noise count ---------------------
FloatArray = NDArray[np.float64]
DNPU_FS, DNPU_BW = 10_000.0, 125.0  # the DNPU rig


@pytest.mark.parametrize(
    ("device", "derivative", "order", "vector"),
    [
        (lambda t: t[0] * t[1], 1.0, 2, (1, 1, 0)),  # f0 + f1: D₂A₀A₁/2
        (lambda t: t[0] * t[1], 1.0, 2, (1, -1, 0)),  # f1 − f0
        (lambda t: t[0] ** 2, 2.0, 2, (2, 0, 0)),  # 2f0: D₂A₀²/4
        (lambda t: t[0] ** 3, 6.0, 3, (3, 0, 0)),  # 3f0: D₃A₀³/24
        (lambda t: t[0] ** 2 * t[1], 2.0, 3, (2, 1, 0)),  # 2f0 + f1: D₃A₀²A₁/8
        (lambda t: t[0] ** 2 * t[1], 2.0, 3, (2, -1, 0)),  # 2f0 − f1
        (lambda t: t[0] * t[1] * t[2], 1.0, 3, (1, 1, 1)),  # f0 + f1 + f2: D₃A₀A₁A₂/4
        (lambda t: t[0] * t[1] * t[2], 1.0, 3, (1, 1, -1)),  # f0 + f1 − f2
    ],
)
def test_predicted_product_amplitudes_match_a_dithered_polynomial(
    device: Callable[[list[FloatArray]], FloatArray],
    derivative: float,
    order: int,
    vector: tuple[int, int, int],
) -> None:
    """The documented formula against the spectrum of a device whose Taylor series ends at N."""
    fs, window, bins, amplitudes = 1000.0, 1.0, np.array([7, 11, 19]), (0.3, 0.5, 0.7)
    t = np.arange(int(fs * window)) / fs
    theta = [a * np.sin(2 * np.pi * b / window * t) for a, b in zip(amplitudes, bins, strict=True)]
    y = device(theta)
    spectrum = 2 * np.abs(np.fft.rfft(y)) / t.size
    measured = spectrum[abs(int(np.dot(vector, bins)))]
    sizes = ProductSizes(
        amplitudes=amplitudes,
        noise_density=0.0,
        second=derivative if order == 2 else 0.0,
        third=derivative if order == 3 else 0.0,
    )
    assert sizes.amplitude([vector])[0] == pytest.approx(measured, rel=1e-9)


def significant_products(
    tones: list[float], window: float, sizes: ProductSizes, order: int = 3
) -> list[tuple[tuple[int, ...], int]]:
    """Brute force: every n (2 ≤ Σ|n_j| ≤ order) within 1/T of a tone whose amplitude, from
    the formula written out here, exceeds fraction·√(S/T): (n, the tone it hits)."""
    d = len(tones)
    a = np.broadcast_to(np.asarray(sizes.amplitudes, dtype=float), (d,))
    d2 = np.broadcast_to(np.asarray(sizes.second, dtype=float), (d,))
    d3 = np.broadcast_to(np.asarray(sizes.third, dtype=float), (d,))
    bar = sizes.fraction * math.sqrt(sizes.noise_density / window)
    hits = []
    for n in product(range(-order, order + 1), repeat=d):
        m = [abs(x) for x in n]
        big_n = sum(m)
        if not 2 <= big_n <= order:
            continue
        support = [j for j in range(d) if m[j]]
        bound = min((d2 if big_n == 2 else d3)[j] for j in support)
        size = bound / 2 ** (big_n - 1)
        for j in support:
            size *= a[j] ** m[j] / math.factorial(m[j])
        if size <= bar:
            continue
        value = abs(sum(x * f for x, f in zip(n, tones, strict=True)))
        hits += [(n, k) for k, f in enumerate(tones) if abs(value - f) < (1 - 1e-9) / window]
    return hits


SIZES = {  # at T ≈ 0.2 s the bar is 0.1·√(S/T) ≈ 2e-3
    "second order only": ProductSizes(0.05, 1e-4, second=2.0, third=1.0),
    "large tones 0 and 3": ProductSizes(
        (0.2, 0.005, 0.005, 0.2, 0.005, 0.005), 1e-4, (1.0, 2.0, 0.5, 1.0, 2.0, 0.5), 30.0
    ),
    "strong third": ProductSizes(0.02, 1e-5, second=0.1, third=1e4, fraction=0.5),
}


@pytest.mark.parametrize("name", list(SIZES))
def test_significant_plans_avoid_every_product_above_the_bar(name: str) -> None:
    sizes, d = SIZES[name], 6
    window = shortest_window(d, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
    plan = plan_tones(d, window=window, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
    assert significant_products(plan, window, sizes) == []
    assert (
        check_plan(plan, window=window, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
        == []
    )
    bins = np.round(np.asarray(plan) * window)
    assert np.unique(bins).size == d  # distinct tones ...
    assert not near_mains(plan, window=window).any()  # ... off mains
    # the rule relaxed something: products below the bar sit on tones, so the plan is shorter
    assert check_plan(plan, window=window, sample_rate=DNPU_FS, bandwidth=DNPU_BW)
    assert window < shortest_window(d, sample_rate=DNPU_FS, bandwidth=DNPU_BW)


def test_products_all_above_the_bar_give_the_default_plan() -> None:
    loud = ProductSizes(0.1, 1e-6, second=100.0, third=1000.0)
    for d in (3, 7):
        assert plan_tones(d, window=2.0, sample_rate=FS, bandwidth=BW, products=loud) == (
            plan_tones(d, window=2.0, sample_rate=FS, bandwidth=BW)
        )


def test_the_bar_scales_with_the_noise_in_a_bin() -> None:
    """A product of size a counts when a > fraction·√(S/T): just above and just below."""
    a = 0.3 * 0.5 / 2  # f0 + f1 with D₂ = 1
    for window in (0.1, 1.0):
        at = (a / 0.1) ** 2 * window  # S where the bar equals a
        below = ProductSizes((0.3, 0.5), at * 1.01, second=1.0, third=0.0)
        above = ProductSizes((0.3, 0.5), at * 0.99, second=1.0, third=0.0)
        assert not below.significant([(1, 1)], window)[0]
        assert above.significant([(1, 1)], window)[0]
    # a tone itself and products above 3rd order have no bound: they always count
    sizes = ProductSizes(1e-6, 1.0, second=0.0, third=0.0)
    assert sizes.significant([(1, 0), (4, 0), (2, 2)], 1.0).tolist() == [True, True, True]
    assert check_plan([10, 20], window=1.0, sample_rate=FS, bandwidth=BW, products=sizes) == []
    assert check_plan([10, 40], window=1.0, sample_rate=FS, bandwidth=BW, order=4, products=sizes)


def test_negligible_products_scale_linearly_with_d() -> None:
    """Small amplitude and curvature: only distinct tones off mains, highest bin ≤ 1.2·d + 4."""
    tiny = ProductSizes(0.001, 1e-4, second=400.0, third=4000.0)  # the DNPU at 1 mV
    for d in (5, 10, 20, 50):
        window = shortest_window(d, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=tiny)
        plan = tone_plan(d, window=window, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=tiny)
        top = round(max(plan) * window)
        assert d <= top <= 1.2 * d + 4
        assert window <= (1.2 * d + 4) / DNPU_BW + 1e-9
        assert (
            check_plan(plan, window=window, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=tiny)
            == []
        )
    # default behaviour is unchanged: every product counts, a Sidon-type plan
    assert (
        round(max(plan_tones(10, window=1.328, sample_rate=DNPU_FS, bandwidth=DNPU_BW)) * 1.328)
        == 139
    )


def test_plans_and_windows_are_cached() -> None:
    clear_caches()
    sizes = ProductSizes(0.005, 1e-4, second=400.0, third=4000.0)
    first = tone_plan(8, window=0.5, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
    assert tone_plan(8, window=0.5, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes) is first
    # equal arguments spelled differently share the entry; the list is a fresh copy
    same = ProductSizes(0.005, 1e-4, second=400, third=4000)
    assert tone_plan(8, window=0.5, sample_rate=10_000, bandwidth=125, products=same) is first
    listed = plan_tones(8, window=0.5, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
    assert listed == list(first)
    assert listed is not plan_tones(
        8, window=0.5, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes
    )
    window = shortest_window(20, sample_rate=DNPU_FS, bandwidth=DNPU_BW)
    assert shortest_window(20, sample_rate=DNPU_FS, bandwidth=DNPU_BW) == window
    # failures are cached too, and still raise
    for _ in range(2):
        with pytest.raises(ValueError, match="fewer controls"):
            tone_plan(20, window=0.1, sample_rate=DNPU_FS, bandwidth=DNPU_BW)


def test_shortest_window_is_the_shortest_greedy_fit() -> None:
    """At the window the plan fits; one bin (1/bandwidth) shorter, the greedy plan (the search's
    first path, found on a grid without the band limit) ends above the band."""
    top = DNPU_BW
    for d, sizes in ((4, None), (6, None), (6, SIZES["second order only"])):
        window = shortest_window(d, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
        assert window * DNPU_FS == pytest.approx(round(window * DNPU_FS))
        plan = tone_plan(d, window=window, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
        assert (
            check_plan(plan, window=window, sample_rate=DNPU_FS, bandwidth=DNPU_BW, products=sizes)
            == []
        )
        shorter = window - 1 / top
        greedy = tone_plan(
            d,
            window=shorter,
            sample_rate=DNPU_FS,
            bandwidth=5000.0,
            nyquist_fraction=1.0,
            products=sizes,
        )
        assert max(greedy) > top


def test_bad_product_sizes_raise() -> None:
    with pytest.raises(ValueError, match="amplitudes"):
        ProductSizes(-1.0, 1e-4, second=1.0, third=1.0)
    with pytest.raises(ValueError, match="fraction"):
        ProductSizes(0.01, 1e-4, second=1.0, third=1.0, fraction=0.0)
    with pytest.raises(ValueError, match="3 values for 5 tones"):
        plan_tones(
            5,
            window=1.0,
            sample_rate=DNPU_FS,
            bandwidth=DNPU_BW,
            products=ProductSizes((0.1, 0.1, 0.1), 1e-4, 1.0, 1.0),
        )
