"""The manager's validated config handed to workers (fastgate.handoff): read back equal, then removed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fastgate.config import GatewayConfig, build_config
from fastgate.exceptions import ConfigError
from fastgate.handoff import CONFIG_PICKLE_ENV, export_validated, import_validated, validate_apart


def test_an_exported_config_is_imported_equal_from_a_file_only_its_user_can_read() -> None:
    config = GatewayConfig.single("http://127.0.0.1:9")
    environ: dict[str, str] = {}
    remove = export_validated(config, environ)
    path = Path(environ[CONFIG_PICKLE_ENV])
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert import_validated(environ) == config
    finally:
        remove()
    assert not path.exists() and CONFIG_PICKLE_ENV not in environ


def test_without_a_readable_handoff_a_worker_gets_none_and_validates_the_json_instead(tmp_path: Path) -> None:
    assert import_validated({}) is None
    assert import_validated({CONFIG_PICKLE_ENV: str(tmp_path / "gone.pickle")}) is None
    garbage = tmp_path / "garbage.pickle"
    garbage.write_bytes(b"not a pickle")
    assert import_validated({CONFIG_PICKLE_ENV: str(garbage)}) is None


def test_a_handoff_holding_something_else_than_a_gateway_config_is_ignored(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    remove = export_validated(GatewayConfig.single("http://127.0.0.1:9").server, environ)  # type: ignore[arg-type]
    try:
        assert import_validated(environ) is None
    finally:
        remove()


def test_a_config_that_cannot_be_pickled_is_not_handed_off() -> None:
    # model_copy does not validate: a field holding a lambda stands for a library user's own unpicklable object.
    config = GatewayConfig.single("http://127.0.0.1:9").model_copy(update={"admin": lambda: None})
    environ: dict[str, str] = {}
    remove = export_validated(config, environ)
    assert CONFIG_PICKLE_ENV not in environ
    remove()


# validate_apart, in a fresh interpreter: whether this process built the config's validator is the point.
APART = """
import json, sys
import pydantic
import fastgate.config as models
from fastgate.config import GatewayConfig, build_config
from fastgate.handoff import validate_apart

config, dump = validate_apart(build_config, json.loads(sys.argv[1]))
built = sorted(name for name, model in vars(models).items()
               if isinstance(model, type) and issubclass(model, pydantic.BaseModel) and model.__pydantic_complete__)
print(json.dumps({"built": built, "dump": dump, "equal": GatewayConfig.model_validate_json(dump) == config}))
"""


def _apart(data: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", APART, json.dumps(data)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.skipif(sys.platform != "linux", reason="validates apart only where it forks (Linux)")
def test_a_config_validated_apart_comes_back_equal_without_this_process_building_a_validator() -> None:
    data = GatewayConfig.single("http://127.0.0.1:9").model_dump(mode="json")
    res = _apart(data)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["built"] == []  # listed before the script's own check validates the dump back
    assert out["equal"] is True
    assert json.loads(out["dump"]) == GatewayConfig.single("http://127.0.0.1:9").model_dump(mode="json")


def test_a_config_error_found_apart_is_raised_here_with_its_message() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_apart(build_config, {"upstreams": {}, "routes": [{"upstream": "missing"}]})
    with pytest.raises(ConfigError) as here:
        build_config({"upstreams": {}, "routes": [{"upstream": "missing"}]})
    assert caught.value.detail == here.value.detail and caught.value.detail


def _fails_apart(marker: Path) -> GatewayConfig:
    if os.getpid() != int(marker.read_text()):
        os._exit(7)  # the child dies without an answer (a crash, say)
    return GatewayConfig.single("http://127.0.0.1:9")


def test_when_the_child_fails_otherwise_the_config_is_built_here(tmp_path: Path) -> None:
    marker = tmp_path / "parent.pid"
    marker.write_text(str(os.getpid()))
    config, dump = validate_apart(_fails_apart, marker)
    assert config == GatewayConfig.single("http://127.0.0.1:9")
    assert GatewayConfig.model_validate_json(dump) == config
