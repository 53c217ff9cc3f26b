"""Crossbar bring-up: conductance map, pulse response and stuck-device map (issue 10).

Both measurements work on any `Device` with `ProgrammableState` (in a run: the safety guard around
the simulator or a crossbar rig). Maps are rows × cols as `read_state()` reports the weights; G is
that weight (the rigs map conductance to weight linearly), so ΔG is in the same units.

`conductance_map(device, ConductanceSettings)` reads the state `reads` times:

    {"rows", "cols", "reads",
     "mean": [[G per device]], "read_noise": [[σ per device: std over the reads, ddof 1]],
     "min", "max", "median": of the mean map, "read_noise_median": of the σ map}

`pulse_response(device, PulseSettings)` first reads the state `reads` times (the start is their
mean), then plays a staircase of rounds, each `pulses` pulses on every device followed by one read:
`rounds` rounds of +pulses, 2·`rounds` of −pulses and `rounds` of +pulses again, so every device
sweeps a band of conductance both ways and ends near where it started. No single `apply_pulses`
exceeds the per-device cap — the smallest of `max_pulses`, the guard's
`limits.max_pulses_per_device` and `limits.max_pulses_per_request` — nor the guard's
`max_pulses_per_request` in total: a round is split into as many requests as these need.

    {"rows", "cols", "reads", "pulses", "rounds", "threshold", "sigmas",
     "counts": [signed pulse count of each round],
     "states": [[[G]]]: the start, then the read after each round (rounds·4 + 1 maps; 7
               significant digits, float32 precision: ~3 MB of JSON for 64 × 32 at the defaults),
     "read_noise": [[σ per device]], "read_noise_median",
     "up" and "down": {
         "g": [mean G of each bin], "dg": [mean ΔG per pulse], "dg_se": [its standard error],
         "n": [points]: ΔG per pulse (signed: negative when G falls) against G before the round,
                binned over G (`bins` equal bins over the range the movable devices visited; bins
                with fewer than 2 points left out; stuck devices excluded),
         "step": [[mean ΔG per pulse in the pulse's direction, per device]],
         "response": [[total ΔG in the pulse's direction over that polarity's rounds]],
         "median_response": median of "response" over all devices},
     "stuck": [[row, col], ...] row-major, "stuck_count",
     "requests": apply_pulses calls made, "max_pulses": the per-device cap per call (or null),
     "return_offset_median": median |G end − G start|}

The raw ΔG per pulse of device (i, j) in round k is (states[k+1][i][j] − states[k][i][j]) /
|counts[k]| against G = states[k][i][j].

Stuck rule: a device is stuck when, for both polarities, its response is within `sigmas` read-noise
standard errors of zero, |response| ≤ sigmas · σ · √(2 · segments) (each run of rounds of one
polarity adds the difference of two reads), and below `threshold` × the median device's response
(that test is dropped when the median device does not respond either). σ is each device's read
noise pooled from the repeated reads before the staircase and from the round-to-round differences
of the staircase with each polarity's mean removed: for a device that does not move those are
repeated reads too (var ΔG = 2σ²), which gives the test many degrees of freedom; for a device that
moves, pulse noise inflates σ, which only makes the first test more lenient — the second one then
decides. Without read noise (a simulator) a stuck device reads exactly the same every time and is
found exactly.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from hil.core import (
    CapabilityError,
    ConfigError,
    Device,
    FloatArray,
    IntArray,
    JSONDict,
    ProgrammableState,
)

STATE_DIGITS = 7  # significant digits of the staircase states in the record (float32 precision)


class ConductanceSettings(BaseModel):
    """How the conductance map is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reads: int = Field(
        default=5, ge=2, le=10_000, description="repeated read_state() reads, averaged"
    )


