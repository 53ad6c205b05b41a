"""``blocksearch bench fidelity``: do short KD runs rank candidate architectures the way long runs do?

Architectures: the space's named designs, the Pareto front of a finished study (``--study``), for a family with
one-shot block importance its one-shot picks (search/warm_start.py: the most important blocks kept, at a few
sizes), and random architectures of the space spread over size (evenly spaced quantiles of params, at least two
attention-free where the family has such). Every family goes through its ``Family`` (families/base.py). Each one climbs
a ladder of budgets (``--budgets``; 0 = surgery only, the one-shot score), each budget continuing from the
previous one's checkpoint (distill.py's ``resume_from``: 0->k->n trains the same student as 0->n, so a
ladder costs its longest run once), and is scored at every generation seed (FID, KID, text alignment:
``evaluate.score_images``; no latency). One Ray task per ladder, rows printed and appended to
``<out>/results.jsonl`` as they arrive: a rerun skips every (architecture, budget, seed) done and continues
from the largest checkpoint. rank_stats.py turns the rows into Kendall's tau of each short budget's ranking
against the longest's, with bootstrap intervals, next to params and MACs as baselines; fidelity_report.py
writes ``<out>/`` (index.md, fidelity.csv, short_vs_long.png) and the summary CSV.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from blocksearch.cache import default_cache_dir, work_slot
from blocksearch.recipe.data import fingerprint
from blocksearch.recipe.distill import (OPTIONAL_TRAJECTORY, DistillConfig, checkpoint_info, distill, opted_in,
                                prepare_teacher_cache, trajectory)
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig, score_images
from blocksearch.bench.fidelity_report import ROW_COLUMNS, portable, progress_line, summarize, write_outputs
from blocksearch.bench.predictors_report import write_predictors
from blocksearch.recipe.latency import cost
from blocksearch.report.compute import load_report
from blocksearch.search.cluster import local_ray_auth
from blocksearch.search.run_settings import absolute, stage_configs
from blocksearch.search.teacher_setup import params_table
from blocksearch.families.base import Arch as Genome, ArchSpace as BoundSpace, family_of_arch, get_family
from blocksearch.space import load_space
from blocksearch.study import SearchConfig
from blocksearch.bench.predictors import curve_features
from blocksearch.recipe.probe import ProbeConfig, teacher_probe
from blocksearch.teachers import load_teacher, resolve_teacher
from blocksearch.search.trial import cached_teacher
from blocksearch.search.warm_start import ONE_SHOT_FILE, importance_table, one_shot_archs, read_importance

POOL_DRAWS = 512  # random Genomes drawn before picking the size quantiles (the toy space has 576)
ATTENTION_FREE = 2  # random picks without any transformer (Genome.attention_free), at least
SPREAD = 12  # architectures up to here: designs, front, then random ones spread over size; beyond: the family's
# mixes (families/unet/mixes.py); a family without mixes fills the study with random architectures over size
# EvalConfig settings that do not change a score here (no latency is measured; batching changes no image)
EVAL_UNUSED = ("cache_dir", "batch_size", "latency_warmup", "latency_repeats", "latency_min_s", "latency_clock",
               "latency_device", "latency_dtype", "images")  # images: always generated here
KD_FILE = "kd.json"  # beside a ladder's checkpoint: the cumulative KD seconds to reach it
LOSSES_FILE = "losses.jsonl"  # beside a ladder's checkpoint: the per-step training losses of its segment


@dataclass(frozen=True)
class Arch:
    """One architecture of the benchmark: where it comes from (design, front, random) and its cost."""

    genome: str
    design: str | None
    source: str
    params: int
    macs: int
    attention_free: bool = False


@dataclass(frozen=True)
class FidelityJob:
    """What a ladder needs, picklable: the teacher, the stage settings and where its checkpoints go."""

    teacher: str
    device: str
    distill: dict  # DistillConfig without steps: each budget sets its own
    eval: dict  # EvalConfig without seed: each generation seed sets its own
    checkpoints: str
    cache_steps: int  # the teacher cache covers the longest budget: every run of a ladder shares one file
    threads: int = 1
    probe: dict | None = None  # ProbeConfig: the held-out KD probe at the probe budgets (probe.py); None: off
    longest: int = 0  # the reference budget (learning-curve extrapolation's target)


# -- architectures ---------------------------------------------------------------------------------
class _RandomTrial:
    """``BoundSpace.suggest``'s trial answered by a seeded RNG: a uniformly random choice per row; with
    ``keep_rate``, a boolean choice (a block mask's "kept?") is True at that rate."""

    def __init__(self, rng: random.Random, keep_rate: float | None = None):
        self.rng, self.keep_rate = rng, keep_rate

    def suggest_categorical(self, name, choices):
        if self.keep_rate is not None and set(choices) == {True, False}:
            return self.rng.random() < self.keep_rate
        return self.rng.choice(list(choices))


def random_genomes(bound: BoundSpace, draws: int, seed: int, any_size: bool = False) -> list[Genome]:
    """Distinct valid Genomes sampled as the search's define-by-run function samples them, seeded. ``any_size``:
    each draw keeps a block at its own uniform rate, so that block masks cover the kept-count range (a fair coin
    per block keeps about half of them)."""
    rng, seen = random.Random(seed), {}
    for _ in range(draws):
        genome = bound.suggest(_RandomTrial(rng, rng.random() if any_size else None))
        bound.check(genome)
        seen.setdefault(genome.id, genome)
    return list(seen.values())


def spread_over_size(pool: list[Genome], size: Callable[[Genome], int], k: int) -> list[Genome]:
    """``k`` Genomes of ``pool`` at evenly spaced quantiles of ``size`` (the midpoints of k equal bins)."""
    ranked = sorted(pool, key=lambda g: (size(g), g.id))
    return [ranked[int((j + 0.5) * len(ranked) / k)] for j in range(min(k, len(ranked)))]


def pick_random(pool: list[Genome], size: Callable[[Genome], int], k: int) -> list[Genome]:
    """``spread_over_size``, then attention-free Genomes (at their own size quantiles) replace the picks
    nearest in size until ``ATTENTION_FREE`` of the picks are attention-free."""
    picks = spread_over_size(pool, size, k)
    missing = min(ATTENTION_FREE, len(picks)) - sum(g.attention_free for g in picks)
    free = [g for g in pool if g.attention_free and g not in picks]
    for genome in spread_over_size(free, size, max(0, missing)):
        keeps = [i for i, p in enumerate(picks) if not p.attention_free]
        picks[min(keeps, key=lambda i: abs(size(picks[i]) - size(genome)))] = genome
    return sorted(picks, key=lambda g: (size(g), g.id))


def mix_cell(genome: Genome, bound: BoundSpace):
    """The family's mix cell of ``genome`` (families/unet/mixes.py for U-Nets)."""
    return get_family(bound.space.family).mix_cell(genome, bound)


def pick_mixes(pool: list[Genome], bound: BoundSpace, k: int, seed: int) -> list[Genome]:
    """``k`` Genomes of ``pool``, one per cell of MIX_CELLS in its order (cycling past 12), each a seeded
    random member of its cell: the architectures that mix keeping or dropping the first stage's layers, the
    innermost stage and each mid-block kind (issue 19's extension of the study). Cells the space cannot
    reach (no removable stage, a fixed mid block) are skipped."""
    rng, picks = random.Random(f"mix-{seed}"), []
    cells = [c for c in get_family(bound.space.family).mix_cells if any(mix_cell(g, bound) == c for g in pool)]
    for j in range(k):
        members = [g for g in pool if cells and mix_cell(g, bound) == cells[j % len(cells)] and g not in picks]
        if members:
            picks.append(rng.choice(sorted(members, key=lambda g: g.id)))
    return picks


def choose_architectures(bound: BoundSpace, teacher_unet: torch.nn.Module, n: int, seed: int,
                         front: list[Genome] = (), draws: int = POOL_DRAWS,
                         one_shot: list[tuple[str, Genome]] = ()) -> list[Arch]:
    """The named designs, then ``front`` (a study's Pareto front), then ``one_shot`` ((label, arch): the one-shot
    picks, source ``one-shot``), then random architectures (of ``draws`` drawn) spread over params, up to ``n`` in
    all (fewer than the fixed ones: the first ``n`` of them). For a family with mixes (``Family.mix_cell``: the
    U-Net's), random ones up to SPREAD and the mixes past it (``pick_mixes``). Deterministic in ``seed``; growing
    ``n`` keeps the architectures of a smaller ``n``, so a study extends rather than restarts."""
    fixed, taken = [], set()
    for genome, design, source in ([(g, name, "design") for name, g in bound.named_designs().items()]
                                   + [(g, None, "front") for g in front]
                                   + [(g, None, "one-shot") for _, g in one_shot]):
        if genome.id not in taken and len(fixed) < n:
            fixed.append((genome, design, source))
            taken.add(genome.id)
    mixing = get_family(bound.space.family).mix_cell is not None
    pool = [g for g in random_genomes(bound, draws, seed, not mixing) if g.id not in taken] if n > len(fixed) else []
    picks = pick_random(pool, params_table(teacher_unet, bound), max(0, (min(n, SPREAD) if mixing else n) - len(fixed)))
    mixes = pick_mixes([g for g in pool if g not in picks], bound, n - len(fixed) - len(picks), seed) if mixing else []
    chosen = fixed + [(g, None, "random") for g in picks] + [(g, None, "mix") for g in mixes]
    return [Arch(g.id, design, source, *arch_cost(teacher_unet, g), g.attention_free) for g, design, source in chosen]


def named_architectures(bound: BoundSpace, teacher_unet: torch.nn.Module, ids: str | None,
                        taken: list[Arch]) -> list[Arch]:
    """``--also``'s genome ids as architectures (source "named"), those not in ``taken``; a malformed id or one
    outside the space is a one-line error. An earlier run's named ones come back the same way (its results)."""
    out, seen = [], {a.genome for a in taken}
    for text in dict.fromkeys(t.strip() for t in (ids or "").split(",") if t.strip()):
        genome = bound.from_id(text)
        if genome not in bound:
            raise BlocksearchError(f"--also {text}: not an architecture of this space on this teacher")
        if genome.id not in seen:
            out.append(Arch(genome.id, None, "named", *arch_cost(teacher_unet, genome), genome.attention_free))
            seen.add(genome.id)
    return out


def arch_cost(teacher_unet: torch.nn.Module, genome: Genome) -> tuple[int, int]:
    """(params, MACs) of an architecture from its config alone (meta device; cached on disk by latency.cost)."""
    family = family_of_arch(genome).for_teacher(teacher_unet.config)
    with torch.device("meta"):
        unet = type(teacher_unet).from_config(family.student_config(teacher_unet.config, genome))
    return cost(unet, teacher_unet.config.sample_size, family=family)


def study_front(study: str, storage: str | None, bound: BoundSpace) -> list[Genome]:
    """The Genomes on the Pareto front of a finished study (those of this space)."""
    report = load_report(study, storage)
    genomes = [bound.from_id(report.trial(n).genome) for n in report.front if report.trial(n).genome]
    return [g for g in genomes if g in bound]


def results_front(rows: list[dict], bound: BoundSpace) -> list[Genome]:
    """The front architectures of an earlier run of this --out (extending a study keeps its architectures)."""
    return [bound.from_id(g) for g in dict.fromkeys(r["genome"] for r in rows if r.get("source") == "front")]


# -- results: one JSON line per (architecture, budget, seed) -----------------------------------------
def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps({k: row[k] for k in ROW_COLUMNS}) + "\n")


