from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate.upstream.balancer import (
    BALANCERS,
    Balancer,
    ConsistentHash,
    LeastRequest,
    RoundRobin,
    WeightedRandom,
    create_balancer,
    eligible_targets,
)

NAMES5 = [f"10.0.0.{i}:8080" for i in range(1, 6)]


def shares(picks: Sequence[int], n: int) -> list[float]:
    counts = Counter(picks)
    return [counts[i] / len(picks) for i in range(n)]


def small(name: str, weights: Sequence[int], rng: random.Random) -> Balancer:
    """Like create_balancer, with a small Maglev table so that property tests build hundreds of them quickly."""
    if name == "consistent_hash":
        return ConsistentHash(weights, rng=rng, table_size=1021)
    return create_balancer(name, weights, rng=rng)


# --- round_robin --------------------------------------------------------------------------------------------------


def test_round_robin_weights_5_1_1_give_nginx_smooth_order() -> None:
    balancer = RoundRobin([5, 1, 1])
    assert [balancer.pick() for _ in range(14)] == [0, 0, 1, 0, 2, 0, 0] * 2


def test_round_robin_weights_3_to_1_send_75_percent() -> None:
    balancer = create_balancer("round_robin", [3, 1])
    picks = [balancer.pick() for _ in range(4000)]
    assert shares(picks, 2)[0] == pytest.approx(0.75, abs=0.02)


