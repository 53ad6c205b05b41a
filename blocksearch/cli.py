"""blocksearch command line: ``blocksearch <verb> [options]``; ``blocksearch <verb> --help`` for each.

Bad input ends with a one-line ``blocksearch: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings

from blocksearch.bench import add_bench_parsers
from blocksearch.cache import default_cache_dir
from blocksearch.errors import BlocksearchError
from blocksearch.pareto import REFERENCE
from blocksearch.samplers import SAMPLERS
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
    bench = verbs.add_parser("bench", help="performance figures (KD throughput, latency, sampler vs random)",
                             description="Measure performance figures side by side in one run.")
    add_bench_parsers(bench.add_subparsers(title="bench commands", metavar="<bench command>"))
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
    from blocksearch.space import SPACES_DIR, load_space

    for path in sorted(SPACES_DIR.glob("*.yaml")):
        space = load_space(str(path))
        print(f"{space.name:24s} teacher {space.teacher:8s} {path}")
    return 0


def cmd_space_show(args) -> int:
    from blocksearch.cost import count_macs, count_params
    from blocksearch.render import fmt
    from blocksearch.space import load_space
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
                    "designs are evaluated once per study. Example: blocksearch run --space unet_blocks")
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    for name, kwargs in RUN_FLAGS:
        default = defaults[name]
        if isinstance(default, tuple):  # --objectives: shown and parsed as comma-separated text
            default = ",".join(default)
        shown = "" if default is None or default is False else " (default: %(default)s)"
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=default,
                       **{**kwargs, "help": kwargs["help"] + shown})
    p.set_defaults(handler=cmd_run)


def cmd_run(args) -> int:
    from blocksearch.search import run_search

    given = {name: getattr(args, name) for name, _ in RUN_FLAGS}
    run_search(SearchConfig(**given, command=" ".join(["blocksearch"] + sys.argv[1:])))
    return 0


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
    p.add_argument("--cache-dir", default=None, help=f"teacher cache folder (default: {default_cache_dir()})")
    p.add_argument("--no-teacher-cache", action="store_true", help="run the teacher live at every step")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(handler=cmd_distill)


def cmd_distill(args) -> int:
    from pathlib import Path

    import torch

    from blocksearch.distill import DistillConfig, distill, resolve_design, write_student
    from blocksearch.surgery import build_student, load_student
    from blocksearch.teachers import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lambda_task=args.lambda_task,
                 lambda_out=args.lambda_out, lambda_feat=args.lambda_feat, precision=args.precision,
                 seed=args.seed, data=args.data)
    config = DistillConfig(**{k: v for k, v in given.items() if v is not None}, feat_norm=args.feat_norm,
                           cache_dir=args.cache_dir, teacher_cache=not args.no_teacher_cache)
    teacher = load_teacher(args.teacher, args.device)
    if args.init:  # continue distilling a saved student (e.g. an exported one, at full length)
        student, name = load_student(args.init, teacher.unet), None
        genome = student.genome
    else:
        genome, name = resolve_design(teacher.unet, args.design, args.space)
        student = build_student(teacher.unet, genome)
    result = distill(teacher, student, config, args.device)
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
                    "and latency; print them and write DIR/metrics.json.")
    p.add_argument("dir", help="a folder written by `blocksearch distill` (or any diffusers U-Net folder)")
    p.add_argument("--teacher", default=None, help=TEACHER_HELP + " (default: the one in DIR/distill.json, else toy)")
    p.add_argument("--prompts", type=int, help="number of prompts (default: EvalConfig's)")
    p.add_argument("--sampler-steps", type=int, help="sampler steps (default: EvalConfig's)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default: EvalConfig's, the best for the toy teacher; "
                        "SD teachers are usually sampled at 7.5)")
    p.add_argument("--seed", type=int)
    p.add_argument("--reference-images", type=int, help="toy: real images behind the FID reference statistics")
    p.add_argument("--latency-repeats", type=int, help="timed repeats of the latency measurement")
    p.add_argument("--reference", default=None, help="real teachers: imagefolder of reference images + captions")
    p.add_argument("--inception-weights", default=None, help="real teachers: path to "
                   "weights-inception-2015-12-05-6726825d.pth (torch-fidelity's Inception)")
    p.add_argument("--clip-model", default=None, help="real teachers: local CLIP model folder for alignment")
    p.add_argument("--cache-dir", default=None, help=f"cache folder (default: {default_cache_dir()})")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("-o", "--out", default=None, help="metrics JSON path (default DIR/metrics.json)")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args) -> int:
    import json
    from pathlib import Path

    import torch

    from blocksearch.evaluate import EvalConfig, evaluate
    from blocksearch.teachers import load_teacher, load_unet

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    unet = load_unet(folder, what="student folder",
                     expected="a folder written by `blocksearch distill` or a diffusers U-Net folder")
    info = json.loads((folder / "distill.json").read_text()) if (folder / "distill.json").is_file() else {}
    teacher = load_teacher(args.teacher or info.get("teacher", "toy"), args.device)
    given = dict(prompts=args.prompts, steps=args.sampler_steps, guidance=args.guidance, seed=args.seed,
                 reference_images=args.reference_images, latency_repeats=args.latency_repeats)
    config = EvalConfig(**{k: v for k, v in given.items() if v is not None}, reference=args.reference,
                        inception_weights=args.inception_weights, clip_model=args.clip_model,
                        cache_dir=args.cache_dir)
    metrics = evaluate(teacher, unet, config, args.device)
    out = Path(args.out) if args.out else folder / "metrics.json"
    out.write_text(json.dumps(metrics.to_dict() | {"eval": config.to_dict(), "teacher": teacher.name}, indent=2) + "\n")
    align = "n/a" if metrics.alignment is None else f"{metrics.alignment:.3f}"
    print(f"fid {metrics.fid:.4f}  alignment {align}  params {metrics.params / 1e6:.2f}M  "
          f"MACs {metrics.macs / 1e9:.3f}G  latency {metrics.latency_ms:.2f} ms (cv {metrics.latency_cv:.1%})")
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.timings.items()))
    print(f"metrics written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
