"""The report's noise, rendered: scores with their seed spread (± sigma), how the noise was measured, and
the reference designs' dominations split into claims beyond noise -- on quality, or on cost only with every
quality difference within noise -- and differences within it.

Formats only what :func:`blocksearch.report.compute.build_report` computed (:mod:`blocksearch.report.noise`,
``Domination.beyond_noise`` and ``Domination.kind``, from ``pareto.claim``).
"""

from __future__ import annotations

from blocksearch.report.noise import NOISY, quality_mask
from blocksearch.objectives import fmt
from blocksearch.report.pareto import noise_margins
from blocksearch.report.compute import Domination, ParetoReport


def with_spread(r: ParetoReport, name: str, value) -> str:
    """``fmt`` of a value, with '± sigma' for a score of generated images whose seed spread is known."""
    spread = r.noise.get(name)
    if name not in NOISY or value is None or spread is None or spread.sigma is None:
        return fmt(name, value)
    return f"{fmt(name, value)} ± {fmt(name, spread.sigma)}"


def noise_line(r: ParetoReport) -> str:
    """One paragraph: each objective's spread, what it rests on, and the rule of dominance beyond noise."""
    seeded = {o: s for o, s in r.noise.items() if s.source == "seeds"}
    unknown = [o for o in r.objectives if r.noise.get(o) is None or r.noise[o].sigma is None]
    asked = r.attrs.get("noise_seeds")
    stopped = sorted({n for by in (r.attrs.get("stopped_references") or {}).values() for n in by})
    carried = sorted(r.attrs.get("carried_noise") or {})
    if unknown:
        why = (f"the reference designs {', '.join(stopped)} were settled at the study below and not trained to this "
               f"budget, and no study of this recipe gave their seeds here: `--rung-references all` trains them"
               if stopped and not r.reference_trials else
               f"no reference design was scored at two or more seeds{f'; the study asked for {asked}' if asked else ''}"
               f": `blocksearch run --noise-seeds 2` scores them in a new study")
        return (f"Seed noise: not measured for {', '.join(unknown)} ({why}). Dominance below is on raw values "
                f"(noise not measured): a small difference may be seed noise.")
    parts = []
    if seeded:
        counts = sorted({n for s in seeded.values() for n in s.seeds})
        seeds = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
        borrowed = sorted({row["from"] for t in r.trials for row in t.seed_scores if row.get("from")})
        where = (f"; the other seeds from {', '.join(borrowed)}'s study, which this run's own scores reproduce "
                 f"(--noise-source measure trains them here instead)" if borrowed else
                 f", --noise-seeds {asked}" if asked else "")
        if carried:
            where += (f"; {', '.join(carried)}: settled at the study below and not trained here, every seed from "
                      f"bench fidelity's study at this budget, whose scores this run reproduced at the study below")
        parts.append(", ".join(f"{o} ± {fmt(o, s.sigma)}" for o, s in seeded.items())
                     + f" (pooled standard deviation of one score over {max(s.designs for s in seeded.values())} "
                       f"reference design(s) x {seeds} seeds, KD and generation{where})")
    for o in r.objectives:
        s = r.noise[o]
        if s.source == "latency_cv":
            parts.append(f"{o} ± {fmt(o, s.sigma)} (standard error of the median latency, from latency_cv)")
        elif s.source in ("exact", "no spread recorded"):
            parts.append(f"{o} {'exact' if s.source == 'exact' else 'compared raw (no spread recorded)'}")
    z = r.noise_z
    quality = [o for o, q in zip(r.objectives, quality_mask(r.objectives)) if q]
    kinds = (f" The claim is on quality when a quality objective ({', '.join(quality)}) is better beyond noise, and "
             f"on cost only when only a cost is (every quality difference within noise); a design whose quality is "
             f"worse beyond noise claims nothing." if quality
             else " Every objective is a cost: claims are on cost only.")
    return (f"Seed noise: {'; '.join(parts)}. A searched design dominates a reference beyond noise when it is "
            f"worse by at most z·√2·σ in every objective and better by more than z·√2·σ in one, z = {z:g} ({z:g} "
            f"standard deviations of the difference of two scores); σ rests on few seeds, so a claim near its "
            f"margin is weak.{kinds}")


