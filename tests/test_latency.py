"""Latency and cost: measurements serialised by one file lock; params and MACs cached by architecture."""

import json
import threading
import time

import pytest

from blocksearch import latency as L
from blocksearch.cache import file_lock, lock_path
from tests.conftest import tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_latency_measurements_are_serialised_by_a_file_lock(tmp_path):
    unet = tiny_unet("sd-v1")
    lock = lock_path("latency", tmp_path)  # the one lock trials and `bench latency` share
    held = threading.Event()

    def hold():
        with file_lock(lock):
            held.set()
            time.sleep(0.5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait()
    lat = L.measure_latency(unet, 16, warmup=1, repeats=3, min_s=0.0, lock_dir=tmp_path)
    t.join()
    assert lat.how["lock_wait_s"] >= 0.3 and len(lat.times_ms) == 3
    assert lat.median_ms == sorted(lat.times_ms)[1]


def test_params_and_macs_are_cached_by_architecture(tmp_path, monkeypatch):
    unet = tiny_unet("sd-v1")
    L._COSTS.clear()
    first = L.cost(unet, 16, tmp_path)
    L._COSTS.clear()
    monkeypatch.setattr(L, "count_macs", lambda *a: pytest.fail("MACs recomputed"))
    assert L.cost(unet, 16, tmp_path) == first  # read back from cost.json
    assert json.loads((tmp_path / "cost.json").read_text())
