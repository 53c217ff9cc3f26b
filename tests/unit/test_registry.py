"""Registry: plugins found through entry points, import paths, and clear errors for the rest."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from hil import registry
from hil.core import RegistryError
from hil.registry import Kind, available, resolve


def test_plugins_come_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = EntryPoint(name="my-sgd", value="protocols.optimizers:SGD", group="hil.optimizers")

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        return [plugin] if group == "hil.optimizers" else []

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    entries = {e.name: e for e in available(Kind.OPTIMIZER)}
    assert entries["my-sgd"].source == "hil.optimizers"
    from protocols.optimizers import SGD

    assert resolve(Kind.OPTIMIZER, "my-sgd") is SGD


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "unknown optimizer type 'nope'; available: adam, sgd"),
        ("protocols.optimizers:Nope", "module 'protocols.optimizers' has no 'Nope'"),
        ("hil.core:seed_sequence", "is not a class"),
        ("not_a_module_at_all.x:Y", "cannot import module 'not_a_module_at_all.x'"),
    ],
)
def test_bad_names_say_what_is_available(name: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        resolve(Kind.OPTIMIZER, name)
