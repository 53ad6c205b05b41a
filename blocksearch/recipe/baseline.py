"""The teacher's own scores at a study's evaluation settings, measured once before its trials.

They are the reference of the text-aware feasibility rule (a student's alignment relative to the
teacher's: a student that ignores the prompt is infeasible, never on the front) and the teacher row of
the report (U-Net step and end-to-end latency, memory). Cached on disk by (teacher weights, evaluation
settings, device, threads), so a study -- and a resumed or second study -- pays for it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from blocksearch.cache import default_cache_dir, file_lock, lock_path, work_slot
from blocksearch.recipe.data import fingerprint
from blocksearch.recipe.evaluate import EvalConfig, evaluate
from blocksearch.teachers import Teacher


def reference_key(teacher: Teacher, config: EvalConfig, device) -> str:
    settings = {k: v for k, v in config.to_dict().items() if k != "cache_dir"}
    blob = json.dumps([fingerprint(teacher.denoiser), settings, str(device), torch.get_num_threads()], sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def teacher_reference(teacher: Teacher, config: EvalConfig, device="cpu", progress: bool = True) -> dict:
    """``Metrics.to_dict()`` of the teacher itself at ``config`` (cached)."""
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    path = cache_dir / "reference" / f"teacher-{reference_key(teacher, config, device)}.json"
    with file_lock(lock_path("teacher-reference", cache_dir)):  # two drivers: one evaluation
        if path.exists():
            return json.loads(path.read_text())
        with work_slot():
            metrics = evaluate(teacher, teacher.denoiser, config, device=device, progress=progress).to_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(metrics, default=str))
        os.replace(tmp, path)
        return metrics


def alignment_bound(teacher_alignment: float | None, min_alignment: float) -> float | None:
    """The smallest feasible student alignment: ``min_alignment`` x the teacher's (None: no rule)."""
    if teacher_alignment is None or min_alignment <= 0:
        return None
    return min_alignment * teacher_alignment
