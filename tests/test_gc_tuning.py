"""The collector as ``trigmail serve`` sets it (``daemon.tune_gc``, called by ``service.run``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from trigmail.daemon import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*before)


@pytest.mark.usefixtures("thresholds")
def test_serving_collects_the_young_generation_less_often_and_leaves_the_older_ones() -> None:
    gc.set_threshold(700, 7, 9)
    tune_gc()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 7, 9)
    assert GC_YOUNG_THRESHOLD > 700


@pytest.mark.usefixtures("thresholds")
def test_the_collector_stays_on_so_cycles_are_still_collected() -> None:
    tune_gc()
    assert gc.isenabled()
