"""blocksearch command line: ``blocksearch <verb> [options]``; ``blocksearch <verb> --help`` for each.

Bad input ends with a one-line ``blocksearch: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import yaml

from blocksearch.bench_search import add_bench_search_parser
from blocksearch.cache import default_cache_dir
from blocksearch.errors import BlocksearchError
from blocksearch.pareto import REFERENCE
from blocksearch.samplers import SAMPLERS
from blocksearch.space import SPACES_DIR, load_space
from blocksearch.study import OBJECTIVES, SearchConfig, default_study_name
from blocksearch.toy.cli import add_toy_parser

TEACHER_HELP = ("teacher: toy (bundled default), sd-v1 | sd-v2 | sdxl (published architectures on the "
                "meta device: no weights), a local diffusers folder, or a hub id in the local HF cache")
STORAGE_HELP = "Optuna storage URL (default: sqlite:///<cwd>/runs/blocksearch.db, where blocksearch run keeps it)"
DEFAULT_STUDY = default_study_name(SearchConfig.space, SearchConfig.teacher)
LIBRARY_VERBOSITY = {"diffusers": "DIFFUSERS_VERBOSITY", "transformers": "TRANSFORMERS_VERBOSITY",
                     "huggingface_hub": "HF_HUB_VERBOSITY"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except BlocksearchError as err:
        print(f"blocksearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blocksearch: interrupted", file=sys.stderr)
        return 130


def quiet_libraries(verbose: bool) -> None:
    """Logging at INFO with -v, else WARNING; without -v, library warnings (deprecations, experimental
    APIs, optional packages such as accelerate) stay out of the output: Python warnings are ignored and
    diffusers / transformers / huggingface_hub log errors only."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    warnings.simplefilter("ignore")
    for library, variable in LIBRARY_VERBOSITY.items():
        os.environ.setdefault(variable, "error")  # read when the library is imported
        if library in sys.modules:  # imported already (e.g. by a test): set it directly
            sys.modules[library].utils.logging.set_verbosity_error()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blocksearch",
        description="Find small, fast Stable Diffusion U-Nets by removing blocks and distilling "
                    "(BK-SDM, arXiv 2305.15798, as a multi-objective search).")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details (INFO) and show library warnings")
    verbs = parser.add_subparsers(title="commands", metavar="<command>")
    add_space_parser(verbs)
    add_run_parser(verbs)
    add_report_parser(verbs)
    add_export_parser(verbs)
    add_distill_parser(verbs)
    add_evaluate_parser(verbs)
    add_bench_parser(verbs)
    add_toy_parser(verbs)
    return parser


# -- blocksearch space ----------------------------------------------------------------------------
def add_space_parser(verbs) -> None:
    space = verbs.add_parser("space", help="inspect search spaces",
                             description="Inspect the search spaces in search_spaces/.")
    sub = space.add_subparsers(title="space commands", metavar="<space command>")
    show = sub.add_parser(
        "show", help="print a space, its size, and its named designs' params and MACs",
        description="Print the space as a table, its number of distinct architectures, and each "
                    "named design's U-Net params and MACs against the teacher's.")
    show.add_argument("space", help="space name (file stem in search_spaces/) or a .yaml path")
    show.add_argument("--teacher", default=None,
                      help=TEACHER_HELP + " (default: the space's reference architecture)")
    show.add_argument("--latent", type=int, default=None,
                      help="latent size for MACs (default: the teacher's sample_size)")
    show.set_defaults(handler=cmd_space_show)
    lst = sub.add_parser("list", help="list the bundled spaces")
    lst.set_defaults(handler=cmd_space_list)


def cmd_space_list(args) -> int:
    for path in sorted(SPACES_DIR.glob("*.yaml")):
        space = load_space(str(path))
        print(f"{space.name:24s} teacher {space.teacher:8s} {path}")
    return 0


