"""The worker's garbage collector threshold (fastgate.serving.collector): pure, no sockets."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fastgate.serving.accept import new_event_loop
from fastgate.serving.collector import YOUNG_THRESHOLD, tune_collector


@pytest.fixture(autouse=True)
def restore_collector() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def test_a_worker_loop_raises_the_young_generation_threshold_only() -> None:
    gc.set_threshold(700, 10, 10)
    loop = new_event_loop()
    loop.close()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)


def test_a_higher_threshold_or_a_disabled_collector_is_left_alone() -> None:
    gc.set_threshold(50_000, 20, 5)
    tune_collector()
    assert gc.get_threshold() == (50_000, 20, 5)
    gc.set_threshold(700, 10, 10)
    gc.disable()
    tune_collector()
    assert gc.get_threshold() == (700, 10, 10)
