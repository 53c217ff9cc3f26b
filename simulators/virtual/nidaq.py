"""A FAKE of the `nidaqmx` package (NI-DAQmx Python API ≥ 1.0), backed by a streaming simulator.

NI hardware and the NI-DAQmx driver cannot exist in CI, so this module stands in for them: it is
NOT NI's code and not an emulation of a particular card. It offers the part of the API a
synchronised finite AO/AI stream uses — `Task(new_task_name)`, `ao_channels.add_ao_voltage_chan`,
`ai_channels.add_ai_voltage_chan`, `timing.cfg_samp_clk_timing`,
`triggers.start_trigger.cfg_dig_edge_start_trig`, `write`, `start`, `read`, `wait_until_done`,
`stop`, `close`, `out_stream.total_samp_per_chan_generated` — with NI's names, keyword arguments,
enum values and error classes (`errors.Error`, `DaqNotFoundError`, and `DaqError` / `DaqReadError`
/ `DaqWriteError` carrying real DAQmx error codes), and:

- records every call as `Call(name, args, kwargs)` in `FakeNidaqmx.calls` (arrays as lists), so a
  test compares the whole sequence with an expected list;
- checks the API is used as DAQmx requires (channels exist, no reconfiguring a running task, a
  buffer written before an AO start, a read only on a running task and never more samples than
  configured, a start-trigger source that exists, nothing used after close) and raises the DAQmx
  error a card would;
- plays the AO buffer through a `Streaming` simulator when the AI start trigger fires: physical
  AO channels map to simulator channels, AI channels read simulator outputs scaled back to volts
  through a transimpedance (V per output unit), an optional inversion and an AI offset (so offset
  correction is testable), clipped to the AI range as an ADC would.

What the card holds between tasks is the simulator's state: every driven channel keeps its last
sample. Timing is not emulated: a finite acquisition is complete as soon as the AI task starts.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from hil.core import FloatArray, Streaming

# DAQmx error codes (NI-DAQmx C API, DAQmxErrors) the fake raises.
INVALID_TASK = -200088
PHYSICAL_CHAN_DOES_NOT_EXIST = -200170
INVALID_TERM = -200254
SAMPLES_WILL_NEVER_BE_AVAILABLE = -200278
SAMPLES_NOT_YET_AVAILABLE = -200284
OUTPUT_BUFFER_EMPTY = -200462
CANNOT_READ_TASK_NOT_RUNNING = -200473
CAN_NOT_PERFORM_OP_WHILE_TASK_RUNNING = -200479
CHAN_ALREADY_IN_TASK = -200489
SAMPLE_VALUE_OUT_OF_RANGE = -200490
WRITE_NUM_CHANS_MISMATCH = -200524
WAIT_UNTIL_DONE_DOES_NOT_INDICATE_DONE = -200560
INVALID_NUM_SAMPS_TO_WRITE = -200622
DEVICE_REMOVED = -200045
NO_CHANS_IN_TASK = -200478


class AcquisitionType(Enum):
    FINITE = 10178
    CONTINUOUS = 10123
    HW_TIMED_SINGLE_POINT = 12522


class TerminalConfiguration(Enum):
    DEFAULT = -1
    RSE = 10083
    NRSE = 10078
    DIFF = 10106
    PSEUDO_DIFF = 12529


class Edge(Enum):
    RISING = 10280
    FALLING = 10171


class VoltageUnits(Enum):
    VOLTS = 10348


READ_ALL_AVAILABLE = -1


class Error(Exception):
    """nidaqmx.errors.Error: the base of the package's errors."""


class DaqNotFoundError(Error):
    """nidaqmx.errors.DaqNotFoundError: the NI-DAQmx driver is not installed."""


class DaqError(Error):
    """nidaqmx.errors.DaqError: message, error_code, optional task name."""

    def __init__(self, message: str, error_code: int, task_name: str = "") -> None:
        if task_name:
            message = f"{message}\n\nTask Name: {task_name}"
        super().__init__(message)
        self.error_code = int(error_code)


class DaqReadError(DaqError):
    """nidaqmx.errors.DaqReadError: a failed read, with the samples read per channel."""

    def __init__(
        self, message: str, error_code: int, samps_per_chan_read: int, task_name: str = ""
    ) -> None:
        super().__init__(message, error_code, task_name)
        self.samps_per_chan_read = samps_per_chan_read


