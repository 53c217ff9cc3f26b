"""Benchmark what the driver layer costs, against raw pyvisa on the same loopback server, same run.

- **Per query**: the same messages to the same virtual instrument (`simulators.virtual`, on
  127.0.0.1) sent (a) by a raw pyvisa-py `query` loop, (b) by PyMeasure's instrument call, (c) by
  our driver's call (Transcript, retry wrapper, fault translation, parsing, checks): the 2400's
  `:READ?` (`Keithley2400Channel.read`) and `*OPC?` (`sync`), the 2600's
  `print(smua.measure.i())`, the SR830's `SNAP? 1,2` and `LIAS?` (`SR830LockIn.read_xy` checks
  the latched status after each reading, so every variant sends both), the DAQ board's `READ?`
  of one ASCII sample (`ScpiDaqBoard.read`; "PyMeasure" is our PyMeasure-style `ScpiDaq` without
  the safety layer: PyMeasure ships no such board). Variants are interleaved call by call (A B C,
  B C A, ...) so machine noise hits all equally. Reported: median µs per call and IQR; ratio and
  overhead (µs) to raw as medians of the same-round ratios and differences, which a drifting
  load cannot bias (the JSON also has those of the medians); the server's own µs per call (inside
  the emulation's `execute`), which every variant pays; the client thread's CPU µs per call.
- **Training step**: one SPSA + Adam step of `configs/dnpu-virtual.yaml` (eight virtual 2400s over
  TCP in front of the DNPU simulator) against the same experiment on that simulator in process,
  steps interleaved. The servers count and time every message by command: a step's round trips
  (queries), one-way writes and the servers' own time (mostly the simulator, run one plateau per
  `:READ?` instead of in batches) are shown next to its wall time.
- **Binary block**: 1e5 float64 samples from the virtual DAQ board as an IEEE 488.2 `REAL,64`
  block (`SAMP:COUN 100000`, one `READ?`, then `FETC?` resends it): raw pyvisa
  `query_binary_values` against `ScpiDaqBoard.read` (which checks every sample for overload and
  averages), whose `READ?` goes out as `FETC?` so no variant pays for an acquisition; the same
  in ASCII for contrast. MB/s counts the 0.8 MB float64 payload in both formats.

Caveats: loopback TCP; Python servers in the same process (sharing the GIL with the client). The
server's cost is in every variant equally, so absolute numbers differ on a real bus (GPIB, USB-TMC,
an instrument that takes ms to measure); the ratios and the overhead in µs carry over. The machine
is shared: the load average is recorded, and the client's CPU time varies far less than wall time.
Prints tables; writes bench/results/drivers.json (settings, machine, versions, every raw number).

    .venv/bin/python -m bench.drivers [--rounds N] [--steps N] [--block-rounds N]
"""

from __future__ import annotations

import os
import sys

if not __package__:  # run as a file: this folder would shadow the `drivers` package
    sys.path[:] = [p for p in sys.path if os.path.abspath(p) != os.path.dirname(__file__)]

import argparse
import contextlib
import json
import re
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pyvisa
from pymeasure.instruments import keithley, srs
from pyvisa.resources import MessageBasedResource
from rich.console import Console
from rich.table import Table

from drivers.keithley import (
    Keithley2400Channel,
    Keithley2400Settings,
    Keithley2600Channel,
    Keithley2600Settings,
)
from drivers.lockin import SR830LockIn, SR830Settings
from drivers.scpi_daq import ScpiDaq, ScpiDaqBoard, ScpiDaqSettings
from hil.build import build_run
from hil.config import ResolvedExperiment, load_experiment, resolve_experiment
from hil.core import Channel, DeviceBase, DeviceSpec, FloatArray, Role, VirtualClock
from hil.provenance import environment
from hil.virtual import serve_station
from hil.yamlfile import YamlDocument
from simulators.virtual.awg import SineSource
from simulators.virtual.backplane import Backplane
from simulators.virtual.keithley2400 import Keithley2400
from simulators.virtual.keithley2600 import Keithley2600
from simulators.virtual.loads import Resistor
from simulators.virtual.lockin import SR830
from simulators.virtual.scpi import ScpiDevice
from simulators.virtual.scpi_daq import ScpiDaq as VirtualDaq
from simulators.virtual.scpi_daq import Wire
from simulators.virtual.server import ScpiServer
from simulators.virtual.station import VirtualStation

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dnpu-virtual.yaml"
RESULTS = ROOT / "bench" / "results" / "drivers.json"
TIMEOUT = 5.0  # s per VISA operation: nothing here may hang
WARMUP = 50  # untimed calls of every variant first
BLOCK_SAMPLES = 100_000
LEVEL = 0.5  # V on the SMUs while they are read (1 MΩ: 0.5 µA)
FLAT = 0.25  # V, every sample of the virtual DAQ board

