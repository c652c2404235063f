"""A device or gateway installed without the `train`/`dev` extras still runs: the CLI, the
agent, the gateway and the demo never import the training or test-only libraries."""

from __future__ import annotations

import subprocess
import sys

EXTRAS_ONLY = ("onnx", "sklearn", "matplotlib", "playwright", "schemathesis", "hypothesis")

PROBE = f"""
import sys
import edgemart.cli
edgemart.cli.build_parser()
import agent.runtime.agent, cloud_gateway.runtime.gateway, simulators.demo, models.cli, bench.cli
print(",".join(m for m in {EXTRAS_ONLY!r} if m in sys.modules))
"""


def test_runtime_paths_do_not_need_the_extras() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"runtime imports extras-only packages: {proc.stdout}"


MODELS_PROBE = """
import pkgutil, sys
import models
names = sorted(m.name for m in pkgutil.iter_modules(models.__path__) if m.name != "__main__")
for name in names:
    __import__(f"models.{name}")
print(",".join(names))
print(",".join(m for m in sys.modules if m == "simulators" or m.startswith("simulators.")))
"""


def test_models_never_imports_the_simulated_world() -> None:
    """DESIGN: `models` trains only on logs in the gateway's export format; the world (and its
    ground-truth responses) lives in `simulators/` and must not be importable from training."""
    proc = subprocess.run(
        [sys.executable, "-c", MODELS_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported, leaked = proc.stdout.splitlines()
    assert {"train", "evaluate", "export", "gbdt", "build_default", "cli"} <= set(
        imported.split(",")
    )
    assert leaked == "", f"models imports {leaked}"
