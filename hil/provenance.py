"""What a run records about where it came from: versions, platform, git commit."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hil.core import JSONDict

RECORDED_PACKAGES = (
    "hil",
    "numpy",
    "scipy",
    "pydantic",
    "pyyaml",
    "pyvisa",
    "pyvisa-py",
    "pyserial",
    "h5py",
    "typer",
    "rich",
    "matplotlib",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(where: Path) -> JSONDict | None:
    """Commit and dirtiness of the git work tree holding `where`, or None outside one."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty, "path": git("rev-parse", "--show-toplevel")}


def environment() -> JSONDict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
        "git": git_state(Path(__file__).resolve().parent),
        "argv": sys.argv,
    }