class DaqWriteError(DaqError):
    """nidaqmx.errors.DaqWriteError: a failed write, with the samples written per channel."""

    def __init__(
        self, message: str, error_code: int, samps_per_chan_written: int, task_name: str = ""
    ) -> None:
        super().__init__(message, error_code, task_name)
        self.samps_per_chan_written = samps_per_chan_written


class FakeLimitation(Exception):
    """A use the fake does not emulate (e.g. AO and AI at different rates); not a DAQmx error."""


class Call(NamedTuple):
    """One recorded API call: `task.attribute.method` (or `Task`), positional and keyword args."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class AIReadout:
    """How one physical AI channel reads the simulator: output column `output`, volts per output
    unit (a transimpedance), optional inversion, and an offset in volts added at the input."""

    output: int
    volts_per_unit: float
    inverted: bool = False
    offset: float = 0.0


@dataclass
class _Fault:
    method: str
    code: int
    task: str | None
    generated: int | None


@dataclass
class _Channel:
    physical: str
    min_val: float
    max_val: float
    terminal: TerminalConfiguration | None = None


@dataclass
class _TaskState:
    name: str
    ao: list[_Channel] = field(default_factory=list)
    ai: list[_Channel] = field(default_factory=list)
    rate: float | None = None
    samples: int | None = None
    trigger: str | None = None
    buffer: FloatArray | None = None
    running: bool = False
    closed: bool = False
    generated: int = 0
    acquired: FloatArray | None = None
    read_pos: int = 0


class FakeNidaqmx:
    """The fake `nidaqmx` module: pass it as `nidaqmx_module` to the driver.

    `ao_map`: physical AO channel ("Dev1/ao0") → simulator channel name; `ai_map`: physical AI
    channel → `AIReadout`. `devices` are the device names whose terminals exist.
    """

    def __init__(
        self,
        simulator: Streaming,
        ao_map: dict[str, str],
        ai_map: dict[str, AIReadout],
        devices: tuple[str, ...] = ("Dev1",),
    ) -> None:
        self.simulator = simulator
        self.ao_map = dict(ao_map)
        self.ai_map = dict(ai_map)
        self.devices = devices
        self.calls: list[Call] = []
        self.tasks: list[FakeTask] = []
        self._faults: list[_Fault] = []
        self.constants = SimpleNamespace(
            AcquisitionType=AcquisitionType,
            TerminalConfiguration=TerminalConfiguration,
            Edge=Edge,
            VoltageUnits=VoltageUnits,
            READ_ALL_AVAILABLE=READ_ALL_AVAILABLE,
        )
        self.errors = SimpleNamespace(
            Error=Error,
            DaqNotFoundError=DaqNotFoundError,
            DaqError=DaqError,
            DaqReadError=DaqReadError,
            DaqWriteError=DaqWriteError,
        )
        self.Task = partial(FakeTask, self)

    def fail_next(
        self, method: str, code: int, *, task: str | None = None, generated: int | None = None
    ) -> None:
        """Make the next call of `method` (e.g. "read", "start") raise DAQmx error `code`.

        `generated`: how many AO samples the card had put out when the fault struck (default:
        as many as the fake had played).
        """
        self._faults.append(_Fault(method, code, task, generated))

    @property
    def open_tasks(self) -> list[str]:
        """Names of tasks not closed."""
        return [t.state.name for t in self.tasks if not t.state.closed]

    def record(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.calls.append(Call(name, _plain(args), {k: _plain(v) for k, v in kwargs.items()}))

    def take_fault(self, task: FakeTask, method: str) -> _Fault | None:
        for fault in self._faults:
            if fault.method == method and fault.task in (None, task.state.name):
                self._faults.remove(fault)
                return fault
        return None

    def terminals(self) -> set[str]:
        """Start-trigger sources that exist: each device's AI and AO start triggers and PFIs."""
        names = set()
        for dev in self.devices:
            names |= {f"/{dev}/ai/StartTrigger", f"/{dev}/ao/StartTrigger"}
            names |= {f"/{dev}/PFI{i}" for i in range(16)}
        return names

    def fire(self, ai: FakeTask) -> None:
        """The AI task started: its start trigger fires, armed AO tasks play, AI acquires."""
        s = ai.state
        assert s.rate is not None
        assert s.samples is not None
        source = f"/{ai.device}/ai/StartTrigger"
        armed = [
            t
            for t in self.tasks
            if t.state.running
            and t.state.ao
            and t.state.trigger == source
            and not t.state.generated
        ]
        if len(armed) > 1:
            raise FakeLimitation("the fake plays one AO task per AI start trigger")
        rate = getattr(getattr(self.simulator, "spec", None), "sample_rate", None)
        if rate is not None and not math.isclose(rate, s.rate):
            raise FakeLimitation(
                f"the AI rate {s.rate} Hz differs from the simulator's {rate} Hz sample rate"
            )
        if armed:
            ao = armed[0].state
            if ao.rate != s.rate or ao.samples != s.samples:
                raise FakeLimitation(
                    "the fake needs AO and AI at the same rate and sample count, got "
                    f"AO {ao.rate} Hz × {ao.samples}, AI {s.rate} Hz × {s.samples}"
                )
            assert ao.buffer is not None
            names = [self.ao_map[c.physical] for c in ao.ao]
            outputs = self.simulator.stream(ao.buffer, names)
            ao.generated = ao.buffer.shape[0]
        else:  # no AO follows this trigger: the card holds its levels while AI samples
            outputs = self.simulator.stream(np.zeros((s.samples, 0)), [])
        volts = np.empty((s.samples, len(s.ai)))
        for j, chan in enumerate(s.ai):
            r = self.ai_map[chan.physical]
            sign = -1.0 if r.inverted else 1.0
            v = sign * outputs[:, r.output] * r.volts_per_unit + r.offset
            volts[:, j] = np.clip(v, chan.min_val, chan.max_val)
        s.acquired = volts
        s.read_pos = 0


