from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate.policies.ratelimit import (
    DRAFT,
    Decision,
    RateLimitPolicy,
    client_ip_key,
    parse_key,
    parse_period,
    rate_limit_headers,
    rate_limit_key,
    route_digest,
)

US = 1_000_000


def run(policy: RateLimitPolicy, times_us: list[int], tat: int | None = None) -> list[Decision]:
    decisions = []
    for now in times_us:
        new_tat, decision = policy.decide(tat, now)
        if new_tat is not None:
            tat = new_tat
        decisions.append(decision)
    return decisions


# --- periods ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1s", 1.0), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0), ("2.5s", 2.5), (" 10 s ", 10.0), (2, 2.0), ("3", 3.0)],
)
def test_period_forms(value: str | int, seconds: float) -> None:
    assert parse_period(value) == seconds


@pytest.mark.parametrize("value", ["", "1d", "s", "-1s", "0", 0, -2, "1 minute", True, "nan", float("inf"), "2y"])
def test_bad_periods_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="period"):
        parse_period(value)  # type: ignore[arg-type]


# --- GCRA ---------------------------------------------------------------------------------------------------------


def test_burst_requests_go_at_once_then_rate_per_period() -> None:
    policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    first = run(policy, [0] * 51)
    assert [d.allowed for d in first] == [True] * 50 + [False]
    assert [d.remaining for d in first[:50]] == list(range(49, -1, -1))
    # then one every 10 ms: 100 more in the next second, not 101
    tat = 50 * 10_000
    later = run(policy, [t * 1000 for t in range(1, 1001)], tat=tat)
    assert sum(d.allowed for d in later) == 100


def test_retry_after_is_the_wait_until_the_next_request_fits() -> None:
    policy = RateLimitPolicy(rate=10, period=1.0, burst=2)
    decisions = run(policy, [0, 0, 0, 30_000])
    assert decisions[2] == Decision(False, 10, 0, reset_after=0.2, retry_after=0.1)
    assert decisions[3].retry_after == pytest.approx(0.07)
    assert run(policy, [0, 0, 100_000], tat=None)[2].allowed  # exactly when retry_after said


def test_idle_time_refills_the_bucket_but_never_past_burst() -> None:
    policy = RateLimitPolicy(rate=1, period=1.0, burst=3)
    decisions = run(policy, [0, 0, 0, 3600 * US, 3600 * US, 3600 * US, 3600 * US])
    assert [d.allowed for d in decisions] == [True, True, True, True, True, True, False]


def test_reset_after_is_the_time_until_the_bucket_is_full_again() -> None:
    policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    decisions = run(policy, [0, 0, 0])
    assert [d.reset_after for d in decisions] == [0.01, 0.02, 0.03]


def test_interval_is_rounded_up_to_whole_microseconds() -> None:
    assert RateLimitPolicy(rate=3, period=1.0, burst=1).interval == 333_334
    assert RateLimitPolicy(rate=1, period=0.3, burst=1).interval == 300_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0, "period": 1.0, "burst": 1}, "rate"),
        ({"rate": 1.5, "period": 1.0, "burst": 1}, "rate"),
        ({"rate": 1, "period": 1.0, "burst": 0}, "burst"),
        ({"rate": 1, "period": 0.0, "burst": 1}, "period"),
        ({"rate": 2_000_000, "period": 1.0, "burst": 1}, "µs"),
        ({"rate": 1, "period": 1.0, "burst": 1, "name": "é"}, "name"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimitPolicy(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(1, 50),
    period_ms=st.integers(1, 5000),
    burst=st.integers(1, 20),
    gaps=st.lists(st.integers(0, 200_000), min_size=1, max_size=300),
    window_ms=st.integers(1, 5000),
)
def test_allowed_in_any_window_never_exceeds_burst_plus_rate_times_window(
    rate: int, period_ms: int, burst: int, gaps: list[int], window_ms: int
) -> None:
    policy = RateLimitPolicy(rate=rate, period=period_ms / 1000, burst=burst)
    times, now = [], 0
    for gap in gaps:
        now += gap
        times.append(now)
    allowed = [t for t, d in zip(times, run(policy, times), strict=True) if d.allowed]
    window = window_ms * 1000
    bound = burst + rate * window / (period_ms * 1000)
    for index, start in enumerate(allowed):  # every window that starts at an allowed request is a worst case
        inside = sum(1 for t in allowed[index:] if t <= start + window)
        assert inside <= bound


# --- headers ------------------------------------------------------------------------------------------------------


def test_headers_of_an_allowed_request_carry_the_remaining_quota() -> None:
    policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    [decision] = run(policy, [0])
    assert rate_limit_headers(policy, decision) == [
        (b"ratelimit-policy", b'"default";q=100;w=1'),
        (b"ratelimit", b'"default";r=49;t=1'),
    ]


def test_headers_of_a_refusal_match_the_issue_and_add_retry_after() -> None:
    policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    refused = run(policy, [0] * 51)[-1]
    assert rate_limit_headers(policy, refused) == [
        (b"ratelimit-policy", b'"default";q=100;w=1'),
        (b"ratelimit", b'"default";r=0;t=1'),
        (b"retry-after", b"1"),  # 10 ms rounded up: never 0, which would invite an immediate retry
    ]


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    policy = RateLimitPolicy(rate=1, period=60.0, burst=1)
    refused = run(policy, [0, 500_000])[-1]
    assert refused.retry_after == 59.5
    assert dict(rate_limit_headers(policy, refused))[b"retry-after"] == b"60"
    assert dict(rate_limit_headers(policy, refused))[b"ratelimit-policy"] == b'"default";q=1;w=60'


@pytest.mark.parametrize(
    ("rate", "period", "field"),
    [
        (5, 0.5, b'"default";q=10;w=1'),
        (3, 0.7, b'"default";q=30;w=7'),
        (1, 3600.0, b'"default";q=1;w=3600'),
        (7, 1.5, b'"default";q=14;w=3'),
    ],
)
def test_policy_field_uses_a_whole_second_window(rate: int, period: float, field: bytes) -> None:
    assert RateLimitPolicy(rate=rate, period=period, burst=1).policy_field() == field


def test_policy_name_is_a_structured_field_string() -> None:
    policy = RateLimitPolicy(rate=1, period=1.0, burst=1, name='a "b" \\c')
    assert policy.policy_field() == b'"a \\"b\\" \\\\c";q=1;w=1'


def test_answers_made_without_the_store_report_no_remaining_quota() -> None:
    policy = RateLimitPolicy(rate=10, period=1.0, burst=1)
    assert rate_limit_headers(policy, policy.admitted()) == [(b"ratelimit-policy", b'"default";q=10;w=1')]
    assert rate_limit_headers(policy, policy.denied(1.0))[1:] == [(b"retry-after", b"1")]


def test_draft_version_is_named() -> None:
    assert DRAFT == "draft-ietf-httpapi-ratelimit-headers-10"


# --- keys ---------------------------------------------------------------------------------------------------------

HEADERS = [(b"host", b"gw"), (b"x-api-key", b"k1"), (b"x-tenant", b"t1")]


def key(spec: str, **kwargs: object) -> bytes:
    args: dict[str, object] = {"route": b"api", "client_ip": b"10.0.0.1", "headers": HEADERS, **kwargs}
    return rate_limit_key(parse_key(spec), **args)  # type: ignore[arg-type]


def test_key_forms_parse() -> None:
    assert [str(p) for p in parse_key("client_ip")] == ["client_ip"]
    assert [str(p) for p in parse_key("header:X-Api-Key,client_ip")] == ["header:x-api-key", "client_ip"]
    assert [str(p) for p in parse_key(" route , identity ")] == ["route", "identity"]


@pytest.mark.parametrize(
    "spec", ["", "ip", "header:", "header:bad name", "client_ip,client_ip", "route:x", "client_ip,", "cookie:x"]
)
def test_bad_key_forms_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="key"):
        parse_key(spec)


