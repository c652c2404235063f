"""The signal kinds a device accepts and the types of their attributes: the documented table
(docs/architecture.md, "Signals the household sends"), plus the custom kinds a firmware
profile declares (`[signals.<kind>]` with `attrs = {name = "string" | "integer" | "number" |
"boolean"}`). Pure: a signal in, its field errors out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import ATTR_TYPES, Profile

_PYTHON_TYPES: Mapping[str, frozenset[type]] = {
    "string": frozenset({str}),
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "boolean": frozenset({bool}),
}


@dataclass(frozen=True, slots=True)
class AttrRule:
    """What one attribute must be: a type of `ATTR_TYPES`, and for numbers an inclusive range."""

    type: str
    low: float | None = None
    high: float | None = None

    def accepts(self, value: Any) -> bool:
        """The fast check (intake is hot): `null` always, else the type and the range."""
        if value is None:
            return True
        if type(value) not in _PYTHON_TYPES[self.type]:
            return False
        return self.low is None or self.high is None or self.low <= value <= self.high


_CATEGORY = AttrRule("string")
BUILTIN: Mapping[str, Mapping[str, AttrRule]] = {
    "app_open": {"app": AttrRule("string"), "category": _CATEGORY},
    "content_view": {
        "genre": AttrRule("string"),
        "category": _CATEGORY,
        "seconds": AttrRule("number", 0, 1e6),
    },
    "search": {"category": _CATEGORY, "query_len": AttrRule("integer", 0, 10_000)},
    "purchase": {"category": _CATEGORY, "amount": AttrRule("number", 0, 1e9)},
    "consumable_level": {"category": _CATEGORY, "level": AttrRule("number", 0, 1)},
    "member_tier": {"tier": AttrRule("integer", 0, 3)},
}
"""Kind -> its documented attributes. Attributes not listed are kept as they come (an app may
add context); listed ones must have their type (and range)."""


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null"


def _matches(rule: AttrRule, value: Any) -> str | None:
    """Why `value` breaks `rule`, or None. `null` is "not given" and always passes."""
    found = _type_of(value)
    if found == "null":
        return None
    wanted = rule.type
    if found != wanted and not (wanted == "number" and found == "integer"):
        return f"must be {'an' if wanted == 'integer' else 'a'} {wanted}, not {found}"
    if rule.low is not None and rule.high is not None and not rule.low <= value <= rule.high:
        return f"must be within {rule.low:g}..{rule.high:g}"
    return None


class KindTable:
    """The kinds one profile accepts: the built-in table plus the profile's custom kinds."""

    def __init__(self, profile: Profile) -> None:
        table: dict[str, Mapping[str, AttrRule]] = dict(BUILTIN)
        for kind, policy in profile.signals.items():
            if kind == "default":
                continue
            declared = {name: AttrRule(kind_type) for name, kind_type in policy.attrs.items()}
            table[kind] = {**table.get(kind, {}), **declared}
        self.kinds: Mapping[str, Mapping[str, AttrRule]] = table
        self.custom = tuple(sorted(set(table) - set(BUILTIN)))

    def errors(self, loc: str, kind: str, attrs: Mapping[str, Any]) -> list[dict[str, str]]:
        """Field errors of one signal at `loc` (`signals.3`); empty when it is fine."""
        rules = self.kinds.get(kind)
        if rules is None:
            known = ", ".join(sorted(self.kinds))
            return [
                {
                    "loc": f"{loc}.kind",
                    "msg": f"unknown signal kind {kind!r} (known: {known}; a profile declares"
                    " others under [signals.<kind>])",
                }
            ]
        out: list[dict[str, str]] = []
        for name, value in attrs.items():
            rule = rules.get(name)
            if rule is None or rule.accepts(value):
                continue
            why = _matches(rule, value)
            if why is not None:
                out.append({"loc": f"{loc}.attrs.{name}", "msg": why})
        return out


__all__ = ["ATTR_TYPES", "BUILTIN", "AttrRule", "KindTable"]
