"""`hil serve STATION` in a child process: it prints each instrument's address and a station
file that points at the servers, a run in this process trains against them, and SIGTERM or
Ctrl-C stops it cleanly (exit 0, ports closed). In-process fakes are refused by name. The
server under it: binary replies, and messages received before a stop are still executed."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hil.cli import app
from hil.runner import start_run
from simulators.virtual.scpi import ScpiDevice
from simulators.virtual.server import ScpiServer

from experiments import hil_process

pytestmark = pytest.mark.timeout(60)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
STATION = CONFIGS / "stations" / "crossbar-serial-virtual.yaml"
STARTUP = 30.0
"""s a child `hil serve` may take to print its station file (imports on a loaded machine)."""


def read_until_end_of_document(process: subprocess.Popen[str]) -> str:
    """stdout up to the `...` line that ends the station file; fails after `STARTUP` s."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.rstrip("\n") == "...":
                done.set()
                return
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not done.wait(STARTUP):
        process.kill()
        _, err = process.communicate(timeout=10)
        pytest.fail(f"hil serve printed no station file: {''.join(lines)}{err}")
    return "".join(lines)


@pytest.fixture
def serving() -> Iterator[subprocess.Popen[str]]:
    process = hil_process("serve", str(STATION), "--seed", "3")
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate(timeout=10)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_serve_prints_a_station_another_process_trains_on_then_stops_on_sigterm(
    serving: subprocess.Popen[str], tmp_path: Path
) -> None:
    station: dict[str, Any] = yaml.safe_load(read_until_end_of_document(serving))
    url = station["device"]["board"]["url"]
    assert url.startswith("socket://127.0.0.1:")
    assert "virtual" not in station
    (tmp_path / "served.yaml").write_text(yaml.safe_dump(station, sort_keys=False))
    experiment = {
        "name": "over-hil-serve",
        "station": "served.yaml",
        "seed": 11,
        "procedure": {"type": "pulse-train", "steps": 6, "pulse_step": 0.001, "max_pulses": 8},
        "task": {"type": "regression", "data": str(CONFIGS / "data" / "crossbar-linear.npz")},
        "estimator": {"type": "delta-rule"},
        "optimizer": {"type": "sgd", "lr": 0.05},
    }
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    outcome = start_run(tmp_path / "experiment.yaml", tmp_path / "runs")
    assert outcome.status.value == "completed", outcome.reason
    assert serving.poll() is None, "hil serve stopped with the run"

    serving.terminate()
    _, err = serving.communicate(timeout=20)
    assert serving.returncode == 0, err
    assert f"board: {url}" in err
    assert "stopped by SIGTERM: servers and simulator closed" in err
    assert refused(port_of(url))


def test_ctrl_c_stops_serve_and_write_puts_the_station_in_a_file(tmp_path: Path) -> None:
    written = tmp_path / "served.yaml"
    process = hil_process(
        "serve", str(CONFIGS / "stations" / "analog-chip-virtual.yaml"), "--write", str(written)
    )
    try:
        deadline = time.monotonic() + STARTUP
        while not (written.exists() and written.read_text().endswith("\n")):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "no station file written"
            time.sleep(0.05)
        address = yaml.safe_load(written.read_text())["device"]["instruments"]["daq"]["address"]
        assert address.startswith("TCPIP::127.0.0.1::")
        time.sleep(0.3)  # "serving": the station file is written just before the wait begins
        process.send_signal(2)  # SIGINT, as Ctrl-C
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert out == ""
    assert "stopped by Ctrl-C" in err
    assert refused(int(address.split("::")[2]))


def test_an_in_process_fake_cannot_be_served() -> None:
    result = CliRunner().invoke(
        app, ["serve", str(CONFIGS / "stations" / "crossbar-arc2-virtual.yaml")]
    )
    assert result.exit_code == 2
    assert "device.board.firmware: the virtual arc2 for 'board' is an in-process fake" in (
        result.output
    )
    assert "cannot be served" in result.output


# -- the server --------------------------------------------------------------------------------
class Recorder(ScpiDevice):
    """Records every message; `SLOW` takes 0.2 s; `BLOCK?` answers bytes, `TEMP?` non-ASCII."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    def execute(self, message: str) -> str | None:  # bytes too: see BLOCK?
        self.log.append(message)
        if message == "SLOW":
            time.sleep(0.2)
        replies: dict[str, Any] = {"BLOCK?": b"#14\xff\x00\x80\x7f", "TEMP?": "25 \u00b0C"}
        reply: str | None = replies.get(message)
        return reply


def connected(server: ScpiServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=2.0)


def test_a_reply_may_be_bytes_and_a_non_ascii_one_keeps_the_connection() -> None:
    with ScpiServer(Recorder(), "recorder") as server, connected(server) as client:
        client.sendall(b"BLOCK?\nTEMP?\nBLOCK?\n")
        expected = b"#14\xff\x00\x80\x7f\n25 ?C\n#14\xff\x00\x80\x7f\n"
        received = b""
        while len(received) < len(expected):
            received += client.recv(4096)
        assert received == expected


def test_stop_executes_the_messages_already_received() -> None:
    device = Recorder()
    server = ScpiServer(device, "recorder").start()
    with connected(server) as client:
        client.sendall(b"SLOW\n")
        time.sleep(0.05)  # the server is busy with SLOW while the rest arrives
        client.sendall(b"A\nB\nOUTP OFF\n")
        server.stop()
    assert device.log == ["SLOW", "A", "B", "OUTP OFF"]
