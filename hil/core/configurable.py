"""How configurable components are declared, so the registry can build them from YAML."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel


@runtime_checkable
class Configurable(Protocol):
    """A class whose constructor takes a `Settings` model (extra keys forbidden).

    Components with randomness also take a keyword-only `seed` (an int or a SeedSequence).
    """

    Settings: ClassVar[type[BaseModel]]
