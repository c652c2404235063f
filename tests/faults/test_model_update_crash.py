"""Power cut during a model swap: a process swapping models is SIGKILLed at random moments;
what is on disk afterwards always loads as one complete model, old or new, never a mix."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from agent.model.files import load_current
from agent.model.scoring import default_model_paths

pytestmark = pytest.mark.slow

SWAPPER = """
import json, sys
from pathlib import Path
from agent.model.files import install, point_to
folder, files = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
version = 2
while True:
    name = "a" if version % 2 else "b"
    data = Path(files[name]["path"]).read_bytes()
    install(folder, version, data, {**files[name]["manifest"], "version": version})
    point_to(folder, version)
    print(version, flush=True)
    version += 1
"""


def _variant(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    """A second, different model file (same graph, another doc string) and its manifest."""
    onnx_path, manifest_path = default_model_paths()
    proto = onnx.load(str(onnx_path))
    proto.doc_string = "variant b " * 50
    path = tmp_path / "b.onnx"
    data = proto.SerializeToString()
    path.write_bytes(data)
    manifest = json.loads(manifest_path.read_text())
    manifest.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return path, manifest


def test_sigkill_mid_swap_leaves_old_or_new_never_a_mix(tmp_path: Path) -> None:
    onnx_path, manifest_path = default_model_paths()
    b_path, b_manifest = _variant(tmp_path)
    files = {
        "a": {"path": str(onnx_path), "manifest": json.loads(manifest_path.read_text())},
        "b": {"path": str(b_path), "manifest": b_manifest},
    }
    (tmp_path / "files.json").write_text(json.dumps(files))
    folder = tmp_path / "models"
    rng = random.Random(5)
    seen: set[int] = set()
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-c", SWAPPER, str(folder), str(tmp_path / "files.json")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # it is swapping now
        time.sleep(rng.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        model = load_current(folder)
        assert model is not None, "a power cut left no loadable current model"
        expected = files["a" if model.version % 2 else "b"]["manifest"]
        assert model.sha256 == expected["sha256"]
        seen.add(model.version)
        # the next run starts over at v2: a fresh install must still win
        for stray in folder.glob("*"):
            stray.unlink()
    assert len(seen) > 1
