"""Guard fuzzer: generated requests against real simulators, checked where the values land.

Every guarded method (set_controls, measure, stream, measure_nodes, apply_pulses, park,
safe_state, and the restore path load_state_dict) is driven with generated requests — in range,
at the edges, just outside, non-finite, badly shaped, jumpy — on four stations built from the
simulators, with limits that are narrower than the devices and off the converters' grids. A
probe wraps each simulator's own entry points (the lowest level a request reaches) and checks
what arrives against limits computed here independently of the guard: the converted levels
(DAC codes, the crossbar's row scaling) inside every range, every transition within its slew
limit (DC staircases, plateau ramps, stream samples and the entry from the held level), zero
levels before the device's own safe state, whole and bounded pulse counts, bounded node
offsets. Any value outside is an escape; the suite fails on the first.

One station's device fails now and then after moving its levels (a timeout after the write): the
guard must not check the next transition from levels it only assumes.

HIL_GUARD_FUZZ_EXAMPLES (default 160 per station, 20 requests each: 16,000 requests in all)
scales the run, `--soak` multiplies it by ten; `pytest -s` prints the figures.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.core import (
    DeviceSpec,
    FloatArray,
    HilError,
    InstrumentTimeout,
    JSONDict,
    NodePerturbable,
    ProgrammableState,
    Role,
    Streaming,
)
from hil.safety import SafetyGuard, SafetyLimits
from simulators.analog_mlp import AnalogMLPDevice
from simulators.analytic import AnalyticDevice
from simulators.crossbar import CrossbarDevice
from simulators.dnpu import DNPUDevice

EXAMPLES = int(os.environ.get("HIL_GUARD_FUZZ_EXAMPLES", "160"))
OPS_PER_EXAMPLE = 20
REL = 1e-9  # floating-point slack on rate comparisons only; ranges are checked exactly


# ------------------------------------------------------------------------------------------------
# Stations


@dataclass(frozen=True)
class Station:
    name: str
    build: Callable[[], Any]
    limits: dict[str, Any]


def _dnpu() -> DNPUDevice:
    settings = DNPUDevice.Settings.model_validate(
        {
            "hidden": [8, 8],
            "dac_bits": 8,  # a 15.6 mV grid: limits below sit off it
            "dac_range": 2.0,
            "max_slew": 40.0,
            "timing": {
                "sample_rate": 1000.0,
                "ramp_time": 0.01,
                "settle_time": 0.002,
                "samples_per_plateau": 2,
            },
            "noise": {"white": 0.1},
        }
    )
    return DNPUDevice(settings, seed=1)


def _analytic() -> AnalyticDevice:
    settings = AnalyticDevice.Settings.model_validate(
        {
            "n_inputs": 2,
            "n_controls": 3,
            "max_slew": 25.0,
            "dac_bits": 10,
            "dac_range": 1.0,
            "timing": {"sample_rate": 1000.0, "ramp_time": 0.004, "samples_per_plateau": 2},
        }
    )
    return AnalyticDevice(settings, seed=2)


class Flaky(AnalyticDevice):
    """Now and then a request moves the levels and then fails (a timeout after the write)."""

    def __init__(self, settings: AnalyticDevice.Settings, seed: int) -> None:
        super().__init__(settings, seed=seed)
        self._faults = np.random.default_rng(seed)

    def _maybe_fail(self) -> None:
        if self._faults.random() < 0.04:
            raise InstrumentTimeout("injected: the device did not confirm the request")

    def set_controls(self, values: FloatArray) -> None:
        super().set_controls(values)
        self._maybe_fail()

    def measure(self, inputs: FloatArray) -> FloatArray:
        out = super().measure(inputs)
        self._maybe_fail()
        return out

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        out = super().stream(waveform, channels)
        self._maybe_fail()
        return out


def _flaky() -> Flaky:
    return Flaky(_analytic().settings, seed=5)


def _analog() -> AnalogMLPDevice:
    settings = AnalogMLPDevice.Settings.model_validate({"layers": [3, 4, 2], "chip_seed": 1})
    return AnalogMLPDevice(settings, seed=3)


def _crossbar() -> CrossbarDevice:
    settings = CrossbarDevice.Settings.model_validate(
        {"rows": 6, "cols": 3, "construction_seed": 0, "io": {"inp_res": 30}}
    )
    return CrossbarDevice(settings, seed=4)


STATIONS = {
    "dnpu": Station(
        "dnpu",
        _dnpu,
        {
            "max_abs_voltage": 0.9,
            "channels": {
                "E0": {"min": -0.55, "max": 0.43, "max_slew": 20.0},
                "E1": {"max": 0.37},
                "E3": {"min": -0.33},
                "E6": {"max": 0.2},
            },
            "zero_tolerance": 0.0,
            "max_ramp_time": 10.0,
        },
    ),
    "analytic": Station(
        "analytic",
        _analytic,
        {
            "max_abs_voltage": 0.8,
            "channels": {"ctrl1": {"min": -0.41, "max": 0.3}, "in1": {"max": 0.52}},
            "zero_tolerance": 1e-3,
            "max_ramp_time": 10.0,
        },
    ),
    "flaky": Station(
        "flaky",
        _flaky,
        {
            "max_abs_voltage": 0.8,
            "channels": {"ctrl1": {"min": -0.41, "max": 0.3}, "in1": {"max": 0.52}},
            "zero_tolerance": 1e-3,
            "max_ramp_time": 10.0,
        },
    ),
    "analog": Station(
        "analog",
        _analog,
        {
            "max_abs_voltage": 1.0,
            "channels": {
                "w0_0_0": {"min": -10.5, "max": 7.5, "max_slew": 4000.0},
                "w1_2_1": {"min": -3.4, "max": 12.6},
                "x1": {"max": 20.5},
            },
            "max_node_offset": 6.0,
            "max_ramp_time": 10.0,
        },
    ),
    "crossbar": Station(
        "crossbar",
        _crossbar,
        {
            "max_abs_voltage": 1.0,
            "channels": {"row2": {"max": 0.6}},
            "max_pulses_per_device": 5,
            "max_pulses_per_request": 20,
        },
    ),
}


@dataclass(frozen=True)
class Allowed:
    """Limits worked out here from the device spec and the station, not taken from the guard."""

    lo: dict[str, float]
    hi: dict[str, float]
    slew: dict[str, float]
    limits: SafetyLimits


def allowed(spec: DeviceSpec, limits: SafetyLimits) -> Allowed:
    lo, hi, slew = {}, {}, {}
    for c in spec.channels:
        if c.role is Role.OUTPUT:
            continue
        own = limits.channels.get(c.name)
        ceiling = limits.max_abs_voltage if c.unit == "V" else math.inf
        lo[c.name] = max(
            c.min, -ceiling, own.min if own is not None and own.min is not None else -math.inf
        )
        hi[c.name] = min(
            c.max, ceiling, own.max if own is not None and own.max is not None else math.inf
        )
        slew[c.name] = min(
            c.max_slew, own.max_slew if own is not None and own.max_slew is not None else math.inf
        )
    return Allowed(lo, hi, slew, limits)


# ------------------------------------------------------------------------------------------------
# The probe: what reaches the simulator, checked at its own entry points


@dataclass
class Probe:
    device: Any
    allowed: Allowed
    escapes: list[str] = field(default_factory=list)
    last_dc_change: dict[str, float] = field(default_factory=dict)

    def escape(self, message: str) -> None:
        self.escapes.append(message)

    def in_range(self, values: FloatArray, names: list[str], what: str) -> None:
        lo = np.array([self.allowed.lo[n] for n in names])
        hi = np.array([self.allowed.hi[n] for n in names])
        bad = ~np.isfinite(values) | (values < lo) | (values > hi)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            self.escape(
                f"{what}: {names[col]} = {values[row, col]!r} outside [{lo[col]}, {hi[col]}]"
            )

    def rates(self, path: FloatArray, names: list[str], per: float, what: str) -> None:
        """Consecutive rows of `path` are `per` seconds apart: every |Δ|/per within max_slew."""
        slew = np.array([self.allowed.slew[n] for n in names])
        if len(path) < 2 or not np.isfinite(slew).any():
            return
        rate = (
            np.abs(np.diff(path, axis=0)) / per
            if per > 0
            else np.where(np.diff(path, axis=0) == 0, 0.0, math.inf)
        )
        bad = rate > slew * (1 + REL)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            self.escape(
                f"{what}: {names[col]} moves {path[row, col]!r} -> {path[row + 1, col]!r} at "
                f"{rate[row, col]:g}/s over the limit {slew[col]:g}/s"
            )

    def dc_step(self, old: FloatArray, new: FloatArray, names: list[str], now: float) -> None:
        """A DC change of a slew-limited channel: one stair of a ramp, ramp_interval apart."""
        interval = self.allowed.limits.ramp_interval
        for name, a, b in zip(names, old, new, strict=True):
            slew = self.allowed.slew[name]
            if a == b or not math.isfinite(slew):
                continue
            if abs(b - a) > slew * interval * (1 + REL):
                self.escape(f"DC step on {name}: {a!r} -> {b!r} exceeds {slew * interval:g}")
            previous = self.last_dc_change.get(name)
            if previous is not None and now - previous < interval * (1 - REL):
                self.escape(f"DC steps on {name} only {now - previous:g} s apart")
            self.last_dc_change[name] = now

    def at_rest(self, levels: FloatArray, names: list[str]) -> None:
        """Before the device's own safe state, slew-limited channels must already be at 0 (as
        converted: what the electrode sees)."""
        converted = _converted(self.device, levels[np.newaxis, :], names)[0]
        for name, v in zip(names, converted, strict=True):
            limit = self.allowed.limits.channels.get(name)
            may_drop = limit is not None and limit.may_drop
            if v != 0.0 and math.isfinite(self.allowed.slew[name]) and not may_drop:
                self.escape(f"safe state dropped {name} from {v!r} in one step")


def _wrap(device: Any, name: str, before: Callable[..., None]) -> None:
    original = getattr(device, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(device, name, wrapper)


def _converted(device: Any, values: FloatArray, names: list[str]) -> FloatArray:
    """The converter's levels, computed with the simulator's own rule."""
    return np.asarray(device.applied_levels(np.array(values, dtype=float), names), dtype=float)


def restore_hook(device: Any, probe: Probe) -> Callable[[JSONDict], None]:
    """What a restore would leave on the channels, checked before the device loads it."""

    def load_state_dict(state: JSONDict) -> None:
        restored = device.restored_levels(state)
        names = list(restored)
        values = np.array([[restored[n] for n in names]])
        probe.in_range(_converted(device, values, names), names, "restore")

    return load_state_dict


def attach_sampled(device: AnalyticDevice | DNPUDevice, probe: Probe) -> None:
    """DNPU and analytic: levels of every driven electrode, DC steps, plateaus and streams."""
    spec = device.spec
    inputs, controls = [c.name for c in spec.inputs], [c.name for c in spec.controls]
    driven = inputs + controls

    def levels() -> FloatArray:
        return np.asarray(device.state_dict()["levels"], dtype=float)

    def set_controls(values: FloatArray) -> None:
        v = np.array(values, dtype=float)[np.newaxis, :]
        probe.in_range(_converted(device, v, controls), controls, "set_controls")
        probe.dc_step(levels()[len(inputs) :], v[0], controls, device.clock.now())

    def measure(rows: FloatArray) -> None:
        x = np.array(rows, dtype=float)
        probe.in_range(_converted(device, x, inputs), inputs, "measure")
        path = np.vstack([levels()[: len(inputs)], x])
        probe.rates(path, inputs, spec.ramp_time, "plateau ramp")

    def stream(waveform: FloatArray, channels: Any) -> None:
        names = list(channels)
        w = np.array(waveform, dtype=float)
        probe.in_range(_converted(device, w, names), names, "stream")
        held = levels()[[driven.index(n) for n in names]]
        assert spec.sample_rate is not None
        probe.rates(np.vstack([held, w]), names, 1.0 / spec.sample_rate, "stream")
        now = device.clock.now() + len(w) / spec.sample_rate
        for n in names:
            if n in controls:
                probe.last_dc_change[n] = now

    def safe_state() -> None:
        probe.at_rest(levels(), driven)

    for name, hook in (
        ("set_controls", set_controls),
        ("measure", measure),
        ("stream", stream),
        ("safe_state", safe_state),
        ("load_state_dict", restore_hook(device, probe)),
    ):
        _wrap(device, name, hook)


def attach_analog(device: AnalogMLPDevice, probe: Probe) -> None:
    """The analog chip: weight and input codes, weight DC steps, node offsets."""
    spec = device.spec
    inputs, controls = [c.name for c in spec.inputs], [c.name for c in spec.controls]
    bound = probe.allowed.limits.max_node_offset

    def set_controls(values: FloatArray) -> None:
        v = np.array(values, dtype=float)[np.newaxis, :]
        probe.in_range(_converted(device, v, controls), controls, "weights")
        probe.dc_step(device.controls, v[0], controls, device.clock.now())

    def measure(rows: FloatArray) -> None:
        probe.in_range(_converted(device, np.array(rows, dtype=float), inputs), inputs, "inputs")

    def measure_nodes(rows: FloatArray, offsets: Any) -> None:
        measure(rows)
        for o in offsets:
            o = np.asarray(o, dtype=float)
            if bound is not None and (not np.all(np.isfinite(o)) or np.any(np.abs(o) > bound)):
                probe.escape(f"node offset {np.max(np.abs(o))!r} over ±{bound}")

    def safe_state() -> None:
        probe.at_rest(device.controls, controls)

    for name, hook in (
        ("set_controls", set_controls),
        ("measure", measure),
        ("measure_nodes", measure_nodes),
        ("safe_state", safe_state),
        ("load_state_dict", restore_hook(device, probe)),
    ):
        _wrap(device, name, hook)


def attach_crossbar(device: CrossbarDevice, probe: Probe) -> None:
    """The crossbar: row levels after noise management and the DAC; pulse counts."""
    rows = [c.name for c in device.spec.inputs]
    limits = probe.allowed.limits

    def measure(x: FloatArray) -> None:
        probe.in_range(_converted(device, np.array(x, dtype=float), rows), rows, "row levels")

    def apply_pulses(pulses: Any) -> None:
        counts = np.asarray(pulses)
        flat = counts.astype(float).ravel()
        if not np.all(np.isfinite(flat)) or np.any(flat != np.rint(flat)):
            probe.escape("a fractional or non-finite pulse count reached the array")
            return
        per_device, per_request = limits.max_pulses_per_device, limits.max_pulses_per_request
        if per_device is not None and np.max(np.abs(flat), initial=0) > per_device:
            probe.escape(f"{np.max(np.abs(flat))} pulses on one device over {per_device}")
        if per_request is not None and np.sum(np.abs(flat)) > per_request:
            probe.escape(f"{np.sum(np.abs(flat))} pulses in one request over {per_request}")

    for name, hook in (("measure", measure), ("apply_pulses", apply_pulses)):
        _wrap(device, name, hook)


ATTACH: dict[str, Callable[[Any, Probe], None]] = {
    "dnpu": attach_sampled,
    "analytic": attach_sampled,
    "flaky": attach_sampled,
    "analog": attach_analog,
    "crossbar": attach_crossbar,
}


# ------------------------------------------------------------------------------------------------
# Requests


def _value(rng: np.random.Generator, lo: float, hi: float, held: float) -> float:
    """Mostly plausible, often at or just past an edge, sometimes absurd."""
    lo_f = lo if math.isfinite(lo) else -50.0
    hi_f = hi if math.isfinite(hi) else 50.0
    kind = rng.integers(0, 10)
    if kind <= 3:
        return float(rng.uniform(lo_f, hi_f))
    if kind == 4:
        return float(held + rng.normal(0.0, 0.003 * (hi_f - lo_f)))  # a small step
    if kind == 5:
        edge = lo_f if rng.random() < 0.5 else hi_f
        return float(edge + rng.choice([-1, 1]) * rng.choice([0.0, 1e-12, 1e-3, 0.01]))
    if kind == 6:
        return float(rng.choice([0.0, held]))
    if kind == 7:
        return float(rng.uniform(-2, 2) * max(abs(lo_f), abs(hi_f)))
    if kind == 8:
        return float(rng.choice([math.nan, math.inf, -math.inf, 1e308, -1e308]))
    return float(np.nextafter(hi_f if rng.random() < 0.5 else lo_f, rng.choice([-1e9, 1e9])))


def _row(rng: np.random.Generator, guard: SafetyGuard, role: Role, held: FloatArray) -> FloatArray:
    chans = guard.unguarded_device("fuzzer: read the device's own ranges").spec.by_role(role)
    return np.array([_value(rng, c.min, c.max, h) for c, h in zip(chans, held, strict=True)])


def _held(guard: SafetyGuard, key: str) -> FloatArray:
    return np.asarray(guard.state_dict()[key], dtype=float)


def _waveform(rng: np.random.Generator, guard: SafetyGuard) -> tuple[FloatArray, list[str]]:
    spec = guard.spec
    driven = [c for c in spec.channels if c.role is not Role.OUTPUT]
    k = int(rng.integers(1, len(driven) + 1))
    chosen = [driven[int(i)] for i in rng.choice(len(driven), size=k, replace=False)]
    names = [c.name for c in chosen]
    n = int(rng.integers(1, 160))
    t = np.arange(n)[:, np.newaxis]
    amplitude = np.array([_value(rng, c.min, c.max, 0.0) for c in chosen])
    wave = amplitude * np.sin(np.pi * t / max(n - 1, 1)) ** 2
    kind = rng.integers(0, 6)
    if kind == 0:  # start where the channels are held (not at zero)
        state = guard.state_dict()
        held = dict(
            zip(
                [c.name for c in (*spec.inputs, *spec.controls)],
                [*state["last_inputs"], *state["last_controls"]],
                strict=True,
            )
        )
        wave = wave + np.array([held[nm] for nm in names]) * (1 - t / max(n - 1, 1))
    elif kind == 1:  # one corrupted sample
        row, col = int(rng.integers(0, n)), int(rng.integers(0, k))
        wave[row, col] = _value(rng, chosen[col].min, chosen[col].max, 0.0)
    elif kind == 2:  # noise on top
        wave = wave + rng.normal(0.0, 1e-3, size=wave.shape)
    if rng.random() < 0.05:
        names = [*names, names[0]] if rng.random() < 0.5 else [*names[:-1], "no-such-channel"]
    return wave, names


def _poke(nested: list[Any], rng: np.random.Generator, value: float) -> None:
    """Replace one number somewhere in nested lists."""
    while True:
        i = int(rng.integers(0, len(nested)))
        if not isinstance(nested[i], list):
            nested[i] = value
            return
        if not nested[i]:
            return
        nested = nested[i]


def _restore_request(rng: np.random.Generator, guard: SafetyGuard) -> JSONDict:
    """The guard's own state, edited: a saved level, the device's level, both, or neither."""
    state = copy.deepcopy(guard.state_dict())
    spec = guard.spec
    kind = rng.integers(0, 5)
    if kind in (0, 2) and state["last_controls"]:
        i = int(rng.integers(0, len(state["last_controls"])))
        c = spec.controls[i]
        state["last_controls"][i] = _value(rng, c.min, c.max, state["last_controls"][i])
    device = state.get("device")
    if kind in (1, 2) and isinstance(device, dict):
        for key in ("levels", "theta"):
            if device.get(key):
                i = int(rng.integers(0, len(device[key])))
                device[key][i] = float(rng.uniform(-8, 8))
        if device.get("weights"):
            _poke(device["weights"], rng, int(rng.integers(-40, 41)))
    if kind == 3 and isinstance(device, dict):
        state["device"] = rng.choice(np.array([None, {}, "junk"], dtype=object))
    return state


@dataclass
class Tally:
    requests: int = 0
    refused: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)


def one_request(rng: np.random.Generator, guard: SafetyGuard, tally: Tally) -> None:
    """Draw one request of a kind the guard offers and send it; refusals are expected."""
    kinds = ["set_controls", "measure", "restore", "park", "safe_state"]
    if isinstance(guard, Streaming):
        kinds += ["stream", "stream", "stream"]
    if isinstance(guard, ProgrammableState):
        kinds += ["apply_pulses", "apply_pulses"]
    if isinstance(guard, NodePerturbable):
        kinds += ["measure_nodes", "measure_nodes"]
    if not guard.spec.controls:
        kinds.remove("set_controls")
    kind = str(rng.choice(kinds))
    tally.requests += 1
    tally.by_kind[kind] = tally.by_kind.get(kind, 0) + 1
    with np.errstate(all="ignore"):  # absurd values are part of the diet
        _send(kind, rng, guard, tally)


def _send(kind: str, rng: np.random.Generator, guard: SafetyGuard, tally: Tally) -> None:
    try:
        if kind == "set_controls":
            held = _held(guard, "last_controls")
            values = _row(rng, guard, Role.CONTROL, held)
            if rng.random() < 0.3:  # a nearby target, often within one ramp
                values = held + rng.normal(0.0, 0.02, size=held.shape) * np.abs(values)
            if rng.random() < 0.03:
                values = values[:-1]
            guard.set_controls(values)
        elif kind in ("measure", "measure_nodes"):
            held = _held(guard, "last_inputs")
            rows = [held]
            for _ in range(int(rng.integers(1, 4))):
                row = _row(rng, guard, Role.INPUT, rows[-1])
                if rng.random() < 0.5:  # small steps pass the plateau slew
                    row = rows[-1] + 0.1 * (row - rows[-1])
                rows.append(row)
            x = np.array(rows[1:])
            if kind == "measure":
                guard.measure(x)
            else:
                shapes = guard.layer_shapes  # type: ignore[attr-defined]
                scale = float(rng.choice([0.5, 3.0, 5.9, 6.0, 6.1, 50.0]))
                offsets = [rng.normal(0.0, scale / 2, size=(len(x), out)) for _, out in shapes]
                guard.measure_nodes(x, offsets)  # type: ignore[attr-defined]
        elif kind == "stream":
            wave, names = _waveform(rng, guard)
            if rng.random() < 0.5:
                guard.park()  # as a protocol does before streaming from DC levels
            guard.stream(wave, names)  # type: ignore[attr-defined]
        elif kind == "apply_pulses":
            shape = np.shape(guard.read_state())  # type: ignore[attr-defined]
            counts: Any = rng.integers(-7, 8, size=shape) * (rng.random(shape) < 0.2)
            if rng.random() < 0.1:
                counts = counts + 0.5
            elif rng.random() < 0.05:
                counts = counts.astype(float) * math.inf
            guard.apply_pulses(counts)  # type: ignore[attr-defined]
        elif kind == "restore":
            guard.load_state_dict(_restore_request(rng, guard))
        elif kind == "park":
            guard.park()
        else:
            guard.safe_state()
    except (HilError, ValueError):
        tally.refused += 1
    else:
        tally.accepted[kind] = tally.accepted.get(kind, 0) + 1


@pytest.fixture(scope="module")
def totals() -> Iterator[dict[str, Tally]]:
    record: dict[str, Tally] = {}
    yield record
    total = sum(t.requests for t in record.values())
    print(  # the figures for the closing note (pytest -s)
        f"\nguard fuzzer: {total} requests, "
        + ", ".join(f"{k}: {t.requests} ({t.refused} refused)" for k, t in record.items())
    )


@pytest.mark.parametrize("station", list(STATIONS))
def test_nothing_outside_the_limits_reaches_a_simulator(
    station: str, totals: dict[str, Tally], request: pytest.FixtureRequest
) -> None:
    examples = EXAMPLES * (10 if request.config.getoption("--soak") else 1)
    config = STATIONS[station]
    limits = SafetyLimits.model_validate(config.limits)
    tally = Tally()
    escapes: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.integers(0, 2**32 - 1))
    def run(seed: int) -> None:
        device = config.build()
        probe = Probe(device, allowed(device.spec, limits))
        ATTACH[station](device, probe)
        rng = np.random.default_rng(seed)
        with SafetyGuard(device, limits) as guard:
            for _ in range(OPS_PER_EXAMPLE):
                one_request(rng, guard, tally)
        escapes.extend(probe.escapes)
        assert probe.escapes == [], probe.escapes[:3]

    run()
    totals[station] = tally
    assert escapes == []
    assert tally.requests == examples * OPS_PER_EXAMPLE
    # The fuzzer is only worth its count if both sides of the line were exercised.
    assert 0.1 < tally.refused / tally.requests < 0.9, tally
    assert set(tally.accepted) == set(tally.by_kind), tally  # every kind also got through
