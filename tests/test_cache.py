"""The one cache folder and the measurement slot (a writer-preferring readers-writer lock across processes)."""

import multiprocessing as mp
import time

import pytest

from blocksearch import cache as C

CTX = mp.get_context("fork")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path))
    return tmp_path


def test_default_cache_dir_follows_the_environment(tmp_path):
    assert C.default_cache_dir() == tmp_path
    assert C.lock_path("latency") == tmp_path / "locks" / "latency.lock"


def _hold_without_yielding(ready, seconds):
    with C.work_slot():
        ready.set()
        time.sleep(seconds)


def _train_with_checkpoints(ready, counter, stop):
    with C.work_slot():
        ready.set()
        while not stop.is_set():
            with counter.get_lock():
                counter.value += 1
            time.sleep(0.005)
            C.yield_to_measurement()


def test_a_measurement_waits_for_work_that_does_not_yield():
    ready = CTX.Event()
    p = CTX.Process(target=_hold_without_yielding, args=(ready, 0.6))
    p.start()
    ready.wait(10)
    t0 = time.perf_counter()
    with C.measurement_slot() as waited:
        pass
    p.join(10)
    assert waited.seconds >= 0.4 and time.perf_counter() - t0 >= 0.4 and waited.isolated


def test_work_steps_aside_at_its_checkpoint_and_stays_out_while_measuring():
    ready, stop, counter = CTX.Event(), CTX.Event(), CTX.Value("i", 0)
    workers = [CTX.Process(target=_train_with_checkpoints, args=(ready, counter, stop)) for _ in range(2)]
    for w in workers:
        w.start()
    ready.wait(10)
    time.sleep(0.1)
    try:
        with C.measurement_slot() as waited:
            before = counter.value
            time.sleep(0.3)
            during = counter.value - before
        time.sleep(0.2)
        after = counter.value - before - during
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    assert waited.seconds < 0.2 and waited.isolated  # one checkpoint away
    assert during == 0  # nothing of ours ran while the slot was held
    assert after > 5  # and the work resumed


def test_work_slot_is_reentrant_and_a_measurement_inside_work_does_not_deadlock():
    with C.work_slot():
        with C.work_slot():
            assert C.yield_to_measurement() == 0.0
        with C.measurement_slot():  # our own work steps aside, then comes back
            pass
        assert C._SLOT["room"] is not None
    assert C._SLOT["room"] is None


def test_a_holder_that_never_yields_delays_a_measurement_by_the_timeout_only():
    ready = CTX.Event()
    p = CTX.Process(target=_hold_without_yielding, args=(ready, 30))  # a stuck (or orphaned) worker
    p.start()
    try:
        ready.wait(10)
        t0 = time.perf_counter()
        with C.measurement_slot(timeout=0.5) as waited:
            pass
        assert not waited.isolated and 0.5 <= waited.seconds < 3 and time.perf_counter() - t0 < 3
        with C.measurement_slot(timeout=0.3) as again:  # the slot files were released: the same, no deadlock
            pass
        assert not again.isolated
    finally:
        p.kill()
        p.join(10)
    with C.measurement_slot(timeout=5) as free:  # the holder is gone: its flock went with it
        pass
    assert free.isolated and free.seconds < 1


def _blocked_on_the_driver(ready, seconds):
    with C.work_slot():
        with C.outside_work_slot():  # a Ray Tune report that waits for a driver that may be dead
            ready.set()
            time.sleep(seconds)


def test_work_waiting_on_someone_else_does_not_hold_the_slot():
    ready = CTX.Event()
    p = CTX.Process(target=_blocked_on_the_driver, args=(ready, 30))
    p.start()
    try:
        ready.wait(10)
        with C.measurement_slot(timeout=5) as waited:
            pass
        assert waited.isolated and waited.seconds < 1
    finally:
        p.kill()
        p.join(10)
