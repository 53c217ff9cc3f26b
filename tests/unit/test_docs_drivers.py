"""The YAML in docs/drivers.md is what the code accepts: every block validates against the model
it shows (a rig's settings, the `virtual:` and `faults:` sections, SMU instrument entries); only
blocks marked `# fragment` are merely parsed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.rigs.smu import SMU_TYPES
from hil.config import FaultPolicy, VirtualConfig
from hil.registry import Kind, resolve

DOC = Path(__file__).resolve().parents[2] / "docs" / "drivers.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_yaml_in_the_driver_guide_validates(block: str) -> None:
    """A block marked `# fragment` must parse; a `device:` validates as its rig's settings,
    `virtual:` and `faults:` as their config models, instrument entries as their drivers'."""
    data: Any = yaml.safe_load(block)
    assert isinstance(data, dict)
    if block.startswith("# fragment"):
        return
    checked = False
    if "device" in data:
        settings = dict(data["device"])
        cls = resolve(Kind.DEVICE, settings.pop("type"))
        getattr(cls, "Settings").model_validate(settings)  # noqa: B009
        checked = True
    if "virtual" in data:
        VirtualConfig.model_validate(data["virtual"])
        checked = True
    if "faults" in data:
        FaultPolicy.model_validate(data["faults"])
        checked = True
    entries = data.get("instruments", {} if checked else data)
    for name, entry in entries.items():
        model = SMU_TYPES[entry["type"]][1]
        rest = {k: v for k, v in entry.items() if k != "type"}
        assert model.model_validate({"name": name, **rest}).name == name
