"""The benchmark's feature arms (bench/features.py): configs fastgate accepts, a skip with the reason otherwise.

No load is run here: bench/run.sh does that. These pin what the arms send to fastgate and wrk.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import features  # noqa: E402
from harness import Procs, Skipped  # noqa: E402

from fastgate import GatewayConfig  # noqa: E402


@pytest.fixture
def extras(tmp_path: Path) -> features.Extras:
    (tmp_path / "logs").mkdir()
    procs = Procs(tmp_path / "logs")
    yield features.Extras(tmp_path, procs)
    procs.close()


def test_the_full_arm_is_a_config_fastgate_accepts(extras: features.Extras) -> None:
    config = features.feature_config("full", 8000, 8001, 8002, extras)
    parsed = GatewayConfig.model_validate(config)
    assert len(parsed.routes) == features.ROUTES
    assert parsed.server.access_log is True
    last = parsed.routes[-1]
    assert last.prefix == "/" and [p.use for p in last.plugins] == ["request_headers"]
    assert last.rate_limit is not None and last.rate_limit.rate == 1_000_000
    assert len(config["upstreams"]["api"]["targets"]) == 2


def test_an_arm_whose_config_fastgate_refuses_is_skipped_with_the_reason() -> None:
    config = {"upstreams": {"api": {"url": "http://127.0.0.1:1"}}, "routes": [{"prefix": "/", "upstream": "nope"}]}
    with pytest.raises(Skipped) as caught:
        features._check("metrics-on", config)
    assert str(caught.value).startswith("skipped: fastgate does not accept the metrics-on config yet: ")
    assert "nope" in str(caught.value)


def test_the_jwt_arm_sends_a_token_its_jwks_verifies(extras: features.Extras) -> None:
    jwt = pytest.importorskip("jwt")
    jwks_file, token = extras.jwt()
    key = jwt.PyJWKSet.from_dict(json.loads(jwks_file.read_text()))["bench"]
    assert jwt.decode(token, key.key, algorithms=["RS256"])["sub"] == "bench"
    try:
        features.feature_config("jwt", 8000, 8001, 8002, extras)
    except Skipped as exc:  # until the jwt plugin is built in
        assert "jwt" in str(exc)
    else:
        assert features.wrk_headers("jwt", extras) == (f"Authorization: Bearer {token}",)
