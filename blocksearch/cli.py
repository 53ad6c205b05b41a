"""blocksearch command line: ``blocksearch <verb> [options]``; ``blocksearch <verb> --help`` for each.

Bad input ends with a one-line ``blocksearch: error: ...`` on stderr and exit code 2. The parser (verbs, flags,
help texts) is parsers.py; here are ``main`` and the verbs' handlers, which import the stages they run (torch,
diffusers) only when they run, so that ``blocksearch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from blocksearch import parsers
from blocksearch.console import quiet, set_quiet
from blocksearch.errors import BlocksearchError
from blocksearch.parsers import RUN_FLAGS, dump_run_config, read_run_config
from blocksearch.space import load_space, space_files
from blocksearch.study import SearchConfig

LIBRARY_VERBOSITY = {"diffusers": "DIFFUSERS_VERBOSITY", "transformers": "TRANSFORMERS_VERBOSITY",
                     "huggingface_hub": "HF_HUB_VERBOSITY"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet: choose one")
    quiet_libraries(args.verbose)
    if args.quiet:
        set_quiet()  # progress bars and progress lines off (console.py)
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
    except BrokenPipeError:  # `blocksearch ... | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a tool the pipe stopped


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
    """parsers.py's parser, each verb wired to its handler here (HANDLERS)."""
    return parsers.build_parser(HANDLERS)


# -- blocksearch space ----------------------------------------------------------------------------
def cmd_space_list(args) -> int:
    for path in space_files():
        space = load_space(str(path))
        print(f"{space.name:24s} teacher {space.teacher:8s} {path}")
    return 0


def cmd_space_show(args) -> int:
    from blocksearch.recipe.cost import count_macs, count_params
    from blocksearch.report.render import fmt
    from blocksearch.families.unet import build_student
    from blocksearch.teachers import load_teacher_unet, resolve_teacher, topology_of

    space = load_space(args.space)
    if space.family == "dit":
        return show_dit_space(space, args)
    teacher_name = args.teacher or space.teacher
    if resolve_teacher(teacher_name).family_name != "unet":
        raise BlocksearchError(f"teacher {teacher_name} is a transformer; space {space.name} is for U-Nets (allowed: a "
                               f"U-Net teacher, or a transformer space such as dit_blocks)")
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


def show_dit_space(space, args) -> int:
    """``space show`` of a transformer space (families/dit.py): groups, size, and the designs' exact params."""
    from blocksearch.families.dit import PIPELINES, TEXT_LEN, design_costs
    from blocksearch.families.dit_genome import load_teacher_config, model_class_of, topology_of
    from blocksearch.report.render import fmt
    from blocksearch.teachers import TOY_TEACHERS
    from blocksearch.toy.assets import check_asset

    teacher_name = args.teacher or space.teacher
    folder = TOY_TEACHERS.get(teacher_name, Path(teacher_name))
    if teacher_name in TOY_TEACHERS:
        check_asset(folder / "transformer" / "config.json")  # not built: the one-line error names the build
    config = load_teacher_config(str(folder) if teacher_name in TOY_TEACHERS else teacher_name)
    tokenizer = folder / "tokenizer" / "tokenizer_config.json"  # a pipeline folder: its own text length
    text_len = (min(TEXT_LEN[model_class_of(config)], json.loads(tokenizer.read_text()).get("model_max_length", 10**9))
                if tokenizer.is_file() and TEXT_LEN[model_class_of(config)] else None)
    bound = space.bind(topology_of(config))
    topo = bound.topology
    print(f"space {space.name} ({space.path}) on teacher {teacher_name} ({topo.model_class}, "
          f"{PIPELINES[topo.model_class]})\n")
    print(f"{'group':28s} {'blocks':>6s}  choices (patterns keeping the same blocks count once)")
    for group, n in topo.depths:
        choices = [c for c, _ in dict(bound.options).get(group, (("all (not searched)", None),))]
        print(f"{group:28s} {n:6d}  {', '.join(choices)}")
    print(f"\ndistinct architectures: {len(bound)}\n")
    latent = args.latent or config.get("sample_size", 128)  # Flux has none: 128 latents = 1024 px
    rows = design_costs(bound, config, teacher_name, latent, text_len)
    print(f"{'design':14s} {'genome':24s} {'params':>17s} {f'MACs @ {latent}x{latent}':>19s}  published (ours vs it)")
    base_p, base_m = rows[0].params, rows[0].macs
    for r in rows:
        pub = "" if r.published is None else (f"{fmt('params', r.published[0], 2)} "
                                              f"({r.paper_params / r.published[0] - 1:+.2%}) {r.published[1]}")
        print(f"{r.name:14s} {r.genome.id:24s} {fmt('params', r.params, 2):>9s} ({r.params / base_p:6.1%}) "
              f"{fmt('macs', r.macs, 1):>10s} ({r.macs / base_m:6.1%})  {pub}")
    if any(r.paper_params != r.params for r in rows):
        print("\nDiT counts its timestep and class embedders once; diffusers repeats them in every block. Counted as "
              "DiT does: " + ", ".join(f"{r.name} {fmt('params', r.paper_params, 1)}" for r in rows))
    text = f"{text_len or TEXT_LEN[topo.model_class]} text tokens" if TEXT_LEN[topo.model_class] else "a class label"
    print(f"\nMACs: one transformer forward at batch 1 ({text}), torch.utils.flop_counter (matmul, attention).")
    return 0


