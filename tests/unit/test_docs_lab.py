"""The YAML in docs/lab.md is what the code accepts: the calibration settings block validates as
the `calibrate` procedure's settings, the `calibration:` block as an experiment's, and the
pictures it shows exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hil.config import CalibrationUse, StationConfig
from protocols.bringup import CalibrationProcedure

DOC = Path(__file__).resolve().parents[2] / "docs" / "lab.md"
TEXT = DOC.read_text()
BLOCKS: list[Any] = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", TEXT, flags=re.S)]


def test_the_settings_block_is_the_procedure_settings() -> None:
    settings = [b for b in BLOCKS if isinstance(b, dict) and "plan" in b]
    assert len(settings) == 1
    CalibrationProcedure.Settings.model_validate(settings[0])


def test_the_calibration_block_is_the_experiment_section() -> None:
    (block,) = [b for b in BLOCKS if isinstance(b, dict) and "calibration" in b]
    CalibrationUse.model_validate(block["calibration"])


def test_the_station_example_has_the_station_keys() -> None:
    (block,) = [b for b in BLOCKS if isinstance(b, dict) and "limits" in b]
    assert set(block) <= set(StationConfig.model_fields)


def test_every_picture_is_there() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TEXT)
    assert len(pictures) >= 5
    for picture in pictures:
        assert (DOC.parent / picture).is_file(), picture
