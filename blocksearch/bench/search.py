"""``blocksearch bench search``: does the sampler beat random search at equal trial counts?

Each search runs on a cheap stand-in objective: a table Genome -> (fid, params, latency_ms) over the
whole space, so a trial is a table look-up and many seeds are affordable. The stand-in is derived
(and cached): params exact (surgery on the teacher's config), latency -> exact MACs (a proxy:
SnapFusion, arXiv 2306.00980, shows MACs mis-rank latency), fid -> the one-shot output-KD loss of the
student cut from the teacher before any training (LAPTOP-Diff's one-shot criterion, arXiv 2404.11098;
TinyFusion, arXiv 2412.01199, shows it can mis-rank trained quality). When a table of measured trials
exists (``--table``; by default the fidelity study's ``blocksearch/measured/fidelity-toy.csv`` when
present, else ``toy.csv``), its values replace the stand-in's and the stand-in columns are mapped linearly
onto the measured scale for the rest; the output says which, and how well the stand-in ranks the measured
architectures (Kendall tau-b). As in ``blocksearch run``, the BK designs are enqueued first, an
architecture seen before costs no trial, and a sampler that repeats itself gets the search's fallback
(``samplers.untrained_genome``). The score is the hypervolume of the front found, objectives normalised
to [0, 1] over the whole table, reference point 1.1; and the trials a search needs before the
architectures it found (the BK designs left out) reach the hypervolume of the three BK designs, and
before it reaches the mean hypervolume random search ends with.

Transformer spaces (a family with one-shot block importance, families/dit/oneshot.py): the stand-in's fid is the
summed skip-MSE importance of the removed blocks and params / MACs are exact and additive over the blocks (a
block mask space has 64,839 architectures on the 16-block toy: no surgery per architecture). ``--report DIR``
reads a ``bench fidelity`` report folder: its measured table (``DIR/measured.csv``) and its block importance
(``DIR/oneshot.json``). ``--init one-shot`` enqueues the one-shot picks after the named designs (warm_start.py);
``--init designs,one-shot`` runs every sampler both ways. Caveat: the one-shot picks are the stand-in's own front
(top-k by skip MSE minimises the removed skip MSE at every size), so on the unmeasured architectures the warm
start is favoured by construction; only the measured ones say whether it helps.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from tqdm.auto import tqdm

from blocksearch.search import samplers
from blocksearch.cache import default_cache_dir, file_lock, lock_path, work_slot, yield_to_measurement
from blocksearch.console import quiet
from blocksearch.families.cost import count_macs, count_params
from blocksearch.errors import BlocksearchError
from blocksearch.report.pareto import normalised_hypervolume
from blocksearch.search.samplers import SAMPLERS
from blocksearch.settings import FIDELITY, MEASURED
from blocksearch.settings import MEASURED_COLUMNS as COLUMNS
from blocksearch.space import load_space
from blocksearch.families.base import family_of_arch, get_family
from blocksearch.settings import MEASURED_DIR
from blocksearch.teachers import is_toy, load_teacher, resolve_teacher
from blocksearch.search.warm_start import INITS, importance_table, one_shot_archs, read_importance
from blocksearch.bench.fidelity_report import MEASURED_FILE

STANDIN_AS = {"fid": "one-shot output-KD loss", "params": "exact params", "latency_ms": "exact MACs"}
ONE_SHOT = "one-shot"


@dataclass(frozen=True)
class Table:
    """Objective values per Genome id (every column minimised) and how they were obtained."""

    values: dict[str, tuple[float, ...]]
    source: str

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        arr = np.array(list(self.values.values()))
        return arr.min(axis=0), arr.max(axis=0)


def cmd_bench_search(args) -> int:
    if getattr(args, "front", None):
        return print_fronts(args)
    samplers = [s.strip() for s in args.sampler.split(",") if s.strip()]
    bad = [s for s in samplers if s not in SAMPLERS or s == "random"]
    if bad or not samplers:
        raise BlocksearchError(f"--sampler {args.sampler!r}: allowed: {[s for s in SAMPLERS if s != 'random']}")
    counts, inits = trial_counts(args.trials), parse_inits(getattr(args, "init", "designs"))
    if min(counts) < 4 or args.seeds < 1:
        raise BlocksearchError("--trials must be >= 4 and --seeds >= 1")
    args.teacher = toy_teacher(args.teacher, args.space)
    bound = _bound(args.space, args.teacher)
    standin, measured, table = tables(args)
    warm = warm_start(args, bound) if ONE_SHOT in inits else []
    summary = []
    for trials in counts:
        result = compare(table, bound, samplers, trials, args.seeds, warm=warm, inits=inits)
        print_comparison(args, trials, table, standin, measured, result)
        summary += summary_rows(result, trials)
    print("\n" + summary_table(summary, len(bound.named_designs())))
    return 0


def print_comparison(args, trials: int, table: Table, standin: Table, measured: Table | None, result: dict) -> None:
    """One trial count's figures: the table used, the stand-in's tau, hypervolumes, ratios and trials to reach."""
    samplers, n_designs = result["names"], result["designs"]
    taus = rank_agreement(standin, measured) if measured is not None else None
    print(f"table: {table.source}")
    if taus is None:
        print("Kendall tau, stand-in vs measured: no measured table (pass --table); the ratios below rank "
              "samplers on the stand-in alone")
    else:
        n = taus.pop("n")
        print(f"Kendall tau-b, stand-in vs measured over the {n} measured architectures: "
              + ", ".join(f"{c} {t:+.3f} ({STANDIN_AS[c]})" if not math.isnan(t) else f"{c} not measured"
                          for c, t in taus.items()))
    print(f"space {args.space}: {len(table.values)} architectures; {trials} trials per search "
          f"({n_designs} named designs first{'; +one-shot: then the one-shot picks' if result['warm'] else ''}), "
          f"{args.seeds} seeds; hypervolume of (fid, params, latency) normalised to "
          f"[0, 1] over the table, reference point 1.1 (best possible here: {result['optimum']:.4f}; "
          f"the {n_designs} named designs alone: {result['bk']:.4f})")
    for name in [*samplers, "random"]:
        hv = result[name]
        print(f"  {name:8s} mean {statistics.fmean(hv):.4f}  min {min(hv):.4f}  max {max(hv):.4f}  "
              f"per seed {' '.join(f'{v:.3f}' for v in hv)}")
    for name in samplers:
        r = result["ratios"][name]
        print(f"hypervolume ratio {name} / random: {r:.3f} "
              f"({'better' if r > 1 else 'not better'} than random at {trials} trials)")
    budget = trials - result["designs"]
    print(f"trials after the named designs until the architectures found (named designs left out) reach the named "
          f"designs' hypervolume {result['bk']:.4f} (at most {budget}):")
    for name in [*samplers, "random"]:
        print(f"  {name:8s} {reach_summary(result['reach'][name], budget)}")
    for name in samplers:
        print(f"trials-to-reach ratio {name} / random: {result['reach_ratios'][name]:.3f} (a seed that never "
              f"reaches it counts as {budget + 1})")
    print(f"trials, BK designs included, until the hypervolume random search ends with (mean "
          f"{result['random_final']:.4f}) is reached:")
    for name in [*samplers, "random"]:
        print(f"  {name:8s} {reach_summary(result['reach_random'][name], trials)}")


def trial_counts(value) -> list[int]:
    """--trials: one count or several separated by commas (16,48)."""
    try:
        return sorted({int(v) for v in str(value).split(",") if v.strip()})
    except ValueError:
        raise BlocksearchError(f"--trials {value!r}: allowed: integers >= 4 separated by commas") from None


def parse_inits(value: str) -> list[str]:
    inits = [v.strip() for v in str(value).split(",") if v.strip()]
    if not inits or any(v not in INITS for v in inits):
        raise BlocksearchError(f"--init {value!r}: allowed: {', '.join(INITS)}, or both separated by a comma")
    return inits


def toy_teacher(teacher: str, space: str) -> str:
    """``toy`` read as the space's family's bundled toy teacher (as ``blocksearch run`` reads it)."""
    return get_family(load_space(space).family).toy_teacher if teacher == "toy" else teacher


def warm_start(args, bound) -> list:
    """The one-shot picks (warm_start.py) on the teacher's block importance: ``--report``'s, else computed."""
    ref = resolve_teacher(args.teacher)
    report = getattr(args, "report", None)
    if report:
        table = read_importance(report, ref.family)
    else:
        table = importance_table(ref.spec, load_teacher(args.teacher))
    return [arch for _, arch in one_shot_archs(ref.family, table, bound)]


def summary_rows(result: dict, trials: int) -> list[dict]:
    budget = trials - result["designs"]
    rows = []
    for name in [*result["names"], "random"]:
        reach = result["reach"][name]
        hit = [r for r in reach if r is not None]
        rows.append(dict(sampler=name, trials=trials, hv=statistics.fmean(result[name]),
                         ratio=statistics.fmean(result[name]) / max(result["random_final"], 1e-12),
                         reach=statistics.fmean(hit) if hit else None, never=len(reach) - len(hit), seeds=len(reach),
                         budget=budget))
    return rows


def summary_table(rows: list[dict], designs: int) -> str:
    """The markdown table behind the sampler choice (docs/benchmarks.md)."""
    lines = [f"| sampler | trials | hypervolume (mean) | / random's | trials after the {designs} named designs to reach "
             f"their hypervolume (mean over the seeds that do) | seeds that never do |", "|---|---|---|---|---|---|"]
    for r in rows:
        reach = "-" if r["reach"] is None else f"{r['reach']:.1f}"
        lines.append(f"| {r['sampler']} | {r['trials']} | {r['hv']:.4f} | {r['ratio']:.3f} | {reach} | "
                     f"{r['never']} of {r['seeds']} (within {r['budget']}) |")
    return "\n".join(lines)


def front_genomes(trials_csv: Path) -> list[str]:
    """The genomes on the front of a report's ``trials.csv`` (column ``on_front``)."""
    try:
        rows = list(csv.DictReader(trials_csv.open()))
    except OSError as exc:
        raise BlocksearchError(f"--front {trials_csv}: cannot read it ({exc.strerror}); allowed: a report's "
                               "trials.csv") from None
    if not rows or not {"genome", "on_front"} <= set(rows[0]):
        raise BlocksearchError(f"--front {trials_csv}: no genome/on_front columns; allowed: a report's trials.csv")
    return [r["genome"] for r in rows if r["on_front"] == "True"]


