"""Live-sale waves on the device (issue 19): the gateway's clock, sealed offers, sold-out.

* **The gateway's clock.** Signed times received live (not retained: a retained message is old
  by an unknown time) feed `protocol.waves.GatewayClock`: the `Timestamp` on `timestamp` and
  every `SoldOut` notice. Decisions and claims judge offers' windows on `now()`, this
  device's clock corrected by the offset, so devices whose clocks differ by seconds reveal a
  wave within the transit time of each other.
* **Sealed offers.** An offer with `not_before` arrived ahead of its wave: it is neither shown
  nor claimed before `not_before` on the gateway's clock (`withheld`, `refusal`).
* **Sold out.** The newest signed `SoldOut` of each of this device's cohorts lists the offers
  whose stock is gone: they are not shown, and a claim of one is not sent (the flash crowd
  stops at the edge); counted as `claims_held_sold_out`.
* **Admission.** A wave offer with an admission share (`Offer.admit`, grown by the notices'
  `admit`) is claimed by this device only once its stable ticket (`protocol.waves.ticket`)
  is below the share: before that a claim is stored and waits (`turn` says "wait"); a notice
  that admits it sends it; one that lists the offer sold out closes it unsent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Literal

from agent.runtime.metrics import Metrics
from mqttlink.logs import OnceLogger
from protocol.envelopes import Offer, Timestamp
from protocol.errors import ProtocolError
from protocol.ids import utcnow
from protocol.signing import Verifier, decode_signed
from protocol.waves import SIGNING_ROLE, GatewayClock, SoldOut, admitted, revealed

log = logging.getLogger(__name__)

MAX_NOTICE_BYTES = 16 * 1024
COUNTERS = (
    "soldout_accepted",
    "soldout_rejected",
    "clock_samples",
    "claims_held_sold_out",
    "claims_held_sealed",
    "claims_waiting_admission",
)
Turn = Literal["go", "wait", "closed"]


class LiveSale:
    """What this device knows of live sales: the gateway's clock and what is sold out."""

    def __init__(
        self,
        cohorts: Iterable[str],
        verifier: Verifier,
        metrics: Metrics,
        *,
        local: Callable[[], datetime] = utcnow,
        on_change: Callable[[], None] = lambda: None,
        device_id: str = "",
    ) -> None:
        """`local`: this device's wall clock (the agent's; a test's skewed one);
        `device_id`: whose lottery tickets admit it to waves (`turn`)."""
        self._device_id = device_id
        self.admit: dict[str, float] = {}
        """Admission shares grown by the notices, by offer (the largest of any cohort's)."""
        self._local = local
        self._cohorts = frozenset(cohorts)
        self._verifier = verifier
        self._metrics = metrics
        self._on_change = on_change
        self._faults = OnceLogger(log)
        self.clock = GatewayClock()
        self._notices: dict[str, SoldOut] = {}
        self.sold_out: frozenset[str] = frozenset()
        for name in COUNTERS:
            metrics.counters.setdefault(name, 0)

    def now(self) -> datetime:
        """The gateway's time now, as this device estimates it (its own clock until a
        sample came)."""
        return self.clock.now(self._local())

    def _refuse(self, reason: str, detail: str) -> None:
        self._metrics.inc("soldout_rejected")
        self._faults.log(reason, "refused sold-out notice: %s", detail)

    def handle_timestamp(self, payload: bytes, retained: bool) -> bool:
        """A signed `Timestamp` received live is a clock sample; True when taken as one.
        (Trust freshness is `agent.offers.trust`'s; this only reads the time.)"""
        if retained or not payload:
            return False
        try:
            stamp, _ = decode_signed(
                payload,
                Timestamp,
                self._verifier,
                max_compressed=MAX_NOTICE_BYTES,
                role="timestamp",
            )
        except ProtocolError:
            return False  # counted by the trust keeper, which reads the same message
        self.clock.observe(stamp.issued_at, self._local())
        self._metrics.inc("clock_samples")
        return True

    def handle_soldout(self, cohort: str, payload: bytes, retained: bool) -> bool:
        """Verify and take one notice from `cohort/{cohort}/soldout`; True when taken."""
        if not payload:
            return False  # a cleared retained message
        if cohort not in self._cohorts:
            self._refuse("not_my_cohort", f"cohort {cohort!r}")
            return False
        try:
            notice, _ = decode_signed(
                payload,
                SoldOut,
                self._verifier,
                max_compressed=MAX_NOTICE_BYTES,
                role=SIGNING_ROLE,
            )
        except ProtocolError as exc:
            self._refuse(exc.reason, str(exc))
            return False
        if notice.cohort != cohort:
            self._refuse("wrong_cohort", f"notice of {notice.cohort!r} on {cohort!r}")
            return False
        if not retained:
            self.clock.observe(notice.at, self._local())
            self._metrics.inc("clock_samples")
        held = self._notices.get(cohort)
        if held is not None and notice.version <= held.version:
            return False
        self._notices[cohort] = notice
        self.sold_out = frozenset(o for n in self._notices.values() for o in n.offers)
        admit: dict[str, float] = {}
        for n in self._notices.values():
            for oid, share in n.admit.items():
                admit[oid] = max(share, admit.get(oid, 0.0))
        self.admit = admit
        self._metrics.inc("soldout_accepted")
        self._on_change()
        return True

    def withheld(self, offers: Iterable[Offer], now: datetime) -> frozenset[str]:
        """Offers not to show at `now` (the gateway's time, `now()`): sold out, or sealed
        until a later `not_before`."""
        sealed = {o.id for o in offers if not revealed(o.not_before, now)}
        return self.sold_out | sealed if sealed else self.sold_out

    def refusal(self, offer: Offer) -> str | None:
        """Why a claim of `offer` is not sent now (counted), or None."""
        if offer.id in self.sold_out:
            self._metrics.inc("claims_held_sold_out")
            return "sold out (the gateway's notice): no claim sent"
        if not revealed(offer.not_before, self.now()):
            self._metrics.inc("claims_held_sealed")
            return f"sealed until {offer.not_before} (the gateway's clock)"
        return None

    def turn(self, offer: Offer) -> Turn:
        """Whether this device may send its claim of `offer` now ("go"), must wait for a
        larger admission share ("wait"), or never will (sold out: "closed")."""
        if offer.id in self.sold_out:
            return "closed"
        if offer.admit is None:
            return "go"
        share = max(offer.admit, self.admit.get(offer.id, 0.0))
        return "go" if admitted(self._device_id, offer.id, share) else "wait"

    def forget(self) -> None:
        self._notices.clear()
        self.sold_out = frozenset()
        self.admit = {}