def pending(archs: list[Arch], budgets: list[int], seeds: list[int], rows: list[dict]) -> list[tuple[Arch, list]]:
    """Per architecture, the (budget, [seeds]) not in ``rows`` yet, budgets ascending; done ladders left out."""
    return [(arch, [(b, s) for b, s, _ in todo]) for arch, _, todo in pending_ladders(archs, budgets, seeds, rows)]


def pending_ladders(archs: list[Arch], budgets: list[int], seeds: list[int], rows: list[dict],
                    probes: list[dict] = (), kd_seeds: list[int] = (0,), probe_budgets: list[int] = (),
                    extra_budgets: list[int] | None = None, full_archs: frozenset = frozenset()
                    ) -> list[tuple[Arch, int, list]]:
    """Per (architecture, KD seed), the (budget, [generation seeds to score], probe?) not done yet, budgets
    ascending. KD seeds other than the first climb only ``extra_budgets`` (default: every budget) above 0 and
    are scored at the first generation seed (the KD-seed spread compares students at the same generation
    seed), except on the ``full_archs`` (genome ids): there they climb every budget, so that the longest
    budget's reference is a mean over KD seeds where it matters and is affordable; rows without a ``kd_seed`` are KD
    seed 0's (studies before it was recorded). ``--also``'s architectures (source "named") climb the first KD seed
    only: they are out of the tau study and its KD-seed noise, so an extension run with more KD seeds does not train
    them again."""
    done = {(r["genome"], r.get("kd_seed", 0), r["budget"], r["seed"]) for r in rows}
    probed = {(r["genome"], r.get("kd_seed", 0), r["budget"]) for r in probes}
    work = []
    for arch in archs:
        for k in kd_seeds[:1] if arch.source == "named" else kd_seeds:
            first = k == kd_seeds[0]  # other KD seeds: no budget 0 (surgery alone has no KD seed), generation seed 1st
            every = extra_budgets is None or arch.genome in full_archs
            ladder = [b for b in budgets if first or (b > 0 and (every or b in extra_budgets))]
            todo = [(b, [s for s in (seeds if first else seeds[:1]) if (arch.genome, k, b, s) not in done],
                     b in probe_budgets and (arch.genome, k, b) not in probed) for b in sorted(ladder)]
            todo = [(b, s, p) for b, s, p in todo if s or p]
            if todo:
                work.append((arch, k, todo))
    return work