def test_round_robin_equal_weights_take_turns() -> None:
    balancer = RoundRobin([1, 1, 1])
    assert [balancer.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_round_robin_subset_skips_ineligible_targets_and_keeps_their_weights() -> None:
    balancer = RoundRobin([5, 1, 1])
    picks = [balancer.pick((0, 2)) for _ in range(600)]
    assert set(picks) == {0, 2}
    assert shares(picks, 3)[0] == pytest.approx(5 / 6)


def test_round_robin_subset_given_as_list_uses_the_same_schedule_as_the_tuple() -> None:
    balancer = RoundRobin([2, 1, 1])
    first = [balancer.pick([0, 1]) for _ in range(3)]
    assert first == [0, 1, 0]
    assert balancer.pick((0, 1)) == 0  # the same cycle, position 3 of 3 -> start again


def test_round_robin_with_a_huge_period_runs_nginx_loop_on_the_spot() -> None:
    balancer = RoundRobin([70000, 1, 1])
    picks = [balancer.pick() for _ in range(1000)]
    assert set(picks) == {0}
    subset = [balancer.pick((0, 1)) for _ in range(10)]
    assert set(subset) == {0}


def test_round_robin_drops_the_oldest_subset_schedule_past_the_cache_limit() -> None:
    n = RoundRobin.MAX_CACHED_SUBSETS + 3
    balancer = RoundRobin([1] * n)
    for i in range(n):
        assert balancer.pick(tuple(j for j in range(n) if j != i)) != i
    assert f"subsets={RoundRobin.MAX_CACHED_SUBSETS}" in repr(balancer)


def test_round_robin_subset_with_long_period_is_not_cached() -> None:
    balancer = RoundRobin([5000, 1, 1])
    picks = [balancer.pick((0, 1)) for _ in range(5001)]
    assert Counter(picks) == {0: 5000, 1: 1}
    assert "subsets=0" in repr(balancer)


# --- random -------------------------------------------------------------------------------------------------------


def test_random_weights_3_to_1_send_75_percent() -> None:
    balancer = create_balancer("random", [3, 1], rng=random.Random(20240601))
    picks = [balancer.pick() for _ in range(4000)]
    assert shares(picks, 2)[0] == pytest.approx(0.75, abs=0.02)


def test_random_weighted_subset_keeps_relative_weights() -> None:
    balancer = WeightedRandom([3, 5, 1], rng=random.Random(3))
    picks = [balancer.pick((0, 2)) for _ in range(4000)]
    assert set(picks) == {0, 2}
    assert shares(picks, 3)[0] == pytest.approx(0.75, abs=0.02)


def test_random_equal_weights_spread_evenly() -> None:
    balancer = WeightedRandom([1] * 4, rng=random.Random(5))
    for share in shares([balancer.pick() for _ in range(8000)], 4):
        assert share == pytest.approx(0.25, abs=0.02)
    assert set(balancer.pick((1, 3)) for _ in range(100)) == {1, 3}


# --- least_request ------------------------------------------------------------------------------------------------


def test_least_request_sends_new_requests_away_from_a_slow_target() -> None:
    balancer = LeastRequest([1, 1, 1, 1], rng=random.Random(11))
    for _ in range(20):  # target 0 is slow: 20 requests pile up on it
        balancer.on_start(0)
    picks = []
    for _ in range(1000):
        target = balancer.pick()
        picks.append(target)
        balancer.on_start(target)
        balancer.on_finish(target)  # the fast targets answer at once
    assert shares(picks, 4)[0] < 0.05


def test_least_request_with_no_load_spreads_evenly() -> None:
    balancer = LeastRequest([1, 1, 1], rng=random.Random(2))
    for share in shares([balancer.pick() for _ in range(6000)], 3):
        assert share == pytest.approx(1 / 3, abs=0.02)


def test_least_request_p2c_picks_the_less_loaded_of_two_targets() -> None:
    balancer = LeastRequest([1, 1], rng=random.Random(0))
    balancer.on_start(1)
    assert {balancer.pick() for _ in range(50)} == {0}


def test_least_request_with_more_choices_picks_the_least_loaded_of_them() -> None:
    balancer = LeastRequest([1] * 5, rng=random.Random(4), choice_count=5)
    for target, load in enumerate([3, 2, 0, 4, 1]):
        for _ in range(load):
            balancer.on_start(target)
    assert {balancer.pick() for _ in range(20)} == {2}


def test_least_request_weighted_divides_weight_by_active_plus_one() -> None:
    balancer = LeastRequest([2, 1], rng=random.Random(0))
    for _ in range(3):
        balancer.on_start(0)  # effective weights 2/4 and 1/1
    picks = [balancer.pick() for _ in range(3000)]
    assert shares(picks, 2)[1] == pytest.approx(2 / 3, abs=0.01)


def test_least_request_weighted_without_load_respects_weights() -> None:
    balancer = LeastRequest([3, 1], rng=random.Random(0))
    picks = [balancer.pick() for _ in range(4000)]
    assert shares(picks, 2)[0] == pytest.approx(0.75, abs=0.02)


def test_least_request_bias_zero_ignores_load() -> None:
    balancer = LeastRequest([3, 1], rng=random.Random(0), active_request_bias=0.0)
    for _ in range(100):
        balancer.on_start(0)
    picks = [balancer.pick() for _ in range(4000)]
    assert shares(picks, 2)[0] == pytest.approx(0.75, abs=0.02)


def test_least_request_bias_two_penalises_load_more() -> None:
    balancer = LeastRequest([2, 1], rng=random.Random(0), active_request_bias=2.0)
    balancer.on_start(0)  # 2 / 2**2 = 0.5 against 1
    picks = [balancer.pick() for _ in range(3000)]
    assert shares(picks, 2)[1] == pytest.approx(2 / 3, abs=0.01)


def test_least_request_counts_never_go_below_zero() -> None:
    balancer = LeastRequest([1, 1])
    balancer.on_finish(0)
    balancer.on_start(1)
    assert balancer.active == (0, 1)
    assert repr(balancer) == "<LeastRequest weights=[1, 1] active=[0, 1]>"


def test_least_request_rejects_fewer_than_two_choices_and_negative_bias() -> None:
    with pytest.raises(ValueError, match="choice_count"):
        LeastRequest([1, 1], choice_count=1)
    with pytest.raises(ValueError, match="bias"):
        LeastRequest([1, 1], active_request_bias=-1)


# --- consistent_hash ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def maglev5() -> ConsistentHash:
    return ConsistentHash([1] * 5, names=NAMES5)


KEYS = [f"user-{i}".encode() for i in range(20_000)]


def test_consistent_hash_sends_one_key_always_to_one_target(maglev5: ConsistentHash) -> None:
    rebuilt = ConsistentHash([1] * 5, names=NAMES5)
    for key in KEYS[:500]:
        target = maglev5.pick(key=key)
        assert maglev5.pick(key=key) == target == rebuilt.pick(key=key)


def test_consistent_hash_balances_keys_within_3_percent_of_the_mean(maglev5: ConsistentHash) -> None:
    for share in shares([maglev5.pick(key=key) for key in KEYS], 5):
        assert share == pytest.approx(0.2, rel=0.03)


def test_consistent_hash_removing_one_of_five_targets_moves_about_a_fifth_of_keys(maglev5: ConsistentHash) -> None:
    four = ConsistentHash([1] * 4, names=NAMES5[:2] + NAMES5[3:])
    before = [NAMES5[maglev5.pick(key=key)] for key in KEYS]
    names4 = NAMES5[:2] + NAMES5[3:]
    after = [names4[four.pick(key=key)] for key in KEYS]
    moved = sum(b != a for b, a in zip(before, after, strict=True)) / len(KEYS)
    assert 0.18 <= moved <= 0.23  # ideal 1/5: the removed target's keys
    removed_keys = sum(b == NAMES5[2] for b in before) / len(KEYS)
    assert moved - removed_keys < 0.02  # few keys move between the targets that stayed


def test_consistent_hash_adding_a_sixth_target_moves_about_a_sixth_of_keys(maglev5: ConsistentHash) -> None:
    names6 = [*NAMES5, "10.0.0.6:8080"]
    six = ConsistentHash([1] * 6, names=names6)
    moved = sum(NAMES5[maglev5.pick(key=key)] != names6[six.pick(key=key)] for key in KEYS) / len(KEYS)
    assert 1 / 6 - 0.02 <= moved <= 1 / 6 + 0.03


def test_consistent_hash_walks_to_the_next_eligible_target_and_stays_there(maglev5: ConsistentHash) -> None:
    eligible = (0, 1, 3, 4)
    for key in KEYS[:2000]:
        home = maglev5.pick(key=key)
        fallback = maglev5.pick(eligible, key)
        assert fallback in eligible
        if home != 2:
            assert fallback == home  # keys of healthy targets do not move
        assert maglev5.pick(eligible, key) == fallback  # stable


def test_consistent_hash_spreads_a_down_targets_keys_over_the_others(maglev5: ConsistentHash) -> None:
    eligible = (0, 1, 3, 4)
    displaced = [maglev5.pick(eligible, key) for key in KEYS if maglev5.pick(key=key) == 2]
    for target in eligible:
        assert Counter(displaced)[target] / len(displaced) == pytest.approx(0.25, abs=0.03)


def test_consistent_hash_with_many_eligible_targets_uses_a_set_for_membership() -> None:
    balancer = ConsistentHash([1] * 40, table_size=1021)
    eligible = tuple(range(20, 40))
    assert all(balancer.pick(eligible, key) in eligible for key in KEYS[:300])


def test_consistent_hash_weights_3_to_1_own_75_percent_of_keys() -> None:
    balancer = ConsistentHash([3, 1], names=["a", "b"])
    assert shares([balancer.pick(key=key) for key in KEYS], 2)[0] == pytest.approx(0.75, abs=0.02)


def test_consistent_hash_without_key_picks_at_random_among_eligible() -> None:
    balancer = ConsistentHash([1, 1, 1], rng=random.Random(9), table_size=1021)
    assert {balancer.pick((0, 2)) for _ in range(100)} == {0, 2}


def test_consistent_hash_with_an_eligible_target_holding_no_slot_falls_back_to_random() -> None:
    balancer = ConsistentHash([1000, 1], table_size=7, rng=random.Random(1))
    assert 1 not in balancer._table
    assert balancer.pick((1,), b"any") == 1


def test_consistent_hash_walks_the_table_when_rehashing_keeps_missing_a_tiny_share() -> None:
    balancer = ConsistentHash([1000, 1], table_size=1021)
    assert balancer._table.count(1) == 1
    keys = [f"k{i}".encode() for i in range(50)]
    assert {balancer.pick((1,), key) for key in keys} == {1}


def test_consistent_hash_validates_names_and_table_size() -> None:
    with pytest.raises(ValueError, match="names for"):
        ConsistentHash([1, 1], names=["a"])
    with pytest.raises(ValueError, match="unique"):
        ConsistentHash([1, 1], names=["a", "a"])
    with pytest.raises(ValueError, match="prime"):
        ConsistentHash([1, 1], table_size=1000)
    with pytest.raises(ValueError, match="prime"):
        ConsistentHash([1], table_size=1)
    with pytest.raises(ValueError, match="prime"):
        ConsistentHash([1, 1, 1], table_size=2)
    assert repr(ConsistentHash([1], table_size=3)) == "<ConsistentHash weights=[1] table_size=3>"


# --- all balancers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_fails_open_to_all_targets_when_none_is_eligible(name: str) -> None:
    balancer = small(name, [1, 1, 1], random.Random(0))
    picks = {balancer.pick((), key=f"k{i}".encode()) for i in range(300)}
    assert picks == {0, 1, 2}


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_every_balancer_with_one_eligible_target_picks_it(name: str) -> None:
    balancer = small(name, [2, 1, 1], random.Random(0))
    assert {balancer.pick((1,), key=f"k{i}".encode()) for i in range(50)} == {1}


def test_create_balancer_rejects_an_unknown_name_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="consistent_hash, least_request, random, round_robin"):
        create_balancer("fastest", [1])


