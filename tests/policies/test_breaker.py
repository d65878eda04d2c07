"""The circuit breaker's counters and thresholds, without sockets (policies/breaker.py)."""

from __future__ import annotations

from fastgate.policies.breaker import CircuitBreaker, Thresholds


def test_requests_over_max_requests_are_refused_and_counted() -> None:
    breaker = CircuitBreaker(Thresholds(max_requests=2))
    assert breaker.try_start_request() is None
    assert breaker.try_start_request() is None
    assert breaker.try_start_request() == "max_requests"
    assert breaker.stats().requests == 2
    assert breaker.stats().request_overflows == 1
    breaker.finish_request()
    assert breaker.try_start_request() is None


def test_pending_requests_do_not_count_as_requests_in_flight() -> None:
    breaker = CircuitBreaker(Thresholds(max_requests=1, max_pending_requests=5))
    assert breaker.try_start_request() is None
    assert breaker.try_start_pending() is None  # it waits for a connection: not in flight
    assert breaker.requests == 0
    assert breaker.try_start_request() is None
    assert breaker.try_start_request() == "max_requests"
    breaker.finish_pending()  # got its connection: in flight now
    assert breaker.requests == 2


def test_a_full_pending_queue_refuses_naming_max_pending_requests() -> None:
    breaker = CircuitBreaker(Thresholds(max_pending_requests=1))
    assert breaker.try_start_pending() is None
    assert breaker.try_start_pending() == "max_pending_requests"
    assert breaker.stats().pending_overflows == 1
    breaker.finish_pending()
    assert breaker.try_start_pending() is None


def test_without_a_pending_queue_a_request_is_refused_naming_max_connections() -> None:
    breaker = CircuitBreaker(Thresholds(max_connections=1, max_pending_requests=0))
    assert breaker.may_open_connection(0)
    assert not breaker.may_open_connection(1)
    assert breaker.try_start_pending() == "max_connections"
    stats = breaker.stats()
    assert stats.connection_overflows == 1
    assert stats.pending == 0


def test_connections_at_max_connections_are_not_opened() -> None:
    breaker = CircuitBreaker(Thresholds(max_connections=3))
    assert breaker.may_open_connection(2)
    assert not breaker.may_open_connection(3)
    assert not breaker.may_open_connection(4)
    assert breaker.stats().connection_overflows == 2
    assert breaker.stats().connections == 4


def test_retries_over_max_retries_are_not_made() -> None:
    breaker = CircuitBreaker(Thresholds(max_retries=1))
    assert breaker.try_start_retry()
    assert not breaker.try_start_retry()
    breaker.finish_retry()
    assert breaker.try_start_retry()
    assert breaker.stats().retry_overflows == 1


def test_max_retries_zero_allows_no_retry() -> None:
    assert not CircuitBreaker(Thresholds(max_retries=0)).try_start_retry()


def test_counts_return_to_zero_and_never_go_negative() -> None:
    breaker = CircuitBreaker(Thresholds(max_retries=10))
    for _ in range(10):
        assert breaker.try_start_request() is None
        assert breaker.try_start_pending() is None
        assert breaker.try_start_retry()
    for _ in range(12):
        breaker.finish_pending()
        breaker.finish_retry()
        breaker.finish_request()
    stats = breaker.stats()
    assert (stats.requests, stats.pending, stats.retries) == (0, 0, 0)


def test_defaults_are_envoys() -> None:
    assert Thresholds() == Thresholds(max_connections=1024, max_pending_requests=1024, max_requests=1024, max_retries=3)


def test_overflows_by_threshold_name_and_a_repr_with_live_state() -> None:
    breaker = CircuitBreaker(Thresholds(max_requests=1))
    breaker.try_start_request()
    breaker.try_start_request()
    assert breaker.stats().overflows == {
        "max_connections": 0,
        "max_pending_requests": 0,
        "max_requests": 1,
        "max_retries": 0,
    }
    assert "requests=1/1" in repr(breaker)
