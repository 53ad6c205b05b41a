"""The shape of a search's cluster, without Ray: the address check, the lanes (trials in parallel) and what every Tune
run of a search shares. ray_tune.py runs the trials; the driver imports it only once a search has work for Ray."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import threading
from typing import Callable, TextIO

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import Arch, ArchSpace
from blocksearch.study import SearchConfig


def local_ray_auth(address: str | None) -> None:
    """Token auth for a new local Ray cluster (Ray's security guide: a cluster's RPCs carry a token), said
    explicitly: ``RAY_AUTH_MODE=token`` unless the user set it. Ray reads the variable once, when it is imported
    (Ray 2.60), while the GCS it starts reads it from the environment it inherits: set after ``import ray``, the
    GCS wants a token the driver never sends and the start fails (``InvalidAuthToken``). So it is set only before
    the first ``import ray`` of this process (else both sides keep Ray's default), and never for ``--address``
    (that cluster's own setting rules)."""
    if not address and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


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


HEAD_POLL_S, HEAD_MISSES = 2.0, 5  # the Ray head is lost once its GCS port refuses this many polls in a row


def watch_head(gcs_address: str, cfg: SearchConfig, stop: threading.Event) -> threading.Thread:
    """Watch the Ray head (its GCS port) until ``stop`` is set. When the head is lost (``ray stop``, its node
    killed or gone) the driver can do nothing more: Ray's own client would end the process 60 s later with a C++
    log line (``Failed to connect to GCS within 60 seconds``). This says it first, in one line that names the study
    and how to resume, and exits with code 1. Nothing finished is lost: every finished trial is in the study, and
    the running ones are re-queued once their heartbeats go stale (the killed-driver fault, docs/reliability.md)."""
    host, _, port = gcs_address.rpartition(":")
    shown = cfg.address if cfg.address and cfg.address != "auto" else gcs_address  # the address the user gave

    def poll() -> None:
        misses, why = 0, ""
        while not stop.wait(HEAD_POLL_S):
            try:
                socket.create_connection((host, int(port)), timeout=HEAD_POLL_S).close()
                misses = 0
            except OSError as err:
                misses, why = misses + 1, err.strerror or str(err)
            if misses >= HEAD_MISSES and not stop.is_set():
                sys.stderr.write(f"blocksearch: lost the Ray head at {shown} ({why}); study {cfg.study!r} in "
                                 f"{cfg.storage} keeps every finished trial and re-queues the running ones: start "
                                 f"Ray again and rerun the same command to resume\n")
                sys.stderr.flush()
                os._exit(1)  # Ray's client cannot be shut down without its head: nothing else would return

    thread = threading.Thread(target=poll, daemon=True, name="blocksearch-ray-head")
    thread.start()
    return thread


def lanes(cfg: SearchConfig, resources: dict, remaining: int) -> int:
    """Trials in parallel: what the cluster's CPUs (and GPUs) allow, capped by --max-concurrent."""
    n = int(resources.get("CPU", 1) // cfg.cpus_per_trial)
    if cfg.gpus_per_trial:
        n = min(n, int(resources.get("GPU", 0) // cfg.gpus_per_trial))
        if n < 1:
            raise BlocksearchError(f"--gpus-per-trial {cfg.gpus_per_trial}: the Ray cluster has "
                                   f"{resources.get('GPU', 0)} GPUs")
    return max(1, min(cfg.max_concurrent or n, n, remaining))
