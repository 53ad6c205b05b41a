"""The learning curve of a ``blocksearch train`` run: computed first (one row per step: the KD losses, the
learning rate and, at the evaluation steps, FID, KID and text alignment), rendered second: ``curve.csv``,
``curve.png`` (matplotlib) and ``curve.html`` (plotly, self-contained: it works offline).

The run's own logs are the source: ``train_log.jsonl`` (a line per step) and ``evals.jsonl`` (a line per
evaluation), both cut back to the checkpoint when a killed run resumes (``truncate_log``).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

LOSSES = ("loss", "loss_task", "loss_kd_out", "loss_kd_feat")
SCORES = ("fid", "kid", "alignment")
COLUMNS = ("step", *LOSSES, "lr", *SCORES)
TRAIN_LOG, EVAL_LOG = "train_log.jsonl", "evals.jsonl"


@dataclass(frozen=True)
class Curve:
    """One row per step (``COLUMNS``; the scores are None where the step was not evaluated)."""

    rows: tuple[dict, ...]

    def column(self, name: str, evaluated: bool = False) -> tuple[list[int], list[float]]:
        """(steps, values) of a column; ``evaluated``: only the rows where it has a value."""
        rows = [r for r in self.rows if not evaluated or r.get(name) is not None]
        return [r["step"] for r in rows], [r.get(name) for r in rows]


def read_log(path: Path) -> list[dict]:
    """The JSON lines of a log; a line cut short by a kill is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def truncate_log(path: Path, step: int) -> None:
    """Keep the rows of steps <= ``step`` (a resumed run continues from its checkpoint at ``step``)."""
    if path.exists():
        kept = "".join(json.dumps(r) + "\n" for r in read_log(path) if r.get("step", 0) <= step)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(kept)
        os.replace(tmp, path)


def compute_curve(folder: Path) -> Curve:
    """The curve from a run folder's logs, one row per logged step, the evaluations joined by step."""
    scores = {r["step"]: r for r in read_log(folder / EVAL_LOG)}
    rows = {r["step"]: {c: r.get(c) for c in COLUMNS} for r in read_log(folder / TRAIN_LOG)}
    for step, s in scores.items():
        rows.setdefault(step, {c: None for c in COLUMNS} | {"step": step}).update({k: s.get(k) for k in SCORES})
    return Curve(tuple(rows[s] for s in sorted(rows)))


def write_curve(curve: Curve, folder: Path) -> list[Path]:
    """``curve.csv``, ``curve.png`` and ``curve.html`` in ``folder``."""
    paths = [folder / "curve.csv", folder / "curve.png", folder / "curve.html"]
    write_csv(curve, paths[0])
    render_png(curve, paths[1])
    render_html(curve, paths[2])
    return paths


def write_csv(curve: Curve, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: "" if r.get(c) is None else r[c] for c in COLUMNS} for r in curve.rows)


def render_png(curve: Curve, path: Path) -> None:
    """Losses (log scale) and the learning rate on the left, the evaluation scores on the right."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for name in LOSSES:
        left.plot(*curve.column(name, evaluated=True), label=name, linewidth=1)
    left.set(xlabel="step", ylabel="KD loss", yscale="log", title="training losses")
    left.legend(loc="upper right", fontsize=8)
    lr = left.twinx()
    lr.plot(*curve.column("lr", evaluated=True), color="grey", linestyle=":", label="lr")
    lr.set_ylabel("learning rate (dotted)")
    fid_steps, fid = curve.column("fid", evaluated=True)
    right.plot(fid_steps, fid, marker="o", label="FID")
    right.set(xlabel="step", ylabel="FID (lower is better)", title="evaluation")
    align = right.twinx()
    align.plot(*curve.column("alignment", evaluated=True), marker="s", color="tab:green", label="alignment")
    align.set_ylabel("text alignment (squares)")
    fig.savefig(path, dpi=110)


def render_html(curve: Curve, path: Path) -> None:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training losses and learning rate", "evaluation"),
                        specs=[[{"secondary_y": True}, {"secondary_y": True}]])
    for name in LOSSES:
        fig.add_trace(go.Scatter(x=curve.column(name, True)[0], y=curve.column(name, True)[1], name=name,
                                 mode="lines"), row=1, col=1)
    fig.add_trace(go.Scatter(x=curve.column("lr", True)[0], y=curve.column("lr", True)[1], name="lr",
                             mode="lines", line=dict(dash="dot", color="grey")), row=1, col=1, secondary_y=True)
    fig.add_trace(go.Scatter(x=curve.column("fid", True)[0], y=curve.column("fid", True)[1], name="FID",
                             mode="lines+markers"), row=1, col=2)
    fig.add_trace(go.Scatter(x=curve.column("alignment", True)[0], y=curve.column("alignment", True)[1],
                             name="alignment", mode="lines+markers"), row=1, col=2, secondary_y=True)
    fig.update_yaxes(type="log", title_text="KD loss", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="learning rate", row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="FID (lower is better)", row=1, col=2, secondary_y=False)
    fig.update_yaxes(title_text="text alignment", row=1, col=2, secondary_y=True)
    fig.update_xaxes(title_text="step")
    fig.update_layout(template="plotly_white", height=460, title="blocksearch train: learning curve")
    fig.write_html(path, include_plotlyjs=True, full_html=True)
