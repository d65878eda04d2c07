"""The manager hands its validated config to worker processes without their validating it again.

A worker that unpickles the manager's :class:`GatewayConfig` never builds the config models' validators (they build
on first use: ``defer_build``), which saves each worker ~1.6 MB (docs/performance.md, Memory). The pickle lives in
a file only the gateway's user can read, for the manager's lifetime; the environment holds its path (a config too
big for one environment variable still works). A worker that cannot read it validates ``FASTGATE_CONFIG_JSON`` as
before.

The CLI itself validates apart (:func:`validate_apart`): in a forked child that sends back the config and its JSON
form, pickled, and exits. Validating and dumping build pydantic's validator and serializer of the whole config
(~1.3 MB), and pydantic's plugin loader reads every installed distribution's entry points on the way; in the
process that then serves (``--workers 1``) or manages (``--workers N``) all that would stay for its lifetime.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import threading
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from pathlib import Path
from typing import TypeVar

from .config import GatewayConfig
from .exceptions import ConfigError

CONFIG_PICKLE_ENV = "FASTGATE_CONFIG_PICKLE"
_Arg = TypeVar("_Arg")


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


def validate_apart(build: Callable[[_Arg], GatewayConfig], arg: _Arg) -> tuple[GatewayConfig, str]:
    """``build(arg)`` and its result's JSON form (``model_dump_json``), made in a forked child process.

    This process gets the config unpickled, which builds no validator; a :class:`ConfigError` raised by ``build``
    is raised here with the same message. On a platform without a safe ``fork`` (anything but Linux), in a process
    that runs other threads (the CLI runs none: a test runner or an embedding program might), or when the child
    fails otherwise (a result that cannot be pickled, a crash), ``build(arg)`` runs here instead, so an
    unexpected error shows as it always did.
    """
    if sys.platform != "linux" or threading.active_count() > 1:  # a thread could hold a lock the child needs
        return _validate_here(build, arg)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing of the parent's may run here (os._exit skips atexit handlers and finally)
        status = 1
        try:
            os.close(read_end)
            try:
                config = build(arg)
                outcome: tuple[str, object] = ("config", (config, config.model_dump_json()))
            except ConfigError as exc:
                outcome = ("error", exc.detail)
            payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            status = 0
        except BaseException:  # the parent builds again and reports it
            status = 1
        finally:
            with suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return _validate_here(build, arg)
    try:
        kind, value = pickle.loads(payload)  # our own child's bytes
    except Exception:  # e.g. a plugin class that does not unpickle here: build it here
        return _validate_here(build, arg)
    if kind == "error":
        raise ConfigError(str(value))
    config, dump = value
    return config, dump


def _validate_here(build: Callable[[_Arg], GatewayConfig], arg: _Arg) -> tuple[GatewayConfig, str]:
    config = build(arg)
    return config, config.model_dump_json()
