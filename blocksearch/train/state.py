"""The state of a long KD run (``blocksearch train``): its settings, the split of a global batch into
per-worker micro-batches, and checkpoints in safetensors + JSON (never pickle). The learning-rate schedule and
the EMA of the weights are schedules.py's (shared with the search's short runs).

- Batch split: the global batch of step i is ``BatchStream[i]`` (the same stream as ``blocksearch distill``);
  worker r's micro-step a takes chunk ``a * workers + r`` of it, so N workers x micro x accumulation steps is
  the global batch, the same samples whatever N is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from blocksearch.recipe.data import Batch, fingerprint
from blocksearch.recipe.distill import (CHECKPOINT_FILE, OPTIMIZER_FILE, TRAJECTORY, WEIGHTS_FILE, DistillConfig,
                                        checkpoint_info, checkpoint_problem, cpu_state, write_tensor_files,
                                        _flatten_optimizer, _unflatten_optimizer, _write_atomic)
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.schedules import EMA_FILE, SCHEDULES, Ema
from blocksearch.settings import Settings
from blocksearch.train.tracking import TRACKERS

log = logging.getLogger(__name__)
TRAIN_FORMAT = 1
# The train settings a resumed run must share with the run it continues (with distill.TRAJECTORY): they shape
# the trajectory. Workers and micro-batch size may change: the global batch's samples stay the same.
TRAIN_TRAJECTORY = ("steps", "warmup", "schedule", "ema")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """The loop and its parallelism; the KD recipe itself (loss weights, lr, global batch, precision, data)
    is a DistillConfig."""

    steps: int = 1920
    workers: int = 1  # Ray Train workers; 0: in this process, no Ray
    micro_batch_size: int | None = None  # per worker and accumulation step (default: batch / workers)
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0
    warmup: int = 0
    schedule: str = "constant"
    ema: float = 0.0  # EMA decay of the weights; 0: off
    checkpoint_every: int | None = None  # default: steps // 20
    eval_every: int | None = None  # default: steps // 8; 0: off
    keep_checkpoints: int = 2
    report_to: str = "none"

    def __post_init__(self):
        ints = {"steps": 1, "workers": 0, "cpus_per_worker": 1, "warmup": 0, "keep_checkpoints": 1}
        for name, low in ints.items():
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low:
                raise BlocksearchError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: allowed: an integer "
                                       f">= {low}")
        if self.warmup > self.steps:
            raise BlocksearchError(f"--warmup {self.warmup}: allowed: at most --steps ({self.steps})")
        if self.schedule not in SCHEDULES:
            raise BlocksearchError(f"--schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.ema < 1.0:
            raise BlocksearchError(f"--ema {self.ema}: allowed: 0 (off) or a decay in (0, 1), e.g. 0.999")
        if self.gpus_per_worker < 0 or (self.gpus_per_worker and not self.workers):
            raise BlocksearchError("--gpus-per-worker must be >= 0, and > 0 only with --workers >= 1")
        for name in ("checkpoint_every", "eval_every", "micro_batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (name != "eval_every")):
                raise BlocksearchError(f"--{name.replace('_', '-')} {value!r}: allowed: an integer >= "
                                       f"{int(name != 'eval_every')}")
        if self.report_to not in TRACKERS:
            raise BlocksearchError(f"--report-to {self.report_to!r}; allowed: {', '.join(TRACKERS)}")

    @property
    def every_checkpoint(self) -> int:
        return self.checkpoint_every or max(1, self.steps // 20)

    @property
    def every_eval(self) -> int:
        return max(1, self.steps // 8) if self.eval_every is None else self.eval_every


def split(batch_size: int, workers: int, micro: int | None) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) with workers x micro x accumulation = the global batch."""
    workers = max(1, workers)
    micro = micro or batch_size // workers
    if micro < 1 or batch_size % (workers * micro):
        raise BlocksearchError(f"--batch-size {batch_size} is not a multiple of {workers} worker(s) x "
                               f"--micro-batch-size {micro}; allowed: a global batch that workers x micro-batch "
                               f"divides (accumulation steps = batch / (workers x micro-batch))")
    return micro, batch_size // (workers * micro)


def micro_batch(batch: Batch, rank: int, world: int, step: int, micro: int) -> Batch:
    """Worker ``rank``'s rows for accumulation step ``step``: chunk ``step * world + rank`` of ``micro`` rows."""
    start = (step * world + rank) * micro
    return batch.rows(start, start + micro)


