"""Scenario files for `edgemart fleet --scenario FILE` (TOML): the fleet's size and mix, its
ramp, its usage pace, the campaigns it launches and the faults it injects, with their times,
and the seed. Every field maps onto `FleetOptions` and is honoured by the run; anything else
in the file is refused, naming the field and the file. Flags given on the command line win
over the file. `simulators/scenarios/` ships `standard.toml` (the default run) and
`world-day.toml` (a day of the synthetic world's usage in a minute).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulators.options import FAULTS, HOUSEHOLD_PROFILES, FleetOptions

SCENARIOS = Path(__file__).parent / "scenarios"

Fault = Literal[
    "gateway-restart",
    "broker-restart",
    "partition",
    "agent-kill",
    "coordinator-kill",
    "coordinator-spoof",
]
assert set(Fault.__args__) == set(FAULTS)  # type: ignore[attr-defined]


Profile = Literal["hub", "tv", "phone", "speaker"]
DEFAULT_MIX: tuple[Profile, ...] = ("hub", "tv", "phone", "phone")
assert DEFAULT_MIX == HOUSEHOLD_PROFILES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Usage(_Strict):
    pace: Literal["stress", "world"] = "stress"
    rounds: int = Field(9, ge=3)
    duration_s: float = Field(12.0, gt=0)
    signals_per_round: int | None = Field(None, ge=0)
    """Stress pace only: per device and round (default 20)."""
    compress: float | None = Field(None, gt=0)
    """World pace only: simulated seconds per real second (default 1440, a day a minute)."""

    @model_validator(mode="after")
    def _pace_fields(self) -> Usage:
        if self.pace == "world" and self.signals_per_round is not None:
            raise ValueError(
                "signals_per_round is for pace 'stress'; 'world' uses the world's rate"
            )
        if self.pace == "stress" and self.compress is not None:
            raise ValueError("compress is for pace 'world'")
        return self


class Mix(_Strict):
    world_households: int | None = Field(None, ge=2)
    """Draw the households' personas at random (from the seed) from a world of this many;
    absent: the world's first households."""
    profiles: list[Profile] = Field(default_factory=lambda: list(DEFAULT_MIX), min_length=1)
    """The devices of every household."""
    consent: dict[Literal["analytics", "personalization", "marketing"], float] | None = None
    """Share (0..1) of devices granting each purpose; a purpose left out: all grant it.
    Absent: today's household (the second phone without personalization)."""

    @model_validator(mode="after")
    def _shares(self) -> Mix:
        for purpose, share in (self.consent or {}).items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"consent.{purpose} must be a share in 0..1, not {share}")
        return self


class TimedFault(_Strict):
    fault: Fault
    at_s: float = Field(ge=0)
    """Seconds after the first usage round."""
    for_s: float = Field(gt=0)


class Campaign(_Strict):
    at_s: float = Field(ge=0)
    """Seconds after the first usage round."""
    count: int = Field(1, ge=1, le=64)
    """How many of the world's sample campaigns (its catalog, grouped) to create and launch."""


class Social(_Strict):
    group_size: int = Field(3, ge=2, le=10)
    window_s: float = Field(60.0, ge=60, le=86400)
    """Households start group buys after the usage rounds; friends join within this window
    (the gateway's shortest is 60 s)."""
    wait_for_expiry: bool = False
    """Wait the window out, so the groups that did not fill are counted expired (else open)."""


class Scenario(_Strict):
    seed: int = 11
    households: int | None = Field(None, ge=1)
    devices: int | None = Field(None, ge=1)
    """Instead of households: rounded up to whole households of the mix."""
    ramp: float | None = Field(None, gt=0)
    """Devices started (and stopped) a second."""
    drain_timeout_s: float = Field(90.0, gt=0)
    crash_devices: int = Field(2, ge=1)
    usage: Usage = Field(default_factory=Usage)
    mix: Mix = Field(default_factory=Mix)
    faults: list[TimedFault] = Field(default_factory=list)
    campaigns: list[Campaign] = Field(default_factory=list)
    social: Social | None = None
    """Group buys shared between friends (`[social]`); absent: none."""

    @model_validator(mode="after")
    def _whole(self) -> Scenario:
        if self.households is not None and self.devices is not None:
            raise ValueError("give households or devices, not both")
        names = [f.fault for f in self.faults]
        if len(names) != len(set(names)):
            raise ValueError("each fault at most once")
        return self

    def options(self) -> dict[str, Any]:
        """The `FleetOptions` fields this scenario sets."""
        per = len(self.mix.profiles)
        households = self.households or (-(-self.devices // per) if self.devices else 3)
        out: dict[str, Any] = {
            "seed": self.seed,
            "households": households,
            "ramp": self.ramp,
            "drain_timeout": self.drain_timeout_s,
            "crash_devices": self.crash_devices,
            "pace": self.usage.pace,
            "rounds": self.usage.rounds,
            "duration_s": self.usage.duration_s,
            "profiles": tuple(self.mix.profiles),
            "consent_shares": tuple(sorted((self.mix.consent or {}).items())),
            "world_households": self.mix.world_households,
            "faults": tuple(f.fault for f in self.faults),
            "fault_times": tuple((f.fault, f.at_s, f.for_s) for f in self.faults),
            "campaigns": tuple((c.at_s, c.count) for c in self.campaigns),
        }
        if self.social is not None:
            social = self.social
            out["group_buys"] = (social.group_size, social.window_s, social.wait_for_expiry)
        if self.usage.signals_per_round is not None:
            out["signals_per_round"] = self.usage.signals_per_round
        if self.usage.compress is not None:
            out["compress"] = self.usage.compress
        return out


class ScenarioError(ValueError):
    """A scenario file that cannot be used: the file, the field and what is wrong."""


def load(path: Path) -> Scenario:
    """The scenario in `path`; `ScenarioError` naming the file and each bad field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not TOML: {exc}") from exc
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ScenarioError(f"{path}: {problems}") from None


def options(path: Path | None, **overrides: Any) -> FleetOptions:
    """`FleetOptions` from the scenario in `path` (if any), then `overrides` (the flags given
    on the command line; None means not given)."""
    fields = load(path).options() if path is not None else {}
    devices = overrides.pop("devices", None)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if devices is not None:  # rounded up to whole households of the mix
        per = len(fields.get("profiles", HOUSEHOLD_PROFILES))
        fields["households"] = max(1, -(-devices // per))
    if "faults" in overrides and overrides["faults"] is not None:
        fields["fault_times"] = tuple(
            t for t in fields.get("fault_times", ()) if t[0] in overrides["faults"]
        )
        if {t[0] for t in fields["fault_times"]} != set(overrides["faults"]):
            fields["fault_times"] = ()  # the flag's faults on the round plan
    try:
        return FleetOptions(**fields)
    except ValueError as exc:  # a combination of the file's fields and the flags
        if path is None:
            raise
        raise ScenarioError(f"{path} (with the flags given): {exc}") from None
