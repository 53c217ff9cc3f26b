"""Guards for the capabilities a device may have: streaming, programmable state, node offsets,
reconnection, demodulation, settable averaging.

`SafetyGuard(device, limits)` picks the class that offers exactly the device's capabilities.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hil.core.capabilities import (
    Averaging,
    Demodulating,
    NodePerturbable,
    ProgrammableState,
    Reconnecting,
    Streaming,
)
from hil.core.errors import SafetyViolation
from hil.core.types import FloatArray
from hil.safety.effective import DRIVEN, Effective
from hil.safety.guard import SafetyGuard, as_array


class StreamingSafetyGuard(SafetyGuard):
    """A guard around a Streaming device: waveforms are checked whole before upload."""

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        """Check range, zero start/end and per-sample slew of every channel, then play."""
        if isinstance(channels, str):
            raise ValueError(
                f"stream: channels must be a sequence of names, got the string {channels!r}"
            )
        names = list(channels)
        if len(set(names)) != len(names):
            raise ValueError(f"stream: duplicate channel names in {names}")
        unknown = [n for n in names if n not in self._by_name]
        if unknown:
            raise ValueError(
                f"stream: device {self._spec.name!r} has no channel(s) {unknown}; "
                f"its channels are {list(self._by_name)}"
            )
        arr = as_array(waveform, "stream")
        if arr.ndim != 2 or arr.shape[1] != len(names) or arr.shape[0] < 1:
            raise ValueError(
                f"stream: expected waveform shape (n_samples >= 1, {len(names)}) for "
                f"channels {names}, got {arr.shape}"
            )
        effs = [self._by_name[n] for n in names]
        for col, eff in enumerate(effs):
            if eff.channel.role not in DRIVEN:
                self._refuse(
                    SafetyViolation(
                        eff.name,
                        float(np.max(np.abs(arr[:, col]))),
                        f"role {eff.channel.role}: outputs are measured, never driven",
                        "stream only input and control channels; nothing was sent",
                    )
                )
        self._check_values(arr, effs, "stream", row_word="sample")
        self._check_zero_ends(arr, effs)
        self._check_stream_slew(arr, effs)
        self._check_known("stream")
        streamer = self._device
        assert isinstance(streamer, Streaming)  # guaranteed by SafetyGuard.__new__
        try:
            with self._driving("stream"):
                received = streamer.stream(arr, tuple(names))
            self._notify("stream", {"waveform": arr, "channels": tuple(names)}, received)
            return received
        finally:
            # Each streamed channel now holds its last sample (assumed after a failure too).
            control_index = {e.name: i for i, e in enumerate(self._controls)}
            input_index = {e.name: i for i, e in enumerate(self._inputs)}
            for col, name in enumerate(names):
                if name in control_index:
                    self._last_controls[control_index[name]] = arr[-1, col]
                    self._last_control_time = self.clock.now()
                else:
                    self._last_inputs[input_index[name]] = arr[-1, col]

    def _check_zero_ends(self, arr: FloatArray, effs: Sequence[Effective]) -> None:
        tol = self._limits.zero_tolerance
        for label, row in (("zero start (first sample)", 0), ("zero end (last sample)", -1)):
            bad = np.abs(arr[row]) > tol
            if bad.any():
                col = int(np.argmax(bad))
                eff = effs[col]
                self._refuse(
                    SafetyViolation(
                        eff.name,
                        float(arr[row, col]),
                        f"{label} within ±{tol:g} {eff.channel.unit} (stream)",
                        "begin and end every waveform at 0 (ramp in and out), or raise "
                        "limits.zero_tolerance in the station file; nothing was sent",
                    )
                )


class PulsingSafetyGuard(SafetyGuard):
    """A guard around a device with programmable state: pulse requests are checked whole."""

    def apply_pulses(self, pulses: Any) -> None:
        """Check every count (whole numbers, per-device and per-request limits), then pulse."""
        arr = as_array(pulses, "apply_pulses")
        flat = arr.ravel()

        def weight(index: int) -> str:
            return f"weight {tuple(int(i) for i in np.unravel_index(index, arr.shape))}"

        fractional = np.flatnonzero(~np.isfinite(flat) | (flat != np.rint(flat)))
        if fractional.size:
            index = int(fractional[0])
            self._refuse(
                SafetyViolation(
                    weight(index),
                    float(flat[index]),
                    "whole pulse counts",
                    "pulse counts are integers; nothing was sent",
                )
            )
        limits = self._limits
        magnitude = np.abs(flat)
        if limits.max_pulses_per_device is not None and magnitude.size:
            index = int(np.argmax(magnitude))
            if magnitude[index] > limits.max_pulses_per_device:
                self._refuse(
                    SafetyViolation(
                        weight(index),
                        float(flat[index]),
                        f"limits.max_pulses_per_device {limits.max_pulses_per_device}",
                        "split the update into several requests or lower the learning rate; "
                        "nothing was sent",
                    )
                )
        total = float(magnitude.sum())
        if limits.max_pulses_per_request is not None and total > limits.max_pulses_per_request:
            self._refuse(
                SafetyViolation(
                    "pulse request",
                    total,
                    f"limits.max_pulses_per_request {limits.max_pulses_per_request}",
                    "split the update into several requests; nothing was sent",
                )
            )
        device = self._device
        assert isinstance(device, ProgrammableState)  # guaranteed by SafetyGuard.__new__
        counts = arr.astype(np.int64)
        device.apply_pulses(counts)
        self._notify("apply_pulses", {"counts": counts}, None)

    def read_state(self) -> FloatArray:
        """Read the weights back (reading drives only the device's own read voltages)."""
        device = self._device
        assert isinstance(device, ProgrammableState)
        state = device.read_state()
        self._notify("read_state", {}, state)
        return state


class NodeSafetyGuard(SafetyGuard):
    """A guard around a layered device whose units can be offset (node perturbation)."""

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        device = self._device
        assert isinstance(device, NodePerturbable)  # guaranteed by SafetyGuard.__new__
        return device.layer_shapes

    @property
    def layer_gains(self) -> tuple[float, ...]:
        device = self._device
        assert isinstance(device, NodePerturbable)
        return device.layer_gains

    def measure_nodes(
        self, inputs: FloatArray, offsets: Sequence[FloatArray]
    ) -> tuple[FloatArray, tuple[FloatArray, ...]]:
        """Check the plateaus as `measure` does and every offset against the limit, then measure."""
        arr = self._checked_plateaus(inputs, "measure_nodes")
        checked = [as_array(o, f"measure_nodes offsets[{i}]") for i, o in enumerate(offsets)]
        bound = self._limits.max_node_offset
        for layer, o in enumerate(checked):
            bad = ~np.isfinite(o) | (np.abs(o) > (bound if bound is not None else math.inf))
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                self._refuse(
                    SafetyViolation(
                        f"layer {layer} unit offset {index}",
                        float(o[index]),
                        "finite" if bound is None else f"limits.max_node_offset ±{bound:g}",
                        "lower the node-perturbation sigma; nothing was sent",
                    )
                )
        device = self._device
        assert isinstance(device, NodePerturbable)
        try:
            with self._driving("measure_nodes"):
                received = device.measure_nodes(arr, checked)
            sent = {
                "inputs": arr,
                "controls": self._last_controls.copy(),
                "offsets": tuple(checked),
            }
            self._notify("measure_nodes", sent, received)
            return received
        finally:
            self._last_inputs = arr[-1].copy()


class ReconnectingSafetyGuard(SafetyGuard):
    """A guard around a device whose connection can be opened again after a fault."""

    def reconnect(self) -> None:
        """Open the device's connection again, then bring it to the safe state.

        What the instrument holds after a fault is not known: a dropped link leaves the outputs
        where they were, possibly mid-ramp or on a control step that may not have landed. So the
        levels count as unknown (nothing is driven) until the safe state, which ramps from the
        last levels sent (and the pending step) to 0 within the limits, has succeeded.
        """
        device = self._device
        assert isinstance(device, Reconnecting)  # guaranteed by SafetyGuard.__new__
        if self._unknown is None:
            self._unknown = "reconnect"
        device.reconnect()
        self.safe_state()


class DemodulatingSafetyGuard(SafetyGuard):
    """A guard around a device with a hardware lock-in: every dither is checked before sending.

    A dither A·sin(2πft) on a control swings it over [DC − A, DC + A] around the level the guard
    last set, and its steepest slope is 2πfA: both must lie within the channel's effective range
    (device, station limits, max_abs_voltage) and max_slew. Nothing is clamped.
    """

    def _demodulator(self) -> Demodulating:
        device = self._device
        assert isinstance(device, Demodulating)  # guaranteed by SafetyGuard.__new__
        return device

    def dither_channels(self) -> tuple[str, ...]:
        return tuple(self._demodulator().dither_channels())

    def max_dithers(self) -> int:
        return int(self._demodulator().max_dithers())

    def demodulated_output(self) -> str:
        return str(self._demodulator().demodulated_output())

    def demodulate(
        self, inputs: FloatArray, dithers: Mapping[str, tuple[float, float]], reads: int = 1
    ) -> FloatArray:
        """Check the inputs row as `measure` does and every dither, then demodulate."""
        row = as_array(inputs, "demodulate")
        n = len(self._inputs)
        if row.shape != (n,):
            raise ValueError(
                f"demodulate: expected one inputs row of shape ({n},) (channels "
                f"{[e.name for e in self._inputs]}), got {row.shape}"
            )
        if isinstance(reads, bool) or not isinstance(reads, int) or reads < 1:
            raise ValueError(f"demodulate: reads must be a whole number >= 1, got {reads!r}")
        arr = self._checked_plateaus(row[np.newaxis, :], "demodulate")
        checked = self._checked_dithers(dithers)
        try:
            with self._driving("demodulate"):
                xy = self._demodulator().demodulate(arr[0], checked, reads)
            sent = {"inputs": arr[0], "controls": self._last_controls.copy(), "dithers": checked}
            self._notify("demodulate", {**sent, "reads": reads}, xy)
            return xy
        finally:
            self._last_inputs = arr[0].copy()

    def _checked_dithers(
        self, dithers: Mapping[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        """A private copy of the dithers, each checked against its control's limits."""
        if not isinstance(dithers, Mapping) or not dithers:
            raise ValueError("demodulate: dithers must be a non-empty mapping control → (Hz, A)")
        allowed = set(self.dither_channels())
        index = {e.name: i for i, e in enumerate(self._controls)}
        checked: dict[str, tuple[float, float]] = {}
        for name, pair in dithers.items():
            if name not in index or name not in allowed:
                raise ValueError(
                    f"demodulate: {name!r} cannot be dithered on device {self._spec.name!r}; "
                    f"its dithered controls are {sorted(allowed & set(index))}"
                )
            values = as_array(pair, f"demodulate dither on {name}")
            if values.shape != (2,):
                raise ValueError(
                    f"demodulate: dither on {name} must be (frequency, amplitude), got {pair!r}"
                )
            frequency, amplitude = float(values[0]), float(values[1])
            for what, value in (("frequency", frequency), ("amplitude", amplitude)):
                if not (math.isfinite(value) and value > 0):
                    self._refuse(
                        SafetyViolation(
                            name,
                            value,
                            f"a finite positive dither {what}",
                            "nothing was sent",
                        )
                    )
            eff = self._controls[index[name]]
            level = float(self._last_controls[index[name]])
            swing = np.array([[level - amplitude], [level + amplitude]])
            where = f"demodulate: dither ±{amplitude:g} {eff.channel.unit} around {level:g}"
            self._check_values(swing, [eff], where, row_word=None)
            slope = 2 * math.pi * frequency * amplitude
            if slope > eff.channel.max_slew:
                self._refuse(
                    SafetyViolation(
                        name,
                        slope,
                        f"max_slew {eff.channel.max_slew:g} {eff.channel.unit}/s (the dither's "
                        f"slope 2π·{frequency:g} Hz·{amplitude:g}; value is the slope)",
                        self._slew_hint(eff, "lower the dither frequency or amplitude"),
                    )
                )
            checked[name] = (frequency, amplitude)
        return checked


class AveragingSafetyGuard(SafetyGuard):
    """A guard around a device whose plateau averaging may be set. The count moves no channel,
    so it passes through; the guard's spec follows it (plateau time is planned from it)."""

    @property
    def plateau_samples(self) -> int:
        device = self._device
        assert isinstance(device, Averaging)  # guaranteed by SafetyGuard.__new__
        return int(device.plateau_samples)

    def set_plateau_samples(self, samples: int) -> None:
        device = self._device
        assert isinstance(device, Averaging)  # guaranteed by SafetyGuard.__new__
        device.set_plateau_samples(samples)
        self._spec = self._spec.model_copy(update={"plateau_samples": device.plateau_samples})


@functools.cache
def guard_class(
    streams: bool,
    pulses: bool,
    nodes: bool,
    reconnects: bool,
    demodulates: bool = False,
    averages: bool = False,
) -> type[SafetyGuard]:
    """The guard class that offers exactly the capabilities of the device behind it."""
    bases = [
        cls
        for cls, has in (
            (StreamingSafetyGuard, streams),
            (PulsingSafetyGuard, pulses),
            (NodeSafetyGuard, nodes),
            (ReconnectingSafetyGuard, reconnects),
            (DemodulatingSafetyGuard, demodulates),
            (AveragingSafetyGuard, averages),
        )
        if has
    ]
    if not bases:
        return SafetyGuard
    if len(bases) == 1:
        return bases[0]
    name = "".join(b.__name__.removesuffix("SafetyGuard") for b in bases) + "SafetyGuard"
    return type(name, tuple(bases), {})
