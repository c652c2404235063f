"""Decision policy as pure functions over catalog columns: eligibility, caps, quiet hours, holdout,
diversity. No I/O, no clock: callers pass the moment and the counts.

Two forms of the same rules: `eligible_mask` (the hot path: a few vectorised numpy operations)
and `filter_codes` (for `explain`: the first reason, per offer, that keeps it off the surface).
Property tests hold them equal to each other and to the per-offer form a thin device uses
(`agent.decide.rules.offer_code`). The rules that need no arrays live in `agent.decide.rules`
and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.decide.catalog import Catalog
from agent.decide.rules import (
    CODE,
    MINUTES_PER_DAY,
    CapCounts,
    CapLimits,
    HoldoutRules,
    Household,
    HouseholdHold,
    QuietWindow,
    Selection,
    held_until,
    parse_hhmm,
    quiet_remaining,
    select,
    surface_capped,
    targeting_code,
)
from protocol.assign import in_holdout

__all__ = [
    "MINUTES_PER_DAY",
    "CapArrays",
    "CapCounts",
    "CapLimits",
    "Gate",
    "HoldoutRules",
    "Household",
    "HouseholdHold",
    "QuietWindow",
    "Selection",
    "cap_arrays",
    "eligible_mask",
    "filter_codes",
    "held_until",
    "holdout_rows",
    "parse_hhmm",
    "quiet_remaining",
    "select",
    "surface_capped",
    "targeting_codes",
]


@dataclass(frozen=True, slots=True, eq=False)
class CapArrays:
    """A catalog's per-row view of today's counts and limits (rebuilt when either changes)."""

    offer_left: np.ndarray  # bool: the offer may still be shown today
    campaign_left: np.ndarray  # bool: its campaign may still be shown today


_cap_cache: dict[int, tuple[object, int, int, CapArrays, object]] = {}


def cap_arrays(catalog: Catalog, counts: CapCounts, limits: CapLimits) -> CapArrays:
    """Which rows are under their offer and campaign caps; cached per catalog and counts."""
    key = id(catalog)
    cached = _cap_cache.get(key)
    if (
        cached is not None
        and cached[0] is catalog
        and cached[1] == counts.version
        and cached[2] == id(counts)
        and cached[4] is limits
    ):
        return cached[3]
    n = len(catalog)
    offer_seen = np.zeros(n, dtype=np.int64)
    for oid, shown in counts.offer.items():
        row = catalog.index.get(oid)
        if row is not None:
            offer_seen[row] = shown
    camp_index = {c: i for i, c in enumerate(catalog.campaigns)}
    camp_seen = np.zeros(len(catalog.campaigns), dtype=np.int64)
    for cid, shown in counts.campaign.items():
        j = camp_index.get(cid)
        if j is not None:
            camp_seen[j] = shown
    offer_cap = catalog.cap_offer_day
    if limits.offer_per_day is not None:
        offer_cap = np.minimum(offer_cap, limits.offer_per_day)
    camp_cap = catalog.cap_campaign_day
    if limits.campaign_per_day is not None:
        camp_cap = np.minimum(camp_cap, limits.campaign_per_day)
    if limits.by_campaign:
        offer_cap, camp_cap = _campaign_caps(catalog, limits, offer_cap, camp_cap)
    arrays = CapArrays(offer_seen < offer_cap, camp_seen[catalog.camp_code] < camp_cap)
    if len(_cap_cache) > 64:
        _cap_cache.clear()
    _cap_cache[key] = (catalog, counts.version, id(counts), arrays, limits)
    return arrays


def _campaign_caps(
    catalog: Catalog, limits: CapLimits, offer_cap: np.ndarray, camp_cap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row offer and campaign caps with `limits.by_campaign` in place of the profile-wide
    limits for the rows of those campaigns (the offers' own caps still apply)."""
    offer_cap = offer_cap.copy()
    camp_cap = camp_cap.copy()
    for j, cid in enumerate(catalog.campaigns):
        rule = limits.by_campaign.get(cid)
        if rule is None:
            continue
        rows = catalog.camp_code == j
        if rule[0] is not None:
            offer_cap[rows] = np.minimum(catalog.cap_offer_day[rows], rule[0])
        if rule[1] is not None:
            camp_cap[rows] = np.minimum(catalog.cap_campaign_day[rows], rule[1])
    return offer_cap, camp_cap


