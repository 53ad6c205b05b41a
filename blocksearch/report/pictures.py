"""The report's pictures of its students: a block diagram of each front student and reference design
(diagram.py, from the family's ``layout``) and the sample grid (samples.py): ``samples.png`` with every
model's row, and per trial ``samples/trial<N>-samples.png``, its row under the teacher's (optuna-dashboard's artifact
and the model card's picture). Drawn before the report's paths are made portable: rows need the students."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from blocksearch.errors import BlocksearchError
from blocksearch.report.compute import ParetoReport, TrialPoint
from blocksearch.report.diagram import key, save_diagram
from blocksearch.report.samples import SampleSet, label, models, sample_grid, save_grid
from blocksearch.teachers import resolve_teacher

SAMPLES_PNG = "samples.png"
ROWS_DIR, DIAGRAMS_DIR = "samples", "diagrams"


@dataclass(frozen=True)
class Pictures:
    """What was drawn, as paths relative to the report folder; ``seconds``: what drawing them took."""

    diagrams: dict = field(default_factory=dict)  # trial -> diagrams/trial<N>-diagram.png
    rows: dict = field(default_factory=dict)  # trial -> samples/trial<N>-samples.png (its row under the teacher's)
    grid: str | None = None  # samples.png
    samples: SampleSet | None = None
    labels: tuple = ()  # the grid's rows, top to bottom
    missing: tuple = ()  # (model, why it has no row)
    seconds: dict = field(default_factory=dict)  # diagrams_s, samples_s
    key: str = ""  # how to read the diagrams (diagram.key)


def draw_pictures(report: ParetoReport, folder: Path, samples: bool = True) -> Pictures:
    """Diagrams of every front student and reference design; the sample grid where the study generated
    images and the students are on disk (``samples`` False: diagrams only)."""
    t0 = time.perf_counter()
    diagrams, how = draw_diagrams(report, folder)
    t1 = time.perf_counter()
    try:
        grid = sample_grid(report) if samples and report.ranked else None
    except BlocksearchError as err:  # e.g. a real teacher's evaluation set that moved: the rest of the report stands
        return Pictures(diagrams, missing=(("every model", str(err)),), seconds={"diagrams_s": round(t1 - t0, 3)},
                        key=how)
    rows, grid_file = {}, None
    if grid is not None:
        grid_file = save_grid(grid.samples, grid.rows, folder / SAMPLES_PNG).name
        (folder / ROWS_DIR).mkdir(exist_ok=True)
        for row in grid.rows[1:]:
            rows[row.trial] = _rel(save_grid(grid.samples, [grid.rows[0], row],
                                             folder / ROWS_DIR / f"trial{row.trial}-samples.png"), folder)
    seconds = {"diagrams_s": round(t1 - t0, 3), "samples_s": round(time.perf_counter() - t1, 3)}
    return Pictures(diagrams, rows, grid_file, grid.samples if grid else None,
                    tuple(r.label for r in grid.rows) if grid else (), grid.missing if grid else (), seconds, how)


def draw_diagrams(report: ParetoReport, folder: Path) -> tuple[dict[int, str], str]:
    """``diagrams/trial<N>-diagram.png`` for each model (``samples.models``) whose family draws one, and how
    to read them."""
    topo = _family_and_topology(report)
    if topo is None or topo[0].layout is None:
        return {}, ""
    family, topology = topo
    out, how = {}, ""
    for t in models(report):
        stages = _layout(family, topology, t)
        if stages is not None:
            (folder / DIAGRAMS_DIR).mkdir(parents=True, exist_ok=True)
            path = save_diagram(stages, folder / DIAGRAMS_DIR / f"trial{t.number}-diagram.png", f"{label(t)}: {t.genome}")
            out[t.number], how = _rel(path, folder), key(stages)
    return out, how


def _layout(family, topology, t: TrialPoint):
    """The family's ``layout`` of trial ``t``'s architecture (None: no genome, or one the teacher does not fit)."""
    if not t.genome:
        return None
    try:
        return family.layout(family.arch_from_id(t.genome), topology)
    except BlocksearchError:
        return None


def _family_and_topology(report: ParetoReport):
    spec = report.attrs.get("teacher")
    if not spec:
        return None
    try:
        ref = resolve_teacher(spec)
        return ref.family, ref.topology()
    except BlocksearchError:
        return None


def _rel(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


