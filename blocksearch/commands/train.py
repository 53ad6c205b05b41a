"""``blocksearch train``: a chosen student's full-length KD run on Ray Train (docs/train.md)."""

from __future__ import annotations

import sys

from blocksearch.cache import default_cache_dir
from blocksearch.commands.common import DEFAULT_STUDY, STORAGE_HELP, TEACHER_HELP
from blocksearch.search.cluster import local_ray_auth


def add_parser(verbs) -> None:
    """Register ``train``."""
    p = verbs.add_parser(
        "train", help="finish a chosen student: a long KD run on Ray Train (data-parallel, checkpoints, EMA, curve)",
        description="Train one student of any denoiser family (SD / SDXL U-Nets, PixArt, SD3, Flux "
                    "transformers) by BK-SDM's KD loss for many steps on N Ray Train workers (data-parallel, the "
                    "gradients averaged by all-reduce: gloo on CPU, nccl on GPU); the global batch is split into per-worker micro-batches with gradient accumulation, "
                    "the same samples whatever the number of workers. Checkpoints (safetensors + JSON: weights, "
                    "optimizer, EMA, data position) go to DIR/ray/train; rerunning the same command after a kill "
                    "continues from the last one. Worker 0 evaluates every --eval-every steps at the search's "
                    "evaluation settings and writes DIR/curve.csv, curve.png, curve.html; the final student is a "
                    "folder of the teacher's stock pipeline class in DIR. The teacher runs live in each worker (no teacher cache). "
                    "Example: blocksearch train --design bk_small --workers 2 -o runs/bk_small-full; a transformer: "
                    "blocksearch train --teacher toy-dit --space dit_blocks --design tinyfusion_14 -o runs/tf14")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--design", help="a named design of --space (bk_small, koala_700m, tinyfusion_14, ...) or a "
                                        "genome id, cut out of the teacher")
    which.add_argument("--init", metavar="DIR", help="a saved student: a folder written by distill, train or export "
                                                     "(DIR/unet or DIR/transformer beside its block_map.json), or a "
                                                     "bare U-Net folder")
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
    p.set_defaults(handler=main)


def main(args) -> int:
    """Prepare the job from the flags (and ``--trial``'s study), run it, print where the results are."""
    local_ray_auth(args.address)  # before Ray is imported (train.job imports it): Ray reads RAY_AUTH_MODE then
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
