"""The world's friendships and social responses: seeded, small-world, bounded, and the
probabilities move the way the propensities and ties say."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from simulators import world as w
from simulators.world import social as s


def test_friendships_are_deterministic_per_seed_and_leave_the_world_unchanged() -> None:
    a, b = w.make_world(3, 600), w.make_world(3, 600)
    fa, fb = s.make_friendships(a), s.make_friendships(b)
    assert np.array_equal(fa.friends, fb.friends) and np.array_equal(fa.strength, fb.strength)
    other = s.make_friendships(w.make_world(4, 600))
    assert not np.array_equal(fa.friends, other.friends)
    # the world's own draws are what they were (the shipped model is rebuilt from them)
    assert np.array_equal(a.households.affinity, w.make_world(3, 600).households.affinity)


def test_friendships_are_symmetric_bounded_and_a_small_world() -> None:
    world = w.make_world(5, 1000)
    ties = s.make_friendships(world, max_degree=6)
    assert (ties.degree <= 6).all() and (ties.degree >= 1).all()
    for h in range(0, 1000, 37):
        for friend, tie in ties.of(h):
            assert friend != h
            assert ties.tie(friend, h) == pytest.approx(tie) and 0.0 < tie < 1.0
    assert ties.tie(0, 0) == 0.0
    # no duplicate friend in a row
    for row in ties.friends[:200]:
        kept = row[row >= 0]
        assert len(set(kept.tolist())) == kept.size
    # shortcuts: breadth-first hops from 0 reach everyone in far fewer than a ring's n/4
    hops = _hops(ties, 0)
    assert len(hops) == 1000 and max(hops.values()) < 40
    # close ties (ring neighbours) are stronger on average than rewired ones
    ring = [ties.tie(h, (h + 1) % 1000) for h in range(1000) if ties.tie(h, (h + 1) % 1000)]
    far = [t for h in range(1000) for f, t in ties.of(h) if min(abs(f - h), 1000 - abs(f - h)) > 2]
    assert far and np.mean(ring) > np.mean(far) + 0.2


def test_bad_knobs_are_refused_by_name() -> None:
    world = w.make_world(1, 10)
    with pytest.raises(ValueError, match="near=3"):
        s.make_friendships(world, near=3)
    with pytest.raises(ValueError, match=r"rewire=1\.5"):
        s.make_friendships(world, rewire=1.5)
    assert s.make_friendships(w.make_world(1, 1)).degree.tolist() == [0]
    with pytest.raises(ValueError, match="size=1"):
        s.share_group(world, s.make_friendships(world), 0, 1, np.random.default_rng(0))


def test_responses_follow_propensities_and_ties() -> None:
    world = w.make_world(2, 2000)
    h = world.households
    everyone = np.arange(2000)
    for p in (
        s.p_start_group(h, everyone),
        s.p_join_group(h, everyone, 0.5),
        s.p_help_cut(h, everyone, 0.5),
        s.p_use_perk(h, everyone),
    ):
        assert p.shape == (2000,) and ((p > 0) & (p < 1)).all()
    # a stronger tie: likelier to join and to help; helping is likelier than joining
    assert (s.p_join_group(h, everyone, 0.9) > s.p_join_group(h, everyone, 0.1)).all()
    assert (s.p_help_cut(h, everyone, 0.5) > s.p_join_group(h, everyone, 0.5)).all()
    # bargain hunters start more groups; higher tiers use more perks
    sens = h.price_sensitivity > np.median(h.price_sensitivity)
    start = s.p_start_group(h, everyone)
    assert start[sens].mean() > start[~sens].mean()
    perk = s.p_use_perk(h, everyone)
    assert perk[h.tier == 3].mean() > perk[h.tier == 0].mean()


def test_a_shared_group_is_deterministic_for_a_seed_and_forms_sometimes() -> None:
    world = w.make_world(9, 400)
    ties = s.make_friendships(world)

    def run(seed: int) -> list[s.GroupRun]:
        rng = np.random.default_rng(seed)
        return [s.share_group(world, ties, i, 3, rng) for i in range(400)]

    first, again = run(1), run(1)
    assert first == again
    formed = sum(g.formed for g in first)
    assert 0 < formed < 400  # some groups form, some expire
    for g in first:
        assert g.members[0] == g.starter and len(set(g.members)) == len(g.members) <= 3
        assert all(ties.tie(g.starter, m) > 0 for m in g.members[1:])
    best = s.joiners(world, ties, 0, 2)
    assert len(best) == 2 and best[0]["p_join"] >= best[1]["p_join"]
    assert {r["household"] for r in best} <= {f for f, _ in ties.of(0)}


def _hops(ties: s.Friendships, start: int) -> dict[int, int]:
    seen = {start: 0}
    queue = deque([start])
    while queue:
        h = queue.popleft()
        for f, _ in ties.of(h):
            if f not in seen:
                seen[f] = seen[h] + 1
                queue.append(f)
    return seen