def front_hypervolume(table: Table, genomes: Sequence[str]) -> float:
    """The normalised hypervolume of ``genomes`` looked up in ``table`` (bounds: the whole table's), so that
    fronts found by different runs are scored on one long-training scale rather than by their own noisy FIDs."""
    missing = [g for g in genomes if g not in table.values]
    if missing or not genomes:
        raise BlocksearchError(f"front genomes not in the table: {missing or 'none given'}; allowed: genomes of "
                               "the table's space")
    lower, upper = table.bounds()
    return normalised_hypervolume(np.array([table.values[g] for g in genomes]), lower, upper)


def tables(args) -> tuple[Table, Table | None, Table]:
    """(stand-in, measured or None, the table searched): the measured table (``--table``, else the default one)
    with the stand-in mapped onto it for the rest of the space, or the stand-in alone."""
    report = getattr(args, "report", None)
    standin = standin_table(args.teacher, args.space, *([report] if report else []))
    measured_path = Path(args.table) if args.table else default_measured(args.teacher, report)
    measured = read_table(measured_path) if measured_path is not None else None
    return standin, measured, calibrate(standin, measured) if measured is not None else standin


def print_fronts(args) -> int:
    """``bench search --front trials.csv ...``: each report's final front scored in the measured (else the
    stand-in's calibrated) table: how two runs' fronts compare after long training."""
    _, measured, table = tables(args)
    print(f"table: {table.source}")
    names = list(COLUMNS[1:])
    if measured is None or "latency_ms not measured" in measured.source:
        names[-1] = "MACs (latency stand-in)"
    for path in map(Path, args.front):
        genomes = front_genomes(path)
        seen = sum(g in measured.values for g in genomes) if measured is not None else 0
        print(f"{path}: {len(genomes)} on the front, hypervolume {front_hypervolume(table, genomes):.4f} "
              f"({seen} of them measured, the rest from the stand-in)")
        for g in genomes:
            print(f"  {g}: " + ", ".join(f"{c} {v:.4g}" for c, v in zip(names, table.values[g])))
    return 0