def test_create_balancer_passes_names_to_consistent_hash() -> None:
    balancer = create_balancer("consistent_hash", [1] * 5, names=NAMES5)
    assert balancer.pick(key=b"user-1") == ConsistentHash([1] * 5, names=NAMES5).pick(key=b"user-1")


@pytest.mark.parametrize("weights", [[], [0], [1, -2], [1.5], [True]])
def test_weights_must_be_integers_of_at_least_one(weights: list[object]) -> None:
    with pytest.raises(ValueError):
        RoundRobin(weights)  # type: ignore[arg-type]


def test_base_balancer_has_no_algorithm_and_ignores_in_flight_hooks() -> None:
    balancer = Balancer([1, 2])
    balancer.on_start(0)
    balancer.on_finish(0)
    assert balancer.weights == (1, 2)
    assert repr(balancer) == "<Balancer weights=[1, 2]>"
    with pytest.raises(NotImplementedError):
        balancer.pick()


# --- eligible_targets ---------------------------------------------------------------------------------------------


def test_eligible_targets_is_none_when_every_target_may_be_used() -> None:
    assert eligible_targets(3, None) is None


def test_eligible_targets_leaves_out_targets_already_tried() -> None:
    assert eligible_targets(4, None, tried={1}) == (0, 2, 3)
    assert eligible_targets(4, (0, 1, 3), tried={1}) == (0, 3)


