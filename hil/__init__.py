"""hil: train physical learning machines with the hardware in the loop."""

from typing import Any


def __getattr__(name: str) -> Any:
    """`__version__`, looked up only when asked for: importing `hil` stays fast, so the command
    line installs its signal handlers within milliseconds of starting."""
    if name != "__version__":
        raise AttributeError(f"module 'hil' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hil")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"
