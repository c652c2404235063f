"""Issue 13, finite values on the gateway: the API answers 400 naming the field for `NaN`,
infinities, overflowing numbers and times that cannot be moved to UTC; a `NaN` an older
version stored fails no launch, pause or export, and a recorded migration cleans it."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud_gateway.campaigns.model import CampaignIn
from cloud_gateway.campaigns.targeting import window_bounds
from cloud_gateway.config import GatewaySettings, load_settings
from cloud_gateway.db.backend import Session
from cloud_gateway.db.finite import finite_text, from_text
from cloud_gateway.errors import ConfigError
from cloud_gateway.ingest.parse import unstorable_value
from cloud_gateway.runtime.gateway import Gateway
from cloud_gateway.security.auth import create_token
from simulators.brokers import MosquittoProcess
from tests.support.builders import CAMPAIGN_OFFER
from tests.support.gateway_world import gateway_settings

OLD_NAN = '{"category":"purifier_filter","level":NaN}'
"""A signal's attrs as a gateway before issue 13 stored them (`to_text` writes NaN as is)."""
MIGRATION = {"sqlite": "finite_numbers", "postgresql": "pg005_finite_numbers"}


def _strict_json(text: str) -> Any:
    """JSON as a browser reads it: `NaN` and infinities are not JSON."""

    def refuse(literal: str) -> None:
        raise ValueError(f"{literal} is not JSON")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- pure parts


def test_finite_text_makes_non_finite_numbers_null_and_leaves_the_rest() -> None:
    assert finite_text(OLD_NAN) == '{"category":"purifier_filter","level":null}'
    assert (
        finite_text('[1.5,Infinity,{"a":-Infinity,"b":"NaN"}]') == '[1.5,null,{"a":null,"b":"NaN"}]'
    )
    assert finite_text('{"a":"NaN and Infinity in a string","b":2}') is None  # nothing to do
    assert finite_text("not json NaN") is None  # left as it is
    assert finite_text(None) is None
    assert from_text(OLD_NAN) == {"category": "purifier_filter", "level": None}


def test_times_that_cannot_move_to_utc_are_found_by_path() -> None:
    east, west = timezone(timedelta(hours=14)), timezone(timedelta(hours=-14))
    spec = CampaignIn.model_validate(
        {"name": "x", "cohorts": ["all"], "offers": [CAMPAIGN_OFFER, CAMPAIGN_OFFER]}
    )
    assert unstorable_value(spec) is None
    early = datetime(1, 1, 1, tzinfo=east)
    late = datetime(9999, 12, 31, 23, 59, tzinfo=west)
    bad = spec.model_copy(update={"ends_at": late})
    assert unstorable_value(bad) == ("ends_at", f"{late.isoformat()} is out of range in UTC")
    offers = [spec.offers[0], spec.offers[1].model_copy(update={"starts_at": early})]
    found = unstorable_value(spec.model_copy(update={"offers": offers}))
    assert found is not None and found[0] == "offers.1.starts_at"
    # the edges themselves are fine in UTC, and west of UTC in year 1 / east in 9999
    for fine in (datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=west)):
        assert unstorable_value({"t": [fine]}) is None
    assert unstorable_value({"t": datetime(9999, 12, 31, 23, tzinfo=east)}) is None


def test_an_aggregate_window_at_the_end_of_the_calendar_is_not_a_crash() -> None:
    assert window_bounds("1d:9999-12-31") is None  # ends past year 9999
    assert window_bounds("1h:9999-12-31T23") is None
    start = datetime(9999, 12, 30, tzinfo=UTC)
    assert window_bounds("1d:9999-12-30") == (start, start + timedelta(days=1))


# ---------------------------------------------------------------- the migration