# ---------------------------------------------------------------------- holdout


_holdout_cache: dict[tuple[int, str, int], tuple[object, object, np.ndarray]] = {}


def holdout_rows(catalog: Catalog, device_id: str, rules: HoldoutRules | None) -> np.ndarray:
    """Rows whose campaign holds this device out, under `rules` (the offers' own shares when
    None: `Catalog.holdout_mask`). Cached per catalog, device and rules."""
    if rules is None or (rules.floor <= 0 and not rules.by_campaign):
        return catalog.holdout_mask(device_id)
    key = (id(catalog), device_id, id(rules))
    cached = _holdout_cache.get(key)
    if cached is not None and cached[0] is catalog and cached[1] is rules:
        return cached[2]
    shares = np.maximum(catalog.holdout_share, rules.floor)
    for j, cid in enumerate(catalog.campaigns):
        share = rules.by_campaign.get(cid)
        if share is not None:
            shares[catalog.camp_code == j] = share
    mask = np.fromiter(
        (
            in_holdout(device_id, o.campaign_id, float(share))
            for o, share in zip(catalog.offers, shares.tolist(), strict=True)
        ),
        dtype=bool,
        count=len(catalog.offers),
    )
    if len(_holdout_cache) > 16:
        _holdout_cache.clear()
    _holdout_cache[key] = (catalog, rules, mask)
    return mask


# ---------------------------------------------------------------------- eligibility


def targeting_codes(catalog: Catalog, household: Household) -> dict[int, int]:
    """Rows held back by their targeting hints, with the reason code (a handful of rows)."""
    out: dict[int, int] = {}
    for row in catalog.targeted:
        code = targeting_code(catalog.offers[row].targeting, household)
        if code:
            out[row] = code
    return out


@dataclass(frozen=True, slots=True, eq=False)
class Gate:
    """Everything but the catalog that decides eligibility at one moment."""

    surface: str
    now: float  # epoch seconds
    household: Household
    caps: CapArrays | None = None
    refused: np.ndarray | None = None  # rows whose claim was refused (sold out at the gateway)
    household_held: np.ndarray | None = None  # rows the household's caps keep off (issue 17)


def eligible_mask(catalog: Catalog, gate: Gate) -> np.ndarray:
    """Rows showable on `gate.surface` at `gate.now` (time window, surface, validity, targeting,
    stock, claims, offer and campaign caps). Vectorised; equal to `filter_codes(...) == 0`."""
    mask: np.ndarray = catalog.surface_mask(gate.surface) & (catalog.static_code == 0)
    mask &= catalog.starts <= gate.now
    mask &= catalog.expires > gate.now
    mask &= ~catalog.sold_out
    if gate.refused is not None:
        mask &= ~gate.refused
    if gate.household_held is not None:
        mask &= ~gate.household_held
    if gate.caps is not None:
        mask &= gate.caps.offer_left
        mask &= gate.caps.campaign_left
    if catalog.targeted:
        for row in targeting_codes(catalog, gate.household):
            mask[row] = False
    return mask


def filter_codes(catalog: Catalog, gate: Gate) -> np.ndarray:
    """Per row, the first reason code (`catalog.REASONS`) that keeps it off, 0 if none."""
    codes = np.zeros(len(catalog), dtype=np.int8)
    # assigned from the least to the most important: the first reason in REASONS order wins
    if gate.caps is not None:
        codes[~gate.caps.campaign_left] = CODE["cap_campaign_day"]
        codes[~gate.caps.offer_left] = CODE["cap_offer_day"]
    if gate.household_held is not None:
        codes[gate.household_held] = CODE["household_cap"]
    if gate.refused is not None:
        codes[gate.refused] = CODE["claim_refused"]
    codes[catalog.sold_out] = CODE["sold_out"]
    for row, code in targeting_codes(catalog, gate.household).items():
        codes[row] = code
    codes[catalog.expires <= gate.now] = CODE["expired"]
    codes[catalog.starts > gate.now] = CODE["not_started"]
    static = catalog.static_code
    codes[(static != 0) & (static != CODE["duplicate"])] = static[
        (static != 0) & (static != CODE["duplicate"])
    ]
    codes[~catalog.surface_mask(gate.surface)] = CODE["wrong_surface"]
    codes[static == CODE["duplicate"]] = CODE["duplicate"]
    return codes
