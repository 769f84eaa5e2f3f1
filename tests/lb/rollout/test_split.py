"""lb.rollout.split in-process: share ranges, the golden-ratio sequence, sticky hashing
with the least movement, header matches first, unhealthy groups' shares given away."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

import pytest

from lb.rollout.split import GOLDEN, Golden, ModelRouter, Ranges, Rule, hash_unit


def no_headers(_name: str) -> str | None:
    return None


def headers(**values: str) -> Callable[[str], str | None]:
    lower = {k.replace("_", "-").lower(): v for k, v in values.items()}
    return lower.get


def test_ranges_lookup_and_shares() -> None:
    r = Ranges([("stable", 95.0), ("canary", 5.0), ("idle", 0.0)])
    assert r.groups == ["stable", "canary"]              # a 0 share owns nothing
    assert r.lookup(0.0) == "stable" and r.lookup(0.9499) == "stable"
    assert r.lookup(0.95) == "canary" and r.lookup(0.999999) == "canary"
    assert r.shares() == pytest.approx({"stable": 95.0, "canary": 5.0})
    assert not Ranges([("a", 0.0)])


def test_golden_sequence_is_low_discrepancy() -> None:
    seq, points = Golden(), []
    for _ in range(20_000):
        points.append(seq.next())
    assert all(0.0 <= u < 1.0 for u in points)
    assert all((a + GOLDEN) % 1.0 == pytest.approx(b) for a, b in itertools.pairwise(points))
    # every run of 1,000 consecutive points puts within 0.3 % of them in any [a, a + w)
    for width in (0.01, 0.05, 0.3):
        for start in range(0, 19_000, 997):
            run = points[start:start + 1000]
            for a in (0.0, 0.37, 1.0 - width):
                inside = sum(1 for u in run if a <= u < a + width)
                assert abs(inside - 1000 * width) <= 3, (width, start, a, inside)


@pytest.mark.parametrize("shares", [
    [("stable", 95.0), ("canary", 5.0)],
    [("stable", 99.0), ("canary", 1.0)],
    [("a", 50.0), ("b", 30.0), ("c", 20.0)],
    [("stable", 70.0), ("canary", 30.0)],
])
def test_unsticky_shares_hold_in_every_window_of_1000(shares: list[tuple[str, float]]) -> None:
    router = ModelRouter(shares)
    healthy = {g for g, _ in shares}
    chosen = [router.choose(no_headers, healthy).group for _ in range(10_000)]
    for start in range(0, 9_001, 250):
        counts = Counter(chosen[start:start + 1000])
        for group, share in shares:
            assert abs(counts[group] / 10.0 - share) <= 0.5, (start, group, counts)
    assert sum(router.routed.values()) == 10_000 and not router.diverted


def test_sticky_keeps_a_value_in_one_group_and_spreads_values_by_share() -> None:
    router = ModelRouter([("stable", 80.0), ("canary", 20.0)], sticky_header="x-user")
    healthy = {"stable", "canary"}
    first = {}
    for rep in range(3):
        for i in range(5000):
            g = router.choose(headers(x_user=f"user-{i}"), healthy).group
            if rep == 0:
                first[i] = g
            assert first[i] == g                    # 100 % of a key's requests, one group
    share = sum(1 for g in first.values() if g == "canary") / len(first)
    assert share == pytest.approx(0.2, abs=0.02)
    # without the header: the sequence (unsticky), still by share
    unsticky = Counter(router.choose(no_headers, healthy).group for _ in range(1000))
    assert unsticky["canary"] == pytest.approx(200, abs=3)


def test_a_change_of_shares_moves_the_fewest_clients() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    before = ModelRouter([("canary", 5.0), ("stable", 95.0)], sticky_header="x-user")
    after = ModelRouter([("canary", 25.0), ("stable", 75.0)], sticky_header="x-user")
    healthy = {"stable", "canary"}
    moved: Counter[tuple[str, str]] = Counter()
    for u in users:
        a = before.choose(headers(x_user=u), healthy).group
        b = after.choose(headers(x_user=u), healthy).group
        if a != b:
            moved[(a, b)] += 1
    assert set(moved) == {("stable", "canary")}             # only towards the canary
    assert sum(moved.values()) / len(users) == pytest.approx(0.20, abs=0.01)  # |Δshare|


def test_api_key_stickiness_and_hash_stability() -> None:
    router = ModelRouter([("stable", 50.0), ("canary", 50.0)], sticky_api_key=True)
    healthy = {"stable", "canary"}
    groups = {router.choose(no_headers, healthy, api_key="key-1").group for _ in range(50)}
    assert len(groups) == 1
    units = [hash_unit(f"key-{i}") for i in range(10_000)]
    assert all(0.0 <= u < 1.0 for u in units)
    deciles = Counter(int(u * 10) for u in units)              # spread evenly
    assert all(abs(deciles[d] - 1000) < 120 for d in range(10)), deciles
    assert hash_unit("key-1") == 0.6430068311453693             # the same in every process


def test_header_match_wins_over_sticky_and_split() -> None:
    router = ModelRouter([("stable", 100.0), ("canary", 0.0)], sticky_header="x-user",
                         rules=[Rule("x-model-group", "canary", "canary")])
    healthy = {"stable", "canary"}
    assert router.choose(headers(x_user="u1"), healthy).group == "stable"
    c = router.choose(headers(x_user="u1", x_model_group="canary"), healthy)
    assert (c.group, c.how) == ("canary", "match")
    assert router.choose(headers(x_model_group="other"), healthy).group == "stable"
    assert router.matched == 1


def test_an_unhealthy_group_gives_its_share_to_the_others() -> None:
    shares = [("a", 30.0), ("b", 30.0), ("c", 40.0)]
    router = ModelRouter(shares, sticky_header="x-user")
    everyone = {"a", "b", "c"}
    users = [f"u{i}" for i in range(9000)]
    home = {u: router.choose(headers(x_user=u), everyone).group for u in users}
    now = {u: router.choose(headers(x_user=u), {"a", "c"}).group for u in users}
    assert all(now[u] == home[u] for u in users if home[u] != "b")   # others stay put
    went = Counter(now[u] for u in users if home[u] == "b")
    assert set(went) == {"a", "c"}
    assert went["a"] / sum(went.values()) == pytest.approx(30 / 70, abs=0.03)
    assert router.diverted["b"] == sum(went.values())
    assert router.effective_shares({"a", "c"}) == pytest.approx(
        {"a": 300 / 7, "b": 0.0, "c": 400 / 7})


def test_no_healthy_group_keeps_the_split() -> None:
    router = ModelRouter([("stable", 90.0), ("canary", 10.0)])
    counts = Counter(router.choose(no_headers, set()).group for _ in range(1000))
    assert counts["canary"] == pytest.approx(100, abs=2)
    assert router.effective_shares(set()) == pytest.approx({"stable": 90.0, "canary": 10.0})


def test_new_shares_keep_the_sequence_and_counters() -> None:
    router = ModelRouter([("canary", 10.0), ("stable", 90.0)])
    for _ in range(100):
        router.choose(no_headers, {"stable", "canary"})
    router.set_shares([("canary", 50.0), ("stable", 50.0)])
    counts = Counter(router.choose(no_headers, {"stable", "canary"}).group
                     for _ in range(1000))
    assert counts["canary"] == pytest.approx(500, abs=3)
    assert sum(router.routed.values()) == 1100
