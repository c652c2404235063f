"""Gateway pieces without a broker: uplink parsing, store exactly-once, campaigns, keys, CLI."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import pytest

from cloud_gateway.campaigns import delivery
from cloud_gateway.campaigns.model import CampaignIn, build_catalog, new_campaign, transition
from cloud_gateway.claims import desk as claims
from cloud_gateway.config import load_settings
from cloud_gateway.db.audit import audit_log
from cloud_gateway.db.campaigns import campaign_rows
from cloud_gateway.db.devices import export_device, get_device
from cloud_gateway.db.ingest import store_batch
from cloud_gateway.db.store import Store
from cloud_gateway.errors import ConfigError, InvalidTransition
from cloud_gateway.ingest.service import Ignored, Parsed, Rejected, parse_uplink
from cloud_gateway.runtime.link import MqttLink
from cloud_gateway.security.auth import create_token, verify
from cloud_gateway.security.keys import load_or_create
from protocol import codec
from protocol.envelopes import OutcomeKind, TrustFile
from protocol.ids import utcnow
from protocol.signing import Verifier
from protocol.topics import Topics
from tests.support.builders import make_batch

ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics("edgemart/v1")


ONE_IMPRESSION: tuple[tuple[str, str, OutcomeKind]] = (("c1", "o1", "impression"),)


# ---------------------------------------------------------------- parsing hostile input


def test_parse_accepts_plain_and_zlib_batches() -> None:
    batch = make_batch("tv-0001", 3, outcomes=ONE_IMPRESSION)
    for payload in (codec.encode(batch), codec.encode(batch, compress=True)):
        result = parse_uplink(TOPICS, TOPICS.batch("tv-0001"), payload)
        assert isinstance(result, Parsed)
        assert result.message.to_wire() == batch.to_wire()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (zlib.compress(b"\0" * (100 * 1024 * 1024), 9), "too_large"),
        (b"{" + b" " * (5 * 1024 * 1024) + b"}", "too_large"),
        (b'{"v":1,"x":' + b"[" * 200 + b"]" * 200 + b"}", "malformed"),
        (b"\xff\xfe\x00 not json at all", "malformed"),
        (b'{"v":1,"device_id":"tv-0001","seq":"many"}', "invalid"),
        (b'{"v":2,"device_id":"tv-0001","seq":1}', "unsupported_version"),
        (b"[1,2,3]", "malformed"),
        (b"", "malformed"),
    ],
    ids=["zlib-bomb", "5MB", "deep", "binary", "wrong-types", "v2", "not-object", "empty"],
)
def test_parse_rejects_hostile_payloads_with_a_reason(payload: bytes, reason: str) -> None:
    result = parse_uplink(TOPICS, TOPICS.batch("tv-0001"), payload)
    assert isinstance(result, Rejected)
    assert (result.reason, result.device_id) == (reason, "tv-0001")


def test_parse_trusts_the_topic_not_the_payload() -> None:
    payload = codec.encode(make_batch("tv-other", 1, outcomes=ONE_IMPRESSION))
    result = parse_uplink(TOPICS, TOPICS.batch("tv-0001"), payload)
    assert isinstance(result, Rejected)
    assert (result.reason, result.device_id) == ("wrong_device", "tv-0001")


def test_parse_unknown_topics_and_cleared_state() -> None:
    assert parse_uplink(TOPICS, "edgemart/v1/dev/tv-0001/up/nope", b"{}") == Rejected(
        "unknown_topic", None, "not an uplink topic: 'edgemart/v1/dev/tv-0001/up/nope'"
    )
    assert parse_uplink(TOPICS, TOPICS.state("tv-0001"), b"") == Ignored("tv-0001")


# ---------------------------------------------------------------- store


def test_store_batch_exactly_once_across_reopen(tmp_path: Path) -> None:
    batch = make_batch("tv-0001", 7, signals=3, outcomes=ONE_IMPRESSION)
    store = Store(tmp_path / "g.db")
    assert store_batch(store, "tv-0001", batch, utcnow()) is True
    assert store_batch(store, "tv-0001", batch, utcnow()) is False
    store.close()
    store = Store(tmp_path / "g.db")
    assert store.applied == []  # migrations recorded, not re-applied
    assert store_batch(store, "tv-0001", batch, utcnow()) is False
    device = get_device(store, "tv-0001")
    assert device is not None
    assert (device["batches"], device["signals_stored"], device["outcomes_stored"]) == (1, 3, 1)
    assert device["last_seq"] == 7
    export = export_device(store, "tv-0001")
    assert export is not None
    assert sorted(s["id"] for s in export["signals"]) == sorted(s.id for s in batch.signals)
    assert [r[2:] for r in campaign_rows(store, "c1")["outcomes"]] == [("impression", 1)]
    store.close()


def test_failed_batch_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    store.conn.execute("DROP TABLE outcomes")  # the last insert of the transaction now fails
    with pytest.raises(Exception, match="no such table"):
        store_batch(store, "tv-0001", make_batch("tv-0001", 1, outcomes=ONE_IMPRESSION), utcnow())
    assert store.conn.execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    assert store.conn.execute("SELECT count(*) FROM signals").fetchone()[0] == 0
    store.close()


# ---------------------------------------------------------------- campaigns


def _spec(**changes: object) -> CampaignIn:
    offer = {
        "type": "coupon",
        "title": "Filter -20%",
        "category": "purifier_filter",
        "price": 99.0,
        "discount": 0.2,
        "surfaces": ["tv_home_banner"],
    }
    body: dict[str, object] = {"name": "filters", "offers": [offer], "cohorts": ["profile:tv"]}
    body.update(changes)
    return CampaignIn.model_validate(body)


def test_campaign_states_and_catalog() -> None:
    now = utcnow()
    draft = new_campaign(_spec(), now)
    assert draft.state == "draft"
    assert draft.offers[0].id
    with pytest.raises(InvalidTransition):
        transition(draft, "pause", now)
    live = transition(draft, "launch", now)
    bundle, per_campaign = build_catalog("profile:tv", [live], now, timedelta(days=7))
    assert [o.campaign_id for o in bundle.offers] == [live.id]
    assert per_campaign == {live.id: 1}
    assert bundle.expires_at == now + timedelta(days=7)
    paused = transition(live, "pause", now)
    empty, _ = build_catalog("profile:tv", [paused], now, timedelta(days=7), revokes=["x"])
    assert empty.offers == []
    assert empty.revokes == ["x"]
    other, _ = build_catalog("profile:hub", [live], now, timedelta(days=7))
    assert other.offers == []


def test_campaign_end_bounds_the_bundle() -> None:
    now = utcnow()
    ends = now + timedelta(days=2)
    live = transition(new_campaign(_spec(ends_at=ends.isoformat()), now), "launch", now)
    bundle, _ = build_catalog("profile:tv", [live], now, timedelta(days=7))
    assert bundle.expires_at == ends
    assert bundle.offers[0].expires_at == ends


# ---------------------------------------------------------------- config, keys, tokens


def test_settings_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="broker"):
        load_settings(broker="http://x:1", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="shared_group"):
        load_settings(data_dir=tmp_path, shared_group="a/b")
    with pytest.raises(ConfigError, match="surprise"):
        load_settings(data_dir=tmp_path, surprise=1)
    settings = load_settings(broker="mqtt://127.0.0.1:1999", data_dir=tmp_path, shared_group="g")
    assert settings.topics.gateway_filters(settings.shared_group)[0].startswith("$share/g/")


def test_keys_created_private_then_reloaded(tmp_path: Path) -> None:
    first = load_or_create(tmp_path, "t/v1")
    pem = tmp_path / "keys" / f"{first.signer.kid}.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    trust = TrustFile.model_validate(json.loads(first.trust_path.read_text()))
    assert trust.topic_root == "t/v1"
    again = load_or_create(tmp_path, "t/v1")
    assert again.signer.kid == first.signer.kid
    signed = again.signer.sign({"v": 1, "expires_at": "2999-01-01T00:00:00.000Z"})
    Verifier.from_public_keys(trust.keys).verify(signed)


@pytest.mark.integration  # spawns a process or starts a broker
def test_token_create_cli_subprocess(tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    data_dir.mkdir()
    Store(data_dir / "gateway.db").close()  # a gateway's database (`gateway run` made it)
    done = subprocess.run(
        [sys.executable, "-m", "cloud_gateway.cli", "token", "create", "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert len(lines[0]) >= 32
    store = Store(data_dir / "gateway.db")
    assert verify(store, lines[0]) is not None
    assert verify(store, lines[0] + "x") is None
    assert lines[0] not in (data_dir / "gateway.db").read_bytes().decode("latin-1")
    [entry] = audit_log(
        store,
    )  # who created which token, and when (never the secret)
    assert entry["action"] == "token.create" and entry["who"].startswith("cli")
    assert entry["target"] == f"token:{verify(store, lines[0])}"
    store.close()
    assert verify(Store(data_dir / "gateway.db"), create_token(data_dir, "ops:alice")) is not None
    assert audit_log(Store(data_dir / "gateway.db"))[0]["who"] == "ops:alice"


@pytest.mark.integration  # spawns a process or starts a broker
def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_gateway.cli",
            "run",
            "--broker",
            "http://nope:1",
            "--data-dir",
            str(tmp_path),
            "--http-port",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "broker" in done.stderr


async def test_the_mqtt_client_warns_only_past_the_publishes_the_gateway_overlaps(
    tmp_path: Path,
) -> None:
    """Pushes and claim results go out PUBLISH_CONCURRENCY at a time, each awaiting its PUBACK;
    aiomqtt's default (warn past 10 pending) logged a line per publish at every launch."""

    async def nothing(topic: str, payload: bytes) -> None:
        return None

    settings = load_settings(data_dir=tmp_path, broker="mqtt://127.0.0.1:1")
    client = MqttLink(settings, nothing)._make_client().client
    assert client.pending_calls_threshold > delivery.PUBLISH_CONCURRENCY
    assert client.pending_calls_threshold > claims.PUBLISH_CONCURRENCY
