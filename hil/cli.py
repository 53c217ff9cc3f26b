"""The `hil` command line: run, resume, report, list, config check / schema."""

# ruff: noqa: E402 — signals are caught before the slow imports below (see _EARLY_SIGNALS)
from __future__ import annotations

import signal
import sys
from pathlib import Path


def _is_the_program() -> bool:
    """Whether this process is the `hil` program (console script or `python -m hil`)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    return argv0 is not None and (
        argv0.name == "hil" or argv0 == Path(__file__).with_name("__main__.py")
    )


# Signals that arrive while the program still imports: noted here, honoured by main() (exit 4).
_EARLY_SIGNALS: list[int] = []
if _is_the_program():
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, lambda signum, frame: _EARLY_SIGNALS.append(signum))

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hil.build import build_device, build_run
from hil.config import (
    is_station_document,
    json_schema,
    load_station,
    resolve_experiment,
    resolve_station,
)
from hil.core import ConfigError, HilError, RunError
from hil.interrupts import (
    Phase,
    RunInterrupted,
    RunStatus,
    Signals,
    install_signal_handlers,
    signal_handling,
)
from hil.registry import Kind, available
from hil.rundir import RUN_FILE
from hil.runner import RunOutcome, resume_run, start_run
from hil.safety import Terminated
from hil.traces import TRACES_FILE
from hil.virtual import serve_station

if TYPE_CHECKING:
    from hil.gradcompare import CandidateResult
from hil.yamlfile import load_yaml

app = typer.Typer(
    help="Train physical learning machines with the hardware in the loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Validate configuration files and print their schema.")
app.add_typer(config_app, name="config")


class ExportFormat(StrEnum):
    """What `hil export` writes."""

    NETCDF = "netcdf"
    CSV = "csv"


stdout = Console()
stderr = Console(stderr=True)
_state = {"debug": False}

EXIT_CODES = {
    RunStatus.COMPLETED: 0,
    RunStatus.FAILED: 1,
    RunStatus.PAUSED: 3,
    RunStatus.ABORTED: 4,
    RunStatus.MISSED: 5,
}


@contextmanager
def _errors() -> Iterator[None]:
    """Every error becomes one clear message and a non-zero exit; tracebacks only with --debug."""
    try:
        yield
    except typer.Exit:
        raise
    except RunInterrupted as exc:
        stderr.print(f"[yellow]{escape(str(exc))}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CODES[exc.status]) from None
    except HilError as exc:
        if _state["debug"]:
            raise
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    except (KeyboardInterrupt, Terminated) as exc:
        stderr.print(f"[yellow]aborted by {_signal_name(exc)}[/]", highlight=False)
        raise typer.Exit(EXIT_CODES[RunStatus.ABORTED]) from None
    except Exception as exc:
        if _state["debug"]:
            raise
        stderr.print(
            f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))} "
            "(hil --debug ... shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _signal_name(exc: KeyboardInterrupt | Terminated) -> str:
    if isinstance(exc, KeyboardInterrupt) or exc.signum == signal.SIGINT:
        return "Ctrl-C"
    return signal.Signals(exc.signum).name


class _Brief(logging.Formatter):
    """One line per record on the console: tracebacks go to run.log (or show with --debug)."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


QUIET_LIBRARIES = ("pyvisa", "pyvisa_py", "pymeasure")
"""Their error records repeat what the InstrumentError they cause says (instrument, command,
reply), so the console leaves them to run.log; `--debug` shows them."""


def _on_console(record: logging.LogRecord) -> bool:
    if record.name.split(".")[0] in QUIET_LIBRARIES and record.levelno < logging.CRITICAL:
        return logging.getLogger().level <= logging.DEBUG
    return bool(getattr(record, "console", True))


_console_handler: list[logging.Handler] = []


@app.callback()
def _main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    _state["debug"] = debug
    root = logging.getLogger()
    for old in _console_handler:
        root.removeHandler(old)
    handler = logging.StreamHandler()
    handler.setLevel(logging.DEBUG if debug else logging.WARNING)
    fmt = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt) if debug else _Brief(fmt))
    if not debug:
        handler.addFilter(_on_console)
    _console_handler[:] = [handler]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # The console handler lives as long as the command (its stream may not outlive it).
    ctx.call_on_close(lambda: root.removeHandler(handler))


