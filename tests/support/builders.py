"""Builders of test data: offers, campaign offers, uplink batches, ONNX models and manifests,
gateway databases as an older release left them."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from onnx import TensorProto, helper
from sqlite_utils import Database as SqliteDatabase

from agent.features.context import UserContext
from cloud_gateway.db import migrations
from protocol import codec
from protocol.envelopes import Ack, Batch, Offer, Outcome, OutcomeKind, Signal
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from simulators.household import UNPACED

# every consent granted, as the agent's API and `Agent.set_consent` take it
ALL = {"analytics": True, "personalization": True, "marketing": True}


def unpaced(decisions: dict[str, Any] | None = None) -> dict[str, Any]:
    """`UNPACED` (no quiet hours or daily caps of the shipped profiles, so no test depends on
    the hour it runs) with `decisions` over it: a test of pacing sets its own."""
    return {**UNPACED, **(decisions or {})}


SURFACE = "tv_home_banner"
# a fixed moment for pure tests of offers and contexts
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

# one offer of a campaign, as the gateway's campaign API takes it
CAMPAIGN_OFFER = {
    "type": "replenishment",
    "title": "Filter -20%",
    "category": "purifier_filter",
    "discount": 0.2,
    "surfaces": [SURFACE],
}


# ---------------------------------------------------------------- offers and contexts


def offer(oid: str, **kw: Any) -> dict[str, Any]:
    """An offer of a bundle as JSON, live from five minutes ago for a day; `kw` override."""
    now = utcnow()
    body: dict[str, Any] = {
        "id": oid,
        "campaign_id": f"c-{oid}",
        "type": "coupon",
        "title": f"Offer {oid}",
        "category": "groceries",
        "price": 20.0,
        "discount": 0.1,
        "surfaces": [SURFACE],
        "starts_at": format_time(now - timedelta(minutes=5)),
        "expires_at": format_time(now + timedelta(days=1)),
    }
    body.update(kw)
    return body


def signed_bundle(signer: Signer, offers: Sequence[dict[str, Any]]) -> bytes:
    """A device bundle of `offers` (`offer(...)` dicts), live for an hour, signed by `signer`."""
    now = utcnow()
    body = {
        "v": 1,
        "id": new_id(),
        "issued_at": format_time(now),
        "expires_at": format_time(now + timedelta(hours=1)),
        "offers": list(offers),
    }
    return codec.dumps(signer.sign(body))


def make_offer(oid: str, **kw: Any) -> Offer:
    """A validated `Offer`, live for a day either side of `NOW`; `kw` override."""
    fields: dict[str, Any] = {
        "id": oid,
        "campaign_id": f"c-{oid}",
        "type": "coupon",
        "title": f"offer {oid}",
        "category": "groceries",
        "surfaces": [SURFACE],
        "starts_at": NOW - timedelta(days=1),
        "expires_at": NOW + timedelta(days=1),
    }
    fields.update(kw)
    return Offer.model_validate(fields)


def context(personalized: bool = True, **kw: Any) -> UserContext:
    """A TV user's context at 06:00 with empty windows; `kw` override."""
    base: dict[str, Any] = {
        "profile": "tv",
        "local_hour": 6.0,
        "category_24h": MappingProxyType({}),
        "category_7d": MappingProxyType({}),
        "consumable_need": MappingProxyType({}),
        "member_tier": 0,
        "personalized": personalized,
    }
    base.update(kw)
    return UserContext(**base)


# ---------------------------------------------------------------- uplink batches


def make_batch(
    device_id: str,
    seq: int,
    signals: int = 2,
    outcomes: Sequence[tuple[str, str, OutcomeKind]] = (),
    features: Sequence[float] | None = None,
) -> Batch:
    """A valid uplink batch: `signals` app opens, then one outcome per (campaign, offer, kind),
    each logged with `features` when given."""
    now = utcnow()
    return Batch(
        device_id=device_id,
        seq=seq,
        sent_at=now,
        agent_version="0.1.0",
        model_version=1,
        signals=[
            Signal(id=new_id(), kind="app_open", at=now, attrs={"app": "tv", "category": "games"})
            for _ in range(signals)
        ],
        outcomes=[
            Outcome(
                id=new_id(),
                offer_id=offer_id,
                campaign_id=campaign_id,
                kind=kind,
                at=now,
                surface=SURFACE,
                features=list(features) if features is not None else None,
            )
            for campaign_id, offer_id, kind in outcomes
        ],
    )