# -- blocksearch report / export ------------------------------------------------------------------
def cmd_report(args) -> int:
    from blocksearch.report.render import write_report

    ref = None
    if args.hv_reference:
        try:
            ref = tuple(float(v) for v in args.hv_reference.split(","))
        except ValueError:
            raise BlocksearchError(
                f"--hv-reference {args.hv_reference!r}: expected numbers separated by commas") from None
    folder = write_report(args.study, args.storage, args.out, ref)
    files = [f for f in ("README.md", "index.html", "pareto.png", "curves.png", "trials.csv") if (folder / f).exists()]
    print(f"report of study {args.study} written to {folder}/ ({', '.join(files)})")
    return 0


def cmd_export(args) -> int:
    from blocksearch.report.export import export_study

    folders = export_study(args.study, args.storage, args.out, trial=args.trial, design=args.design,
                           front=args.front, force=args.force)
    print(f"exported {len(folders)} student(s) to: " + ", ".join(f"{f}/" for f in folders))
    return 0


# -- blocksearch run ------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from blocksearch.search.driver import resolve, run_search

    given = {name: getattr(args, name) for name, _ in RUN_FLAGS if hasattr(args, name)}
    from_file = read_run_config(args.config) if args.config else {}
    cfg = SearchConfig(**{**from_file, **given}, command=" ".join(["blocksearch"] + sys.argv[1:]))
    if args.print_config:  # the settings resolved (defaults, --config, flags; paths absolute), nothing run
        from blocksearch.recipe.distill import DistillConfig
        from blocksearch.search.driver import first_stage_config
        from blocksearch.search.selection import first_stage
        from blocksearch.teachers import is_toy

        cfg = resolve(cfg)
        stage = first_stage(cfg.score, is_toy(cfg.teacher), cfg.steps)
        base = first_stage_config(cfg, stage)
        print(dump_run_config(cfg), end="")
        steps, rungs = base.steps or DistillConfig().steps, ",".join(map(str, base.rungs or ())) or "none"
        print(f"# score {cfg.score} resolves to: {base.score} after {steps} KD steps, rungs {rungs} (FID) -- "
              f"{stage.why}")
        return 0
    if quiet():  # -q: the fronts and the results lines only
        with open(os.devnull, "w") as progress:
            run_search(cfg, out=progress, results=sys.stdout)
    else:
        run_search(cfg)
    return 0


