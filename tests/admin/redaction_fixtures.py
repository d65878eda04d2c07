"""A plugin of the user's kind for the redaction tests: free-form options, two of them declared safe to show."""

from __future__ import annotations

from typing import Any, ClassVar

from fastgate import Plugin


class Keyring(Plugin):
    """Accepts any options; ``public_options`` names the ones ``GET /config`` may show."""

    public_options: ClassVar[tuple[str, ...]] = ("region", "retries")

    def __init__(self, **options: Any) -> None:
        self.options = options