# -- one ladder: train up the budgets, score each at its seeds ---------------------------------------
def run_ladder(job: FidelityJob, arch: Arch, todo: list[tuple], kd_seed: int = 0) -> Iterator[dict]:
    """Yield one row per (budget, seed) of ``todo`` (and a probe row where asked: ``"probe": True``); a failure
    ends the ladder with an ``error`` row."""
    torch.set_num_threads(job.threads)
    budget = None
    try:
        with work_slot():  # heavy work: a latency measurement of another process waits for its checkpoints
            teacher = cached_teacher(resolve_teacher(job.teacher), job.device)
            genome = teacher.family.arch_from_id(arch.genome)
            for budget, seeds, *probe in todo:
                student, kd_s = reach_budget(job, teacher, genome, budget, kd_seed)
                if probe and probe[0]:
                    yield probe_row(job, teacher, student, arch, budget, kd_seed, kd_s)
                for seed in seeds:
                    yield score_row(job, teacher, student, arch, budget, seed, kd_s) | {"kd_seed": kd_seed}
    except Exception as err:  # noqa: BLE001 - one failing architecture is reported; the others go on
        text = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        yield {"genome": arch.genome, "budget": budget, "kd_seed": kd_seed, "error": f"{type(err).__name__}: {text}"}


def probe_row(job: FidelityJob, teacher, student, arch: Arch, budget: int, kd_seed: int, kd_s: float) -> dict:
    """The held-out KD probe's scores (probe.py) and the training-loss curve's features (predictors.py) of the
    student at ``budget``: the cheap predictors, beside the FID rows."""
    probe = teacher_probe(job.teacher, teacher, ProbeConfig.from_dict(job.probe), job.device,
                          job.distill.get("data", "toy"), job.distill.get("cache_dir"), job.distill.get("resolution"))
    scores = probe.score(student.unet, student.kd_pairs)
    losses = ladder_losses(job, arch.genome, budget, kd_seed)
    return dict(genome=arch.genome, design=arch.design, source=arch.source, kd_seed=kd_seed, budget=budget,
                params=arch.params, macs=arch.macs, kd_s=round(kd_s, 3),
                **{k: v for k, v in scores.items() if k != "probe_s"}, probe_s=round(scores["probe_s"], 3),
                **curve_features([r["loss_kd_out"] for r in losses], job.longest), probe=True)


