"""``bench fidelity``'s verdict on the cheap predictors: compute first (``predictor_table``), render second.

Each predictor (the held-out KD probe's scores, the training-loss curve's features, FID and alignment at the
short budget, the combined leave-one-architecture-out regression, params / MACs as baselines, and, for a family
that scores its blocks without training, the one-shot importance of the blocks a student removes) is ranked
against FID at the longest budget (the mean over KD seeds and generation seeds) by Kendall's tau-b with a
bootstrap interval (rank_stats.py), over all architectures and over the text-following ones (alignment at
the longest budget >= the text rule's floor). KD-seed and generation-seed spreads are kept apart. The
selection rule, over the scores that keep text-blind students out of the first stage (FID's images, or a
probe score at a budget where a text rule separates): the cheapest predictor whose tau over the text-following
architectures is >= 0.8 with the interval's low end >= 0.6 at <= 25 % of the longest budget's KD steps; else
the best one measured, said so -- or, by the one-standard-error rule (Breiman et al., *Classification and
Regression Trees*, 1984, sec. 3.4), of the ones whose tau is below the best's by at most one paired-bootstrap
standard error of the gap (the best's lead over them is noise), the cheapest,
then the one with the least KD-seed noise (the noise a search's verdicts drown in). The choice is written to
``blocksearch/measured/selection-score.json``, which the search reads.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from blocksearch.bench.fidelity_report import MAX_COST_FRACTION, LOWER, TARGET, portable
from blocksearch.bench.predictors import CURVE_KEYS, loao_ridge
from blocksearch.recipe.probe import PROBE_KEYS
from blocksearch.bench.rank_stats import kd_mean, kendall_tau_ci, kendall_tau_gap, reaches
from blocksearch.search.reference_noise import seed_table
from blocksearch.search.selection import SCORES
from blocksearch.settings import SELECTION_SCORE as SELECTION

TOY_TEACHER_ALIGNMENT = 0.8125  # `blocksearch toy check` at the default evaluation settings (settings.py)
MIN_ALIGNMENT = 0.25  # the text rule's default (study.SearchConfig.min_alignment)
COMBINED_FEATURES = ("probe_out", "probe_cfg", "probe_guide", "probe_feat", "params", "macs")
BASELINES = ("params", "macs")
TEXT_KEYS = ("probe_guide", "probe_cfg")  # the probe scores a text rule may use, in order of preference
ONE_SE = 1.0  # a cheaper predictor within this many standard errors of the best one's tau is as good (CART's rule)


@dataclass(frozen=True)
class PredictorRow:
    """One predictor at one budget: tau against the long FID over all / text-following architectures."""

    predictor: str
    budget: int
    tau: float
    lo: float
    hi: float
    n: int
    tau_text: float
    lo_text: float
    hi_text: float
    n_text: int
    cost_s: float  # KD seconds to the budget plus the predictor's own (probe or image generation) per student


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def seed_mean(rows: list[dict], genome: str, key: str) -> float | None:
    """``key`` of ``genome`` over the rows that have it (rank_stats.kd_mean: generation seeds, then KD seeds)."""
    mine = [r for r in rows if r["genome"] == genome and r.get(key) is not None]
    return kd_mean(mine, key) if mine else None


def reference(rows: list[dict], longest: int) -> tuple[dict[str, float], dict[str, float]]:
    """genome -> FID and alignment at the longest budget, averaged over generation seeds, then KD seeds."""
    long = [r for r in rows if r["budget"] == longest]
    genomes = {r["genome"] for r in long}
    return ({g: seed_mean(long, g, "fid") for g in genomes}, {g: seed_mean(long, g, "alignment") for g in genomes})


def values_at(rows: list[dict], probes: list[dict], budget: int) -> dict[str, dict[str, float]]:
    """predictor -> genome -> value at ``budget`` (mean over KD seeds and generation seeds), oriented so that
    lower predicts a better (lower) long FID."""
    out: dict[str, dict[str, float]] = {}
    here = [p for p in probes if p["budget"] == budget]
    for key in (*PROBE_KEYS, *CURVE_KEYS):
        out[key] = {g: v for g in {p["genome"] for p in here}
                    if (v := _mean(p.get(key) for p in here if p["genome"] == g)) is not None}
    fid_rows = [r for r in rows if r["budget"] == budget]
    out["fid"] = {g: seed_mean(fid_rows, g, "fid") for g in {r["genome"] for r in fid_rows}}
    out["alignment"] = {g: -a for g in {r["genome"] for r in fid_rows}
                        if (a := seed_mean(fid_rows, g, "alignment")) is not None}
    sizes = {r["genome"]: (r["params"], r["macs"]) for r in [*rows, *probes]}
    out["params"] = {g: -p for g, (p, _) in sizes.items()}  # baselines: more parameters predicts a better FID
    out["macs"] = {g: -m for g, (_, m) in sizes.items()}
    return {k: v for k, v in out.items() if v}


def budget_values(rows: list[dict], probes: list[dict], budget: int, fid: dict[str, float]) -> dict:
    """``values_at`` plus the combined regression (where the probe ran at ``budget``) against ``fid``."""
    values = values_at(rows, probes, budget)
    if "probe_out" in values:
        values["combined"] = combined(values, fid)
    return values


def combined(values: dict[str, dict[str, float]], target: dict[str, float]) -> dict[str, float]:
    """The leave-one-architecture-out ridge regression of log long FID on the log features."""
    keys = [k for k in COMBINED_FEATURES if k in values]
    genomes = set.intersection(*(set(values[k]) for k in keys)) if keys else set()
    feats = {g: [math.log(abs(values[k][g]) + 1e-12) for k in keys] for g in genomes}
    return loao_ridge(feats, {g: math.log(target[g]) for g in genomes if target.get(g)})


def cost_at(rows: list[dict], probes: list[dict], budget: int, predictor: str) -> float:
    kd = _mean(p["kd_s"] for p in [*probes, *rows] if p["budget"] == budget) or 0.0
    if predictor in BASELINES:
        return 0.0
    if predictor in ("fid", "alignment"):
        return kd + (_mean(r["eval_s"] for r in rows if r["budget"] == budget) or 0.0)
    return kd + (_mean(p["probe_s"] for p in probes if p["budget"] == budget) or 0.0)


def predictor_table(rows: list[dict], probes: list[dict], budgets: list[int], n_boot: int = 2000,
                    floor: float = MIN_ALIGNMENT * TOY_TEACHER_ALIGNMENT,
                    extra: dict[str, dict[str, float]] | None = None) -> list[PredictorRow]:
    """Every predictor at every short budget; ``extra`` (name -> genome -> value, lower predicts better: the
    one-shot scores) needs no training, so it is ranked once, at the first budget, at no KD cost."""
    longest = max(budgets)
    fid, align = reference(rows, longest)
    text = {g for g, a in align.items() if a is not None and a >= floor}
    table = []
    for budget in [b for b in budgets if b < longest]:
        values = budget_values(rows, probes, budget, fid)
        if budget == min(budgets):
            values |= extra or {}
        for name, by in values.items():
            if name in BASELINES and budget != min(budgets):
                continue  # the same at every budget: once
            tau = _tau(by, fid, set(fid), n_boot)
            tau_t = _tau(by, fid, text, n_boot)
            cost = 0.0 if name in (extra or {}) else cost_at(rows, probes, budget, name)
            table.append(PredictorRow(name, budget, *tau, *tau_t, cost))
    return table


def _tau(by: dict[str, float], fid: dict[str, float], keep: set[str], n_boot: int) -> tuple[float, float, float, int]:
    genomes = sorted(g for g in by if g in keep and fid.get(g) is not None)
    tau, lo, hi = kendall_tau_ci([by[g] for g in genomes], [fid[g] for g in genomes], n_boot)
    return tau, lo, hi, len(genomes)


def candidate(row: PredictorRow, longest: int) -> bool:
    """A score a trial computes on its own (selection.SCORES), within the cost cap, with a finite tau over the
    text-following architectures: what the choice may take (screening aside)."""
    return row.predictor in SCORES and row.budget <= MAX_COST_FRACTION * longest and math.isfinite(row.tau_text)


def choose(table: list[PredictorRow], longest: int,
           noise: Callable[[PredictorRow], float | None] = lambda row: None,
           text_ok: Callable[[int], bool] = lambda budget: True) -> tuple[PredictorRow | None, bool]:
    """The first-stage score: among the scores a trial computes on its own (FID, the probe's: selection.SCORES),
    within the cost cap, and ``screened`` (a probe score generates no image to measure alignment on, so it
    needs a text rule at its budget, ``text_ok(budget)``: the tau is over the text-following architectures,
    so the others must be screened out before the ranking counts), the cheapest meeting the target over the
    text-following architectures (at one cost, the one with the least KD-seed noise, ``noise(row)``), and
    True; else the best one measured there (highest tau over the text-following ones, then over all, then the
    cheaper), and False. Baselines, curve features, alignment and the combined regression are reported, not
    chosen: a trial cannot compute them alone, or they are costs already searched on."""
    usable = [r for r in table if candidate(r, longest) and screened(r, text_ok)]
    meeting = [r for r in usable if reaches(r.tau_text, r.lo_text, TARGET, LOWER)]
    if meeting:  # the cheapest; at one cost, the least KD-seed noise (the noise a search's verdicts drown in)
        return min(meeting, key=lambda r: (r.cost_s, _or_inf(noise(r)), -r.tau_text)), True
    if not usable:
        return None, False
    return max(usable, key=lambda r: (round(r.tau_text, 6), round(r.tau, 6) if math.isfinite(r.tau) else -9,
                                      -r.cost_s)), False


def screened(row: PredictorRow, text_ok: Callable[[int], bool]) -> bool:
    """Whether a first stage ranked by ``row`` keeps text-blind students out: FID's trials generate images (the
    alignment floor); a probe score's need a text rule at its budget."""
    return row.predictor == "fid" or text_ok(row.budget)


