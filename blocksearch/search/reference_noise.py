"""The reference designs' seed noise, taken from ``bench fidelity``'s study where this run reproduces it.

A search's dominance claims and its rung cut rest on the seed noise of its quality score (noise.py), measured
on the reference designs: each is trained again at another KD seed and scored again (trial.seed_scores) --
635 of the 1646 trial-seconds of KD and noise in a default toy run (2026-12-04). ``bench fidelity`` trained the
same designs with the same recipe at KD seeds 0 and 1 (and scored them at two generation seeds) at every budget
of its ladder, and writes those scores to ``selection-score.json`` (``reference_seed_scores``). A trial of a
reference design first compares its own scores (KD seed 0, the run's generation seed) with the study's: when
every score both have agrees to ``RTOL`` -- the same teacher, data, KD recipe, budget and evaluation set give
the same numbers, bit for bit on one machine, while another KD seed alone moves probe_task after 120 steps by
1.4 % (median over 24 architectures) -- the study's other seeds are this run's other seeds, and nothing is
trained again. Otherwise (another teacher, recipe or budget; ``--noise-source measure``) the trial trains them.

The same study holds KD seed 0 itself, at every budget of its ladder: before a reference design's trial,
study_reuse.reuse trains the study's longest budget below its own (:func:`check_budget`: 30 of 120 steps) and
compares its probe scores there (:func:`agrees`); where they agree, the trial's scores at its own budget are the study's
(:func:`study_scores`) -- the same numbers its own KD would give, at a quarter of the KD -- and a rung takes a
reference design that came from the study from it again (``MARKER`` in its students folder), without training
it (the toy default run: the BK designs' KD 11-16 s each instead of 37-48 s, and the rung's open one off the
lanes; 665 s instead of 893 s, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from blocksearch.report.noise import NOISY
from blocksearch.settings import PROBE_KEYS

IMAGE_KEYS = tuple(k for k in NOISY if k not in PROBE_KEYS)  # scores of images: the generation seed moves them too
RTOL = 1e-3  # "reproduced": every shared score within this relative difference (float noise across machines)
SOURCE = "bench fidelity"  # the ``from`` tag of a seed row the trial did not compute
NOISE_SOURCES = ("auto", "measure")  # run --noise-source


def seed_table(rows: Iterable[dict], probes: Iterable[dict]) -> dict[str, dict[str, list[dict]]]:
    """``{budget: {genome: [row, ...]}}`` of the named designs' scores in a study's results (``rows``: one per
    budget, KD seed and generation seed) and probes (one per budget and KD seed): a row per results row
    (``kd_seed``, ``seed``, fid/kid/alignment) and one per probe row (``kd_seed``, the probe's scores)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        if r.get("design") and r.get("fid") is not None:
            row = {"kd_seed": int(r.get("kd_seed", 0)), "seed": int(r["seed"])}
            row |= {k: r[k] for k in IMAGE_KEYS if r.get(k) is not None}
            out.setdefault(str(r["budget"]), {}).setdefault(r["genome"], []).append(row)
    for p in probes:
        if p.get("design") and any(p.get(k) is not None for k in PROBE_KEYS):
            row = {"kd_seed": int(p.get("kd_seed", 0))} | {k: p[k] for k in PROBE_KEYS if p.get(k) is not None}
            out.setdefault(str(p["budget"]), {}).setdefault(p["genome"], []).append(row)
    for designs in out.values():
        for rows_ in designs.values():
            rows_.sort(key=lambda r: (r["kd_seed"], "seed" not in r, r.get("seed", 0)))
    return out


MARKER = "from-study.json"  # <students>/<genome>/: the trial's scores came from the study (study_reuse.reuse)


def kd_seed_0(rows: Iterable[dict], seed: int) -> tuple[dict | None, dict | None]:
    """KD seed 0's own rows among one design's and budget's ``rows``: (its images' row at generation seed
    ``seed``, its probe row), None where the study has none."""
    rows = list(rows)
    image = next((r for r in rows if "seed" in r and r["kd_seed"] == 0 and r["seed"] == seed), None)
    return image, next((r for r in rows if "seed" not in r and r["kd_seed"] == 0), None)


def study_scores(table: Mapping, steps: int, genome: str, seed: int, keys: Iterable[str]) -> dict | None:
    """KD seed 0's ``keys`` of ``genome`` after ``steps`` in the study's ``table`` ({budget: {genome: rows}}):
    image scores from its row at generation seed ``seed``, probe scores from its probe row; None unless the
    study has every one of ``keys``."""
    keys = tuple(keys)
    image, probe = kd_seed_0(table.get(str(steps), {}).get(genome) or [], seed)
    out = {k: ((image if k in IMAGE_KEYS else probe) or {}).get(k) for k in keys}
    return out if keys and all(v is not None for v in out.values()) else None


def probe_row(table: Mapping, steps: int, genome: str) -> dict:
    """KD seed 0's probe scores of ``genome`` after ``steps`` in the study ({} where it has none)."""
    row = kd_seed_0(table.get(str(steps), {}).get(genome) or [], 0)[1] or {}
    return {k: row[k] for k in PROBE_KEYS if row.get(k) is not None}


def check_budget(table: Mapping, steps: int, genome: str) -> int | None:
    """The longest budget of the study above 0 and below ``steps`` with KD seed 0's probe scores of ``genome``:
    where a trial checks that it reproduces the study before taking its ``steps`` scores from it; None if none."""
    return max((int(b) for b in table if 0 < int(b) < steps and probe_row(table, int(b), genome)), default=None)


def agrees(mine: Mapping, theirs: Mapping | None) -> bool:
    """Every score ``mine`` and ``theirs`` both have agrees to ``RTOL``, and they share at least one."""
    shared = [k for k in (theirs or {}) if mine.get(k) is not None and theirs[k] is not None]
    return bool(shared) and all(_close(mine[k], theirs[k]) for k in shared)


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=RTOL, abs_tol=1e-12)