def default_measured(teacher: str, report: str | None = None) -> Path | None:
    """The measured table the benchmark uses by default: ``--report``'s (``DIR/measured.csv``); else for the toy
    teacher the fidelity study's when present, else the default run's; for another bundled toy teacher (toy-dit)
    its fidelity study's, ``fidelity-<teacher>.csv``; else none (the tables were measured on the toy teachers)."""
    if report:
        path = Path(report) / MEASURED_FILE
        if not path.is_file():
            raise BlocksearchError(f"--report {report}: no {MEASURED_FILE}; allowed: a bench fidelity report folder "
                                   f"whose ladders reached the longest budget")
        return path
    if teacher == "toy":
        return next((p for p in (FIDELITY, MEASURED) if p.is_file()), None)
    path = MEASURED_DIR / f"fidelity-{teacher}.csv"
    return path if path.is_file() and not Path(teacher).exists() and is_toy(teacher) else None


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either ranking corrected; Kendall 1945): (concordant - discordant) pairs
    over sqrt(pairs untied in x * pairs untied in y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) < 2:
        raise BlocksearchError(f"Kendall tau needs two rankings of the same >= 2 items, got {len(x)} and {len(y)}")
    iu = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[:, None] - x[None, :])[iu], np.sign(y[:, None] - y[None, :])[iu]
    denominator = np.sqrt(np.count_nonzero(dx) * np.count_nonzero(dy))
    return float(np.sum(dx * dy) / denominator) if denominator else float("nan")


