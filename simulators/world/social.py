"""The world's social side: friendships between households and responses to social offers.

Friendships are a seeded small world (Watts-Strogatz: a ring of close ties, a share of them
rewired to weak long-range ties) with a bounded degree; each tie has a strength in 0..1 (close
ties strong, long-range ties weak). Responses to group-buy, price-cut and member-perk offers are
probabilities from the household's propensities (price sensitivity, the hidden clickiness, the
member tier) and, for a friend's share code, the tie's strength. Pure numpy, deterministic for
a seed, and drawn from a stream of their own: `make_world`'s draws are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulators.world.core import World
from simulators.world.people import FloatArray, Households, IntArray

NEAR = 4
"""Close ties per household before rewiring (two on each side of the ring)."""
REWIRE = 0.1
"""Share of close ties rewired to a random household (the small world's shortcuts)."""
MAX_DEGREE = 8
"""No household has more friends than this (a rewired tie never lands on a full one)."""

_CLOSE = (4.0, 2.0)  # Beta parameters of a close tie's strength (mean 0.67)
_WEAK = (1.5, 4.0)  # and of a long-range tie's (mean 0.27)
_STREAM = 2  # the SeedSequence child of the world's seed (0 and 1 are personas and catalog)


@dataclass(frozen=True, slots=True, eq=False)
class Friendships:
    """Ties as padded arrays: row h lists h's friends (-1 pads) and each tie's strength."""

    friends: IntArray  # [H, MAX_DEGREE], friend index or -1
    strength: FloatArray  # [H, MAX_DEGREE], 0..1 (0 where padded); symmetric per tie

    def __len__(self) -> int:
        return int(self.friends.shape[0])

    @property
    def degree(self) -> IntArray:
        return np.asarray((self.friends >= 0).sum(axis=1), dtype=np.int64)

    def of(self, household: int) -> list[tuple[int, float]]:
        """One household's friends, strongest tie first (ties broken by index)."""
        row, s = self.friends[household], self.strength[household]
        pairs = [(int(f), float(v)) for f, v in zip(row, s, strict=True) if f >= 0]
        return sorted(pairs, key=lambda p: (-p[1], p[0]))

    def tie(self, a: int, b: int) -> float:
        """The strength of the tie between two households (0.0: not friends)."""
        hit = np.flatnonzero(self.friends[a] == b)
        return float(self.strength[a, hit[0]]) if hit.size else 0.0


def make_friendships(
    world: World, near: int = NEAR, rewire: float = REWIRE, max_degree: int = MAX_DEGREE
) -> Friendships:
    """The world's friendships, entirely determined by its seed and household count."""
    n = len(world.households)
    if near % 2 or near < 2 or near > max_degree:
        raise ValueError(f"near={near}: an even count of close ties, 2..max_degree")
    if not 0.0 <= rewire <= 1.0:
        raise ValueError(f"rewire={rewire}: a share, 0..1")
    rng = np.random.default_rng(np.random.SeedSequence(world.seed).spawn(_STREAM + 1)[_STREAM])
    friends = np.full((n, max_degree), -1, dtype=np.int64)
    strength = np.zeros((n, max_degree), dtype=np.float64)
    if n < 2:
        return Friendships(friends, strength)
    half = min(near // 2, (n - 1) // 2) or 1
    src = np.repeat(np.arange(n), half)
    dst = (src + np.tile(np.arange(1, half + 1), n)) % n
    shortcut = rng.random(src.size) < rewire
    targets = rng.integers(0, n, src.size)
    close = rng.beta(*_CLOSE, src.size)
    weak = rng.beta(*_WEAK, src.size)
    degree = np.zeros(n, dtype=np.int64)
    seen: set[tuple[int, int]] = set()
    for e in range(src.size):  # in edge order, so the graph is the same for a seed
        a, b, s = int(src[e]), int(dst[e]), float(close[e])
        if shortcut[e]:
            t = int(targets[e])
            if t != a and (min(a, t), max(a, t)) not in seen and degree[t] < max_degree:
                b, s = t, float(weak[e])
        key = (min(a, b), max(a, b))
        if a == b or key in seen or degree[a] >= max_degree or degree[b] >= max_degree:
            continue
        seen.add(key)
        friends[a, degree[a]], strength[a, degree[a]] = b, s
        friends[b, degree[b]], strength[b, degree[b]] = a, s
        degree[a] += 1
        degree[b] += 1
    return Friendships(friends, strength)


# ------------------------------------------------------------------ responses
def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def _pick(who: IntArray | int) -> IntArray:
    return np.atleast_1d(np.asarray(who, dtype=np.int64))


def p_start_group(h: Households, who: IntArray | int) -> FloatArray:
    """P(a household shown a group-buy offer starts a group): bargain hunters start more."""
    i = _pick(who)
    return _sigmoid(-2.2 + 2.5 * h.price_sensitivity[i] + h.clickiness[i])


def p_join_group(h: Households, who: IntArray | int, tie: FloatArray | float) -> FloatArray:
    """P(a household joins a group whose code a friend shared), rising with the tie."""
    i = _pick(who)
    t = np.broadcast_to(np.asarray(tie, dtype=np.float64), i.shape)
    return _sigmoid(-2.0 + 3.5 * t + 1.5 * h.price_sensitivity[i] + h.clickiness[i])


def p_help_cut(h: Households, who: IntArray | int, tie: FloatArray | float) -> FloatArray:
    """P(a household helps a friend's price cut): cheaper than joining (one tap, no purchase),
    so likelier at the same tie, and hardly tied to price sensitivity."""
    i = _pick(who)
    t = np.broadcast_to(np.asarray(tie, dtype=np.float64), i.shape)
    return _sigmoid(-1.2 + 4.0 * t + 0.5 * h.price_sensitivity[i] + h.clickiness[i])


def p_use_perk(h: Households, who: IntArray | int) -> FloatArray:
    """P(a member shown a member perk uses it), rising with the tier (0..3)."""
    i = _pick(who)
    return _sigmoid(-2.0 + 0.8 * h.tier[i] + h.clickiness[i])


@dataclass(frozen=True, slots=True)
class GroupRun:
    """One simulated group: who started it, who joined (in order), and whether it formed."""

    starter: int
    members: tuple[int, ...]
    size: int

    @property
    def formed(self) -> bool:
        return len(self.members) == self.size


def share_group(
    world: World, ties: Friendships, starter: int, size: int, rng: np.random.Generator
) -> GroupRun:
    """The starter shares the code with its friends, strongest tie first; each joins with
    `p_join_group` until the group is full (formed) or no friend is left (it expires)."""
    if size < 2:
        raise ValueError(f"size={size}: a group needs at least two households")
    members = [starter]
    for friend, tie in ties.of(starter):
        if len(members) == size:
            break
        if rng.random() < float(p_join_group(world.households, friend, tie)[0]):
            members.append(friend)
    return GroupRun(starter, tuple(members), size)


def joiners(world: World, ties: Friendships, starter: int, count: int) -> list[dict[str, float]]:
    """The `count` friends likeliest to join the starter's group, likeliest first: who the
    demo's friend households are (with their tie and probability, for the report)."""
    rows = []
    for friend, tie in ties.of(starter):
        p = float(p_join_group(world.households, friend, tie)[0])
        rows.append({"household": friend, "tie": round(tie, 3), "p_join": round(p, 3)})
    rows.sort(key=lambda r: (-r["p_join"], r["household"]))
    return rows[:count]
