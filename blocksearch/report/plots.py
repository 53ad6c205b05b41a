"""The report's plots: pareto.png (matplotlib's object API: no pyplot state) and index.html's plotly figures.

Every front point and reference design is labelled (its trial number or design name); legends sit outside the
axes (below them), so that no legend hides a point (tests/test_report_pictures.py checks the drawn extents); a
first stage rings the students its rung promoted. Hovering a front student or reference design in index.html
shows its block diagram (pictures.py).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import plotly.graph_objects as go
from matplotlib.figure import Figure  # the object API: no pyplot, no global backend (Agg draws the PNG)
from matplotlib.ticker import EngFormatter

from blocksearch.objectives import TABLE, UNIT, fmt
from blocksearch.report.compute import ParetoReport, TrialPoint
from blocksearch.report.pictures import Pictures

FRONT_COLOR, OTHER_COLOR, REF_COLOR, PROMOTED_COLOR = "#d62728", "#9e9e9e", "#1f77b4", "#2ca02c"
LABELS = {o.name: o.label for o in TABLE if o.label}  # axis titles (objectives.py)


def _label(r: ParetoReport, key: str) -> str:
    """An objective's label in the study's words: a transformer study's "transformer parameters"."""
    return LABELS.get(key, key).replace("U-Net", r.denoiser)


def _hover(r: ParetoReport, t: TrialPoint) -> str:
    values = " · ".join(f"{o} {fmt(o, v)}" for o, v in zip(r.objectives, t.values))
    where = "on the Pareto front" if t.on_front else f"rank {t.rank} (dominated)"
    arch = re.sub(r"; (?=down_blocks|mid_block|transformer_blocks|single_transformer_blocks)", "<br>",
                  html.escape(t.architecture))  # a line per stage, or per block group
    return f"<b>{html.escape(t.label)}</b> · {where}<br>{values}<br>{t.genome}<br>{arch}"



# -- index.html's figures ---------------------------------------------------------------------------
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0)  # outside the axes


def figures(r: ParetoReport) -> list[tuple[str, object]]:
    front = [t for t in r.ranked if t.on_front]
    groups = [("Pareto front", front, FRONT_COLOR, 11, "circle"),
              ("dominated", [t for t in r.ranked if not t.on_front], OTHER_COLOR, 8, "circle")]
    refs = [r.trial(n) for n in r.reference_trials.values()]
    promoted = [r.trial(n) for n in r.promoted if r.trial(n).values is not None]
    y, out = r.objectives[0], []
    for j, x in enumerate(r.objectives[1:], start=1):
        fig = go.Figure()
        for name, pts, color, size, symbol in groups:
            labelled = pts is front
            fig.add_trace(go.Scatter(
                x=[t.values[j] for t in pts], y=[t.values[0] for t in pts], mode="markers+text" if labelled else
                "markers", name=name, text=[point_name(t) for t in pts] if labelled else None,
                textposition="bottom right", marker=dict(color=color, size=size, symbol=symbol),
                hovertext=[_hover(r, t) for t in pts], hoverinfo="text", customdata=[t.number for t in pts]))
        if promoted:
            fig.add_trace(go.Scatter(
                x=[t.values[j] for t in promoted], y=[t.values[0] for t in promoted], mode="markers",
                name=f"promoted to {r.promoted_to}", marker=dict(color="rgba(0,0,0,0)", size=18, symbol="circle",
                                                               line=dict(color=PROMOTED_COLOR, width=2)),
                hovertext=[_hover(r, t) for t in promoted], hoverinfo="text", customdata=[t.number for t in promoted]))
        fig.add_trace(go.Scatter(
            x=[t.values[j] for t in refs], y=[t.values[0] for t in refs], mode="markers+text",
            name=f"{r.designs_name} reference designs", text=[t.design or t.label for t in refs], textposition="top center",
            marker=dict(color=REF_COLOR, size=18, symbol="star-open", line=dict(width=2)),
            hovertext=[_hover(r, t) for t in refs], hoverinfo="text", customdata=[t.number for t in refs]))
        fig.update_layout(title=f"{_label(r, y)} vs {_label(r, x)}", xaxis_title=_label(r, x),
                          yaxis_title=_label(r, y), height=500, template="plotly_white", legend=LEGEND_BELOW)
        out.append((f"plot-{y}-{x}", fig))
    if len(r.objectives) >= 3:
        a, b, c = r.objectives[1], r.objectives[2], r.objectives[0]
        fig = go.Figure()
        for name, pts, color, size, symbol in groups + [(f"{r.designs_name} reference designs", refs, REF_COLOR, 9,
                                                          "diamond-open")]:
            fig.add_trace(go.Scatter3d(
                x=[t.values[1] for t in pts], y=[t.values[2] for t in pts], z=[t.values[0] for t in pts],
                mode="markers", name=name, marker=dict(color=color, size=size * 0.6, symbol=symbol),
                hovertext=[_hover(r, t) for t in pts], hoverinfo="text", customdata=[t.number for t in pts]))
        fig.update_layout(title=f"the front across {a}, {b} and {c} (drag to rotate)", height=620,
                          scene=dict(xaxis_title=a, yaxis_title=b, zaxis_title=c), template="plotly_white",
                          legend=LEGEND_BELOW)
        out.append(("plot-3d", fig))
    alignment = _alignment_figure(r)
    if alignment is not None:
        out.append(("plot-alignment", alignment))
    return out


