"""``blocksearch bench kd | latency | search | stability | fidelity | deploy | adapters``: the measurements behind the
defaults (docs/benchmarks.md).

Each bench's flags live here, keyed by bench (``BENCHES``), and its handler ``cmd_bench_<bench>`` in its module of
bench/ (``kd`` and ``latency``: bench/speed.py). Why not each bench's parser in its own module: those modules import
torch and diffusers at their top, and ``blocksearch --help`` builds every parser; so the flags (light) stay here and
``main`` imports the bench's module only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os

from blocksearch.commands.common import STORAGE_HELP
from blocksearch.console import add_renamed
from blocksearch.search.samplers import DEFAULT_SAMPLER, SAMPLERS
from blocksearch.settings import (FIDELITY, LATENCY_MIN_S, LATENCY_REPEATS, MEASURED, MEASURED_COLUMNS, MEASURED_DIR,
                                  SELECTION_SCORE)

# bench -> the module of its handler, cmd_bench_<bench>
BENCHES = {"kd": "blocksearch.bench.speed", "latency": "blocksearch.bench.speed", "search": "blocksearch.bench.search",
           "stability": "blocksearch.bench.stability", "fidelity": "blocksearch.bench.fidelity",
           "deploy": "blocksearch.bench.deploy", "adapters": "blocksearch.bench.adapters"}


def add_parser(verbs) -> None:
    """Register ``bench`` and its benches, in BENCHES' order; each runs through ``main``."""
    bench = verbs.add_parser("bench", help="performance figures (KD throughput, latency, sampler vs random)",
                             description="Measure performance figures side by side in one run.")
    sub = bench.add_subparsers(dest="bench_command", title="bench commands", metavar="<bench command>")
    adders = {"kd": add_kd, "latency": add_latency, "search": add_search, "stability": add_stability,
              "fidelity": add_fidelity, "deploy": add_deploy, "adapters": add_adapters}
    for name in BENCHES:
        adders[name](sub).set_defaults(handler=main)


def main(args) -> int:
    """The bench's ``cmd_bench_<bench>``, its module imported now (torch, diffusers)."""
    module = importlib.import_module(BENCHES[args.bench_command])
    return getattr(module, f"cmd_bench_{args.bench_command}")(args)


def add_kd(sub) -> argparse.ArgumentParser:
    """``bench kd``: KD step cost, cached and live teacher, against a plain step (bench/speed.py)."""
    kd = sub.add_parser("kd", help="KD step cost with / without the teacher cache vs a plain training step",
                        description="Time, interleaved on the same batch: a plain student training step "
                                    "(task loss only), a KD step with a warm teacher cache, a teacher "
                                    "forward, and a KD step without the cache; print the two ratios.")
    kd.add_argument("--teacher", default="toy", help="teacher pipeline (default: toy)")
    kd.add_argument("--design", default="bk_small", help="named design or genome id (default: bk_small)")
    kd.add_argument("--batch-size", type=int, default=16, help="KD batch size (default: %(default)s)")
    kd.add_argument("--rounds", type=int, default=12, help="timed rounds, after 2 warm-up rounds (default: %(default)s)")
    kd.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    kd.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    add_clock(kd)
    return kd


def add_latency(sub) -> argparse.ArgumentParser:
    """``bench latency``: U-Net step latency, teacher and named designs (bench/speed.py)."""
    lat = sub.add_parser("latency", help="U-Net step latency of the teacher and the named designs",
                         description="Latency of one U-Net step (batch 2 = classifier-free guidance) at the "
                                     "teacher's resolution for the teacher and each named design of the "
                                     "space, with random weights, printed as ratios to the teacher.")
    lat.add_argument("--teacher", default="toy", help="toy, sd-v1, sd-v2, sdxl, or a pipeline folder")
    lat.add_argument("--space", default=None, help="space with the named designs (default: by teacher)")
    lat.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    lat.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"), help="dtype (default: %(default)s)")
    lat.add_argument("--warmup", type=int, default=None, help="warm-up calls (default: 1 real-size, 3 toy)")
    lat.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 3 real-size, 15 toy)")
    lat.add_argument("--measurements", type=int, default=None,
                     help="independent measurements per model, for the spread of their medians "
                          "(default: 1 real-size, 5 toy)")
    lat.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_clock(lat)
    return lat


