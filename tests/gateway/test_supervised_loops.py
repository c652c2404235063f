"""Issue 13, supervised loops on the gateway: a loop that raises is restarted with backoff,
counted (`loop_restarts` in `/v1/stats`) and shown down in `/readyz` meanwhile; a loop that
would fail at every pass on one poisoned row (a device push or command that cannot be read
or encoded) sets that row aside (quarantined: counted, kept, shown in `/v1/stats` and the
export) and sends everything behind it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from cloud_gateway.db.backend import Session
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from protocol.ids import format_time, utcnow
from simulators.brokers import MosquittoProcess
from tests.support.gateway_world import gateway_settings
from tests.support.waiting import eventually

BAD, GOOD = "tv-poison-0001", "tv-fine-0002"


def _rows(store: Session) -> None:
    """Outstanding pushes and commands as older versions or a damaged disk left them: one
    of each unreadable, queued before a good one."""
    now = utcnow()
    created = [format_time(now - timedelta(minutes=m)) for m in (10, 5)]
    # last sent a second ago: the gateway's own re-send loops (every 600 s here) leave them
    # to the passes this test makes
    sent = format_time(now - timedelta(seconds=1))
    expires = format_time(now + timedelta(days=1))
    with store.transaction():
        for device in (BAD, GOOD):
            store.conn.execute(
                "INSERT INTO devices (device_id, status, first_seen, last_seen, malformed)"
                " VALUES (?, 'offline', ?, ?, 0)",
                [device, created[0], created[0]],
            )
        for (bundle, device, payload), at in zip(
            (("b-bad", BAD, '{"offers": [trunc'), ("b-good", GOOD, '{"v": 1, "id": "b-good"}')),
            created,
            strict=True,
        ):
            store.conn.execute(
                "INSERT INTO device_pushes (bundle_id, device_id, campaign_id, kind, offers,"
                " payload, created_at, expires_at, sent_at)"
                " VALUES (?, ?, 'c1', 'device', 1, ?, ?, ?, ?)",
                [bundle, device, payload, at, expires, sent],
            )
        for (cid, device, payload, until), at in zip(
            (
                ("cmd-bad", BAD, '"not an object"', expires),
                ("cmd-good", GOOD, '{"v": 1, "id": "cmd-good"}', expires),
            ),
            created,
            strict=True,
        ):
            store.conn.execute(
                "INSERT INTO device_commands (id, device_id, kind, payload, created_at,"
                " expires_at, sent_at) VALUES (?, ?, 'forget', ?, ?, ?, ?)",
                [cid, device, payload, at, until, sent],
            )


def _sends(store: Session) -> dict[str, tuple[int, Any]]:
    pushes = store.rows("SELECT bundle_id AS id, sends, quarantined FROM device_pushes")
    commands = store.rows("SELECT id, sends, quarantined FROM device_commands")
    return {r["id"]: (int(r["sends"]), r["quarantined"]) for r in pushes + commands}


async def test_a_poisoned_push_or_command_is_quarantined_and_the_rest_is_sent(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, resend_after_s=600)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        await gw.db.call(_rows)
        for _ in range(2):  # the second pass leaves the quarantined rows alone
            await gw.campaigns.delivery.resend_due(timedelta(0))
            await gw.parts.erasure.resend_due(timedelta(0))
        sends = await gw.db.call(_sends)
        assert sends["b-good"] == (2, None) and sends["cmd-good"] == (2, None)
        assert sends["b-bad"][0] == 0 and "not a JSON object" in sends["b-bad"][1]
        assert sends["cmd-bad"][0] == 0 and "not a JSON object" in sends["cmd-bad"][1]
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            stats = await (await http.get("/v1/stats")).json()
            assert (stats["pushes_quarantined"], stats["commands_quarantined"]) == (1, 1)
            assert (stats["quarantined_pushes"], stats["quarantined_commands"]) == (1, 1)
            export = await (await http.get(f"/v1/devices/{BAD}/export")).json()
        [push] = export["device_pushes"]  # kept, and shown to whoever exports the device
        assert (push["bundle_id"], push["sends"]) == ("b-bad", 0) and push["quarantined"]


async def test_a_loop_that_raises_is_restarted_counted_and_shown_down_meanwhile(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db, scheduler_tick_s=0.05)
    async with Gateway(settings) as gw:
        campaigns = gw.campaigns
        real = campaigns.run_due
        calls: list[int] = []

        async def broken_once() -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in one tick")
            return await real()

        campaigns.run_due = broken_once  # type: ignore[method-assign]
        ready = await eventually(
            lambda: _down(gw), 5, "readiness names the scheduler while it waits to restart"
        )
        assert ready["checks"]["loops"]["down"] == ["gateway-scheduler"]
        await eventually(lambda: len(calls) >= 2, 5, "the scheduler runs again")
        assert gw.counters["loop_restarts"] == 1
        assert gw.counters["loop_restarts_gateway-scheduler"] == 1
        after = await gw.readiness()
        assert after["checks"]["loops"] == {
            "ok": True,
            "down": [],
            "restarts": 1,
            "restarts_by_loop": {"gateway-scheduler": 1},
        }


async def _down(gw: Gateway) -> dict[str, Any] | None:
    ready = await gw.readiness()
    return ready if ready["checks"]["loops"]["down"] else None