def reproduced(main: Mapping, table: Iterable[dict], kd_seeds: int = 2) -> list[dict] | None:
    """The seed scores of a reference design (``main``: this run's row, KD seed 0 at its generation seed
    ``main["seed"]``, as trial.seed_scores writes it) completed from the study's ``table`` rows of the same
    design and budget -- or None when the study does not reproduce ``main`` (a score both have differs by more
    than ``RTOL``, or they share none) or holds fewer than ``kd_seeds`` KD seeds (``--noise-seeds``). The rows
    added carry only the scores ``main`` has, tagged ``from``."""
    table = list(table)
    image = [k for k in IMAGE_KEYS if main.get(k) is not None]
    probe = [k for k in PROBE_KEYS if main.get(k) is not None]
    own_images, own_probe = kd_seed_0(table, main["seed"])
    pairs = [(main[k], own_images.get(k)) for k in image if own_images is not None] + \
            [(main[k], own_probe.get(k)) for k in probe if own_probe is not None]
    pairs = [(a, b) for a, b in pairs if b is not None]
    if not pairs or not all(_close(a, b) for a, b in pairs):
        return None
    if (image and own_images is None) or (probe and own_probe is None):
        return None  # a score the study did not measure at all: its noise would not be this run's
    out = [dict(main)]
    for r in table:
        if r is own_images or r is own_probe:
            continue
        keys = image if "seed" in r else probe
        scores = {k: r[k] for k in keys if r.get(k) is not None}
        if scores:
            out.append({"seed": r.get("seed", main["seed"]), "kd_seed": r["kd_seed"], **scores, "from": SOURCE})
    return out if len(out) > 1 and len({r["kd_seed"] for r in out}) >= kd_seeds else None


def table_of(record: Mapping | None, teacher: str) -> dict[str, dict[str, list[dict]]]:
    """The seed table of ``selection-score.json``'s ``record`` for a run on ``teacher`` ({} where the study was
    of another teacher or recorded none)."""
    if not record or record.get("teacher", "toy") != teacher:
        return {}
    return dict(record.get("reference_seed_scores") or {})
