"""The manager hands its validated config to worker processes without their validating it again.

A worker that unpickles the manager's :class:`GatewayConfig` never builds the config models' validators (they build
on first use: ``defer_build``), which saves each worker ~1.6 MB (docs/performance.md, Memory). The pickle lives in
a file only the gateway's user can read, for the manager's lifetime; the environment holds its path (a config too
big for one environment variable still works). A worker that cannot read it validates ``FASTGATE_CONFIG_JSON`` as
before.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from pathlib import Path

from .config import GatewayConfig

CONFIG_PICKLE_ENV = "FASTGATE_CONFIG_PICKLE"


def export_validated(config: GatewayConfig, environ: MutableMapping[str, str]) -> Callable[[], None]:
    """Write ``config`` for the workers and name it in ``environ``; returns the function that removes it.

    A config that cannot be pickled (plugin options holding objects of a library user's own, say) is not handed
    off: the workers validate the JSON form as before.
    """
    fd, name = tempfile.mkstemp(prefix="fastgate-config-", suffix=".pickle")  # mode 0600

    def remove() -> None:
        if environ.get(CONFIG_PICKLE_ENV) == name:
            del environ[CONFIG_PICKLE_ENV]
        with suppress(OSError):
            os.unlink(name)

    try:
        with os.fdopen(fd, "wb") as file:
            pickle.dump(config, file, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # unpicklable: no handoff
        remove()
        return remove
    environ[CONFIG_PICKLE_ENV] = name
    return remove


def import_validated(environ: MutableMapping[str, str] | None = None) -> GatewayConfig | None:
    """The config the manager exported, or ``None`` when there is none or it cannot be read."""
    name = (os.environ if environ is None else environ).get(CONFIG_PICKLE_ENV)
    if not name:
        return None
    try:
        config = pickle.loads(Path(name).read_bytes())  # our manager's own file, mode 0600
    except Exception:  # gone, or written by another fastgate version: validate the JSON instead
        return None
    return config if isinstance(config, GatewayConfig) else None