def checkpoint_dir(job: FidelityJob, genome: str, budget: int, kd_seed: int = 0) -> Path:
    """``<root>/<genome>/<budget>`` (KD seed 0, as before seeds were recorded), ``<root>/<genome>/kd<k>/<budget>``."""
    return Path(job.checkpoints) / genome / (f"kd{kd_seed}" if kd_seed else "") / str(budget)


def ladder_losses(job: FidelityJob, genome: str, budget: int, kd_seed: int = 0) -> list[dict]:
    """The per-step training losses from step 1 to ``budget``, following the checkpoints' segments back."""
    segments, b = [], budget
    while b:
        here = checkpoint_dir(job, genome, b, kd_seed)
        if not (here / LOSSES_FILE).is_file():
            return []  # a checkpoint of an older run: its losses were not kept
        segments.append(read_rows(here / LOSSES_FILE))
        b = json.loads((here / KD_FILE).read_text())["from_budget"]
    return [r for seg in reversed(segments) for r in seg]


def finished_checkpoints(job: FidelityJob, genome: str, kd_seed: int = 0) -> dict[int, float]:
    """Budget -> cumulative KD seconds of every finished checkpoint of ``genome``'s ladder."""
    folder, out = Path(job.checkpoints) / genome / (f"kd{kd_seed}" if kd_seed else ""), {}
    for path in folder.glob(f"*/{KD_FILE}") if folder.is_dir() else ():
        if path.parent.name.isdigit() and checkpoint_info(path.parent) is not None:
            out[int(path.parent.name)] = json.loads(path.read_text())["kd_s"]
    return out


