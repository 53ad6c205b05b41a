"""The driver's work on the teacher before the trials start: the exact parameters of every architecture (the
study's params objective and budget), the trials' shared teacher cache, and the teacher's own scores (the
report's teacher row and the text-aware feasibility floor)."""

from __future__ import annotations

import time
from typing import Callable, TextIO

import optuna
import torch

from blocksearch.cache import default_cache_dir
from blocksearch.families.base import Arch, ArchSpace, get_family
from blocksearch.objectives import fmt
from blocksearch.recipe.baseline import alignment_bound, teacher_reference
from blocksearch.families.cost import count_params
from blocksearch.recipe.distill import DistillConfig, prepare_teacher_cache
from blocksearch.recipe.evaluate import EvalConfig, toy_prompts_note
from blocksearch.search.trial import TrialJob
from blocksearch.study import SearchConfig


def params_table(teacher_unet: torch.nn.Module, bound: ArchSpace) -> Callable[[Arch], int]:
    """Exact params of an architecture, from the config alone (meta device), cached by its id in ``.cache``;
    ``teacher_unet``: the teacher's denoiser, of the space's family."""
    cache: dict[str, int] = {}
    config, model_class = teacher_unet.config, type(teacher_unet)  # only the config: Tune pickles the searcher
    family = get_family(bound.space.family)  # and this function with it

    def params_of(genome: Arch) -> int:
        if genome.id not in cache:
            with torch.device("meta"):
                unet = model_class.from_config(family.student_config(config, genome))
            cache[genome.id] = count_params(unet)
        return cache[genome.id]

    for genome in bound.named_designs().values():
        params_of(genome)
    params_of.cache = cache
    return params_of


def warm_teacher_cache(cfg: SearchConfig, job: TrialJob, out: TextIO) -> None:
    """Build the trials' teacher cache once, in the driver, before Tune starts: teacher outputs depend
    only on the batch (docs/design.md, Distillation), so every trial then finds it warm instead of the first
    ones building it in silence. Trials on other machines of a cluster build their own copy."""
    config = DistillConfig.from_dict(job.distill)
    if config.teacher_cache == "off" or not config.steps:
        print("teacher cache off: the teacher runs live in each trial", file=out)
        return
    device = job.device if job.device == "cpu" or torch.cuda.is_available() else "cpu"
    where = config.cache_dir or default_cache_dir()
    print(f"teacher cache ({config.teacher_cache}): the teacher's outputs and stage features for "
          f"{job.cache_steps or config.steps} KD "
          f"batches of {config.batch_size} ({config.data} data), computed once for every trial, under {where}",
          file=out)
    t0 = time.perf_counter()
    cache, why = prepare_teacher_cache(job.teacher.load(device), config, device, steps=job.cache_steps)
    if cache is None:
        print(why, file=out)
        return
    print(f"teacher cache ready: {cache.path} ({cache.path.stat().st_size / 2**20:.0f} MB, "
          f"{time.perf_counter() - t0:.0f} s; {why})", file=out)


def measure_teacher(cfg: SearchConfig, job: TrialJob, study: optuna.Study, out: TextIO) -> float | None:
    """The teacher's own scores at the trials' evaluation settings, once per study (cached on disk): the
    report's teacher row and the text-aware feasibility floor (``--min-alignment`` x its alignment)."""
    device = job.device if job.device == "cpu" or torch.cuda.is_available() else "cpu"
    print("teacher: scoring it at the trials' evaluation settings (once; the report's teacher row and the "
          "alignment floor)", file=out)
    threads = torch.get_num_threads()
    torch.set_num_threads(job.cpus)  # as in a trial: the latencies must be comparable (same threads)
    try:
        config = EvalConfig.from_dict(job.eval | {"images": True})  # the rungs' settings, if the first stage has none
        teacher = job.teacher.load(device)
        if note := toy_prompts_note("--eval-prompts", config.prompts, teacher):
            print(note, file=out)
        metrics = teacher_reference(teacher, config, device)
    finally:
        torch.set_num_threads(threads)
    study.set_user_attr("teacher_metrics", {k: v for k, v in metrics.items() if k != "timings"})
    floor = alignment_bound(metrics.get("alignment"), cfg.min_alignment)
    shown = "off" if floor is None else f"alignment >= {floor:.3f} ({cfg.min_alignment:g} x the teacher's)"
    print(f"teacher: fid {fmt('fid', metrics['fid'])}, alignment {fmt('alignment', metrics.get('alignment'))}, "
          f"{teacher.family.denoiser_name} step {fmt('latency_ms', metrics['latency_ms'])}, end to end {fmt('e2e_ms', metrics.get('e2e_ms'))}; "
          f"feasible students: {shown}", file=out)
    return floor