Timings = dict[str, list[float]]


class Flat(DeviceBase):
    """A device whose one output is always `FLAT`: a DAQ reading costs the server only its
    command handling and encoding, not a simulator (1e5 samples are read once)."""

    def __init__(self) -> None:
        x, y = (
            Channel(name="x", role=Role.INPUT, min=-1, max=1),
            Channel(name="y", role=Role.OUTPUT),
        )
        self.spec = DeviceSpec(name="flat", channels=(x, y))
        self.clock = VirtualClock()

    def set_controls(self, values: FloatArray) -> None:
        """No controls."""

    def measure(self, inputs: FloatArray) -> FloatArray:
        return np.full((len(inputs), 1), FLAT)

    def safe_state(self) -> None:
        """Nothing is driven."""


def interleaved(
    variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = WARMUP
) -> tuple[Timings, Timings]:
    """Wall and client-thread CPU µs per call of each variant, after `warmup` untimed calls of
    each; each round calls every variant once, the order rotated (A B C, B C A, C A B, ...).

    The thread's CPU time is the client's own work: it excludes waiting on the socket and the
    servers' threads, so it varies far less than wall time with the load on a shared machine.
    """
    for call in variants.values():
        for _ in range(warmup):
            call()
    names = list(variants)
    wall: Timings = {name: [] for name in names}
    cpu: Timings = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            call = variants[name]
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            call()
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            wall[name].append((t1 - t0) / 1e3)
            cpu[name].append((c1 - c0) / 1e3)
    return wall, cpu


def compared(timings: Timings, baseline: Callable[[str], str]) -> dict[str, dict[str, float]]:
    """`stats` of every variant, against the variant `baseline(name)` names (none for itself)."""
    return {
        name: stats(samples, None if baseline(name) == name else timings[baseline(name)])
        for name, samples in timings.items()
    }


def rounded(timings: Timings) -> Timings:
    """Raw samples to 0.1 µs, for the JSON."""
    return {name: [round(v, 1) for v in samples] for name, samples in timings.items()}


def stats(samples: list[float], baseline: list[float] | None = None) -> dict[str, float]:
    """Median, quartiles and IQR; with a baseline (timed in the same rounds), the ratio of the
    medians and their difference, and the medians of the same-round ratios and differences."""
    q1, median, q3 = (float(v) for v in np.percentile(samples, [25, 50, 75]))
    result = {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1}
    if baseline is not None:
        base = float(np.median(baseline))
        a, b = np.asarray(samples), np.asarray(baseline)
        result |= {
            "ratio_to_raw": median / base,
            "overhead": median - base,
            "ratio_paired": float(np.median(a / b)),  # same-round ratios: robust to load drift
            "paired": float(np.median(a - b)),  # same-round differences
        }
    return result


def raw_session(rm: pyvisa.ResourceManager, address: str) -> MessageBasedResource:
    """A plain pyvisa-py session with the terminations and timeout the drivers use."""
    ms = int(TIMEOUT * 1000)
    inst = rm.open_resource(address, read_termination="\n", write_termination="\n", timeout=ms)
    assert isinstance(inst, MessageBasedResource)
    return inst


def common(address: str, name: str) -> dict[str, Any]:
    """Station-file keys every driver here shares: loopback over pyvisa-py, bounded I/O."""
    return {"name": name, "address": address, "visa_library": "@py", "timeout": TIMEOUT}


