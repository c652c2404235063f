"""Hostile API input: Schemathesis derives requests from `/openapi.json` and throws them at a
running gateway; no answer may be a 5xx (bounded: a few examples per operation, < 60 s)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from pathlib import Path

import pytest

from cloud_gateway.auth import create_token
from cloud_gateway.config import GatewaySettings
from cloud_gateway.service import Gateway
from edgemart.broker import MosquittoProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_openapi_fuzzing_finds_no_server_error(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    tag = uuid.uuid4().hex[:10]
    settings = GatewaySettings(
        broker=mosquitto.url,
        data_dir=tmp_path / "gw",
        http_port=0,
        topic_root=f"t{tag}/v1",
        client_id=f"gw-{tag}",
    )
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir)
        base = f"http://127.0.0.1:{gw.http_port}"
        proc = await asyncio.create_subprocess_exec(
            cli,
            "run",
            f"{base}/openapi.json",
            "--url",
            base,
            "-H",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "8",
            "--seed",
            "6",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-time",
            "30",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-5000:]
        (tmp_path / "schemathesis.txt").write_text(text)
        assert " passed" in text
        assert "failed" not in text.lower().split("seed:")[0][-400:], text[-3000:]
        assert gw.counters["store_errors"] == 0