def _old_rows(store: Session, device: str) -> None:
    """Rows as a gateway before issue 13 wrote them: NaN and infinities in a device's data."""
    conn = store.conn
    day = "2026-12-01"
    with store.transaction():
        conn.execute(
            "INSERT INTO devices (device_id, status, first_seen, last_seen, malformed, profile,"
            " stats) VALUES (?, 'offline', ?, ?, 0, 'tv', ?)",
            [device, f"{day}T00:00:00.000Z", f"{day}T00:00:00.000Z", '{"dropped":NaN}'],
        )
        conn.execute(
            "INSERT INTO signals (device_id, id, seq, kind, at, attrs, received_day)"
            " VALUES (?, ?, 1, 'consumable_level', ?, ?, ?)",
            [device, f"{device}-s1", f"{day}T00:00:00.000Z", OLD_NAN, day],
        )
        conn.execute(
            "INSERT INTO signals (device_id, id, seq, kind, at, attrs, received_day)"
            " VALUES (?, ?, 1, 'member_tier', ?, ?, ?)",
            [device, f"{device}-s2", f"{day}T00:00:01.000Z", '{"tier":Infinity}', day],
        )
        conn.execute(
            "INSERT INTO outcomes (device_id, id, seq, offer_id, campaign_id, variant, kind, at,"
            " surface, score, model_version, counterfactual, received_day)"
            " VALUES (?, ?, 1, 'o1', 'c1', 'a', 'click', ?, 'tv_home_banner', ?, 1, 0, ?)",
            [device, f"{device}-o1", f"{day}T00:00:00.000Z", math.inf, day],
        )
        conn.execute(
            "INSERT INTO outcome_features (device_id, id, features) VALUES (?, ?, ?)",
            [device, f"{device}-o1", "[0.5,NaN,-Infinity]"],
        )


def test_a_recorded_migration_cleans_what_older_versions_stored(
    open_store: Callable[[], Session],
) -> None:
    store = open_store()
    name = MIGRATION[store.dialect.name]
    assert name in store.applied_migrations()
    _old_rows(store, "tv-old-0001")
    with store.transaction():  # as if the rows were there before this version's first start
        store.conn.execute("DELETE FROM migrations WHERE name = ?", [name])
    store.close()

    again = open_store()  # the next start applies it
    assert again.applied_migrations()[-1] == name
    attrs = {
        r["id"]: r["attrs"]
        for r in again.rows("SELECT id, attrs FROM signals WHERE device_id = 'tv-old-0001'")
    }
    assert attrs == {
        "tv-old-0001-s1": '{"category":"purifier_filter","level":null}',
        "tv-old-0001-s2": '{"tier":null}',
    }
    device = again.one("SELECT stats FROM devices WHERE device_id = 'tv-old-0001'")
    assert device is not None and device["stats"] == '{"dropped":null}'
    outcome = again.one("SELECT score FROM outcomes WHERE device_id = 'tv-old-0001'")
    assert outcome is not None and outcome["score"] is None
    features = again.one("SELECT features FROM outcome_features WHERE device_id = 'tv-old-0001'")
    assert features is not None and features["features"] == "[0.5,null,null]"


# ---------------------------------------------------------------- through the API


