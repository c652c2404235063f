"""Signed offer bundles: verified as received; bad or replayed ones refused; the held catalog.

The signature is checked over the bundle as received, then the bundle and each offer are
validated ignoring fields this build does not know (`agent.link.downlink`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.decide.thin import HeldOffers
from agent.link.downlink import UnknownFields
from agent.runtime.metrics import Metrics
from agent.store.core import Store
from mqttlink.logs import OnceLogger
from protocol import codec
from protocol.envelopes import MAX_OFFERS_PER_BUNDLE, Offer, OfferBundle, TrustFile
from protocol.errors import InvalidMessage, ProtocolError
from protocol.ids import format_time, parse_time, utcnow
from protocol.signing import Verifier

if TYPE_CHECKING:
    from agent.decide.catalog import Catalog

log = logging.getLogger(__name__)

MAX_BUNDLE_BYTES = 512 * 1024
DEVICE_SOURCE = "device"


def cohort_source(cohort: str) -> str:
    return f"cohort:{cohort}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What became of one received bundle: `accepted`, `duplicate`, or a refusal reason."""

    outcome: str
    bundle_id: str | None
    offers: int
    reason: str = ""
    refused: tuple[tuple[str, str], ...] = ()
    """Offers of an accepted bundle refused one by one: `(offer id or #index, why)`."""

    @property
    def accepted(self) -> bool:
        return self.outcome == "accepted"


def load_trust(path: Any) -> TrustFile:
    """Read and validate the pinned trust file (blocking; call from an executor). The gateway
    writes it, so fields a newer gateway added are ignored like those of its messages."""
    with open(path, "rb") as handle:
        data = handle.read(256 * 1024)
    return codec.validate_tolerant(codec.decode_object(data), TrustFile)[0]


def _offer_count(obj: object) -> int:
    offers = obj.get("offers") if isinstance(obj, dict) else None
    n = len(offers) if isinstance(offers, list) else 0
    return max(1, min(n, MAX_OFFERS_PER_BUNDLE))


