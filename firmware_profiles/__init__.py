"""Firmware profiles: one TOML file per device class (budgets, surfaces, uplink, consent)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def profile_path(name: str) -> Path:
    """Path of the shipped profile `name` (`hub`, `tv`, `phone`, `speaker`)."""
    return Path(str(resources.files(__name__).joinpath(f"{name}.toml")))


def available() -> list[str]:
    folder = Path(str(resources.files(__name__)))
    return sorted(p.stem for p in folder.glob("*.toml"))