def cmd_space_show(args) -> int:
    from blocksearch.cost import count_macs, count_params
    from blocksearch.render import fmt
    from blocksearch.surgery import build_student
    from blocksearch.teachers import load_teacher_unet, topology_of

    space = load_space(args.space)
    teacher_name = args.teacher or space.teacher
    teacher = load_teacher_unet(teacher_name, device="cpu")
    bound = space.bind(topology_of(teacher.config))
    print(f"space {space.name} ({space.path}) on teacher {teacher_name}\n")
    print(f"{'stage':14s} {'tied to':12s} {'layers kept':14s} {'attention / depth':20s} removable")
    for stage, n, lc, dc in zip(space.stages, bound.topology.layers, bound.layer_choices,
                                bound.depth_choices):
        kept = [str(d) for d in dc if d]
        depth = (f"keep (depth {'/'.join(kept)})" + (", drop" if 0 in dc else "")) if kept else "-"
        layers = ", ".join(map(str, lc)) + f" of {n}"
        print(f"{stage.name:14s} {stage.up:12s} {layers:14s} {depth:20s} {'yes' if stage.removable else 'no'}")
    print(f"{'mid_block':14s} {'':12s} {', '.join(space.mid_block)}")
    print(f"\ndistinct architectures: {len(bound)}\n")
    latent = args.latent or teacher.config["sample_size"]
    base_p, base_m = count_params(teacher), count_macs(teacher, latent)
    print(f"{'design':12s} {'genome':28s} {'U-Net params':>19s} {f'MACs @ {latent}x{latent}':>20s}")
    rows = [("teacher", bound.teacher_genome, base_p, base_m)]
    for name, genome in bound.named_designs().items():
        unet = build_student(teacher, genome).unet
        rows.append((name, genome, count_params(unet), count_macs(unet, latent)))
    for name, genome, params, macs in rows:
        print(f"{name:12s} {genome.id:28s} {fmt('params', params, 1):>9s} ({params / base_p:6.1%}) "
              f"{fmt('macs', macs, 1):>9s} ({macs / base_m:6.1%})")
    print("\nMACs: one U-Net forward at batch 1, torch.utils.flop_counter (matmul, conv, attention).")
    return 0


# -- blocksearch report / export ------------------------------------------------------------------
def add_report_parser(verbs) -> None:
    p = verbs.add_parser(
        "report", help="write the Pareto-front report of a study",
        description="Compute the Pareto front, hypervolume and dominance over the BK-SDM reference designs "
                    "of a study, and write reports/<study>/: index.html (interactive), pareto.png, trials.csv, "
                    "README.md.")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study name (default: %(default)s)")
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("--out", default=None, help="output folder (default: reports/<study>/)")
    p.add_argument("--hv-reference", default=None, metavar="V1,V2,...",
                   help="hypervolume reference point, one value per objective in its own units (default: "
                        f"{REFERENCE} x the worst completed value); fix it to compare studies")
    p.set_defaults(handler=cmd_report)


def cmd_report(args) -> int:
    from blocksearch.render import write_report

    ref = None
    if args.hv_reference:
        try:
            ref = tuple(float(v) for v in args.hv_reference.split(","))
        except ValueError:
            raise BlocksearchError(
                f"--hv-reference {args.hv_reference!r}: expected numbers separated by commas") from None
    folder = write_report(args.study, args.storage, args.out, ref)
    print(f"report of study {args.study} written to {folder}/ (index.html, pareto.png, trials.csv, README.md)")
    return 0


def add_export_parser(verbs) -> None:
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
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from blocksearch.export import export_study

    folders = export_study(args.study, args.storage, args.out, trial=args.trial, design=args.design,
                           front=args.front, force=args.force)
    print(f"exported {len(folders)} student(s) to: " + ", ".join(f"{f}/" for f in folders))
    return 0


# -- blocksearch run ------------------------------------------------------------------------------
def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


