from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate.upstream.health_state import (
    ActiveCheck,
    ExpectedStatus,
    HealthEvent,
    HealthState,
    OutlierDetection,
    TargetState,
)

HEALTHY, UNHEALTHY, EJECTED = TargetState.HEALTHY, TargetState.UNHEALTHY, TargetState.EJECTED


def fail(health: HealthState, target: int, times: int, now: float, outcome: int | str = 502) -> list[HealthEvent]:
    events: list[HealthEvent] = []
    for _ in range(times):
        events += health.record_outcome(target, outcome, now)  # type: ignore[arg-type]
    return events


# --- expected status ----------------------------------------------------------------------------------------------


def test_expected_status_range_includes_both_ends() -> None:
    expected = ExpectedStatus.parse("200-399")
    assert 200 in expected and 399 in expected and 302 in expected
    assert 199 not in expected and 400 not in expected and "200" not in expected


def test_expected_status_list_of_codes_and_ranges() -> None:
    expected = ExpectedStatus.parse(" 200, 204 ,300-302")
    assert sorted(expected.codes) == [200, 204, 300, 301, 302]
    assert repr(expected) == "ExpectedStatus(spec=' 200, 204 ,300-302')"


@pytest.mark.parametrize(
    "spec", ["", "200-", "abc", "99", "600", "300-200", "2OO", "200,,204", "１２３", "200-399-400"]
)
def test_expected_status_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="expected status"):
        ExpectedStatus.parse(spec)


# --- active checks ------------------------------------------------------------------------------------------------


def test_active_check_failures_mark_a_target_down_after_unhealthy_threshold() -> None:
    health = HealthState(3, active=ActiveCheck(unhealthy_threshold=3))
    assert health.record_check(1, False, 1.0) == []
    assert health.record_check(1, False, 2.0) == []
    [event] = health.record_check(1, False, 3.0)
    assert (event.target, event.old, event.new, event.reason, event.at) == (
        1,
        HEALTHY,
        UNHEALTHY,
        "active_check_failed",
        3.0,
    )
    assert health.state(1, 3.0) is UNHEALTHY
    assert health.eligible(3.0) == (0, 2)


def test_active_check_successes_bring_a_target_back_after_healthy_threshold() -> None:
    health = HealthState(2, active=ActiveCheck(unhealthy_threshold=1, healthy_threshold=2))
    health.record_check(0, False, 0.0)
    assert health.record_check(0, True, 1.0) == []
    [event] = health.record_check(0, True, 2.0)
    assert (event.old, event.new, event.reason) == (UNHEALTHY, HEALTHY, "active_check_passed")
    assert health.eligible(2.0) is None


def test_active_check_success_resets_the_failure_streak() -> None:
    health = HealthState(1, active=ActiveCheck(unhealthy_threshold=2))
    health.record_check(0, False, 0.0)
    health.record_check(0, True, 1.0)
    assert health.record_check(0, False, 2.0) == []
    assert health.state(0, 2.0) is HEALTHY


def test_active_check_failure_resets_the_success_streak() -> None:
    health = HealthState(1, active=ActiveCheck(unhealthy_threshold=1, healthy_threshold=2))
    health.record_check(0, False, 0.0)
    health.record_check(0, True, 1.0)
    health.record_check(0, False, 2.0)
    assert health.record_check(0, True, 3.0) == []
    assert health.state(0, 3.0) is UNHEALTHY


def test_active_check_passed_uses_expected_status() -> None:
    check = ActiveCheck(expected_status=ExpectedStatus.parse("200,204"))
    assert check.passed(204) and not check.passed(302)
    assert ActiveCheck().passed(302) and not ActiveCheck().passed(500)


def test_record_check_without_active_settings_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="active"):
        HealthState(1).record_check(0, True, 0.0)


def test_next_probe_delay_adds_envoy_jitter_within_15_percent_by_default() -> None:
    check = ActiveCheck(interval=10.0)
    rng = random.Random(42)
    delays = [check.next_probe_delay(rng) for _ in range(2000)]
    assert min(delays) >= 10.0 and max(delays) < 11.5
    assert max(delays) - min(delays) > 1.4  # spread over the whole window
    assert len(set(delays)) == len(delays)


def test_next_probe_delay_adds_absolute_jitter_too_and_none_when_turned_off() -> None:
    rng = random.Random(1)
    both = ActiveCheck(interval=10.0, interval_jitter_percent=10, interval_jitter=2.0)
    assert all(10.0 <= both.next_probe_delay(rng) < 13.0 for _ in range(500))
    assert ActiveCheck(interval=3.0, interval_jitter_percent=0).next_probe_delay(rng) == 3.0