class OfferBook:
    """The verified offers this device holds, by source (device topic or a cohort topic).

    A cohort bundle replaces that cohort's offers (it is the full catalog); a device bundle
    adds or replaces by offer id; `revokes` removes. Everything is persisted before it is
    visible, and survives restarts.
    """

    def __init__(self, verifier: Verifier, store: Store, metrics: Metrics) -> None:
        self.verifier = verifier
        self._store = store
        self._metrics = metrics
        self._by_source: dict[str, dict[str, Offer]] = {}
        self._bundle_of: dict[str, str] = {}
        self._faults = OnceLogger(log)
        self._unknown = UnknownFields(metrics)
        self._version = 0
        self._catalog: Catalog | None = None
        self._held: HeldOffers | None = None
        self._issued: dict[str, datetime] = {}
        """The `issued_at` of the catalog each cohort source holds: never goes back."""

    async def load(self) -> None:
        for source, issued in (await self._store.call(self._store.offers.catalog_marks)).items():
            try:
                self._issued[source] = parse_time(issued)
            except ValueError:
                log.warning("dropping unreadable catalog mark of %s", source)
        for source, bundle_id, body in await self._store.call(self._store.offers.load):
            try:
                # stored by this agent; tolerant all the same, for a downgraded agent
                offer = Offer.model_validate_json(body, extra="ignore")
            except ValueError:
                log.warning("dropping unreadable stored offer from %s", source)
                continue
            self._by_source.setdefault(source, {})[offer.id] = offer
            self._bundle_of[source] = bundle_id
        self._version += 1

    def catalog(self) -> Catalog:
        """The held offers as columns (`agent.decide.catalog`), rebuilt when the book changes."""
        from agent.decide.catalog import build_catalog  # noqa: PLC0415 - numpy: full agents only

        cached = self._catalog
        if cached is None or cached.version != self._version:
            cached = self._catalog = build_catalog(self._merged(), self._version)
        return cached

    def held(self) -> HeldOffers:
        """The held offers as a thin device decides over them (`agent.decide.thin`): no
        columns, no numpy; rebuilt when the book changes."""
        cached = self._held
        if cached is None or cached.version != self._version:
            cached = self._held = HeldOffers.of(self._merged(), self._version)
        return cached

    def _merged(self) -> list[Offer]:
        """Every held offer (expired ones too: a decision reports them `expired`); a
        device-addressed offer wins over a cohort one."""
        merged: dict[str, Offer] = {}
        for source in sorted(self._by_source, key=lambda s: s == DEVICE_SOURCE):
            merged.update(self._by_source[source])
        return list(merged.values())

    def offers(self, now: datetime | None = None) -> list[Offer]:
        """Every held, unexpired offer; a device-addressed offer wins over a cohort one."""
        moment = now or utcnow()
        merged: dict[str, Offer] = {}
        for source in sorted(self._by_source, key=lambda s: s == DEVICE_SOURCE):
            merged.update(self._by_source[source])
        return [o for o in merged.values() if o.expires_at > moment]

    def get(self, offer_id: str) -> Offer | None:
        found = self._by_source.get(DEVICE_SOURCE, {}).get(offer_id)
        if found is not None:
            return found
        for offers in self._by_source.values():
            if offer_id in offers:
                return offers[offer_id]
        return None

    def __len__(self) -> int:
        return len({oid for offers in self._by_source.values() for oid in offers})

    def _refuse(self, reason: str, detail: str, bundle_id: str | None, count: int) -> Verdict:
        self._metrics.inc("bundles_rejected")
        self._metrics.inc("offers_rejected", count)
        self._faults.log(reason, "refused offer bundle %s: %s", bundle_id or "?", detail)
        return Verdict("rejected", bundle_id, count, reason)

    async def handle(self, kind: str, subject: str, payload: bytes) -> Verdict:
        """Verify and apply one bundle from `dev/{id}/down/offers` or `cohort/{c}/offers`."""
        if not payload:
            # An empty retained payload clears the retained catalog at the broker; it is not
            # signed, so it changes nothing here.
            return Verdict("ignored", None, 0, "empty")
        try:
            obj = codec.decode_object(payload, max_compressed=MAX_BUNDLE_BYTES)
        except ProtocolError as exc:
            return self._refuse(exc.reason, str(exc), None, 1)
        raw_id = obj.get("id")
        bundle_id = raw_id if isinstance(raw_id, str) else None
        count = _offer_count(obj)
        try:
            self.verifier.verify(obj, role="offers")
            # the envelope first; then each offer alone, so one bad offer spoils only itself
            raw_offers = obj.get("offers")
            if not isinstance(raw_offers, list):
                raw_offers = []
            bundle, unknown = codec.validate_tolerant({**obj, "offers": []}, OfferBundle)
        except ProtocolError as exc:
            return self._refuse(exc.reason, str(exc), bundle_id, count)
        good, refused, unknown_in_offers = _split_offers(raw_offers[:MAX_OFFERS_PER_BUNDLE])
        self._unknown.note("OfferBundle", unknown + unknown_in_offers)
        if len(raw_offers) > MAX_OFFERS_PER_BUNDLE:
            refused.append(("#tail", f"over {MAX_OFFERS_PER_BUNDLE} offers in one bundle"))
        if refused:
            self._metrics.inc("offers_rejected", len(refused))
            self._faults.log(
                "offer",
                "bundle %s: %d offers refused, first: %s",
                bundle.id,
                len(refused),
                refused[0],
            )
        bundle = bundle.model_copy(update={"offers": good})
        if kind == "cohort_offers":
            source = cohort_source(subject)
            if bundle.cohort is not None and bundle.cohort != subject:
                detail = f"bundle for cohort {bundle.cohort!r} arrived on cohort {subject!r}"
                return self._refuse("wrong_cohort", detail, bundle.id, count)
            held = self._issued.get(source)
            if (
                held is not None
                and bundle.issued_at < held
                and self._bundle_of.get(source) != bundle.id
            ):
                # genuinely signed, but older than the catalog held: replayed (issue 14)
                detail = f"catalog issued {format_time(bundle.issued_at)}, before the held one"
                self._metrics.inc("catalogs_rolled_back")
                return self._refuse("rollback", detail, bundle.id, count)
        else:
            source = DEVICE_SOURCE
        current = self._bundle_of.get(source) == bundle.id
        if source == DEVICE_SOURCE and (
            current or await self._store.call(self._store.offers.seen, bundle.id)
        ):
            # The gateway re-sends device bundles until it sees our receipt: confirm again,
            # apply nothing (an old bundle could undo a later revocation).
            await self._store.call(self._store.offers.add_receipt, bundle.id)
            self._metrics.inc("bundles_duplicate")
            return Verdict("duplicate", bundle.id, len(bundle.offers))
        if current:
            # The broker hands a retained cohort catalog out again on every (re)connect.
            self._metrics.inc("bundles_duplicate")
            return Verdict("duplicate", bundle.id, len(bundle.offers))
        if await self._store.call(self._store.offers.seen, bundle.id):
            return self._refuse("replay", "bundle id already seen", bundle.id, count)
        await self._apply(source, bundle)
        self._metrics.inc("bundles_verified")
        self._metrics.inc("offers_verified", len(bundle.offers))
        log.info(
            "verified offer bundle %s from %s: %d offers, %d revoked",
            bundle.id,
            source,
            len(bundle.offers),
            len(bundle.revokes),
        )
        return Verdict("accepted", bundle.id, len(bundle.offers), refused=tuple(refused))

    async def drop_signed_by(self, kids: frozenset[str]) -> int:
        """Take off the device every held offer a key in `kids` signed (revoked keys)."""
        dropped = await self._store.call(self._store.offers.drop_signed_by, sorted(kids))
        for source, offer_id in dropped:
            self._by_source.get(source, {}).pop(offer_id, None)
        if dropped:
            self._version += 1
            self._metrics.inc("offers_dropped_revoked", len(dropped))
        return len(dropped)

    async def _apply(self, source: str, bundle: OfferBundle) -> None:
        replace = source != DEVICE_SOURCE
        bodies = [(o.id, json.dumps(o.model_dump(mode="json"))) for o in bundle.offers]
        await self._store.call(
            self._store.offers.apply_bundle,
            source=source,
            bundle_id=bundle.id,
            offers=bodies,
            replace_source=replace,
            revokes=bundle.revokes,
            receipt=source == DEVICE_SOURCE,
            kid=bundle.kid,
            issued_at=None if source == DEVICE_SOURCE else format_time(bundle.issued_at),
        )
        if source != DEVICE_SOURCE:
            self._issued[source] = bundle.issued_at
        current = {} if replace else dict(self._by_source.get(source, {}))
        current.update({o.id: o for o in bundle.offers})
        self._by_source[source] = current
        self._bundle_of[source] = bundle.id
        for revoked in bundle.revokes:
            for offers in self._by_source.values():
                if offers.pop(revoked, None) is not None:
                    self._metrics.inc("offers_revoked")
        self._version += 1


def _split_offers(
    raw: list[Any],
) -> tuple[list[Offer], list[tuple[str, str]], tuple[str, ...]]:
    """Validate offers one by one: the good ones, `(id or #index, "field: message")` for the
    others, and the paths of the fields they carry that this build does not know (ignored)."""
    good: list[Offer] = []
    refused: list[tuple[str, str]] = []
    unknown: list[str] = []
    for i, item in enumerate(raw):
        try:
            offer, ignored = codec.validate_tolerant(item, Offer)
        except InvalidMessage as exc:
            oid = item.get("id") if isinstance(item, dict) else None
            name = oid if isinstance(oid, str) and len(oid) <= 64 else f"#{i}"
            first = exc.errors[0]
            refused.append((name, f"offers.{i}.{first['loc']}: {first['msg']}"))
            continue
        good.append(offer)
        unknown.extend(f"offers.{i}.{path}" for path in ignored)
    return good, refused, tuple(unknown)
