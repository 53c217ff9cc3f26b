"""The guard's observer hook and the traces.h5 writer/reader on simulators, without a run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from hil.config import RecordPolicy
from hil.core import SafetyViolation
from hil.data import open_traces
from hil.safety import SafetyGuard, SafetyLimits
from hil.safety.guard import DeviceRequest
from hil.traces import FINAL_STEP, FLAT_CHUNK, TRACES_SCHEMA, TraceWriter, rows_of, write_rows
from simulators.analog_mlp import AnalogMLPDevice
from simulators.analytic import AnalyticDevice
from simulators.crossbar import CrossbarDevice


def analytic() -> AnalyticDevice:
    settings = AnalyticDevice.Settings.model_validate(
        {
            "n_inputs": 2,
            "n_controls": 2,
            "max_slew": 1000.0,
            "timing": {"sample_rate": 1000.0, "ramp_time": 0.005, "samples_per_plateau": 2},
        }
    )
    return AnalyticDevice(settings, seed=0)


def guard_and_writer(
    tmp_path: Path, device: AnalyticDevice | CrossbarDevice | None = None, **policy: object
) -> tuple[SafetyGuard, TraceWriter]:
    guard = SafetyGuard(device or analytic(), SafetyLimits(max_abs_voltage=1.0))
    writer = TraceWriter(tmp_path / "traces.h5", RecordPolicy.model_validate(policy), guard.spec)
    writer.create("run-1", {"name": "unit", "seed": 1})
    writer.attach(guard)
    return guard, writer


def step(writer: TraceWriter, number: int, action: object) -> None:
    writer.recording(number, action)()  # type: ignore[arg-type]
    writer.write_step()


ROWS = np.array([[0.1, -0.1], [0.2, 0.0], [0.0, 0.0]])
WAVE = np.concatenate([np.linspace(0, 0.01, 6), np.linspace(0.01, 0, 6)])[:, np.newaxis]


def test_observers_see_each_successful_request_with_copies_and_the_clock() -> None:
    guard = SafetyGuard(analytic(), SafetyLimits(max_abs_voltage=1.0))
    seen: list[DeviceRequest] = []
    stop = guard.observe(seen.append)
    guard.set_controls(np.array([0.05, 0.0]))
    out = guard.measure(ROWS)
    with pytest.raises(SafetyViolation):
        guard.measure(np.array([[5.0, 0.0]]))  # refused: nothing sent, nothing observed
    assert [r.kind for r in seen] == ["set_controls", "measure"]
    assert seen[1].time == guard.clock.now()
    np.testing.assert_array_equal(seen[1].sent["inputs"], ROWS)
    np.testing.assert_array_equal(seen[1].sent["controls"], [0.05, 0.0])
    assert seen[1].received is out
    stop()
    guard.measure(ROWS)
    assert len(seen) == 2


def test_an_observer_that_raises_is_dropped_and_the_request_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = SafetyGuard(analytic(), SafetyLimits(max_abs_voltage=1.0))
    calls: list[str] = []

    def broken(request: DeviceRequest) -> None:
        calls.append(request.kind)
        raise RuntimeError("disk on fire")

    guard.observe(broken)
    with caplog.at_level(logging.ERROR, logger="hil.safety"):
        assert guard.measure(ROWS).shape == (3, 1)
        guard.measure(ROWS)
    assert calls == ["measure"]
    assert "observer of the guard failed" in caplog.text


def test_plateaus_and_streams_read_back_with_steps_times_and_channel_names(tmp_path: Path) -> None:
    guard, writer = guard_and_writer(tmp_path)
    answers = []
    for n in (1, 2):
        step(writer, n, lambda n=n: answers.append(guard.measure(ROWS * n)))
    step(writer, 3, lambda: answers.append(guard.stream(WAVE, ["in0"])))  # type: ignore[attr-defined]
    step(writer, FINAL_STEP, lambda: guard.measure(ROWS))
    traces = open_traces(tmp_path)
    assert traces.schema_version == TRACES_SCHEMA
    assert traces.config == {"name": "unit", "seed": 1}
    assert traces.channels == {
        "inputs": ("in0", "in1"),
        "outputs": ("out",),
        "controls": ("ctrl0", "ctrl1"),
    }
    p = traces.plateaus
    assert p.step.tolist() == [1, 1, 1, 2, 2, 2, -1, -1, -1]
    np.testing.assert_array_equal(p.at(2).columns["inputs"], ROWS * 2)
    np.testing.assert_array_equal(p.at(1).columns["outputs"], answers[0])
    np.testing.assert_array_equal(p.at(2).columns["outputs"], answers[1])
    assert np.all(np.diff(p.time[:6]) >= 0)
    s = traces.streams
    assert s.step.tolist() == [3]
    assert s.text["channels"] == ['["in0"]']
    np.testing.assert_array_equal(s.ragged["waveform"][0], WAVE)
    np.testing.assert_array_equal(s.ragged["received"][0], answers[2])
    with h5py.File(tmp_path / "traces.h5", "r") as f:
        inputs = f["plateaus/inputs"]
        assert inputs.compression == "gzip"
        assert inputs.chunks is not None
        assert inputs.maxshape == (None, 2)
        assert [str(c) for c in inputs.dims[1][0].asstr()[()]] == ["in0", "in1"]


def test_pulses_and_state_reads_are_recorded_on_a_crossbar(tmp_path: Path) -> None:
    device = CrossbarDevice(CrossbarDevice.Settings.model_validate({"rows": 3, "cols": 2}), seed=0)
    guard, writer = guard_and_writer(tmp_path, device)
    counts = np.array([[1, -2], [0, 3], [4, 0]])
    states = []

    def pulse_and_read() -> None:
        guard.apply_pulses(counts)  # type: ignore[attr-defined]
        states.append(guard.read_state())  # type: ignore[attr-defined]

    step(writer, 1, pulse_and_read)
    traces = open_traces(tmp_path)
    np.testing.assert_array_equal(traces.tables["pulses"].ragged["counts"][0], counts)
    np.testing.assert_array_equal(traces.tables["states"].ragged["state"][0], states[0])
    assert traces.tables["states"].step.tolist() == [1]


def test_reopen_drops_the_steps_after_the_checkpoint_and_appends_after_them(
    tmp_path: Path,
) -> None:
    guard, writer = guard_and_writer(tmp_path)
    for n in (1, 2, 3):
        step(writer, n, lambda: (guard.measure(ROWS), guard.stream(WAVE, ["in0"])))  # type: ignore[attr-defined]
    resumed = TraceWriter(writer.path, writer.policy, guard.spec)
    resumed.reopen(2, "run-1", {})  # step 3 was written, never checkpointed: done again
    resumed.attach(guard)
    step(resumed, 3, lambda: guard.stream(WAVE * 0.5, ["in0"]))  # type: ignore[attr-defined]
    traces = open_traces(tmp_path)
    assert traces.plateaus.step.tolist() == [1, 1, 1, 2, 2, 2]
    assert traces.streams.step.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(traces.streams.ragged["waveform"][2], WAVE * 0.5)
    with h5py.File(tmp_path / "traces.h5", "r") as f:  # each step starts a fresh chunk
        assert f["streams/waveform"].shape == (2 * FLAT_CHUNK + len(WAVE),)


def test_a_step_cut_short_by_a_kill_leaves_the_steps_before_it_readable(tmp_path: Path) -> None:
    """Every step writes only fresh chunks (earlier ones are never rewritten): garbage in the
    chunks of step 3, as a kill -9 between writing the chunk index and the chunk leaves them,
    costs step 3 only."""
    guard, writer = guard_and_writer(tmp_path)
    for n in (1, 2, 3):
        step(writer, n, lambda: (guard.measure(ROWS), guard.stream(WAVE, ["in0"])))  # type: ignore[attr-defined]
    damaged = []
    with h5py.File(writer.path, "r") as f:
        for name in ("plateaus/step", "plateaus/outputs", "streams/waveform"):
            dataset = f[name]
            start = 2 * dataset.chunks[0]  # the third step's first chunk
            info = dataset.id.get_chunk_info_by_coord((start, *[0] * (dataset.ndim - 1)))
            damaged.append((info.byte_offset, info.size))
    with writer.path.open("r+b") as raw:
        for offset, size in damaged:
            raw.seek(offset)
            raw.write(b"\xff" * size)
    traces = open_traces(tmp_path)
    assert traces.plateaus.step.tolist() == [1, 1, 1, 2, 2, 2]
    assert traces.streams.step.tolist() == [1, 2]
    np.testing.assert_array_equal(traces.streams.ragged["waveform"][1], WAVE)
    resumed = TraceWriter(writer.path, writer.policy, guard.spec)
    resumed.reopen(2, "run-1", {})  # the resume cuts the damaged step and records it again
    resumed.attach(guard)
    step(resumed, 3, lambda: guard.stream(WAVE * 0.5, ["in0"]))  # type: ignore[attr-defined]
    assert open_traces(tmp_path).streams.step.tolist() == [1, 2, 3]


def test_a_damaged_file_is_set_aside_at_resume(tmp_path: Path) -> None:
    guard, writer = guard_and_writer(tmp_path)
    writer.path.write_bytes(b"not hdf5")
    TraceWriter(writer.path, writer.policy, guard.spec).reopen(4, "run-1", {"a": 1})
    assert open_traces(tmp_path).config == {"a": 1}
    assert len(list(tmp_path.glob("traces.h5.damaged-*"))) == 1


def test_the_size_cap_stops_recording_once_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard, writer = guard_and_writer(tmp_path, max_mb=0.1)
    big = np.random.default_rng(0).uniform(-0.5, 0.5, (200, 2))
    with caplog.at_level(logging.WARNING, logger="hil.traces"):
        for n in range(1, 40):
            step(writer, n, lambda: guard.measure(big))
    traces = open_traces(tmp_path)
    assert traces.recording_stopped is not None
    assert "record.max_mb" in traces.recording_stopped
    assert writer.stopped == traces.recording_stopped
    assert caplog.text.count("recording stopped") == 1
    assert 0 < len(np.unique(traces.plateaus.step)) < 39
    assert (tmp_path / "traces.h5").stat().st_size <= 0.1 * 1_000_000


@pytest.mark.parametrize(("mode", "tables"), [("none", set()), ("plateaus", {"plateaus"})])
def test_record_modes(tmp_path: Path, mode: str, tables: set[str]) -> None:
    guard, writer = guard_and_writer(tmp_path, mode=mode)
    step(writer, 1, lambda: (guard.measure(ROWS), guard.stream(WAVE, ["in0"])))  # type: ignore[attr-defined]
    traces = open_traces(tmp_path)
    assert {name for name, table in traces.tables.items() if len(table)} == tables


def test_node_measurements_are_plateaus_and_demodulation_keeps_dithers_and_xy(
    tmp_path: Path,
) -> None:
    device = AnalogMLPDevice(AnalogMLPDevice.Settings(layers=[3, 4, 2]), seed=0)
    guard = SafetyGuard(device, SafetyLimits(max_abs_voltage=1.0))
    writer = TraceWriter(tmp_path / "traces.h5", RecordPolicy(), guard.spec)
    writer.create("run-1", {})
    writer.attach(guard)
    inputs = np.array([[1.0, 0.0, 2.0]])
    offsets = [np.zeros((1, n)) for _, n in guard.layer_shapes]  # type: ignore[attr-defined]
    answers = []
    step(writer, 1, lambda: answers.append(guard.measure_nodes(inputs, offsets)))  # type: ignore[attr-defined]
    xy = np.arange(8.0).reshape(2, 2, 2)  # 2 dithers × 2 reads × (X, Y)
    sent = {"inputs": inputs[0], "controls": np.zeros(0), "dithers": {"c0": (7.0, 0.01)}}
    with h5py.File(writer.path, "a") as f:
        write_rows(f, rows_of(2, 0, DeviceRequest("demodulate", sent, xy, 1.5)))
    traces = open_traces(tmp_path)
    np.testing.assert_array_equal(traces.plateaus.columns["inputs"], inputs)
    np.testing.assert_array_equal(traces.plateaus.columns["outputs"], answers[0][0])
    demod = traces.tables["demodulation"]
    assert demod.step.tolist() == [2]
    assert demod.time.tolist() == [1.5]
    assert demod.text["dithers"] == ['{"c0": [7.0, 0.01]}']
    np.testing.assert_array_equal(demod.ragged["xy"][0], xy)
    assert "controls" not in demod.columns  # no control channels: no column


def test_a_nearly_full_disk_stops_recording_without_touching_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HDF5 must not meet a full disk (a failed write can crash the next one): below the
    reserve kept for the journal and checkpoint, recording stops and the file is left as is."""
    guard, writer = guard_and_writer(tmp_path)
    step(writer, 1, lambda: guard.measure(ROWS))
    before = (tmp_path / "traces.h5").read_bytes()
    real = shutil.disk_usage

    def nearly_full(path: str | Path) -> shutil._ntuple_diskusage:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1_000_000, 1_000_000)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    step(writer, 2, lambda: guard.measure(ROWS))
    assert writer.stopped is not None
    assert "MB free" in writer.stopped
    assert (tmp_path / "traces.h5").read_bytes() == before
    assert list(np.unique(open_traces(tmp_path).plateaus.step)) == [1]
