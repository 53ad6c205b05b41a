"""Latency, end-to-end latency and peak memory: cached by architecture and measurement key, timed in
the measurement slot, memory traced op by op."""

import json
import multiprocessing as mp
import time

import pytest
import torch

from blocksearch.families.unet.family import FAMILY as UNET
from blocksearch import cache as C
from blocksearch.recipe import latency as L
from tests.conftest import make_tiny_pipeline, tiny_unet
from tests.test_timers import FakeEvent, fake_sync  # the CUDA event double

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path))
    return tmp_path


def _hold_work(ready, seconds):
    with C.work_slot():
        ready.set()
        time.sleep(seconds)


def test_a_latency_measurement_waits_for_other_processes_work():
    unet = tiny_unet("sd-v1")
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_work, args=(ready, 0.5))
    p.start()
    ready.wait(10)
    lat = L.measure_latency(unet, 16, warmup=1, repeats=3, min_s=0.0, use_cache=False, family=UNET)
    p.join(10)
    assert lat.how["slot_wait_s"] >= 0.3 and len(lat.times_ms) == 3
    assert lat.median_ms == sorted(lat.times_ms)[1]


def test_latency_is_cached_by_architecture_and_measurement_settings():
    unet = tiny_unet("sd-v1")
    first = L.measure_latency(unet, 16, warmup=1, repeats=3, min_s=0.0, family=UNET)
    again = L.measure_latency(tiny_unet("sd-v1", seed=1), 16, warmup=1, repeats=3, min_s=0.0, family=UNET)  # same architecture
    assert first.how["cache"] == "measured" and again.how["cache"] == "hit"
    assert again.median_ms == first.median_ms and again.times_ms == first.times_ms
    other = L.measure_latency(unet, 8, warmup=1, repeats=3, min_s=0.0, family=UNET)  # another resolution: another key
    assert other.how["cache"] == "measured"
    assert L.measure_key("unet_step", unet.config, threads=1) != L.measure_key("unet_step", unet.config, threads=2)


def test_live_bytes_tracer_on_a_hand_worked_function():
    x = torch.ones(256, 1024)  # 1 MiB
    mib = 2**20

    def f(x):
        y = x * 2  # +1 MiB
        z = y + 1  # +1 MiB while y is alive
        del y
        return z.sum()  # y gone: 2 MiB live, plus a scalar

    tracer = L._LiveBytes(x.untyped_storage().nbytes(), {x.untyped_storage().data_ptr()})
    with tracer:
        f(x)
    assert tracer.peak == 3 * mib


def test_peak_memory_counts_weights_and_activations_and_is_deterministic():
    unet = tiny_unet("sd-v1")
    a = L.peak_memory(unet, 16, use_cache=False, family=UNET)
    b = L.peak_memory(unet, 16, use_cache=False, family=UNET)
    assert a["peak_mb"] == b["peak_mb"]
    assert a["weights_mb"] == pytest.approx(sum(p.numel() * 4 for p in unet.parameters()) / 2**20)
    assert a["peak_mb"] > a["weights_mb"]
    bigger = L.peak_memory(unet, 32, use_cache=False, family=UNET)  # 4x the pixels: more activation memory
    assert bigger["peak_mb"] - bigger["weights_mb"] > 2 * (a["peak_mb"] - a["weights_mb"])


def test_params_and_macs_are_cached_by_architecture(tmp_path, monkeypatch):
    unet = tiny_unet("sd-v1")
    L._COSTS.clear()
    first = L.cost(unet, 16, tmp_path, family=UNET)
    L._COSTS.clear()
    monkeypatch.setattr(L, "count_macs", lambda *a, **k: pytest.fail("MACs recomputed"))
    assert L.cost(unet, 16, tmp_path, family=UNET) == first  # read back from measurements.json
    assert list(json.loads((tmp_path / "measurements.json").read_text()).values()) == [list(first)]


def test_latency_relative_to_the_teacher_is_its_interleaved_ratio_times_the_teachers_time():
    teacher, student = tiny_unet("sd-v1"), tiny_unet("sd-v1", seed=1)  # same architecture: ratio ~ 1
    lat = L.measure_latency(student, 16, warmup=1, repeats=5, min_s=0.0, use_cache=False, reference=teacher,
                            reference_ms=10.0, family=UNET)
    assert lat.how["teacher_ms"] == 10.0 and lat.median_ms == pytest.approx(10.0 * lat.how["ratio_to_teacher"], rel=1e-4)
    assert 0.7 < lat.how["ratio_to_teacher"] < 1.4 and len(lat.times_ms) == 5
    # without reference_ms, the teacher's own (cached) measurement on this machine is the unit
    own = L.measure_latency(teacher, 16, warmup=1, repeats=5, min_s=0.0, family=UNET)
    rel = L.measure_latency(student, 16, warmup=1, repeats=5, min_s=0.0, reference=teacher, family=UNET)
    assert rel.how["teacher_ms"] == pytest.approx(own.median_ms, abs=1e-3)


def test_end_to_end_shares_of_text_encoder_unet_and_vae_decode_add_up_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("synchronised on CPU"))
    pipe = make_tiny_pipeline()
    lat = L.measure_e2e(pipe, steps=4, guidance=2.0, prompt="a red circle", repeats=2, use_cache=False)
    share = lat.how["share"]
    assert set(share) == {"text_encoder", "unet", "vae_decode", "other"} and lat.how["share_clock"] == "host clock"
    assert all(share[k] > 0 for k in ("text_encoder", "unet", "vae_decode"))
    assert share["unet"] > share["text_encoder"]  # 4 CFG steps against one text encoding (of 2 prompts)
    assert 0.5 < share["text_encoder"] + share["unet"] + share["vae_decode"] <= 1.0
    assert sum(share.values()) == pytest.approx(1.0, abs=0.005)


def test_end_to_end_shares_on_a_cuda_clock_come_from_events_read_after_a_sync():
    """The e2e breakdown on a CUDA clock (a double here: no GPU): an event at the start and end of every
    text-encoder, U-Net and VAE-decoder call, and one synchronise per image before they are read."""
    FakeEvent.log = []
    pipe = make_tiny_pipeline()
    clock = L.CudaEventClock("cuda", event=FakeEvent, sync=fake_sync)
    lat = L.measure_e2e(pipe, steps=3, guidance=2.0, prompt="a red circle", repeats=2, use_cache=False, clock=clock)
    kinds = [kind for kind, _ in FakeEvent.log]
    # per image: 2 text-encoder calls (prompt, empty negative prompt), 3 U-Net steps, post_quant_conv + decoder
    assert kinds == (["record"] * 2 * (2 + 3 + 2) + ["sync"]) * 2
    assert lat.how["share_clock"] == "CUDA events (GPU time)" and lat.how["share"]["unet"] > 0