def rank_agreement(standin: Table, measured: Table) -> dict:
    """Kendall tau-b per column between the stand-in and the measured table over the architectures both
    have (``n``); the stand-in's fid is the one-shot loss, so this is how well it ranks trained quality."""
    both = [g for g in measured.values if g in standin.values]
    if len(both) < 2:
        raise BlocksearchError(f"{measured.source}: fewer than 2 architectures of the space; cannot rank")
    x, y = np.array([standin.values[g] for g in both]), np.array([measured.values[g] for g in both])
    out = {"n": len(both)}
    for j, c in enumerate(COLUMNS[1:]):  # a column measured for fewer than 2 architectures: no tau (nan)
        seen = ~np.isnan(y[:, j])
        out[c] = kendall_tau(x[seen, j], y[seen, j]) if seen.sum() >= 2 else math.nan
    return out


def reach_summary(reach: Sequence[int | None], budget: int) -> str:
    """``mean 6.2 over 8 seeds; 2 of 10 never within 13`` for a list of trials-to-reach (None: never)."""
    hit = [r for r in reach if r is not None]
    mean = f"mean {statistics.fmean(hit):.1f} over the {len(hit)} seeds that reach it" if hit else "no seed reaches it"
    return f"{mean}; {len(reach) - len(hit)} of {len(reach)} never within {budget}"


def _bound(space: str, teacher: str):
    ref = resolve_teacher(teacher)
    return load_space(space).bind(ref.family.topology(ref.load_denoiser("cpu").config))


