"""The learning curves of a report's front students: each trial's per-step KD losses (``losses.jsonl`` beside
its student, written by ``trial.logged``), joined across rungs (a rung continues the student of the study below
from its checkpoint, so steps 1..k are in that study's folder and k+1..n in the rung's), drawn as ``curves.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend (Agg draws the PNG)

from blocksearch.report.compute import ParetoReport, TrialPoint
from blocksearch.settings import LOSSES_FILE

SMOOTH = 25  # steps of the moving average drawn over the raw per-step loss (one batch per step is noisy)


def losses_files(report: ParetoReport, t: TrialPoint) -> list[Path]:
    """This trial's losses file and those of the same genome in the studies below it: the first stage
    ``attrs['rung']['of']`` and its rungs ``<of>@<steps>`` of fewer steps, sibling run folders
    ``<runs>/<study>/students/<genome>``; lowest budget first."""
    if not t.student_dir:
        return []
    genome_dir = Path(t.student_dir).parent
    rung = report.attrs.get("rung") or {}
    if not rung.get("of"):
        return [f for f in [genome_dir / LOSSES_FILE] if f.is_file()]
    runs, steps = genome_dir.parents[2], int(rung.get("steps") or 0)
    below = [(0, runs / rung["of"])]
    for folder in runs.glob(f"{rung['of']}@*"):
        budget = folder.name.rsplit("@", 1)[1]
        if budget.isdigit() and int(budget) < steps:
            below.append((int(budget), folder))
    files = [folder / "students" / genome_dir.name / LOSSES_FILE for _, folder in sorted(below)]
    return [f for f in [*files, genome_dir / LOSSES_FILE] if f.is_file()]


def read_losses(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, [total KD loss, task loss] per step) over ``files`` in order; a later file's steps replace an
    earlier one's."""
    by_step: dict[int, tuple[float, float]] = {}
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_step[int(row["step"])] = (float(row["loss"]), float(row.get("loss_task", np.nan)))
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([by_step[int(s)] for s in steps]).reshape(len(steps), 2)


def front_curves(report: ParetoReport) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Label -> (steps, loss) for each front student and reference design that has a losses file."""
    chosen = [t for t in report.ranked if t.on_front or t.number in report.reference_trials.values()]
    curves = {}
    for t in chosen:
        steps, loss = read_losses(losses_files(report, t))
        if len(steps):
            curves[t.label + (" (front)" if t.on_front else "")] = (steps, loss)
    return curves


def smooth(values: np.ndarray, window: int = SMOOTH) -> np.ndarray:
    """Trailing moving average (shorter at the start, so the curve starts at step 1)."""
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def render_curves_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    names = ("KD loss (task + out + feat)", "task loss (MSE to the target; comparable across students)")
    for k, (ax, name) in enumerate(zip(axes, names)):
        for label, (steps, loss) in curves.items():
            ax.plot(steps, smooth(loss[:, k]), label=label, linewidth=1.2,
                    linestyle="-" if "front" in label else "--")
        ax.set_yscale("log")
        ax.set_xlabel("KD step")
        ax.set_ylabel(f"{SMOOTH}-step mean", fontsize=8)
        ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
