"""The crossbar figures of the calibration pages: maps over an array's devices (issue 10).

A crossbar's bring-up (`protocols.bringup_crossbar`, whose docstring gives the record formats)
measures every device: its conductance and read noise, and its response to pulses of either
polarity, from which the stuck devices follow. This module reads those maps from a record (a
malformed one raises, for `hil.report_calibration` to note and leave out) and draws them as
matplotlib figures, which that module renders and places on the page. `heat` draws any map of
rows × columns: also the gains of a many-input (crossbar) offset measurement, input × output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hil.core import JSONDict
from hil.report_html import float_array, pyplot

FloatArray = NDArray[np.float64]
MAX_LISTED = 64
"""Most stuck devices listed by position; the rest are counted."""


def device_map(value: Any, record: JSONDict) -> FloatArray:
    """A map over the devices: rows × cols as the record says (ValueError otherwise)."""
    array = float_array(value, 2)
    if array.shape != (record["rows"], record["cols"]):
        raise ValueError(
            f"a map of shape {array.shape} in a {record['rows']}×{record['cols']} array"
        )
    return array


def heat(fig: Any, ax: Any, values: FloatArray, title: str, cmap: str = "viridis") -> None:
    """`values` as a heat map, rows down and columns across, with its colour bar."""
    image = ax.imshow(values, cmap=cmap, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.85)
    ax.locator_params(integer=True)
    ax.set_title(title, fontsize="small")
    ax.set_xlabel("column")
    ax.set_ylabel("row")


def gain_map(gains: FloatArray) -> Any:
    """The gains ∂y/∂V of a known input as a map, input (row) × output (column)."""
    fig, ax = pyplot().subplots(1, 1, figsize=(8, 4.0))
    heat(fig, ax, gains, "gain ∂y/∂V of each input (row) at each output (column)")
    ax.set_ylabel("input")
    ax.set_xlabel("output")
    return fig


# -- conductance ---------------------------------------------------------------------------------


def parse_conductance(record: JSONDict) -> tuple[JSONDict, FloatArray, FloatArray]:
    """The record, its map of mean conductance and its map of read noise."""
    return record, device_map(record["mean"], record), device_map(record["read_noise"], record)


def draw_conductance(record: JSONDict, mean: FloatArray, noise: FloatArray) -> Any:
    """The mean conductance of each device and the spread of its reads, side by side."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(8, 3.4))
    heat(fig, left, mean, f"mean G over {record.get('reads')} reads")
    heat(fig, right, noise, "read noise σ", cmap="magma")
    return fig


# -- pulse response ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Staircase:
    """A pulse-response record: the staircase of reads and what each device did."""

    record: JSONDict
    states: FloatArray  # (rounds + 1) × rows × cols
    counts: FloatArray  # signed pulses per round
    weakest: FloatArray  # per device, the smaller response of the two polarities
    stuck: list[tuple[int, int]]


def parse_pulses(record: JSONDict) -> Staircase:
    """The staircase of a pulse-response record (ValueError where its parts do not fit)."""
    states, counts = np.asarray(record["states"], dtype=float), float_array(record["counts"], 1)
    if states.shape != (counts.size + 1, record["rows"], record["cols"]):
        raise ValueError("the states do not fit the counts and the array size")
    for side in (record["up"], record["down"]):
        if not len(side["g"]) == len(side["dg"]) == len(side["dg_se"]):
            raise ValueError("binned g, dg and dg_se differ in length")
    up, down = (device_map(record[side]["response"], record) for side in ("up", "down"))
    stuck = [(int(i), int(j)) for i, j in record["stuck"]]
    return Staircase(record, states, counts, np.minimum(up, down), stuck)


def draw_pulses(s: Staircase) -> Any:
    """ΔG per pulse against G (each device and round, binned means ± SE); the stuck map."""
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(8, 3.6))
    per_pulse = np.diff(s.states, axis=0) / np.abs(s.counts)[:, None, None]
    for side, sign, points, line in (("up", 1, "C0", "navy"), ("down", -1, "C3", "darkred")):
        rounds = np.sign(s.counts) == sign
        g, dg = s.states[:-1][rounds].ravel(), per_pulse[rounds].ravel()
        left.scatter(g, dg, s=2, alpha=0.15, color=points, rasterized=True)
        b = s.record[side]
        label = f"{side}: binned mean ± SE"
        left.errorbar(b["g"], b["dg"], b["dg_se"], color=line, marker="o", ms=3, label=label)
    left.axhline(0.0, color="0.6", lw=0.6)
    left.set_xlabel("G before the round")
    left.set_ylabel("ΔG per pulse")
    left.legend(fontsize="x-small")
    heat(fig, right, s.weakest, "response of the weaker polarity; × stuck")
    if s.stuck:
        rows, cols = zip(*s.stuck, strict=True)
        right.scatter(cols, rows, marker="x", color="red", s=18, lw=1)
    return fig


def stuck_list(s: Staircase) -> str:
    """The stuck devices as (row, col), the first `MAX_LISTED` of them; "none" without."""
    listed = ", ".join(f"({i}, {j})" for i, j in s.stuck[:MAX_LISTED])
    more = f" … and {len(s.stuck) - MAX_LISTED} more" if len(s.stuck) > MAX_LISTED else ""
    return (listed + more) or "none"
