"""Time spent in parts of a model (text encoder, U-Net, VAE decoder) through forward hooks, on the
device's own clock.

On CUDA, kernels run asynchronously: a host clock read in a hook measures how long the CPU took to
*launch* the module's kernels, not how long the GPU ran them. So on CUDA each hook records a CUDA event on
the current stream and the times are the GPU's elapsed time between events (``Event.elapsed_time``), read
only after ``settle()`` has synchronised the device; on CPU, work is synchronous and the host clock
(``time.perf_counter``) is exact. Recording events does not stall the stream, so timing the parts does not
slow the whole (a ``torch.cuda.synchronize`` in every hook would).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Protocol

import torch


class Clock(Protocol):
    def mark(self): ...  # a point in time (a float, or a recorded event)

    def seconds(self, start, end) -> float: ...  # between two marks; valid after settle()

    def settle(self) -> None: ...  # wait until every mark so far has happened


class HostClock:
    """The host's clock: exact for work that runs in the calling thread (CPU)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter):
        self.now = now

    def mark(self) -> float:
        return self.now()

    def seconds(self, start: float, end: float) -> float:
        return end - start

    def settle(self) -> None:
        pass


class CudaEventClock:
    """CUDA events with timing, recorded on the current stream: GPU time, not kernel-launch time."""

    def __init__(self, device, event: Callable | None = None, sync: Callable | None = None):
        self.device = torch.device(device)
        self.event = event or (lambda: torch.cuda.Event(enable_timing=True))
        self.sync = sync or torch.cuda.synchronize

    def mark(self):
        event = self.event()
        event.record()
        return event

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000  # elapsed_time is in ms

    def settle(self) -> None:
        self.sync(self.device)


def device_clock(device) -> Clock:
    """CUDA events on a CUDA device, the host clock elsewhere."""
    return CudaEventClock(device) if torch.device(device).type == "cuda" else HostClock()


class ComponentTimer:
    """Seconds spent in the forward calls of named groups of modules, accumulated over many calls."""

    def __init__(self, clock: Clock, components: dict[str, list[torch.nn.Module]]):
        self.clock, self.components = clock, {k: [m for m in v if m is not None] for k, v in components.items()}
        self.seconds = dict.fromkeys(components, 0.0)
        self._open: dict[int, object] = {}
        self._done: list[tuple[str, object, object]] = []

    @contextmanager
    def hooks(self):
        """Mark the start and end of every forward call of the components' modules while inside."""
        handles = []
        for name, modules in self.components.items():
            for module in modules:
                handles.append(module.register_forward_pre_hook(self._start))
                handles.append(module.register_forward_hook(self._end(name)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _start(self, module, args) -> None:
        self._open[id(module)] = self.clock.mark()

    def _end(self, name: str) -> Callable:
        def hook(module, args, output) -> None:
            self._done.append((name, self._open.pop(id(module)), self.clock.mark()))
        return hook

    def settle(self) -> dict[str, float]:
        """Wait for the device, add up the marked intervals; returns the running totals in seconds."""
        self.clock.settle()
        for name, start, end in self._done:
            self.seconds[name] += self.clock.seconds(start, end)
        self._done.clear()
        return dict(self.seconds)
