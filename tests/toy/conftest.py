"""Shared fixtures: one tiny toy build per test session (the whole build code path, ~10-60 s on 2 cores)."""

import pytest


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    from blocksearch.toy.build import build

    # one thread: on a shared, loaded CI machine two OpenMP threads can stall each other many times over
    return build(tmp_path_factory.mktemp("toy_tiny"), seed=0, budget="tiny", threads=1)
