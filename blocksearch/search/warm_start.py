"""``--init one-shot``: the search's first trials are the students that keep the most important blocks.

The teacher's blocks are scored without training on the held-out probe batches (the family's ``one_shot`` hook:
skip MSE as Flux.1-Lite ranked FLUX.1-dev's blocks; ShortGPT's block influence, arXiv 2403.03853), and the top
blocks at a few kept fractions are enqueued after the named designs, a prior for the sampler to improve on
(TinyFusion, arXiv 2412.01199, finds such one-shot picks a weak but cheap starting point). ``bench fidelity`` trains
the same picks, and ``bench search`` measures whether the warm start helps.
"""

from __future__ import annotations

import json
from pathlib import Path

from blocksearch.errors import BlocksearchError
from blocksearch.recipe.probe import ProbeConfig, teacher_probe
from blocksearch.study import INITS

ONE_SHOT_FILE = "oneshot.json"  # a bench fidelity report's: the teacher's block importance, each arch's scores


def check_init(init: str, family) -> None:
    if init not in INITS:
        raise BlocksearchError(f"--init {init!r}; allowed: {', '.join(INITS)}")
    if init == "one-shot" and family.one_shot is None:
        raise BlocksearchError(f"--init one-shot: the {family.name} family has no one-shot block importance; "
                               f"allowed: --init designs, or a space of a family that scores its blocks")


def importance_table(spec: str, teacher, device: str = "cpu", data: str = "toy", cache_dir=None,
                     resolution: int | None = None) -> list:
    """The teacher's one-shot block importance on the probe's held-out batches (the ranked BlockScores)."""
    family = teacher.family
    check_init("one-shot", family)
    probe = teacher_probe(spec, teacher, ProbeConfig(), device, data, cache_dir, resolution)
    return family.one_shot.block_importance(teacher.denoiser, probe.batches, forward=family.forward)


def read_importance(folder, family) -> list:
    """The block importance a ``bench fidelity`` report folder recorded (``<folder>/oneshot.json``)."""
    path = Path(folder) / ONE_SHOT_FILE
    if not path.is_file():
        raise BlocksearchError(f"{path}: not found; allowed: a bench fidelity report folder of a family that scores "
                               f"its blocks (e.g. reports/fidelity-{family.toy_teacher})")
    return family.one_shot.from_rows(json.loads(path.read_text())["blocks"])


def one_shot_archs(family, table: list, bound, fractions=None) -> list[tuple[str, object]]:
    """(label, arch) of the one-shot picks (``family.one_shot.picks``), the named designs left out."""
    check_init("one-shot", family)
    designs = set(bound.named_designs().values()) | {bound.teacher_genome}
    kwargs = {} if fractions is None else {"fractions": fractions}
    return [(label, arch) for label, arch in family.one_shot.picks(table, bound, **kwargs) if arch not in designs]
