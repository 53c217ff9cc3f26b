"""Paths in configuration files: relative ones are taken from the file's own folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationInfo


def from_config_dir(value: Path | None, info: ValidationInfo) -> Path | None:
    """`value` joined to the validation context's `base_dir` (set by the config loader) when it
    is relative; absolute paths, None, and validation without that context pass unchanged."""
    if value is None or value.is_absolute():
        return value
    context = info.context
    if isinstance(context, dict) and context.get("base_dir") is not None:
        return Path(context["base_dir"]) / value
    return value