class MessageCounter:
    """Counts the messages a virtual instrument receives by command, the time it spends on
    each command (inside `execute`: the emulation and any simulator behind it), and replies."""

    def __init__(self) -> None:
        self.commands: Counter[str] = Counter()
        self.busy: defaultdict[str, float] = defaultdict(float)  # µs by command
        self.replies = 0

    @property
    def busy_us(self) -> float:
        return sum(self.busy.values())

    def attach(self, device: ScpiDevice) -> MessageCounter:
        """Count every message `device` executes from now on (its server calls `execute`)."""
        execute = device.execute

        def counted(message: str) -> str | bytes | None:
            t0 = time.perf_counter_ns()
            reply = execute(message)
            command = message.split(" ", 1)[0]
            self.busy[command] += (time.perf_counter_ns() - t0) / 1e3
            self.commands[command] += 1
            self.replies += reply is not None
            return reply

        setattr(device, "execute", counted)  # noqa: B010 (an instance attribute shadows the method)
        return self

    def snapshot(self) -> tuple[Counter[str], dict[str, float], int]:
        return Counter(self.commands), dict(self.busy), self.replies


@dataclass
class Case:
    """One query (or fixed sequence) sent three ways."""

    name: str
    messages: list[str]  # what each call puts on the wire, in order (all are queries)
    variants: dict[str, Callable[[], object]]
    server: MessageCounter  # the instrument's: its own time per message


@contextlib.contextmanager
def per_query_cases() -> Iterator[list[Case]]:
    """The virtual instruments, their raw, PyMeasure and driver sessions; safe on every exit."""
    devices: dict[str, ScpiDevice] = {
        "k2400": Keithley2400(Resistor(1e6)),
        "k2600": Keithley2600(Resistor(1e6), Resistor(1e6)),
        "sr830": SR830(SineSource(seed=1)),
        "daq": VirtualDaq(Backplane(Flat()), {}, {101: Wire("y")}, n_ao=1, n_ai=1),
    }
    counters = {name: MessageCounter().attach(device) for name, device in devices.items()}
    with contextlib.ExitStack() as stack:
        addr = stack.enter_context(VirtualStation(devices)).addresses
        rm = pyvisa.ResourceManager("@py")
        stack.callback(rm.close)

        def sessions(driver: Any, pymeasure: Callable[..., Any]) -> tuple[Any, Any, Any]:
            """Connect `driver` (made safe on exit) and open a PyMeasure and a raw session."""
            driver.connect()
            stack.callback(driver.close)  # SMUs: ramp to 0 V, output off
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # the 2600: "not known if SCPI"
                pm = pymeasure(driver.settings.address, **driver.settings.adapter_kwargs())
            stack.callback(pm.adapter.close)
            raw = raw_session(rm, driver.settings.address)
            stack.callback(raw.close)
            return driver, pm, raw

        smu = {"compliance_current": 1e-5, "source_range": 2.0, "nplc": 0.1, "max_slew": 10.0}
        k2400, pm2400, raw2400 = sessions(
            Keithley2400Channel(Keithley2400Settings(**common(addr["k2400"], "k2400"), **smu)),
            keithley.Keithley2400,
        )
        k2600, pm2600, raw2600 = sessions(
            Keithley2600Channel(Keithley2600Settings(**common(addr["k2600"], "k2600"), **smu)),
            keithley.Keithley2600,
        )
        for channel in (k2400, k2600):
            channel.set_level(LEVEL)
            channel.enable()
        lockin_settings = SR830Settings(
            **common(addr["sr830"], "sr830"),
            sensitivity=1e-3,
            time_constant=0.1,
            reference="internal",
        )
        lockin, pm830, raw830 = sessions(SR830LockIn(lockin_settings), srs.SR830)
        board_settings = ScpiDaqSettings(
            **common(addr["daq"], "daq"), ao={}, ai={101: 1.0}, data_format="ascii"
        )
        board, pmdaq, rawdaq = sessions(ScpiDaqBoard(board_settings), partial(ScpiDaq, ai=[101]))

        def raw_lockin() -> object:
            return raw830.query("SNAP? 1,2"), raw830.query("LIAS?")

        def pm_lockin() -> object:
            return pm830.snap("X", "Y"), pm830.lia_status

        measure_i = "print(smua.measure.i())"
        yield [
            Case(
                "2400 :READ?",
                [":READ?"],
                {
                    "raw": lambda: raw2400.query(":READ?"),
                    "pymeasure": lambda: pm2400.values(":READ?"),
                    "driver": k2400.read,
                },
                counters["k2400"],
            ),
            Case(
                "2400 *OPC?",
                ["*OPC?"],
                {
                    "raw": lambda: raw2400.query("*OPC?"),
                    "pymeasure": lambda: pm2400.complete,
                    "driver": k2400.sync,
                },
                counters["k2400"],
            ),
            Case(
                "2600 measure.i",
                [measure_i],
                {
                    "raw": lambda: raw2600.query(measure_i),
                    "pymeasure": lambda: pm2600.ChA.current,
                    "driver": k2600.read,
                },
                counters["k2600"],
            ),
            Case(
                "SR830 SNAP?+LIAS?",
                ["SNAP? 1,2", "LIAS?"],
                {"raw": raw_lockin, "pymeasure": pm_lockin, "driver": lockin.read_xy},
                counters["sr830"],
            ),
            Case(
                "DAQ READ?",
                ["READ?"],
                {
                    "raw": lambda: rawdaq.query("READ?"),
                    "pymeasure": lambda: pmdaq.read_voltages(False),
                    "driver": board.read,
                },
                counters["daq"],
            ),
        ]


