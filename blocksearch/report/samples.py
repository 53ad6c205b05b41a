"""Sample grids: the teacher, each front student and each reference design on the same few prompts and seeds,
one row per model, one column per prompt, as BK-SDM's paper and model cards show students beside their teacher.

The prompts and seeds are ``SAMPLES`` pairs spread over the study's own evaluation set (recipe/evaluate.py's
``scorer_for(...).prompt_set()``: the toy world's held-out prompts, or a real teacher's captions), generated at
the evaluation's settings (sampler steps, guidance, resolution) with ``evaluate.generate_images``, whose image i
depends only on (prompt i, seed i): so a row is images the trial's evaluation scored. Each model's
row is kept as PNGs beside its denoiser (``<students>/<genome>/samples/``; the teacher's in the cache folder)
with the settings they were made at, and generated once, the first time a report asks for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from blocksearch.cache import CorruptFile, default_cache_dir
from blocksearch.recipe.evaluate import EvalConfig, ToyScorer, generate_images, real_prompt_set
from blocksearch.recipe.student_files import check_student
from blocksearch.report.compute import ParetoReport, TrialPoint
from blocksearch.teachers import load_teacher, resolve_teacher

log = logging.getLogger(__name__)

SAMPLES = 6  # prompts per row: a glance, at 6 / 128 of one evaluation's generation
SAMPLES_DIR = "samples"  # beside a student's denoiser folder: <students>/<genome>/samples/
SAMPLES_FILE = "samples.json"  # the prompts, seeds and settings the kept PNGs were made at


@dataclass(frozen=True)
class SampleSet:
    """The prompts and seeds of every row, and the evaluation settings they are generated at."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    resolution: int | None

    @property
    def key(self) -> str:
        """What kept images must have been made at to be reused."""
        blob = json.dumps([self.prompts, self.seeds, self.steps, self.guidance, self.resolution])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Row:
    """One model's images: the teacher (``trial`` None) or a trial's student."""

    label: str
    trial: int | None
    images: torch.Tensor  # uint8 (SAMPLES, 3, H, W)


@dataclass(frozen=True)
class SampleGrid:
    samples: SampleSet
    rows: tuple[Row, ...]
    missing: tuple[tuple[str, str], ...]  # (model, why it has no row)


