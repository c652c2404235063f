"""Every message of the contract as a pydantic model: `extra="forbid"`, bounded sizes, `v: 1`.

Field names follow PROTOCOL.md exactly; the fixed ones are never renamed. `docs/protocol.md`
is generated from these models (`python -m protocol.docs`).

Unknown fields, by who reads: the gateway reads the uplink (`UPLINK_MODELS`) strictly,
`codec.validate`; a device reads what the cloud sends (`DOWNLINK_MODELS`) tolerantly,
`codec.validate_tolerant`, after checking any signature over the object as received. The
models themselves stay strict, so whoever builds a message is told of a misspelt field.

Over 400 lines on purpose: the whole public contract in one module, read at once and
generated into one reference.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    model_validator,
)

from protocol.ids import format_time
from protocol.topics import COHORT_RE, DEVICE_ID_RE, PROFILE_RE

# Bounds a receiver enforces. A peer controls these sizes, so every list and string is capped.
MAX_SIGNALS_PER_BATCH = 2000
MAX_AGGREGATES_PER_BATCH = 2000
MAX_OUTCOMES_PER_BATCH = 1000
MAX_RECEIPTS_PER_BATCH = 500
MAX_ATTRS = 32
MAX_OFFERS_PER_BUNDLE = 500
MAX_KEYS = 16


def _utc(moment: datetime) -> str:
    return format_time(moment)


UtcTime = Annotated[AwareDatetime, PlainSerializer(_utc, return_type=str)]
"""RFC 3339 UTC on the wire (`2026-11-27T06:55:26.123Z`); aware datetimes inside."""

Id = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_RE.pattern)]
Cohort = Annotated[str, StringConstraints(pattern=COHORT_RE.pattern)]
Profile = Annotated[str, StringConstraints(pattern=PROFILE_RE.pattern)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9_.:-]+$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]
LongText = Annotated[str, StringConstraints(max_length=2000)]
AttrValue = Annotated[str, StringConstraints(max_length=256)] | int | float | bool | None
Attrs = Annotated[dict[Name, AttrValue], Field(max_length=MAX_ATTRS)]
Count = Annotated[int, Field(ge=0, le=2**53)]
Seq = Annotated[int, Field(ge=0, le=2**53)]


Finite = Annotated[float, Field(allow_inf_nan=False)]
"""A float that is not NaN or infinite. A native constraint (not a validator), so bounds
added to it (`Annotated[Finite, Field(ge=0)]`) become `minimum`/`maximum` in the JSON
Schema (`/openapi.json`, docs/protocol.md)."""


class Message(BaseModel):
    """Base of every envelope: immutable once validated; strict about unknown fields unless
    read with `codec.validate_tolerant` (what a device does with cloud messages)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    v: Literal[1] = 1

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict of this message (what is signed and sent)."""
        return self.model_dump(mode="json", exclude_none=True)


class Signed(Message):
    """A message the cloud signs: `kid` and `sig` over the canonical form without `sig`."""

    expires_at: UtcTime
    kid: Name | None = None
    sig: Annotated[str, StringConstraints(max_length=200)] | None = None


# ---------------------------------------------------------------- uplink


class Signal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    kind: Name
    at: UtcTime
    attrs: Attrs = Field(default_factory=dict)


class Aggregate(BaseModel):
    """Counts over a window: `window` is `1h:<start>` style, `key` what was counted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    count: Count
    seconds: Annotated[float, Field(ge=0, le=1e9)] = 0.0


OutcomeKind = Literal["impression", "click", "dismiss", "conversion"]


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    offer_id: Id
    campaign_id: Id
    variant: Annotated[str, StringConstraints(max_length=32)] = "a"
    kind: OutcomeKind
    at: UtcTime
    surface: Name
    score: Annotated[Finite, Field(ge=-1e6, le=1e6)] | None = None
    model_version: Annotated[int, Field(ge=0)] | None = None
    features: Annotated[list[Finite], Field(max_length=512)] | None = None
    """The scaled model inputs the decision used (logged features, for training)."""
    counterfactual: bool = False
    """A holdout device's impression that was logged but not shown."""