def test_eligible_targets_offers_tried_targets_again_when_all_were_tried() -> None:
    assert eligible_targets(3, (0, 2), tried={0, 2}) == (0, 2)
    assert eligible_targets(2, None, tried={0, 1}) is None


def test_eligible_targets_panics_to_all_targets_when_none_is_healthy() -> None:
    assert eligible_targets(3, ()) is None
    assert eligible_targets(3, (), tried={1}) == (0, 2)


def test_eligible_targets_by_default_keeps_the_few_healthy_targets() -> None:
    assert eligible_targets(5, (3,)) == (3,)


def test_eligible_targets_panics_below_an_envoy_style_threshold() -> None:
    assert eligible_targets(4, (1,), panic_threshold=50) is None  # 25% healthy < 50%
    assert eligible_targets(4, (1, 2), panic_threshold=50) == (1, 2)  # 50% is not below 50%


# --- properties ---------------------------------------------------------------------------------------------------

weights_st = st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=8)


@st.composite
def pick_cases(draw: st.DrawFn) -> tuple[str, list[int], list[tuple[tuple[int, ...], bytes | None]]]:
    name = draw(st.sampled_from(sorted(BALANCERS)))
    weights = draw(weights_st)
    n = len(weights)
    subsets = st.lists(st.integers(0, n - 1), unique=True).map(tuple)
    keys = st.one_of(st.none(), st.binary(max_size=8))
    steps = draw(st.lists(st.tuples(subsets, keys), min_size=1, max_size=30))
    return name, weights, steps


