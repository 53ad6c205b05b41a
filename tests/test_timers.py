"""Component timing on the device's clock: CUDA events (GPU time, read after a synchronise) on CUDA, the
host clock on CPU."""

import time

import pytest
import torch

from blocksearch.recipe import timers as T


class FakeEvent:
    """A CUDA event double: its time is the host clock at record(); like a real event, its elapsed time can
    only be read once the device has been synchronised after it was recorded."""

    log: list = []

    def __init__(self):
        self.t, self.synced = None, False

    def record(self):
        self.t = time.perf_counter()
        FakeEvent.log.append(("record", self))

    def elapsed_time(self, end) -> float:
        if not (self.synced and end.synced):
            raise RuntimeError("event not completed: elapsed_time read before synchronize")
        return (end.t - self.t) * 1000


def fake_sync(device):
    FakeEvent.log.append(("sync", device))
    for kind, event in FakeEvent.log:
        if kind == "record":
            event.synced = True


@pytest.fixture
def log():
    FakeEvent.log = []
    return FakeEvent.log


class Slow(torch.nn.Module):
    def __init__(self, seconds: float):
        super().__init__()
        self.s = seconds

    def forward(self, x):
        time.sleep(self.s)
        return x


def test_cuda_clock_records_an_event_around_every_component_call_and_reads_them_after_a_sync(log):
    a, b = Slow(0.02), Slow(0.05)
    timer = T.ComponentTimer(T.CudaEventClock("cuda", event=FakeEvent, sync=fake_sync), {"a": [a], "b": [b, None]})
    with timer.hooks():
        a(1), b(1), a(1)
        assert [kind for kind, _ in log] == ["record"] * 6  # start and end of each of the three calls, no sync
        seconds = timer.settle()
    assert [kind for kind, _ in log] == ["record"] * 6 + ["sync"] and log[-1][1] == torch.device("cuda")
    assert seconds["a"] == pytest.approx(0.04, abs=0.015) and seconds["b"] == pytest.approx(0.05, abs=0.015)
    a(1)  # hooks removed: nothing more is recorded
    assert len(log) == 7 and timer.settle() == seconds


def test_the_device_picks_the_clock_and_cpu_never_synchronises(monkeypatch):
    assert isinstance(T.device_clock("cuda:0"), T.CudaEventClock) and isinstance(T.device_clock("cpu"), T.HostClock)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: pytest.fail("synchronised on CPU"))
    a = Slow(0.03)
    timer = T.ComponentTimer(T.device_clock("cpu"), {"a": [a]})
    with timer.hooks():
        a(1)
    assert timer.settle()["a"] == pytest.approx(0.03, abs=0.015)