def add_search(sub) -> argparse.ArgumentParser:
    """``bench search``: the sampler against random search (bench/search.py)."""
    p = sub.add_parser(
        "search", help="the search's sampler vs random search on a stand-in objective (hypervolume ratio)",
        description="Run each sampler and random search for the same number of trials over several "
                    "seeds on a table of Genome -> (fid, params, latency); print the Kendall tau of the "
                    "stand-in against the measured architectures, the mean normalised hypervolume of "
                    "each sampler and its ratio to random search's, and the trials each needs to reach "
                    "the hypervolume of the three BK designs.")
    p.add_argument("--sampler", default=DEFAULT_SAMPLER,
                   help=f"sampler, or several separated by commas: {' | '.join(SAMPLERS)} (default: "
                        f"{DEFAULT_SAMPLER})")
    p.add_argument("--trials", default="16",
                   help="trials per search, named designs included; several separated by commas (16,48) compare "
                        "the samplers at each (default: %(default)s)")
    p.add_argument("--init", default="designs",
                   help="what each search starts with: designs (the named designs, as blocksearch run), one-shot "
                        "(then the one-shot picks: the most important blocks kept, a warm start; families with "
                        "one-shot block importance), or designs,one-shot: every sampler both ways (default: "
                        "%(default)s)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="a bench fidelity report folder (e.g. reports/fidelity-toy-dit): its measured table "
                        "(DIR/measured.csv) and, for a transformer space, its block importance (DIR/oneshot.json)")
    p.add_argument("--seeds", type=int, default=10, help="independent seeds per sampler (default: %(default)s)")
    p.add_argument("--table", default=None,
                   help=f"measured CSV with columns {','.join(MEASURED_COLUMNS)} (default for the toy teacher: "
                        f"{FIDELITY.name} if present, else {MEASURED.name}, in {MEASURED_DIR}); the rest of "
                        f"the space comes from a derived stand-in, cached under $BLOCKSEARCH_CACHE/bench "
                        f"(default ~/.cache/blocksearch/bench)")
    p.add_argument("--teacher", default="toy", help="teacher for a derived stand-in table (toy: the space's family's "
                                                    "bundled one) (default: %(default)s)")
    p.add_argument("--space", default="unet_blocks", help="space (default: %(default)s)")
    p.add_argument("--front", nargs="+", metavar="TRIALS_CSV", default=None,
                   help="instead of comparing samplers: score the final front of each report's trials.csv on the "
                        "table (hypervolume normalised over the whole table), e.g. to compare two default runs "
                        "after long training")
    return p


def add_stability(sub) -> argparse.ArgumentParser:
    """``bench stability``: latency isolated and under training load (bench/stability.py)."""
    p = sub.add_parser(
        "stability", help="latency isolated vs under training load; in-search vs isolated",
        description="Measures the teacher and the named designs twice -- isolated, then while two KD training runs "
                    "(real ``distill`` loops, the work a search's trials do) run on the same machine -- through the "
                    "same ``measure_latency`` the trials use (the measurement slot of ``cache.py``), and prints the "
                    "largest relative difference (target <= 3 %). For contrast it also times them under load "
                    "*without* the slot (what the trials did before). With ``--study``, re-measures every completed "
                    "student of a finished study in isolation and prints Kendall's tau between in-search and "
                    "isolated latency (target >= 0.95).")
    p.add_argument("--teacher", default="toy", help="teacher pipeline (default: %(default)s)")
    p.add_argument("--space", default="unet_blocks", help="space with the named designs (default: %(default)s)")
    p.add_argument("--trainers", type=int, default=2, help="KD runs in the background (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=LATENCY_REPEATS,
                   help="timed repeats per model, as in a trial (default: %(default)s)")
    p.add_argument("--min-s", type=float, default=LATENCY_MIN_S,
                   help="each repeat times a loop at least this long, as in a trial (default: %(default)s)")
    p.add_argument("--study", default=None, help="also: tau of in-search vs isolated latency over this study")
    p.add_argument("--storage", default=None, help="the study's storage (default: sqlite:///<cwd>/runs/blocksearch.db)")
    return p


