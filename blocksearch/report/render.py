"""Render a ParetoReport: index.html (plotly, self-contained), pareto.png (matplotlib; both drawn by plots.py),
trials.csv, README.md, and the students' pictures (pictures.py: sample grid, block diagrams; artifacts.py).

Renderers only format what :func:`blocksearch.report.compute.build_report` computed; they compute nothing.
Reports travel: every absolute path is written relative (:func:`portable`), so a committed report
reads the same on any machine. plotly and matplotlib are imported only when a figure is drawn.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import re
import time
from pathlib import Path

from plotly.offline import get_plotlyjs

from blocksearch.cache import atomic_write, default_cache_dir, write_text
from blocksearch.objectives import fmt
from blocksearch.report.render_noise import noise_line, reference_md, with_spread
from blocksearch.report.curves import SMOOTH, front_curves, render_curves_png
from blocksearch.report.artifacts import dashboard_command, upload_pictures
from blocksearch.report.compute import ParetoReport, load_report
from blocksearch.report.pictures import Pictures, draw_pictures
from blocksearch.report.plots import LABELS, figures, hover_diagrams, point_name, render_png  # noqa: F401 (LABELS: tests)
from blocksearch.study import rung_name



REPOSITORY = Path(__file__).resolve().parents[2]  # blocksearch's repository (or its installation)
# an absolute path: at the start, after a space, '=', a bracket, a quote or a comma, or in a sqlite:/// URL
_ABSOLUTE = re.compile(r"(?:^|(?<=[\s=(\[`'\",])|(?<=sqlite:///))/[^\s`'\",;|()\[\]<>]+")


def _speed_head(r: ParetoReport) -> tuple[str, ...]:
    return tuple(h.replace("U-Net", r.denoiser) for h in SPEED_HEAD)


def default_report_dir(study: str) -> Path:
    return Path.cwd() / "reports" / study


def write_report(study_name: str, storage: str | None = None, out: str | Path | None = None,
                 reference_point=None) -> Path:
    """Build and render the report of ``study_name`` into ``out`` (default reports/<study>/)."""
    folder = Path(out) if out else default_report_dir(study_name)
    render_all(load_report(study_name, storage, reference_point), folder)
    return folder


def render_all(report: ParetoReport, folder: Path) -> Pictures:
    """Write every file of the report; upload each trial's pictures to the study's artifact store
    (artifacts.py). Returns what was drawn (and how long the pictures took)."""
    folder.mkdir(parents=True, exist_ok=True)
    curves = front_curves(report)  # read before the paths are made portable
    if curves:
        render_curves_png(curves, folder / CURVES_PNG, f"{report.study}: the front students and reference designs")
    pictures = draw_pictures(report, folder)  # the students' folders too: before the paths are made portable
    t0 = time.perf_counter()
    upload_pictures(report, pictures, folder)
    upload_s = round(time.perf_counter() - t0, 3)
    pictures = dataclasses.replace(pictures, seconds={**pictures.seconds, "artifacts_s": upload_s})
    report = portable(report, folder)
    # each file whole or not at all: a temp file renamed; a full disk is one line (cache.atomic_write)
    write_text(folder / "index.html", render_html(report, pictures, folder))
    atomic_write(folder / "pareto.png", lambda tmp: render_png(report, tmp), keep_suffix=True)
    atomic_write(folder / "trials.csv", lambda tmp: render_csv(report, tmp))
    write_text(folder / "README.md", render_markdown(report, curves=bool(curves), pictures=pictures))
    return pictures


CURVES_PNG = "curves.png"


# -- reports that travel ---------------------------------------------------------------------------
PATHS_NOTE = ("paths: blocksearch's own files (search spaces, toy assets) and runs inside its repository are "
              "relative to the repository, other files relative to this folder, files in the home folder as ~/...")


def portable_path(path: str, folder: Path) -> str:
    """``path`` (absolute) written to read the same on any machine: relative to blocksearch's repository
    when inside it, ``$BLOCKSEARCH_CACHE/...`` in the cache folder, else relative to ``folder`` (the
    report's) when near it, else ``~/...`` in the home folder, else relative to ``folder``."""
    p, folder = Path(path), folder.resolve()
    if p.is_relative_to(REPOSITORY):
        return p.relative_to(REPOSITORY).as_posix()
    if p.is_relative_to(default_cache_dir()):
        return "$BLOCKSEARCH_CACHE/" + p.relative_to(default_cache_dir()).as_posix()
    if p.is_relative_to(Path.home()) and not p.is_relative_to(folder.parent.parent):
        return "~/" + p.relative_to(Path.home()).as_posix()
    return os.path.relpath(p, folder)


def _portable(value, folder: Path):
    """``value`` with the absolute paths in its strings (in dicts, lists and tuples too) made portable."""
    if isinstance(value, str):
        def rel(m: re.Match) -> str:
            path = m.group(0).rstrip(".:")
            return portable_path(path, folder) + m.group(0)[len(path):]
        return _ABSOLUTE.sub(rel, value)
    if isinstance(value, dict):
        return {k: _portable(v, folder) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_portable(v, folder) for v in value)
    return value


def portable(r: ParetoReport, folder: Path) -> ParetoReport:
    """The report as written to ``folder``: every absolute path in it (``student_dir``, the storage URL,
    the search-space file, judge weights, the command...) made portable by :func:`portable_path`."""
    def each_field(obj, **fixed):
        return dataclasses.replace(obj, **{f.name: _portable(getattr(obj, f.name), folder)
                                           for f in dataclasses.fields(obj) if f.name not in fixed}, **fixed)

    return each_field(r, trials=tuple(each_field(t) for t in r.trials), dominations=r.dominations)


def _summary(r: ParetoReport) -> str:
    """Trial counts by state; skipped sampler repeats (closed FAIL so samplers avoid them) counted apart."""
    states: dict[str, int] = {}
    for t in r.trials:
        if not t.skipped:
            states[t.state] = states.get(t.state, 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "none"
    notes = [f"{n} {what}" for n, what in (
        (sum(t.skipped for t in r.trials),
         "sampler repeats of an already-trained Genome, closed without training and not ranked"),
        (sum(t.cached_from is not None and not t.skipped for t in r.trials),
         "cache hits (a Genome already trained; not ranked again)"),
        (sum(not t.feasible for t in r.trials), "infeasible: below the text-aware alignment floor or over --max-params (not ranked)")) if n]
    return f"{len(r.trials)} trials ({counts})" + ("; " + "; ".join(notes) if notes else "")


# -- index.html ------------------------------------------------------------------------------------
def render_html(r: ParetoReport, pictures: Pictures | None = None, folder: Path | None = None) -> str:
    """One self-contained page: plotly.js is embedded inline (no CDN: the page works offline); hovering a
    front student or reference design shows its block diagram."""
    body = [f"<h1>blocksearch report: {html.escape(r.study)}</h1>",
            f"<p>{html.escape(_summary(r))}; objectives: {', '.join(f'{o} ({d})' for o, d in zip(r.objectives, r.directions))}."
            f" Every trial: <a href='trials.csv'>trials.csv</a>; summary: <a href='README.md'>README.md</a>.</p>"]
    if not r.ranked:
        body.append("<p id='no-trials'><b>No completed trials yet</b>: nothing to plot. "
                    "Run or resume the search with <code>blocksearch run</code>.</p>")
    else:
        hv = "-" if r.hypervolume is None else f"{r.hypervolume:.4f}"
        ref = ", ".join(f"{o} {fmt(o, v)}" for o, v in zip(r.objectives, r.reference_point))
        body.append(f"<p>Pareto front: {len(r.front)} of {len(r.ranked)} completed trials (red); {r.designs_name} reference "
                    f"designs are the blue stars. Hypervolume {hv} with reference point ({html.escape(ref)}): "
                    f"{html.escape(r.reference_rule)}. Hover over a point for its architecture (a front student or reference "
                    "design: its block diagram).</p>")
        for div_id, fig in figures(r):
            body.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                                    config={"displaylogo": False}))
    body.append(_html_table(r))
    body.append(_html_speed(r))
    if r.ranked:
        body.append(hover_diagrams(pictures, folder))
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>blocksearch: {html.escape(r.study)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            + "\n".join(body) + "</body></html>")


