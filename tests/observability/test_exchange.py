"""Observability: the one seam forward_http calls, begin and finish (operations issue)."""

from __future__ import annotations

import logging

import pytest

from fastgate.config import build_config
from fastgate.observability.access import format_json
from fastgate.observability.exchange import Observability
from fastgate.observability.metrics import metrics_mapping
from fastgate.observability.record import ExchangeRecord


def test_begin_and_finish_feed_the_trace_the_metrics_and_the_access_line(caplog: pytest.LogCaptureFixture) -> None:
    config = build_config(
        {
            "server": {"access_log_format": "json"},
            "upstreams": {"api": {"url": "http://127.0.0.1:9"}},
            "routes": [{"upstream": "api"}],
        }
    )
    observability = Observability.from_config(config)
    assert observability.format_access is format_json and not observability.tracer.enabled
    assert observability.metrics is not None
    headers = [(b"host", b"gw")]
    record = ExchangeRecord(route="0", upstream="api", method="GET", target="/x", client="127.0.0.1:5")
    trace = observability.begin(headers, record, scheme="http", host=b"gw")
    assert len(record.trace_id) == 32 and headers[-1][0] == b"traceparent"
    record.status, record.duration_s = 200, 0.003
    logger = logging.getLogger("fastgate.access")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, "fastgate.access"):
            observability.finish(record, trace)
    finally:
        logger.removeHandler(caplog.handler)
    (message,) = {r.getMessage() for r in caplog.records if r.name == "fastgate.access"}
    assert f'"trace_id":"{record.trace_id}"' in message
    values = metrics_mapping(observability.metrics.render()[0].decode())
    assert values['fastgate_requests_total{code="200",method="GET",route="0",upstream="api"}'] == 1
    observability.close()


def test_metrics_off() -> None:
    config = build_config(
        {
            "metrics": {"enabled": False},
            "upstreams": {"api": {"url": "http://127.0.0.1:9"}},
            "routes": [{"upstream": "api"}],
        }
    )
    observability = Observability.from_config(config)
    assert observability.metrics is None
    observability.finish(ExchangeRecord(status=200))
