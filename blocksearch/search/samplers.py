"""The samplers a search can use: Optuna's TPE, NSGA-II, GP and random search, all seeded.

TPE: Bergstra et al., NeurIPS 2011 (Optuna's multi-objective TPE: Ozaki et al., GECCO 2022);
NSGA-II: Deb et al., 2002; GP: Optuna's Gaussian-process sampler with log-EHVI for several objectives.
"""

from __future__ import annotations

import random

import optuna

from blocksearch.study import DEFAULT_SAMPLER, SAMPLERS  # noqa: F401 (the names a study records)

REPEATS_BEFORE_FALLBACK = 3  # repeats of trained Genomes in a row before an untrained one is queued
ENUMERATE_UP_TO = 4096  # spaces up to this size (the U-Net spaces: 576 on SD-v1, 1620 on SDXL) are listed and
# drawn from uniformly; larger ones (the 16-block toy transformer's 64,839 masks: listing them took seconds per
# repeat, which stalled bench search) are drawn from through the space's own suggest
MAX_ASKS = 200  # suggestions tried for one trial before giving up on finding an untrained Genome


def make_sampler(name: str, seed: int, trials: int, designs: int = 0):
    """GP (the default: Optuna's Gaussian-process sampler, log-EHVI for several objectives), TPE (Optuna 5
    multi-objective TPE with constant liar for parallel trials), NSGA-II or random, all seeded. ``designs``:
    the reference designs the study starts with (enqueued, evaluated first); GP takes them as its initial
    design and models from the next trial on, where more random start-up trials measured worse (docs/benchmarks.md)."""
    startup = min(10, max(2, trials // 3))
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    if name == "gp":
        # the space is conditional (a removed stage has no layer count): GP samples those parameters at random
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=designs if designs >= 2 else startup,
                                         warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def untrained_genome(bound, trained: set[str], seed: int, attempt: int):
    """The rule for a sampler that repeats itself, shared by the search and ``bench search``.

    TPE on a small discrete space keeps proposing the same good Genome (its l/g argmax); after
    ``REPEATS_BEFORE_FALLBACK`` repeats, a uniformly drawn untrained Genome is queued so the search keeps
    exploring. Returns it (None when every Genome of ``bound`` is trained); seeded by (seed, progress).
    A space too large to list (a transformer's block masks: 2.7e8 for PixArt-Sigma) is drawn from by
    Optuna's random sampler through the space's own ``suggest`` instead, ``MAX_ASKS`` draws at most.
    """
    rng = random.Random(seed * 100003 + len(trained) * 31 + attempt)
    if len(bound) <= ENUMERATE_UP_TO:
        fresh = [g for g in bound if g.id not in trained]
        return rng.choice(fresh) if fresh else None
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=rng.randrange(2 ** 31)))
    for _ in range(MAX_ASKS):
        arch = bound.suggest(draws.ask())
        if arch.id not in trained:
            return arch
    return None
