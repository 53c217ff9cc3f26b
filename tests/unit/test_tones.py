"""Tone planning for homodyne gradient extraction: collisions are named, plans have none."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.tones import Collision, check_plan, near_mains, plan_tones

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
)
def test_every_plan_passes_the_check(
    n: int,
    window: float,
    sample_rate: float,
    bandwidth: float,
    order: int,
    mains: float | None,
    harmonics: tuple[int, ...],
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
        )
        == []
    )