def reach_budget(job: FidelityJob, teacher, genome: Genome, budget: int, kd_seed: int = 0) -> tuple[object, float]:
    """The student at ``budget`` KD steps and the cumulative KD seconds to get there: surgery at 0; else its
    checkpoint, or trained on from the largest finished checkpoint below it (surgery if none) and saved.
    KD seed k trains with the run's seed + k: another data order, noise and timesteps (the KD-seed noise)."""
    student = teacher.family.build_student(teacher.denoiser, genome)
    if budget == 0:
        return student, 0.0
    done = finished_checkpoints(job, genome.id, kd_seed)
    config = DistillConfig.from_dict(job.distill | {"steps": budget, "seed": int(job.distill.get("seed", 0)) + kd_seed})
    here = checkpoint_dir(job, genome.id, budget, kd_seed)
    if budget in done:
        distill(teacher, student, config, job.device, progress=False, resume_from=here)  # loads, trains nothing
        return student, done[budget]
    base = max((b for b in done if b < budget), default=0)
    result = distill(teacher, student, config, job.device, progress=False, save_to=here,
                     resume_from=checkpoint_dir(job, genome.id, base, kd_seed) if base else None,
                     cache_steps=max(job.cache_steps, budget))
    kd_s = done.get(base, 0.0) + result.wall_s
    with (here / LOSSES_FILE).open("w") as f:
        f.writelines(json.dumps({k: r[k] for k in ("step", "loss", "loss_task", "loss_kd_out", "loss_kd_feat")}) + "\n"
                     for r in result.losses)
    (here / KD_FILE).write_text(json.dumps({"kd_s": kd_s, "from_budget": base}) + "\n")
    return student, kd_s


def score_row(job: FidelityJob, teacher, student, arch: Arch, budget: int, seed: int, kd_s: float) -> dict:
    """The student's scores at generation seed ``seed``; the FID reference set stays the evaluation's own
    (seed 0's), as for the search's noise seeds (trial.seed_scores): only the generated images change."""
    t0 = time.perf_counter()
    scores = score_images(teacher, student.unet, EvalConfig.from_dict(job.eval | {"seed": seed}), job.device,
                          progress=False, reference=EvalConfig.from_dict(job.eval))
    d = scores.distance
    return dict(genome=arch.genome, design=arch.design, source=arch.source, budget=budget, seed=seed, fid=d.fid,
                kid=d.kid, kid_std=d.kid_std, alignment=scores.alignment, params=arch.params, macs=arch.macs,
                kd_s=round(kd_s, 3), eval_s=round(time.perf_counter() - t0, 3))


# -- running the ladders: in this process (--workers 0) or one Ray task each --------------------------
def run_ladders(job: FidelityJob, work: list[tuple[Arch, int, list]], workers: int,
                on_row: Callable[[dict], None]) -> None:
    """Each (architecture, KD seed, todo) of ``work`` as one ladder: here (``workers`` 0) or one Ray task each."""
    if workers == 0:
        for arch, kd_seed, todo in work:
            for row in run_ladder(job, arch, todo, kd_seed):
                on_row(row)
        return
    local_ray_auth(None)  # a new local cluster: token auth, as `blocksearch run` does (before Ray is imported)
    import ray  # only once there is work for it (search.py: importing Ray costs seconds)

    try:
        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=True)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise BlocksearchError(f"cannot start a local Ray ({str(err).strip().splitlines()[0][:160]}); "
                               f"--workers 0 runs the ladders in this process") from None
    try:
        task = ray.remote(num_cpus=1, num_returns="streaming")(run_ladder)
        running = {task.remote(job, arch, todo, kd_seed): arch for arch, kd_seed, todo in work}
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for gen in ready:
                try:
                    on_row(ray.get(next(gen)))
                except StopIteration:
                    running.pop(gen)
                except ray.exceptions.RayError as err:  # the worker itself died (e.g. out of memory)
                    on_row({"genome": running.pop(gen).genome, "budget": None,
                            "error": str(err).strip().splitlines()[0][:300]})
    finally:
        ray.shutdown()


# -- the command ---------------------------------------------------------------------------------------
def parse_ints(text: str, flag: str, low: int = 0) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise BlocksearchError(f"{flag} {text!r}: expected integers separated by commas") from None
    if not values or values[0] < low:
        raise BlocksearchError(f"{flag} {text!r}: allowed: integers >= {low} separated by commas")
    return values