class PulseSettings(BaseModel):
    """The pulse staircase and the stuck rule. The defaults sweep about −0.3 … +0.25 of the
    simulator's ±0.6 range (dw_min 0.001) in 120 rounds, about 0.2 s of wall time on the
    64 × 32 array, and fit boards that take at most 10 pulses a train."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pulses: int = Field(default=10, ge=1, le=100_000, description="pulses per device and round")
    rounds: int = Field(
        default=30, ge=1, le=10_000, description="rounds per leg: +rounds, −2·rounds, +rounds"
    )
    reads: int = Field(
        default=5, ge=2, le=10_000, description="repeated reads before the staircase (σ, start)"
    )
    max_pulses: int | None = Field(
        default=None, ge=1, description="most pulses per device in one apply_pulses call"
    )
    threshold: float = Field(
        default=0.1, gt=0, lt=1, description="stuck: response below this × the median device's"
    )
    sigmas: float = Field(
        default=5.0, gt=0, le=100, description="stuck: response within this many σ of zero"
    )
    bins: int = Field(default=16, ge=1, le=1000, description="G bins of the ΔG-per-pulse curves")


def conductance_map(device: Device, settings: ConductanceSettings) -> JSONDict:
    """Read the state `reads` times: the mean map, the read-noise map and their summary."""
    mean, sigma = _mean_and_std(_reads(_programmable(device), settings.reads))
    return {
        "rows": int(mean.shape[0]),
        "cols": int(mean.shape[1]),
        "reads": settings.reads,
        "mean": mean.tolist(),
        "read_noise": sigma.tolist(),
        "min": float(mean.min()),
        "max": float(mean.max()),
        "median": float(np.median(mean)),
        "read_noise_median": float(np.median(sigma)),
    }


def pulse_response(device: Device, settings: PulseSettings) -> JSONDict:
    """Play the pulse staircase and read after every round: ΔG per pulse against G for both
    polarities, per-device steps and the stuck map (module docstring)."""
    state = _programmable(device)
    s = settings
    cap = _pulse_cap(device, s.max_pulses)
    per_request = _limit(device, "max_pulses_per_request")
    before = _reads(state, s.reads)
    counts = np.repeat([s.pulses, -s.pulses, s.pulses], [s.rounds, 2 * s.rounds, s.rounds])
    states = [_mean_and_std(before)[0]]
    requests = 0
    for count in counts:
        requests += _send(state, np.full(states[0].shape, count, dtype=np.int64), cap, per_request)
        states.append(_read(state))
    g = np.stack(states)
    delta = np.diff(g, axis=0)  # ΔG of each round, rounds × rows × cols
    sigma = _read_noise(before, delta, counts)
    polarities = {"up": counts > 0, "down": counts < 0}
    moved = {
        name: (delta[sel] * np.sign(counts[sel])[:, None, None]).sum(axis=0)
        for name, sel in polarities.items()
    }
    stuck = np.ones(sigma.shape, dtype=bool)
    for name, sel in polarities.items():
        stuck &= _stuck(moved[name], sigma, _segments(sel), s)
    result: JSONDict = {
        "rows": int(g.shape[1]),
        "cols": int(g.shape[2]),
        "reads": s.reads,
        "pulses": s.pulses,
        "rounds": s.rounds,
        "threshold": s.threshold,
        "sigmas": s.sigmas,
        "counts": counts.tolist(),
        "states": _significant(g).tolist(),
        "read_noise": sigma.tolist(),
        "read_noise_median": float(np.median(sigma)),
    }
    per_pulse = delta / np.abs(counts)[:, None, None]
    edges = _edges(g[:-1][:, ~stuck], s.bins)
    for name, sel in polarities.items():
        n_pulses = int(np.abs(counts[sel]).sum())
        result[name] = {
            **_binned(g[:-1][sel][:, ~stuck], per_pulse[sel][:, ~stuck], edges),
            "step": (moved[name] / n_pulses).tolist(),
            "response": moved[name].tolist(),
            "median_response": float(np.median(moved[name])),
        }
    result |= {
        "stuck": [[int(i), int(j)] for i, j in np.argwhere(stuck)],
        "stuck_count": int(stuck.sum()),
        "requests": requests,
        "max_pulses": cap,
        "return_offset_median": float(np.median(np.abs(g[-1] - g[0]))),
    }
    return result


# -- helpers -------------------------------------------------------------------------------------


def _programmable(device: Device) -> ProgrammableState:
    if not isinstance(device, ProgrammableState):
        raise CapabilityError(
            f"device {device.spec.name!r} has no programmable state (apply_pulses, read_state); "
            "conductance and pulse measurements are for crossbars"
        )
    return device


def _read(device: ProgrammableState) -> FloatArray:
    state = np.array(device.read_state(), dtype=float)
    if state.ndim != 2:
        raise ValueError(f"read_state: expected a rows × cols map, got shape {state.shape}")
    return state


def _reads(device: ProgrammableState, n: int) -> FloatArray:
    """n reads of the state, stacked: n × rows × cols."""
    return np.stack([_read(device) for _ in range(n)])


def _mean_and_std(reads: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Mean and std (ddof 1) over the first axis, about the first read: reads that agree give
    exactly that read and exactly 0 (a stuck device on a noiseless read path)."""
    offsets = reads - reads[0]
    return reads[0] + offsets.mean(axis=0), offsets.std(axis=0, ddof=1)


