from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate.policies.retry_policy import IDEMPOTENT_METHODS, RetryBudget, RetryPolicy

DEFAULT = RetryPolicy()
GATEWAY = RetryPolicy(max_retries=3, retry_on=frozenset({"connect_error", "timeout", "reset", 502, 503, 504}))


# --- should_retry -------------------------------------------------------------------------------------------------


def test_default_policy_retries_a_connect_error_once() -> None:
    assert DEFAULT.should_retry(1, "connect_error", "GET", request_sent=False, response_started=False)
    assert not DEFAULT.should_retry(2, "connect_error", "GET", request_sent=False, response_started=False)


@pytest.mark.parametrize("failure", ["timeout", "reset", 502, 503, 504])
def test_default_policy_does_not_retry_timeouts_resets_or_gateway_errors(failure: str | int) -> None:
    assert not DEFAULT.should_retry(1, failure, "GET", request_sent=True, response_started=False)  # type: ignore[arg-type]


def test_default_policy_fields_match_the_issue_and_envoy() -> None:
    assert (DEFAULT.max_retries, DEFAULT.retry_on, DEFAULT.per_try_timeout) == (1, {"connect_error"}, None)
    assert (DEFAULT.backoff_base, DEFAULT.backoff_max) == (0.025, 0.25)
    assert (DEFAULT.budget_percent, DEFAULT.min_retry_concurrency, DEFAULT.non_idempotent) == (20.0, 3, False)


@pytest.mark.parametrize("method", ["POST", "PATCH", "LOCK", "MKCOL", "get"])
def test_refused_connection_may_be_retried_for_any_method(method: str) -> None:
    assert DEFAULT.should_retry(1, "connect_error", method, request_sent=True, response_started=False)


@pytest.mark.parametrize("method", ["POST", "PATCH", "LOCK", "CONNECT", "get"])
def test_non_idempotent_request_that_was_sent_is_not_retried(method: str) -> None:
    assert not GATEWAY.should_retry(1, "timeout", method, request_sent=True, response_started=False)
    assert not GATEWAY.should_retry(1, "reset", method, request_sent=True, response_started=False)


@pytest.mark.parametrize("method", sorted(IDEMPOTENT_METHODS))
def test_idempotent_request_that_was_sent_is_retried(method: str) -> None:
    assert GATEWAY.should_retry(1, "timeout", method, request_sent=True, response_started=False)
    assert GATEWAY.should_retry(1, 503, method, request_sent=True, response_started=False)


def test_post_that_timed_out_before_it_was_sent_is_retried() -> None:
    assert GATEWAY.should_retry(1, "timeout", "POST", request_sent=False, response_started=False)


def test_a_response_status_means_the_request_was_sent() -> None:
    assert not GATEWAY.should_retry(1, 503, "POST", request_sent=False, response_started=False)


def test_non_idempotent_option_allows_retrying_sent_posts() -> None:
    policy = RetryPolicy(retry_on=frozenset({"timeout", 502}), non_idempotent=True)
    assert policy.should_retry(1, "timeout", "POST", request_sent=True, response_started=False)
    assert policy.should_retry(1, 502, "PATCH", request_sent=True, response_started=False)


@pytest.mark.parametrize("failure", ["connect_error", "timeout", "reset", 502])
def test_nothing_is_retried_once_the_response_started(failure: str | int) -> None:
    policy = RetryPolicy(max_retries=5, retry_on=GATEWAY.retry_on, non_idempotent=True)
    assert not policy.should_retry(1, failure, "GET", request_sent=True, response_started=True)  # type: ignore[arg-type]


def test_status_codes_not_in_retry_on_are_not_retried() -> None:
    assert not GATEWAY.should_retry(1, 500, "GET", request_sent=True, response_started=False)
    assert not GATEWAY.should_retry(1, 404, "GET", request_sent=True, response_started=False)


def test_max_retries_bounds_the_attempts() -> None:
    assert [GATEWAY.should_retry(a, 502, "GET", True, False) for a in range(1, 6)] == [True, True, True, False, False]
    assert not RetryPolicy(max_retries=0).should_retry(1, "connect_error", "GET", False, False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"retry_on": frozenset({"5xx"})}, "unknown failure '5xx'"),
        ({"retry_on": frozenset({700})}, "not a status code"),
        ({"retry_on": frozenset({True})}, "neither"),
        ({"retry_on": frozenset({2.5})}, "neither"),
        ({"per_try_timeout": 0}, "per_try_timeout"),
        ({"backoff_base": 1.0}, "backoff"),
        ({"backoff_base": -0.1}, "backoff"),
        ({"budget_percent": 120}, "budget_percent"),
        ({"min_retry_concurrency": -1}, "min_retry_concurrency"),
    ],
)
def test_retry_policy_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_on_accepts_any_iterable_and_stores_a_frozenset() -> None:
    policy = RetryPolicy(retry_on=["timeout", 503])  # type: ignore[arg-type]
    assert policy.retry_on == frozenset({"timeout", 503})
    assert hash(policy) == hash(RetryPolicy(retry_on=frozenset({503, "timeout"})))


