from __future__ import annotations

from typing import Any

import pytest

from fastgate import ConfigError, RateLimited
from fastgate.config import RateLimitConfig, RedisConfig, build_config
from fastgate.policies.ratelimit import RateLimitPolicy


def config(route: dict[str, Any], **top: Any) -> Any:
    return build_config(
        {
            "upstreams": {"api": {"url": "http://127.0.0.1:9000"}},
            "routes": [{"prefix": "/api", "upstream": "api", **route}],
            **top,
        }
    )


def test_the_issue_example_loads() -> None:
    loaded = config(
        {"rate_limit": {"rate": 100, "per": "1s", "burst": 50, "key": "client_ip", "store": "redis"}},
        redis={"url": "redis://127.0.0.1:6379/0", "on_error": "allow"},
    )
    limit = loaded.routes[0].rate_limit
    assert limit == RateLimitConfig(rate=100, per=1.0, burst=50, key="client_ip", store="redis")
    assert limit.policy() == RateLimitPolicy(rate=100, period=1.0, burst=50)
    assert loaded.redis == RedisConfig(url="redis://127.0.0.1:6379/0")
    assert (loaded.redis.timeout, loaded.redis.on_error) == (0.02, "allow")  # issue 17 item 7: was 5 ms


def test_defaults_burst_is_the_rate_per_second_by_client_ip_in_memory() -> None:
    limit = RateLimitConfig(rate=10)
    assert (limit.per, limit.key, limit.store) == (1.0, "client_ip", "memory")
    assert limit.policy().burst == 10
    assert config({}).routes[0].rate_limit is None and config({}).redis is None


@pytest.mark.parametrize(("per", "seconds"), [("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0), (2, 2.0), (0.25, 0.25)])
def test_per_forms(per: object, seconds: float) -> None:
    assert RateLimitConfig(rate=1, per=per).per == seconds


def test_key_is_normalised() -> None:
    assert RateLimitConfig(rate=1, key="header:X-Api-Key , client_ip").key == "header:x-api-key,client_ip"
    assert [str(p) for p in RateLimitConfig(rate=1, key="identity").key_parts] == ["identity"]


def test_store_redis_without_top_level_redis_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\]\.rate_limit\.store: 'redis' needs a top-level redis"):
        config({"rate_limit": {"rate": 1, "store": "redis"}})


@pytest.mark.parametrize(
    ("rate_limit", "message"),
    [
        ({"rate": 1, "per": "1d"}, r"routes\[0\]\.rate_limit\.per: .*period"),
        ({"rate": 1, "per": 0}, r"routes\[0\]\.rate_limit\.per: .*positive"),
        ({"rate": 1, "key": "cookie:x"}, r"routes\[0\]\.rate_limit\.key: unknown key part 'cookie:x'"),
        ({"rate": 1, "key": "header:"}, r"routes\[0\]\.rate_limit\.key: .*not a header name"),
        ({"rate": 0}, r"routes\[0\]\.rate_limit\.rate"),
        ({"rate": "10"}, r"routes\[0\]\.rate_limit\.rate"),
        ({"rate": 1, "burst": 0}, r"routes\[0\]\.rate_limit\.burst"),
        ({"rate": 1, "store": "memcached"}, r"routes\[0\]\.rate_limit\.store"),
        ({"rate": 1, "extra": 1}, r"routes\[0\]\.rate_limit\.extra"),
        ({"rate": 10_000_000}, r"routes\[0\]\.rate_limit: .*µs"),
    ],
)
def test_bad_rate_limits_are_config_errors(rate_limit: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config({"rate_limit": rate_limit})


@pytest.mark.parametrize(
    ("redis", "message"),
    [
        ({"url": "http://127.0.0.1:6379"}, r"redis\.url: must be a redis://"),
        ({"url": "redis://"}, r"redis\.url: has no host"),
        ({"url": "redis://h", "on_error": "maybe"}, r"redis\.on_error"),
        ({"url": "redis://h", "timeout": 0}, r"redis\.timeout"),
    ],
)
def test_bad_redis_settings_are_config_errors(redis: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config({}, redis=redis)


def test_rate_limited_is_a_429_with_headers() -> None:
    exc = RateLimited("rate limit exceeded", headers=[(b"retry-after", b"1")])
    assert (exc.status_code, exc.code, exc.close_code, exc.headers) == (
        429,
        "rate_limited",
        1008,
        ((b"retry-after", b"1"),),
    )