# One flag per SearchConfig field (--cpus-per-trial sets cpus_per_trial); the defaults are SearchConfig's,
# shown by the help as "(default: ...)". A help text that names a default describes a derived one.
RUN_FLAGS = (
    ("space", dict(help="space name or .yaml path")),
    ("teacher", dict(help=TEACHER_HELP)),
    ("trials", dict(type=int, help="finished trials the study should reach, reference designs included")),
    ("study", dict(help="study name (default: <space>-<teacher>)")),
    ("storage", dict(help="Optuna storage URL (default: sqlite:///<runs-dir>/blocksearch.db)")),
    ("runs_dir", dict(help="where students and Ray results go (default: <cwd>/runs; the report goes to "
                           "<runs-dir>/../reports/<study>)")),
    ("address", dict(help="Ray cluster: 'auto' or host:port of 'ray start --head' (default: start a local Ray)")),
    ("dashboard_host", dict(help="interface of a local Ray's dashboard (a loopback address keeps it to this machine)")),
    ("dashboard_port", dict(type=int, help="local Ray dashboard port")),
    ("cpus_per_trial", dict(type=float, help="CPUs per trial")),
    ("gpus_per_trial", dict(type=float, help="GPUs per trial (0: the trials run on CPU)")),
    ("max_concurrent", dict(type=int, help="trials in parallel (default: as many as the cluster's resources allow)")),
    ("steps", dict(type=int, help="distillation steps per trial (default: distill's)")),
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
    ("sampler_steps", dict(type=int, help="sampler steps of the teacher's own scheduler (default: the toy's 10, "
                                          "BK-SDM's 25 for SD teachers)")),
    ("resolution", dict(type=int, help="image size in px for generation and the imagefolder's KD latents "
                                       "(default: the teacher's own, unet sample_size x the VAE scale factor)")),
    ("precision", dict(choices=("fp32", "bf16", "fp16"), help="KD mixed precision, a fast path (default: fp32)")),
    ("batch_size", dict(type=int, help="KD batch size (default: distill's, 16)")),
    ("lr", dict(type=float, help="KD learning rate (default: the toy's 5e-4; BK-SDM's 5e-5 for SD teachers)")),
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
    ("asha", dict(action="store_true", help="stop weak candidates early (ASHA on the output-KD loss); they are "
                                            "recorded PRUNED")),
    ("heartbeat_interval", dict(type=int, help="seconds between heartbeats of this driver's running trials "
                                               "(several drivers may share a study's storage)")),
    ("grace_period", dict(type=int, help="seconds without a heartbeat after which another driver marks a "
                                         "trial FAIL and re-queues it once")),
)


def add_run_parser(verbs) -> None:
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
                                                    "underscores; paths as on the command line, relative to the "
                                                    "working directory); flags on the command line override it")
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    for name, kwargs in RUN_FLAGS:
        default = defaults[name]
        if isinstance(default, tuple):  # --objectives: shown and parsed as comma-separated text
            default = ",".join(default)
        shown = "" if default is None or default is False else f" (default: {default})"
        # not given: absent (SUPPRESS), so that --config can tell a flag on the command line from a default
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS,
                       **{**kwargs, "help": kwargs["help"].replace("%", "%%") + shown})
    p.set_defaults(handler=cmd_run)


def cmd_run(args) -> int:
    from blocksearch.search import run_search

    given = {name: getattr(args, name) for name, _ in RUN_FLAGS if hasattr(args, name)}
    from_file = read_run_config(args.config) if args.config else {}
    run_search(SearchConfig(**{**from_file, **given}, command=" ".join(["blocksearch"] + sys.argv[1:])))
    return 0


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
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in flags:
            raise BlocksearchError(f"--config {path}: unknown key {key!r}; allowed: "
                                   f"{', '.join(n.replace('_', '-') for n in flags)}")
        out[name] = _config_value(path, key, value, flags[name])
    return out


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
def add_distill_parser(verbs) -> None:
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
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lambda-task", type=float)
    p.add_argument("--lambda-out", type=float)
    p.add_argument("--lambda-feat", type=float)
    p.add_argument("--feat-norm", action="store_true", help="LAPTOP-Diff: divide each feature term by the "
                   "teacher feature's mean square")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="mixed precision, a fast path (default: DistillConfig's, full precision)")
    p.add_argument("--seed", type=int)
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
    p.set_defaults(handler=cmd_distill)


