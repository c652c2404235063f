"""The seeded synthetic world: households, an offer catalog and a hidden ground truth (numpy)."""

# Everything here is pure and vectorised: `make_world(seed, households)` draws personas as
# arrays (100,000 households take well under a second), `World.click_probability` is the ground
# truth P(click | persona, offer, hour, profile), `usage_signals` scripts what one household
# device sends to the real agent, and `logged_examples` produces what the gateway would
# export after a uniform-random exploration policy showed offers: the features a device
# computes from its own recent signals, and a label sampled from the ground truth.
#
# Rooms: `people` (households and their devices), `offers` (the catalog), `truth` (the hidden
# click and conversion model), `core` (`World`, `make_world`: one seed, one draw order),
# `usage` (what devices send), `logs` (the exploration logs), `social` (friendships between
# households and their responses to group-buy, price-cut and member-perk offers). Categories,
# offer types, profiles and feature names come from `protocol.vocabulary`, the one list
# devices, models and this world share.

from simulators.world.core import World, make_world
from simulators.world.logs import LoggedArrays, logged_arrays, logged_examples, to_jsonl
from simulators.world.offers import Catalog
from simulators.world.people import (
    APPLIANCES,
    CATEGORIZED_KINDS,
    LOG_DAYS,
    LOG_START,
    UTC_OFFSET_HOURS,
    WINDOW_DAYS,
    Households,
    Persona,
)
from simulators.world.social import Friendships, make_friendships
from simulators.world.usage import daily_signal_rate, hourly_load, usage_signals

__all__ = [
    "APPLIANCES",
    "CATEGORIZED_KINDS",
    "LOG_DAYS",
    "LOG_START",
    "UTC_OFFSET_HOURS",
    "WINDOW_DAYS",
    "Catalog",
    "Friendships",
    "Households",
    "LoggedArrays",
    "Persona",
    "World",
    "daily_signal_rate",
    "hourly_load",
    "logged_arrays",
    "logged_examples",
    "make_friendships",
    "make_world",
    "to_jsonl",
    "usage_signals",
]