def _alignment_figure(r: ParetoReport):
    """FID against text alignment for every completed student; infeasible ones (the text-aware rule or
    the parameter budget) as crosses: FID alone does not see whether a student follows the prompt."""
    done = [t for t in r.trials if t.state == "COMPLETE" and t.cached_from is None
            and t.metrics.get("alignment") is not None and t.metrics.get("fid") is not None]
    if not done:
        return None
    fig = go.Figure()
    for name, pts, color, symbol in (("feasible", [t for t in done if t.feasible], FRONT_COLOR, "circle"),
                                     ("infeasible", [t for t in done if not t.feasible], OTHER_COLOR, "x")):
        fig.add_trace(go.Scatter(x=[t.metrics["alignment"] for t in pts], y=[t.metrics["fid"] for t in pts],
                                 mode="markers", name=name, marker=dict(color=color, size=10, symbol=symbol),
                                 hovertext=[f"{html.escape(t.label)}<br>{t.genome}" for t in pts], hoverinfo="text"))
    teacher = r.attrs.get("teacher_metrics") or {}
    if teacher.get("alignment") is not None:
        fig.add_vline(x=teacher["alignment"], line_dash="dot", annotation_text="teacher")
    fig.update_layout(title="FID vs text alignment (crosses: infeasible, never on the front)",
                      xaxis_title=LABELS["alignment"], yaxis_title=LABELS["fid"], height=440, template="plotly_white",
                      legend=LEGEND_BELOW)
    return fig


# a hovered point shows its block diagram (diagrams/, inlined as data URIs) in a panel beside the plots
HOVER_JS = """<div id='diagram-panel' style='position:fixed;right:8px;top:8px;display:none;background:white;
border:1px solid #ccc;padding:4px;z-index:10'><img id='diagram' style='max-width:460px'></div><script>
(function(){var D=%s, panel=document.getElementById('diagram-panel'), img=document.getElementById('diagram');
document.querySelectorAll('.plotly-graph-div').forEach(function(g){
g.on('plotly_hover',function(e){var n=e.points[0].customdata; if(D[n]){img.src=D[n];panel.style.display='block';}});
g.on('plotly_unhover',function(){panel.style.display='none';});});})();</script>"""


def hover_diagrams(pictures: Pictures | None, folder: Path | None) -> str:
    """The hover panel and its script: trial number -> its diagram as a data URI."""
    if pictures is None or folder is None or not pictures.diagrams:
        return ""
    uris = {n: "data:image/png;base64," + base64.b64encode((folder / p).read_bytes()).decode()
            for n, p in pictures.diagrams.items()}
    return HOVER_JS % json.dumps(uris)


# -- pareto.png ------------------------------------------------------------------------------------
def point_name(t: TrialPoint) -> str:
    """A point's label on the plots: its design name, else its trial number."""
    return t.design or f"#{t.number}"


def render_png(r: ParetoReport, path: Path) -> Figure:
    """One panel per cost objective against the first; every front point and reference design labelled; the
    legend below the panels, outside every axes, so that it hides no point (tests check the drawn extents)."""
    xs = list(range(1, len(r.objectives))) or [0]
    fig = Figure(figsize=(5.2 * len(xs), 4.6))
    axes = fig.subplots(1, len(xs), squeeze=False)
    for ax, j in zip(axes[0], xs):
        if not r.ranked:
            ax.text(0.5, 0.5, f"{r.study}: no completed trials yet", ha="center", va="center")
            ax.set_axis_off()
            continue
        _panel(r, ax, j)
    hv = "" if r.hypervolume is None else f", hypervolume {r.hypervolume:.3f}"
    fig.suptitle(f"{r.study}: {len(r.front)} of {len(r.ranked)} completed trials Pareto-optimal across "
                 f"{', '.join(r.objectives)} (red){hv}", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    fig.savefig(path, dpi=150)
    return fig


def _panel(r: ParetoReport, ax, j: int) -> None:
    """Objective ``j`` against the first: dominated, front, promoted (a first stage), reference designs."""
    y = r.objectives[0]
    other = [t for t in r.ranked if not t.on_front]
    front = [r.trial(n) for n in r.front]
    ax.scatter([t.values[j] for t in other], [t.values[0] for t in other], c=OTHER_COLOR, s=22, label="dominated")
    ax.scatter([t.values[j] for t in front], [t.values[0] for t in front], c=FRONT_COLOR, s=36,
               label="Pareto front", zorder=3)
    promoted = [r.trial(n) for n in r.promoted if r.trial(n).values is not None]
    if promoted:
        ax.scatter([t.values[j] for t in promoted], [t.values[0] for t in promoted], s=110, facecolors="none",
                   edgecolors=PROMOTED_COLOR, linewidths=1.4, zorder=5, label=f"promoted to {r.promoted_to}")
    refs = [r.trial(n) for n in r.reference_trials.values()]
    if refs:
        ax.scatter([t.values[j] for t in refs], [t.values[0] for t in refs], marker="*", s=220, facecolors="none",
                   edgecolors=REF_COLOR, linewidths=1.5, zorder=4, label=f"{r.designs_name} designs")
    for t in {t.number: t for t in (*front, *refs, *promoted)}.values():
        ax.annotate(point_name(t), (t.values[j], t.values[0]), textcoords="offset points", xytext=(6, 5),
                    fontsize=7, color=REF_COLOR if t.design else FRONT_COLOR if t.on_front else PROMOTED_COLOR)
    if UNIT.get(r.objectives[j]) == "count":  # params, macs
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel(_label(r, r.objectives[j]))
    ax.set_ylabel(_label(r, y))
    ax.grid(alpha=0.3)
    ax.margins(0.12)  # room for the labels at the edges
