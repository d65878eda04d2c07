"""The manager's validated config handed to workers (fastgate.handoff): read back equal, then removed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

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


# validate_apart in a fresh interpreter: one with no other thread (else it builds in the caller), and whether the
# caller built the config's validator is the point.
APART = """
import json, os, sys
from pathlib import Path
import pydantic
import fastgate.config as models
from fastgate.config import GatewayConfig, build_config
from fastgate.exceptions import ConfigError
from fastgate.handoff import validate_apart

scenario, data, marker = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
parent = os.getpid()

def build(data):
    if os.getpid() != parent:
        marker.write_text(str(os.getpid()))  # the child ran it
        if scenario == "crash":
            os._exit(7)  # dies without an answer
    return build_config(data)

out = {}
try:
    config, dump = validate_apart(build, data)
except ConfigError as exc:
    out["error"] = exc.detail
else:
    out["built"] = sorted(name for name, model in vars(models).items()
                          if isinstance(model, type) and issubclass(model, pydantic.BaseModel)
                          and model.__pydantic_complete__)
    out["dump"] = json.loads(dump)
    out["equal"] = GatewayConfig.model_validate_json(dump) == config
out["child"] = marker.exists() and int(marker.read_text()) != parent
print(json.dumps(out))
"""

needs_fork = pytest.mark.skipif(sys.platform != "linux", reason="validates apart only where it forks (Linux)")
SINGLE = GatewayConfig.single("http://127.0.0.1:9").model_dump(mode="json")
BROKEN = {"upstreams": {}, "routes": [{"upstream": "missing"}]}


def _apart(scenario: str, data: dict[str, object], tmp_path: Path) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", APART, scenario, json.dumps(data), str(tmp_path / "child.pid")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


@needs_fork
def test_a_config_validated_apart_comes_back_equal_without_the_caller_building_a_validator(tmp_path: Path) -> None:
    out = _apart("ok", SINGLE, tmp_path)
    assert out["child"] is True
    assert out["built"] == []  # listed before the script's own check validates the dump back
    assert out["equal"] is True
    assert out["dump"] == SINGLE


@needs_fork
def test_a_config_error_found_apart_is_raised_in_the_caller_with_its_message(tmp_path: Path) -> None:
    out = _apart("ok", BROKEN, tmp_path)
    assert out["child"] is True
    with pytest.raises(ConfigError) as here:
        build_config(BROKEN)
    assert out["error"] == here.value.detail and here.value.detail


@needs_fork
def test_when_the_child_dies_without_an_answer_the_caller_builds_the_config_itself(tmp_path: Path) -> None:
    out = _apart("crash", SINGLE, tmp_path)
    assert out["child"] is True
    assert out["equal"] is True and out["dump"] == SINGLE
    assert "GatewayConfig" in out["built"]  # built here, as before validate_apart


def test_a_process_running_other_threads_builds_the_config_itself() -> None:
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=lambda: (started.set(), stop.wait(10)))
    thread.start()
    started.wait(10)
    parent = os.getpid()
    pids: list[int] = []

    def build(data: dict[str, object]) -> GatewayConfig:
        pids.append(os.getpid())
        return build_config(data)

    try:
        config, dump = validate_apart(build, SINGLE)
    finally:
        stop.set()
        thread.join(10)
    assert pids == [parent]
    assert GatewayConfig.model_validate_json(dump) == config == build_config(SINGLE)