def _gains(r: ParetoReport, d: Domination) -> str:
    """'fid 2.0% higher (within noise), params 10.0% lower': each objective's difference, relative."""
    a, b = r.trial(d.searched).values, r.trial(d.reference_trial).values
    sigmas = [r.noise[o].sigma if r.noise_measured else 0.0 for o in r.objectives]
    out = []
    for o, g, direction, x, y, m in zip(r.objectives, d.improvement, r.directions, a, b,
                                        noise_margins(sigmas, r.noise_z)):
        better, worse = ("lower", "higher") if direction == "minimize" else ("higher", "lower")
        if g:
            noise = " (within noise)" if abs(x - y) <= m else ""
            out.append(f"{o} {abs(g):.1%} {better if g > 0 else worse}{noise}")
    return ", ".join(out)


def claim_text(r: ParetoReport, d: Domination) -> str:
    """'dominates bk_tiny on cost only (params, latency_ms); fid within noise' or 'dominates bk_base on quality,
    fid better beyond noise': what a domination claims (``Domination.kind``) and on which objectives."""
    a, b = r.trial(d.searched).values, r.trial(d.reference_trial).values
    sigmas = [r.noise[o].sigma if r.noise_measured else 0.0 for o in r.objectives]
    where = " beyond noise" if r.noise_measured else ""
    better, quality = [], []
    for o, q, x, y, m, s in zip(r.objectives, quality_mask(r.objectives), a, b, noise_margins(sigmas, r.noise_z),
                                [1.0 if direction == "minimize" else -1.0 for direction in r.directions]):
        if s * x < s * y - m:
            better.append((o, q))
        if q:
            quality.append(o)
    if d.kind == "quality":
        return f"dominates {d.reference} on quality, {', '.join(o for o, q in better if q)} better{where}"
    same = f"; {', '.join(quality)} within noise" if r.noise_measured else f"; {', '.join(quality)} equal"
    return f"dominates {d.reference} on cost only ({', '.join(o for o, _ in better)}){same if quality else ''}"


def reference_md(r: ParetoReport) -> list[str]:
    """The README's section on the reference designs: each one's scores and who dominates it, beyond noise --
    on quality, or on cost only (every quality difference within noise) -- or within it (a raw domination that
    the noise could explain; not a claim). Quality claims first."""
    lines = [f"## Against the {r.designs_name} reference designs", ""]
    if not r.reference_designs:
        return lines + ["The study names no reference designs (user attr `reference_designs`).", ""]
    lines += [noise_line(r), ""]
    for name, genome in r.reference_designs.items():
        if name not in r.reference_trials:
            stopped = {below: by[name] for below, by in (r.attrs.get("stopped_references") or {}).items()
                       if name in by}
            lines.append(next((f"- **{name}** (`{genome}`): not trained to this budget: `{below}` settled it, a "
                               f"searched design (trial(s) {', '.join(map(str, by))} there) dominates it on "
                               f"quality beyond noise (`--rung-references all` continues it anyway)."
                               for below, by in stopped.items()), f"- **{name}** (`{genome}`): no completed trial."))
            continue
        t = r.trial(r.reference_trials[name])
        values = ", ".join(f"{o} {with_spread(r, o, v)}" for o, v in zip(r.objectives, t.values))
        doms = sorted((d for d in r.dominations if d.reference == name),
                      key=lambda d: (d.kind != "quality", -sum(d.improvement)))
        beyond = [d for d in doms if d.beyond_noise is not False]
        head = f"- **{name}** (trial {t.number}: {values})"
        if not r.noise_measured:
            lines.append(f"{head} is dominated by {len(beyond)} searched design(s) (noise not measured: raw "
                         f"values):" if beyond else f"{head}: no searched design dominates it.")
        else:
            on_quality = sum(d.kind == "quality" for d in beyond)
            lines.append(f"{head} is dominated beyond noise by {len(beyond)} searched design(s) ({on_quality} on "
                         f"quality, {len(beyond) - on_quality} on cost only):" if beyond
                         else f"{head}: no searched design dominates it beyond noise.")
        lines += [f"  - trial {d.searched} {claim_text(r, d)} ({_gains(r, d)}): {r.trial(d.searched).architecture}"
                  for d in beyond]
        lines += [f"  - within noise, not a claim: trial {d.searched} ({_gains(r, d)}): "
                  f"{r.trial(d.searched).architecture}" for d in doms if d.beyond_noise is False]
    return lines + [""]