# -- checkpoints -----------------------------------------------------------------------------------------
def settings_of(distill: DistillConfig, train) -> dict:
    """What a checkpoint must share with the run that continues it."""
    return {"distill": {k: getattr(distill, k) for k in TRAJECTORY},
            "train": {k: getattr(train, k) for k in TRAIN_TRAJECTORY}}


def save_state(folder: Path, unet, opt, scaler, ema: Ema | None, step: int, genome: str, teacher_unet,
               settings: dict) -> Path:
    """``folder``/unet.safetensors (the student), optimizer.safetensors (AdamW's tensors), ema.safetensors (the
    EMA weights, when on) and checkpoint.json (the step = the next batch of the stream, the optimizer's scalars,
    the grad scaler, and the settings a resume must match), each written to a temp file and renamed, JSON last."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors, scalars = _flatten_optimizer(opt.state_dict())
    files = {WEIGHTS_FILE: cpu_state(unet), OPTIMIZER_FILE: tensors}
    if ema is not None:
        files[EMA_FILE] = cpu_state(ema.model)
    records = write_tensor_files(folder, files)
    info = {"format": TRAIN_FORMAT, "kind": "train", "step": step, "data_index": step, "genome": genome,
            "teacher": fingerprint(teacher_unet), **settings, "optimizer": scalars,
            "grad_scaler": scaler.state_dict(), "files": records}
    _write_atomic(folder / CHECKPOINT_FILE, lambda tmp: tmp.write_text(json.dumps(info, indent=1) + "\n"))
    return folder


def load_state(folder: Path, unet, opt, scaler, ema: Ema | None, genome: str, teacher_unet, settings: dict) -> int:
    """Load a ``save_state`` folder into the run; the step reached. Refused when it was written for another
    student, teacher or trajectory (naming the first setting that differs). A checkpoint that fails its check
    (sizes, headers, SHA-256) is set aside, never loaded: the run goes back to the newest good ``step-*``
    checkpoint beside it (one line says so), or to step 0 where there is none."""
    folder = Path(folder)
    if not (folder / CHECKPOINT_FILE).is_file():
        raise BlocksearchError(f"no train checkpoint in {folder} (expected {CHECKPOINT_FILE} there)")
    folder, info = good_checkpoint(folder)
    if info is None:
        return 0
    wanted = {"genome": genome, "teacher": fingerprint(teacher_unet), **json.loads(json.dumps(settings))}
    for key, value in wanted.items():
        if isinstance(value, dict):
            diff = [k for k in value if value[k] != info.get(key, {}).get(k)]
            if diff:
                raise BlocksearchError(f"checkpoint {folder} does not continue this run: its {diff[0]} is "
                                       f"{info.get(key, {}).get(diff[0])!r}, this run's {value[diff[0]]!r}; "
                                       f"rerun with its settings or write to another -o folder")
        elif value != info.get(key):
            raise BlocksearchError(f"checkpoint {folder} does not continue this run: its {key} differs "
                                   f"({info.get(key)!r}); write to another -o folder")
    unet.load_state_dict(load_file(folder / WEIGHTS_FILE))
    opt.load_state_dict(_unflatten_optimizer(load_file(folder / OPTIMIZER_FILE), info["optimizer"]))
    scaler.load_state_dict(info["grad_scaler"])
    if ema is not None:
        if not (folder / EMA_FILE).is_file():
            raise BlocksearchError(f"checkpoint {folder} has no {EMA_FILE}: it was written without --ema")
        ema.model.load_state_dict(load_file(folder / EMA_FILE))
    return int(info["step"])


def good_checkpoint(folder: Path) -> tuple[Path, dict | None]:
    """``folder`` and its checkpoint.json where it passes its check; else the newest earlier ``step-*``
    checkpoint beside it that does (Ray Train's and ``--workers 0``'s layout), or (folder, None): none. A bad
    one is moved aside, and one line names it and where the run goes back to."""
    earlier = sorted((p for p in folder.parent.glob("step-*") if p.name < folder.name),
                     reverse=True) if folder.name.startswith("step-") else []
    bad = None
    for here in [folder, *earlier]:
        info = checkpoint_info(here)
        problem = "its checkpoint.json is gone" if info is None else checkpoint_problem(here, info)
        if problem is None:
            if bad is not None:
                log.warning("blocksearch: train checkpoint %s failed its check (%s); never resumed from: going "
                            "back to %s (step %s)", *bad, here, info.get("step"))
            return here, info
        bad = bad or (here, problem)
    log.warning("blocksearch: train checkpoint %s failed its check (%s); never resumed from: no good checkpoint "
                "before it, training from surgery (step 0)", *bad)
    return folder, None