def stage_settings(args) -> tuple[dict, dict]:
    """The trials' DistillConfig and EvalConfig of ``blocksearch run`` with these flags (search.py's
    defaults for the teacher), as dicts without the per-budget steps and the per-run seed; the distill dict
    holds --kd-schedule, --kd-warmup and --kd-ema only where they are not their defaults."""
    distill_cfg, eval_cfg = stage_configs(SearchConfig(
        teacher=args.teacher, eval_prompts=args.eval_prompts, seed=args.seed, teacher_cache=args.teacher_cache,
        kd_schedule=getattr(args, "kd_schedule", None), kd_warmup=getattr(args, "kd_warmup", None),
        kd_ema=getattr(args, "kd_ema", None)), resolve_teacher(args.teacher))
    drop = lambda d, *keys: {k: v for k, v in asdict(d).items() if k not in keys}  # noqa: E731
    distill = drop(distill_cfg, "steps", *OPTIONAL_TRAJECTORY)
    return distill | opted_in(asdict(distill_cfg)), drop(eval_cfg, "seed")


def run_identity(teacher, distill: dict, eval_: dict) -> dict:
    """What the rows and checkpoints of an --out folder depend on: a rerun must match it."""
    return {"teacher_unet": fingerprint(teacher.unet), "distill": trajectory(distill),
            "eval": {k: v for k, v in eval_.items() if k not in EVAL_UNUSED}}


def check_identity(out: Path, identity: dict) -> None:
    path = out / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        diff = [k for k in identity if stored.get(k) != json.loads(json.dumps(identity[k]))]
        if diff:
            raise BlocksearchError(f"{out} holds results of other settings ({diff[0]} differs); pass another "
                                   f"--out, or the settings of its settings.json")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(identity, indent=1) + "\n")


def checkpoint_root(identity: dict) -> Path:
    """``$BLOCKSEARCH_CACHE/bench/fidelity/<key>``: the ladders' checkpoints, keyed by teacher and KD settings
    (the evaluation settings do not change a checkpoint), outside the report folder (they are large)."""
    key = hashlib.sha256(json.dumps([identity["teacher_unet"], identity["distill"]], sort_keys=True).encode())
    return default_cache_dir() / "bench" / "fidelity" / key.hexdigest()[:16]


