"""Hostile API input: Schemathesis derives requests from `/openapi.json` and throws them at a
running gateway; no answer may be a 5xx (bounded: < 60 s).

Besides the per-operation phases, the stateful phase follows the document's links: it creates
campaigns and launches, pauses, ends them and reads their stats by their real ids (a fuzzer
that only ever sends made-up ids tests nothing but the 404 path). The run's own report must
show those operations answered 2xx on real ids."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from cloud_gateway.campaigns.model import CampaignIn
from cloud_gateway.db.backend import Session
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_openapi_fuzzing_finds_no_server_error(
    mosquitto: MosquittoProcess, tmp_path: Path, gateway_db: str | None
) -> None:
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        seeded = await seed_campaigns(gw)
        (tmp_path / "schemathesis.toml").write_text(
            # Operations on a campaign take a real id most of the time, a made-up one otherwise.
            f"[dictionaries.campaigns]\nvalues = {json.dumps(seeded)}\n\n"
            "[[operations]]\n"
            'include-path-regex = "^/v1/campaigns/"\n'
            'parameters = { "path.id" = { dictionary = "campaigns", probability = 0.8 } }\n'
        )
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
            "25",
            "--seed",
            "6",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-time",
            "40",
            "--no-color",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(tmp_path / "events.ndjson"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-5000:]
        (tmp_path / "schemathesis.txt").write_text(text)
        # "N generated, N passed" and no "K failed" (its warnings may say "Authentication
        # failed: ..." of an operation that only answered 401: not a failure of ours)
        cases = re.search(r"(\d+) generated, (\d+) passed", text)
        assert cases is not None and cases[1] == cases[2], text[-3000:]
        assert re.search(r"\b\d+ (failed|errored)\b", text) is None, text[-3000:]
        assert gw.counters["store_errors"] == 0
        on_real_ids = await gw.db.call(_audited_changes)
        assert {"campaign.create", "campaign.launch", "campaign.pause", "campaign.end"} <= set(
            on_real_ids
        ), on_real_ids
        events = (tmp_path / "events.ndjson").read_text()
        assert any(f"/v1/campaigns/{cid}/stats" in events for cid in seeded)


async def seed_campaigns(gw: Gateway) -> list[str]:
    """Campaigns of every push mode and state the fuzzer can act on: their ids."""
    offer = {"type": "coupon", "title": "t", "category": "games", "surfaces": ["tv_home_banner"]}
    specs: list[dict[str, Any]] = [
        {"name": "cohort", "cohorts": ["all"], "offers": [offer]},
        {
            "name": "limited",
            "cohorts": ["all"],
            "offers": [{**offer, "limited": True, "stock": 5}],
        },
        {
            "name": "rules",
            "cohorts": ["all"],
            "targeting": {"rules": [{"kind": "no_purchase", "category": "games", "days": 7}]},
            "holdout": 0.1,
            "offers": [{**offer, "variant": "a"}, {**offer, "variant": "b"}],
        },
        {"name": "draft", "cohorts": ["profile:tv"], "offers": [offer]},
    ]
    ids = []
    for i, spec in enumerate(specs):
        campaign = await gw.campaigns.create(CampaignIn.model_validate(spec), "seed")
        if i < 3:
            await gw.campaigns.launch(campaign.id, "seed")
        ids.append(campaign.id)
    return ids


def _audited_changes(store: Session) -> dict[str, int]:
    """Changes the fuzzer (its token) made to campaigns that exist, by action."""
    return {
        r["action"]: r["n"]
        for r in store.conn.execute(
            "SELECT action, count(*) AS n FROM audit WHERE target IN (SELECT id FROM campaigns)"
            " AND who LIKE 'token:%' GROUP BY action"
        )
    }