def test_client_ip_keys_differ_per_client_and_per_route() -> None:
    assert key("client_ip") == key("client_ip")
    assert key("client_ip") != key("client_ip", client_ip=b"10.0.0.2")
    assert key("client_ip") != key("client_ip", route=b"other")
    assert len(key("client_ip")) == 32


def test_header_key_counts_per_header_value() -> None:
    assert key("header:x-api-key") == key("header:x-api-key", client_ip=b"10.9.9.9")
    other = [(b"x-api-key", b"k2")]
    assert key("header:x-api-key") != key("header:x-api-key", headers=other)


def test_missing_or_empty_header_falls_back_to_client_ip() -> None:
    assert key("header:x-missing") == key("client_ip")
    assert key("header:x-api-key", headers=[(b"x-api-key", b"  ")]) == key("client_ip")
    assert key("header:x-missing,client_ip") == key("client_ip")


def test_repeated_header_values_are_combined() -> None:
    both = [(b"x-api-key", b"a"), (b"x-api-key", b"b")]
    assert key("header:x-api-key", headers=both) == key("header:x-api-key", headers=[(b"x-api-key", b"a, b")])


def test_route_key_is_one_bucket_for_the_whole_route() -> None:
    assert key("route") == key("route", client_ip=b"10.0.0.2", headers=[])
    assert key("route") != key("route", route=b"other")


def test_identity_key_falls_back_to_client_ip_when_nobody_is_known() -> None:
    assert key("identity", identity=b"alice") == key("identity", identity=b"alice", client_ip=b"10.0.0.9")
    assert key("identity", identity=b"alice") != key("identity", identity=b"bob")
    assert key("identity") == key("client_ip")


def test_composite_key_counts_each_combination() -> None:
    assert key("header:x-api-key,client_ip") != key("header:x-api-key,client_ip", client_ip=b"10.0.0.2")
    assert key("header:x-api-key,client_ip") != key("header:x-api-key")
    assert key("header:x-api-key,header:x-tenant") != key("header:x-tenant,header:x-api-key")


def test_key_parts_cannot_be_spliced_into_each_other() -> None:
    a = key("header:x-api-key,header:x-tenant", headers=[(b"x-api-key", b"k"), (b"x-tenant", b"t")])
    b = key("header:x-api-key,header:x-tenant", headers=[(b"x-api-key", b"k\0h:x-tenant=t"), (b"x-tenant", b"")])
    assert a != b


@pytest.mark.parametrize("client_ip", [b"10.0.0.1", b"::1", b"2001:db8::8a2e:370:7334", b"unknown", b""])
def test_client_ip_key_is_the_rate_limit_key_of_client_ip_alone(client_ip: bytes) -> None:
    for route in (b"routes[0].rate_limit", b"api", b""):
        expected = rate_limit_key(parse_key("client_ip"), route=route, client_ip=client_ip)
        assert client_ip_key(route_digest(route), client_ip) == expected
    base = route_digest(b"api")
    assert client_ip_key(base, b"10.0.0.1") == client_ip_key(base, b"10.0.0.1")  # the base is copied, not used up
