"""The ``blocksearch`` command line's parser: every verb, flag and help text (``blocksearch <verb> --help``).

cli.py holds ``main`` and the verbs' handlers and passes them to ``build_parser`` (cli.py imports this module,
so this one cannot import them). Light on purpose: nothing here imports torch, so ``blocksearch --help`` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping

import yaml

from blocksearch import __version__
from blocksearch.cache import default_cache_dir
from blocksearch.console import add_renamed, deprecated
from blocksearch.errors import BlocksearchError
from blocksearch.report.pareto import REFERENCE
from blocksearch.search.samplers import DEFAULT_SAMPLER, SAMPLERS
from blocksearch.settings import (FIDELITY, LATENCY_MIN_S, LATENCY_REPEATS, MEASURED, MEASURED_COLUMNS, MEASURED_DIR,
                                  SELECTION_SCORE)
from blocksearch.search.selection import CHOICES as SCORE_CHOICES
from blocksearch.study import OBJECTIVES, SearchConfig, default_study_name
from blocksearch.toy.cli import add_toy_parser

TEACHER_HELP = ("teacher: toy (bundled default; for a transformer space, family: dit, the bundled toy "
                "transformer toy-dit), toy-dit, sd-v1 | sd-v2 | sdxl (published architectures on the "
                "meta device: no weights), a local diffusers folder, or a hub id in the local HF cache")
STORAGE_HELP = "Optuna storage URL (default: sqlite:///<cwd>/runs/blocksearch.db, where blocksearch run keeps it)"
DEFAULT_STUDY = default_study_name(SearchConfig.space, SearchConfig.teacher)


def build_parser(handlers: Mapping[str, Callable]) -> argparse.ArgumentParser:
    """The ``blocksearch`` parser; ``handlers`` maps each verb (``"run"``, ``"space show"``, ...) to its handler,
    which ``main`` calls as ``args.handler(args)`` (``bench search`` and ``toy`` bring their own)."""
    parser = argparse.ArgumentParser(
        prog="blocksearch",
        description="Find small, fast Stable Diffusion U-Nets by removing blocks and distilling "
                    "(BK-SDM, arXiv 2305.15798, as a multi-objective search).",
        epilog="Every command takes -v/--verbose and -q/--quiet, before or after its name, and -o where it writes "
               "files (-o/--out; run: -o/--runs-dir); 'blocksearch <command> --help' describes each. Bad input: one "
               "line on stderr and exit code 2.")
    parser.add_argument("--version", action="version", version=f"blocksearch {__version__}")
    verbs = parser.add_subparsers(title="commands", metavar="<command>")
    add_space_parser(verbs, handlers["space show"], handlers["space list"])
    add_run_parser(verbs, handlers["run"])
    add_report_parser(verbs, handlers["report"])
    add_export_parser(verbs, handlers["export"])
    add_distill_parser(verbs, handlers["distill"])
    add_train_parser(verbs, handlers["train"])
    add_evaluate_parser(verbs, handlers["evaluate"])
    add_bench_parser(verbs, handlers["bench"])
    add_toy_parser(verbs)
    add_verbosity(parser)
    return parser


def add_verbosity(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``-v`` / ``-q`` on ``parser`` and on every verb and sub-verb under it, so that they work before or after
    any verb. Below the top they default to absent (SUPPRESS): a verb's parser would otherwise reset a ``-v``
    given before the verb."""
    group = parser.add_mutually_exclusive_group()
    default = False if top else argparse.SUPPRESS
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log progress details (INFO) and show library warnings")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print only warnings, errors and the results: no progress bars or progress lines")
    for action in parser._actions:  # argparse lists a parser's verbs only on its subparsers action
        if isinstance(action, argparse._SubParsersAction):
            for verb in {id(p): p for p in action.choices.values()}.values():  # an alias maps to the same parser
                add_verbosity(verb, top=False)


# -- blocksearch space ----------------------------------------------------------------------------
def add_space_parser(verbs, show_handler: Callable, list_handler: Callable) -> None:
    space = verbs.add_parser("space", help="inspect search spaces",
                             description="Inspect the search spaces in search_spaces/.")
    sub = space.add_subparsers(title="space commands", metavar="<space command>")
    show = sub.add_parser(
        "show", help="print a space, its size, and its named designs' params and MACs",
        description="Print the space as a table, its number of distinct architectures, and each "
                    "named design's denoiser params and MACs against the teacher's.")
    show.add_argument("space", help="space name (file stem in search_spaces/) or a .yaml path")
    show.add_argument("--teacher", default=None,
                      help=TEACHER_HELP + "; for a transformer space (family: dit, e.g. dit_blocks): pixart-sigma "
                           "| sd3-medium | flux-dev | dit-xl (shipped configs, meta device, no download) or a "
                           "diffusers transformer folder (default: the space's reference architecture)")
    show.add_argument("--latent", type=int, default=None,
                      help="latent size for MACs (default: the teacher's sample_size; Flux: 128, i.e. 1024 px)")
    show.set_defaults(handler=show_handler)
    lst = sub.add_parser("list", help="list the bundled spaces",
                         description="Print each bundled space's name, its reference teacher and its file.")
    lst.set_defaults(handler=list_handler)