def per_query(rounds: int) -> list[dict[str, Any]]:
    """Every case's timings and statistics."""
    results = []
    with per_query_cases() as cases:
        for case in cases:
            busy, replies = case.server.busy_us, case.server.replies
            wall, cpu = interleaved(case.variants, rounds)
            server = (case.server.busy_us - busy) / (case.server.replies - replies)
            results.append(
                {
                    "case": case.name,
                    "messages": case.messages,
                    "round_trips_per_call": len(case.messages),
                    "server_us_per_call": server * len(case.messages),
                    "stats_us": compared(wall, lambda _: "raw"),
                    "client_cpu_stats_us": compared(cpu, lambda _: "raw"),
                    "samples_us": rounded(wall),
                    "client_cpu_samples_us": rounded(cpu),
                }
            )
    return results


class Refetching(ScpiDaq):
    """The driver's board class, sending `FETC?` (resend the last reading) where it would send
    `READ?` (acquire anew): the whole read path of `ScpiDaqBoard` runs, minus the acquisition."""

    def write(self, command: str, **kwargs: Any) -> None:
        super().write("FETC?" if command == "READ?" else command, **kwargs)


def block(rounds: int) -> dict[str, Any]:
    """1e5 float64 samples as a REAL,64 block and as ASCII: raw pyvisa against the driver."""
    devices = {
        fmt: VirtualDaq(Backplane(Flat()), {}, {101: Wire("y")}, n_ao=1, n_ai=1)
        for fmt in ("real64", "ascii")
    }
    with contextlib.ExitStack() as stack:
        addr = stack.enter_context(VirtualStation(dict(devices))).addresses
        rm = pyvisa.ResourceManager("@py")
        stack.callback(rm.close)
        boards, raws = {}, {}
        for fmt in devices:
            settings = ScpiDaqSettings(
                **common(addr[fmt], f"daq-{fmt}"),
                ao={},
                ai={101: 1.0},
                sample_count=BLOCK_SAMPLES,
                data_format=fmt,
            )
            board = ScpiDaqBoard(settings)
            board.connect(Refetching(settings.address, ai=[101], **settings.adapter_kwargs()))
            stack.callback(board.close)
            raw = raw_session(rm, addr[fmt])
            stack.callback(raw.close)
            boards[fmt], raws[fmt] = board, raw
        rb, ra = raws["real64"], raws["ascii"]
        rb.query_binary_values("READ?", datatype="d", is_big_endian=True)  # the one acquisition
        ra.query("READ?")  # of each board: FETC? resends it
        variants: dict[str, Callable[[], object]] = {
            "raw binary": lambda: rb.query_binary_values("FETC?", datatype="d", is_big_endian=True),
            "driver binary": boards["real64"].read,
            "raw ascii": lambda: ra.query_ascii_values("FETC?"),
            "driver ascii": boards["ascii"].read,
        }
        lengths = [len(rb.query_binary_values("FETC?", datatype="d", is_big_endian=True)),
                   len(ra.query_ascii_values("FETC?"))]  # fmt: skip
        assert lengths == [BLOCK_SAMPLES] * 2, f"short blocks: {lengths}"
        assert boards["real64"].read() == boards["ascii"].read() == {101: FLAT}
        payload = 8 * BLOCK_SAMPLES
        wire_bytes = {
            "binary": len(f"#{len(str(payload))}{payload}") + payload + 1,
            "ascii": len(ra.query("FETC?")) + 1,
        }
        wall, cpu = interleaved(variants, rounds, warmup=2)
    payload_mb = 8 * BLOCK_SAMPLES / 1e6
    figures = compared(wall, lambda name: f"raw {name.split()[1]}")
    for s in figures.values():
        s["mb_per_s"] = payload_mb / (s["median"] / 1e6)
    return {
        "samples": BLOCK_SAMPLES,
        "payload_mb": payload_mb,
        "wire_bytes": wire_bytes,
        "stats_us": figures,
        "client_cpu_stats_us": compared(cpu, lambda name: f"raw {name.split()[1]}"),
        "samples_us": rounded(wall),
        "client_cpu_samples_us": rounded(cpu),
    }