# ---------------------------------------------------------------- models


def onnx_bytes(
    weights: Sequence[float],
    bias: float = 0.0,
    *,
    width: int | None = None,
    input_name: str = "features",
    output_name: str = "score",
) -> bytes:
    """A tiny logistic model: sigmoid(features @ W + b), input [N, F], output [N, 1]."""
    f = len(weights) if width is None else width
    w = helper.make_tensor("W", TensorProto.FLOAT, [len(weights), 1], list(weights))
    b = helper.make_tensor("B", TensorProto.FLOAT, [1], [bias])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "W"], ["z0"]),
            helper.make_node("Add", ["z0", "B"], ["z"]),
            helper.make_node("Sigmoid", ["z"], [output_name]),
        ],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 1])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def spec_dict(
    names: Sequence[str],
    *,
    means: Sequence[float] | None = None,
    scales: Sequence[float] | None = None,
    defaults: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A feature spec as JSON: one feature per name, `user.*` and `household.*` ones personal
    (version 2 when it names a household feature)."""
    n = len(names)
    return {
        "version": 2 if any(name.startswith("household.") for name in names) else 1,
        "features": [
            {
                "name": name,
                "mean": (means or [0.0] * n)[i],
                "scale": (scales or [1.0] * n)[i],
                "default": (defaults or [0.0] * n)[i],
                "personal": name.startswith(("user.", "household.")),
            }
            for i, name in enumerate(names)
        ],
    }


def manifest_for(data: bytes, spec: dict[str, Any], *, version: int = 1) -> dict[str, Any]:
    """The manifest of model bytes `data` with feature spec `spec`, valid for a year."""
    return {
        "v": 1,
        "name": "tiny",
        "version": version,
        "profiles": ["tv", "hub"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "feature_spec": spec,
        "created_at": "2026-03-01T00:00:00.000Z",
        "expires_at": "2027-03-01T00:00:00.000Z",
    }


def write_model(
    directory: Path,
    names: Sequence[str],
    weights: Sequence[float],
    bias: float = 0.0,
    *,
    version: int = 1,
    **spec_kw: Any,
) -> tuple[Path, dict[str, Any]]:
    """A tiny model written to `directory`, and its manifest."""
    data = onnx_bytes(weights, bias)
    path = directory / f"model-{hashlib.sha256(data).hexdigest()[:8]}.onnx"
    path.write_bytes(data)
    return path, manifest_for(data, spec_dict(names, **spec_kw), version=version)


# ---------------------------------------------------------------- old databases


def gateway_db_before(path: Path, migration: migrations.Migration, sql: Sequence[str]) -> None:
    """A gateway database as a release before `migration` left it: the migrations before it
    applied, then `sql` run on it (the old rows a test wants migrated)."""
    mine = migrations.MIGRATIONS.index(migration)
    before, rest = migrations.MIGRATIONS[:mine], migrations.MIGRATIONS[mine:]
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        migrations.MIGRATIONS[:] = before
        try:
            migrations.apply_migrations(SqliteDatabase(conn))
        finally:
            migrations.MIGRATIONS[:] = before + rest
        for statement in sql:
            conn.execute(statement)


def signed_ack(
    signer: Signer,
    device_id: str,
    seqs: Sequence[int],
    outbox_id: str | None = None,
    refused: Sequence[dict[str, Any]] | None = None,
) -> bytes:
    """The payload of an ack as the gateway sends it: for one device, signed (issue 14)."""
    ack = Ack.model_validate(
        {
            "acks": list(seqs),
            "outbox_id": outbox_id,
            "refused": list(refused) if refused is not None else None,
            "device_id": device_id,
            "expires_at": utcnow() + timedelta(days=1),
        }
    )
    return codec.dumps(signer.sign(ack.to_wire()))
