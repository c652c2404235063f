"""The demo: embedded broker, gateway, a simulated household, campaigns, and a loss report.

Two friends' households join the household's group buy and help its price cut, and a
live-sale wave sells out to the three households' devices (`simulators.demo_social`).

Everything runs in one process and one event loop, over real sockets: MQTT through the
broker (embedded amqtt unless `--broker` names another), the operator's calls over HTTP.
It runs under a topic root of its own (`simulators.options.fresh_root`), so on a broker a
real gateway uses it reaches none of the real devices; on a broker it does not own it clears
every retained message it left there when it ends, also on SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from protocol import codec
from protocol.envelopes import OfferBundle
from protocol.ids import format_time, new_id, utcnow
from protocol.signing import Signer
from protocol.topics import Topics
from simulators.checker import Drops, account, check, coverage
from simulators.demo_social import (
    CLAIMERS,
    LocalApp,
    SocialStory,
    friend_households,
    friends_of,
    social_ok,
)
from simulators.household import DeviceRun, DeviceSpec, Household, default_devices
from simulators.household_lan import HouseholdLan
from simulators.options import DemoOptions, fresh_root, sweepable
from simulators.retained import clear_retained
from simulators.world import World, make_world

log = logging.getLogger(__name__)

__all__ = ["DemoOptions", "run_demo", "succeeded"]


@dataclass(frozen=True, slots=True)
class Attack:
    """What the demo's attacker sent a device: bundles signed by a key the device does not
    trust (forged) and real bundles changed after signing (tampered), and their offers."""

    forged_bundles: int = 0
    forged_offers: int = 0
    tampered_bundles: int = 0
    tampered_offers: int = 0


@contextlib.asynccontextmanager
async def _broker(url: str | None) -> AsyncIterator[str]:
    if url:
        yield url
        return
    from simulators.brokers import EmbeddedBroker  # noqa: PLC0415 - only the default path needs it

    async with EmbeddedBroker() as broker:
        yield broker.url


def sample_campaigns(world: World, surfaces: list[str]) -> list[dict[str, Any]]:
    """The sample campaigns an operator would launch: the world's catalog, grouped."""
    now = utcnow()
    by_campaign: dict[str, list[dict[str, Any]]] = {}
    for record in world.catalog.records():
        offer = dict(record)
        campaign = offer.pop("campaign_id")
        offer.update(
            surfaces=surfaces,
            starts_at=format_time(now - timedelta(minutes=1)),
            expires_at=format_time(now + timedelta(days=7)),
        )
        by_campaign.setdefault(campaign, []).append(offer)
    return [
        {"name": f"Sample campaign {name}", "cohorts": ["all"], "offers": offers}
        for name, offers in sorted(by_campaign.items())
    ]