# -- blocksearch report / export ------------------------------------------------------------------
def add_report_parser(verbs, handler: Callable) -> None:
    p = verbs.add_parser(
        "report", help="write the Pareto-front report of a study",
        description="Compute the Pareto front, hypervolume and dominance over the BK-SDM reference designs "
                    "of a study, and write reports/<study>/: index.html (interactive), pareto.png, trials.csv, "
                    "README.md.")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study name (default: %(default)s)")
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("-o", "--out", default=None, help="output folder (default: reports/<study>/)")
    p.add_argument("--hv-reference", default=None, metavar="V1,V2,...",
                   help="hypervolume reference point, one value per objective in its own units (default: "
                        f"{REFERENCE} x the worst completed value); fix it to compare studies")
    p.set_defaults(handler=handler)


def add_export_parser(verbs, handler: Callable) -> None:
    p = verbs.add_parser(
        "export", help="export chosen students as diffusers StableDiffusionPipeline folders",
        description="Write each chosen student as a folder that StableDiffusionPipeline.from_pretrained loads "
                    "in plain diffusers: the student U-Net, the teacher's VAE, text encoder, tokenizer and "
                    "scheduler, and a model card README.md. --front writes one subfolder per Pareto-optimal "
                    "trial.")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study name (default: %(default)s)")
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number (a completed trial)")
    which.add_argument("--design", help="a named design's trial, e.g. bk_small")
    which.add_argument("--front", action="store_true", help="every trial on the Pareto front")
    p.add_argument("-o", "--out", required=True, help="output folder (refused if not empty, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite the pipeline files in a non-empty folder")
    p.set_defaults(handler=handler)


# -- blocksearch run ------------------------------------------------------------------------------
def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _step_counts(text: str) -> tuple[int, ...]:
    """``--rungs``: comma-separated KD step counts; ``none`` or ``0``: no rung."""
    names = _names(str(text).lower())
    if names in ((), ("none",), ("0",), ("off",)):
        return ()
    try:
        return tuple(int(n) for n in names)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: comma-separated KD step counts, or none") from None