def within_noise_of_best(best: PredictorRow, table: list[PredictorRow], longest: int,
                         gap: Callable[[PredictorRow, PredictorRow], tuple[float, float]],
                         text_ok: Callable[[int], bool] = lambda budget: True,
                         noise: Callable[[PredictorRow], float | None] = lambda row: None,
                         ) -> tuple[PredictorRow, float, float]:
    """The one-standard-error rule on ``choose``'s best (when nothing met the target): the usable predictors
    no dearer than ``best`` whose tau over the text-following architectures trails the best's by at most
    ``ONE_SE`` paired standard errors (``gap(best, row)`` -> (tau gap, its standard error)), screened from the
    text-blind students (``screened``: FID, or a probe score at a budget with a text rule), are as faithful as
    the best as far as the study can tell; of them the cheapest, then the one with the least KD-seed noise
    (``noise(row)``: sigma of the log score between KD seeds; unknown last), then the higher tau. Returns (the
    choice, its gap to the best, the gap's standard error); (``best``, 0, 0) where nothing else qualifies."""
    tied = [(best, 0.0, 0.0)]
    for row in table:
        if row != best and candidate(row, longest) and row.cost_s <= best.cost_s and screened(row, text_ok):
            g, se = gap(best, row)
            if math.isfinite(se) and g <= ONE_SE * se:
                tied.append((row, g, se))

    return min(tied, key=lambda item: (item[0].cost_s, _or_inf(noise(item[0])), -item[0].tau_text))


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def paired_gap(rows: list[dict], probes: list[dict], longest: int, n_boot: int,
               floor: float = MIN_ALIGNMENT * TOY_TEACHER_ALIGNMENT) -> Callable[[PredictorRow, PredictorRow], tuple]:
    """``gap(a, b)``: tau(a) - tau(b) against the long FID over the text-following architectures both rank, and
    its paired bootstrap standard error (rank_stats.kendall_tau_gap)."""
    fid, align = reference(rows, longest)
    text = {g for g, a in align.items() if a is not None and a >= floor}
    at = {}

    def values(row: PredictorRow) -> dict[str, float]:
        if row.budget not in at:
            at[row.budget] = budget_values(rows, probes, row.budget, fid)
        return at[row.budget].get(row.predictor, {})

    def gap(a: PredictorRow, b: PredictorRow) -> tuple[float, float]:
        va, vb = values(a), values(b)
        genomes = sorted(g for g in va if g in vb and g in text and fid.get(g) is not None)
        return kendall_tau_gap([va[g] for g in genomes], [vb[g] for g in genomes], [fid[g] for g in genomes], n_boot)
    return gap


