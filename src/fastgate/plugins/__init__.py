"""Plugins: Python objects that join an exchange's phases on a route (docs/plugins.md).

``base`` is the interface, ``chain`` runs a route's plugins by phase, ``builtin`` holds the header and rewrite
plugins, ``ratelimit`` the rate limit, ``registry`` turns ``use`` strings into plugins. Importing this package
does not import ``config`` (which imports ``resolve_plugin`` from here to check ``use`` at load time).
"""

from .base import Answer, Exchange, HeaderList, Plugin, RequestContext, ResponseHead
from .registry import BUILTIN_PLUGINS, create_plugin, resolve_plugin

__all__ = [
    "BUILTIN_PLUGINS",
    "Answer",
    "Exchange",
    "HeaderList",
    "Plugin",
    "RequestContext",
    "ResponseHead",
    "create_plugin",
    "resolve_plugin",
]
