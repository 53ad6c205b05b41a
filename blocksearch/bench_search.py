"""``blocksearch bench search``: does the sampler beat random search at equal trial counts?

Each search runs on a cheap stand-in objective: a table Genome -> (fid, params, latency_ms) over the
whole space, so a trial is a table look-up and many seeds are affordable. The stand-in is derived
(and cached): params exact (surgery on the teacher's config), latency -> exact MACs (a proxy:
SnapFusion, arXiv 2306.00980, shows MACs mis-rank latency), fid -> the one-shot output-KD loss of the
student cut from the teacher before any training (LAPTOP-Diff's one-shot criterion, arXiv 2404.11098;
TinyFusion, arXiv 2412.01199, shows it can mis-rank trained quality). When a table of measured trials
exists (``blocksearch/measured/toy.csv``, or ``--table``), its values replace the stand-in's and the
stand-in columns are mapped linearly onto the measured scale for the rest; the output says which.
As in ``blocksearch run``, the BK designs
are enqueued first and an architecture seen before costs no trial. The score is the hypervolume of
the front found, objectives normalised to [0, 1] over the whole table, reference point 1.1.
"""

from __future__ import annotations

import csv
import hashlib
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blocksearch.cache import default_cache_dir
from blocksearch.errors import BlocksearchError
from blocksearch.pareto import normalised_hypervolume

MEASURED = Path(__file__).parent / "measured" / "toy.csv"  # written from a real default run
COLUMNS = ("genome", "fid", "params", "latency_ms")


@dataclass(frozen=True)
class Table:
    """Objective values per Genome id (every column minimised) and how they were obtained."""

    values: dict[str, tuple[float, ...]]
    source: str

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        arr = np.array(list(self.values.values()))
        return arr.min(axis=0), arr.max(axis=0)


def add_bench_search_parser(sub) -> None:
    """Register ``bench search`` on the bench sub-commands."""
    p = sub.add_parser(
        "search", help="the search's sampler vs random search on a stand-in objective (hypervolume ratio)",
        description="Run the sampler and random search for the same number of trials over several "
                    "seeds on a table of Genome -> (fid, params, latency); print the mean normalised "
                    "hypervolume of each and their ratio.")
    p.add_argument("--sampler", default="tpe", help="tpe (default) | nsga2 | gp")
    p.add_argument("--trials", type=int, default=16, help="trials per search, BK designs included (default: 16)")
    p.add_argument("--seeds", type=int, default=10, help="independent seeds per sampler (default: 10)")
    p.add_argument("--table", default=None,
                   help=f"CSV with columns {','.join(COLUMNS)} (default: {MEASURED.name} if present, else "
                        f"a derived stand-in, cached under $BLOCKSEARCH_CACHE/bench, default ~/.cache/blocksearch/bench)")
    p.add_argument("--teacher", default="toy", help="teacher for a derived stand-in table (default: toy)")
    p.add_argument("--space", default="unet_blocks", help="space (default: unet_blocks)")
    p.set_defaults(handler=cmd_bench_search)


def cmd_bench_search(args) -> int:
    from blocksearch.samplers import SAMPLERS

    if args.sampler not in SAMPLERS or args.sampler == "random":
        raise BlocksearchError(f"--sampler {args.sampler!r}: allowed: {[s for s in SAMPLERS if s != 'random']}")
    if args.trials < 4 or args.seeds < 1:
        raise BlocksearchError("--trials must be >= 4 and --seeds >= 1")
    bound = _bound(args.space, args.teacher)
    measured = Path(args.table) if args.table else MEASURED
    table = standin_table(args.teacher, args.space)
    if measured.exists():
        table = calibrate(table, read_table(measured))
    result = compare(table, bound, args.sampler, args.trials, args.seeds)
    print(f"table: {table.source}")
    print(f"space {args.space}: {len(table.values)} architectures; {args.trials} trials per search "
          f"(3 BK designs first), {args.seeds} seeds; hypervolume of (fid, params, latency) normalised to "
          f"[0, 1] over the table, reference point 1.1 (best possible here: {result['optimum']:.4f})")
    for name in (args.sampler, "random"):
        hv = result[name]
        print(f"  {name:7s} mean {statistics.fmean(hv):.4f}  min {min(hv):.4f}  max {max(hv):.4f}  "
              f"per seed {' '.join(f'{v:.3f}' for v in hv)}")
    print(f"hypervolume ratio {args.sampler} / random: {result['ratio']:.3f} "
          f"({'better' if result['ratio'] > 1 else 'not better'} than random at {args.trials} trials)")
    return 0


def _bound(space: str, teacher: str):
    from blocksearch.space import load_space
    from blocksearch.teachers import load_teacher_unet, topology_of

    return load_space(space).bind(topology_of(load_teacher_unet(teacher, device="cpu").config))