async def _api(
    http: aiohttp.ClientSession, method: str, path: str, body: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    async with http.request(method, path, data=body, headers=headers) as resp:
        return resp.status, _strict_json(await resp.text())


def _campaign(**extra: Any) -> dict[str, Any]:
    return {"name": "filters", "cohorts": ["all"], "offers": [CAMPAIGN_OFFER], **extra}


async def test_api_bodies_with_non_finite_numbers_or_unconvertible_times_are_400_naming_the_field(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            good = json.dumps(_campaign())
            for literal in ("NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 21):
                body = good.replace('"discount": 0.2', f'"discount": {literal}')
                status, problem = await _api(http, "POST", "/v1/campaigns", body)
                assert status == 400, (literal, problem)
                assert problem["errors"] == [
                    {"loc": "offers.0.discount", "msg": f"{literal} is not a finite number"}
                ]
            status, problem = await _api(
                http, "POST", "/v1/models/1/rollout", '{"cohort": "all", "percent": NaN}'
            )
            assert (status, problem["errors"][0]["loc"]) == (400, "percent")
            for field, value in (
                ("starts_at", "0001-01-01T00:00:00+14:00"),
                ("ends_at", "9999-12-31T23:59:59-14:00"),
                ("name", "a\x00b"),  # valid JSON (`\u0000`); PostgreSQL's text cannot hold it
            ):
                status, problem = await _api(
                    http, "POST", "/v1/campaigns", json.dumps(_campaign(**{field: value}))
                )
                assert status == 400, problem
                assert problem["errors"][0]["loc"] == field
            for method, path in (
                ("GET", "/v1/campaigns/a%00b"),
                ("POST", "/v1/campaigns/%00/launch"),
                ("GET", "/v1/devices/tv-0001%00/export"),
                ("DELETE", "/v1/devices/%00"),
            ):
                status, problem = await _api(http, method, path)
                assert status == 404, (path, problem)
            status, created = await _api(http, "POST", "/v1/campaigns", good)
            assert status == 201, created
            status, campaigns = await _api(http, "GET", "/v1/campaigns")
            assert status == 200 and len(campaigns["campaigns"]) == 1
        ready = await gw.readiness()
        assert ready["checks"]["database"]["ok"], ready


async def test_a_nan_an_older_version_stored_fails_no_launch_pause_or_export(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        await gw.db.call(_old_rows, "tv-old-0001")  # after the migration: as raw as it gets

        def healthy(store: Session) -> None:
            with store.transaction():
                store.conn.execute(
                    "INSERT INTO devices (device_id, status, first_seen, last_seen, malformed,"
                    " profile) VALUES ('tv-new-0002', 'online', ?, ?, 0, 'tv')",
                    ["2026-12-01T00:00:00.000Z", "2026-12-01T00:00:00.000Z"],
                )
                store.conn.execute(
                    "INSERT INTO signals (device_id, id, seq, kind, at, attrs, received_day)"
                    " VALUES ('tv-new-0002', 's', 1, 'member_tier', ?, '{\"tier\":2}', ?)",
                    ["2026-12-01T00:00:00.000Z", "2026-12-01"],
                )

        await gw.db.call(healthy)
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            targeted = json.dumps(_campaign(targeting={"member_tiers": [2]}))
            status, campaign = await _api(http, "POST", "/v1/campaigns", targeted)
            assert status == 201, campaign
            cid = campaign["id"]
            for action in ("launch", "pause", "launch"):
                status, doc = await _api(http, "POST", f"/v1/campaigns/{cid}/{action}")
                assert status == 200, (action, doc)
            pushed = await gw.db.call(
                lambda s: s.rows("SELECT device_id FROM device_pushes WHERE campaign_id = ?", [cid])
            )
            assert {r["device_id"] for r in pushed} == {"tv-new-0002"}  # facts of the others
            status, export = await _api(http, "GET", "/v1/devices/tv-old-0001/export")
            assert status == 200
            assert [s["attrs"] for s in export["signals"]] == [
                {"category": "purifier_filter", "level": None},
                {"tier": None},
            ]
            assert export["registry"]["stats"] == {"dropped": None}


async def test_times_at_the_edges_of_the_calendar_in_utc_are_served_end_to_end(
    tmp_path: Path, mosquitto: MosquittoProcess, gateway_db: str | None
) -> None:
    """Year 1 and year 9999 are valid RFC 3339 times: stored, launched, counted, shown."""
    settings = gateway_settings(tmp_path, mosquitto, db=gateway_db)
    async with Gateway(settings) as gw:
        token = await asyncio.to_thread(create_token, settings.data_dir, db=settings.db)
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{gw.http_port}", headers={"Authorization": f"Bearer {token}"}
        ) as http:
            offer = {**CAMPAIGN_OFFER, "expires_at": "9999-12-31T23:59:59.999-00:00"}
            body = _campaign(
                offers=[offer],
                starts_at="0001-01-01T00:00:00Z",
                ends_at="9999-12-31T09:59:59+14:00",
                targeting={"member_tiers": [1]},
            )
            status, campaign = await _api(http, "POST", "/v1/campaigns", json.dumps(body))
            assert status == 201, campaign
            assert campaign["ends_at"] == "9999-12-30T19:59:59.000Z"
            cid = campaign["id"]
            for method, path in (
                ("POST", f"/v1/campaigns/{cid}/launch"),
                ("GET", f"/v1/campaigns/{cid}/stats"),
                ("POST", f"/v1/campaigns/{cid}/pause"),
                ("GET", "/v1/stats"),
                ("GET", "/v1/campaigns"),
            ):
                status, doc = await _api(http, method, path)
                assert status == 200, (path, doc)


@pytest.mark.parametrize("literal", ["nan", "inf", "-inf", "1e400"])
def test_every_numeric_setting_refuses_non_finite_values_naming_the_field(
    literal: str, tmp_path: Path
) -> None:
    """The gateway has no config file: settings come from flags and the environment as text,
    and every number among them is bounded, so `nan` or `1e400` is a ConfigError that names
    the field (a setting added without bounds fails here)."""
    numeric = [
        name
        for name, field in GatewaySettings.model_fields.items()
        if field.annotation in (int, float)
        or "int" in str(field.annotation)
        or "float" in str(field.annotation)
    ]
    assert "ack_delay_ms" in numeric and "http_port" in numeric
    for name in numeric:
        with pytest.raises(ConfigError, match=f"field {name}"):
            load_settings("command line", data_dir=tmp_path, **{name: literal})