# One flag per SearchConfig field (--cpus-per-trial sets cpus_per_trial); the defaults are SearchConfig's,
# shown by the help as "(default: ...)". A help text that names a default describes a derived one.
RUN_FLAGS = (
    ("space", dict(help="space name or .yaml path")),
    ("teacher", dict(help=TEACHER_HELP)),
    ("trials", dict(type=int, help="finished trials the study should reach, reference designs included")),
    ("study", dict(help="study name (default: <space>-<teacher>)")),
    ("storage", dict(help="Optuna storage URL (default: sqlite:///<runs-dir>/blocksearch.db)")),
    ("runs_dir", dict(help="where the study's database, students and Ray results go (default: <cwd>/runs; "
                           "the report goes to <runs-dir>/../reports/<study>)")),
    ("address", dict(help="Ray cluster: 'auto' or host:port of 'ray start --head' (default: start a local Ray)")),
    ("dashboard_host", dict(help="interface of a local Ray's dashboard (a loopback address keeps it to this machine)")),
    ("dashboard_port", dict(type=int, help="local Ray dashboard port")),
    ("cpus_per_trial", dict(type=float, help="CPUs per trial")),
    ("gpus_per_trial", dict(type=float, help="GPUs per trial (0: the trials run on CPU)")),
    ("max_concurrent", dict(type=int, help="trials in parallel (default: as many as the cluster's resources allow)")),
    ("score", dict(choices=SCORE_CHOICES, help="the first stage's quality score: fid (toy-FID / FID of generated "
                                               "images), a held-out KD probe score (probe_cfg, probe_out, ...: no "
                                               "images, paired across candidates), or auto: the score bench fidelity "
                                               "validated for the toy teacher (blocksearch/measured/selection-score.json)"
                                               " and its KD budget, FID for real teachers; the rungs rank by FID")),
    ("steps", dict(type=int, help="distillation steps per trial (default: the first-stage score's budget, else "
                                  "distill's)")),
    ("eval_prompts", dict(type=int, help="evaluation prompts (default: evaluate's)")),
    # a real teacher's settings, as `distill` and `evaluate` name them; defaults follow the teacher
    ("data", dict(help="KD data: toy, or an imagefolder (images + metadata.jsonl/.csv with file_name and text); "
                       "required for a real teacher (default: toy for the toy teacher)")),
    ("reference", dict(help="real teachers: folder of real images for FID (at least --eval-prompts of them); an "
                            "imagefolder's captions are the prompts")),
    ("captions", dict(help="real teachers: imagefolder whose first --eval-prompts captions are the prompts "
                           "(default: --reference's if it has metadata, else --data's)")),
    ("inception_weights", dict(help="real teachers: torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                                    "(default: found in the blocksearch or torch hub cache)")),
    ("clip_model", dict(help="real teachers: local CLIP model folder for the text alignment score (needed by "
                             "--min-alignment > 0)")),
    ("guidance", dict(type=float, help="classifier-free guidance scale (default: the toy's 3 for the toy teacher, "
                                       "BK-SDM's 7.5 for SD teachers)")),
    ("inference_steps", dict(type=int, help="denoising steps per generated image, with the teacher's own scheduler "
                                            "(default: the toy's 10, BK-SDM's 25 for SD teachers; was "
                                            "--sampler-steps)")),
    ("resolution", dict(type=int, help="image size in px for generation and the imagefolder's KD latents "
                                       "(default: the teacher's own, unet sample_size x the VAE scale factor)")),
    ("precision", dict(choices=("fp32", "bf16", "fp16"), help="KD mixed precision, a fast path (default: fp32)")),
    ("batch_size", dict(type=int, help="KD batch size (default: distill's, 16)")),
    ("lr", dict(type=float, help="KD learning rate (default: the toy's 5e-4; BK-SDM's 5e-5 for SD teachers)")),
    ("kd_schedule", dict(choices=("constant", "linear", "cosine"), help="KD learning rate over each run segment "
                                                                       "(the first stage, each rung): a warm "
                                                                       "restart that decays towards 0 at the "
                                                                       "segment's end (default: constant)")),
    ("kd_warmup", dict(type=int, help="KD linear warm-up steps at the start of each run segment (default: 0)")),
    ("kd_ema", dict(type=float, help="EMA decay of each student's weights, warmed up, carried across rungs; the "
                                     "EMA student is scored and saved (e.g. 0.99; default: off)")),
    ("teacher_cache", dict(choices=("auto", "disk", "off"), help="teacher outputs: auto = on disk where they fit "
                                                                 "under the cap (BLOCKSEARCH_CACHE_GB and the disk's "
                                                                 "free space), else a live teacher; disk = refuse "
                                                                 "over the cap; off = always live")),
    ("sampler", dict(help=f"Optuna sampler: {' | '.join(SAMPLERS)}")),
    ("seed", dict(type=int, help="seed of the sampler and of distillation")),
    ("objectives", dict(type=_names, help="comma-separated objectives: " + ", ".join(
        f"{o} ({d[:3]}imised)" for o, d in OBJECTIVES.items()))),
    ("max_params", dict(type=float, help="parameter budget: candidates above it are infeasible (an Optuna "
                                         "constraint)")),
    ("min_alignment", dict(type=float, help="text-aware feasibility: a student whose text alignment is below this "
                                            "fraction of the teacher's is infeasible (never on the front); 0 turns "
                                            "the rule off")),
    ("latency_device", dict(help="deployment target of latency and memory: cpu or cuda (default: where the "
                                 "trials run)")),
    ("latency_dtype", dict(choices=("fp32", "fp16", "bf16"), help="dtype on the deployment target (default: fp16 "
                                                                 "on CUDA, fp32 on CPU)")),
    ("latency_repeats", dict(type=int, help="timed repeats of each latency measurement (default: evaluate's 40; "
                                            "end to end: at most 3)")),
    ("noise_seeds", dict(type=int, help="seeds at which each reference design is trained and scored (each extra "
                                        "seed: KD again with seed + k, images at another generation seed; FID, "
                                        "KID, text alignment; latency is not measured again): the report's seed "
                                        "noise, within which no domination is claimed; 1 turns it off")),
    ("noise_source", dict(choices=("auto", "measure"), help="where the reference designs' other seeds come from: "
                                                          "auto = bench fidelity's study "
                                                          "(blocksearch/measured/selection-score.json) where this "
                                                          "run's own scores reproduce it (same teacher, recipe, "
                                                          "budget and evaluation set), else trained here; measure "
                                                          "= always trained here")),
    ("rung_references", dict(choices=("open", "all"), help="which reference designs each rung continues besides "
                                                           "the students near the front: open = those no "
                                                           "searched student dominates on quality beyond noise "
                                                           "in the study below (a settled comparison is not "
                                                           "trained again), all = every one (default: open)")),
    ("rungs", dict(type=_step_counts, help="longer KD budgets, spent where the front is: after the search, the "
                                           "students on or within noise of the front, and the reference designs "
                                           "left open (--rung-references) beside at most a quarter of the "
                                           "feasible searched students, "
                                           "continue from their KD checkpoints to each of these step counts in "
                                           "turn, each rung a study <study>@<steps> whose front compares only "
                                           "students of that budget (default: 4 x --steps; none: off)")),
    ("asha", dict(action="store_true", help="stop weak candidates early (ASHA on the output-KD loss); they are "
                                            "recorded PRUNED")),
    ("heartbeat_interval", dict(type=int, help="seconds between heartbeats of this driver's running trials "
                                               "(several drivers may share a study's storage)")),
    ("heartbeat_grace", dict(type=int, help="seconds without a heartbeat after which another driver marks a "
                                            "trial FAIL and re-queues it once (Optuna's heartbeat grace period, "
                                            "unrelated to --asha; was --grace-period)")),
)
# Renamed run flags: the SearchConfig field -> its old name, still accepted (deprecated, one line on stderr) on the
# command line and as a --config key. A study stores stage settings, not flag names: resuming one is unaffected.
RUN_RENAMED = {"inference_steps": "sampler_steps", "heartbeat_grace": "grace_period"}
RUN_SHORT = {"runs_dir": "-o"}  # -o: the output of every verb that writes files


def add_run_parser(verbs, handler: Callable) -> None:
    p = verbs.add_parser(
        "run", help="search a space: Optuna multi-objective study run on Ray Tune",
        description="Search a space for Pareto-optimal students (FID, params, latency by default): an "
                    "Optuna study in persistent storage, each trial (surgery -> distillation -> "
                    "evaluation) run by Ray Tune. Re-running the same command resumes the study: "
                    "finished trials are kept, an architecture is never trained twice, and the BK-SDM "
                    "designs are evaluated once per study; a resume with settings that would make the "
                    "trials incomparable is refused. A real teacher's inputs are checked before Ray starts. "
                    "Example: blocksearch run --space unet_blocks")
    p.add_argument("--config", metavar="FILE", help="a YAML file of these flags (keys: flag names, dashes or "
                                                    "underscores; null: the default; paths as on the command line, "
                                                    "relative to the working directory; --print-config writes one); "
                                                    "flags on the command line override it")
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    for name, kwargs in RUN_FLAGS:
        default = defaults[name]
        if isinstance(default, tuple):  # --objectives: shown and parsed as comma-separated text
            default = ",".join(default)
        shown = "" if default is None or default is False else f" (default: {default})"
        # not given: absent (SUPPRESS), so that --config can tell a flag on the command line from a default
        flags = ([RUN_SHORT[name]] if name in RUN_SHORT else []) + ["--" + name.replace("_", "-")]
        kwargs = {**kwargs, "help": kwargs["help"].replace("%", "%%") + shown}
        if name in RUN_RENAMED:
            add_renamed(p, *flags, old="--" + RUN_RENAMED[name].replace("_", "-"), dest=name,
                        default=argparse.SUPPRESS, **kwargs)
        else:
            p.add_argument(*flags, dest=name, default=argparse.SUPPRESS, **kwargs)
    p.add_argument("--print-config", action="store_true",
                   help="print the settings the flags and --config resolve to, as a YAML file --config accepts, and "
                        "exit without running anything")
    p.set_defaults(handler=handler)


def read_run_config(path: str) -> dict:
    """``--config FILE``: a YAML mapping of run flags (``steps: 5``, ``eval-prompts: 8``), typed as the flags."""
    flags = dict(RUN_FLAGS)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise BlocksearchError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise BlocksearchError(f"--config {path}: malformed YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BlocksearchError(f"--config {path}: expected a mapping of flag names to values, got a "
                               f"{type(data).__name__}")
    out, keys, old_names = {}, {}, {old: new for new, old in RUN_RENAMED.items()}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in old_names:
            name = old_names[name]
            deprecated(f"--config {path}: {key}", name.replace("_", "-"))
        if name not in flags:
            raise BlocksearchError(f"--config {path}: unknown key {key!r}; allowed: "
                                   f"{', '.join(n.replace('_', '-') for n in flags)}")
        if name in keys:
            raise BlocksearchError(f"--config {path}: {keys[name]!r} and {key!r} name the same flag; keep one")
        keys[name] = key
        out[name] = None if value is None else _config_value(path, key, value, flags[name])
    return {name: value for name, value in out.items() if value is not None}  # null: the default


def dump_run_config(cfg: SearchConfig) -> str:
    """``run --print-config``: every run flag's value in ``cfg`` as the YAML ``--config`` reads back (null: the
    default, one that follows the teacher or the first-stage score)."""
    values = {name.replace("_", "-"): getattr(cfg, name) for name, _ in RUN_FLAGS}
    body = yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, sort_keys=False,
                          default_flow_style=None, width=120)
    return "# blocksearch run --config FILE (null: the default; flags on the command line override a key)\n" + body


def _config_value(path: str, key, value, kwargs: dict):
    """A YAML value as its flag would parse it; a wrong type is one line naming the file and the key."""
    kind = kwargs.get("type")
    if kwargs.get("action") == "store_true":
        ok, want = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if ok else value
    elif kind is _step_counts:
        ok, want = isinstance(value, (str, int, list)) and not isinstance(value, bool), "KD step counts or none"
        try:
            value = _step_counts(",".join(map(str, value)) if isinstance(value, list) else value) if ok else value
        except argparse.ArgumentTypeError:
            ok = False
    elif kind is _names:
        ok, want = isinstance(value, (str, list)), "a list of names or comma-separated text"
        value = _names(",".join(map(str, value)) if isinstance(value, list) else value) if ok else value
    else:
        if isinstance(value, bool) and "off" in kwargs.get("choices", ()):  # YAML 1.1 reads off / on as booleans
            value = "on" if value else "off"
        ok, want = isinstance(value, (str, int, float)) and not isinstance(value, bool), "text"
        value = str(value) if ok else value
    if ok and kwargs.get("choices") and value not in kwargs["choices"]:
        ok, want = False, " | ".join(kwargs["choices"])
    if not ok:
        raise BlocksearchError(f"--config {path}: {key}: {value!r} is not {want}")
    return value


# -- blocksearch distill / evaluate (issue 4) ------------------------------------------------
def add_distill_parser(verbs, handler: Callable) -> None:
    p = verbs.add_parser(
        "distill", help="cut a design out of the teacher and distil it (BK-SDM feature KD)",
        description="Build a student from the teacher by block removal, train it by a short KD run "
                    "(L = l_task*L_task + l_out*L_out_kd + l_feat*L_feat_kd, BK-SDM), and write DIR/unet "
                    "(diffusers, safetensors), DIR/train_log.jsonl and DIR/distill.json.")
    p.add_argument("--teacher", default="toy", help=TEACHER_HELP + " (default: %(default)s)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="continue distilling a saved student (DIR/unet or a U-Net folder, e.g. an exported "
                        "pipeline) instead of cutting --design out of the teacher")
    p.add_argument("--design", default="bk_small", help="named design of the space (bk_base, bk_small, "
                   "bk_tiny) or a genome id such as L1-1-1-1_T1-1-1-0_Mnone (default: %(default)s)")
    p.add_argument("--space", default="unet_blocks", help="space that names the designs (default: %(default)s)")
    p.add_argument("--steps", type=int, help="KD steps; 0 = surgery only (default: DistillConfig's)")
    p.add_argument("-o", "--out", required=True, help="output folder for the student")
    p.add_argument("--batch-size", type=int, help="KD batch size (default: 16)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: the toy's 5e-4; BK-SDM's 5e-5 for SD "
                                            "teachers)")
    p.add_argument("--lambda-task", type=float, help="weight of the task loss, MSE to the added noise (default: 1, "
                                                     "BK-SDM's)")
    p.add_argument("--lambda-out", type=float, help="weight of the output KD loss, MSE to the teacher's output "
                                                    "(default: 1)")
    p.add_argument("--lambda-feat", type=float, help="weight of the feature KD loss, MSE to the teacher's stage "
                                                     "outputs (default: 1)")
    p.add_argument("--feat-norm", action="store_true", help="LAPTOP-Diff: divide each feature term by the "
                   "teacher feature's mean square")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="mixed precision, a fast path (default: DistillConfig's, full precision)")
    p.add_argument("--seed", type=int, help="seed of the student's data order, noise and timesteps (default: 0)")
    p.add_argument("--data", help="toy (the toy world), or an imagefolder (images + metadata.jsonl/.csv "
                   "with file_name and text) (default: DistillConfig's)")
    p.add_argument("--resolution", type=int, help="px the imagefolder's images are encoded at (default: the "
                   "teacher's own)")
    p.add_argument("--cache-dir", default=None, help=f"teacher cache folder (default: {default_cache_dir()})")
    p.add_argument("--teacher-cache", choices=("auto", "disk", "off"), default="auto",
                   help="teacher outputs on disk where they fit under the cap, else live (auto); disk: refuse "
                        "over the cap; off: always live (default: %(default)s)")
    p.add_argument("--no-teacher-cache", action="store_true", help="the same as --teacher-cache off")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(handler=handler)


def add_train_parser(verbs, handler: Callable) -> None:
    """``blocksearch train`` (train.py): a chosen student's full-length KD run on Ray Train."""
    p = verbs.add_parser(
        "train", help="finish a chosen student: a long KD run on Ray Train (DDP, checkpoints, EMA, learning curve)",
        description="Train one student by BK-SDM's KD loss for many steps on N Ray Train workers (DDP: gloo on CPU, "
                    "nccl on GPU); the global batch is split into per-worker micro-batches with gradient accumulation, "
                    "the same samples whatever the number of workers. Checkpoints (safetensors + JSON: weights, "
                    "optimizer, EMA, data position) go to DIR/ray/train; rerunning the same command after a kill "
                    "continues from the last one. Worker 0 evaluates every --eval-every steps at the search's "
                    "evaluation settings and writes DIR/curve.csv, curve.png, curve.html; the final student is a "
                    "StableDiffusionPipeline folder in DIR. The teacher runs live in each worker (no teacher cache). "
                    "Example: blocksearch train --design bk_small --workers 2 -o runs/bk_small-full")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--design", help="a named design of --space (bk_base, bk_small, bk_tiny) or a genome id, cut "
                                        "out of the teacher")
    which.add_argument("--init", metavar="DIR", help="a saved student: DIR/unet, a U-Net or a pipeline folder (e.g. "
                                                     "an exported one)")
    which.add_argument("--trial", type=int, metavar="N", help="trial N of --study: its saved student, teacher and "
                                                              "KD / evaluation settings (flags override them)")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study of --trial (default: %(default)s)")
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("--teacher", default=None, help=TEACHER_HELP + " (default: the study's, else toy)")
    p.add_argument("--space", default="unet_blocks", help="space that names --design (default: %(default)s)")
    p.add_argument("-o", "--out", required=True, help="run folder: the pipeline, curve.*, logs, checkpoints")
    p.add_argument("--steps", type=int, help="optimizer steps (default: 1920 for the toy; BK-SDM's 50000 for SD)")
    p.add_argument("--batch-size", type=int, help="global batch per step (default: the study's or distill's 16 "
                                                  "for the toy; BK-SDM's 256 for SD)")
    p.add_argument("--micro-batch-size", type=int, help="per worker and forward; accumulation steps = batch / "
                                                        "(workers x micro) (default: batch / workers)")
    p.add_argument("--workers", type=int, help="Ray Train workers; 0 = in this process, no Ray (default: 1)")
    p.add_argument("--cpus-per-worker", type=int, help="CPUs (torch threads) per worker (default: 1)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default: 0, CPU with gloo)")
    p.add_argument("--address", default=None, help="Ray cluster: 'auto' or host:port (default: a local Ray)")
    p.add_argument("--dashboard-port", type=int, default=None, help="local Ray dashboard port (default: Ray's)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="mixed precision (default: fp32)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default: the toy's 5e-4; 5e-5 for SD)")
    p.add_argument("--warmup", type=int, help="linear warm-up steps (default: 0)")
    p.add_argument("--schedule", choices=("constant", "linear", "cosine"), help="after warm-up (default: constant)")
    p.add_argument("--ema", type=float, help="EMA decay of the weights, e.g. 0.999; the exported and evaluated "
                                             "weights are the EMA's (default: 0, off)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: steps / 20)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations; 0 = off (default: steps / 8; off for a "
                                                  "real teacher without --reference or a study)")
    p.add_argument("--eval-prompts", type=int, help="evaluation prompts (default: the search's)")
    p.add_argument("--reference", default=None, help="real teachers: FID reference images (as in evaluate)")
    p.add_argument("--captions", default=None, help="real teachers: imagefolder of the evaluation prompts")
    p.add_argument("--inception-weights", default=None, help="real teachers: torch-fidelity's Inception weights")
    p.add_argument("--clip-model", default=None, help="real teachers: local CLIP folder for text alignment")
    p.add_argument("--report-to", choices=("none", "tensorboard", "mlflow", "wandb"),
                   help="experiment tracking from worker 0: TensorBoard (DIR/tensorboard), MLflow ($MLFLOW_TRACKING_URI"
                        " or sqlite:///DIR/mlflow.db) or W&B (default: none)")
    p.add_argument("--lambda-task", type=float, help="weight of the task loss, MSE to the added noise (default: "
                                                     "the study's, else 1, BK-SDM's)")
    p.add_argument("--lambda-out", type=float, help="weight of the output KD loss, MSE to the teacher's output "
                                                    "(default: the study's, else 1)")
    p.add_argument("--lambda-feat", type=float, help="weight of the feature KD loss, MSE to the teacher's stage "
                                                     "outputs (default: the study's, else 1)")
    p.add_argument("--feat-norm", action="store_true", default=None, help="LAPTOP-Diff's normalised feature loss")
    p.add_argument("--seed", type=int, help="seed of the KD data stream")
    p.add_argument("--data", help="toy, or an imagefolder (default: the study's, else toy)")
    p.add_argument("--resolution", type=int, help="px the imagefolder's images are encoded at")
    p.add_argument("--cache-dir", default=None, help=f"dataset and FID cache folder (default: {default_cache_dir()})")
    p.set_defaults(handler=handler)


def add_evaluate_parser(verbs, handler: Callable) -> None:
    p = verbs.add_parser(
        "evaluate", help="score a student folder: FID, text alignment, params, MACs, latency",
        description="Generate the fixed prompt set with fixed seeds using the student U-Net in the "
                    "teacher's pipeline, then compute FID (torch-fidelity), text alignment, params, MACs "
                    "and latency; print them and write DIR/metrics.json. Defaults follow the teacher: the "
                    "toy's settings for the toy, BK-SDM's for SD teachers (guidance 7.5, 25 steps of the "
                    "teacher's own scheduler, its own resolution). --protocol bk-sdm runs BK-SDM's zero-shot "
                    "MS-COCO evaluation instead and prints it next to the published figures.")
    p.add_argument("dir", help="a folder written by `blocksearch distill` (or any diffusers U-Net or pipeline folder)")
    p.add_argument("--teacher", default=None, help=TEACHER_HELP + " (default: the one in DIR/distill.json, else toy)")
    p.add_argument("--protocol", choices=("search", "bk-sdm"), default="search",
                   help="search: the search's own evaluation (EvalConfig); bk-sdm: BK-SDM's MS-COCO protocol "
                        "(30K val2014 captions, PNDM 25 steps, guidance 7.5, 512 px resized to 256, FID/IS/CLIP) "
                        "on --coco-captions and --coco-images (default: %(default)s)")
    p.add_argument("--prompts", type=int, help="number of prompts (default: EvalConfig's)")
    add_renamed(p, "--inference-steps", old="--sampler-steps", type=int,
                help="denoising steps per image (default: the toy's 10; 25 for SD teachers and the bk-sdm protocol)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default: the toy's 3; BK-SDM's 7.5 for SD teachers)")
    p.add_argument("--resolution", type=int, help="generated image size in px (default: the teacher's own; 512 "
                                                  "for the bk-sdm protocol)")
    p.add_argument("--seed", type=int, help="generation seed, added to every prompt's own seed (default: 0)")
    p.add_argument("--reference-images", type=int, help="toy: real images behind the FID reference statistics")
    p.add_argument("--latency-repeats", type=int, help="timed repeats of the latency measurement")
    p.add_argument("--reference", default=None, help="real teachers: folder of reference images (an imagefolder's "
                                                     "captions are the prompts)")
    p.add_argument("--captions", default=None, help="real teachers: imagefolder whose captions are the prompts "
                                                    "(default: --reference's)")
    p.add_argument("--inception-weights", default=None, help="real teachers: path to "
                   "weights-inception-2015-12-05-6726825d.pth (torch-fidelity's Inception)")
    p.add_argument("--clip-model", default=None, help="real teachers: local CLIP model folder for alignment")
    p.add_argument("--coco-captions", default=None, metavar="FILE", help="bk-sdm: captions_val2014.json")
    p.add_argument("--coco-images", default=None, metavar="DIR", help="bk-sdm: the val2014 image folder")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="bk-sdm: the first N of the 30K prompts, a cheaper subset that says it is one")
    p.add_argument("--cache-dir", default=None, help=f"cache folder (default: {default_cache_dir()})")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("-o", "--out", default=None, help="metrics JSON path (default DIR/metrics.json; bk-sdm: "
                                                     "DIR/metrics-bk-sdm.json)")
    p.set_defaults(handler=handler)


