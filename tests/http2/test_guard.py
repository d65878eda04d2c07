"""http2/guard.py: the counters that bound what an HTTP/2 client may make the server do for free. Pure, no sockets."""

from __future__ import annotations

from fastgate.http2.guard import EmptyFrameGuard, PriorityGuard, ResetGuard, TokenBucket


def test_reset_guard_trips_once_min_streams_are_open_and_most_were_reset() -> None:
    guard = ResetGuard(min_streams=100)
    for _ in range(99):
        guard.opened()
        assert not guard.reset()  # under min_streams: never, whatever the ratio
    guard.opened()
    assert guard.reset()


def test_reset_guard_leaves_a_client_that_cancels_now_and_then() -> None:
    guard = ResetGuard(min_streams=100)
    for n in range(1000):
        guard.opened()
        if n % 3 == 0:
            assert not guard.reset()  # a third of its streams reset: under the half


def test_token_bucket_allows_a_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0)
    assert all(bucket.take(0.0) for _ in range(100))
    assert not bucket.take(0.0)
    assert bucket.take(0.1) and not bucket.take(0.1)  # one token back in 0.1 s


def test_empty_frame_guard_trips_past_its_run_of_empty_data_frames() -> None:
    guard = EmptyFrameGuard(limit=1)
    assert not guard.data(empty=True)  # one, as Envoy allows
    assert guard.data(empty=True)


def test_empty_frame_guard_run_is_ended_by_a_frame_with_a_payload() -> None:
    guard = EmptyFrameGuard(limit=1)
    for _ in range(1000):
        assert not guard.data(empty=True)
        assert not guard.data(empty=False)


def test_priority_guard_allows_per_stream_frames_for_each_stream_and_one_more() -> None:
    guard = PriorityGuard(per_stream=100)
    assert not any(guard.priority(opened=0) for _ in range(100))
    assert guard.priority(opened=0)
    guard = PriorityGuard(per_stream=100)
    assert not any(guard.priority(opened=9) for _ in range(1000))  # 100 x (1 + 9)
    assert guard.priority(opened=9)
