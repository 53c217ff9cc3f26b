"""Device capabilities as small runtime-checkable protocols.

Protocols check what they need with `isinstance(device, Streaming)` and so on; a device implements
only what its hardware can do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from hil.core.channels import DeviceSpec
from hil.core.clock import Clock
from hil.core.types import FloatArray, IntArray, JSONDict


@runtime_checkable
class Device(Protocol):
    """What every device does: set the controls, measure plateaus, go safe."""

    @property
    def spec(self) -> DeviceSpec: ...

    @property
    def clock(self) -> Clock: ...

    def set_controls(self, values: FloatArray) -> None:
        """Set the control channels (in spec order) to DC values."""
        ...

    def measure(self, inputs: FloatArray) -> FloatArray:
        """One DC plateau per row of `inputs` (n_cases × n_inputs), after settling.

        Returns n_cases × n_outputs.
        """
        ...

    def safe_state(self) -> None:
        """Bring every output of the device to its safe state (zero volts)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Streaming(Protocol):
    """Synchronised sampled waveforms in, sampled outputs out (DAQ card, AWG + digitiser)."""

    def stream(self, waveform: FloatArray, channels: Sequence[str]) -> FloatArray:
        """Play `waveform` (n_samples × len(channels)) at `spec.sample_rate`.

        Returns the outputs sampled at the same instants, n_samples × n_outputs.
        """
        ...


@runtime_checkable
class Averaging(Protocol):
    """A device whose plateau averaging a protocol may set (a DAQ's samples per point).

    More samples cost device time and average white noise down, but not drift; an estimator that
    models both (`estimator: auto`) chooses how many.
    """

    @property
    def plateau_samples(self) -> int:
        """Samples one measured plateau averages now."""
        ...

    def set_plateau_samples(self, samples: int) -> None:
        """Average `samples` samples per plateau from the next `measure` on; ValueError (and
        nothing changed) when the instrument cannot."""
        ...


@runtime_checkable
class ProgrammableState(Protocol):
    """Non-volatile weights that change only through (noisy, bounded) pulses."""

    def apply_pulses(self, pulses: IntArray) -> None:
        """Apply signed pulse counts, one per weight (positive: potentiate)."""
        ...

    def read_state(self) -> FloatArray:
        """Read the weights back."""
        ...


@runtime_checkable
class NodePerturbable(Protocol):
    """A layered device that can offset its units' pre-activations and report each layer's input.

    The controls are the layers' weights W_l[i, j], layer by layer, row-major (i: the layer's
    input, j: its unit), so `layer_shapes` says which control is which weight.
    """

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """(n_in, n_out) of every layer, first to last."""
        ...

    @property
    def layer_gains(self) -> tuple[float, ...]:
        """∂(pre-activation)/∂(input · weight) of every layer, in offset units."""
        ...

    def measure_nodes(
        self, inputs: FloatArray, offsets: Sequence[FloatArray]
    ) -> tuple[FloatArray, tuple[FloatArray, ...]]:
        """`measure` with offsets[l] (n_cases × n_out_l, the device's own units) added to layer
        l's pre-activations; returns the outputs and what each layer received as input
        (n_cases × n_in_l per layer). Costs the same device time as `measure`."""
        ...


@runtime_checkable
class Demodulating(Protocol):
    """Sine dithers added to some controls, demodulated on one output by a hardware lock-in.

    A dither adds A·sin(2πft) to a control's DC level; for y ≈ y0 + (∂y/∂θ)·A·sin(2πft) the
    lock-in's X (rms) is (∂y/∂θ)·A/√2 and Y ≈ 0 up to the chain's phase lag, so one dither gives
    one partial derivative. Device time of one `demodulate`: the inputs' plateau (ramp and
    settle, as `measure`), then per group of at most `max_dithers()` dithers (a single-reference
    lock-in: one) the lock-in filter's settling (≈ 10 time constants at 24 dB/oct) and `reads`
    readings, each a settle apart so that they are independent.
    """

    def dither_channels(self) -> tuple[str, ...]:
        """The controls a dither can be added to."""
        ...

    def max_dithers(self) -> int:
        """How many dithers the lock-in can demodulate at once (on distinct frequencies)."""
        ...

    def demodulated_output(self) -> str:
        """The output channel the lock-in reads."""
        ...

    def demodulate(
        self, inputs: FloatArray, dithers: Mapping[str, tuple[float, float]], reads: int = 1
    ) -> FloatArray:
        """Hold the `inputs` row (one value per input) as a plateau, add each dither
        `control → (frequency Hz, amplitude peak)` to its control's DC level, and read the
        lock-in at each frequency. Returns len(dithers) × reads × 2: X and Y (rms, the output's
        units) per dither in the mapping's order. Every dither is off again afterwards."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """A device or component whose full state can go into a checkpoint and come back."""

    def state_dict(self) -> JSONDict: ...

    def load_state_dict(self, state: JSONDict) -> None: ...


@runtime_checkable
class Parking(Protocol):
    """A device (the safety guard) that can bring every driven channel to 0 within its limits."""

    def park(self) -> None:
        """Ramp every driven channel to 0 within its slew limit; costs device time if anything
        moves. Streams start at 0, so a protocol parks before streaming from DC levels."""
        ...


@runtime_checkable
class Converting(Protocol):
    """A device whose converters change what is asked for before it reaches the hardware.

    DACs round to their codes; a periphery may rescale rows digitally before its DAC. The guard
    checks what is really applied, so a request inside a limit cannot leave it after conversion.
    """

    def applied_levels(self, values: FloatArray, channels: Sequence[str]) -> FloatArray:
        """The levels the hardware puts on `channels` for the requested `values` (rows ×
        channels, one row per plateau or sample). Pure: measures and changes nothing."""
        ...


@runtime_checkable
class RestoreChecked(Protocol):
    """A Stateful device that says, before restoring, what a state would put on its channels."""

    def restored_levels(self, state: JSONDict) -> dict[str, float]:
        """The level `load_state_dict(state)` would leave on each driven channel it holds at a
        level (channels driven only during a measurement are omitted). Pure: applies nothing;
        raises ValueError for a state it could not load."""
        ...


@runtime_checkable
class Reconnecting(Protocol):
    """A device whose connection can be opened again after a fault (a dropped link, or a session
    a timeout left out of step with the instrument's replies)."""

    def reconnect(self) -> None:
        """Drop the session without sending anything and open it again, re-attached: identified
        and its settings read back (nothing written). Must not change what the outputs hold: the
        guard then ramps them to 0 from the last levels it sent."""
        ...


class Closing:
    """Context-manager behaviour of anything with a `close()`: leaving the block closes it."""

    def close(self) -> None:
        """Release resources; classes with connections override this."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Serving:
    """Context-manager behaviour of a server: entering starts it, leaving stops it."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class DeviceBase(Closing):
    """Context-manager behaviour shared by devices: leaving the block makes the device safe."""

    def safe_state(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.safe_state()
        finally:
            self.close()
