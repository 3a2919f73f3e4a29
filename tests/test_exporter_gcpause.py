"""rseqtop.exporter.gcpause: the cyclic GC is off while a scrape is built
and back as it was after, also when scrapes overlap or fail."""

from __future__ import annotations

import gc
import threading

import pytest
from prometheus_client import CollectorRegistry

from rseqtop.exporter import gcpause
from rseqtop.exporter.metrics import RseqCollector
from rseqtop.exporter.server import render
from rseqtop.model.synthetic import SyntheticSource


@pytest.fixture(autouse=True)
def gc_restored():
    was = gc.isenabled()
    yield
    gc.enable() if was else gc.disable()


def test_off_during_a_scrape_and_on_after():
    seen = []

    class Source(SyntheticSource):
        def poll(self):
            seen.append(gc.isenabled())
            return super().poll()

    reg = CollectorRegistry()
    reg.register(RseqCollector(Source(3, 2), labels="pid", identity=None))
    gc.enable()
    body, _ = render(reg, None)
    assert b"rseqtop_aborts_total" in body
    assert seen == [False] and gc.isenabled()


def test_overlapping_scrapes_turn_it_on_when_the_last_ends():
    gc.enable()
    inside, release = threading.Event(), threading.Event()

    def slow_scrape():
        with gcpause.paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=slow_scrape)
    t.start()
    assert inside.wait(10)
    with gcpause.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other scrape is still building
    release.set()
    t.join(10)
    assert gc.isenabled()


def test_a_failed_scrape_turns_it_back_on():
    gc.enable()
    with pytest.raises(RuntimeError), gcpause.paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_left_off_when_it_was_off():
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()