class BatchStats(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dropped: Count = 0
    evicted: Count = 0
    outbox_depth: Count = 0
    expired: Count = 0
    withdrawn: Count = 0
    refused: Count = 0


class Batch(Message):
    """Uplink batch on `dev/{id}/up/batch`; `seq` only increases per device."""

    device_id: DeviceId
    seq: Seq
    sent_at: UtcTime
    agent_version: Annotated[str, StringConstraints(max_length=32)]
    model_version: Annotated[int, Field(ge=0)] | None = None
    signals: Annotated[list[Signal], Field(max_length=MAX_SIGNALS_PER_BATCH)] = Field(
        default_factory=list
    )
    aggregates: Annotated[list[Aggregate], Field(max_length=MAX_AGGREGATES_PER_BATCH)] = Field(
        default_factory=list
    )
    outcomes: Annotated[list[Outcome], Field(max_length=MAX_OUTCOMES_PER_BATCH)] = Field(
        default_factory=list
    )
    receipts: Annotated[list[Id], Field(max_length=MAX_RECEIPTS_PER_BATCH)] = Field(
        default_factory=list
    )
    stats: BatchStats = Field(default_factory=BatchStats)
    outbox_id: Id | None = None
    """Random id of the device's outbox, made with its store and persisted: `seq` counts
    within it. A device whose data was wiped starts a new outbox (and `seq` from 1 again);
    the gateway stores each (device_id, outbox_id, seq) once."""


class ClaimRequest(Message):
    """Uplink claim on `dev/{id}/up/claim`; `id` is the idempotency key."""

    id: Id
    device_id: DeviceId
    offer_id: Id
    campaign_id: Id
    at: UtcTime


ModelUpdateStatus = Literal["applied", "failed", "rolled_back"]


class ModelUpdateReport(BaseModel):
    """What became of the last model a device tried: the gateway's rollout health input.

    `applied`: it passed the device's health check and runs; `failed`: it was refused after
    download (tampered, health check, too slow); `rolled_back`: it ran, failed at run time,
    and the device went back to its last good model (`running`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)]
    status: ModelUpdateStatus
    reason: Name | None = None
    running: Annotated[int, Field(ge=0)] | None = None
    at: UtcTime | None = None


class State(Message):
    """Retained on `dev/{id}/state`: birth (`online`) and last will (`offline`); republished
    (`online`) when `model_update` changes."""

    device_id: DeviceId
    status: Literal["online", "offline"]
    at: UtcTime | None = None
    profile: Profile | None = None
    agent_version: Annotated[str, StringConstraints(max_length=32)] | None = None
    model_version: Annotated[int, Field(ge=0)] | None = None
    cohorts: Annotated[list[Cohort], Field(max_length=16)] = Field(default_factory=list)
    model_update: ModelUpdateReport | None = None
    policy_version: Annotated[int, Field(ge=0)] | None = None
    """The version of the cloud policy the device runs (issue 18; 0: none, the profile's)."""


# ---------------------------------------------------------------- downlink


class Refusal(BaseModel):
    """A batch the gateway refused for good: sending it again cannot change the answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: Seq
    reason: Name
    """`invalid` (a field fails validation, a time cannot be moved to UTC) or `non_finite`
    (`NaN`, an infinity, a number past 64 bits)."""
    field: Annotated[str, StringConstraints(max_length=200)] | None = None
    """The dotted path of the first offending field (`signals.3.at`), when known."""


class Ack(Message):
    """`dev/{id}/down/ack` (fixed): the listed batches are stored at the gateway."""

    acks: Annotated[list[Seq], Field(max_length=1000)]
    outbox_id: Id | None = None
    """The outbox the acked seqs belong to (echoed from the batches); a device ignores an
    ack naming another outbox (one of its wiped predecessor's)."""
    refused: Annotated[list[Refusal], Field(max_length=1000)] | None = None
    """Batches of that outbox refused for good (issue 13): the device may drop them, counted,
    instead of sending them again forever. Added field: a device that does not know it
    ignores it and keeps resending, as before."""
    device_id: DeviceId | None = None
    """The device the ack is for (issue 14): part of what is signed, so an ack cannot be
    replayed to another device."""
    expires_at: UtcTime | None = None
    kid: Name | None = None
    sig: Annotated[str, StringConstraints(max_length=200)] | None = None
    """Signed like every other downlink message that changes device state (issue 14): an
    ack deletes outbox rows, so a device refuses an ack without a valid signature by a key
    of the `acks` role, or for another device (counted in `acks_forged`)."""


OfferType = Literal[
    "coupon", "bundle", "replenishment", "membership_perk", "group_buy", "content", "price_cut"
]


class GroupTerms(BaseModel):
    """A group buy's terms (issue 19): `size` households fill a group within `window_s` of its
    start, each then gets a coupon at `price`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: Annotated[int, Field(ge=2, le=50)]
    window_s: Annotated[int, Field(ge=60, le=7 * 86_400)]
    price: Annotated[Finite, Field(ge=0, le=1e9)]


class CutTerms(BaseModel):
    """A price cut's terms (issue 19): `helps` helps from other households bring the offer's
    price down to `floor` along the published schedule (`cloud_gateway.social.rules`), within
    `window_s` of the cut's start."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    floor: Annotated[Finite, Field(ge=0, le=1e9)]
    helps: Annotated[int, Field(ge=1, le=100)]
    window_s: Annotated[int, Field(ge=60, le=7 * 86_400)]


def check_social_terms(
    kind: str, price: float, group: GroupTerms | None, cut: CutTerms | None
) -> None:
    """Raise ValueError unless the social terms fit the offer's type and price."""
    if group is not None and kind != "group_buy":
        raise ValueError("group terms are only for group_buy offers")
    if cut is not None and kind != "price_cut":
        raise ValueError("cut terms are only for price_cut offers")
    if kind == "price_cut":
        if cut is None:
            raise ValueError("a price_cut offer needs cut terms (floor, helps, window_s)")
        if cut.floor >= price:
            raise ValueError(f"cut.floor {cut.floor} must be below the offer's price {price}")
    if group is not None and price and group.price > price:
        raise ValueError(f"group.price {group.price} must not exceed the offer's price {price}")


class Targeting(BaseModel):
    """Who an offer is meant for, checked on the device (the household's data never leaves it).

    Every list given must match (any of its items); `min_tier`, `owns_any` and `seen_any` use
    personal data, so without personalization consent such an offer is not shown.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: Annotated[list[Profile], Field(max_length=8)] = Field(default_factory=list)
    min_tier: Annotated[int, Field(ge=0, le=3)] = 0
    owns_any: Annotated[list[Name], Field(max_length=16)] = Field(default_factory=list)
    """Appliances (signals' `attrs.appliance`), one of which the household must own."""
    seen_any: Annotated[list[Name], Field(max_length=16)] = Field(default_factory=list)
    """Categories, one of which must have had a signal in the last 7 days."""

    @property
    def personal(self) -> bool:
        return bool(self.min_tier or self.owns_any or self.seen_any)


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    campaign_id: Id
    variant: Annotated[str, StringConstraints(max_length=32)] = "a"
    type: OfferType
    title: ShortText
    body: LongText = ""
    category: Name
    price: Annotated[Finite, Field(ge=0, le=1e9)] = 0.0
    discount: Annotated[Finite, Field(ge=0, le=1)] = 0.0
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "CNY"
    surfaces: Annotated[list[Name], Field(min_length=1, max_length=16)]
    starts_at: UtcTime
    expires_at: UtcTime
    limited: bool = False
    caps: Annotated[dict[Name, Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=8)] = (
        Field(default_factory=dict)
    )
    priority: Annotated[int, Field(ge=0, le=100)] = 50
    holdout: Annotated[Finite, Field(ge=0, le=1)] = 0.0
    """Share of devices held out of the campaign (`protocol.assign.in_holdout`)."""
    stock: Annotated[int, Field(ge=0)] | None = None
    """For limited offers: the stock left when the bundle was signed (0: sold out)."""
    targeting: Targeting | None = None
    """Targeting hints the device checks (profiles, member tier, owned appliances, interests)."""
    not_before: UtcTime | None = None
    """A live-sale wave's sealed offer (issue 19): sent ahead, neither shown nor claimed
    before this time on the gateway's clock (`protocol.waves.GatewayClock`). Added field: a
    device that does not know it shows the offer from `starts_at`, so a wave's `starts_at`
    is set to the same time."""
    admit: Annotated[Finite, Field(gt=0, le=1)] | None = None
    """A live-sale wave's admission share at its reveal (issue 19): only devices whose stable
    lottery ticket (`protocol.waves.ticket`) is below it claim then; later shares come on
    the cohort's `SoldOut` notice. None: every device may claim. Added field."""
    group: GroupTerms | None = None
    """Group buy terms (`group_buy` offers a device can start or join a group of)."""
    cut: CutTerms | None = None
    """Price cut terms (`price_cut` offers)."""

    @model_validator(mode="after")
    def _social(self) -> Offer:
        check_social_terms(self.type, self.price, self.group, self.cut)
        return self


class OfferBundle(Signed):
    """Signed set of offers, on `dev/{id}/down/offers` or retained on `cohort/{c}/offers`."""

    id: Id
    issued_at: UtcTime
    offers: Annotated[list[Offer], Field(max_length=MAX_OFFERS_PER_BUNDLE)]
    cohort: Cohort | None = None
    revokes: Annotated[list[Id], Field(max_length=MAX_OFFERS_PER_BUNDLE)] = Field(
        default_factory=list
    )


class ClaimResult(Signed):
    """Signed answer to a claim on `dev/{id}/down/claim`."""

    id: Id
    claim_id: Id
    device_id: DeviceId
    offer_id: Id
    granted: bool
    code: Annotated[str, StringConstraints(max_length=64)] | None = None
    reason: ShortText = ""
    issued_at: UtcTime


class Command(Signed):
    """Signed command on `dev/{id}/down/cmd`, re-sent until the device lists its `id` in the
    `receipts` of an uplink batch. `forget`: erase the device's usage data (the gateway's
    `DELETE /v1/devices/{id}`); a command seen before is confirmed again, not re-applied."""

    id: Id
    device_id: DeviceId
    kind: Literal["forget", "resync", "config"]
    args: Attrs = Field(default_factory=dict)
    issued_at: UtcTime


class FeatureDef(BaseModel):
    """One input column: the agent computes `name`, then `(x - mean) / scale`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=96)]
    default: Finite = 0.0
    mean: Finite = 0.0
    scale: Annotated[Finite, Field(gt=0)] = 1.0
    personal: bool = False


class FeatureSpec(BaseModel):
    """What a model needs as input: columns in order, tensor names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1, 2] = 1
    """1: `protocol.vocabulary.FEATURE_NAMES` and the agent's own; 2: also the household's
    (`HOUSEHOLD_FEATURE_NAMES`), which a version 1 spec may not name."""
    input_name: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "features"
    output_name: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "score"
    features: Annotated[list[FeatureDef], Field(min_length=1, max_length=512)]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @model_validator(mode="after")
    def _household_needs_v2(self) -> FeatureSpec:
        if self.version < 2:
            for f in self.features:
                if f.name.startswith("household."):
                    raise ValueError(f"feature {f.name!r} needs feature spec version 2")
        return self


class ModelManifest(Signed):
    """Signed on `models/{profile}/manifest`: which model file a profile should run."""

    name: Name
    version: Annotated[int, Field(ge=1)]
    profiles: Annotated[list[Profile], Field(min_length=1, max_length=16)]
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)]
    url: Annotated[str, StringConstraints(max_length=500)] | None = None
    feature_spec: FeatureSpec
    created_at: UtcTime
    rollout: Annotated[int, Field(ge=0, le=100)] = 100
    cohorts: Annotated[list[Cohort], Field(min_length=1, max_length=16)] | None = None
    """The rollout's target: a device fetches the model only when it is in one of these
    cohorts (`region:cn-east`, `profile:tv`...); absent means every device of the profiles."""


HHMM = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-4]):[0-5][0-9]$")]