# --- backoff ------------------------------------------------------------------------------------------------------


def test_backoff_is_fully_jittered_exponential_with_envoy_bounds() -> None:
    rng = random.Random(7)
    for attempt, bound in [(1, 0.025), (2, 0.075), (3, 0.175)]:
        waits = [DEFAULT.backoff(attempt, rng) for _ in range(2000)]
        assert min(waits) >= 0 and max(waits) < bound
        assert max(waits) > bound * 0.95 and min(waits) < bound * 0.05  # spread over the whole range


def test_backoff_is_capped_at_max() -> None:
    rng = random.Random(1)
    waits = [DEFAULT.backoff(4, rng) for _ in range(2000)]  # [0, 375 ms) capped at 250 ms
    assert max(waits) == 0.25
    assert sum(w == 0.25 for w in waits) / len(waits) == pytest.approx(1 / 3, abs=0.05)
    assert DEFAULT.backoff(10_000, rng) <= 0.25


def test_backoff_treats_attempt_zero_as_the_first_retry() -> None:
    assert DEFAULT.backoff(0, random.Random(2)) < 0.025


# --- retry budget -------------------------------------------------------------------------------------------------


def test_retry_budget_always_allows_min_retry_concurrency() -> None:
    budget = DEFAULT.new_budget()
    assert [budget.try_start_retry() for _ in range(4)] == [True, True, True, False]
    budget.finish_retry()
    assert budget.try_start_retry()


def test_retry_budget_allows_20_percent_of_active_requests() -> None:
    budget = RetryBudget()
    for _ in range(100):
        budget.start_request()
    assert budget.limit == 20
    assert sum(budget.try_start_retry() for _ in range(30)) == 20
    assert repr(budget) == "<RetryBudget retries=20/20 active=100>"


def test_retry_budget_shrinks_as_requests_finish() -> None:
    budget = RetryBudget(budget_percent=50, min_retry_concurrency=0)
    for _ in range(4):
        budget.start_request()
    assert budget.try_start_retry() and budget.try_start_retry()
    budget.finish_request()
    assert not budget.try_start_retry()  # 2 in flight, limit now int(3 × 0.5) = 1


def test_retry_budget_counters_never_go_below_zero() -> None:
    budget = RetryBudget()
    budget.finish_request()
    budget.finish_retry()
    assert (budget.active, budget.retries) == (0, 0)


# --- properties ---------------------------------------------------------------------------------------------------

failures = st.one_of(st.sampled_from(["connect_error", "timeout", "reset"]), st.integers(100, 599))
methods = st.sampled_from(["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "POST", "PATCH", "LOCK", "get"])


@settings(max_examples=500)
@given(
    st.integers(0, 5),
    st.sets(failures, max_size=6),
    st.booleans(),
    st.integers(0, 8),
    failures,
    methods,
    st.booleans(),
    st.booleans(),
)
def test_property_should_retry_follows_nginx_rules(
    max_retries: int,
    retry_on: set[str | int],
    non_idempotent: bool,
    attempt: int,
    failure: str | int,
    method: str,
    sent: bool,
    started: bool,
) -> None:
    policy = RetryPolicy(max_retries=max_retries, retry_on=frozenset(retry_on), non_idempotent=non_idempotent)
    decision = policy.should_retry(attempt, failure, method, sent, started)  # type: ignore[arg-type]
    if decision:
        assert not started
        assert attempt <= max_retries
        assert failure in retry_on
        may_have_arrived = failure != "connect_error" and (sent or isinstance(failure, int))
        assert not may_have_arrived or non_idempotent or method in IDEMPOTENT_METHODS
    elif not started and attempt <= max_retries and failure == "connect_error" and failure in retry_on:
        pytest.fail("a refused connection must be retried while retries are left")


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["start", "finish", "retry", "retry_done"]), max_size=200))
def test_property_retry_budget_never_exceeds_its_limit(ops: list[str]) -> None:
    budget = RetryBudget(budget_percent=20, min_retry_concurrency=3)
    for op in ops:
        if op == "start":
            budget.start_request()
        elif op == "finish":
            budget.finish_request()
        elif op == "retry":
            allowed = budget.retries < max(3, budget.active // 5)
            assert budget.try_start_retry() is allowed
        else:
            budget.finish_retry()
        assert 0 <= budget.active and 0 <= budget.retries


@settings(max_examples=200)
@given(st.integers(-3, 100), st.integers(0, 2**32))
def test_property_backoff_is_between_zero_and_max(attempt: int, seed: int) -> None:
    assert 0 <= DEFAULT.backoff(attempt, random.Random(seed)) <= DEFAULT.backoff_max
