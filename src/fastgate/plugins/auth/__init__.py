"""Authentication at the edge as built-in route plugins: ``api_key``, ``jwt``, ``basic_auth``, ``forward_auth``.

Each lives in its own module, imported only when a route names it (``BUILTIN_PLUGINS`` maps the name to an import
path), so a gateway without auth plugins never imports PyJWT or bcrypt. See docs/security.md.
"""
