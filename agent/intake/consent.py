"""Consent per purpose (analytics, personalization, marketing): wire shape and held state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.errors import InvalidInput
from protocol.codec import field_errors

PURPOSES = ("analytics", "personalization", "marketing")


class Purposes(BaseModel):
    """`{"analytics": bool, "personalization": bool, "marketing": bool}`; all three required."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    analytics: bool
    personalization: bool
    marketing: bool


class ConsentRequest(BaseModel):
    """Body of `PUT /v1/consent`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    purposes: Purposes


@dataclass(frozen=True, slots=True)
class ConsentState:
    """What the user decided (or the profile's defaults), with version and time."""

    analytics: bool
    personalization: bool
    marketing: bool
    version: int = 0
    updated_at: str | None = None

    def purposes(self) -> dict[str, bool]:
        return {
            "analytics": self.analytics,
            "personalization": self.personalization,
            "marketing": self.marketing,
        }

    def to_json(self) -> dict[str, Any]:
        return {"purposes": self.purposes(), "version": self.version, "updated_at": self.updated_at}


def parse_purposes(obj: object, *, loc_prefix: str = "") -> dict[str, bool]:
    """Validate a purposes mapping; InvalidInput with field paths otherwise."""
    try:
        return Purposes.model_validate(obj).model_dump()
    except ValidationError as exc:
        errors = field_errors(exc)
        if loc_prefix:
            errors = [{"loc": f"{loc_prefix}.{e['loc']}", "msg": e["msg"]} for e in errors]
        raise InvalidInput(errors) from exc


class ConsentBox:
    """The user's current consent, one holder every part reads (`state`) and the intake
    path rebinds (`set`): never a copy that goes stale."""

    __slots__ = ("state",)

    def __init__(self, state: ConsentState) -> None:
        self.state = state

    def get(self) -> ConsentState:
        return self.state

    def set(self, state: ConsentState) -> None:
        self.state = state

    def restore(self, purpose: str, granted: bool, version: int, at: str) -> None:
        """Apply one stored row (start-up): the purpose's value, the newest version."""
        values = self.state.purposes()
        if purpose in values:
            values[purpose] = granted
        self.state = ConsentState(
            values["analytics"],
            values["personalization"],
            values["marketing"],
            max(version, self.state.version),
            at,
        )
