"""Finding a route's plugins by name: ``resolve_plugin("pkg.mod:Name")`` or a built-in name.

>>> resolve_plugin("mypkg.auth:TokenCheck")  # doctest: +SKIP
<class 'mypkg.auth.TokenCheck'>

Config validation calls this for every ``plugins[].use``, so a typo or a missing package fails ``fastgate check``
(exit 2) rather than the first request. It is the one place where loading a config imports user code.
"""

from __future__ import annotations

import importlib

__all__ = ["BUILTIN_PLUGINS", "resolve_plugin"]

# Built-in plugin name -> import path ("fastgate.plugins.x:Y"), as uvicorn maps `http: h11` to an import string.
BUILTIN_PLUGINS: dict[str, str] = {}


def resolve_plugin(use: str) -> object:
    """The object ``use`` names; raises ``ValueError`` with a one-line reason when there is none."""
    if ":" not in use:
        path = BUILTIN_PLUGINS.get(use)
        if path is None:
            known = ", ".join(sorted(BUILTIN_PLUGINS)) or "none yet"
            raise ValueError(f"unknown built-in plugin {use!r} (built-in: {known}; yours: 'package.module:Name')")
        use = path
    module_name, _, attribute = use.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"must be 'package.module:Name', got {use!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or whatever the module raised while importing
        raise ValueError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return value