# -- blocksearch bench (the handlers: bench/speed.py, bench/search.py, bench/stability.py, bench/fidelity.py, bench/deploy.py) --
def add_bench_parser(verbs, handler: Callable) -> None:
    bench = verbs.add_parser("bench", help="performance figures (KD throughput, latency, sampler vs random)",
                             description="Measure performance figures side by side in one run.")
    sub = bench.add_subparsers(dest="bench_command", title="bench commands", metavar="<bench command>")
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
    _clock_arg(kd)
    kd.set_defaults(handler=handler)
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
    _clock_arg(lat)
    lat.set_defaults(handler=handler)
    add_bench_search_parser(sub, handler)
    add_bench_stability_parser(sub, handler)
    add_bench_fidelity_parser(sub, handler)
    add_bench_deploy_parser(sub, handler)


def add_bench_search_parser(sub, handler: Callable) -> None:
    """Register ``bench search`` on the bench sub-commands (the handler: bench_search.cmd_bench_search)."""
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
    p.add_argument("--trials", type=int, default=16, help="trials per search, BK designs included (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=10, help="independent seeds per sampler (default: %(default)s)")
    p.add_argument("--table", default=None,
                   help=f"measured CSV with columns {','.join(MEASURED_COLUMNS)} (default for the toy teacher: "
                        f"{FIDELITY.name} if present, else {MEASURED.name}, in {MEASURED_DIR}); the rest of "
                        f"the space comes from a derived stand-in, cached under $BLOCKSEARCH_CACHE/bench "
                        f"(default ~/.cache/blocksearch/bench)")
    p.add_argument("--teacher", default="toy", help="teacher for a derived stand-in table (default: %(default)s)")
    p.add_argument("--space", default="unet_blocks", help="space (default: %(default)s)")
    p.add_argument("--front", nargs="+", metavar="TRIALS_CSV", default=None,
                   help="instead of comparing samplers: score the final front of each report's trials.csv on the "
                        "table (hypervolume normalised over the whole table), e.g. to compare two default runs "
                        "after long training")
    p.set_defaults(handler=handler)


def add_bench_deploy_parser(sub, handler: Callable) -> None:
    p = sub.add_parser(
        "deploy", help="U-Net step and end-to-end latency, peak memory: teacher and named designs, full size",
        description="What a user ships, on the deployment target, for the teacher and each named design at full "
                    "size with random weights (no download): the U-Net step latency relative to the teacher (as "
                    "trials measure it), the end-to-end latency of one image (text encoder, the sampler's steps "
                    "with CFG, VAE decode) and the peak memory of one CFG U-Net step. For sd-v1 / sd-v2 the "
                    "pipeline is built from the published shapes (SD's VAE, a CLIP text encoder of the teacher's "
                    "size, PNDM); the GPU check of a lent machine: --teacher sd-v1 --device cuda.")
    p.add_argument("--teacher", default="toy", help="toy, a `blocksearch toy build` folder, sd-v1 or sd-v2 "
                                                   "(default: %(default)s)")
    p.add_argument("--space", default="unet_blocks", help="space with the named designs (default: %(default)s)")
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
    p.set_defaults(handler=handler)


def add_bench_stability_parser(sub, handler: Callable) -> None:
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
    p.set_defaults(handler=handler)


def add_bench_fidelity_parser(sub, handler: Callable) -> None:
    p = sub.add_parser(
        "fidelity", help="do short KD runs rank architectures the way long runs do? (Kendall tau per budget)",
        description="Train the BK designs, a study's Pareto front (--study) and random architectures of the space "
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
    p.add_argument("--teacher", default="toy", help="a toy teacher: toy (bundled) or a `blocksearch toy build` "
                                                    "folder (default: %(default)s)")
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
    p.add_argument("--selection", default=str(SELECTION_SCORE.relative_to(SELECTION_SCORE.parents[2])),
                   help="where the chosen first-stage score of the search is written (default: %(default)s)")
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
    p.add_argument("-o", "--out", default="reports/fidelity-toy", help="report folder (default: %(default)s)")
    p.add_argument("--csv", default="blocksearch/measured/fidelity-toy-tau.csv",
                   help="summary CSV: budget, objective, predictor, tau, lo, hi, cost_s (default: %(default)s)")
    p.add_argument("--table", default=str(FIDELITY.relative_to(FIDELITY.parents[2])),
                   help="`bench search`'s measured table: genome, the seed-mean FID at the longest budget, params; "
                        "latency_ms blank (not measured here: bench search takes it from its stand-in) "
                        "(default: %(default)s)")
    p.set_defaults(handler=handler)


def _clock_arg(p) -> None:
    p.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"),
                   help="wall clock, or process CPU time (immune to other processes on a shared CPU); "
                        "auto: cpu with one CPU thread, else wall")