# -- blocksearch distill / evaluate (issue 4) ------------------------------------------------
def cmd_distill(args) -> int:
    import torch

    from blocksearch.recipe.distill import DistillConfig, distill, distill_defaults, resolve_design, write_student
    from blocksearch.families.unet import load_student
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
        if teacher.family.name != "unet":
            raise BlocksearchError(f"--init continues U-Net students only; teacher {args.teacher} is a "
                                   f"{teacher.family.denoiser_name}: distil a --design from it instead")
        student, name = load_student(args.init, teacher.unet), None
        genome = student.genome
    else:
        genome, name = resolve_design(teacher.denoiser, args.design, args.space)
        student = teacher.family.build_student(teacher.denoiser, genome)
    result = distill(teacher, student, config, args.device)
    if config.steps and not quiet():
        print(result.extra["teacher_cache"])
    meta = {"teacher": args.teacher, "design": name, "space": args.space, "distill": config.to_dict(),
            "device": args.device, "torch_threads": torch.get_num_threads(), "command": " ".join(sys.argv)}
    out = write_student(Path(args.out), student, result, meta, teacher.family.subfolder)
    if result.losses:
        first, last = result.losses[0], result.losses[-1]
        print(f"{genome.id}: {config.steps} KD steps in {result.wall_s:.1f} s; loss {first['loss']:.4f} -> "
              f"{last['loss']:.4f} (task {last['loss_task']:.4f}, out {last['loss_kd_out']:.4f}, "
              f"feat {last['loss_kd_feat']:.4f})")
    print(f"student written to {out / teacher.family.subfolder} (log: {out / 'train_log.jsonl'})")
    return 0


def metrics_path(out: str | None, folder: Path, name: str) -> Path:
    """Where evaluate writes its metrics, decided before anything is computed: ``-o`` as a file path, or a folder
    that exists (then ``<folder>/name``); default ``<DIR>/name``. One-line error for a path whose folder is missing."""
    if not out:
        return folder / name
    path = Path(out)
    if path.is_dir():
        return path / name
    if not path.parent.is_dir():
        raise BlocksearchError(f"-o {out}: folder {path.parent} does not exist; allowed: a JSON file path in an "
                               f"existing folder, or an existing folder (the metrics go to <folder>/{name})")
    return path


def cmd_evaluate(args) -> int:
    import torch

    from blocksearch.recipe.evaluate import EvalConfig, eval_defaults, evaluate, toy_prompts_note
    from blocksearch.recipe.preflight import check_real_inputs
    from blocksearch.teachers import load_teacher, load_unet

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.dir)
    info = json.loads((folder / "distill.json").read_text()) if (folder / "distill.json").is_file() else {}
    teacher_spec = args.teacher or info.get("teacher", "toy")
    if args.protocol == "bk-sdm":
        return cmd_evaluate_protocol(args, folder, teacher_spec)
    out = metrics_path(args.out, folder, "metrics.json")
    check_real_inputs(reference=args.reference, inception_weights=args.inception_weights, clip_model=args.clip_model,
                      fid_images=args.prompts or EvalConfig.prompts)
    teacher = load_teacher(teacher_spec, args.device)
    if teacher.family.name == "unet":
        unet = load_unet(folder, what="student folder",
                         expected="a folder written by `blocksearch distill` or a diffusers U-Net folder")
    else:  # a transformer student: DIR/transformer (distill's, export's) or a transformer folder
        sub = teacher.family.subfolder if (folder / teacher.family.subfolder).is_dir() else None
        unet = type(teacher.denoiser).from_pretrained(folder, subfolder=sub, use_safetensors=True)
    given = dict(prompts=args.prompts, steps=args.inference_steps, guidance=args.guidance, seed=args.seed,
                 resolution=args.resolution, reference_images=args.reference_images,
                 latency_repeats=args.latency_repeats)
    config = EvalConfig(**(eval_defaults(teacher.is_toy) | {k: v for k, v in given.items() if v is not None}),
                        reference=args.reference, captions=args.captions, inception_weights=args.inception_weights,
                        clip_model=args.clip_model, cache_dir=args.cache_dir)
    if note := toy_prompts_note("--prompts", config.prompts, teacher):
        print(note)
    metrics = evaluate(teacher, unet, config, args.device)
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
    from blocksearch.recipe.coco import ProtocolSpec, evaluate_protocol, format_result
    from blocksearch.recipe.evaluate import EvalConfig, inception_weights, student_pipeline
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
    out = metrics_path(args.out, folder, "metrics-bk-sdm.json")
    weights = args.inception_weights or str(inception_weights(EvalConfig()))
    overrides = dict(steps=args.inference_steps, guidance=args.guidance, resolution=args.resolution, seed=args.seed)
    spec = ProtocolSpec(**{k: v for k, v in overrides.items() if v is not None})
    unet = load_unet(folder, what="student folder", expected="a folder written by `blocksearch distill`, a "
                                                             "diffusers U-Net folder or a pipeline folder")
    teacher = load_teacher(teacher_spec, args.device)
    result = evaluate_protocol(student_pipeline(teacher, unet), spec, args.coco_captions, args.coco_images, weights,
                               args.clip_model, limit=args.limit, device=args.device, cache_dir=args.cache_dir)
    out.write_text(json.dumps(result | {"model": str(folder), "teacher": teacher.name}, indent=2, default=str) + "\n")
    print(format_result(result, str(folder)))
    print(f"metrics written to {out}")
    return 0


