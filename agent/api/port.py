"""What the local API needs of the agent: the `AgentPort` protocol (`Agent` implements it; a
test can build the API over any other implementation, no broker needed)."""

from __future__ import annotations

from typing import Any, Protocol

from agent.config import AgentSettings
from agent.decide.decision import Decision
from agent.intake.consent import ConsentState
from agent.intake.validate import SignalIn
from agent.runtime.metrics import Metrics
from agent.store.idempotency import Stored


class AgentPort(Protocol):
    """The use cases the local API serves, and the settings and metrics it reads."""

    @property
    def settings(self) -> AgentSettings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def model_version(self) -> int | None: ...

    @property
    def consent(self) -> ConsentState: ...

    async def accept_parsed(self, signals: list[SignalIn]) -> list[str]: ...

    async def decide(self, surface: str, limit: int = 3, *, explain: bool = False) -> Decision: ...

    async def record_outcome_detail(
        self, offer_id: str, kind: str, surface: str
    ) -> dict[str, Any]: ...

    async def set_consent(self, purposes: dict[str, bool]) -> ConsentState: ...

    def status(self) -> dict[str, Any]: ...

    async def claim(self, offer_id: str) -> tuple[dict[str, Any], bool]: ...

    async def get_claim(self, claim_id: str) -> dict[str, Any] | None: ...

    async def social_request(
        self, kind: str, verb: str, *, offer_id: str | None = None, code: str | None = None
    ) -> dict[str, Any]:
        """Start or join a group, start or help a cut: the request as `social_show` shows it."""
        ...

    async def social_show(self, ident: str) -> dict[str, Any] | None:
        """A group's or cut's latest verified state (by request id or by its own id)."""
        ...

    async def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        """Outbox rows that could not be sent, newest first (`agent.store.quarantine`)."""
        ...

    async def find_request(self, route: str, key: str) -> Stored | None:
        """The committed request of an `Idempotency-Key` on `route` (24 h), if any."""
        ...

    async def readiness(self) -> dict[str, Any]:
        """`{"ready": bool, ...}`: broker link up, store answering, every owned loop running."""
        ...