def text_rule(rows: list[dict], probes: list[dict], budget: int, longest: int,
              floor: float = MIN_ALIGNMENT * TOY_TEACHER_ALIGNMENT, keys: tuple[str, ...] = TEXT_KEYS) -> dict:
    """The first stage's text rule where no image is generated: the first of ``keys`` (the probe scores that
    depend on the text: probe_guide, the text direction's error, 1.0 = none; probe_cfg, the guided output's
    error, which misses the whole guidance term of a text-blind student) whose value at ``budget`` separates
    the architectures text-following at the longest budget (alignment >= ``floor``) from the others. The
    ceiling is the midpoint between the largest value of a text-following architecture and the smallest of the
    others; where no key separates them, the first key's figures and no ceiling (no rule before the rungs)."""
    _, align = reference(rows, longest)
    values = values_at(rows, probes, budget)
    rules = []
    for key in keys:
        by = values.get(key, {})
        follow = [v for g, v in by.items() if align.get(g) is not None and align[g] >= floor]
        others = [v for g, v in by.items() if align.get(g) is not None and align[g] < floor]
        separates = bool(follow and others and max(follow) < min(others))
        rules.append(dict(key=key, budget=budget, ceiling=(max(follow) + min(others)) / 2 if separates else None,
                          text_following_max=max(follow) if follow else None,
                          others_min=min(others) if others else None, separates=separates,
                          n=len(follow) + len(others)))
    return next((r for r in rules if r["separates"]), rules[0])


