"""A student's block diagram, drawn from its family's ``layout`` (families/layout.py), never from a table per
design: a U-Net's down, mid and up stages as boxes in a U, a transformer's block groups as rows of blocks.
Kept layers are solid, removed ones grey and dashed; attention is the orange cap of a layer (grey: removed,
"d/D": transformer depth kept of the teacher's); a kept transformer block shows the teacher block it came from.
matplotlib's object API only (no pyplot state); every box carries a ``gid`` ("<stage>/<teacher index>", its
attention cap "<stage>/<index>/attention") so that tests read the drawing, not its pixels."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from blocksearch.families.layout import Stage

KEPT, REMOVED, ATTENTION = "#4c72b0", "#e0e0e0", "#dd8452"
EDGE, REMOVED_EDGE = "#263d5e", "#9e9e9e"
W, H, GAP = 0.8, 0.8, 0.15  # one part's box, the gap between parts


def diagram_figure(stages: tuple[Stage, ...], title: str = "", width: float | None = None) -> Figure:
    """The figure of ``stages``: a U for down/mid/up stages, rows for block groups."""
    u_net = any(s.role in ("down", "mid", "up") for s in stages)
    width = width or (6.4 if u_net else _rows_width(stages))
    fig = Figure()
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.98))
    (_draw_u if u_net else _draw_rows)(ax, stages)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    head = 0.3 if title else 0.05  # inches above the drawing: the title
    height = width * (y1 - y0) / (x1 - x0) + head
    fig.set_size_inches(width, height)
    ax.set_position((0.0, 0.0, 1.0, 1 - head / height))
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.05 / height, va="top")
    return fig


def key(stages: tuple[Stage, ...]) -> str:
    """How to read the diagram of ``stages``, in words."""
    if any(s.role == "blocks" for s in stages):
        return "blue: kept, grey dashed: removed; the number in a kept block: the teacher block it came from"
    return "blue: kept, grey dashed: removed; orange cap: attention (d/D: transformer depth kept of the teacher's)"


def save_diagram(stages: tuple[Stage, ...], path: Path, title: str = "", dpi: int = 110) -> Path:
    diagram_figure(stages, title).savefig(path, dpi=dpi)
    return path


def boxes(fig: Figure) -> dict[str, bool]:
    """The drawn boxes of a diagram, ``gid`` -> kept (solid) or removed (grey): what tests compare with the
    family's ``layout``."""
    out = {}
    for ax in fig.axes:
        for patch in ax.patches:
            if patch.get_gid():
                out[patch.get_gid()] = patch.get_facecolor()[:3] != _rgb(REMOVED)
    return out


def _rgb(color: str) -> tuple[float, ...]:
    return tuple(int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))


def _stage_width(stage: Stage) -> float:
    return max(1, len(stage.parts)) * (W + GAP) + GAP


def _draw_u(ax, stages: tuple[Stage, ...]) -> None:
    """Down stages step down left to right, the mid block at the bottom, up stages step back up."""
    down = [s for s in stages if s.role == "down"]
    x, levels = 0.0, {}
    for s in stages:
        level = {"down": down.index(s) if s in down else 0, "mid": len(down)}.get(s.role)
        if level is None:  # an up stage mirrors the down stage it is tied to
            level = len(down) - 1 - [u for u in stages if u.role == "up"].index(s)
        levels[s.name] = level
        _draw_stage(ax, s, x, -level * 1.5)
        x += _stage_width(s) + 0.35
    ax.text(-0.1, -len(down) * 1.5 - 0.6, "blue: kept, grey: removed, orange cap: attention (d/D: transformer "
            "depth kept)", fontsize=5, va="top", color="#555555")
    ax.set_xlim(-0.2, x)
    ax.set_ylim(-len(down) * 1.5 - 0.9, 1.35)


def _draw_rows(ax, stages: tuple[Stage, ...]) -> None:
    """One row per block group, its blocks left to right in the teacher's order."""
    width = max(_stage_width(s) for s in stages)
    for row, s in enumerate(stages):
        _draw_stage(ax, s, 0.0, -row * 1.9, labels=True)
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-(len(stages) - 1) * 1.9 - 0.75, 1.35)


def _rows_width(stages: tuple[Stage, ...]) -> float:
    return min(16.0, max(4.0, 0.2 * max(len(s.parts) for s in stages) + 0.5))


def _draw_stage(ax, stage: Stage, x0: float, y0: float, labels: bool = False) -> None:
    """The stage's frame, its parts inside, its name under it."""
    ax.add_patch(Rectangle((x0, y0 - GAP), _stage_width(stage), H + 2 * GAP + 0.3, fill=False,
                           edgecolor=REMOVED_EDGE if stage.removed else EDGE, linewidth=0.8,
                           linestyle="--" if stage.removed else "-"))
    for k, part in enumerate(stage.parts):
        x = x0 + GAP + k * (W + GAP)
        ax.add_patch(Rectangle((x, y0), W, H, facecolor=KEPT if part.kept else REMOVED,
                               edgecolor=EDGE if part.kept else REMOVED_EDGE, linestyle="-" if part.kept else "--",
                               linewidth=0.6, gid=f"{stage.name}/{part.source}"))
        if part.attention and stage.role != "blocks":
            on = part.kept_attention > 0
            ax.add_patch(Rectangle((x, y0 + H), W, 0.3, facecolor=ATTENTION if on else REMOVED,
                                   edgecolor=REMOVED_EDGE, linewidth=0.4, gid=f"{stage.name}/{part.source}/attention"))
            if part.attention > 1:
                ax.text(x + W / 2, y0 + H + 0.15, f"{part.kept_attention}/{part.attention}", ha="center",
                        va="center", fontsize=4)
        if labels and part.kept:
            ax.text(x + W / 2, y0 + H / 2, str(part.source), ha="center", va="center", fontsize=4, color="white")
    name = stage.name.replace("_blocks", "").replace("_block", "")
    ax.text(x0 + _stage_width(stage) / 2, y0 - GAP - 0.12, name if not labels else
            f"{stage.name}: {sum(p.kept for p in stage.parts)} of {len(stage.parts)} kept (numbers: teacher block)",
            ha="center", va="top", fontsize=5 if not labels else 6)