class QuietPeriod(BaseModel):
    """A daily quiet period in the device's local time (`22:00` to `08:00` crosses midnight)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: HHMM
    end: HHMM


class HouseholdRules(BaseModel):
    """The household's caps (issue 17), enforced by each household's coordinator over every
    device of the home: the same offer not on two devices within `offer_window_s`, at most
    `per_day` impressions in the home per local day, nothing in `quiet_hours` (the
    coordinator's local time). A field left out keeps the layer below, then the coordinator's
    defaults (`docs/household.md`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offer_window_s: Annotated[int, Field(ge=0, le=7 * 86_400)] | None = None
    per_day: Annotated[int, Field(ge=0, le=10_000)] | None = None
    quiet_hours: Annotated[list[QuietPeriod], Field(max_length=8)] | None = None
    """`[]` clears the household quiet hours of lower layers; None keeps them."""


class PolicyRules(BaseModel):
    """Decision policy set by operators (issue 18). A field left out (None) is not set here:
    the device keeps what a lower layer says (`docs/marketers.md`, precedence)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offer_per_day: Annotated[int, Field(ge=0, le=10_000)] | None = None
    campaign_per_day: Annotated[int, Field(ge=0, le=10_000)] | None = None
    surface_per_day: (
        Annotated[dict[Name, Annotated[int, Field(ge=0, le=10_000)]], Field(max_length=16)] | None
    ) = None
    global_per_day: Annotated[int, Field(ge=0, le=100_000)] | None = None
    quiet_hours: Annotated[list[QuietPeriod], Field(max_length=8)] | None = None
    """`[]` clears the quiet hours of lower layers; None keeps them."""
    holdout: Annotated[Finite, Field(ge=0, le=1)] | None = None
    """For a profile or cohort: the least share held out of every campaign; for a campaign:
    its share, replacing the offers' `holdout`."""
    household: HouseholdRules | None = None
    """For a profile or cohort: the household caps its coordinators apply (issue 17)."""
    min_score: Annotated[Finite, Field(ge=0, le=1)] | None = None
    """The least model score (a click probability) an offer needs to be shown, replacing the
    firmware profile's `decisions.min_score`; for a campaign: the floor of that campaign's
    offers, replacing the device's. Not applied to a device without a model (priorities)."""


MAX_POLICY_CAMPAIGNS = 200


class PolicyDocument(Signed):
    """Signed, retained on `cohort/{cohort}/policy` (issue 18): the operators' caps, quiet hours
    and holdout for the devices of `cohort` (`profile:<name>` for a profile), plus the
    per-campaign rules of every campaign with one. `version` only increases (one counter across
    cohorts: every document published together carries the same); a device takes a document
    only at a higher version than the one it holds for that cohort. Signed by a key of the
    `commands` role (a new role would make devices in the field refuse the key list)."""

    id: Id
    cohort: Cohort
    version: Annotated[int, Field(ge=1)]
    issued_at: UtcTime
    rules: PolicyRules = Field(default_factory=PolicyRules)
    campaigns: Annotated[dict[Id, PolicyRules], Field(max_length=MAX_POLICY_CAMPAIGNS)] = Field(
        default_factory=dict
    )


Role = Literal["offers", "commands", "models", "claims", "acks", "timestamp"]
"""What an online key may sign (issue 14): offer bundles, commands, model manifests, claim
results, acks, the freshness timestamp. Key lists are signed by the offline root only."""
ROLES: tuple[Role, ...] = ("offers", "commands", "models", "claims", "acks", "timestamp")


class PublicKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kid: Name
    public_key: Annotated[str, StringConstraints(min_length=40, max_length=64)]
    """Raw Ed25519 public key, 32 bytes, standard base64."""
    roles: Annotated[list[Role], Field(max_length=len(ROLES))] | None = None
    """What this key may sign; absent: every role (keys pinned before roles existed)."""


class RootChange(Signed):
    """A new offline root key, signed by the root before it (issue 14): carried in a key
    list's `root_chain`, so a device that pinned any earlier root walks to the current one."""

    generation: Annotated[int, Field(ge=1)]
    """Each change counts one up. Generation 1 introduces the first root to devices
    provisioned before roots: it is signed by an online key they already pin."""
    root: PublicKey
    issued_at: UtcTime


class KeyList(Signed):
    """Signed, retained on `keys`: the cloud's current signing keys; `version` only increases.

    Signed by the offline root (issue 14) when the device pins one (`TrustFile.root`): then
    only a list whose `version` is higher than the one held is taken, its keys (with their
    roles) replace every key the device verifies with, and what a key in `revoked` signed is
    dropped from the device. A gateway without a root signs it with its own key (before)."""

    version: Annotated[int, Field(ge=1)]
    keys: Annotated[list[PublicKey], Field(min_length=1, max_length=MAX_KEYS)]
    issued_at: UtcTime
    revoked: Annotated[list[Name], Field(max_length=64)] = Field(default_factory=list)
    """Keys withdrawn in an emergency: what they signed is refused and dropped."""
    root_chain: Annotated[list[RootChange], Field(max_length=8)] = Field(default_factory=list)
    """The root changes since the first root, oldest first (empty until a root rotation)."""


class Timestamp(Signed):
    """Signed, retained on `timestamp` (TUF's timestamp role, issue 14): short-lived, issued
    again every few minutes by a key of the `timestamp` role. A device that holds none that
    is unexpired, or one naming a key list newer than it holds, knows its view of the cloud
    is stale (frozen by whoever replays old retained messages): it reports `stale_trust`
    and claims no limited offer."""

    version: Annotated[int, Field(ge=1)]
    """Only increases (the gateway uses its clock in milliseconds)."""
    issued_at: UtcTime
    keys_version: Annotated[int, Field(ge=1)]
    """The version of the key list current when this was issued."""


class TrustFile(Message):
    """`trust.json`: the keys a device pins at provisioning (written by the gateway)."""

    keys: Annotated[list[PublicKey], Field(min_length=1, max_length=MAX_KEYS)]
    topic_root: str = "edgemart/v1"
    root: PublicKey | None = None
    """The offline root (issue 14): key lists must be signed by it (or by a root it signed);
    with a root pinned, the device also requires a fresh `Timestamp`."""
    root_generation: Annotated[int, Field(ge=1)] = 1
    """The generation of `root` (1 until the first root rotation)."""


UPLINK_MODELS: dict[str, type[Message]] = {"batch": Batch, "claim": ClaimRequest, "state": State}
"""What devices send; the gateway refuses fields it does not know (it is upgraded first)."""
DOWNLINK_MODELS: tuple[type[Message], ...] = (
    Ack,
    OfferBundle,
    ClaimResult,
    Command,
    ModelManifest,
    KeyList,
    Timestamp,
    TrustFile,
    PolicyDocument,
)
"""What devices read from the cloud (`TrustFile`: written by the gateway at provisioning);
fields they do not know are ignored, so devices in the field survive an extended contract."""
ALL_MODELS: list[type[BaseModel]] = [
    Batch,
    Signal,
    Aggregate,
    Outcome,
    BatchStats,
    ClaimRequest,
    State,
    ModelUpdateReport,
    Ack,
    Refusal,
    OfferBundle,
    Offer,
    Targeting,
    ClaimResult,
    Command,
    ModelManifest,
    FeatureSpec,
    FeatureDef,
    KeyList,
    RootChange,
    Timestamp,
    PublicKey,
    TrustFile,
    PolicyDocument,
    PolicyRules,
    QuietPeriod,
    HouseholdRules,
    GroupTerms,
    CutTerms,
]
