"""The real trial work (blocksearch.search.trial.train_candidate), failing for one Genome on request, or holding
one trial mid-KD until a test kills its worker (tests only)."""

import json
import os
import time
from pathlib import Path

from blocksearch.search.trial import train_candidate

HOLD_S = 120  # a held trial goes on after this long if nobody kills it: a test can fail, never hang


def candidate(genome, job, report):
    if genome.id == os.environ.get("BLOCKSEARCH_TEST_FAIL_GENOME"):
        raise RuntimeError(f"injected failure for {genome.id}")
    hold = os.environ.get("BLOCKSEARCH_TEST_HOLD")  # "<marker file>:<KD step>"
    return train_candidate(genome, job, held(report, genome.id, *hold.rsplit(":", 1)) if hold else report)


def held(report, genome: str, marker: str, step: str):
    """``report`` that, in the first trial to reach KD step ``step``, writes ``marker`` (its genome and process id)
    and waits there: a test SIGKILLs that trial's worker mid-KD. A retry finds the marker and runs through."""
    def on_step(i: int, losses: dict) -> None:
        report(i, losses)
        if i == int(step):
            try:
                with open(marker, "x") as f:  # the first trial only: the file is created once
                    json.dump({"genome": genome, "pid": os.getpid()}, f)
            except FileExistsError:
                return
            end = time.time() + HOLD_S
            while time.time() < end and Path(marker).exists():
                time.sleep(0.2)

    return on_step