def cmd_bench_fidelity(args) -> int:
    """Choose the architectures, run what results.jsonl and probes.jsonl lack, then summarise and write every
    output: the budgets' FID rankings (KD seed 0, fidelity_report.py) and the cheap predictors against the
    longest budget (predictors_report.py)."""
    space = load_space(args.space)
    if args.teacher == "toy":  # the bundled toy teacher of the space's family (as `blocksearch run` reads it)
        args.teacher = get_family(space.family).toy_teacher
    ref = resolve_teacher(args.teacher)
    if not ref.is_toy:
        raise BlocksearchError(f"--teacher {args.teacher}: bench fidelity runs on a toy teacher (toy, toy-dit, or a "
                               f"`blocksearch toy build` folder); its scores are the toy judge's")
    if ref.family.name != space.family:
        raise BlocksearchError(f"--space {args.space} is for the {space.family} family but --teacher {args.teacher} is "
                               f"a {ref.family.name} teacher; allowed: a {space.family} toy teacher "
                               f"({get_family(space.family).toy_teacher})")
    default_paths(args, ref.family)
    budgets, seeds = parse_ints(args.budgets, "--budgets"), parse_ints(args.seeds, "--seeds")
    kd_seeds = parse_ints(args.kd_seeds, "--kd-seeds")
    probe_budgets = {"none": [], "auto": budgets[:-1]}.get(args.probe_budgets) if args.probe_budgets in (
        "none", "auto") else parse_ints(args.probe_budgets, "--probe-budgets")
    extra = None if args.extra_seed_budgets is None else parse_ints(args.extra_seed_budgets, "--extra-seed-budgets")
    full = frozenset(g.strip() for g in (getattr(args, "full_seed_archs", None) or "").split(",") if g.strip())
    if len(budgets) < 2 or args.archs < 2 or args.workers < 0 or args.boot < 1:
        raise BlocksearchError("allowed: --budgets with >= 2 budgets, --archs >= 2, --workers >= 0, --boot >= 1")
    if not set(probe_budgets) <= set(budgets) or not set(extra or ()) <= set(budgets):
        raise BlocksearchError(f"--probe-budgets and --extra-seed-budgets: allowed: budgets of --budgets {budgets}")
    torch.set_num_threads(1)
    spec = absolute(args.teacher) if Path(args.teacher).exists() else args.teacher  # as the Ray workers load it
    teacher = load_teacher(spec)
    bound = space.bind(teacher.family.topology(teacher.denoiser.config))
    results, probes = Path(args.out) / "results.jsonl", Path(args.out) / "probes.jsonl"
    front = study_front(args.study, args.storage, bound) if args.study else results_front(read_rows(results), bound)
    distill_settings, eval_settings = stage_settings(args)
    table = one_shot_table(args, spec, teacher, distill_settings)
    picks = one_shot_archs(teacher.family, table, bound, one_shot_sizes(args)) if table is not None else []
    archs = choose_architectures(bound, teacher.unet, args.archs, args.seed, front, one_shot=picks)
    earlier = ",".join(r["genome"] for r in read_rows(results) if r.get("source") == "named")
    for ids in (earlier, getattr(args, "also", None)):  # extending a study keeps the named ones it had
        archs += named_architectures(bound, teacher.unet, ids, archs)
    studied = [a for a in archs if a.source != "named"]  # --also's: in the measured table, not in the tau study
    studied_ids = [a.genome for a in studied]
    unknown = sorted(full - set(studied_ids))
    if unknown:
        raise BlocksearchError(f"--full-seed-archs {unknown[0]}: not one of the study's architectures; allowed: "
                               f"the --archs ones ({', '.join(studied_ids[:3])}, ...: see the report's table)")
    out, identity = Path(args.out), run_identity(teacher, distill_settings, eval_settings)
    check_identity(out, identity)
    cache_dir = {"cache_dir": str(default_cache_dir().resolve())}  # Ray workers may run in another folder
    work = pending_ladders(archs, budgets, seeds, read_rows(results), read_rows(probes), kd_seeds, probe_budgets, extra,
                           full)
    job = FidelityJob(spec, "cpu", distill_settings | cache_dir, eval_settings | cache_dir,
                      str(checkpoint_root(identity)), max([b for _, _, todo in work for b, _, _ in todo], default=0),
                      probe=ProbeConfig().to_dict(), longest=max(budgets))
    print(f"{len(archs)} architectures ({', '.join(a.design or a.source for a in archs)}) x budgets {budgets} "
          f"KD steps x KD seeds {kd_seeds} x generation seeds {seeds}; the held-out probe at {probe_budgets or 'none'}")
    failures = [] if args.report_only else run_pending(job, teacher, work, results, probes, args.workers)
    rows = read_rows(results)
    kd0 = [r for r in rows if r.get("kd_seed", 0) == 0]
    summary = summarize(kd0, studied, budgets, seeds, args.boot)
    other_kd_long = [r for r in rows if r.get("kd_seed", 0) != 0 and r["budget"] == max(budgets)]  # the reference's
    every = dataclasses.replace(summary, archs=archs, rows=[r for r in kd0 + other_kd_long if r["budget"] in budgets
                                                            and r["seed"] in seeds])
    write_outputs(summary, args, out, Path(job.checkpoints), every)
    extra = write_one_shot(out, teacher.family, table, bound, archs, picks) if table is not None else None
    write_predictors(rows, read_rows(probes), studied, budgets, args, out, extra=extra)
    return 1 if failures else 0


def default_paths(args, family) -> None:
    """--out, --csv, --table and --selection where not given: named after the family's toy teacher (``fidelity-toy``,
    ``fidelity-toy-dit``) and the family's selection file (Family.selection_file), beside the other families'."""
    name = f"fidelity-{family.toy_teacher}"
    for flag, value in (("out", f"reports/{name}"), ("csv", f"blocksearch/measured/{name}-tau.csv"),
                        ("table", f"blocksearch/measured/{name}.csv"),
                        ("selection", f"blocksearch/measured/{family.selection_file}")):
        if getattr(args, flag, None) is None:
            setattr(args, flag, value)


def one_shot_sizes(args) -> tuple[float, ...] | None:
    """--one-shot-sizes: kept fractions of the one-shot picks (None: the family's default; () for none)."""
    text = getattr(args, "one_shot_sizes", "auto") or "auto"
    if text in ("auto", "none"):
        return None if text == "auto" else ()
    try:
        sizes = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        sizes = ()
    if not sizes or not all(0 < f <= 1 for f in sizes):
        raise BlocksearchError(f"--one-shot-sizes {text!r}: allowed: auto, none, or kept fractions in (0, 1] "
                               f"separated by commas (0.5 = half of each searched group)")
    return sizes


