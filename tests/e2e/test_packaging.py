"""The wheel the Dockerfile installs carries everything a device needs: profiles, the
default model, type markers; and the `edgemart` command is declared."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [built] = list(out.glob("edgemart-*.whl"))
    return zipfile.ZipFile(built)


def test_wheel_ships_profiles_and_the_default_model(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for needed in (
        "firmware_profiles/hub.toml",
        "firmware_profiles/tv.toml",
        "firmware_profiles/phone.toml",
        "models/default/model.onnx",
        "models/default/manifest.json",
        "protocol/py.typed",
        "agent/py.typed",
        "cloud_gateway/py.typed",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_declares_the_edgemart_command(wheel: zipfile.ZipFile) -> None:
    [entry] = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "edgemart = edgemart.cli:main" in wheel.read(entry).decode()