class FakeTask:
    """A fake `nidaqmx.Task`: attribute paths as in nidaqmx (task.ao_channels, task.timing …)."""

    def __init__(self, module: FakeNidaqmx, new_task_name: str = "") -> None:
        self._module = module
        module.record("Task", (new_task_name,), {})
        self.state = _TaskState(new_task_name or f"_unnamedTask<{len(module.tasks)}>")
        module.tasks.append(self)
        self.ao_channels = SimpleNamespace(add_ao_voltage_chan=self._add_ao)
        self.ai_channels = SimpleNamespace(add_ai_voltage_chan=self._add_ai)
        self.timing = SimpleNamespace(cfg_samp_clk_timing=self._timing)
        self.triggers = SimpleNamespace(
            start_trigger=SimpleNamespace(cfg_dig_edge_start_trig=self._trigger)
        )
        self.out_stream = _OutStream(self)

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def device(self) -> str:
        chans = self.state.ai or self.state.ao
        return chans[0].physical.split("/")[0] if chans else ""

    # -- configuration ----------------------------------------------------------------------

    def _add_ao(self, *args: Any, **kwargs: Any) -> None:
        a = self._enter("ao_channels.add_ao_voltage_chan", _add_ao_voltage_chan, args, kwargs)
        self._check_configurable()
        self._check_channel(a["physical_channel"], self._module.ao_map, self.state.ao)
        self.state.ao.append(_Channel(a["physical_channel"], a["min_val"], a["max_val"]))

    def _add_ai(self, *args: Any, **kwargs: Any) -> None:
        a = self._enter("ai_channels.add_ai_voltage_chan", _add_ai_voltage_chan, args, kwargs)
        self._check_configurable()
        self._check_channel(a["physical_channel"], self._module.ai_map, self.state.ai)
        terminal = a["terminal_config"]
        if not isinstance(terminal, TerminalConfiguration):
            raise TypeError(f"terminal_config must be a TerminalConfiguration, not {terminal!r}")
        self.state.ai.append(_Channel(a["physical_channel"], a["min_val"], a["max_val"], terminal))

    def _timing(self, *args: Any, **kwargs: Any) -> None:
        a = self._enter("timing.cfg_samp_clk_timing", _cfg_samp_clk_timing, args, kwargs)
        self._check_configurable()
        if a["sample_mode"] is not AcquisitionType.FINITE:
            raise FakeLimitation(
                f"the fake emulates finite acquisitions only, not {a['sample_mode']}"
            )
        if a["source"]:
            raise FakeLimitation(f"the fake has only the onboard sample clock, not {a['source']!r}")
        self.state.rate = float(a["rate"])
        self.state.samples = int(a["samps_per_chan"])

    def _trigger(self, *args: Any, **kwargs: Any) -> None:
        name = "triggers.start_trigger.cfg_dig_edge_start_trig"
        a = self._enter(name, _cfg_dig_edge_start_trig, args, kwargs)
        self._check_configurable()
        source = a["trigger_source"]
        if source not in self._module.terminals():
            raise DaqError(
                f"Source terminal {source!r} cannot be found on the device", INVALID_TERM, self.name
            )
        self.state.trigger = source

    # -- running ----------------------------------------------------------------------------

    def write(self, *args: Any, **kwargs: Any) -> int:
        a = self._enter("write", _write, args, kwargs)
        s = self.state
        self._check_configurable()
        if not s.ao:
            raise DaqWriteError("Write cannot be performed: no output channels", -200459, 0, s.name)
        arr = np.array(a["data"], dtype=float)
        arr = arr[np.newaxis, :] if arr.ndim == 1 else arr
        if arr.ndim != 2 or arr.shape[0] != len(s.ao):
            raise DaqWriteError(
                f"data has {arr.shape[0]} channels, the task {len(s.ao)}",
                WRITE_NUM_CHANS_MISMATCH,
                0,
                s.name,
            )
        if s.samples is None or arr.shape[1] != s.samples:
            raise DaqWriteError(
                f"{arr.shape[1]} samples written, the finite task is set to {s.samples}",
                INVALID_NUM_SAMPS_TO_WRITE,
                0,
                s.name,
            )
        for j, chan in enumerate(s.ao):
            bad = (arr[j] < chan.min_val) | (arr[j] > chan.max_val) | ~np.isfinite(arr[j])
            if bad.any():
                raise DaqWriteError(
                    f"{chan.physical}: sample {arr[j][bad][0]} outside "
                    f"[{chan.min_val}, {chan.max_val}] V",
                    SAMPLE_VALUE_OUT_OF_RANGE,
                    0,
                    s.name,
                )
        s.buffer = arr.T.copy()
        if a["auto_start"] is True:
            self.start()
        return int(arr.shape[1])

    def start(self, *args: Any, **kwargs: Any) -> None:
        self._enter("start", _no_arguments, args, kwargs)
        s = self.state
        if s.running:
            raise DaqError("Task is already running", CAN_NOT_PERFORM_OP_WHILE_TASK_RUNNING, s.name)
        if s.rate is None or not (s.ao or s.ai):
            raise DaqError("Task has no channels or no timing", NO_CHANS_IN_TASK, s.name)
        if s.ao and s.buffer is None:
            raise DaqError(
                "Generation cannot be started because the output buffer is empty",
                OUTPUT_BUFFER_EMPTY,
                s.name,
            )
        s.running = True
        s.generated = 0
        if s.ai:
            self._module.fire(self)

    def read(self, *args: Any, **kwargs: Any) -> Any:
        a = self._enter("read", _read, args, kwargs)
        s = self.state
        if not s.running or s.acquired is None:
            raise DaqReadError(
                "Cannot read: the task is not running", CANNOT_READ_TASK_NOT_RUNNING, 0, s.name
            )
        n = a["number_of_samples_per_channel"]
        left = s.acquired.shape[0] - s.read_pos
        if n == READ_ALL_AVAILABLE:
            n = left
        if n > left:
            raise DaqReadError(
                f"{n} samples requested, only {left} will ever be acquired",
                SAMPLES_WILL_NEVER_BE_AVAILABLE,
                0,
                s.name,
            )
        block = s.acquired[s.read_pos : s.read_pos + n]
        s.read_pos += n
        columns = [block[:, j].tolist() for j in range(block.shape[1])]
        return columns[0] if len(columns) == 1 else columns

    def wait_until_done(self, *args: Any, **kwargs: Any) -> None:
        self._enter("wait_until_done", _wait_until_done, args, kwargs)
        s = self.state
        if s.running and s.ao and not s.generated:
            raise DaqError(
                "Wait Until Done did not indicate done: the generation never started "
                "(its start trigger did not fire)",
                WAIT_UNTIL_DONE_DOES_NOT_INDICATE_DONE,
                s.name,
            )

    def stop(self, *args: Any, **kwargs: Any) -> None:
        self._enter("stop", _no_arguments, args, kwargs)
        self.state.running = False

    def close(self, *args: Any, **kwargs: Any) -> None:
        """Clear the task; closing twice is allowed (nidaqmx only warns)."""
        self._module.record(f"{self.name}.close", args, kwargs)
        inspect.signature(_no_arguments).bind(*args, **kwargs)
        self.state.running = False
        self.state.closed = True

    # -- helpers ----------------------------------------------------------------------------

    def _enter(
        self, method: str, signature: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """Record the call as made, check its arguments against nidaqmx's signature, refuse a
        closed task, raise an injected fault; returns every argument by name (defaults filled)."""
        self._module.record(f"{self.name}.{method}", args, kwargs)
        bound = inspect.signature(signature).bind(*args, **kwargs)
        bound.apply_defaults()
        if self.state.closed:
            raise DaqError("Task specified is invalid or does not exist", INVALID_TASK, self.name)
        fault = self._module.take_fault(self, method.rsplit(".", 1)[-1])
        if fault is not None:
            if fault.generated is not None:
                for task in self._module.tasks:
                    if task.state.ao and task.state.running:
                        task.state.generated = fault.generated
            message = f"injected fault in {method}"
            if method == "read":
                raise DaqReadError(message, fault.code, 0, self.name)
            if method == "write":
                raise DaqWriteError(message, fault.code, 0, self.name)
            raise DaqError(message, fault.code, self.name)
        return dict(bound.arguments)

    def _check_configurable(self) -> None:
        if self.state.running:
            raise DaqError(
                "Cannot change a running task", CAN_NOT_PERFORM_OP_WHILE_TASK_RUNNING, self.name
            )

    def _check_channel(self, physical: str, known: dict[str, Any], present: list[_Channel]) -> None:
        if physical not in known:
            raise DaqError(
                f"Physical channel {physical!r} does not exist",
                PHYSICAL_CHAN_DOES_NOT_EXIST,
                self.name,
            )
        if any(c.physical == physical for c in present):
            raise DaqError(f"{physical!r} is already in the task", CHAN_ALREADY_IN_TASK, self.name)


class _OutStream:
    """task.out_stream: how many samples per channel the generation has put out."""

    def __init__(self, task: FakeTask) -> None:
        self._task = task

    @property
    def total_samp_per_chan_generated(self) -> int:
        self._task._enter("out_stream.total_samp_per_chan_generated", _no_arguments, (), {})
        return self._task.state.generated


# nidaqmx's signatures (names and defaults) the fake binds every call against.
def _add_ao_voltage_chan(
    physical_channel: str,
    name_to_assign_to_channel: str = "",
    min_val: float = -10.0,
    max_val: float = 10.0,
    units: VoltageUnits = VoltageUnits.VOLTS,
    custom_scale_name: str = "",
) -> None: ...


def _add_ai_voltage_chan(
    physical_channel: str,
    name_to_assign_to_channel: str = "",
    terminal_config: TerminalConfiguration = TerminalConfiguration.DEFAULT,
    min_val: float = -5.0,
    max_val: float = 5.0,
    units: VoltageUnits = VoltageUnits.VOLTS,
    custom_scale_name: str = "",
) -> None: ...


def _cfg_samp_clk_timing(
    rate: float,
    source: str = "",
    active_edge: Edge = Edge.RISING,
    sample_mode: AcquisitionType = AcquisitionType.FINITE,
    samps_per_chan: int = 1000,
) -> None: ...


def _cfg_dig_edge_start_trig(trigger_source: str, trigger_edge: Edge = Edge.RISING) -> None: ...


def _write(data: Any, auto_start: Any = None, timeout: float = 10.0) -> None: ...


def _read(number_of_samples_per_channel: int = 1, timeout: float = 10.0) -> None: ...


def _wait_until_done(timeout: float = 10.0) -> None: ...


def _no_arguments() -> None: ...


def _plain(value: Any) -> Any:
    """Arrays as nested lists, so recorded calls compare with plain expected values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value