def test_first_probe_is_spread_over_one_interval() -> None:
    rng = random.Random(3)
    delays = [ActiveCheck(interval=10.0).first_probe_delay(rng) for _ in range(500)]
    assert 0 <= min(delays) < 1.0 and 9.0 < max(delays) < 10.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0},
        {"timeout": -1},
        {"unhealthy_threshold": 0},
        {"healthy_threshold": 0},
        {"interval_jitter_percent": -1},
        {"interval_jitter": -0.5},
    ],
)
def test_active_check_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ActiveCheck(**kwargs)  # type: ignore[arg-type]


# --- passive outlier detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["connect_error", "timeout", "reset", 502, 503, 504])
def test_five_consecutive_gateway_failures_eject_a_target_for_30_seconds(outcome: int | str) -> None:
    health = HealthState(4)
    assert fail(health, 2, 4, 100.0, outcome) == []
    [event] = fail(health, 2, 1, 100.0, outcome)
    assert (event.target, event.old, event.new, event.reason) == (2, HEALTHY, EJECTED, "consecutive_failures")
    assert "ejected for 30 s" in event.detail
    assert health.eligible(100.0) == (0, 1, 3)
    assert health.eligible(129.9) == (0, 1, 3)
    assert health.eligible(130.0) is None  # back when its time is up, before anyone calls poll()


@pytest.mark.parametrize("outcome", [200, 404, 500, 501])
def test_other_outcomes_reset_the_consecutive_failure_count(outcome: int) -> None:
    health = HealthState(2)
    fail(health, 0, 4, 0.0)
    health.record_outcome(0, outcome, 0.0)
    assert fail(health, 0, 4, 0.0) == []
    assert health.state(0, 0.0) is HEALTHY


def test_ejection_expiry_is_reported_once_by_poll_or_the_next_record() -> None:
    health = HealthState(4)
    fail(health, 1, 5, 0.0)
    assert health.poll(29.0) == []
    [event] = health.poll(31.0)
    assert (event.target, event.old, event.new, event.reason, event.at) == (
        1,
        EJECTED,
        HEALTHY,
        "ejection_expired",
        30.0,
    )
    assert health.poll(32.0) == []
    fail(health, 1, 5, 100.0)
    [event] = health.record_outcome(0, 200, 200.0)
    assert event.reason == "ejection_expired" and event.target == 1


def test_repeat_ejections_last_longer_up_to_max_ejection_time() -> None:
    health = HealthState(2, outlier=OutlierDetection(base_ejection_time=30, max_ejection_time=75, interval=1000))
    now = 0.0
    durations = []
    for _ in range(4):
        [event] = fail(health, 0, 5, now)
        durations.append(event.detail.rsplit("for ", 1)[1])
        now += 1000.0 - 1  # back in service, but less than one decay interval later
        health.poll(now)
    assert durations == ["30 s", "60 s", "75 s", "75 s"]


def test_ejection_multiplier_decays_one_step_per_interval_back_in_service() -> None:
    health = HealthState(2, outlier=OutlierDetection(base_ejection_time=30, interval=10))
    fail(health, 0, 5, 0.0)  # 30 s, back at 30
    health.poll(30.0)
    fail(health, 0, 5, 35.0)  # 5 s later: 2 × 30 = 60 s, back at 95
    health.poll(95.0)
    [event] = fail(health, 0, 5, 120.0)  # 25 s later: two steps down (2 -> 0), then 1 × 30
    assert event.detail.endswith("ejected for 30 s")


def test_never_ejects_more_than_max_ejection_percent_of_targets() -> None:
    health = HealthState(5, outlier=OutlierDetection(max_ejection_percent=50))
    assert health.max_ejected == 2
    for target in range(5):
        fail(health, target, 5, 0.0)
    assert health.ejected_count(0.0) == 2
    assert health.eligible(0.0) == (2, 3, 4)


def test_a_target_over_the_cap_is_ejected_on_its_next_failure_once_room_is_made() -> None:
    health = HealthState(2, outlier=OutlierDetection(max_ejection_percent=50))
    fail(health, 0, 5, 0.0)
    assert fail(health, 1, 7, 1.0) == []  # cap of 1 reached
    [expired, ejected] = fail(health, 1, 1, 31.0)
    assert (expired.target, expired.reason) == (0, "ejection_expired")
    assert (ejected.target, ejected.reason) == (1, "consecutive_failures")


def test_with_one_target_nothing_is_ejected_at_the_default_50_percent() -> None:
    health = HealthState(1)
    assert fail(health, 0, 20, 0.0) == []
    assert health.eligible(0.0) is None


def test_ejections_expire_one_by_one() -> None:
    health = HealthState(4)
    fail(health, 0, 5, 0.0)
    fail(health, 1, 5, 10.0)
    assert [e.target for e in health.poll(35.0)] == [0]
    assert health.eligible(35.0) == (0, 2, 3)
    assert [e.target for e in health.poll(40.0)] == [1]