def add_fidelity(sub) -> argparse.ArgumentParser:
    """``bench fidelity``: short against long KD rankings, Kendall tau per budget (bench/fidelity.py)."""
    p = sub.add_parser(
        "fidelity", help="do short KD runs rank architectures the way long runs do? (Kendall tau per budget)",
        description="Train the named designs, a study's Pareto front (--study), for transformer students the one-shot "
                    "picks (the most important blocks kept, --one-shot-sizes) and random architectures of the space "
                    "spread over size (at least two attention-free) along a ladder of KD budgets, each budget "
                    "continuing from the previous one's checkpoint, and score every student at each generation "
                    "seed (FID, KID, text alignment; the search's evaluation without latency). Prints Kendall's "
                    "tau-b of each short budget's ranking against the longest budget's with a 95 % bootstrap "
                    "interval, params and MACs as baselines, the seed spread, the cost per budget and the cheapest "
                    "budget whose FID ranking matches (tau >= 0.8, interval low end >= 0.6). Rows go to "
                    "OUT/results.jsonl as they arrive: re-running the command skips what is done and continues "
                    "from the largest checkpoint (kept under $BLOCKSEARCH_CACHE/bench/fidelity). Writes "
                    "OUT/index.md, OUT/fidelity.csv, OUT/short_vs_long.png and the summary --csv. Settings (KD, "
                    "evaluation) are blocksearch run's defaults for the teacher.")
    p.add_argument("--teacher", default="toy", help="a toy teacher: toy (the space's family's bundled one), toy-dit, or "
                                                    "a `blocksearch toy build` folder (default: %(default)s)")
    p.add_argument("--space", default="unet_blocks", help="space of the architectures (default: %(default)s)")
    p.add_argument("--archs", type=int, default=12, help="architectures in all: the named designs, the study's "
                                                         "front, then random ones (default: %(default)s)")
    p.add_argument("--budgets", default="0,30,120,480,1920", help="KD steps, comma-separated; 0 = surgery only "
                                                                  "(the one-shot score); the largest is the "
                                                                  "reference ranking (default: %(default)s)")
    p.add_argument("--seeds", default="0,1", help="generation seeds each student is scored at (default: %(default)s)")
    p.add_argument("--kd-seeds", default="0", help="KD seeds each ladder is trained at (the run's --seed + k: another "
                                                   "data order, noise and timesteps), comma-separated: KD-seed noise "
                                                   "is reported apart from generation-seed noise (default: %(default)s)")
    p.add_argument("--extra-seed-budgets", default=None,
                   help="the budgets KD seeds after the first climb (default: every budget)")
    p.add_argument("--full-seed-archs", default=None, metavar="GENOME,...",
                   help="these of the study's architectures: KD seeds after the first climb every budget, "
                        "--extra-seed-budgets or not, so their longest-budget reference is a mean over KD seeds "
                        "(where the long runs' FIDs are close enough for KD-seed noise to reorder them)")
    p.add_argument("--probe-budgets", default="auto",
                   help="budgets at which every student also gets the held-out KD probe and the training-curve "
                        "features (the cheap predictors, OUT/probes.jsonl, OUT/predictors.md), comma-separated; "
                        "auto: every budget but the longest; none: no probe (default: %(default)s)")
    p.add_argument("--selection", default=None,
                   help="where the chosen first-stage score of the search is written (default: the teacher family's "
                        f"file in {MEASURED_DIR.relative_to(MEASURED_DIR.parents[1])}/: {SELECTION_SCORE.name} for "
                        "U-Nets, selection-score-<family>.json for the others)")
    p.add_argument("--one-shot-sizes", default="auto", metavar="FRACTION,...|auto|none",
                   help="for a family that scores its blocks without training (transformers): the one-shot picks "
                        "trained beside the named designs keep this fraction of each searched group's most important "
                        "blocks, by each measure (auto: 0.375,0.5,0.625,0.75; none: no picks; the one-shot scores "
                        "are ranked as predictors either way, OUT/oneshot.md) (default: %(default)s)")
    p.add_argument("--eval-prompts", type=int, default=None,
                   help="evaluation prompts (default: evaluate's, 128 for the toy)")
    p.add_argument("--teacher-cache", choices=("auto", "disk", "off"), default="auto",
                   help="teacher outputs of the longest budget on disk, shared by every ladder, where they fit "
                        "(auto), refuse otherwise (disk), or a live teacher (off) (default: %(default)s)")
    p.add_argument("--kd-schedule", choices=("constant", "linear", "cosine"), default="constant",
                   help="KD learning rate over each ladder segment (budget b to the next): a warm restart per "
                        "segment (SGDR) that decays towards 0 at the segment's end (linear, cosine); other than "
                        "constant: its own checkpoints, pass another --out (default: %(default)s)")
    p.add_argument("--kd-warmup", type=int, default=0,
                   help="linear warm-up steps at the start of each ladder segment (default: %(default)s)")
    p.add_argument("--kd-ema", type=float, default=0.0,
                   help="EMA decay of the student's weights (e.g. 0.99; 0: off): each budget is scored with the "
                        "EMA weights, carried along the ladder in its checkpoints (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random architectures and of KD (default: "
                                                       "%(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="ladders in parallel, one Ray task (1 CPU, 1 torch thread) each; 0 = in this process, "
                        "no Ray (default: the CPUs, %(default)s)")
    p.add_argument("--study", default=None, help="also the Pareto front of this finished study")
    p.add_argument("--also", default=None, metavar="GENOME,...",
                   help="also these architectures (genome ids), after the --archs ones and not counted by it: e.g. "
                        "a search's front students, so that bench search --front finds them measured")
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples per interval (default: %(default)s)")
    p.add_argument("--report-only", action="store_true",
                   help="train and score nothing: summarise OUT/results.jsonl as it stands (a run in progress: "
                        "tau over the architectures whose ladder reached the longest budget)")
    p.add_argument("-o", "--out", default=None,
                   help="report folder (default: reports/fidelity-<the family's toy teacher>: fidelity-toy, "
                        "fidelity-toy-dit)")
    p.add_argument("--csv", default=None,
                   help="summary CSV: budget, objective, predictor, tau, lo, hi, cost_s (default: "
                        "blocksearch/measured/fidelity-<toy teacher>-tau.csv)")
    p.add_argument("--table", default=None,
                   help="`bench search`'s measured table: genome, the seed-mean FID at the longest budget, params; "
                        "latency_ms blank (not measured here: bench search takes it from its stand-in) "
                        f"(default: {FIDELITY.relative_to(FIDELITY.parents[2])} for the toy U-Net, "
                        "blocksearch/measured/fidelity-<toy teacher>.csv for the others)")
    return p


