"""Block masks of one block group: which blocks a student keeps, under a kept-count range, optional windows
("keep k of every n consecutive blocks", TinyFusion's N:M layer groups, arXiv 2412.01199) and pinned blocks.

A search suggests one boolean per block; ``GroupMask.repair`` maps any such vector to a valid mask, and is the
identity on valid masks (so ``to_params`` / ``from_params`` round-trip). The rule, deterministic:

1. pinned blocks are kept;
2. with windows, each window keeps exactly ``min(k, its length)`` blocks (the last window may be short); without,
   the group keeps between ``low`` and ``high`` blocks;
3. a window or group with too many blocks drops its kept unpinned blocks from the last one backwards; with too
   few, it keeps its dropped blocks from the first one onwards (Flux.1-Lite: early blocks are the ones that
   cannot be removed).

``count`` is the exact number of valid masks (a product of binomials); ``__iter__`` enumerates them lazily, in a
fixed order. Torch-free.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator

from blocksearch.errors import BlocksearchError


@dataclass(frozen=True)
class GroupMask:
    """The valid masks of one block group of ``n`` blocks (what ``MaskRow.bind`` makes for one teacher)."""

    group: str
    n: int
    low: int  # kept-count range, inclusive
    high: int
    window: tuple[int, int] | None  # (k, size): keep k of every ``size`` consecutive blocks
    pinned: tuple[int, ...]  # always kept

    def __post_init__(self):
        where = f"{self.group} ({self.n} blocks)"
        if not 1 <= self.low <= self.high <= self.n:
            raise BlocksearchError(f"{where}: kept {self.low}..{self.high}; allowed 1 <= min <= max <= {self.n}")
        if any(not 0 <= p < self.n for p in self.pinned):
            raise BlocksearchError(f"{where}: pin {list(self.pinned)}; allowed block indices 0..{self.n - 1}")
        if self.window is None:
            if len(self.pinned) > self.high:
                raise BlocksearchError(f"{where}: {len(self.pinned)} pinned blocks but at most {self.high} kept")
            return
        k, size = self.window
        if not 1 <= k < size <= self.n:
            raise BlocksearchError(f"{where}: window keep {k} of {size}; allowed 1 <= keep < size <= {self.n}")
        for lo, hi, target in self.windows():
            if sum(lo <= p < hi for p in self.pinned) > target:
                raise BlocksearchError(f"{where}: window {lo}-{hi - 1} keeps {target} but pins more")
        fixed = sum(t for _, _, t in self.windows())
        if not self.low <= fixed <= self.high:
            raise BlocksearchError(f"{where}: its windows keep {fixed} blocks, outside kept {self.low}..{self.high}")

    def windows(self) -> list[tuple[int, int, int]]:
        """(first block, end, blocks kept) of each window; the last window may be shorter than ``size``."""
        k, size = self.window
        return [(s, min(s + size, self.n), min(k, min(s + size, self.n) - s)) for s in range(0, self.n, size)]

    # -- the repair rule (module docstring) -------------------------------------------------------------
    def repair(self, bits) -> tuple[int, ...]:
        """The valid mask of a suggested boolean per block (identity on a valid mask)."""
        keep = [bool(b) or i in self.pinned for i, b in enumerate(bits)]
        spans = [(lo, hi, t, t) for lo, hi, t in self.windows()] if self.window else [(0, self.n, self.low, self.high)]
        for lo, hi, least, most in spans:
            order = range(hi - 1, lo - 1, -1)
            while sum(keep[lo:hi]) > most:
                keep[next(i for i in order if keep[i] and i not in self.pinned)] = False
            while sum(keep[lo:hi]) < least:
                keep[next(i for i in range(lo, hi) if not keep[i])] = True
        return tuple(i for i, k in enumerate(keep) if k)

    def reason(self, kept: tuple[int, ...]) -> str | None:
        """Why ``kept`` is not a valid mask (None: it is)."""
        if not kept or kept[-1] >= self.n:
            return f"blocks 0..{self.n - 1}"
        if missing := [p for p in self.pinned if p not in kept]:
            return f"pinned blocks {missing} must be kept"
        if self.window:
            for lo, hi, target in self.windows():
                if sum(lo <= i < hi for i in kept) != target:
                    return f"window {lo}-{hi - 1} must keep {target} of its blocks"
        if not self.low <= len(kept) <= self.high:
            return f"keeps {len(kept)} blocks; allowed {self.low}..{self.high}"
        return None

    # -- size and enumeration ---------------------------------------------------------------------------------
    def count(self) -> int:
        """The exact number of valid masks."""
        if self.window:
            return math.prod(math.comb(hi - lo - pins, target - pins) for lo, hi, target in self.windows()
                             for pins in [sum(lo <= p < hi for p in self.pinned)])
        free, pins = self.n - len(self.pinned), len(self.pinned)
        return sum(math.comb(free, k - pins) for k in range(max(self.low, pins), self.high + 1))

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        """Every valid mask, lazily: fewest blocks first (without windows), then in lexicographic order."""
        if self.window:
            parts = [(tuple(p for p in self.pinned if lo <= p < hi),
                      [i for i in range(lo, hi) if i not in self.pinned], target) for lo, hi, target in self.windows()]
            factories = [lambda pins=pins, free=free, t=t: (tuple(sorted(pins + c))
                                                           for c in itertools.combinations(free, t - len(pins)))
                         for pins, free, t in parts]
            for chunks in lazy_product(factories):
                yield tuple(i for chunk in chunks for i in chunk)
            return
        free = [i for i in range(self.n) if i not in self.pinned]
        for k in range(max(self.low, len(self.pinned)), self.high + 1):
            for chosen in itertools.combinations(free, k - len(self.pinned)):
                yield tuple(sorted(self.pinned + chosen))


def lazy_product(factories) -> Iterator[tuple]:
    """``itertools.product`` of the iterables that ``factories`` make, without materialising them (a group's
    masks can be 2^38)."""
    if not factories:
        yield ()
        return
    for head in factories[0]():
        for tail in lazy_product(factories[1:]):
            yield (head, *tail)