def test_failures_of_an_ejected_target_do_not_eject_it_again() -> None:
    health = HealthState(4)
    fail(health, 0, 5, 0.0)
    assert fail(health, 0, 10, 1.0) == []
    assert health.poll(30.0)[0].reason == "ejection_expired"


def test_an_unhealthy_target_is_not_ejected_as_well() -> None:
    health = HealthState(4, active=ActiveCheck(unhealthy_threshold=1))
    health.record_check(0, False, 0.0)
    assert fail(health, 0, 10, 0.0) == []
    assert health.ejected_count(0.0) == 0


def test_states_combine_unhealthy_over_ejected() -> None:
    health = HealthState(4, active=ActiveCheck(unhealthy_threshold=1, healthy_threshold=1))
    fail(health, 0, 5, 0.0)
    [event] = health.record_check(0, False, 1.0)
    assert (event.old, event.new) == (EJECTED, UNHEALTHY)
    [event] = health.record_check(0, True, 2.0)
    assert (event.old, event.new) == (UNHEALTHY, EJECTED)
    assert health.record_check(0, False, 40.0) == [
        HealthEvent(0, EJECTED, HEALTHY, "ejection_expired", 30.0),
        HealthEvent(0, HEALTHY, UNHEALTHY, "active_check_failed", 40.0, "1 checks failed in a row"),
    ]
    assert health.poll(100.0) == []


def test_an_ejection_ending_while_unhealthy_reports_nothing() -> None:
    health = HealthState(4, active=ActiveCheck(unhealthy_threshold=1))
    fail(health, 3, 5, 0.0)
    health.record_check(3, False, 1.0)
    assert health.poll(31.0) == []
    assert health.state(3, 31.0) is UNHEALTHY


def test_outlier_detection_can_be_turned_off() -> None:
    health = HealthState(2, outlier=None)
    assert fail(health, 0, 50, 0.0) == []
    assert health.max_ejected == 0


def test_eligible_is_cached_until_a_change_and_empty_when_all_are_down() -> None:
    health = HealthState(2, active=ActiveCheck(unhealthy_threshold=1))
    first = health.eligible(0.0)
    assert first is None and health.eligible(1.0) is None
    health.record_check(0, False, 1.0)
    down_one = health.eligible(1.0)
    assert down_one == (1,) and health.eligible(2.0) is down_one
    health.record_check(1, False, 2.0)
    assert health.eligible(2.0) == ()


def test_repr_shows_targets_that_are_down() -> None:
    health = HealthState(3, active=ActiveCheck(unhealthy_threshold=1))
    health.record_check(0, False, 0.0)
    fail(health, 2, 5, 10.0)
    assert repr(health) == "<HealthState targets=3 down=[0:unhealthy, 2:ejected<40]>"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"consecutive_failures": 0},
        {"base_ejection_time": 0},
        {"base_ejection_time": 60, "max_ejection_time": 30},
        {"max_ejection_percent": 101},
        {"interval": 0},
    ],
)
def test_outlier_detection_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OutlierDetection(**kwargs)  # type: ignore[arg-type]


def test_health_state_needs_a_target() -> None:
    with pytest.raises(ValueError):
        HealthState(0)


# --- properties ---------------------------------------------------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["outcome", "check", "poll"]),
        st.integers(0, 9),  # target (mod n)
        st.sampled_from([200, 500, 502, 503, 504, "connect_error", "timeout", "reset"]),
        st.booleans(),  # check passed
        st.floats(0, 40),  # time step
    ),
    max_size=150,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10), st.integers(0, 100), st.integers(1, 5), operations)
def test_property_health_state_never_ejects_beyond_max_percent_and_events_are_transitions(
    n: int, percent: int, threshold: int, ops: list[tuple[str, int, int | str, bool, float]]
) -> None:
    outlier = OutlierDetection(consecutive_failures=threshold, max_ejection_percent=percent)
    health = HealthState(n, active=ActiveCheck(unhealthy_threshold=2, healthy_threshold=2), outlier=outlier)
    states = [HEALTHY] * n
    now = 0.0
    for kind, target, outcome, passed, step in ops:
        now += step
        target %= n
        if kind == "outcome":
            events = health.record_outcome(target, outcome, now)  # type: ignore[arg-type]
        elif kind == "check":
            events = health.record_check(target, passed, now)
        else:
            events = health.poll(now)
        for event in events:
            assert event.old is not event.new
            assert states[event.target] is event.old  # every change is reported, once, in order
            states[event.target] = event.new
            assert event.at <= now
        assert health.ejected_count(now) <= n * percent / 100
        assert states == [health.state(i, now) for i in range(n)]
        eligible = health.eligible(now)
        expected = [i for i in range(n) if states[i] is HEALTHY]
        assert (eligible is None and len(expected) == n) or list(eligible or ()) == expected
