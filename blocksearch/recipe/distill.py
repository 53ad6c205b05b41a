"""Distillation: a short feature-level KD run of a student against its teacher (BK-SDM, arXiv 2305.15798).

    L = lambda_task * MSE(eps_s, eps) + lambda_out * MSE(eps_s, eps_t) + lambda_feat * sum_l MSE(F_s^l, F_t^l)

over the layer pairs that surgery derived (``Student.kd_pairs``: the output of every surviving stage of a U-Net,
of every kept block of a transformer), with the denoiser called and its features read as the teacher's family
says (families/base.py: ``forward``, ``kd_feature``).
With ``feat_norm`` each feature term is divided by the teacher feature's mean square, i.e.
||F_s - F_t||^2 / ||F_t||^2 (LAPTOP-Diff's normalised distillation, arXiv 2404.11098, which
balances layers whose features differ in scale). The target is the family's ``training_target``: the noise,
the velocity (a v-prediction teacher) or the flow (SD3, Flux). Teacher outputs come from the teacher cache (computed once per study) or are
computed live under ``no_grad``.

A run can stop at step k and continue to step n (``save_to`` / ``resume_from``): the checkpoint holds the
student's weights, AdamW's full state and the step reached, in safetensors files (the scalars in JSON; never
pickle), and the continued run reads batches k..n-1 of the same stream, so 0->k then k->n trains the same
student as 0->n (``bench_fidelity`` trains its budget ladders this way).

Opt-in (issue 19, to lower the noise of short runs): ``schedule``/``warmup`` give each run segment
[first, steps) its own warm-up and decay towards 0 at the segment's end (a warm restart per rung or ladder
segment: SGDR, Loshchilov & Hutter, ICLR 2017), with ``schedules.lr_at``; ``ema`` keeps an EMA of the
student's weights (Polyak averaging, ``schedules.Ema``, its decay warmed up as min(ema, (1+n)/(10+n)) so that
a 120-step run does not average in the surgery's weights), saved with the checkpoint and copied into the
student at the end. With the defaults (constant, no warm-up, no EMA) neither the run nor its identity changes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from blocksearch.adapt.blockmap import block_map, write_block_map
from blocksearch.cache import (CHECKSUM, CorruptFile, atomic_dir, atomic_write, default_cache_dir, file_problem,
                               file_record, record_folder, set_aside, work_slot, yield_to_measurement)
from blocksearch.console import quiet
from blocksearch.recipe.data import Batch, BatchStream, fingerprint
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.schedules import EMA_FILE, SCHEDULES, Ema, lr_at
from blocksearch.settings import Settings
from blocksearch.space import load_space
from blocksearch.families.base import family_of_arch, get_family
from blocksearch.families.unet.surgery import Student
from blocksearch.recipe.teacher_cache import (DEFAULT_CAP_GB, FeatureHooks, TeacherCache, cache_bytes_parts, cache_cap,
                                       cache_figures, cache_plan, open_cache, teacher_forward)
from blocksearch.teachers import Teacher

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "disk", "off")  # auto: disk where it fits under the cap, else the teacher runs live
# The defaults that follow the teacher: the toy's are DistillConfig's own; SD-family teachers get BK-SDM's
# AdamW learning rate (arXiv 2305.15798 sec. 4: 5e-5).
SD_DISTILL = {"lr": 5e-5}
# The checkpoint of a KD run (``save_checkpoint``): weights and optimizer tensors in safetensors, the rest in JSON.
CHECKPOINT_FORMAT = 1
WEIGHTS_FILE, OPTIMIZER_FILE, CHECKPOINT_FILE = "unet.safetensors", "optimizer.safetensors", "checkpoint.json"
# The settings a continued run must share with the run it continues: they shape the training trajectory.
TRAJECTORY = ("batch_size", "lr", "lambda_task", "lambda_out", "lambda_feat", "feat_norm", "precision", "seed",
              "data", "resolution", "max_grad_norm")
# Opt-in trajectory settings: in ``trajectory`` only where they differ from these defaults (DistillConfig's), so
# the identity of a default run (checkpoints, bench fidelity's checkpoint root) is what it was before them.
OPTIONAL_TRAJECTORY = ("schedule", "warmup", "ema")


@dataclass(frozen=True)
class DistillConfig(Settings):
    """One KD run. Defaults: BK-SDM's loss weights; steps/batch sized for the toy teacher on one CPU thread."""

    steps: int = 120
    batch_size: int = 16
    lr: float = 5e-4
    lambda_task: float = 1.0
    lambda_out: float = 1.0
    lambda_feat: float = 1.0
    feat_norm: bool = False  # LAPTOP-Diff normalised feature loss
    precision: str = "fp32"  # or mixed precision: "bf16" (CPU/GPU), "fp16" (CUDA)
    seed: int = 0
    data: str = "toy"  # "toy" or an imagefolder path
    resolution: int | None = None  # imagefolder images are encoded at this size in px (None: the teacher's own)
    cache_dir: str | None = None  # default: $BLOCKSEARCH_CACHE or ~/.cache/blocksearch
    teacher_cache: str = "auto"  # reuse teacher outputs across candidates: auto | disk | off (see CACHE_MODES)
    cache_gb: float = DEFAULT_CAP_GB
    max_grad_norm: float = 1.0
    schedule: str = "constant"  # lr per run segment: constant | linear | cosine (schedules.SCHEDULES)
    warmup: int = 0  # linear warm-up steps at the start of each run segment
    ema: float = 0.0  # EMA decay of the student's weights; 0: off

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise BlocksearchError(f"distill schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise BlocksearchError(f"distill warmup {self.warmup!r}; allowed: an integer >= 0 (steps)")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0.0 <= self.ema < 1.0:
            raise BlocksearchError(f"distill ema {self.ema!r}; allowed: 0 (off) or a decay in (0, 1), e.g. 0.99")
        if isinstance(self.teacher_cache, bool):  # settings of earlier versions: True (cached), False (live)
            object.__setattr__(self, "teacher_cache", "auto" if self.teacher_cache else "off")
        if self.teacher_cache not in CACHE_MODES:
            raise BlocksearchError(f"teacher cache {self.teacher_cache!r}; allowed: {', '.join(CACHE_MODES)}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise BlocksearchError(f"resolution {self.resolution}: allowed: a multiple of 8 (the VAE's scale factor)")
        if self.precision not in PRECISIONS:
            raise BlocksearchError(f"precision {self.precision!r} is not supported; allowed: {', '.join(PRECISIONS)}")
        for name, low in (("steps", 0), ("batch_size", 1)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise BlocksearchError(f"distill {name} must be an integer >= {low}, got {getattr(self, name)!r}")
        if not self.lr > 0 or min(self.lambda_task, self.lambda_out, self.lambda_feat) < 0:
            raise BlocksearchError("distill lr must be > 0 and every lambda >= 0")


def opted_in(values: dict) -> dict:
    """The OPTIONAL_TRAJECTORY settings of ``values`` (an ``asdict`` of a config) that are not their defaults."""
    defaults = {k: DistillConfig.__dataclass_fields__[k].default for k in OPTIONAL_TRAJECTORY}
    return {k: values[k] for k, d in defaults.items() if values.get(k, d) != d}


def trajectory(config: DistillConfig | dict) -> dict:
    """The settings a continued run must share with the run it continues (a config, or its dict as
    ``asdict`` gives): TRAJECTORY's, plus each OPTIONAL_TRAJECTORY setting that is not its default."""
    values = config if isinstance(config, dict) else asdict(config)
    return {k: values[k] for k in TRAJECTORY} | opted_in(values)


def distill_defaults(toy: bool) -> dict:
    """The KD settings that follow the teacher: DistillConfig's own for the toy, ``SD_DISTILL`` for others."""
    return {} if toy else dict(SD_DISTILL)


@dataclass(frozen=True)
class DistillResult:
    losses: list[dict]  # per step: step, loss, loss_task, loss_kd_out, loss_kd_feat
    wall_s: float  # the whole run, teacher cache included
    teacher_s: float = 0.0  # computing or loading the teacher cache (or the live teacher forwards)
    cache_path: str | None = None
    extra: dict = field(default_factory=dict)


def feature_loss(s: torch.Tensor, t: torch.Tensor, norm: bool) -> torch.Tensor:
    """MSE(F_s, F_t), or divided by mean(F_t^2) (LAPTOP-Diff)."""
    loss = F.mse_loss(s.float(), t.float())
    return loss / t.float().pow(2).mean().clamp_min(1e-8) if norm else loss


class Distiller:
    """The KD recipe: set up (optimizer, hooks) -> ``step`` per batch -> ``close``."""

    def __init__(self, teacher: Teacher, student: Student, config: DistillConfig, device="cpu"):
        self.teacher, self.student, self.config, self.device = teacher, student, config, torch.device(device)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise BlocksearchError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
        self.family = teacher.family
        self.pairs = student.kd_pairs
        self.unet = student.denoiser.to(self.device).train().requires_grad_(True)  # the student U-Net or transformer
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=config.lr, weight_decay=1e-2)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.hooks = FeatureHooks(self.unet, [s for _, s in self.pairs], self.family)
        self._teacher_hooks = None
        self.ema = None  # a schedules.Ema of the student (``distill`` sets it), saved with a checkpoint

    def autocast(self):
        if self.config.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def teacher_targets(self, batch: Batch):
        """Live teacher output and the paired features (no cache), under no_grad."""
        if self._teacher_hooks is None:
            self.teacher.denoiser.eval().requires_grad_(False)
            self._teacher_hooks = FeatureHooks(self.teacher.denoiser, [t for t, _ in self.pairs], self.family)
        with self.autocast():
            return teacher_forward(self.teacher.denoiser, self._teacher_hooks, batch, self.family)

    def losses(self, batch: Batch, t_out: torch.Tensor, t_feats: dict) -> dict[str, torch.Tensor]:
        c = self.config
        with self.autocast():
            pred = self.family.forward(self.unet, batch.noisy, batch.timesteps, batch.cond).float()
        s_feats = self.hooks.pop()
        loss_task = F.mse_loss(pred, batch.target)
        loss_kd_out = F.mse_loss(pred, t_out.float())
        loss_kd_feat = sum(feature_loss(s_feats[s], t_feats[t], c.feat_norm) for t, s in self.pairs)
        loss = c.lambda_task * loss_task + c.lambda_out * loss_kd_out + c.lambda_feat * loss_kd_feat
        return dict(loss=loss, loss_task=loss_task, loss_kd_out=loss_kd_out, loss_kd_feat=loss_kd_feat)

    def step(self, step: int, batch: Batch, t_out: torch.Tensor, t_feats: dict) -> dict:
        """One optimizer step; raises on a non-finite loss before touching the weights."""
        terms = self.losses(batch, t_out, t_feats)
        record = {"step": step} | {k: float(v.detach()) for k, v in terms.items()}
        if not all(math.isfinite(v) for v in record.values()):
            raise BlocksearchError(
                f"non-finite loss at step {step} (" + ", ".join(f"{k}={v:.4g}" for k, v in record.items()
                                                                 if k != "step")
                + "); lower --lr or use --precision fp32; no student was written")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.config.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        return record

    def close(self) -> None:
        self.hooks.remove()
        if self._teacher_hooks is not None:
            self._teacher_hooks.remove()
        self.unet.eval().requires_grad_(False)


def batch_stream(teacher: Teacher, config: DistillConfig) -> BatchStream:
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return BatchStream(teacher.pipeline, config.data, config.batch_size, config.seed, cache_dir, config.resolution,
                       family=teacher.family)


def prepare_teacher_cache(teacher: Teacher, config: DistillConfig, device="cpu", stream: BatchStream | None = None,
                          steps: int | None = None) -> tuple[TeacherCache | None, str]:
    """The teacher cache of ``config`` (built once, e.g. in the search driver before its trials), or None
    where the teacher runs live instead; and why. ``auto`` caches where the file fits under the cap (the
    smaller of ``cache_gb`` and what the disk has), else runs the teacher live (on a GPU a teacher forward is
    cheap); ``disk`` refuses a file over the cap; ``off`` always runs live. Decided before any forward.
    ``steps`` sizes the file (default ``config.steps``): batch i's entry is the same in a file of any size."""
    steps = config.steps if steps is None else steps
    if config.teacher_cache == "off" or not steps:
        return None, "teacher cache off: the teacher runs live in each trial"
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    stream = stream or batch_stream(teacher, config)
    first = stream[0]
    parts = cache_bytes_parts(teacher.denoiser.config, config.batch_size, first.noisy.shape[-1], 2,
                              text_tokens=first.cond["encoder_hidden_states"].shape[1], family=teacher.family,
                              model_class=type(teacher.denoiser))  # the file stores fp16 (open_cache's dtype)
    per_step = sum(parts.values())
    cap, what = cache_cap(cache_dir / "teacher", config.cache_gb)
    mode, why = cache_plan(per_step, steps, cap, what, parts["cond"])
    if mode == "live" and config.teacher_cache == "disk":
        figures = cache_figures(per_step, steps, cap, what, parts["cond"])
        raise BlocksearchError(f"--teacher-cache disk: {figures} is over "
                               f"the cap; allowed: --teacher-cache auto (a live teacher), fewer --steps or a "
                               f"smaller --batch-size, or a larger BLOCKSEARCH_CACHE_GB")
    if mode == "live":
        return None, why
    with work_slot():  # building it is heavy work: latency measurements of other processes wait for its batches
        cache = open_cache(teacher.name, teacher.denoiser, stream, steps, cache_dir, cap / 2**30, device=device,
                           family=teacher.family)
    return cache, why


def distill(teacher: Teacher, student: Student, config: DistillConfig, device="cpu",
            on_step: Callable[[int, dict], None] | None = None, progress: bool = True, *,
            resume_from: str | Path | None = None, save_to: str | Path | None = None,
            cache_steps: int | None = None) -> DistillResult:
    """Train ``student.denoiser`` in place by KD up to step ``config.steps``; ``on_step(step, record)`` after each
    step (may raise to stop). ``resume_from``: a checkpoint of an earlier run of these settings (weights,
    optimizer, step reached), continued from its step; ``save_to``: write the checkpoint of this run's end.
    ``cache_steps``: size the teacher cache for a longer run (default ``config.steps``), so that the runs of
    a ladder of budgets share one cache file. The lr of step i of the segment [first, steps) is
    ``lr_at(i - first, lr, warmup, steps - first, schedule)``: a warm restart per segment (SGDR). With ``ema``,
    the student ends with the EMA weights (the checkpoint keeps the raw ones, and the EMA beside them)."""
    if cache_steps is not None and cache_steps < config.steps:
        raise BlocksearchError(f"cache_steps {cache_steps} < steps {config.steps}: the cache must cover every step")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    stream = batch_stream(teacher, config)
    # the EMA copy before the KD hooks (a clean copy), on the device the student trains on
    ema = Ema(student.denoiser.to(device), config.ema, warmup=True) if config.ema else None
    recipe = Distiller(teacher, student, config, device)
    recipe.ema = ema
    first = 0
    if resume_from is not None:
        try:
            first = load_checkpoint(resume_from, recipe)
        except CorruptFile as err:  # never resumed from: the student is still surgery's (nothing was loaded)
            log.warning("blocksearch: %s; it is not resumed from: training from surgery (step 0) instead", err)
    if first > config.steps:
        recipe.close()
        raise BlocksearchError(f"checkpoint {resume_from} is at step {first}, past the run's {config.steps} steps")
    t_cache = time.perf_counter()
    cache, cache_why = prepare_teacher_cache(teacher, config, device, stream,
                                             cache_steps if first < config.steps else 0)
    teacher_s = time.perf_counter() - t_cache
    losses = []
    try:
        bar = tqdm(range(first, config.steps), desc=f"distill {student.genome.id}", unit="step",
                   disable=not progress or quiet())
        for i in bar:
            if cache is not None:
                batch, t_out, t_feats = cache[i]
                batch, t_out = batch.to(device), t_out.to(device)
                t_feats = {k: v.to(device) for k, v in t_feats.items()}
            else:
                t0 = time.perf_counter()
                batch = stream[i].to(device)
                t_out, t_feats = recipe.teacher_targets(batch)
                teacher_s += time.perf_counter() - t0
            lr = lr_at(i - first, config.lr, config.warmup, config.steps - first, config.schedule)
            for group in recipe.opt.param_groups:
                group["lr"] = lr
            record = recipe.step(i + 1, batch, t_out, t_feats)
            if ema is not None:
                ema.update(recipe.unet)
            yield_to_measurement()  # a latency measurement of another process waits for one step at most
            losses.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if on_step is not None:
                on_step(i + 1, record)
        if save_to is not None:
            save_checkpoint(save_to, recipe, config.steps)
    finally:
        recipe.close()
    if ema is not None:  # the caller scores the EMA student
        recipe.unet.load_state_dict(ema.model.state_dict())
    return DistillResult(losses, time.perf_counter() - start, teacher_s,
                         str(cache.path) if cache is not None else None,
                         {"teacher_cache": cache_why, "start_step": first})


# -- checkpoints: continue a KD run where it stopped ---------------------------------------------------
def save_checkpoint(folder: str | Path, recipe: Distiller, step: int) -> Path:
    """``folder``/unet.safetensors (student weights), optimizer.safetensors (AdamW's state tensors, keys
    ``state.<param index>.<slot>``), ema.safetensors (the EMA weights, with ``ema``) and checkpoint.json (the
    step, the optimizer's scalars and hyperparameters, and what the run must match to continue), each written
    to a temp file and renamed; the JSON last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, scalars = _flatten_optimizer(recipe.opt.state_dict())
    weights = cpu_state(recipe.unet)
    info = {"format": CHECKPOINT_FORMAT, "step": step, "genome": recipe.student.genome.id,
            "teacher": fingerprint(recipe.teacher.denoiser),
            "distill": trajectory(recipe.config),
            "optimizer": scalars, "grad_scaler": recipe.scaler.state_dict()}
    if recipe.ema is not None:
        info["ema_updates"] = recipe.ema.updates  # the EMA's warm-up goes on where it stopped
    files = {WEIGHTS_FILE: weights, OPTIMIZER_FILE: tensors}
    if recipe.ema is not None:
        files[EMA_FILE] = cpu_state(recipe.ema.model)
    info["files"] = write_tensor_files(folder, files)
    _write_atomic(folder / CHECKPOINT_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=1) + "\n"))
    return folder


def write_tensor_files(folder: Path, files: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict]:
    """Write each safetensors file of a checkpoint atomically; their records (bytes, SHA-256) for its JSON."""
    records = {}
    for name, tensors in files.items():
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        _write_atomic(folder / name, lambda tmp, tensors=tensors: save_file(tensors, tmp), nbytes)
        records[name] = file_record(folder / name)
    return records


def checkpoint_problem(folder: Path, info: dict) -> str | None:
    """What is wrong with a checkpoint's files, or None: each file its JSON records (or, in a checkpoint
    written before the records, each it must have) has the size, header and SHA-256 it was written with. A bad
    file and the JSON are moved aside (``.corrupt``): the folder is no checkpoint any more; the caller says so."""
    records = info.get("files") or {name: None for name in (WEIGHTS_FILE, OPTIMIZER_FILE)}
    for name, record in records.items():
        problem = file_problem(folder / name, "safetensors", record)
        if problem is not None:
            for bad in (folder / name, folder / CHECKPOINT_FILE):
                if bad.exists():
                    set_aside(bad, problem, report=False)
            return f"{name}: {problem}; moved aside"
    return None


def load_checkpoint(folder: str | Path, recipe: Distiller) -> int:
    """Load a ``save_checkpoint`` folder into ``recipe`` (weights, optimizer, grad scaler, EMA); the step
    reached. Refused when it was written for another student, teacher or training settings."""
    folder = Path(folder)
    info = checkpoint_info(folder)
    if info is None:
        raise BlocksearchError(f"no KD checkpoint in {folder} (expected {CHECKPOINT_FILE} there)")
    if (problem := checkpoint_problem(folder, info)) is not None:  # checked before anything is loaded
        raise CorruptFile(f"KD checkpoint {folder} failed its check: {problem}")
    wanted = {"genome": recipe.student.genome.id, "teacher": fingerprint(recipe.teacher.denoiser),
              "distill": trajectory(recipe.config)}
    diff = [k for k in wanted if json.loads(json.dumps(wanted[k])) != info.get(k)]
    if info.get("format") != CHECKPOINT_FORMAT or diff:
        what = diff[0] if diff else f"format {info.get('format')}"
        raise BlocksearchError(f"checkpoint {folder} does not continue this run: its {what} differs "
                               f"({info.get(what, '?') if diff else CHECKPOINT_FORMAT})")
    recipe.unet.load_state_dict(load_file(folder / WEIGHTS_FILE))
    recipe.opt.load_state_dict(_unflatten_optimizer(load_file(folder / OPTIMIZER_FILE), info["optimizer"]))
    recipe.scaler.load_state_dict(info["grad_scaler"])
    if recipe.ema is not None:
        if not (folder / EMA_FILE).is_file():
            raise BlocksearchError(f"checkpoint {folder} has no {EMA_FILE}: it was written without ema")
        recipe.ema.model.load_state_dict(load_file(folder / EMA_FILE))
        recipe.ema.updates = int(info["ema_updates"])
    return int(info["step"])


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state as contiguous CPU tensors, as safetensors saves them."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def checkpoint_info(folder: str | Path) -> dict | None:
    """checkpoint.json of a checkpoint folder (step, genome, settings), or None where there is none (or it
    does not parse: then it is set aside, in one line, and the folder is no checkpoint)."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        if isinstance(info, dict):
            return info
        problem = "it is not a JSON object"
    except (ValueError, UnicodeDecodeError) as err:
        problem = f"it is not JSON ({str(err).splitlines()[0]})"
    set_aside(path, problem, "never resumed from")
    return None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as flat tensors (safetensors) and JSON-ready scalars and param groups."""
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{slot}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{slot}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, slot = key.split(".", 2)
        state.setdefault(int(index), {})[slot] = value
    for key, value in rest["scalars"].items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _write_atomic(path: Path, write: Callable[[Path], None], nbytes: int | None = None) -> None:
    atomic_write(path, write, nbytes)  # blocksearch/cache.py: a temp file renamed; a full disk is one line


def resolve_design(teacher_unet, design: str, space: str = "unet_blocks"):
    """(arch, design name or None) for a named design of ``space`` or an architecture id, on the teacher's
    denoiser ``teacher_unet`` (a U-Net, or a transformer for a ``family: dit`` space)."""
    loaded = load_space(space)
    family = get_family(loaded.family)
    bound = loaded.bind(family.topology(teacher_unet.config))
    if design in bound.space.designs:
        return bound.design(design), design
    unknown = (f"unknown design {design!r}; allowed: {sorted(bound.space.designs)} or a genome id such as "
               + family.id_example)
    try:
        genome = family.arch_from_id(design)
    except BlocksearchError:
        if family.id_prefix and design.startswith(family.id_prefix):
            raise  # an id of the family's own form that does not parse: the id parser's message says why
        raise BlocksearchError(unknown) from None
    bound.check(genome)
    return genome, None


def write_student(out: Path, student: Student, result: DistillResult, meta: dict, subfolder: str, *,
                  teacher_denoiser: torch.nn.Module) -> Path:
    """``out/<subfolder>`` (the family's: unet or transformer; diffusers, safetensors), ``out/train_log.jsonl``,
    ``out/distill.json`` and ``out/block_map.json`` (adapt/blockmap.py: the cut from ``teacher_denoiser``)."""
    out.mkdir(parents=True, exist_ok=True)
    nbytes = sum(t.numel() * t.element_size() for t in student.denoiser.state_dict().values())
    def save(tmp: Path) -> None:  # the weights and their records (cache.record_folder), as one folder
        student.denoiser.save_pretrained(tmp, safe_serialization=True)
        record_folder(tmp)

    atomic_dir(out / subfolder, save, nbytes)
    write_block_map(out, block_map(family_of_arch(student.genome), teacher_denoiser, student.genome,
                                   meta["teacher"], meta.get("space")))
    log_text = "".join(json.dumps(r) + "\n" for r in result.losses)
    _write_atomic(out / "train_log.jsonl", lambda tmp: tmp.write_text(log_text))
    info = meta | {"genome": student.genome.id, "kd_pairs": [list(p) for p in student.kd_pairs],
                   "fresh_tensors": list(student.fresh), "wall_s": round(result.wall_s, 2),
                   "teacher_s": round(result.teacher_s, 2), "teacher_cache": result.cache_path,
                   "final_loss": result.losses[-1] if result.losses else None}
    info["files"] = {f"{subfolder}/{p.name}": file_record(p) for p in sorted((out / subfolder).iterdir())
                     if not p.name.endswith(CHECKSUM)}
    _write_atomic(out / "distill.json", lambda tmp: tmp.write_text(json.dumps(info, indent=2) + "\n"))
    return out
