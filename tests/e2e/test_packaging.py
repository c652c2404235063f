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
        "cloud_gateway/api/static/index.html",
        "mqttlink/py.typed",
    ):
        assert needed in names, f"{needed} missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_declares_the_edgemart_command(wheel: zipfile.ZipFile) -> None:
    [entry] = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    assert "edgemart = edgemart.cli:main" in wheel.read(entry).decode()


def test_the_dockerfile_copies_every_package_the_wheel_is_built_from() -> None:
    """A package left out of the image's build stage is missing from its wheel, and the image
    fails at its first import (the MQTT adapter's move to `mqttlink/` would have done that)."""
    import tomllib  # noqa: PLC0415

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = {name.rstrip("*") for name in include}
    copied = {
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    }
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    for package in packages:
        assert (ROOT / package / "__init__.py").exists(), package


def test_our_packaging_warns_of_nothing() -> None:
    """What `pip install -e '.[dev]'` builds from pyproject.toml raises no deprecation
    warning (the `project.license` table did, once per build step)."""
    import warnings  # noqa: PLC0415

    from setuptools.config.pyprojecttoml import (  # type: ignore[import-untyped]  # noqa: PLC0415
        apply_configuration,
    )
    from setuptools.dist import Distribution  # type: ignore[import-untyped]  # noqa: PLC0415

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.get_name() == "edgemart"
    assert [str(w.message).splitlines()[0] for w in caught] == []


def test_debian_packages_are_installed_without_recommends() -> None:
    """The test set-up stays lean: every `apt-get install` asks for no recommended extras."""
    for name in ("scripts/test.sh", "Dockerfile"):
        path = ROOT / name
        if not path.exists():
            continue
        installs = [line for line in path.read_text().splitlines() if "apt-get install" in line]
        for line in installs:
            assert "--no-install-recommends" in line, f"{name}: {line.strip()}"
    assert "systemd" in (ROOT / "scripts" / "test.sh").read_text()  # systemd-analyze