class Operator:
    """The marketing operator: bearer-token HTTP calls against the gateway (or, with a
    device's app token, an app's calls to its local API)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(self, method: str, path: str, body: object | None = None) -> Any:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {data}")
            return data


async def _attack(broker_url: str, topics: Topics, device_id: str) -> Attack:
    """Publish a forged bundle and a tampered copy of a real one to a device; every bundle
    and every offer in them must be refused."""
    host, port = broker_url.removeprefix("mqtt://").rsplit(":", 1)
    catalog = topics.cohort_offers("all")
    async with aiomqtt.Client(host, int(port), identifier=f"attacker-{new_id()[-12:]}") as client:
        await client.subscribe(catalog, qos=1)
        real: dict[str, Any] | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                async for message in client.messages:
                    # amqtt 0.12.1 may hand a new subscriber retained messages of other topics
                    if str(message.topic) != catalog:
                        continue
                    payload = message.payload
                    if isinstance(payload, bytes | bytearray):
                        real = codec.decode_object(bytes(payload))
                    if real and real.get("offers"):
                        break
        forged_offers = (real or {}).get("offers", [])[:2]
        now = utcnow()
        forged = OfferBundle.model_validate(
            {
                "id": new_id(),
                "issued_at": now,
                "expires_at": now + timedelta(hours=1),
                "offers": forged_offers,
            }
        )
        rogue = Signer.generate("rogue").sign(forged.to_wire())
        await client.publish(topics.offers(device_id), codec.encode_dict(rogue), qos=1)
        attack = Attack(forged_bundles=1, forged_offers=max(1, len(forged_offers)))
        if real is not None:
            tampered = json.loads(json.dumps(real))
            tampered["id"] = new_id()
            tampered["offers"][0]["discount"] = 0.99
            await client.publish(topics.offers(device_id), codec.encode_dict(tampered), qos=1)
            attack = Attack(attack.forged_bundles, attack.forged_offers, 1, len(tampered["offers"]))
        return attack


async def run_demo(options: DemoOptions) -> dict[str, Any]:
    """The whole demo under its own topic root; SIGTERM ends it as SIGINT does (cancelled),
    and either way what it left retained on a broker it does not own is cleared."""
    root = options.topic_root or fresh_root("demo")
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    handled = False
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
            handled = True
    try:
        report = await _run_demo(options, root)
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)
        if options.broker is not None and sweepable(root):
            # after the gateway and every device left (their goodbyes are retained too)
            await asyncio.shield(_sweep(options.broker, root))
    report["topic_root"] = root
    return report


async def _sweep(broker: str, root: str) -> None:
    try:
        await clear_retained(broker, root)
    except (aiomqtt.MqttError, OSError) as exc:
        log.warning("could not clear the retained messages under %s at %s: %s", root, broker, exc)


async def _run_demo(options: DemoOptions, root: str) -> dict[str, Any]:
    from cloud_gateway.config import GatewaySettings  # noqa: PLC0415
    from cloud_gateway.runtime.gateway import Gateway  # noqa: PLC0415
    from cloud_gateway.security.auth import create_token  # noqa: PLC0415

    started = time.monotonic()
    world = make_world(options.seed, households=max(options.household + 1, 8))
    devices = default_devices(world.persona(options.household))
    if options.lan:  # the speaker (thin: no model) ranks through the household's coordinator
        hh = world.persona(options.household).household_id
        devices.append(DeviceSpec(f"{hh}-speaker", "speaker"))
    with contextlib.ExitStack() as stack:
        data = options.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        async with _broker(options.broker) as broker_url:
            settings = GatewaySettings(
                broker=broker_url, data_dir=data / "gateway", http_port=0, topic_root=root
            )
            async with Gateway(settings) as gateway, aiohttp.ClientSession() as http:
                token = await asyncio.to_thread(create_token, settings.data_dir)
                operator = Operator(http, f"http://127.0.0.1:{gateway.http_port}", token)
                friends = friends_of(world, options.household)
                async with (
                    Household(
                        world,
                        options.household,
                        broker=broker_url,
                        trust=gateway.trust_path,
                        data_dir=data / "devices",
                        seed=options.seed,
                        devices=devices,
                    ) as household,
                    friend_households(
                        world,
                        friends,
                        broker=broker_url,
                        trust=gateway.trust_path,
                        data_dir=data / "friends",
                    ) as friend_homes,
                    contextlib.AsyncExitStack() as lan_stack,
                ):
                    surfaces = sorted(
                        {s for run in household.runs for s in run.agent.settings.profile.surfaces}
                    )
                    for campaign in sample_campaigns(world, surfaces):
                        created = await operator.call("POST", "/v1/campaigns", campaign)
                        await operator.call("POST", f"/v1/campaigns/{created['id']}/launch")
                    social = SocialStory(operator, friends)
                    await social.launch(surfaces)
                    lan = await lan_stack.enter_async_context(
                        _lan(household, operator, gateway.trust_path, options.lan)
                    )
                    per_device = options.signals_per_device or household.weekly_signals()
                    await household.use(per_device, history=options.history)
                    if lan is not None:
                        await lan.share()
                        await lan.settle(timeout=15.0)
                    await _wait_for_offers(household, timeout=15.0)
                    tv = next(r for r in household.runs if r.spec.profile == "tv")
                    # before the evening's impressions (the household's caps then hold it)
                    story = await purifier_to_tv(tv) if lan is not None else None
                    attack = await _attack(broker_url, Topics(root), tv.spec.device_id)
                    # the evening: people browse while the devices keep reporting live usage
                    await asyncio.gather(
                        household.browse(options.browse_rounds),
                        household.use(options.live_signals_per_device),
                    )
                    # the social evening: a group of three households, then the wave's drop
                    buddies = [home.runs[0] for home in friend_homes]
                    await social.form_group(
                        LocalApp(http, tv), [LocalApp(http, run) for run in buddies]
                    )
                    await social.cut_price(
                        LocalApp(http, tv), [LocalApp(http, run) for run in buddies]
                    )
                    crowd = [r for r in household.runs if r.spec.profile in CLAIMERS]
                    await social.sell_out(crowd + buddies)
                    drained = await household.drain(options.drain_timeout)
                    await asyncio.sleep(0.2)
                    report = await _report(household, operator, attack, drained)
                    report["social"] = social.report()
                    if lan is not None:
                        report["household_lan"] = {**lan.report(), "purifier_to_tv": story}
    report["duration_s"] = round(time.monotonic() - started, 2)
    report["broker"] = "embedded amqtt" if options.broker is None else options.broker
    return report


@contextlib.asynccontextmanager
async def _lan(
    household: Household, operator: Operator, trust: Path, on: bool
) -> AsyncIterator[HouseholdLan | None]:
    """The household on the LAN, its memberships issued by the gateway's API (or nothing)."""
    if not on:
        yield None
        return

    async def issue(household_id: str, body: dict[str, Any]) -> dict[str, Any]:
        signed: dict[str, Any] = await operator.call(
            "POST", f"/v1/households/{household_id}/members", body
        )
        return signed

    async with HouseholdLan(household, issue, trust) as lan:
        yield lan


