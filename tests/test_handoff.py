"""The manager's validated config handed to workers (fastgate.handoff): read back equal, then removed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fastgate.config import GatewayConfig
from fastgate.handoff import CONFIG_PICKLE_ENV, export_validated, import_validated


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