def read_table(path: Path) -> Table:
    if not path.is_file():
        raise BlocksearchError(f"table {path} does not exist")
    with path.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise BlocksearchError(f"table {path}: expected a CSV with columns {list(COLUMNS)}; missing {missing}")
    values = {r["genome"]: tuple(float(r[c]) if str(r[c]).strip() else math.nan for c in COLUMNS[1:]) for r in rows}
    blank = [c for j, c in enumerate(COLUMNS[1:]) if all(math.isnan(v[j]) for v in values.values())]
    return Table(values, f"{path} ({len(values)} measured architectures"
                         f"{'; ' + ', '.join(blank) + ' not measured: from the stand-in' if blank else ''})")


def calibrate(standin: Table, measured: Table) -> Table:
    """Measured values where there are any; elsewhere each stand-in column mapped linearly onto the
    measured scale (least squares over the architectures both tables have). A column the measured table
    leaves blank (nan) everywhere keeps the stand-in's own values (a linear map does not change a ranking)."""
    both = [g for g in measured.values if g in standin.values]
    if len(both) < 2:
        raise BlocksearchError(f"{measured.source}: fewer than 2 architectures of the space; cannot calibrate")
    x = np.array([standin.values[g] for g in both])
    y = np.array([measured.values[g] for g in both])
    fits = []
    for j in range(x.shape[1]):
        seen = ~np.isnan(y[:, j])
        if seen.sum() == 0:
            fits.append((1.0, 0.0))
        elif np.ptp(x[seen, j]) > 0 and seen.sum() >= 2:
            fits.append(np.polyfit(x[seen, j], y[seen, j], 1))
        else:
            fits.append((0.0, float(y[seen, j].mean())))

    def value(g: str, vals) -> tuple[float, ...]:
        mapped = [float(np.polyval(f, v)) for f, v in zip(fits, vals)]
        have = measured.values.get(g)
        return tuple(m if have is None or math.isnan(have[j]) else have[j] for j, m in enumerate(mapped))

    values = {g: value(g, vals) for g, vals in standin.values.items()}
    return Table(values, f"{measured.source}, the other {len(values) - len(both)} architectures from the "
                         f"stand-in mapped linearly onto them ({standin.source})")


def compare(table: Table, bound, sampler: str | Sequence[str], trials: int, seeds: int, warm: Sequence = (),
            inits: Sequence[str] = ("designs",)) -> dict:
    """Per seed, each sampler's and random search's normalised hypervolume, trials to reach the BK
    designs' hypervolume (``reach``) and random search's mean final one (``reach_random``); each
    sampler's mean-hypervolume ratio to random (``ratio``: the first sampler's) and trials ratios. With
    ``inits`` holding ``one-shot``, every sampler (random too) also runs with ``warm`` enqueued after the designs,
    as ``<sampler>+one-shot``; the baseline stays plain random search. ``names``: every run but random."""
    plain = [sampler] if isinstance(sampler, str) else list(sampler)
    runs_of = {name: (name, ()) for name in plain} if "designs" in inits else {}
    if ONE_SHOT in inits:
        runs_of |= {f"{name}+{ONE_SHOT}": (name, tuple(warm)) for name in [*plain, "random"]}
    samplers = list(runs_of)
    lower, upper = table.bounds()
    designs = [table.values[g.id] for g in bound.named_designs().values()]
    bk = normalised_hypervolume(np.array(designs), lower, upper)
    out = {"optimum": normalised_hypervolume(nondominated(np.array(list(table.values.values()))), lower, upper),
           "bk": bk, "designs": len(designs), "reach": {}, "reach_random": {}, "ratios": {}, "reach_ratios": {},
           "names": samplers, "warm": len(warm) if ONE_SHOT in inits else 0}
    runs_of["random"] = ("random", ())
    runs = {name: [search_once(table, bound, runs_of[name][0], trials, seed, runs_of[name][1]) for seed in range(seeds)]
            for name in ["random", *samplers]}
    for name, found in runs.items():
        out[name] = [normalised_hypervolume(run, lower, upper) for run in found]
        out["reach"][name] = [trials_to_reach(run, bk, lower, upper, len(designs)) for run in found]
    out["random_final"] = statistics.fmean(out["random"])
    for name, found in runs.items():
        out["reach_random"][name] = [trials_to_reach(run, out["random_final"], lower, upper, 0) for run in found]
    censored = {n: statistics.fmean(trials - len(designs) + 1 if r is None else r for r in out["reach"][n])
                for n in runs}
    for name in samplers:
        out["ratios"][name] = statistics.fmean(out[name]) / max(out["random_final"], 1e-12)
        out["reach_ratios"][name] = censored[name] / censored["random"]
    out["ratio"] = out["ratios"][samplers[0]]
    return out


