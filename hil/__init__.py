"""hil: train physical learning machines with the hardware in the loop."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hil")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