# -- blocksearch train (train.py) -----------------------------------------------------------------
def cmd_train(args) -> int:
    from blocksearch.train.job import prepare_job, run_train

    student = (("trial", f"{args.study}:{args.trial}") if args.trial is not None else
               ("init", args.init) if args.init else ("design", args.design))
    distill = {k: getattr(args, k) for k in ("batch_size", "lr", "lambda_task", "lambda_out", "lambda_feat",
                                             "feat_norm", "precision", "seed", "data", "resolution", "cache_dir")}
    train = {k: getattr(args, k) for k in ("steps", "workers", "micro_batch_size", "cpus_per_worker",
                                           "gpus_per_worker", "warmup", "schedule", "ema", "checkpoint_every",
                                           "eval_every", "report_to")}
    evaluation = {"prompts": args.eval_prompts, "reference": args.reference, "captions": args.captions,
                  "inception_weights": args.inception_weights, "clip_model": args.clip_model,
                  "cache_dir": args.cache_dir}
    job = prepare_job(args.teacher, student, args.out, space=args.space, storage=args.storage, distill=distill,
                      train=train, evaluation=evaluation, command=" ".join(["blocksearch"] + sys.argv[1:]))
    info = run_train(job, address=args.address, dashboard_port=args.dashboard_port)
    final = info.get("final") or {}
    scores = "".join(f", {k} {final[k]:.4g}" for k in ("fid", "alignment") if final.get(k) is not None)
    print(f"{info.get('genome')}: trained to step {info.get('steps')} (loss {final.get('loss', float('nan')):.4f}"
          f"{scores}); pipeline ({info.get('exported_weights')} weights) in {job.out}, learning curve "
          f"{job.out}/curve.html, checkpoints under {job.out}/"
          f"{'checkpoints' if job.train.get('workers') == 0 else 'ray/train'}")
    return 0


# -- blocksearch bench (the handlers: bench/speed.py, bench/search.py, bench/stability.py, bench/fidelity.py, bench/deploy.py) --
BENCH_MODULES = {"stability": "blocksearch.bench.stability", "fidelity": "blocksearch.bench.fidelity",
                 "deploy": "blocksearch.bench.deploy", "search": "blocksearch.bench.search"}


def cmd_bench(args) -> int:
    """``bench kd | latency | search | stability | fidelity | deploy``: ``cmd_bench_<command>`` of bench/speed.py or
    bench/<command>.py, imported only when it runs (they import torch and diffusers at their top)."""
    module = BENCH_MODULES.get(args.bench_command, "blocksearch.bench.speed")
    return getattr(importlib.import_module(module), f"cmd_bench_{args.bench_command}")(args)


# Each verb's handler, by the verb's name (`bench`: kd, latency, stability, fidelity); parsers.build_parser wires them.
HANDLERS = {"space show": cmd_space_show, "space list": cmd_space_list, "report": cmd_report, "export": cmd_export,
            "run": cmd_run, "distill": cmd_distill, "evaluate": cmd_evaluate, "bench": cmd_bench,
            "train": cmd_train}


if __name__ == "__main__":
    sys.exit(main())