def one_shot_table(args, spec: str, teacher, distill: dict) -> list | None:
    """The teacher's one-shot block importance on the probe's held-out batches, for a family that has it (None
    else); read from ``<out>/oneshot.json`` when an earlier run of this --out wrote it."""
    family = teacher.family
    if family.one_shot is None:
        return None
    if (Path(args.out) / ONE_SHOT_FILE).is_file():
        return read_importance(args.out, family)
    t0 = time.perf_counter()
    table = importance_table(spec, teacher, "cpu", distill.get("data", "toy"), str(default_cache_dir().resolve()),
                             distill.get("resolution"))
    print(f"one-shot block importance of the teacher on the probe's held-out batches: {time.perf_counter() - t0:.1f} s")
    return table


def write_one_shot(out: Path, family, table: list, bound, archs: list[Arch],
                   picks: list = ()) -> dict[str, dict[str, float]]:
    """Write ``<out>/oneshot.json`` (the blocks' importance, each architecture's one-shot scores, and which pick each
    one-shot architecture is) and ``<out>/oneshot.md``; return the scores as predictors (name -> genome -> value,
    lower predicts better)."""
    scores = {a.genome: family.one_shot.scores(table, bound.from_id(a.genome)) for a in archs}
    out.mkdir(parents=True, exist_ok=True)
    (out / ONE_SHOT_FILE).write_text(json.dumps({"blocks": family.one_shot.to_rows(table), "archs": scores,
                                                 "picks": {arch.id: label for label, arch in picks}}, indent=1) + "\n")
    lines = ["# One-shot block importance of the teacher", "",
             "On the probe's held-out batches, without training: `skip_mse`, the prediction's mean squared change "
             "when the block alone is skipped (Flux.1-Lite); `influence`, 1 - cos(block input, output) (ShortGPT, "
             "arXiv 2403.03853). Rank 1 = most important.", "",
             "| block | skip_mse | rank | influence | rank |", "|---|---|---|---|---|"]
    lines += [f"| {r.module} | {r.skip_mse:.4g} | {r.skip_rank} | {r.influence:.4g} | {r.influence_rank} |"
              for r in sorted(table, key=lambda r: (r.group, r.index))]
    (out / "oneshot.md").write_text("\n".join(lines) + "\n")
    names = sorted({k for v in scores.values() for k in v})
    return {k: {g: v[k] for g, v in scores.items()} for k in names}


def run_pending(job: FidelityJob, teacher, work: list[tuple[Arch, int, list]], results: Path, probes: Path,
                workers: int) -> list[dict]:
    """Run the ladders of ``work``, printing and appending each row as it arrives; the failures."""
    todo = sum(len(seeds) for _, _, ladder in work for _, seeds, _ in ladder)
    n_probe = sum(p for _, _, ladder in work for _, _, p in ladder)
    print(f"{todo} (architecture, budget, seed) to score and {n_probe} to probe in {len(work)} ladders; "
          f"checkpoints in {portable(job.checkpoints)}")
    if not work:
        print(f"every (architecture, budget, seed) is in {portable(results)} already: nothing to train or score")
        return []
    for kd_seed in sorted({k for _, k, _ in work}):
        if max(b for _, k, ladder in work if k == kd_seed for b, _, _ in ladder) > 0:
            warm_cache(teacher, job, kd_seed)
    failures = []

    def on_row(row: dict) -> None:
        if "error" in row:
            failures.append(row)
        elif row.pop("probe", False):
            with probes.open("a") as f:
                f.write(json.dumps(row) + "\n")
        else:
            append_row(results, row)
        print(progress_line(row), flush=True)

    run_ladders(job, work, workers, on_row)
    if failures:
        print(f"{len(failures)} ladders failed (a rerun retries them): "
              + "; ".join(f"{r['genome']}: {r['error']}" for r in failures))
    return failures


def warm_cache(teacher, job: FidelityJob, kd_seed: int = 0) -> None:
    """Build the teacher cache of the longest budget trained once, before the ladders (search.warm_teacher_cache)."""
    config = DistillConfig.from_dict(job.distill | {"steps": job.cache_steps,
                                                    "seed": int(job.distill.get("seed", 0)) + kd_seed})
    t0 = time.perf_counter()
    cache, why = prepare_teacher_cache(teacher, config)
    where = f"ready in {time.perf_counter() - t0:.0f} s, shared by every ladder" if cache else "none"
    print(f"teacher cache for {job.cache_steps} KD steps, KD seed {kd_seed}: {where} ({why})")