def kd_seed_noise(rows: list[dict], probes: list[dict], budget: int, key: str) -> dict | None:
    """The KD-seed spread of ``key`` at ``budget``: |a - b| over architectures trained at two KD seeds (FID at
    generation seed 0), median and max, the pooled standard deviation of log(value) (sqrt(mean(d^2 / 2))), and
    Kendall's tau between the two KD seeds' rankings with its bootstrap interval (``tau``: how far the score
    ranks the architectures alike when only the KD run's randomness changes; at the longest budget, how far
    the reference ranking itself reproduces)."""
    source = rows if key in ("fid", "alignment") else probes
    per: dict[str, dict[int, float]] = {}
    for r in source:
        if r["budget"] == budget and r.get(key) is not None and r.get("seed", 0) == 0:
            per.setdefault(r["genome"], {})[r.get("kd_seed", 0)] = r[key]
    pairs = [(v[0], v[1]) for v in per.values() if 0 in v and 1 in v]
    if not pairs:
        return None
    diffs = [abs(a - b) for a, b in pairs]
    logs = [(math.log(a) - math.log(b)) ** 2 / 2 for a, b in pairs if a > 0 and b > 0]
    tau = kendall_tau_ci([a for a, _ in pairs], [b for _, b in pairs], 1000) if len(pairs) >= 3 else None
    return dict(median=statistics.median(diffs), max=max(diffs), n=len(pairs),
                sigma_log=math.sqrt(statistics.fmean(logs)) if logs else None,
                tau=list(tau) if tau is not None and math.isfinite(tau[0]) else None)


def gen_seed_noise(rows: list[dict], budget: int) -> dict | None:
    """|FID(seed 0) - FID(seed 1)| at KD seed 0: median and max over architectures."""
    per: dict[str, dict[int, float]] = {}
    for r in rows:
        if r["budget"] == budget and r.get("kd_seed", 0) == 0:
            per.setdefault(r["genome"], {})[r["seed"]] = r["fid"]
    diffs = [abs(v[0] - v[1]) for v in per.values() if 0 in v and 1 in v]
    return dict(median=statistics.median(diffs), max=max(diffs), n=len(diffs)) if diffs else None


# -- rendering ---------------------------------------------------------------------------------------
def _ci(tau: float, lo: float, hi: float) -> str:
    if not math.isfinite(tau):
        return "-"
    return f"{tau:+.2f} [{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else f"{tau:+.2f}"


