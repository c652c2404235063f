"""`mqttlink` is shared by both daemons, so it imports neither: only `protocol` of ours."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import pkgutil, sys
import mqttlink
for m in pkgutil.iter_modules(mqttlink.__path__):
    __import__(f"mqttlink.{m.name}")
ours = ("agent", "cloud_gateway", "simulators", "models", "edgemart", "bench")
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ours)))
"""


def test_mqttlink_imports_neither_daemon() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"mqttlink imports {proc.stdout.strip()}"