@contextlib.contextmanager
def experiments() -> Iterator[tuple[ResolvedExperiment, ResolvedExperiment, int, MessageCounter]]:
    """configs/dnpu-virtual.yaml with its instruments served here, their messages counted; the
    same experiment on the in-process simulator; the seed. The servers stop on exit."""
    resolved = load_experiment(CONFIG)
    seed = resolved.config.seed
    assert seed is not None
    device_seed = np.random.SeedSequence(seed).spawn(1)[0]  # build_run's device seed
    served = serve_station(resolved.station, device_seed)
    try:
        counter = MessageCounter()
        for server in served.servers.servers.values():
            assert isinstance(server, ScpiServer)  # the SMU rig's instruments are SCPI
            counter.attach(server.device)
        station = resolved.station.as_dict()
        virtual = station.pop("virtual")
        wire, local = resolved.as_dict(), resolved.as_dict()
        wire["station"] = {**station, "device": served.device_params}
        local["station"] = {**station, "name": "in-process", "device": virtual["device"]}
        yield (
            resolve_experiment(YamlDocument(path=CONFIG, data=wire)),
            resolve_experiment(YamlDocument(path=CONFIG, data=local)),
            seed,
            counter,
        )
    finally:
        served.stop()


def training(steps: int) -> dict[str, Any]:
    """Wall time per step, over the wire and in process (interleaved); the messages each wire
    step sends, by command, and the servers' time on each command."""
    if steps < 2:
        raise ValueError(f"{steps} training steps: at least 2 (the first is not timed)")
    times: Timings = {"wire": [], "in_process": []}
    trips: list[int] = []  # queries (round trips) of each wire step
    busy: list[float] = []  # µs the servers spent executing each wire step's messages
    with contextlib.ExitStack() as stack:
        wire_exp, local_exp, seed, counter = stack.enter_context(experiments())
        wire = build_run(wire_exp, seed)
        stack.callback(wire.guard.close)
        local = build_run(local_exp, seed)
        stack.callback(local.guard.close)
        runs = [("wire", wire), ("in_process", local)]
        for k in range(steps):
            for name, built in runs[k % 2 :] + runs[: k % 2]:
                r0, b0, t0 = counter.replies, counter.busy_us, time.perf_counter_ns()
                built.procedure.step()
                times[name].append((time.perf_counter_ns() - t0) / 1e3)
                if name == "wire":
                    trips.append(counter.replies - r0)
                    busy.append(counter.busy_us - b0)
                    if k == 0:  # the first also switches the SMU outputs on: not timed
                        first = counter.snapshot()
        last = counter.snapshot()
    timed, n = slice(1, None), steps - 1
    wire_s, local_s = stats(times["wire"][timed]), stats(times["in_process"][timed])
    server, round_trips = stats(busy[timed]), float(np.median(trips[timed]))
    by_command = {
        command: {
            "count": (count - first[0][command]) / n,
            "server_us": (last[1][command] - first[1].get(command, 0.0)) / n,
        }
        for command, count in sorted(last[0].items())
        if count > first[0][command]
    }
    return {
        "config": str(CONFIG.relative_to(ROOT)),
        "steps": steps,
        "stats_us": {
            "wire": wire_s,
            "in_process": local_s,
            "ratio_wire_to_in_process": wire_s["median"] / local_s["median"],
            "overhead_per_round_trip": (wire_s["median"] - local_s["median"]) / round_trips,
            "wire_server_busy": server,
            "wire_less_servers_per_round_trip": (wire_s["median"] - server["median"]) / round_trips,
        },
        "round_trips_per_step": round_trips,
        "messages_per_step": sum(c["count"] for c in by_command.values()),
        "per_step_by_command": by_command,
        "samples_us": rounded(times),
        "round_trips_each_step": trips,
        "server_busy_us_each_step": rounded({"wire": busy})["wire"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000, help="calls of each variant per query")
    parser.add_argument("--steps", type=int, default=30, help="training steps of each variant")
    parser.add_argument("--block-rounds", type=int, default=40, help="blocks of each variant")
    args = parser.parse_args()
    load, t0 = os.getloadavg(), time.perf_counter()
    queries, blocks, steps = per_query(args.rounds), block(args.block_rounds), training(args.steps)
    result = {
        "benchmark": "drivers",
        "settings": {
            "rounds": args.rounds,
            "warmup": WARMUP,
            "steps": args.steps,
            "block_rounds": args.block_rounds,
            "block_samples": BLOCK_SAMPLES,
            "timeout_s": TIMEOUT,
            "visa_library": "@py",
            "transport": "TCP 127.0.0.1 (simulators.virtual.server)",
        },
        "per_query": queries,
        "block": blocks,
        "training_step": steps,
        "wall_seconds": time.perf_counter() - t0,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": {"start": load, "end": os.getloadavg()},
        },
        "environment": {**environment(), "pymeasure": version("pymeasure")},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)  # then every list of numbers on one line:
    text = re.sub(r"\[\s+([-\d.e, \n]+?)\s+\]", lambda m: f"[{' '.join(m[1].split())}]", text)
    RESULTS.write_text(text + "\n")
    show(result)