def _limit(device: object, name: str) -> int | None:
    """A pulse limit of the guard around the device (duck-typed: `limits.<name>`), if any."""
    value = getattr(getattr(device, "limits", None), name, None)
    return None if value is None else int(value)


def _pulse_cap(device: object, max_pulses: int | None) -> int | None:
    """The most pulses one device may get in one request: the setting and the guard's limits."""
    caps = [
        c
        for c in (
            max_pulses,
            _limit(device, "max_pulses_per_device"),
            _limit(device, "max_pulses_per_request"),
        )
        if c is not None
    ]
    cap = min(caps) if caps else None
    if cap is not None and cap < 1:
        raise ConfigError(
            f"the station's pulse limits allow {cap} pulses per request: nothing can be "
            "pulsed; raise limits.max_pulses_per_device / max_pulses_per_request",
            key=("limits",),
        )
    return cap


def _send(
    device: ProgrammableState, counts: IntArray, cap: int | None, per_request: int | None
) -> int:
    """Apply signed counts in requests of at most `cap` per device and `per_request` in total
    (cap ≤ per_request, so every request sends something); returns how many requests."""
    left = counts.copy()
    requests = 0
    while np.any(left):
        part = left if cap is None else np.clip(left, -cap, cap)
        if per_request is not None:
            fits = np.cumsum(np.abs(part).ravel()) <= per_request
            part = np.where(fits.reshape(part.shape), part, 0)
        device.apply_pulses(part)
        left = left - part
        requests += 1
    return requests


def _read_noise(before: FloatArray, delta: FloatArray, counts: IntArray) -> FloatArray:
    """Each device's read noise σ, pooled from the repeated reads and the round-to-round
    differences (each polarity's mean removed; var ΔG = 2σ² for a device that does not move)."""
    dof = before.shape[0] - 1
    squares = _mean_and_std(before)[1] ** 2 * dof
    for sign in (1, -1):
        d = delta[np.sign(counts) == sign]
        squares = squares + _mean_and_std(d)[1] ** 2 * (d.shape[0] - 1) / 2
        dof += d.shape[0] - 1
    sigma: FloatArray = np.sqrt(squares / dof)
    return sigma


def _segments(selected: npt.NDArray[np.bool_]) -> int:
    """How many runs of consecutive selected rounds the staircase has."""
    return int(np.count_nonzero(np.diff(selected.astype(int), prepend=0) == 1))


def _stuck(
    response: FloatArray, sigma: FloatArray, segments: int, s: PulseSettings
) -> npt.NDArray[np.bool_]:
    """Devices whose response to one polarity is within the read noise and below `threshold` ×
    the median device's (the noise test alone when the median device does not respond)."""
    quiet = np.abs(response) <= s.sigmas * sigma * math.sqrt(2 * segments)
    median = float(np.median(response))
    if median > 0:
        quiet &= response < s.threshold * median
    return quiet


def _edges(g: FloatArray, bins: int) -> FloatArray:
    """`bins` equal bins over the G values (one bin when they are all equal or absent)."""
    if g.size == 0 or g.max() <= g.min():
        return np.array([-np.inf, np.inf])
    edges: FloatArray = np.linspace(g.min(), g.max(), bins + 1)
    return edges


def _binned(g: FloatArray, dg: FloatArray, edges: FloatArray) -> JSONDict:
    """Mean ΔG per pulse, its standard error and the count in each G bin of ≥ 2 points."""
    g, dg = g.ravel(), dg.ravel()
    index = np.clip(np.searchsorted(edges, g, side="right") - 1, 0, edges.size - 2)
    out: dict[str, list[float | int]] = {"g": [], "dg": [], "dg_se": [], "n": []}
    for k in range(edges.size - 1):
        inside = index == k
        n = int(inside.sum())
        if n < 2:
            continue
        out["g"].append(float(g[inside].mean()))
        out["dg"].append(float(dg[inside].mean()))
        out["dg_se"].append(float(dg[inside].std(ddof=1) / math.sqrt(n)))
        out["n"].append(n)
    return dict(out)


def _significant(a: FloatArray) -> FloatArray:
    """a rounded to STATE_DIGITS significant digits (zeros and non-finite values kept)."""
    magnitude = np.abs(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.floor(np.log10(np.where(magnitude > 0, magnitude, 1.0)))
    scale = 10.0 ** (STATE_DIGITS - 1 - exponent)
    rounded: FloatArray = np.round(a * scale) / scale
    return np.where(np.isfinite(a), rounded, a)
