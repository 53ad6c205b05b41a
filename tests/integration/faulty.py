"""The real trial work (blocksearch.search.trial.train_candidate), failing for one Genome on request (tests only)."""

import os

from blocksearch.search.trial import train_candidate


def candidate(genome, job, report):
    if genome.id == os.environ.get("BLOCKSEARCH_TEST_FAIL_GENOME"):
        raise RuntimeError(f"injected failure for {genome.id}")
    return train_candidate(genome, job, report)