def _html_table(r: ParetoReport) -> str:
    if not r.front:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "design", *r.objectives, "architecture vs the teacher"])
    rows = []
    for n in r.front:
        t = r.trial(n)
        cells = [str(t.number), t.design or "", *(with_spread(r, o, v) for o, v in zip(r.objectives, t.values)),
                 t.architecture]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f"<h2>Pareto front</h2><table id='front'><tr>{head}</tr>{''.join(rows)}</table>"
            f"<p id='noise'>{html.escape(noise_line(r))}</p>")


def _html_speed(r: ParetoReport) -> str:
    rows = speed_rows(r)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("", *_speed_head(r)))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (who, *cells)) + "</tr>"
                   for who, cells in rows)
    return f"<h2>Speed and memory: the teacher and the front</h2><table id='speed'><tr>{head}</tr>{body}</table>"


# -- trials.csv ------------------------------------------------------------------------------------
def render_csv(r: ParetoReport, path: Path) -> None:
    """Every trial, one row: state, genome, design, rank, objective values, metrics, timings, error."""
    metric_keys = sorted({k for t in r.trials for k, v in t.metrics.items() if not isinstance(v, (dict, list))})
    timing_keys = sorted({k for t in r.trials for k in t.timings})
    header = ["number", "state", "genome", "design", "rank", "on_front", *r.objectives,
              *(f"metrics.{k}" for k in metric_keys), *(f"timings.{k}" for k in timing_keys),
              "duration_s", "cached_from", "feasible", "pruned_at", "seed_scores", "architecture", "student_dir",
              "error"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(header)
        for t in r.trials:
            out.writerow([t.number, t.state, t.genome or "", t.design or "", "" if t.rank is None else t.rank,
                          t.on_front, *(t.values or ("",) * len(r.objectives)),
                          *(t.metrics.get(k, "") for k in metric_keys), *(t.timings.get(k, "") for k in timing_keys),
                          "" if t.duration_s is None else round(t.duration_s, 3),
                          "" if t.cached_from is None else t.cached_from, t.feasible,
                          json.dumps(t.pruned_at) if t.pruned_at else "",
                          json.dumps(list(t.seed_scores)) if t.seed_scores else "", t.architecture,
                          t.student_dir or "", t.error or ""])


# -- README.md -------------------------------------------------------------------------------------
def _kv(d) -> str:
    if not isinstance(d, dict):
        return f"`{d}`"
    return ", ".join(f"{k}={v}" for k, v in d.items()) or "-"


def render_markdown(r: ParetoReport, curves: bool = False, pictures: Pictures | None = None) -> str:
    lines = [f"# blocksearch report: `{r.study}`", "", "![Pareto front](pareto.png)", "",
             f"Study `{r.study}` in `{r.storage}`: {_summary(r)}. Objectives: "
             + ", ".join(f"{o} ({d})" for o, d in zip(r.objectives, r.directions))
             + ". Interactive plots: [index.html](index.html) (hover a point for its architecture); every "
               "trial: [trials.csv](trials.csv).", ""]
    if r.teacher_note:
        lines += [f"Note: {r.teacher_note}.", ""]
    lines += _budget_md(r)
    if not r.ranked:
        lines += ["**No completed trials yet**: there is no front to show. Run or resume the search with "
                  "`blocksearch run`; finished trials are kept in the study.", ""]
    else:
        lines += _front_md(r) + _promoted_md(r) + _samples_md(r, pictures) + _diagrams_md(r, pictures)
        lines += _speed_md(r) + (_curves_md(r) if curves else []) + _hypervolume_md(r)
        lines += reference_md(r) + _infeasible_md(r)
    lines += _measured_md(r) + _unfinished_md(r)
    return "\n".join(lines) + "\n"


def _promoted_md(r: ParetoReport) -> list[str]:
    if not r.promoted:
        return []
    names = ", ".join(f"{point_name(r.trial(n))} (trial {n})" for n in r.promoted)
    return [f"Promoted to the rung `{r.promoted_to}` (green rings in pareto.png): {names}.", ""]


def _samples_md(r: ParetoReport, p: Pictures | None) -> list[str]:
    """The sample grid: which rows, on which prompts and seeds, at which settings; the models without a row."""
    if p is None or p.grid is None:
        return [f"No sample grid: {p.missing[0][1]}.", ""] if p is not None and p.missing else []
    s = p.samples
    missing = "; ".join(f"{who}: {why}" for who, why in p.missing)
    return ["## Samples", "", f"![the teacher, the front students and the reference designs on the same "
            f"prompts]({p.grid})", "",
            f"One row per model ({', '.join(p.labels)}), one column per prompt: {len(s.prompts)} (prompt, seed) "
            f"pairs spread over the evaluation set, the same in every row, generated as the evaluation generated "
            f"its images ({s.steps} sampler steps, guidance {s.guidance}, "
            f"{'the teacher' + chr(39) + 's resolution' if s.resolution is None else f'{s.resolution} px'}), so "
            f"each row holds images its FID was computed on. Seeds: {', '.join(map(str, s.seeds))}."
            + (f" No row: {missing}." if missing else ""), ""]


def _diagrams_md(r: ParetoReport, p: Pictures | None) -> list[str]:
    """One small block diagram per front student and reference design (diagram.py)."""
    if p is None or not p.diagrams:
        return []
    lines = ["## Architectures", "", f"What each front student and reference design keeps of the teacher's "
             f"{r.denoiser}, drawn from the family's own description of it (its `layout`); {p.key}.", ""]
    for n, path in p.diagrams.items():
        t = r.trial(n)
        lines += [f"![{point_name(t)}: {t.genome}]({path})", ""]
    command = dashboard_command(r)
    if command:
        lines += [f"optuna-dashboard shows each trial's diagram and sample row as artifacts: `{command}`.", ""]
    return lines


def _curves_md(r: ParetoReport) -> list[str]:
    rung = (r.attrs.get("rung") or {}).get("of")
    return ["## Learning curves", "", f"![KD loss per step]({CURVES_PNG})", "",
            "The KD loss of each front student (solid) and reference design (dashed) at every step it trained"
            + (f", from surgery through study `{rung}` and this rung" if rung else "")
            + f"; a {SMOOTH}-step moving mean of one batch per step (each trial's `losses.jsonl`).", ""]


def _budget_md(r: ParetoReport) -> list[str]:
    """Every student here trained the same KD budget; a rung says where its students came from."""
    return _budget_lines(r) + _from_study_md(r)


def _from_study_md(r: ParetoReport) -> list[str]:
    """The reference designs whose scores this study took from ``bench fidelity``'s (search/study_reuse.py)."""
    taken = [t for t in r.trials if t.from_study]
    if not taken:
        return []
    names = ", ".join(f"{t.design} (trial {t.number}, reproduced after {t.from_study.get('checked_at')} KD steps)"
                      for t in taken)
    return [f"**Taken from bench fidelity's study**: {names}. This run's own KD of each, to the step count named, "
            f"gave the study's probe scores there to 0.1 %, so its quality scores here are the study's, KD seed 0 after "
            f"{taken[0].from_study.get('steps')} steps (what its own KD would give); its cost and speed were "
            f"measured here, its learning curve stops at that step count, and no student of it was written "
            f"(`blocksearch distill --design NAME` trains one).", ""]


def _budget_lines(r: ParetoReport) -> list[str]:
    steps, rung = (r.attrs.get("distill") or {}).get("steps"), r.attrs.get("rung")
    if rung:
        return [f"**A rung of study `{rung['of']}`**: every student here trained {steps} KD steps, continued from "
                f"its checkpoint in study `{rung['from']}` -- the students on or within noise of that study's front and "
                f"the reference designs it left open (a reference design that a searched one dominates there on "
                f"quality beyond noise stops), by default at most a quarter of its feasible searched students, in whole "
                f"rounds of the trials run in parallel (at least one; one taken from bench fidelity's study takes "
                f"no lane). Only students "
                f"of this budget are compared here.", ""]
    rungs = r.attrs.get("rungs")
    if steps is not None and rungs:
        names = ", ".join(f"`{rung_name(r.study, n)}`" for n in rungs)
        return [f"Every student here trained {steps} KD steps; those near the front continue to longer budgets "
                f"in {names}, the front to pick from.", ""]
    return [f"Every student here trained {steps} KD steps.", ""] if steps is not None else []


def _front_md(r: ParetoReport) -> list[str]:
    extra = [k for k in ("macs", "alignment", "kid") if k not in r.objectives
             and (k != "kid" or any(r.trial(n).metrics.get(k) is not None for n in r.front))]
    head = ["trial", "design", *r.objectives, *extra, "architecture vs the teacher (diffusers modules)"]
    lines = [f"## Pareto front ({len(r.front)} of {len(r.ranked)} completed trials)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in r.front:
        t = r.trial(n)
        cells = [str(t.number), t.design or "", *(with_spread(r, o, v) for o, v in zip(r.objectives, t.values)),
                 *(with_spread(r, k, t.metrics.get(k)) for k in extra), t.architecture]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


SPEED = ("params", "latency_ms", "e2e_ms", "memory_mb", "weights_mb")
SPEED_HEAD = ("U-Net params", "U-Net step", "one image, end to end", "peak memory, U-Net step", "weights")


def speed_rows(r: ParetoReport) -> list[tuple[str, list[str]]]:
    """(who, [params, U-Net step latency, end-to-end latency, peak memory, weights]) for the teacher (when
    the study measured it) and each front student: what a user who ships a pipeline compares."""
    rows = []
    teacher = r.attrs.get("teacher_metrics")
    if teacher:
        rows.append(("teacher", [fmt(k, teacher.get(k)) for k in SPEED]))
    for n in r.front:
        t = r.trial(n)
        rows.append((t.label, [fmt(k, t.metrics.get(k)) for k in SPEED]))
    return rows


def _speed_md(r: ParetoReport) -> list[str]:
    how = [(t.metrics.get("measured") or {}) for t in r.ranked]
    target = next((h["latency"] for h in how if isinstance(h, dict) and isinstance(h.get("latency"), dict)), None)
    where = (f" on {target.get('device_name', target.get('device'))} ({target.get('dtype')}, "
             f"{target.get('torch_threads')} thread(s))" if target else "")
    lines = [f"## Speed and memory: the teacher and the front{where}", "",
             "| | " + " | ".join(_speed_head(r)) + " |", "|" + "---|" * (len(SPEED_HEAD) + 1)]
    lines += ["| " + " | ".join([who, *cells]) + " |" for who, cells in speed_rows(r)]
    return lines + ["", "End to end: text encoder + the evaluation's sampler steps with classifier-free guidance + "
                        "VAE decode, one image. Each latency was timed while no other blocksearch process trained "
                        "(the measurement slot) and is cached by architecture, device, dtype, resolution and "
                        "threads.", ""]


def _infeasible_md(r: ParetoReport) -> list[str]:
    bad = [t for t in r.trials if t.state == "COMPLETE" and not t.feasible and t.cached_from is None]
    if not bad:
        return []
    lines = ["## Infeasible students (never on the front)", "",
             "A constraint failed: the text-aware rule (alignment below `--min-alignment` x the teacher's: the "
             "student ignores the prompt) or `--max-params`.", "",
             "| trial | genome | FID | alignment | params |", "|---|---|---|---|---|"]
    lines += [f"| {t.number} | {t.genome} | {fmt('fid', t.metrics.get('fid'))} | "
              f"{fmt('alignment', t.metrics.get('alignment'))} | {fmt('params', t.metrics.get('params'))} |"
              for t in bad]
    return lines + [""]


def _hypervolume_md(r: ParetoReport) -> list[str]:
    if r.hypervolume is None:
        return ["## Hypervolume", "", "Not defined: the [0, r] box needs positive objective values.", ""]
    ref = ", ".join(f"{o} {fmt(o, v)}" for o, v in zip(r.objectives, r.reference_point))
    lines = ["## Hypervolume", "", f"**{r.hypervolume:.4f}** with reference point r = ({ref}); {r.reference_rule}."]
    if r.reference_hypervolume is not None:
        lines.append(f"The {r.designs_name} reference designs alone reach {r.reference_hypervolume:.4f} with the same r.")
    return lines + [""]


def _measured_md(r: ParetoReport) -> list[str]:
    a = r.attrs
    lines = ["## How these numbers were measured", "",
             f"- teacher: `{a.get('teacher', '?')}`; search space: `{a.get('space', '?')}` ({a.get('space_path', '?')})",
             f"- device: `{a.get('device', '?')}`",
             f"- command: `{a.get('command', '?')}`",
             f"- {PATHS_NOTE}",
             f"- distillation per trial: {_kv(a.get('distill', '?'))}",
             f"- evaluation per trial: {_kv(a.get('eval', '?'))}"]
    measured = [t for t in r.ranked if t.metrics.get("measured")]  # a trial that measured its scores, if any
    sample = next((t for t in measured if not t.from_study), measured[0] if measured else None)
    if sample is not None:
        lines.append(f"- per metric (as recorded by trial {sample.number}):")
        lines += [f"  - {k}: {_kv(v)}" for k, v in sample.metrics["measured"].items()]
    return lines + ["- Pareto front: non-dominated sorting (NSGA-II) of the completed trials; pruned (early-stopped) "
                    "and failed trials never enter it.", ""]


def _unfinished_md(r: ParetoReport) -> list[str]:
    rest = [t for t in r.trials if t.state != "COMPLETE" and not t.skipped]
    if not rest:
        return []
    lines = ["## Trials that did not complete", "", "| trial | state | genome | error |", "|---|---|---|---|"]
    for t in rest:
        error = (t.error or "").replace("|", "\\|").replace("\n", " ")
        if t.pruned_at:
            error = error or f"early-stopped at {_kv(t.pruned_at)}"
        lines.append(f"| {t.number} | {t.state} | {t.genome or ''} | {error} |")
    return lines + [""]