def read_table(path: Path) -> Table:
    if not path.is_file():
        raise BlocksearchError(f"table {path} does not exist")
    with path.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    missing = [c for c in COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise BlocksearchError(f"table {path}: expected a CSV with columns {list(COLUMNS)}; missing {missing}")
    values = {r["genome"]: tuple(float(r[c]) for c in COLUMNS[1:]) for r in rows}
    return Table(values, f"{path} ({len(values)} measured architectures)")


def calibrate(standin: Table, measured: Table) -> Table:
    """Measured values where there are any; elsewhere each stand-in column mapped linearly onto the
    measured scale (least squares over the architectures both tables have)."""
    both = [g for g in measured.values if g in standin.values]
    if len(both) < 2:
        raise BlocksearchError(f"{measured.source}: fewer than 2 architectures of the space; cannot calibrate")
    x = np.array([standin.values[g] for g in both])
    y = np.array([measured.values[g] for g in both])
    fits = [np.polyfit(x[:, j], y[:, j], 1) if np.ptp(x[:, j]) > 0 else (0.0, y[:, j].mean())
            for j in range(x.shape[1])]
    values = {g: measured.values.get(g) or tuple(float(np.polyval(f, v)) for f, v in zip(fits, vals))
              for g, vals in standin.values.items()}
    return Table(values, f"{measured.source}, the other {len(values) - len(both)} architectures from the "
                         f"stand-in mapped linearly onto them ({standin.source})")


def compare(table: Table, bound, sampler: str, trials: int, seeds: int) -> dict:
    """Normalised hypervolume per seed for ``sampler`` and for random search; their mean ratio."""
    lower, upper = table.bounds()
    optimum = normalised_hypervolume(np.array(list(table.values.values())), lower, upper)
    out = {"optimum": optimum}
    for name in (sampler, "random"):
        out[name] = [normalised_hypervolume(search_once(table, bound, name, trials, seed), lower, upper)
                     for seed in range(seeds)]
    out["ratio"] = statistics.fmean(out[sampler]) / max(statistics.fmean(out["random"]), 1e-12)
    return out


def search_once(table: Table, bound, sampler: str, trials: int, seed: int) -> np.ndarray:
    """One search of ``trials`` distinct architectures; returns the objective values it evaluated."""
    import optuna

    from blocksearch.samplers import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * 3, sampler=make_sampler(sampler, seed, trials))
    for genome in bound.named_designs().values():
        study.enqueue_trial(bound.to_params(genome))
    seen: dict[str, tuple[float, ...]] = {}
    for _ in range(trials * 50):  # cache hits are free, as in `blocksearch run`; cap the asks
        if len(seen) == trials:
            break
        trial = study.ask()
        genome = bound.suggest(trial)
        if genome.id not in table.values:
            raise BlocksearchError(f"table {table.source} lacks genome {genome.id}; it must cover the space")
        if genome.id in seen:  # a repeat: closed as FAIL, as `blocksearch run` does
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        seen[genome.id] = table.values[genome.id]
        study.tell(trial, table.values[genome.id])
    return np.array(list(seen.values()))


def standin_table(teacher: str, space: str) -> Table:
    """Derived table (cached): exact params, exact MACs for latency, one-shot output-KD loss for fid."""
    from blocksearch.teachers import load_teacher

    t = load_teacher(teacher)
    digest = hashlib.sha256(b"".join(p.detach().float().numpy().tobytes()[:4096] for p in t.unet.parameters())).hexdigest()[:12]
    cache = default_cache_dir() / "bench" / f"standin-{space}-{digest}.csv"
    source = (f"DERIVED STAND-IN (no measured table yet; cached at {cache}): fid := one-shot output-KD loss "
              f"after surgery (no training), params := exact, latency_ms := exact MACs (a proxy)")
    if cache.exists():
        return Table(read_table(cache).values, source)
    rows = _measure_standin(t, _bound(space, teacher))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows([g, *v] for g, v in rows.items())
    return Table(rows, source)


def _measure_standin(teacher, bound) -> dict[str, tuple[float, float, float]]:
    import torch
    from tqdm.auto import tqdm

    from blocksearch.cost import count_macs, count_params
    from blocksearch.surgery import build_student

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
    with torch.no_grad():
        target = unet(x, t, text).sample
        rows = {}
        for genome in tqdm(list(bound), desc="stand-in table", unit="arch"):
            student = build_student(unet, genome).unet.eval()
            loss = torch.nn.functional.mse_loss(student(x, t, text).sample, target).item()
            rows[genome.id] = (loss, float(count_params(student)), float(count_macs(student, size)))
    return rows
