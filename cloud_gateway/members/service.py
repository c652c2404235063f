"""The member desk: members, their devices and points for operators, and each device's
signed `MemberStatus` (retained on `dev/{id}/down/member`) kept in step with the ledger."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_gateway.db import members as sql
from cloud_gateway.errors import GatewayError
from cloud_gateway.members.ledger import Entry
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.envelopes import Id
from protocol.ids import new_id, utcnow
from protocol.members import MAX_POINTS, MemberStatus, tier_name, tier_of
from protocol.topics import DEVICE_ID_RE

log = logging.getLogger(__name__)

STATUS_TTL = timedelta(days=90)
"""A status expires after this; it is signed again at each ledger change and device birth."""
MEMBER_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
Points = Annotated[int, Field(ge=1, le=MAX_POINTS)]
SourceKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class MemberIn(BaseModel):
    """`POST /v1/members`: a member (a pseudonymous id: no name, no contact)."""

    model_config = ConfigDict(extra="forbid")

    id: Id
    household_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)] | None = None


class LinkIn(BaseModel):
    """`POST /v1/members/{id}/devices`: a device the member owns."""

    model_config = ConfigDict(extra="forbid")

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)]


class EntryIn(BaseModel):
    """`POST /v1/members/{id}/points`: a purchase or grant credits, a spend on a perk
    debits. `source` is the caller's unique key of the event (an order id): the same key
    again changes nothing."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["purchase", "grant", "spend"]
    points: Points
    source: SourceKey


class RuleIn(BaseModel):
    """`PUT /v1/campaigns/{id}/points`: points an attributed conversion credits."""

    model_config = ConfigDict(extra="forbid")

    per_conversion: Annotated[int, Field(ge=0, le=1_000_000)]


class MemberDesk(Service):
    """Operators' calls and the statuses owed to devices (`run`: the loop that sends the
    statuses ingest's credited conversions owe)."""

    def __init__(self, wiring: Wiring) -> None:
        super().__init__(wiring)
        self._owed: set[str] = set()
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ operators

    async def create(self, spec: MemberIn, who: str) -> dict[str, Any]:
        row = await self._db.call(sql.create_member, spec.id, spec.household_id, who, utcnow())
        self._counters["members_created"] += 1
        return view(row)

    async def get(self, member_id: str) -> dict[str, Any]:
        return view(await self._db.call(sql.get_member, member_id))

    async def all(self) -> list[dict[str, Any]]:
        return [view(r) for r in await self._db.call(sql.list_members)]

    async def entries(self, member_id: str) -> list[dict[str, Any]]:
        return await self._db.call(sql.entries, member_id)

    async def link(self, member_id: str, spec: LinkIn, who: str) -> dict[str, Any]:
        row, _previous = await self._db.call(
            sql.link_device, member_id, spec.device_id, who, utcnow()
        )
        await self._send(row)
        return view(row)

    async def post(self, member_id: str, spec: EntryIn, who: str) -> dict[str, Any]:
        entry = Entry(spec.kind, spec.points, f"{spec.kind}:{spec.source}")
        posted = await self._db.call(sql.post_entry, member_id, entry, who, utcnow())
        if posted.new:
            self._counters[f"member_points_{spec.kind}"] += spec.points
            await self._send(posted.member)
        else:
            self._counters["member_entries_repeated"] += 1
        return {"member": view(posted.member), "new": posted.new, "entry_id": posted.entry_id}

    async def set_rule(self, campaign_id: str, spec: RuleIn, who: str) -> dict[str, Any]:
        await self._db.call(sql.set_rule, campaign_id, spec.per_conversion, who, utcnow())
        return {"campaign_id": campaign_id, "per_conversion": spec.per_conversion}

    async def erase(self, member_id: str, who: str) -> dict[str, Any]:
        """Remove the person (`db.members.erase_member`) and clear its devices' statuses."""
        removed = await self._db.call(sql.erase_member, member_id, who, utcnow())
        self._counters["members_erased"] += 1
        for device_id in removed["devices"]:
            await self._clear(device_id)
        return {**removed, "devices": len(removed["devices"])}

    async def figures(self) -> dict[str, Any]:
        tiers = await self._db.call(sql.tiers)
        totals = await self._db.call(sql.ledger_totals)
        return {"tiers": [t.to_json() for t in tiers], "totals": totals}

    # ------------------------------------------------------------------ devices

    def signed_status(self, device_id: str, row: dict[str, Any], now: datetime) -> dict[str, Any]:
        earned = int(row["earned"])
        tier = tier_of(earned)
        status = MemberStatus(
            id=new_id(),
            device_id=device_id,
            version=max(1, int(now.timestamp() * 1000)),
            tier=tier,
            tier_name=tier_name(tier),
            balance=int(row["balance"]),
            earned=earned,
            issued_at=now,
            expires_at=now + STATUS_TTL,
        )
        return self._signer.sign(status.to_wire())

    async def _send(self, member: dict[str, Any]) -> None:
        now = utcnow()
        for device_id in member.get("devices", []):
            payload = codec.encode_dict(self.signed_status(device_id, member, now))
            await self._put(device_id, payload)

    async def _clear(self, device_id: str) -> None:
        await self._put(device_id, b"")

    async def _put(self, device_id: str, payload: bytes) -> None:
        try:
            await self._publish(self._topics.member(device_id), payload, True)
            self._counters["member_statuses_sent"] += 1
        except GatewayError as exc:  # the device's next birth sends it again
            log.debug("member status of %s not sent: %s", device_id, exc)

    async def on_birth(self, device_id: str) -> None:
        """A device came online: its member's status again (fresh signature and expiry)."""
        row = await self._db.call(sql.device_status, device_id)
        if row is not None:
            await self._send({**row, "devices": [device_id]})

    async def on_device_erased(self, device_id: str) -> None:
        await self._clear(device_id)

    def owe(self, member_ids: tuple[str, ...]) -> None:
        """Ingest credited these members (conversions): their statuses go out from `run`."""
        self._owed.update(member_ids)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            owed, self._owed = self._owed, set()
            for member_id in sorted(owed):
                try:
                    await self._send(await self._db.call(sql.get_member, member_id))
                except GatewayError as exc:  # erased meanwhile, or the store is away
                    log.debug("status of member %s not sent: %s", member_id, exc)


def view(row: dict[str, Any]) -> dict[str, Any]:
    """A member as the API shows it: with its tier."""
    earned = int(row["earned"])
    tier = tier_of(earned)
    return {
        "id": row["id"],
        "household_id": row.get("household_id"),
        "balance": int(row["balance"]),
        "earned": earned,
        "spent": int(row.get("spent", 0)),
        "tier": tier,
        "tier_name": tier_name(tier),
        "devices": row.get("devices", []),
        "created_at": row.get("created_at"),
    }