def add_deploy(sub) -> argparse.ArgumentParser:
    """``bench deploy``: step and end-to-end latency and memory at full size (bench/deploy.py)."""
    p = sub.add_parser(
        "deploy", help="U-Net step and end-to-end latency, peak memory: teacher and named designs, full size",
        description="What a user ships, on the deployment target, for the teacher and each named design at full "
                    "size with random weights (no download): the U-Net step latency relative to the teacher (as "
                    "trials measure it), the end-to-end latency of one image (text encoder, the sampler's steps "
                    "with CFG, VAE decode) and the peak memory of one CFG U-Net step. For sd-v1 / sd-v2 the "
                    "pipeline is built from the published shapes (SD's VAE, a CLIP text encoder of the teacher's "
                    "size, PNDM); the GPU check of a lent machine: --teacher sd-v1 --device cuda.")
    p.add_argument("--teacher", default="toy", help="toy, a `blocksearch toy build` folder, sd-v1 or sd-v2 (the "
                                                   "whole pipeline); sdxl, sd3-medium or flux-dev (the denoiser "
                                                   "alone, random weights on the shipped config) "
                                                   "(default: %(default)s)")
    p.add_argument("--space", default=None, help="space with the named designs (default: the teacher's: "
                                                 "unet_blocks, unet_blocks_sdxl or dit_blocks)")
    p.add_argument("--latent", type=int, default=None, help="sdxl / sd3-medium / flux-dev: latent side of the "
                                                            "measured step (default: the teacher's, 128 = 1024 px)")
    p.add_argument("--kd-design", default=None, help="sdxl / sd3-medium / flux-dev: the design of the KD check "
                                                     "(default: the space's first named design)")
    p.add_argument("--device", default="cpu", help="deployment target: cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                   help="dtype on the target (default: fp16 on CUDA, fp32 on CPU)")
    add_renamed(p, "--inference-steps", old="--steps", type=int, default=25,
                help="denoising steps of one image (default: %(default)s, BK-SDM's)")
    p.add_argument("--guidance", type=float, default=7.5, help="CFG scale (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls of the U-Net (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=LATENCY_REPEATS,
                   help="interleaved repeats of the step latency, as in a trial (default: %(default)s)")
    p.add_argument("--e2e-repeats", type=int, default=3, help="timed images end to end (default: %(default)s)")
    p.add_argument("--kd-steps", type=int, default=0, help="then one trial's distillation at this size: bk_small, "
                   "this many KD steps on a synthetic captioned imagefolder; prints the KD step time, peak memory "
                   "and the teacher cache's bytes per step or that it ran live (default: %(default)s, none)")
    p.add_argument("--kd-batch", type=int, default=8, help="KD batch size (default: %(default)s)")
    p.add_argument("--kd-precision", choices=("fp32", "bf16", "fp16"), default="bf16",
                   help="KD mixed precision (default: %(default)s)")
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)  # tests: every width x scale
    return p