def cmd_distill(args) -> int:
    import torch

    from blocksearch.distill import DistillConfig, distill, distill_defaults, resolve_design, write_student
    from blocksearch.surgery import build_student, load_student
    from blocksearch.teachers import is_toy, load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lambda_task=args.lambda_task,
                 lambda_out=args.lambda_out, lambda_feat=args.lambda_feat, precision=args.precision,
                 seed=args.seed, data=args.data, resolution=args.resolution)
    defaults = distill_defaults(is_toy(args.teacher))  # BK-SDM's lr for SD teachers
    config = DistillConfig(**(defaults | {k: v for k, v in given.items() if v is not None}), feat_norm=args.feat_norm,
                           cache_dir=args.cache_dir,
                           teacher_cache="off" if args.no_teacher_cache else args.teacher_cache)
    teacher = load_teacher(args.teacher, args.device)
    if args.init:  # continue distilling a saved student (e.g. an exported one, at full length)
        student, name = load_student(args.init, teacher.unet), None
        genome = student.genome
    else:
        genome, name = resolve_design(teacher.unet, args.design, args.space)
        student = build_student(teacher.unet, genome)
    result = distill(teacher, student, config, args.device)
    if config.steps:
        print(result.extra["teacher_cache"])
    meta = {"teacher": args.teacher, "design": name, "space": args.space, "distill": config.to_dict(),
            "device": args.device, "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    out = write_student(Path(args.out), student, result, meta)
    if result.losses:
        first, last = result.losses[0], result.losses[-1]
        print(f"{genome.id}: {config.steps} KD steps in {result.wall_s:.1f} s; loss {first['loss']:.4f} -> "
              f"{last['loss']:.4f} (task {last['loss_task']:.4f}, out {last['loss_kd_out']:.4f}, "
              f"feat {last['loss_kd_feat']:.4f})")
    print(f"student written to {out / 'unet'} (log: {out / 'train_log.jsonl'})")
    return 0


def add_evaluate_parser(verbs) -> None:
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
    p.add_argument("--sampler-steps", type=int, help="sampler steps (default: the toy's 10; 25 for SD teachers "
                                                     "and the bk-sdm protocol)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default: the toy's 3; BK-SDM's 7.5 for SD teachers)")
    p.add_argument("--resolution", type=int, help="generated image size in px (default: the teacher's own; 512 "
                                                  "for the bk-sdm protocol)")
    p.add_argument("--seed", type=int)
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
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args) -> int:
    import torch

    from blocksearch.evaluate import EvalConfig, eval_defaults, evaluate
    from blocksearch.preflight import check_real_inputs
    from blocksearch.teachers import load_teacher, load_unet

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    info = json.loads((folder / "distill.json").read_text()) if (folder / "distill.json").is_file() else {}
    teacher_spec = args.teacher or info.get("teacher", "toy")
    if args.protocol == "bk-sdm":
        return cmd_evaluate_protocol(args, folder, teacher_spec)
    check_real_inputs(reference=args.reference, inception_weights=args.inception_weights, clip_model=args.clip_model,
                      fid_images=args.prompts or EvalConfig.prompts)
    unet = load_unet(folder, what="student folder",
                     expected="a folder written by `blocksearch distill` or a diffusers U-Net folder")
    teacher = load_teacher(teacher_spec, args.device)
    given = dict(prompts=args.prompts, steps=args.sampler_steps, guidance=args.guidance, seed=args.seed,
                 resolution=args.resolution, reference_images=args.reference_images,
                 latency_repeats=args.latency_repeats)
    config = EvalConfig(**(eval_defaults(teacher.is_toy) | {k: v for k, v in given.items() if v is not None}),
                        reference=args.reference, captions=args.captions, inception_weights=args.inception_weights,
                        clip_model=args.clip_model, cache_dir=args.cache_dir)
    metrics = evaluate(teacher, unet, config, args.device)
    out = Path(args.out) if args.out else folder / "metrics.json"
    out.write_text(json.dumps(metrics.to_dict() | {"eval": config.to_dict(), "teacher": teacher.name}, indent=2) + "\n")
    align = "n/a" if metrics.alignment is None else f"{metrics.alignment:.3f}"
    print(f"fid {metrics.fid:.4f}  alignment {align}  params {metrics.params / 1e6:.2f}M  "
          f"MACs {metrics.macs / 1e9:.3f}G  latency {metrics.latency_ms:.2f} ms (cv {metrics.latency_cv:.1%})")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.timings.items()))
    print(f"metrics written to {out}")
    return 0


def cmd_evaluate_protocol(args, folder, teacher_spec: str) -> int:
    """``evaluate --protocol bk-sdm``: coco.evaluate_protocol on the user's val2014 files, printed next to
    the published BK-SDM figures (coco.PUBLISHED)."""
    from blocksearch.coco import ProtocolSpec, evaluate_protocol, format_result
    from blocksearch.evaluate import EvalConfig, inception_weights, student_pipeline
    from blocksearch.teachers import load_teacher, load_unet

    needed = {"--coco-captions": args.coco_captions, "--coco-images": args.coco_images,
              "--clip-model": args.clip_model}
    missing = [flag for flag, value in needed.items() if value is None]
    if missing:
        raise BlocksearchError(f"--protocol bk-sdm needs {', '.join(missing)}: BK-SDM's MS-COCO val2014 captions "
                               f"file and images, and a local CLIP folder for the CLIP score")
    unused = [f"--{k.replace('_', '-')}" for k in ("prompts", "reference", "captions", "reference_images")
              if getattr(args, k) is not None]
    if unused:
        raise BlocksearchError(f"{', '.join(unused)}: not used by --protocol bk-sdm (its prompts and reference "
                               f"are MS-COCO's; --limit N takes a subset)")
    weights = args.inception_weights or str(inception_weights(EvalConfig()))
    overrides = dict(steps=args.sampler_steps, guidance=args.guidance, resolution=args.resolution, seed=args.seed)
    spec = ProtocolSpec(**{k: v for k, v in overrides.items() if v is not None})
    unet = load_unet(folder, what="student folder", expected="a folder written by `blocksearch distill`, a "
                                                             "diffusers U-Net folder or a pipeline folder")
    teacher = load_teacher(teacher_spec, args.device)
    result = evaluate_protocol(student_pipeline(teacher, unet), spec, args.coco_captions, args.coco_images, weights,
                               args.clip_model, limit=args.limit, device=args.device, cache_dir=args.cache_dir)
    out = Path(args.out) if args.out else folder / "metrics-bk-sdm.json"
    out.write_text(json.dumps(result | {"model": str(folder), "teacher": teacher.name}, indent=2, default=str) + "\n")
    print(format_result(result, str(folder)))
    print(f"metrics written to {out}")
    return 0


