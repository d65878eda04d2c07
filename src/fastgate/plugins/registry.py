"""Finding a route's plugins by name: ``resolve_plugin("pkg.mod:Name")`` or a built-in name.

>>> resolve_plugin("mypkg.auth:TokenCheck")  # doctest: +SKIP
<class 'mypkg.auth.TokenCheck'>

Config validation calls this for every ``plugins[].use``, so a typo or a missing package fails ``fastgate check``
(exit 2) rather than the first request. It is the one place where loading a config imports user code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError

if TYPE_CHECKING:
    from ..config import RedisConfig, RouteConfig
    from .chain import PluginChain

__all__ = ["BUILTIN_PLUGINS", "create_plugin", "resolve_plugin", "route_plugins"]

# Built-in plugin name -> import path ("fastgate.plugins.x:Y"), as uvicorn maps `http: h11` to an import string.
BUILTIN_PLUGINS: dict[str, str] = {
    "request_headers": "fastgate.plugins.builtin:RequestHeaders",
    "response_headers": "fastgate.plugins.builtin:ResponseHeaders",
    "rewrite": "fastgate.plugins.builtin:Rewrite",
    "rate_limit": "fastgate.plugins.ratelimit:RateLimit",
    "api_key": "fastgate.plugins.auth.api_key:ApiKey",
    "jwt": "fastgate.plugins.auth.jwt_auth:Jwt",
    "basic_auth": "fastgate.plugins.auth.basic_auth:BasicAuth",
    "forward_auth": "fastgate.plugins.auth.forward_auth:ForwardAuth",
    "cors": "fastgate.plugins.cors:Cors",
}


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


def create_plugin(use: str, options: dict[str, Any], where: str = "plugin") -> object:
    """The plugin ``use`` names, called with ``options`` as keyword arguments; its ``name`` set to ``use``.

    Raises :class:`ConfigError` (``"<where>: <reason>"``) when it cannot be resolved or built.
    """
    try:
        factory = resolve_plugin(use)
    except ValueError as exc:
        raise ConfigError(f"{where}.use: {exc}") from None
    if not callable(factory):
        raise ConfigError(f"{where}.use: {use!r} is not a class or a function")
    try:
        plugin = factory(**options)
    except Exception as exc:
        raise ConfigError(f"{where}.options: {use} did not accept them: {type(exc).__name__}: {exc}") from None
    if not getattr(plugin, "name", ""):
        try:
            plugin.name = use
        except AttributeError:  # __slots__ without a name: the chain still knows it by ``use``
            pass
    return plugin


def route_plugins(route: RouteConfig, index: int, redis: RedisConfig | None = None) -> PluginChain | None:
    """The plugin chain of ``routes[index]``: its header keys as built-in plugins, then its ``plugins``, then its
    ``rate_limit`` key (after authentication plugins: docs/security.md), built once. ``redis``: the gateway's.

    ``None`` when the route has none, so the exchange skips every plugin step.
    """
    from .chain import PluginChain

    where = f"routes[{index}]"
    plugins: list[tuple[str, object]] = []
    if route.request_headers.set or route.request_headers.add or route.request_headers.remove:
        options = route.request_headers.model_dump()
        plugins.append(("request_headers", create_plugin("request_headers", options, f"{where}.request_headers")))
    if route.response_headers.set or route.response_headers.add or route.response_headers.remove:
        options = route.response_headers.model_dump()
        plugins.append(("response_headers", create_plugin("response_headers", options, f"{where}.response_headers")))
    for position, spec in enumerate(route.plugins):
        options = dict(spec.options)
        if spec.use == "rate_limit":  # buckets named after where the limit is configured; the gateway's Redis
            options = {"namespace": f"{where}.plugins[{position}]", "redis": redis, **options}
        plugin = create_plugin(spec.use, options, f"{where}.plugins[{position}]")
        plugins.append((str(getattr(plugin, "name", "") or spec.use), plugin))
    if route.rate_limit is not None:
        options = {**route.rate_limit.model_dump(), "namespace": f"{where}.rate_limit", "redis": redis}
        plugins.append(("rate_limit", create_plugin("rate_limit", options, f"{where}.rate_limit")))
    return PluginChain(plugins) if plugins else None
