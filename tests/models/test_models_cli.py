"""The model verbs: `python -m models build-default` and the `edgemart model` group."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.cli import main, register


@pytest.mark.integration  # spawns a process or starts a broker
def test_build_default_verb_writes_model_manifest_and_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    assert main(["build-default", "--seed", "3", "--households", "300", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluation.json",
        "evaluation.md",
        "evaluation.png",
        "manifest.json",
        "model.onnx",
    ]
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "evaluation.md").read_text()
    assert "| popularity |" in table
    assert "P@3" in table
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    assert "model.onnx" in capsys.readouterr().out


def test_bad_arguments_are_one_line_and_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build-default", "--households", "1", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_register_adds_the_model_group() -> None:
    parser = argparse.ArgumentParser(prog="edgemart")
    register(parser.add_subparsers(dest="area", required=True))
    args = parser.parse_args(["model", "build-default", "--households", "10", "--seed", "2"])
    assert (args.area, args.verb, args.households, args.seed) == ("model", "build-default", 10, 2)
    assert callable(args.func)


@pytest.mark.integration  # spawns a process or starts a broker
def test_python_dash_m_models_shows_its_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "models", "build-default", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "--households" in done.stdout


WITHOUT_TRAIN_EXTRA = """
import sys

class Missing:
    # what an install without the `train` extra finds: no onnx, scikit-learn or matplotlib
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sklearn", "onnx", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from edgemart.cli import main
raise SystemExit(main(["model", "build-default", "--out", sys.argv[1]]))
"""


@pytest.mark.integration
def test_build_default_without_the_train_extra_says_which_extra_to_install(
    tmp_path: Path,
) -> None:
    out = tmp_path / "model"
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "edgemart[train]" in proc.stderr and ".[train]" in proc.stderr
    assert not out.exists()
