"""The downlink router: one table from a message's kind to the handler that takes it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from agent.link.commands import Commands
from agent.link.session import Incoming
from agent.link.uplink import Uplink
from agent.model.update import ModelUpdater
from agent.offers.book import OfferBook
from agent.offers.claims import Claims
from agent.offers.members import MemberKeeper
from agent.offers.policies import PolicyKeeper
from agent.offers.social import Social
from agent.offers.trust import TrustKeeper
from agent.offers.waves import LiveSale
from protocol.ids import utcnow

log = logging.getLogger(__name__)

Handler = Callable[[Incoming], Awaitable[None]]


class Router:
    """`dispatch(message)` runs the handler of `message.kind`; unknown kinds are logged."""

    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self.routes = dict(routes)

    async def dispatch(self, message: Incoming) -> None:
        handler = self.routes.get(message.kind)
        if handler is None:
            log.debug("not handled yet: %s on %s", message.kind, message.topic)
            return
        await handler(message)


class Fanout:
    """Callbacks run in order on one event (the link came up: uplink and claims resend)."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def __call__(self) -> None:
        for callback in self._callbacks:
            callback()


def downlink_routes(
    *,
    uplink: Uplink,
    offers: OfferBook,
    updates: ModelUpdater,
    claims: Claims,
    commands: Commands,
    trust: TrustKeeper,
    policies: PolicyKeeper,
    members: MemberKeeper | None = None,
    live: LiveSale | None = None,
    social: Social | None = None,
) -> dict[str, Handler]:
    """What the agent does with each kind the gateway sends; a receipt to send wakes the
    uplink (at once for a command: the gateway waits on its receipt)."""

    async def ack(message: Incoming) -> None:
        await uplink.handle_ack(message.payload)

    async def offer_bundle(message: Incoming) -> None:
        verdict = await offers.handle(message.kind, message.subject, message.payload)
        if message.kind == "offers" and verdict.bundle_id:
            uplink.poke()  # a receipt to send

    async def manifest(message: Incoming) -> None:
        updates.submit(message.payload)

    async def claim_result(message: Incoming) -> None:
        await claims.handle_result(message.payload)
        uplink.poke()  # a receipt to send

    async def command(message: Incoming) -> None:
        if await commands.handle(message.payload):
            uplink.poke(flush=True)  # a receipt to send

    async def key_list(message: Incoming) -> None:
        await trust.handle_keys(message.payload)

    async def timestamp(message: Incoming) -> None:
        if live is not None:  # a live one is a sample of the gateway's clock (issue 19)
            live.handle_timestamp(message.payload, message.retained)
        await trust.handle_timestamp(message.payload)

    async def member(message: Incoming) -> None:
        if members is not None:
            await members.handle(message.subject, message.payload, utcnow())

    async def soldout(message: Incoming) -> None:
        if live is not None:
            live.handle_soldout(message.subject, message.payload, message.retained)

    async def policy(message: Incoming) -> None:
        await policies.handle(message.subject, message.payload)

    async def social_state(message: Incoming) -> None:
        if social is not None:
            await social.handle_state(message.payload)

    return {
        "social": social_state,
        "keys": key_list,
        "timestamp": timestamp,
        "ack": ack,
        "offers": offer_bundle,
        "cohort_offers": offer_bundle,
        "cohort_policy": policy,
        "manifest": manifest,
        "claim": claim_result,
        "cmd": command,
        "member": member,
        "cohort_soldout": soldout,
    }