async def purifier_to_tv(tv: DeviceRun) -> dict[str, Any]:
    """The purifier→TV story as the TV's ranking tells it: its model's feature spec uses
    `household.consumable_need`, and the purifier filter offer ranks on the TV with the reason
    `household_consumable_low` (the purifier's level reached the TV through the coordinator)."""
    model = tv.agent.parts.slot.current
    names = model.spec.names if model is not None else []
    shown: dict[str, Any] | None = None
    for surface in tv.agent.settings.profile.surfaces:
        decision = await tv.agent.decide(surface, 3)
        for rank, r in enumerate(decision.ranked, 1):
            if r.offer.category == "purifier_filter" and "household_consumable_low" in r.reasons:
                shown = {"offer_id": r.offer.id, "surface": surface, "rank": rank}
                shown |= {"score": round(r.score, 3), "reasons": list(r.reasons)}
                break
        if shown is not None:
            break
    uses = "household.consumable_need" in names
    return {
        "model_version": model.version if model is not None else None,
        "feature_spec_version": model.spec.version if model is not None else None,
        "uses_household_consumable_need": uses,
        "filter_offer_on_tv": shown,
        "ok": uses and shown is not None,
        "line": (
            f"TV ranks with model v{model.version if model else '-'} (feature spec"
            f" v{model.spec.version if model else '-'}, household.consumable_need"
            f" {'used' if uses else 'NOT used'}): the purifier filter offer"
            + (
                f" {shown['offer_id']} is #{shown['rank']} on {shown['surface']}"
                " (household_consumable_low)"
                if shown
                else " is NOT shown with household_consumable_low"
            )
        ),
    }


