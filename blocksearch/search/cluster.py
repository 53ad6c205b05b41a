"""The shape of a search's cluster, without Ray: the address check, the lanes (trials in parallel) and what every Tune
run of a search shares. ray_tune.py runs the trials; the driver imports it only once a search has work for Ray."""

from __future__ import annotations

import dataclasses
import socket
from typing import Callable, TextIO

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import Arch, ArchSpace
from blocksearch.study import SearchConfig


@dataclasses.dataclass(frozen=True)
class Tuning:
    """What every Tune run of a search shares: the study storage, the bound space, the parameter table
    (teacher_setup.params_table), the cluster's resources and where progress goes."""

    storage: object
    bound: ArchSpace
    params_of: Callable[[Arch], int]
    resources: dict
    out: TextIO


def probe_address(address: str) -> None:
    """``--address`` host:port answers, before anything else is touched; a one-line error else."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise BlocksearchError(f"--address {address!r}: allowed: auto or host:port (e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as err:
        raise BlocksearchError(f"cannot reach Ray at --address {address!r} ({err.strerror or err}); "
                               f"start one with 'ray start --head' or leave --address out") from None


def lanes(cfg: SearchConfig, resources: dict, remaining: int) -> int:
    """Trials in parallel: what the cluster's CPUs (and GPUs) allow, capped by --max-concurrent."""
    n = int(resources.get("CPU", 1) // cfg.cpus_per_trial)
    if cfg.gpus_per_trial:
        n = min(n, int(resources.get("GPU", 0) // cfg.gpus_per_trial))
        if n < 1:
            raise BlocksearchError(f"--gpus-per-trial {cfg.gpus_per_trial}: the Ray cluster has "
                                   f"{resources.get('GPU', 0)} GPUs")
    return max(1, min(cfg.max_concurrent or n, n, remaining))
