"""The import contract covers every application module, so the layers cannot erode unnoticed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import hil

ROOT = Path(__file__).resolve().parents[2]


def _application_modules() -> set[str]:
    package = Path(hil.__file__).parent
    names = {f"hil.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("__")}
    names |= {f"hil.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists()}
    return names - {"hil.core"}


def test_every_application_module_is_forbidden_to_the_lower_layers() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    forbidden = [set(c["forbidden_modules"]) for c in contracts if c["type"] == "forbidden"]
    assert forbidden, "no forbidden contracts found"
    for modules in forbidden:
        missing = _application_modules() - modules
        assert not missing, f"add {sorted(missing)} to the import-linter contracts in pyproject"