@settings(max_examples=200, deadline=None)
@given(pick_cases(), st.integers(0, 2**32))
def test_property_a_pick_is_a_valid_target_and_eligible_when_any_is(
    case: tuple[str, list[int], list[tuple[tuple[int, ...], bytes | None]]], seed: int
) -> None:
    name, weights, steps = case
    balancer = small(name, weights, random.Random(seed))
    for eligible, key in steps:
        target = balancer.pick(eligible, key)
        assert 0 <= target < len(weights)
        if eligible:
            assert target in eligible
        balancer.on_start(target)


@settings(max_examples=100, deadline=None)
@given(weights_st, st.data())
def test_property_round_robin_gives_each_target_exactly_its_weight_per_period(
    weights: list[int], data: st.DataObject
) -> None:
    n = len(weights)
    eligible = data.draw(st.lists(st.integers(0, n - 1), unique=True, min_size=1).map(tuple))
    balancer = RoundRobin(weights)
    total = sum(weights[i] for i in eligible)
    picks = Counter(balancer.pick(eligible) for _ in range(2 * total))
    assert picks == {i: 2 * weights[i] for i in eligible}


@settings(max_examples=30, deadline=None)
@given(weights_st.filter(lambda w: len(w) >= 2), st.integers(0, 2**32))
def test_property_random_respects_weights_within_tolerance(weights: list[int], seed: int) -> None:
    balancer = WeightedRandom(weights, rng=random.Random(seed))
    picks = [balancer.pick() for _ in range(6000)]
    total = sum(weights)
    for i, share in enumerate(shares(picks, len(weights))):
        assert share == pytest.approx(weights[i] / total, abs=0.035)


@settings(max_examples=8, deadline=None)
@given(st.integers(3, 8), st.data())
def test_property_consistent_hash_remaps_about_one_nth_when_a_target_leaves(n: int, data: st.DataObject) -> None:
    names = [f"host-{i}.internal:443" for i in range(n)]
    gone = data.draw(st.integers(0, n - 1))
    rest = names[:gone] + names[gone + 1 :]
    before = ConsistentHash([1] * n, names=names)
    after = ConsistentHash([1] * (n - 1), names=rest)
    keys = KEYS[:5000]
    moved = sum(names[before.pick(key=k)] != rest[after.pick(key=k)] for k in keys) / len(keys)
    assert moved <= 1 / n + 0.04


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=16), min_size=1, max_size=50), st.data())
def test_property_consistent_hash_is_stable_for_a_key_and_an_eligible_set(
    keys: list[bytes], data: st.DataObject
) -> None:
    balancer = _shared_maglev()
    eligible = data.draw(st.lists(st.integers(0, 4), unique=True).map(tuple))
    first = [balancer.pick(eligible, key) for key in keys]
    assert [balancer.pick(eligible, key) for key in reversed(keys)] == first[::-1]


@functools.cache
def _shared_maglev() -> ConsistentHash:
    return ConsistentHash([1, 2, 1, 1, 3], names=NAMES5)