def add_adapters(sub) -> argparse.ArgumentParser:
    """``bench adapters``: a teacher's LoRA across the cut, on the toy (bench/adapters.py)."""
    p = sub.add_parser(
        "adapters", help="a toy LoRA on the teacher, mapped and fine-tuned onto a student, scored by the judge",
        description="Train a LoRA on the toy teacher that draws every 'circle' as a triangle; cut a student (or "
                    "take --student); map the LoRA onto it (adapt lora) and fine-tune it there (adapt lora "
                    "--finetune-steps); score the LoRA's prompts with the toy judge (alignment, FID) for the "
                    "teacher with and without the LoRA and the student with the mapped, the fine-tuned and no "
                    "LoRA; run the ControlNet and IP-Adapter round trips. Writes README.md and results.json.")
    p.add_argument("--student", default=None, metavar="DIR", help="a toy student folder with block_map.json "
                   "(default: --design distilled --distill-steps here)")
    p.add_argument("--design", default="bk_small", help="named design or genome id (default: %(default)s)")
    p.add_argument("--distill-steps", type=int, default=60, help="KD steps of the student (default: %(default)s)")
    p.add_argument("--lora-steps", type=int, default=150, help="LoRA training steps (default: %(default)s)")
    p.add_argument("--lora-lr", type=float, default=3e-3, help="LoRA learning rate (default: %(default)s)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default: %(default)s)")
    p.add_argument("--finetune-steps", type=int, default=30, help="KD steps of the mapped LoRA on the student "
                   "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="LoRA, distillation and fine-tuning batch (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=32, help="evaluation prompts with 'circle' (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s: on a shared "
                   "2-core machine 2 OpenMP threads are far slower)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("-o", "--out", default="reports/adapters-toy", help="report folder (default: %(default)s)")
    return p


def add_clock(p) -> None:
    """``--clock`` of kd and latency."""
    p.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"),
                   help="wall clock, or process CPU time (immune to other processes on a shared CPU); "
                        "auto: cpu with one CPU thread, else wall")
