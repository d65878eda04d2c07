"""The garbage collector of a gateway worker: a young generation of 10,000 objects instead of CPython's 700.

Every proxied request allocates a few dozen container objects (its coroutine frames, dicts, lists), and the
requests in flight (64 at S1) keep theirs alive across collections. With CPython's default threshold the young
generation is collected every 700 allocations, each time scanning the survivors of every request in flight again:
timed with ``gc.callbacks`` in a ``fastgate run`` worker at S1 that was 6–9% of its CPU (~8 µs per request), and
2.9–4.7% with a threshold of 10,000 (50,000 was worse again: each collection scans more). Most of a request's
objects are freed by reference counting anyway; only cyclic garbage waits longer, a few MB at most.

:func:`tune_collector` runs once per worker, when fastgate's server makes its event loop
(:func:`fastgate.serving.accept.new_event_loop`); a gateway used as a library in someone else's server leaves the
process's collector alone. The older generations keep their thresholds, and a threshold set higher, or a collector
turned off, is left as it is.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Raise the young generation's threshold to :data:`YOUNG_THRESHOLD` (never lower it)."""
    young, middle, old = gc.get_threshold()
    if gc.isenabled() and young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