def render(table: list[PredictorRow], chosen: PredictorRow | None, meets: bool, noise: list[dict],
           command: str, best: PredictorRow | None = None, gap: tuple[float, float] = (0.0, 0.0),
           sigmas: tuple[float | None, float | None] = (None, None), passed_over: list[PredictorRow] = ()) -> str:
    lines = ["# Cheap predictors of the long-run FID", "", f"Measured by `{command}`.", "",
             "Kendall tau-b of each predictor (lower value = better predicted) against the FID at the longest "
             "budget (mean over KD and generation seeds), 95 % bootstrap interval over architectures; "
             "text-following = alignment at the longest budget >= the text rule's floor.", "",
             "| predictor | budget | tau, all [CI] | n | tau, text-following [CI] | n | cost s per student |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: (r.budget, -r.tau_text if math.isfinite(r.tau_text) else 9)):
        lines.append(f"| {r.predictor} | {r.budget} | {_ci(r.tau, r.lo, r.hi)} | {r.n} | "
                     f"{_ci(r.tau_text, r.lo_text, r.hi_text)} | {r.n_text} | {r.cost_s:.1f} |")
    lines += ["", "Noise per budget: KD seed (|seed 0 - seed 1|, same generation seed) and generation seed "
              "(|seed 0 - seed 1|, KD seed 0), median / max over architectures:", "",
              "| budget | score | KD-seed spread | n | sigma of log (KD seed) | tau between KD seeds [CI] | "
              "generation-seed spread | n |",
              "|---|---|---|---|---|---|---|---|"]
    for n in noise:
        kd, gen = n["kd"], n.get("gen")
        kd_cells = [f"{kd['median']:.4g} / {kd['max']:.4g}", kd["n"],
                    "-" if kd["sigma_log"] is None else f"{kd['sigma_log']:.3f}",
                    "-" if kd.get("tau") is None else _ci(*kd["tau"])] if kd else ["-", 0, "-", "-"]
        gen_cells = [f"{gen['median']:.4g} / {gen['max']:.4g}", gen["n"]] if gen else ["-", 0]
        lines.append("| " + " | ".join(str(c) for c in [n["budget"], n["key"], *kd_cells, *gen_cells]) + " |")
    best = best or chosen
    tie = (f"{best.cost_s / max(chosen.cost_s, 1e-9):.1f}x cheaper per student" if chosen and chosen.cost_s < best.cost_s
           else f"as cheap; sigma of the log between KD seeds {sigmas[0]:.3f} against {sigmas[1]:.3f}"
           if None not in sigmas else "as cheap")
    why = ("meets the target (tau >= 0.8, low end >= 0.6, <= 25 % of the long budget)" if meets else
           "the best measured; it does NOT meet the target (tau >= 0.8 with the low end >= 0.6)" if chosen == best else
           f"it does NOT meet the target (tau >= 0.8 with the low end >= 0.6), and neither does the best measured, "
           f"{best.predictor} at {best.budget} KD steps (tau {_ci(best.tau_text, best.lo_text, best.hi_text)}, "
           f"{best.cost_s:.1f} s per student); its lead, {gap[0]:+.2f}, is within one paired bootstrap standard error "
           f"({gap[1]:.2f}), so by the one-standard-error rule the study cannot tell them apart, and of such scores "
           f"the cheapest, then the least noisy between KD seeds, is taken ({tie})")
    verdict = ("none measured" if chosen is None else
               f"**{chosen.predictor} at {chosen.budget} KD steps**: tau {_ci(chosen.tau_text, chosen.lo_text, chosen.hi_text)} "
               f"over {chosen.n_text} text-following architectures, {chosen.cost_s:.1f} s per student -- " + why)
    finite = [r for r in table if math.isfinite(r.tau_text) and r.predictor not in BASELINES]
    best = max(finite, key=lambda r: (round(r.tau_text, 6), -r.cost_s), default=None)
    also = ("" if best is None or best == chosen else
            f"\n\nThe best of every predictor over the text-following architectures, a trial's own or not: {best.predictor} "
            f"at {best.budget} KD steps, tau {_ci(best.tau_text, best.lo_text, best.hi_text)}, {best.cost_s:.1f} s.")
    skipped = "".join(f"\n\nPassed over: {r.predictor} at {r.budget} KD steps, tau "
                      f"{_ci(r.tau_text, r.lo_text, r.hi_text)}, {r.cost_s:.1f} s -- it meets the target, but no "
                      f"text rule separates the text-following architectures at {r.budget} steps, so a first stage ranked by it (no images) would let the "
                      f"text-blind students through." for r in passed_over)
    return "\n".join(lines + ["", f"The search's first-stage score (a score a trial computes alone, FID or the "
                                   f"probe's): {verdict}.{also}{skipped}", ""])


def write_predictors(rows: list[dict], probes: list[dict], archs: list, budgets: list[int], args, out: Path,
                     selection: Path | None = None, extra: dict[str, dict[str, float]] | None = None
                     ) -> PredictorRow | None:
    """Compute, print and write ``<out>/predictors.md`` and the selection file (``--selection``: the family's,
    Family.selection_file) (only with probe rows); ``extra``: predictors without training (predictor_table)."""
    genomes = {a.genome for a in archs}
    rows = [r for r in rows if r["genome"] in genomes and r["budget"] in budgets]
    probes = [p for p in probes if p["genome"] in genomes and p["budget"] in budgets]
    if not probes:
        return None
    table = predictor_table(rows, probes, budgets, args.boot, extra=extra)

    kd_noise = {(b, k): kd_seed_noise(rows, probes, b, k) for b in budgets for k in ("fid", *PROBE_KEYS)}

    def sigma(row: PredictorRow) -> float | None:
        spread = kd_noise.get((row.budget, row.predictor))
        return spread and spread["sigma_log"]
    separates = {}

    def text_ok(budget: int) -> bool:
        if budget not in separates:
            separates[budget] = bool(text_rule(rows, probes, budget, max(budgets))["separates"])
        return separates[budget]
    chosen, meets = choose(table, max(budgets), sigma, text_ok)
    best, gap = chosen, (0.0, 0.0)
    if chosen is not None and not meets:
        chosen, *gap = within_noise_of_best(best, table, max(budgets), paired_gap(rows, probes, max(budgets), args.boot),
                                            text_ok, sigma)
    noise = [dict(budget=b, key=k, kd=kd_noise[b, k], gen=gen_seed_noise(rows, b) if k == "fid"
                  else None) for b in budgets for k in ("fid", *PROBE_KEYS)]
    noise = [n for n in noise if n["kd"] or n["gen"]]
    teacher = getattr(args, "teacher", "toy")
    teacher = portable(teacher) if Path(teacher).exists() else teacher
    command = (f"blocksearch bench fidelity --teacher {teacher} --archs {args.archs} "
               f"--budgets {args.budgets} --kd-seeds {args.kd_seeds} --probe-budgets {args.probe_budgets}")
    if getattr(args, "space", None):
        command = command.replace(" --archs", f" --space {args.space} --archs", 1)
    passed_over = [r for r in table if candidate(r, max(budgets)) and not screened(r, text_ok)
                   and reaches(r.tau_text, r.lo_text, TARGET, LOWER) and (chosen is None or r.cost_s < chosen.cost_s)]
    text = render(table, chosen, meets, noise, command, best, tuple(gap),
                  (sigma(chosen), sigma(best)) if chosen is not None else (None, None), passed_over)
    rule = text_rule(rows, probes, chosen.budget, max(budgets)) if chosen is not None else None
    if rule is not None and rule["text_following_max"] is not None and rule["others_min"] is not None:
        text += (f"\nThe first stage's text rule without images ({rule['key']} at {rule['budget']} KD steps"
                 f"{'; 1.0 = no text direction' if rule['key'] == 'probe_guide' else ''}): text-following architectures "
                 f"<= {rule['text_following_max']:.3f}, the others >= "
                 f"{rule['others_min']:.3f}: " + (f"ceiling {rule['ceiling']:.3f}.\n" if rule["separates"] else
                                                  "no ceiling separates them; no text rule before the rungs.\n"))
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictors.md").write_text(text)
    if chosen is not None:
        record = asdict(chosen) | {"meets_target": meets, "over": "text-following architectures",
                                   "sigma_log_kd_seed": sigma(chosen), "measured_by": command,
                                   "longest": max(budgets), "text_rule": rule,
                                   "best": None if best == chosen else asdict(best) | {"gap": gap[0], "gap_se": gap[1]},
                                   "teacher": getattr(args, "teacher", "toy"),
                                   "reference_seed_scores": seed_table(rows, probes)}
        path = selection or Path(getattr(args, "selection", SELECTION))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=lambda v: None if not math.isfinite(v) else v) + "\n")
        print(f"predictors in {portable(out)}/predictors.md; the search's first-stage score in {portable(path)}")
    return chosen