# -- blocksearch bench (the handlers: bench.py, bench_search.py, bench_stability.py) ----------------
def add_bench_parser(verbs) -> None:
    bench = verbs.add_parser("bench", help="performance figures (KD throughput, latency, sampler vs random)",
                             description="Measure performance figures side by side in one run.")
    sub = bench.add_subparsers(dest="bench_command", title="bench commands", metavar="<bench command>")
    kd = sub.add_parser("kd", help="KD step cost with / without the teacher cache vs a plain training step",
                        description="Time, interleaved on the same batch: a plain student training step "
                                    "(task loss only), a KD step with a warm teacher cache, a teacher "
                                    "forward, and a KD step without the cache; print the two ratios.")
    kd.add_argument("--teacher", default="toy", help="teacher pipeline (default: toy)")
    kd.add_argument("--design", default="bk_small", help="named design or genome id (default: bk_small)")
    kd.add_argument("--batch-size", type=int, default=16)
    kd.add_argument("--rounds", type=int, default=12, help="timed rounds (after 2 warm-up rounds)")
    kd.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    kd.add_argument("--device", default="cpu")
    _clock_arg(kd)
    kd.set_defaults(handler=cmd_bench)
    lat = sub.add_parser("latency", help="U-Net step latency of the teacher and the named designs",
                         description="Latency of one U-Net step (batch 2 = classifier-free guidance) at the "
                                     "teacher's resolution for the teacher and each named design of the "
                                     "space, with random weights, printed as ratios to the teacher.")
    lat.add_argument("--teacher", default="toy", help="toy, sd-v1, sd-v2, sdxl, or a pipeline folder")
    lat.add_argument("--space", default=None, help="space with the named designs (default: by teacher)")
    lat.add_argument("--device", default="cpu")
    lat.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    lat.add_argument("--warmup", type=int, default=None, help="warm-up calls (default: 1 real-size, 3 toy)")
    lat.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 3 real-size, 15 toy)")
    lat.add_argument("--measurements", type=int, default=None,
                     help="independent measurements per model, for the spread of their medians "
                          "(default: 1 real-size, 5 toy)")
    lat.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    _clock_arg(lat)
    lat.set_defaults(handler=cmd_bench)
    add_bench_search_parser(sub)
    add_bench_stability_parser(sub)


def add_bench_stability_parser(sub) -> None:
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
    p.add_argument("--repeats", type=int, default=15, help="timed repeats per model (default: %(default)s)")
    p.add_argument("--study", default=None, help="also: tau of in-search vs isolated latency over this study")
    p.add_argument("--storage", default=None, help="the study's storage (default: sqlite:///<cwd>/runs/blocksearch.db)")
    p.set_defaults(handler=cmd_bench)


def _clock_arg(p) -> None:
    p.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"),
                   help="wall clock, or process CPU time (immune to other processes on a shared CPU); "
                        "auto: cpu with one CPU thread, else wall")


def cmd_bench(args) -> int:
    """``bench kd | latency | stability``: ``cmd_bench_<command>`` of bench.py or bench_stability.py, imported
    only when it runs (both import torch and diffusers at their top)."""
    module = "blocksearch.bench_stability" if args.bench_command == "stability" else "blocksearch.bench"
    return getattr(importlib.import_module(module), f"cmd_bench_{args.bench_command}")(args)


if __name__ == "__main__":
    sys.exit(main())
