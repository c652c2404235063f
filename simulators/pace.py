"""What each simulated device does in a fleet run: the household's devices and their consent
(the scenario's mix), and how many signals each sends per round (the pace).

- `stress`: every device sends `signals_per_round` a round, whatever its persona;
- `world`: every device sends its persona's own daily rate (`simulators.world.
  daily_signal_rate`, ~9 a day on a TV) shaped by the hour of day (`hourly_load`), with
  simulated time running `compress` times faster than real time (1440: a day a minute). A
  round's count is a Poisson draw from the seed, so a run is reproducible.
"""

from __future__ import annotations

import numpy as np

from simulators.household import CONSENT_ALL, DeviceSpec, default_devices
from simulators.options import HOUSEHOLD_PROFILES, FleetOptions
from simulators.world import Persona, World, daily_signal_rate, hourly_load

DAY_S = 86_400.0
PURPOSES = tuple(CONSENT_ALL)


def world_size(options: FleetOptions) -> int:
    """Personas in the run's synthetic world."""
    return max(options.households + 1, 8, options.world_households or 0)


def personas(options: FleetOptions) -> list[int]:
    """The persona of each household (`world_households`: drawn from the seed, none twice),
    then one more, the crash devices' (the process TVs of `agent-kill`)."""
    n = options.households + 1
    if options.world_households is None:
        return list(range(n))
    rng = np.random.default_rng([options.seed, 4])
    return [int(i) for i in rng.choice(options.world_households, size=n, replace=False)]


def household_devices(options: FleetOptions, persona: Persona) -> list[DeviceSpec]:
    """The devices of `persona`'s household: today's household unless the mix says else.
    The TV (the first one) is used over its local HTTP API, as an app would."""
    if options.profiles == HOUSEHOLD_PROFILES and not options.consent_shares:
        return default_devices(persona)
    hh = persona.household_id
    rng = np.random.default_rng([options.seed, persona.index, 1])
    shares = dict(options.consent_shares)
    specs: list[DeviceSpec] = []
    seen: dict[str, int] = {}
    for profile in options.profiles:
        seen[profile] = seen.get(profile, 0) + 1
        n = seen[profile]
        suffix = profile if options.profiles.count(profile) == 1 else f"{profile}-{n}"
        consent = {p: bool(rng.random() < shares.get(p, 1.0)) for p in PURPOSES}
        specs.append(
            DeviceSpec(
                f"{hh}-{suffix}", profile, via_http=profile == "tv" and n == 1, consent=consent
            )
        )
    return specs


def fleet_devices(options: FleetOptions, world: World) -> list[list[DeviceSpec]]:
    """The devices of every household of the fleet (all shards), by household: what a shard
    draws its pace for, so that shards of one seed draw what the unsharded run draws."""
    return [household_devices(options, world.persona(p)) for p in personas(options)[:-1]]


class Pace:
    """Signals per device for each round of a run."""

    def __init__(self, options: FleetOptions, world: World) -> None:
        self.options = options
        self._rng = np.random.default_rng([options.seed, 2])
        self._load = hourly_load(world, np.random.default_rng([options.seed, 3]))

    def describe(self) -> dict[str, object]:
        """What the report says about the pace."""
        o = self.options
        if o.pace == "stress":
            return {"pace": "stress", "signals_per_device_per_round": o.signals_per_round}
        return {
            "pace": "world",
            "compress": o.compress,
            "simulated_days": round(o.duration_s * o.compress / DAY_S, 4),
        }

    def simulated_days(self) -> float:
        """Simulated time the usage rounds span, in days (real time at the stress pace)."""
        factor = self.options.compress if self.options.pace == "world" else 1.0
        return self.options.duration_s * factor / DAY_S

    def counts(self, round_: int, personas: dict[str, tuple[Persona, str]]) -> dict[str, int]:
        """Signals each device (id -> its persona and profile) sends in `round_`, drawn in
        the dict's order (a run draws for the whole fleet, all shards, in household order)."""
        o = self.options
        if o.pace == "stress":
            return dict.fromkeys(personas, o.signals_per_round)
        span_s = o.duration_s / o.rounds * o.compress  # simulated seconds of one round
        hour = int((round_ * span_s) // 3600) % 24
        out: dict[str, int] = {}
        for device, (persona, profile) in personas.items():
            mean = daily_signal_rate(persona, profile) * span_s / DAY_S * self._load[hour]
            out[device] = int(self._rng.poisson(mean))
        return out
