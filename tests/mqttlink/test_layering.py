"""`mqttlink` is shared by both daemons, so it imports neither: only `protocol` of ours."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import pkgutil, sys
import mqttlink
for m in pkgutil.iter_modules(mqttlink.__path__):
    __import__(f"mqttlink.{m.name}")
ours = ("agent", "cloud_gateway", "simulators", "models", "edgemart", "bench")
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ours)))
"""


@pytest.mark.integration  # a fresh interpreter
def test_mqttlink_imports_neither_daemon() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"mqttlink imports {proc.stdout.strip()}"


def test_only_mqttlink_touches_aiomqtt_and_paho() -> None:
    """STYLE: paho confined to one adapter. The daemons speak `mqttlink`'s types and errors."""
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for package in ("agent", "cloud_gateway", "protocol"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                else:
                    continue
                if any(n.split(".")[0] in ("aiomqtt", "paho") for n in names):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
