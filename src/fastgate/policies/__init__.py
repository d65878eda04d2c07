"""Per-route policies around "forward this request". Modules are imported by name; nothing is exported here yet."""

__all__: list[str] = []