def sample_set(attrs: dict, toy: bool) -> SampleSet | None:
    """``SAMPLES`` (prompt, seed) pairs spread evenly over the study's evaluation set; None where the study generated
    no images (a first stage ranked by the held-out probe)."""
    config = EvalConfig.from_dict({k: v for k, v in (attrs.get("eval") or {}).items()
                                   if k in EvalConfig.__dataclass_fields__})
    if not config.images:
        return None
    prompts, seeds = ToyScorer(None, config).prompt_set() if toy else real_prompt_set(config)
    picks = sorted({i * len(prompts) // SAMPLES for i in range(SAMPLES)})  # spread over the set: its variety
    return SampleSet(tuple(prompts[i] for i in picks), tuple(int(seeds[i]) for i in picks), config.steps,
                     config.guidance, config.resolution)


def generated(t: TrialPoint) -> bool:
    """The trial's evaluation generated images here (FID measured, not taken from bench fidelity's study)."""
    return t.metrics.get("fid") is not None and not t.from_study


def models(report: ParetoReport) -> list[TrialPoint]:
    """The front students, then the reference designs not on the front: the grid's rows after the teacher's."""
    out = [report.trial(n) for n in report.front]
    out += [report.trial(n) for n in report.reference_trials.values() if n not in report.front]
    return out


def label(t: TrialPoint) -> str:
    return t.design or f"trial {t.number}"


def sample_grid(report: ParetoReport, trials: list[TrialPoint] | None = None,
                device: str | None = None) -> SampleGrid | None:
    """The teacher's row and the row of every model of ``trials`` (default ``models``: the front and the
    reference designs) that generated images and whose student is on disk, kept images reused; None where the
    study generated no images or no student can be sampled."""
    spec = report.attrs.get("teacher")
    if not spec or (report.attrs.get("eval") or {}).get("images") is False:
        return None
    todo, missing = [], []
    for t in models(report) if trials is None else trials:
        if not generated(t):
            missing.append((label(t), "no images generated here" + (" (scores taken from bench fidelity's study)"
                                                                     if t.from_study else "")))
        elif not t.student_dir or not Path(t.student_dir).is_dir():
            missing.append((label(t), "its student folder is gone (runs/ moved or cleaned?)"))
        elif (bad := _unsound(t)) is not None:
            missing.append((label(t), bad))
        else:
            todo.append(t)
    if not todo:
        return None
    samples = sample_set(report.attrs, resolve_teacher(spec).is_toy)
    device = device or _device(report.attrs.get("device"))
    config = EvalConfig.from_dict({k: v for k, v in report.attrs["eval"].items() if k in EvalConfig.__dataclass_fields__})
    teacher = _Lazy(spec, device)
    rows = [Row("teacher", None, kept_or_generate(teacher_folder(teacher, config, samples), samples,
                                                  lambda: _generate(teacher(), teacher().denoiser, samples, config,
                                                                    device)))]
    for t in todo:
        folder = Path(t.student_dir).parent / SAMPLES_DIR
        rows.append(Row(label(t), t.number, kept_or_generate(folder, samples, lambda t=t: _generate(
            teacher(), teacher().family.load_student_denoiser(t.student_dir, teacher().denoiser), samples, config,
            device))))
    return SampleGrid(samples, tuple(rows), tuple(missing))


def _unsound(t: TrialPoint) -> str | None:
    """Why trial ``t``'s student may not be sampled -- a weight file that fails its recorded hash, now set aside
    (recipe/student_files.py; said in one line on stderr) -- or None."""
    try:
        check_student(t.student_dir, then="no samples drawn from it; train its design again to see them")
    except CorruptFile as err:
        log.warning("blocksearch: %s", err)
        return f"its student failed its check ({str(err).split(' is corrupt: ')[1].split(';')[0]})"
    return None


class _Lazy:
    """The teacher, loaded the first time a row must be generated (kept rows need none)."""

    def __init__(self, spec: str, device: str):
        self.spec, self.device, self.teacher = spec, device, None

    def __call__(self):
        if self.teacher is None:
            self.teacher = load_teacher(self.spec, self.device)
        return self.teacher


def teacher_folder(teacher: _Lazy, config: EvalConfig, samples: SampleSet) -> Path:
    """Where the teacher's row is kept: the cache folder, by teacher spec and sample set."""
    name = hashlib.sha256(json.dumps([teacher.spec, samples.key]).encode()).hexdigest()[:16]
    return (Path(config.cache_dir) if config.cache_dir else default_cache_dir()) / SAMPLES_DIR / f"teacher-{name}"


def _device(device: str | None) -> str:
    """The study's device where this machine has it, else the CPU."""
    if device and device.startswith("cuda") and torch.cuda.is_available():
        return device
    return "cpu"


def _generate(teacher, denoiser, samples: SampleSet, config: EvalConfig, device: str) -> torch.Tensor:
    return generate_images(teacher, denoiser.eval(), list(samples.prompts), list(samples.seeds), config, device,
                           progress=False)


def kept_or_generate(folder: Path, samples: SampleSet, make) -> torch.Tensor:
    """The images kept in ``folder`` for ``samples``, else ``make()``'s, kept there."""
    kept = read_kept(folder, samples)
    if kept is not None:
        return kept
    images = make()
    keep(folder, samples, images)
    return images


def read_kept(folder: Path, samples: SampleSet) -> torch.Tensor | None:
    meta = folder / SAMPLES_FILE
    if not meta.is_file() or json.loads(meta.read_text()).get("key") != samples.key:
        return None
    files = [folder / f"{i:02d}.png" for i in range(len(samples.prompts))]
    if not all(f.is_file() for f in files):
        return None
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])


def keep(folder: Path, samples: SampleSet, images: torch.Tensor) -> None:
    """PNGs 00.png, 01.png, ... and ``samples.json`` (prompts, seeds, settings, the key that checks them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    (folder / SAMPLES_FILE).write_text(json.dumps({"key": samples.key, "prompts": samples.prompts,
                                                   "seeds": samples.seeds, "steps": samples.steps,
                                                   "guidance": samples.guidance, "resolution": samples.resolution},
                                                  indent=1))


# -- drawing ------------------------------------------------------------------------------------------
def grid_figure(samples: SampleSet, rows: list[Row] | tuple[Row, ...], cell: float = 1.1) -> Figure:
    """One row per model (its label at the left), one column per prompt (the prompt and seed on top)."""
    n, m = len(rows), len(samples.prompts)
    left, top, gap = 0.3, 0.6, 0.04 * cell  # inches: the row labels, the prompts, between images
    width, height = left + m * (cell + gap), top + n * (cell + gap)
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(n, m, squeeze=False, gridspec_kw=dict(wspace=0.04, hspace=0.04))
    for r, row in enumerate(rows):
        for c in range(m):
            ax = axes[r][c]
            ax.imshow(row.images[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("\n".join(textwrap.wrap(samples.prompts[c], 22)[:3]) + f"\nseed {samples.seeds[c]}",
                             fontsize=5)
            if c == 0:
                ax.set_ylabel(row.label, fontsize=7)
    fig.subplots_adjust(left=left / width, right=1 - gap / width, bottom=gap / height, top=1 - top / height)
    return fig


def save_grid(samples: SampleSet, rows, path: Path, dpi: int = 110) -> Path:
    grid_figure(samples, rows).savefig(path, dpi=dpi)
    return path