async def _wait_for_offers(household: Household, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(run.agent.counters.get("offers_verified", 0) > 0 for run in household.runs):
            return
        await asyncio.sleep(0.1)
    log.warning("not every device verified offers within %.0fs", timeout)


async def _report(
    household: Household, operator: Operator, attack: Attack, drained: bool
) -> dict[str, Any]:
    accepted = {run.spec.device_id: run.accepted for run in household.runs}
    stored: dict[str, list[str]] = {}
    covered: dict[str, int] = {}
    drops: dict[str, Drops] = {}
    outcomes_stored = 0
    devices: list[dict[str, Any]] = []
    for run in household.runs:
        export = await operator.call("GET", f"/v1/devices/{run.spec.device_id}/export")
        stored[run.spec.device_id] = [s["id"] for s in export.get("signals", [])]
        covered[run.spec.device_id] = coverage(export)  # aggregate-mode devices
        drops[run.spec.device_id] = Drops.from_status(run.agent.status())
        outcomes_stored += len(export.get("outcomes", []))
        counters = run.agent.counters
        devices.append(
            {
                "device_id": run.spec.device_id,
                "profile": run.spec.profile,
                "signals_accepted": len(run.accepted),
                "signals_stored": len(stored[run.spec.device_id]),
                "signals_in_aggregates": covered[run.spec.device_id],
                "uplink_mode": run.agent.settings.profile.uplink.mode,
                "offers_verified": counters.get("offers_verified", 0),
                "offers_rejected": counters.get("offers_rejected", 0),
                "bundles_rejected": counters.get("bundles_rejected", 0),
                "decisions": run.decisions,
                "shown": run.shown,
                "clicks": run.clicks,
                "personalized": run.spec.consent.get("personalization", False),
                "ranking": run.agent.settings.profile.ranking,
                "remote_ranked": counters.get("remote_ranked", 0),
                "remote_rank_offline": counters.get("remote_rank_offline", 0),
                "remote_rank_failed": counters.get("remote_rank_failed", 0),
                "top_offer": run.top,
            }
        )
    loss = check(accepted, stored)
    books = account(accepted, stored, drops, covered)
    latencies = [ms for run in household.runs for ms in run.agent.decision_ms]
    stats = await operator.call("GET", "/v1/stats")
    p50, p99 = _quantiles(latencies)
    return {
        "signals_accepted": loss.accepted,
        "signals_stored": books.stored,
        "signals_in_aggregates": books.aggregated,
        "signals_dropped_on_purpose": books.evicted + books.expired + books.withdrawn,
        "signals_lost": books.lost,
        "signals_duplicated": loss.duplicated,
        "signals_unexpected": loss.unexpected,
        "offers_pushed": int(stats.get("offers_pushed", 0)),
        "offers_verified": sum(d["offers_verified"] for d in devices),
        "offers_rejected": sum(d["offers_rejected"] for d in devices),
        "bundles_rejected": sum(d["bundles_rejected"] for d in devices),
        "forged_bundles_sent": attack.forged_bundles,
        "forged_offers_sent": attack.forged_offers,
        "tampered_bundles_sent": attack.tampered_bundles,
        "tampered_offers_sent": attack.tampered_offers,
        "decisions": sum(d["decisions"] for d in devices),
        "decision_p50_ms": round(p50, 3),
        "decision_p99_ms": round(p99, 3),
        "outcomes_recorded": sum(
            r.agent.counters.get("outcomes_recorded", 0) for r in household.runs
        ),
        "outcomes_stored": outcomes_stored,
        "drained": drained,
        "lost_ids_sample": list(loss.lost_ids) if books.lost else [],
        "devices": devices,
    }


def _quantiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return (samples[0], samples[0]) if samples else (float("nan"), float("nan"))
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49], cuts[98]


def refusals_match(report: dict[str, Any]) -> bool:
    """The devices refused exactly what the attacker sent: a forged and a tampered bundle,
    every offer in them, and nothing else (a real bundle refused is a failure too)."""
    bundles = report["forged_bundles_sent"] + report["tampered_bundles_sent"]
    offers = report["forged_offers_sent"] + report["tampered_offers_sent"]
    return bool(
        report["forged_bundles_sent"] > 0
        and report["tampered_bundles_sent"] > 0
        and report["bundles_rejected"] == bundles
        and report["offers_rejected"] == offers
    )


def succeeded(report: dict[str, Any]) -> bool:
    """The demo's verdict: nothing lost, the refusals exactly the attacks, every device
    verified offers and decided, the group formed and the wave sold out."""
    return (
        report["signals_lost"] == 0
        and report["signals_duplicated"] == 0
        and refusals_match(report)
        and all(d["offers_verified"] > 0 and d["decisions"] > 0 for d in report["devices"])
        and report["outcomes_stored"] == report["outcomes_recorded"]
        and social_ok(report)
    )