def show(result: dict[str, Any]) -> None:
    """The three tables."""
    console = Console(width=120)
    headers = ("query", "trips", "server", "raw [IQR]", "PyMeasure (×raw)", "driver (×raw)",
               "driver−raw", "client CPU raw→driver")  # fmt: skip
    rounds = result["settings"]["rounds"]
    title = (
        f"µs per call, median of {rounds} interleaved calls; ×raw and driver−raw: medians of "
        "the same-round ratios and differences"
    )
    table = Table(*headers, title=title)
    for case in result["per_query"]:
        s, cpu = case["stats_us"], case["client_cpu_stats_us"]
        table.add_row(
            case["case"],
            str(case["round_trips_per_call"]),
            f"{case['server_us_per_call']:.0f}",
            f"{s['raw']['median']:.0f} [{s['raw']['iqr']:.0f}]",
            f"{s['pymeasure']['median']:.0f} ({s['pymeasure']['ratio_paired']:.2f}×)",
            f"{s['driver']['median']:.0f} ({s['driver']['ratio_paired']:.2f}×)",
            f"{s['driver']['paired']:+.0f}",
            f"{cpu['raw']['median']:.0f}→{cpu['driver']['median']:.0f}",
        )
    console.print(table)
    b = result["block"]
    table = Table(
        "variant", "ms [IQR]", "MB/s", "×raw", title=f"{b['samples']:.0e} float64 samples (FETC?)"
    )
    for name, s in b["stats_us"].items():
        ratio = f"{s['ratio_paired']:.2f}" if "ratio_paired" in s else ""
        table.add_row(
            name, f"{s['median'] / 1e3:.1f} [{s['iqr'] / 1e3:.1f}]", f"{s['mb_per_s']:.1f}", ratio
        )
    console.print(table)
    t = result["training_step"]
    s = t["stats_us"]
    table = Table("figure", "value", title="one SPSA + Adam step, configs/dnpu-virtual.yaml")
    table.add_row("wire (8 virtual 2400s, TCP)", f"{s['wire']['median'] / 1e3:.1f} ms")
    table.add_row("in-process simulator", f"{s['in_process']['median'] / 1e3:.1f} ms")
    table.add_row("ratio", f"{s['ratio_wire_to_in_process']:.1f}×")
    table.add_row("round trips (queries) per step", f"{t['round_trips_per_step']:.0f}")
    table.add_row("messages per step", f"{t['messages_per_step']:.0f}")
    for command, c in t["per_step_by_command"].items():
        table.add_row(f"  {command}", f"{c['count']:.1f} (server {c['server_us'] / 1e3:.1f} ms)")
    table.add_row("servers busy per wire step", f"{s['wire_server_busy']['median'] / 1e3:.1f} ms")
    per_trip = s["wire_less_servers_per_round_trip"]
    table.add_row("wire − servers, per round trip", f"{per_trip:.0f} µs")
    table.add_row("wire − in-process, per round trip", f"{s['overhead_per_round_trip']:.0f} µs")
    console.print(table)
    console.print(f"written to {RESULTS.relative_to(ROOT)} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
