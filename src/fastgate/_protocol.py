"""The names fastgate's server protocol had before it moved to :mod:`fastgate.serving` (kept for imports)."""

from __future__ import annotations

from .serving.cycle import STATUS_LINES, ServerHooks
from .serving.protocol import HttpProtocol as FastgateHttpProtocol

__all__ = ["STATUS_LINES", "FastgateHttpProtocol", "ServerHooks"]
