"""``bench fidelity``'s outputs: compute first (``summarize``: rank_stats.py on the rows), render second --
the printed tables, ``<out>/index.md``, ``<out>/fidelity.csv``, ``<out>/short_vs_long.png`` and the summary CSV.
Written files name paths relative to the working directory or ``$BLOCKSEARCH_CACHE``, never absolute ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure  # the object API: no pyplot, no global backend (Agg draws the PNG)

from blocksearch.cache import default_cache_dir
from blocksearch.bench.rank_stats import (OBJECTIVES, baselines, cost_per_budget, rank_table, recommend_budget,
                                    seed_means, seed_spread)
from blocksearch.settings import MEASURED_COLUMNS

TARGET, LOWER = 0.8, 0.6  # recommend_budget's: tau >= 0.8 with the interval's low end >= 0.6 ...
MAX_COST_FRACTION = 0.25  # ... at <= 25 % of the longest budget's KD steps (else: spend budget on the front)
# a row of results.jsonl and fidelity.csv: one student scored at one seed (kd_s: cumulative KD seconds)
ROW_COLUMNS = ("genome", "design", "source", "budget", "kd_seed", "seed", "fid", "kid", "kid_std", "alignment", "params", "macs",
               "kd_s", "eval_s")
MEASURED_FILE = "measured.csv"  # <out>/: bench search's measured table, beside the report (bench search --report)
SUMMARY_COLUMNS = ("budget", "objective", "predictor", "tau", "lo", "hi", "cost_s", "eval_s", "n")


@dataclass(frozen=True)
class Summary:
    """What the benchmark found, computed from the rows of the architectures, budgets and seeds asked for."""

    rows: list[dict]
    archs: list  # bench_fidelity.Arch
    budgets: list[int]
    seeds: list[int]
    table: list[dict]  # rank_stats.rank_table
    baselines: list[dict]
    spread: list[dict]
    cost: list[dict]
    recommended: int | None
    n_boot: int


def summarize(rows: list[dict], archs: list, budgets: list[int], seeds: list[int], n_boot: int = 2000) -> Summary:
    genomes = {a.genome for a in archs}
    rows = [r for r in rows if r["genome"] in genomes and r["budget"] in budgets and r["seed"] in seeds]
    table = rank_table(rows, n_boot) if rows else []
    cap = int(MAX_COST_FRACTION * max(budgets))
    return Summary(rows, archs, budgets, seeds, table, baselines(rows, n_boot) if rows else [], seed_spread(rows),
                   cost_per_budget(rows), recommend_budget(table, TARGET, LOWER, cap), n_boot)


def portable(path) -> str:
    """``path`` as written outputs show it: under ``$BLOCKSEARCH_CACHE``, relative to the working directory,
    else ``.../<name>`` (never an absolute path)."""
    p = Path(os.path.abspath(path))
    for base, shown in ((Path(os.path.abspath(default_cache_dir())), "$BLOCKSEARCH_CACHE"),
                        (Path(os.path.abspath(Path.cwd())), ".")):
        if p == base or p.is_relative_to(base):
            rel = p.relative_to(base).as_posix()
            return rel if shown == "." and rel != "." else f"{shown}/{rel}".rstrip("/.")
    return f".../{p.name}"


def progress_line(row: dict) -> str:
    name = f"{row['genome']:28s} {row.get('design') or '':8s}"
    if "error" in row:
        return f"{name} FAILED at budget {row['budget']}: {row['error']}"
    if "probe_out" in row:
        return (f"{name} budget {row['budget']:>5d} KD seed {row['kd_seed']}  probe: out {row['probe_out']:.4f}  "
                f"cfg {row['probe_cfg']:.4f}  guide {row['probe_guide']:.3f}  ({row['probe_s']:.1f} s)")
    align = "n/a" if row["alignment"] is None else f"{row['alignment']:.3f}"
    return (f"{name} budget {row['budget']:>5d} KD seed {row.get('kd_seed', 0)} seed {row['seed']}  fid {row['fid']:8.3f}  kid {row['kid']:.4f} "
            f"(+-{row['kid_std']:.4f})  alignment {align}  kd {row['kd_s']:6.0f} s (cumulative)  "
            f"eval {row['eval_s']:.0f} s")


# -- tables (markdown: printed and written alike) ---------------------------------------------------
def _ci(r: dict | None) -> str:
    """tau [lo, hi]; "-" where undefined (fewer than 2 architectures, or one of the rankings all tied)."""
    if r is None or math.isnan(r["tau"]):
        return "-"
    interval = "no interval" if math.isnan(r["lo"]) else f"{r['lo']:+.2f}, {r['hi']:+.2f}"
    return f"{r['tau']:+.3f} [{interval}]"


def _markdown(header: list[str], lines: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in line) + " |" for line in lines])


def tau_table(s: Summary) -> str:
    by = {(r["budget"], r["objective"]): r for r in s.table}
    cost = {c["budget"]: c["kd_s"] for c in s.cost}
    lines = [[b, f"{cost.get(b, 0):.1f}"] + [_ci(by.get((b, o))) for o in OBJECTIVES] for b in s.budgets[:-1]]
    return _markdown(["budget (KD steps)", "KD s (mean, cumulative)"]
                     + [f"{o}: tau [95% CI]" for o in OBJECTIVES], lines)


def baseline_table(s: Summary) -> str:
    lines = [[r["predictor"], r["objective"], _ci(r), r["n"]] for r in s.baselines]
    return _markdown(["predictor", f"objective at {s.budgets[-1]} steps", "tau [95% CI]", "archs"], lines)


def spread_table(s: Summary) -> str:
    by = {(r["budget"], r["objective"]): r for r in s.spread}

    def cell(b, o):
        r = by.get((b, o))
        return "-" if r is None else f"{r['median']:.4g} / {r['max']:.4g}"

    measure = s.spread[0]["measure"] if s.spread else "|a - b|"
    return _markdown(["budget"] + [f"{o} {measure}: median / max" for o in OBJECTIVES],
                     [[b] + [cell(b, o) for o in OBJECTIVES] for b in s.budgets])


def cost_table(s: Summary) -> str:
    lines = [[c["budget"], f"{c['kd_s']:.1f}", f"{c['eval_s']:.1f}", c["n"]] for c in s.cost]
    return _markdown(["budget", "KD s per architecture (mean, cumulative)", "eval s per seed (mean)", "archs"], lines)


def arch_table(s: Summary) -> str:
    lines = [[a.genome, a.design or a.source, f"{a.params / 1e6:.3f}M", f"{a.macs / 1e6:.1f}M",
              "yes" if a.attention_free else ""] for a in s.archs]
    return _markdown(["genome", "design / source", "params", "MACs", "attention-free"], lines)


def recommendation(s: Summary) -> str:
    longest = s.budgets[-1]
    if s.recommended is None:
        return (f"cheapest budget whose FID ranking matches the {longest}-step ranking: none (no budget reaches "
                f"tau >= {TARGET} with the interval's low end >= {LOWER} at <= {MAX_COST_FRACTION:.0%} of its "
                f"{longest} KD steps): spend the search's budget on the front instead")
    return (f"cheapest budget whose FID ranking matches the {longest}-step ranking: {s.recommended} KD steps "
            f"(tau >= {TARGET}, interval low end >= {LOWER}, <= {MAX_COST_FRACTION:.0%} of {longest} KD steps)")


# -- files ---------------------------------------------------------------------------------------------
def command_line(args) -> str:
    teacher = portable(args.teacher) if Path(args.teacher).exists() else args.teacher
    parts = ["blocksearch bench fidelity", f"--teacher {teacher}", f"--space {args.space}",
             f"--archs {args.archs}", f"--budgets {args.budgets}", f"--seeds {args.seeds}", f"--seed {args.seed}",
             f"--workers {args.workers}", f"--teacher-cache {args.teacher_cache}", f"--boot {args.boot}",
             f"--out {portable(args.out)}", f"--csv {portable(args.csv)}"]
    parts += [f"--eval-prompts {args.eval_prompts}"] if args.eval_prompts else []
    for flag, default in (("kd_seeds", "0"), ("extra_seed_budgets", None), ("full_seed_archs", None),
                          ("probe_budgets", "auto"), ("also", None), ("one_shot_sizes", "auto"),
                          ("kd_schedule", "constant"), ("kd_warmup", 0), ("kd_ema", 0.0)):
        value = getattr(args, flag, default)
        parts += [f"--{flag.replace('_', '-')} {value}"] if value != default else []
    parts += [f"--study {args.study}"] + ([f"--storage {args.storage}"] if args.storage else []) if args.study else []
    return " ".join(parts)


def index_md(s: Summary, args, checkpoints: Path, settings: dict) -> str:
    longest = s.budgets[-1]
    how = (f"`{command_line(args)}`\n\n"
           f"- architectures: {len(s.archs)} ({', '.join(sorted({a.source for a in s.archs}))}); budgets {s.budgets} "
           f"KD steps (0 = surgery only: the one-shot score), each continuing from the previous one's checkpoint; "
           f"generation seeds {s.seeds} (each prompt's seed + s; the FID reference set stays seed 0's); "
           f"{len(s.rows)} scored students; {complete_ladders(s)} of {len(s.archs)} ladders reached {longest} steps "
           f"at every seed\n"
           f"- KD (blocksearch run's defaults for the teacher): {_settings(settings['distill'])}\n"
           f"- evaluation (the same, without latency): {_settings(settings['eval'])}\n"
           f"- tau: Kendall's tau-b of the seed-mean scores, each short budget against {longest} steps; 95% "
           f"percentile bootstrap over architectures ({s.n_boot} resamples); KD seed 0 throughout (the other KD "
           f"seeds, and a {longest}-step reference averaged over them: predictors.md)\n"
           f"- checkpoints: `{portable(checkpoints)}` (not part of the report)\n")
    return "\n\n".join([
        "# Do short KD runs rank architectures the way long runs do?", "## How it was run", how,
        "## Architectures", arch_table(s),
        f"## Rank agreement with the {longest}-step ranking", tau_table(s),
        "## Baselines: the cost proxies' ranking", "Signed so that +1 means the larger architecture scores better "
        "(-params predicts FID and KID, +params alignment).", baseline_table(s),
        "## Seed spread", spread_table(s), "## Cost per budget", cost_table(s),
        "## Recommendation", recommendation(s),
        "Files: `results.jsonl` (one row per architecture, budget and seed), `fidelity.csv` (the same rows), "
        "`short_vs_long.png` (FID at each short budget against the longest)."]) + "\n"


def complete_ladders(s: Summary) -> int:
    """Architectures scored at every budget and seed (a run in progress has fewer)."""
    need = {(b, seed) for b in s.budgets for seed in s.seeds}
    return sum(need <= {(r["budget"], r["seed"]) for r in s.rows if r["genome"] == a.genome} for a in s.archs)


def _settings(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None)


def write_rows_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ROW_COLUMNS)
        writer.writeheader()
        writer.writerows({k: r.get(k) for k in ROW_COLUMNS} for r in sorted(rows, key=lambda r: (
            r["params"], r["genome"], r["budget"], r["seed"])))


def write_summary_csv(s: Summary, path: Path, command: str) -> None:
    rows = [r | {"predictor": "score"} for r in s.table]
    rows += [{"budget": r["budget"], "objective": r["objective"], "predictor": r["predictor"], "tau": r["tau"],
              "lo": r["lo"], "hi": r["hi"], "n": r["n"]} for r in s.baselines]
    text = io.StringIO()
    writer = csv.DictWriter(text, SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# measured by: {command}\n" + text.getvalue())


def write_measured_table(s: Summary, path: Path, command: str) -> int:
    """``bench search``'s measured table (settings.MEASURED_COLUMNS): per architecture whose ladder reached the
    longest budget, its seed-mean FID there (over KD seeds too, where ``s.rows`` hold more than one) and its
    params; latency_ms blank (not measured by this benchmark). The number of architectures written."""
    longest = s.budgets[-1]
    means = seed_means(s.rows)
    params = {r["genome"]: r["params"] for r in s.rows}
    done = [a.genome for a in s.archs if (a.genome, longest) in means]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(MEASURED_COLUMNS)
    writer.writerows([g, round(means[(g, longest)]["fid"], 4), params[g], ""] for g in done)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# measured by: {command} (FID at {longest} KD steps, mean over generation seeds "
                    f"{','.join(map(str, s.seeds))} within a KD seed, then over the KD seeds trained that long; "
                    f"latency not measured)\n" + text.getvalue())
    return len(done)


def plot_short_vs_long(s: Summary, path: Path, objective: str = "fid") -> None:
    """One panel per short budget: x the seed-mean score there, y at the longest budget; BK designs labelled."""
    means, longest, short = seed_means(s.rows), s.budgets[-1], s.budgets[:-1]
    taus = {r["budget"]: r["tau"] for r in s.table if r["objective"] == objective}
    fig = Figure(figsize=(3.3 * len(short), 3.4))
    axes = fig.subplots(1, len(short), squeeze=False)
    for ax, budget in zip(axes[0], short):
        for a in s.archs:
            x, y = means.get((a.genome, budget)), means.get((a.genome, longest))
            if x is None or y is None:
                continue
            ax.scatter(x[objective], y[objective], s=22, color="C3" if a.design else "C0")
            if a.design:
                ax.annotate(a.design, (x[objective], y[objective]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        tau = taus.get(budget)
        name = "0 steps (one-shot)" if budget == 0 else f"{budget} steps"
        ax.set_title(name + (f", tau {tau:+.2f}" if tau is not None else ""), fontsize=9)
        ax.set_xlabel(f"{objective} at {budget} steps", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel(f"{objective} at {longest} steps", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def write_outputs(s: Summary, args, out: Path, checkpoints: Path, table: Summary | None = None) -> None:
    """Print the tables and the recommendation; write index.md, fidelity.csv, short_vs_long.png, --csv, and
    bench search's measured table from ``table`` (default ``s``: it may hold more architectures)."""
    longest = s.budgets[-1]
    print(f"\n{complete_ladders(s)} of {len(s.archs)} ladders complete; rank agreement with the {longest}-step "
          f"ranking (Kendall tau-b, 95% bootstrap interval):")
    print(tau_table(s))
    print("\nbaselines, signed so that +1 = larger scores better (-params predicts FID/KID, +params alignment):")
    print(baseline_table(s))
    print("\nseed spread over architectures:")
    print(spread_table(s))
    print("\ncost per budget:")
    print(cost_table(s))
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads((out / "settings.json").read_text())
    (out / "index.md").write_text(index_md(s, args, checkpoints, settings))
    write_rows_csv(s.rows, out / "fidelity.csv")
    if s.rows:
        plot_short_vs_long(s, out / "short_vs_long.png")
    write_summary_csv(s, Path(args.csv), command_line(args))
    table = table or s
    n = write_measured_table(table, Path(args.table), command_line(args)) if table.rows else 0
    if table.rows:  # the same table in the report folder: bench search --report OUT reads it there
        write_measured_table(table, out / MEASURED_FILE, command_line(args))
    print("\n" + recommendation(s))
    print(f"results in {portable(out)}/ (index.md, results.jsonl, fidelity.csv, short_vs_long.png); "
          f"summary in {portable(args.csv)}; bench search's measured table ({n} architectures) in "
          f"{portable(args.table)}")
