"""One error hierarchy for the whole product.

Every message says what was wrong, where, and what to do about it; the CLI prints it on one line.
"""

from __future__ import annotations


class HilError(Exception):
    """Base of every error the product raises on purpose."""


class ConfigError(HilError):
    """A configuration file or value is invalid; the message names the file and the key path.

    `key` is the path of the offending key in the experiment file, when the raiser knows it, so
    the application can point at its line.
    """

    def __init__(self, message: str, key: tuple[str | int, ...] | None = None) -> None:
        super().__init__(message)
        self.key = key


class RegistryError(ConfigError):
    """A `type:` name does not resolve to a class."""


class SafetyViolation(HilError):
    """A request would put a value outside a configured limit; nothing was sent to the device."""

    def __init__(self, channel: str, value: float, limit: str, hint: str = "") -> None:
        self.channel = channel
        self.value = value
        self.limit = limit
        message = f"channel {channel!r}: value {value!r} violates {limit}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class CapabilityError(HilError, AttributeError):
    """A device lacks a capability (e.g. streaming) that was asked for.

    Also an AttributeError, so `hasattr` and runtime protocol checks report the capability absent.
    """


class InstrumentError(HilError):
    """An instrument failed to do what was asked."""


class InstrumentTimeout(InstrumentError):
    """An instrument did not answer in time."""


class InstrumentProtocolError(InstrumentError):
    """An instrument answered something the driver cannot parse."""


class InstrumentDisconnected(InstrumentError):
    """The connection to an instrument is gone."""


class DeviceSaturated(InstrumentError):
    """A measured output hit the measurement range; the value is not trustworthy."""


class RunError(HilError):
    """A run directory is missing, incomplete or cannot be resumed."""