def nondominated(points: np.ndarray) -> np.ndarray:
    """The non-dominated rows of ``points`` (every column minimised), duplicates once: one pass in lexicographic
    order keeping a row no kept row is <= everywhere (a later row cannot dominate an earlier one; Kung et al.,
    JACM 1975's simple cull). O(n x front): a block-mask table's 64,839 rows have a front of a few dozen."""
    front = np.empty((0, points.shape[1]))
    for row in points[np.lexsort(points.T[::-1])]:
        if not np.any(np.all(front <= row, axis=1)):
            front = np.vstack([front, row])
    return front


def trials_to_reach(values: np.ndarray, target: float, lower, upper, skip: int) -> int | None:
    """Trials after the first ``skip`` (the BK designs) until the values found after them alone reach
    normalised hypervolume ``target``; None when they never do."""
    for k in range(skip + 1, len(values) + 1):
        if normalised_hypervolume(values[skip:k], lower, upper) >= target * (1 - 1e-9):
            return k - skip
    return None


def search_once(table: Table, bound, sampler: str, trials: int, seed: int, warm: Sequence = ()) -> np.ndarray:
    """One search of ``trials`` distinct architectures, as ``blocksearch run`` does it: named designs
    first (then ``warm``, the ``--init one-shot`` picks), repeats closed as FAIL (free), and after
    ``REPEATS_BEFORE_FALLBACK`` repeats in a row the shared fallback ``untrained_genome`` is queued. Returns the
    objective values in evaluation order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=samplers.make_sampler(
        sampler, seed, trials, designs=len(bound.named_designs()) + len(warm)))
    for genome in bound.named_designs().values():
        study.enqueue_trial(bound.to_params(genome), user_attrs={"design": True})
    for genome in warm:
        study.enqueue_trial(bound.to_params(genome), user_attrs={"warm": True})
    seen: dict[str, tuple[float, ...]] = {}
    while len(seen) < trials:
        for attempt in range(samplers.MAX_ASKS):
            if attempt >= samplers.REPEATS_BEFORE_FALLBACK:
                genome = samplers.untrained_genome(bound, set(seen), seed, attempt)
                if genome is not None:
                    study.enqueue_trial(bound.to_params(genome), user_attrs={"explore": True})
            trial = study.ask()
            genome = bound.suggest(trial)
            if genome.id not in table.values:
                raise BlocksearchError(f"table {table.source} lacks genome {genome.id}; it must cover the space")
            if genome.id not in seen:
                break
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # a repeat: free, as in `blocksearch run`
        else:
            raise BlocksearchError(f"{sampler} proposed only evaluated Genomes {samplers.MAX_ASKS} times in a "
                                   f"row; the space may be exhausted ({len(bound)} architectures)")
        seen[genome.id] = table.values[genome.id]
        study.tell(trial, table.values[genome.id])
    return np.array(list(seen.values()))


def standin_table(teacher: str, space: str, report: str | None = None) -> Table:
    """Derived table (cached): exact params, exact MACs for latency, one-shot output-KD loss for fid; for a family
    with one-shot block importance, the removed blocks' skip MSE for fid (on ``report``'s block importance where
    given, else computed), params and MACs additive over blocks (families/dit/oneshot.py)."""
    t = load_teacher(teacher)
    digest = hashlib.sha256(b"".join(p.detach().float().numpy().tobytes()[:4096] for p in t.unet.parameters())).hexdigest()[:12]
    if t.family.one_shot is not None:
        return _one_shot_standin(t, teacher, space, digest, report)
    cache = default_cache_dir() / "bench" / f"standin-{space}-{digest}.csv"
    source = (f"DERIVED STAND-IN (cached at {cache}): fid := one-shot output-KD loss after surgery (no "
              f"training), params := exact, latency_ms := exact MACs (a proxy)")
    return Table(cached_table(cache, lambda: _measure_standin(t, _bound(space, teacher))), source)


def cached_table(cache: Path, build: Callable[[], dict[str, tuple[float, ...]]]) -> dict[str, tuple[float, ...]]:
    """Read ``cache``, or build and write it, under one file lock: benchmarks started together build once."""
    with file_lock(lock_path(f"bench-{cache.stem}", cache.parent.parent)):
        if cache.exists():
            return read_table(cache).values
        rows = build()
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        with partial.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows([g, *v] for g, v in rows.items())
        partial.replace(cache)  # a reader without the lock never sees half a table
        return rows


def _one_shot_standin(teacher, spec: str, space: str, digest: str, report: str | None) -> Table:
    """The block-mask stand-in (module docstring), cached by teacher and block importance."""
    family = teacher.family
    table = read_importance(report, family) if report else importance_table(spec, teacher)
    key = hashlib.sha256(json.dumps(family.one_shot.to_rows(table), sort_keys=True).encode()).hexdigest()[:8]
    cache = default_cache_dir() / "bench" / f"standin-{space}-{digest}-{key}.csv"
    denoiser = teacher.denoiser
    bound = load_space(space).bind(family.topology(denoiser.config))

    def costs(arch) -> tuple[int, int]:
        with torch.device("meta"):
            student = type(denoiser).from_config(family.student_config(denoiser.config, arch))
        return count_params(student), count_macs(student, denoiser.config.sample_size, family=family)

    source = (f"DERIVED STAND-IN (cached at {cache}): fid := summed one-shot skip MSE of the removed blocks (no "
              f"training{', ' + str(report) + '/oneshot.json' if report else ''}), params := exact, latency_ms := "
              f"exact MACs (a proxy); both additive over the blocks")
    return Table(cached_table(cache, lambda: family.one_shot.standin(table, bound, costs)), source)


def _measure_standin(teacher, bound) -> dict[str, tuple[float, float, float]]:
    torch.manual_seed(0)
    pipe, unet = teacher.pipeline, teacher.unet.eval()
    size = unet.config["sample_size"]
    prompts = ["a red circle", "two blue squares", "a small green triangle above a yellow circle",
               "a large purple square"]
    try:
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0]
    except Exception:  # a prompt outside the toy vocabulary: random embeddings are enough for a proxy
        text = torch.randn(len(prompts), getattr(pipe.tokenizer, "model_max_length", 77), unet.config["cross_attention_dim"])
    x = torch.randn(len(prompts), unet.config["in_channels"], size, size)
    t = torch.tensor([100, 400, 700, 900])
    with torch.no_grad(), work_slot():  # heavy work: a latency measurement elsewhere waits one architecture at most
        target = unet(x, t, text).sample
        rows = {}
        for genome in tqdm(list(bound), desc="stand-in table", unit="arch", disable=quiet()):
            yield_to_measurement()
            student = teacher.family.build_student(unet, genome).unet.eval()
            loss = torch.nn.functional.mse_loss(student(x, t, text).sample, target).item()
            macs = count_macs(student, size, family=family_of_arch(genome))
            rows[genome.id] = (loss, float(count_params(student)), float(macs))
    return rows