def _write_report(outcome: RunOutcome, signals: Signals) -> None:
    """The report of a completed run; if it cannot be written, say so (the run stays done)."""
    from hil.report import write_report

    signals.phase = Phase.REPORT
    try:
        report = write_report(outcome.path)
    except (KeyboardInterrupt, Terminated) as exc:
        stderr.print(
            f"report not written (stopped by {_signal_name(exc)}); write it with: "
            f"hil report {outcome.path}",
            highlight=False,
            soft_wrap=True,
        )
        return
    except Exception as exc:
        if _state["debug"]:
            raise
        stderr.print(
            f"[bold red]report not written:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        return
    finally:
        signals.phase = Phase.STOPPING
    stderr.print(f"report: {report / 'report.html'}", highlight=False, soft_wrap=True)


def _finish(outcome: RunOutcome, signals: Signals) -> None:
    colour = {"completed": "green", "paused": "yellow"}.get(outcome.status.value, "red")
    stderr.print(
        f"[{colour}]{outcome.status.value}[/]: {escape(outcome.reason)}\n"
        f"run directory: {escape(str(outcome.path))}",
        highlight=False,
        soft_wrap=True,
    )
    for problem in outcome.problems:
        stderr.print(f"[bold red]warning:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if outcome.status is RunStatus.COMPLETED:
        _publish_calibration(outcome)
        _write_report(outcome, signals)
    elif outcome.status is RunStatus.MISSED:
        _write_report(outcome, signals)
    elif (outcome.path / RUN_FILE).is_file():
        stderr.print(f"continue with: hil resume {outcome.path}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_CODES[outcome.status])


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    out: Annotated[Path, typer.Option("--out", help="Parent folder for run directories.")] = Path(
        "runs"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run an experiment; Ctrl-C pauses at the next step (twice aborts), the device is made safe."""
    with signal_handling() as signals, _errors():
        _finish(start_run(config, out, console=None if quiet else stderr), signals)


def _publish_calibration(outcome: RunOutcome) -> None:
    """A completed calibration run writes its station's calibration file and shows its plan."""
    from hil import calibrations

    procedure = outcome.summary.get("calibration")
    if not isinstance(procedure, list):
        return
    try:
        path = calibrations.publish(outcome.path)
    except HilError as exc:
        stderr.print(
            f"[bold red]calibration file not written:[/] {escape(str(exc))}",
            highlight=False,
            soft_wrap=True,
        )
        return
    stderr.print(f"calibration: {escape(str(path))}", highlight=False, soft_wrap=True)
    for table in calibrations.tables(procedure):
        stderr.print(table)


@app.command()
def calibrate(
    station: Annotated[Path, typer.Argument(help="Station YAML file.")],
    what: Annotated[
        str | None,
        typer.Option(
            "--what",
            help="Comma-separated measurements: iv, offset, noise, step, plan, check, "
            "conductance, pulses (default: what the device supports).",
        ),
    ] = None,
    settings: Annotated[
        Path | None,
        typer.Option("--settings", help="YAML file of the measurements' settings (plan: …)."),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", min=0, help="Root seed (default: fresh, recorded in run.json)."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Parent folder for run directories.")] = Path(
        "runs"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Bring a station up: measure it, write <station>.calibration.json, report in report.html.

    A resumable run like any other (Ctrl-C pauses; continue with hil resume)."""
    from hil import calibrations

    with signal_handling() as signals, _errors():
        chosen = None if what is None else [w.strip() for w in what.split(",") if w.strip()]
        document = calibrations.experiment(station, chosen, settings, seed)
        console = None if quiet else stderr
        _finish(start_run(station, out, console=console, document=document), signals)


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(help="Run directory to continue.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Continue a paused, aborted, failed or killed run from its last checkpoint."""
    with signal_handling() as signals, _errors():
        _finish(resume_run(run_dir, console=None if quiet else stderr), signals)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    live: Annotated[
        bool, typer.Option("--live", help="Serve the page on 127.0.0.1, updated as steps arrive.")
    ] = False,
    port: Annotated[int, typer.Option(help="--live: port (0: a free one).", min=0, max=65535)] = 0,
    interval: Annotated[
        float, typer.Option(help="--live: seconds between page reloads.", min=1)
    ] = 2.0,
) -> None:
    """Write report/report.html (self-contained), training.png and summary.md for a run; with
    --live, serve the report while the run goes on instead (nothing written) until Ctrl-C."""
    if live:
        _serve_live_report(run_dir, port, interval)
        return
    from hil.report import write_report

    with _errors():
        out = write_report(run_dir)
        stdout.print(f"report written to {out}", highlight=False, soft_wrap=True)


def _serve_live_report(run_dir: Path, port: int, interval: float) -> None:
    from hil.live import LiveServer

    with _errors():
        server = LiveServer(run_dir, port=port, refresh=interval).start()
        try:
            stdout.print(f"live report: {server.url}", highlight=False, soft_wrap=True)
            stderr.print("serving; Ctrl-C or SIGTERM stops", highlight=False)
            stopped_by = _until_stopped()
        finally:
            server.stop()
        stderr.print(f"stopped by {stopped_by}", highlight=False)


WATCH_EXIT_CODES = {
    "completed": 0,
    "failed": 1,
    "gone": 1,
    "paused": 3,
    "aborted": 4,
    "missed": 5,
}


@app.command()
def watch(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    interval: Annotated[
        float, typer.Option(help="Seconds between looks at the journal.", min=0.01)
    ] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
) -> None:
    """Follow a run in the terminal (step, loss, best, device time, ETA) until it ends.

    Reads only: the run is not locked or changed. Exits with the run's exit code when it ends
    (0 completed, 3 paused, 4 aborted, 5 target missed, 1 failed or killed); Ctrl-C stops
    watching (exit 0).
    """
    from hil.watch import follow

    with _errors():
        try:
            snap = follow(run_dir, stdout, interval=interval, once=once)
        except (KeyboardInterrupt, Terminated) as exc:
            stopped = f"stopped watching ({_signal_name(exc)}); the run goes on"
            stderr.print(stopped, highlight=False)
            return
        if once or not snap.ended:
            return
        colour = "green" if snap.status == "completed" else "yellow"
        stderr.print(
            f"[{colour}]{escape(snap.status)}[/]: {escape(snap.reason)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(WATCH_EXIT_CODES.get(snap.status, 1))


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    to: Annotated[ExportFormat, typer.Option("--to", help="Format.", case_sensitive=False)],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output (default: RUN/export/traces.nc or RUN/export/csv)."),
    ] = None,
) -> None:
    """Write a run's raw data (traces.h5) as NetCDF3 (one file) or CSV (one file per dataset)."""
    from hil.data import export_csv, export_netcdf

    with _errors():
        if not (run_dir / TRACES_FILE).is_file():
            raise RunError(f"{run_dir}: no {TRACES_FILE} (a run made before raw data was kept)")
        if to is ExportFormat.NETCDF:
            target = out or run_dir / "export" / "traces.nc"
            target.parent.mkdir(parents=True, exist_ok=True)
            written = [export_netcdf(run_dir, target)]
        else:
            written = export_csv(run_dir, out or run_dir / "export" / "csv")
        for path in written:
            stdout.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command("list")
def list_components(
    kind: Annotated[
        Kind | None, typer.Argument(help="Only this kind of component.", case_sensitive=False)
    ] = None,
) -> None:
    """Show the devices, estimators, optimizers, tasks and procedures available."""
    table = Table("kind", "type", "class", "from")
    for k in [kind] if kind else list(Kind):
        for entry in available(k):
            table.add_row(k.value, entry.name, entry.target, entry.source)
    stdout.print(table)


@app.command()
def gradcheck(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    repeats: Annotated[int, typer.Option(help="Estimates at the starting point.")] = 20,
    reference: Annotated[
        str, typer.Option(help="auto | oracle (simulator's exact gradient) | average")
    ] = "auto",
    reference_repeats: Annotated[
        int, typer.Option(help="Central-difference repeats for an averaged reference.")
    ] = 50,
    out: Annotated[Path, typer.Option(help="Parent folder for the results.")] = Path(
        "runs/gradcheck"
    ),
    seed: Annotated[int, typer.Option(help="Root seed of the build.")] = 0,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare", help="Also run every estimator auto could pick, at its predicted settings."
        ),
    ] = False,
    target: Annotated[float, typer.Option(help="Target cosine of --compare.")] = 0.99,
) -> None:
    """Compare the experiment's gradient estimator with a reference; table + scatter plot.
    With --compare: which estimator is fastest here, predicted and measured."""
    from hil.gradcheck import gradcheck as check

    if reference not in ("auto", "oracle", "average"):
        stderr.print(f"[bold red]error:[/] --reference {reference!r}: use auto, oracle or average")
        raise typer.Exit(2)
    with _errors():
        result = check(
            config,
            repeats=repeats,
            reference=reference,  # type: ignore[arg-type]
            reference_repeats=reference_repeats,
            out=out,
            seed=seed,
            compare=compare,
            target=target,
        )
        q = result.quality
        ref = q.reference
        table = Table("control", f"reference ({ref.kind})", "estimate mean", "sd", "SNR")
        for i, name in enumerate(result.names):
            se = "" if ref.stderr is None else f" ± {ref.stderr[i]:.3g}"
            table.add_row(
                name,
                f"{ref.gradient[i]:.4g}{se}",
                f"{q.mean[i]:.4g}",
                f"{q.spread[i]:.3g}",
                f"{q.snr[i]:.3g}",
            )
        stdout.print(table)
        summary = Table("figure", "value")
        for key, value in q.summary().items():
            summary.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        stdout.print(summary)
        if result.comparison:
            stdout.print(_comparison_table(result.comparison, target))
        stdout.print(f"written to {result.directory}", highlight=False, soft_wrap=True)


def _comparison_table(results: list[CandidateResult], target: float) -> Table:
    """--compare: each candidate's predicted settings and seconds beside what it achieved."""
    table = Table(
        "estimator",
        "settings",
        "predicted s/estimate",
        "measured s/estimate",
        f"median cosine (target {target:g})",
        title="which estimator is fastest here",
    )
    for c in results:
        p = c.prediction
        steps = p["steps"]
        assert isinstance(steps, list)
        size = f"{float(steps[0]):.3g}"
        parts = [f"step {size}"]
        if p.get("window") is not None:
            parts.append(f"window {p['window']:.3g} s")
        else:
            parts.append(f"×{p['repeats']}")
        if p.get("samples"):
            parts.append(f"{p['samples']} samples/plateau")
        table.add_row(
            str(p["candidate"]),
            ", ".join(parts),
            f"{float(p['seconds']):.4g}",
            f"{c.seconds:.4g}",
            f"{c.cosine_median:.4f}" + ("" if c.reached else " (missed)"),
        )
    return table


@app.command()
def serve(
    station_file: Annotated[
        Path, typer.Argument(help="Station YAML file with a `virtual:` section.")
    ],
    write: Annotated[
        Path | None,
        typer.Option("--write", help="Write the station file for the servers here, not stdout."),
    ] = None,
    seed: Annotated[int, typer.Option(help="The simulator's seed (virtual.seed wins).")] = 0,
) -> None:
    """Serve every instrument of a station as a virtual one until Ctrl-C or SIGTERM.

    Prints each instrument's address (stderr) and a station file that points at them (stdout,
    ended by a `...` line, or --write FILE), so `hil run` in another process trains against
    them. Stopping closes every server and the simulator.
    """
    with signal_handling() as signals, _errors():
        served = serve_station(load_station(station_file), np.random.SeedSequence(seed), every=True)
        try:
            for name, address in served.addresses.items():
                stderr.print(f"{name}: {address}", highlight=False, soft_wrap=True)
            if write is None:
                sys.stdout.write(f"{served.station_text()}...\n")
                sys.stdout.flush()
            else:
                write.write_text(served.station_text())
                stderr.print(f"station file: {write}", highlight=False, soft_wrap=True)
            stderr.print("serving; Ctrl-C or SIGTERM stops", highlight=False)
            stopped_by = _until_stopped()
        finally:
            signals.phase = Phase.STOPPING  # a second signal must not cut the servers' stop
            served.stop()
        stderr.print(f"stopped by {stopped_by}: servers and simulator closed", highlight=False)


@app.command("surrogate-convert")
def surrogate_convert(
    checkpoint: Annotated[Path, typer.Argument(help="PyTorch checkpoint of the surrogate.")],
    out: Annotated[Path, typer.Argument(help="The .npz to write (the DNPU's weights_file).")],
    amplification: Annotated[
        float | None,
        typer.Option(
            "--amplification",
            help="nA per network unit: the amplification the training data was divided by "
            "(default: the one recorded in the checkpoint's info dict, if any).",
        ),
    ] = None,
    bake: Annotated[
        bool,
        typer.Option("--bake", help="Multiply the amplification into the last layer."),
    ] = False,
) -> None:
    """Convert a DNPU surrogate network (a PyTorch state dict: SkyNEt, brains-py, nn.Sequential
    of nn.Linear) into the .npz the DNPU simulator loads; print what the station file needs.

    The weights are written as trained; the amplification goes into the station file as
    weights_scale, unless --bake multiplies it into the weights (weights_scale 1)."""
    from hil import surrogates

    with _errors():
        done = surrogates.convert(checkpoint, out, amplification=amplification, bake=bake)
        widths = " → ".join(map(str, [done.shapes[0][1], *(o for o, _ in done.shapes)]))
        shapes = ", ".join(f"weight_{j} {o}×{i}" for j, (o, i) in enumerate(done.shapes))
        lines = [
            f"wrote {done.out}: {widths} ({shapes})",
            "in the station file, under device: (type: dnpu; activation relu unless set):",
            f"  weights_file: {done.out.resolve()}   # or a path relative to the station file",
        ]
        if done.baked:
            lines.append(f"  weights_scale: 1.0   # amplification {done.amplification:g} baked in")
        elif done.amplification is not None:
            lines.append(
                f"  weights_scale: {done.amplification:g}   # nA per network unit: the "
                f"amplification (from {done.origin})"
            )
        stdout.print("\n".join(lines), highlight=False, soft_wrap=True, markup=False)
        if done.weights_scale is None:
            stderr.print(
                "no amplification recorded or given: set weights_scale to the amplification of "
                "the setup the network was trained on (nA per network unit), or rerun with "
                "--amplification",
                highlight=False,
                soft_wrap=True,
            )


def _until_stopped() -> str:
    """Sleep until Ctrl-C or SIGTERM; which one it was."""
    try:
        while True:
            time.sleep(0.2)
    except (KeyboardInterrupt, Terminated) as exc:
        return _signal_name(exc)


@config_app.command("check")
def config_check(
    files: Annotated[list[Path], typer.Argument(help="Experiment or station YAML files.")],
) -> None:
    """Validate files completely: read and build everything a run would, dry (no run directory).

    Syntax, keys, types and bounds, each component's settings, and the build of device, guard,
    task, estimator, optimizer and procedure with their cross-checks: what passes here passes
    the same checks at the start of `hil run`.
    """
    failed = 0
    for path in files:
        try:
            stdout.print(f"ok: {path} ({_check_file(path)})", highlight=False, soft_wrap=True)
        except HilError as exc:
            if _state["debug"]:
                raise
            failed += 1
            stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        except Exception as exc:  # a bug, not a bad file: say so, on one line
            if _state["debug"]:
                raise
            failed += 1
            stderr.print(
                f"[bold red]error:[/] {escape(str(path))}: unexpected {type(exc).__name__} while "
                f"checking ({escape(' '.join(str(exc).split()))}); this is a bug, run with "
                "--debug and report it",
                highlight=False,
                soft_wrap=True,
            )
    if failed:
        raise typer.Exit(2)


def _check_file(path: Path) -> str:
    """Check one station or experiment file the way `hil run` does; what it is, for the log."""
    doc = load_yaml(path)
    if is_station_document(doc):
        station = resolve_station(doc, doc.data)
        build_device(station, np.random.SeedSequence(0)).close()
        return f"station {station.config.name!r}"
    experiment = resolve_experiment(doc)
    seed = experiment.config.seed
    build_run(experiment, entropy=seed if seed is not None else 0).guard.close()
    return f"experiment {experiment.config.name!r} on station {experiment.station.config.name!r}"


@config_app.command("schema")
def config_schema(
    kind: Annotated[str, typer.Argument(help="experiment or station")] = "experiment",
) -> None:
    """Print the JSON schema of experiment or station files (for editors)."""
    with _errors():
        sys.stdout.write(json.dumps(json_schema(kind), indent=2) + "\n")


def main() -> None:
    """The `hil` program: signals are handled (never a default kill) from here until exit."""
    install_signal_handlers()
    if _EARLY_SIGNALS:
        name = "Ctrl-C" if _EARLY_SIGNALS[0] == signal.SIGINT else "SIGTERM"
        stderr.print(f"[yellow]aborted by {name} while starting; nothing was done[/]")
        sys.exit(EXIT_CODES[RunStatus.ABORTED])
    try:
        app()
    except Terminated as exc:  # outside a command's own handling (typer parsing, `list`)
        stderr.print(f"[yellow]aborted by {_signal_name(exc)}[/]", highlight=False)
        sys.exit(EXIT_CODES[RunStatus.ABORTED])
    finally:
        # The exit code is decided; Python's shutdown would restore the default handlers, and a
        # late signal would then kill the process (-15) instead of letting it exit with it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
