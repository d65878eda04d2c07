"""LiveStats: the admin API's /stats figures of one worker, without sockets (operations issue)."""

from __future__ import annotations

from fastgate.observability.live import LiveStats, percentile
from fastgate.observability.record import ExchangeRecord


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _live(clock: FakeClock, **kwargs: int) -> LiveStats:
    return LiveStats(clock=clock, wall=lambda: 1_764_561_230.1, **kwargs)


def test_snapshot_has_exactly_the_contract_keys() -> None:
    snapshot = LiveStats().snapshot()
    assert set(snapshot) == {"requests", "errors", "latency_ms", "recent_errors"}
    assert snapshot == {
        "requests": 0,
        "errors": 0,
        "latency_ms": {"p50": None, "p90": None, "p99": None},
        "recent_errors": [],
    }


def test_counts_requests_and_errors_at_or_above_500() -> None:
    live = _live(FakeClock())
    for status in (200, 404, 499, 500, 502, 503):
        live.record(ExchangeRecord(status=status, duration_s=0.001))
    live.record(ExchangeRecord(status=200, outcome="client disconnected"))  # logged as 499: not an error
    snapshot = live.snapshot()
    assert (snapshot["requests"], snapshot["errors"]) == (7, 3)


def test_latency_percentiles_over_the_last_60_seconds() -> None:
    clock = FakeClock()
    live = _live(clock)
    for _ in range(50):
        live.record(ExchangeRecord(status=200, duration_s=5.0))  # old: out of the window below
    clock.now += 61
    for ms in range(1, 101):  # 1 ms .. 100 ms
        live.record(ExchangeRecord(status=200, duration_s=ms / 1000))
    assert live.snapshot()["latency_ms"] == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    clock.now += 61
    assert live.snapshot()["latency_ms"] == {"p50": None, "p90": None, "p99": None}
    assert live.snapshot()["requests"] == 150  # totals never age


def test_latency_ring_is_bounded() -> None:
    clock = FakeClock()
    live = _live(clock, capacity=10)
    for ms in range(1, 101):
        live.record(ExchangeRecord(status=200, duration_s=ms / 1000))
    assert live.snapshot()["latency_ms"]["p50"] == 95.0  # only the last 10 (91..100 ms) are kept


def test_websocket_sessions_count_but_stay_out_of_the_latency() -> None:
    live = _live(FakeClock())
    live.record(ExchangeRecord(status=101, duration_s=300.0, websocket=True))
    snapshot = live.snapshot()
    assert snapshot["requests"] == 1 and snapshot["latency_ms"]["p99"] is None


def test_recent_errors_newest_first_at_most_20_with_the_contract_fields() -> None:
    live = _live(FakeClock())
    for index in range(25):
        live.record(
            ExchangeRecord(
                route="0", upstream="api", upstream_address="127.0.0.1:9002", method="GET", target=f"/api/{index}",
                status=502, outcome="upstream_connect_error: connection refused",
            )
        )  # fmt: skip
    live.record(ExchangeRecord(route="users", target="/ok", status=200))
    errors = live.snapshot()["recent_errors"]
    assert len(errors) == 20
    assert [error["target"] for error in errors[:2]] == ["/api/24", "/api/23"]
    assert errors[0] == {
        "time": 1_764_561_230.1,
        "method": "GET",
        "target": "/api/24",
        "status": 502,
        "route": 0,
        "upstream": "api",
        "address": "127.0.0.1:9002",
        "detail": "upstream_connect_error: connection refused",
    }
    errors[0]["status"] = 0  # a snapshot is a copy
    assert live.snapshot()["recent_errors"][0]["status"] == 502


def test_a_named_route_keeps_its_name_in_recent_errors() -> None:
    live = _live(FakeClock())
    live.record(ExchangeRecord(route="users", status=504))
    assert live.snapshot()["recent_errors"][0]["route"] == "users"


def test_percentile_is_nearest_rank() -> None:
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0], 0.5) == 1.0
    assert percentile([float(n) for n in range(1, 11)], 0.9) == 9.0
