"""The memory suite's own process stays light: a page it maps is one the measured agent's
page-out cannot hand back (the kernel keeps pages another process maps)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = (
    "import sys, bench.rss_bench\n"
    "print(','.join(m for m in ('numpy', 'onnxruntime', 'aiohttp') if m in sys.modules))\n"
)


@pytest.mark.integration
def test_the_rss_suite_maps_neither_numpy_nor_onnxruntime_nor_aiohttp() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
