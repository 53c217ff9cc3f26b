"""Files named in configurations: relative paths taken from the file's own folder, and reading
that cannot hang, exhaust memory or follow a path into a device.

Every file a configuration makes the product read (YAML, task data, surrogate weights) goes
through `read_regular_file`: it must be a regular file (not a directory, device, FIFO or socket;
symlinks are followed, a loop is an error) no larger than a limit — `TEXT_LIMIT` for YAML,
`DATA_LIMIT` for data files — and it is opened without blocking, so a FIFO swapped in after the
check cannot stall the read either.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import zipfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import BeforeValidator, ValidationInfo

from hil.core.errors import ConfigError
from hil.core.types import FloatArray

TEXT_LIMIT = 1 << 20
"""Largest YAML / text file read: 1 MiB (configs are a few kB)."""

DATA_LIMIT = 64 << 20
"""Largest data file (.npz task data, surrogate weights) read: 64 MiB, also the limit on the
uncompressed size of all arrays in an .npz."""


class UnreadableFile(ConfigError, ValueError):
    """A file named in a configuration cannot be read; also a ValueError, so that settings
    validators and constructors that report bad values as ValueError report this too."""


def _kinds(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / (1 << 20):.3g} MiB" if n >= 1 << 20 else f"{n} bytes"


def check_regular_file(path: Path, *, limit: int, what: str = "file") -> os.stat_result:
    """The file's stat if it is a regular file of at most `limit` bytes, else UnreadableFile."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UnreadableFile(
            f"{what} '{path}' does not exist (no such file); check the path"
        ) from None
    except ValueError:  # a NUL character in the path
        raise UnreadableFile(f"{what} {str(path)!r}: not a valid path; check it") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile(
                f"{what} '{path}': too many levels of symbolic links (a symlink loop); "
                "point it at a real file"
            ) from None
        raise UnreadableFile(
            f"{what} '{path}': cannot read ({exc.strerror}); check the path and its permissions"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableFile(
            f"{what} '{path}' is {_kinds(info.st_mode)}, not a regular file; give a file"
        )
    if info.st_size > limit:
        raise UnreadableFile(
            f"{what} '{path}' is {_size(info.st_size)}, above the limit of {_size(limit)}; "
            "give a smaller file"
        )
    return info


def read_regular_file(path: Path, *, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see the module docstring)."""
    check_regular_file(path, limit=limit, what=what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UnreadableFile(
            f"{what} '{path}': cannot open ({exc.strerror}); check the path and its permissions"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the check and the open
            raise UnreadableFile(f"{what} '{path}' is not a regular file; give a file")
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise UnreadableFile(f"{what} '{path}': cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise UnreadableFile(
            f"{what} '{path}' grew above the limit of {_size(limit)} while it was read"
        )
    return data


def load_npz(
    path: Path, *, limit: int = DATA_LIMIT, what: str = "data file"
) -> dict[str, FloatArray]:
    """Every array of an .npz file as floats; the file is read as `read_regular_file` reads
    (a regular file of at most `limit` bytes), its arrays may not exceed `limit` bytes
    uncompressed, and pickled objects are refused. Problems are UnreadableFile errors."""
    raw = read_regular_file(path, limit=limit, what=what)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > limit:
            raise UnreadableFile(
                f"{what} '{path}' unpacks to {_size(unpacked)}, above the limit of "
                f"{_size(limit)}; give a smaller file"
            )
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in npz.files}
    except UnreadableFile:
        raise
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        message = " ".join(str(exc).split())
        raise UnreadableFile(
            f"{what} '{path}' is not a readable .npz file ({message}); save it with numpy.savez"
        ) from None


def float_array(
    arrays: dict[str, npt.NDArray[Any]], name: str, path: Path, what: str
) -> FloatArray:
    """Array `name` of a loaded .npz as floats; a non-numeric one is an UnreadableFile error."""
    try:
        return np.asarray(arrays[name], dtype=float)
    except (TypeError, ValueError):
        raise UnreadableFile(
            f"{what} '{path}': array {name!r} is not numeric ({arrays[name].dtype}); fix the file"
        ) from None


def from_config_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    """`value` joined to the validation context's `base_dir` (set by the config loader) when it
    is relative; absolute paths, None, and validation without that context pass unchanged."""
    if value is None or value.is_absolute():
        return value
    context = info.context
    if isinstance(context, dict) and context.get("base_dir") is not None:
        return Path(context["base_dir"]) / value
    return value


def _config_path(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, str):
        if not value.strip() or "\x00" in value:
            raise ValueError("give a file path (a non-empty string without NUL characters)")
        value = Path(value)
    if not isinstance(value, Path):
        raise ValueError(f"give a file path as text, not {type(value).__name__}")
    return from_config_dir(value, info)


ConfigPath = Annotated[Path, BeforeValidator(_config_path)]
"""A path setting: a string or Path, relative ones taken from the config file's folder. It is
converted before type checking, so it also validates under strict mode."""
