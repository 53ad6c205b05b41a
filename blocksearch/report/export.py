"""Export chosen students as plain diffusers pipeline folders with a model card.

Each folder holds the trial's student denoiser (copied byte for byte from its ``student_dir``) in the
family's subfolder (``unet/``, or ``transformer/``), the teacher's VAE, text encoder, tokenizer and scheduler,
``model_index.json``, a ``README.md`` model card (``model_card.py``) and ``block_map.json`` (adapt/blockmap.py:
which teacher module each student module came from) — the way BK-SDM ships its students
(arXiv 2305.15798): the teacher's stock pipeline class (StableDiffusionPipeline, PixArtSigmaPipeline, ...)
with a smaller denoiser.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm

from blocksearch.adapt.blockmap import block_map, write_block_map
from blocksearch.console import quiet
from blocksearch.families.cost import count_macs, count_params
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import family_of
from blocksearch.recipe.student_files import check_student
from blocksearch.report.model_card import model_card
from blocksearch.report.compute import ParetoReport, TrialPoint, load_report
from blocksearch.teachers import load_teacher, with_denoiser

PIPELINE_FILES = ("unet", "transformer", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json",
                  "README.md")
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


def choose(report: ParetoReport, trial: int | None = None, design: str | None = None,
           front: bool = False) -> list[TrialPoint]:
    """The completed trials to export: one by number or design name, or the whole Pareto front."""
    done = [t for t in report.trials if t.state == "COMPLETE"]
    if front:
        if not report.front:
            raise BlocksearchError(f"study {report.study} has no completed trials, so no Pareto front to export")
        return [report.trial(n) for n in report.front]
    if design is not None:
        named = sorted({t.design for t in done if t.design})
        match = [t for t in done if t.design == design]
        if not match:
            raise BlocksearchError(f"no completed trial of design {design!r} in study {report.study}; "
                                   f"designs with completed trials: {named or 'none'}")
        return match[:1]
    numbers = [t.number for t in done]
    if trial not in {t.number for t in report.trials}:
        raise BlocksearchError(f"unknown trial {trial} in study {report.study}; completed trials: "
                               f"{numbers or 'none'}")
    t = report.trial(trial)
    if t.state != "COMPLETE":
        raise BlocksearchError(f"trial {trial} of study {report.study} is {t.state}, not COMPLETE (a pruned or "
                               f"failed student is not finished); completed trials: {numbers or 'none'}")
    return [t]


def teacher_pipeline(spec: str):
    """The teacher's pipeline (its VAE, text encoder, tokenizer and scheduler are reused)."""
    return load_teacher(spec).pipeline


def export_study(study: str, storage: str | None, out: str | Path, trial: int | None = None,
                 design: str | None = None, front: bool = False, force: bool = False) -> list[Path]:
    """Export the chosen students of ``study`` under ``out`` (``out`` itself for one, a subfolder each for
    the front); a non-empty ``out`` is refused unless ``force``."""
    report = load_report(study, storage)
    chosen = choose(report, trial, design, front)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BlocksearchError(f"output {out} is a file; pass a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise BlocksearchError(f"output folder {out} is not empty; choose another or pass --force to overwrite "
                               f"its pipeline files")
    for t in chosen:
        _student_weights(t)  # fail before writing anything
    teacher = teacher_pipeline(report.attrs.get("teacher", "toy"))
    scale = _teacher_cost(teacher)
    folders = []
    for t in tqdm(chosen, desc="export", unit="student", disable=len(chosen) < 2 or quiet()):
        folder = out / f"trial{t.number}_{t.genome}" if front else out
        command = f"blocksearch export --study {study}" + (f" --storage {storage}" if storage else "") + (
            " --front" if front else f" --design {design}" if design else f" --trial {t.number}") + f" -o {out}"
        folders.append(export_trial(report, t, teacher, folder, command, scale))
    return folders


def export_trial(report: ParetoReport, t: TrialPoint, teacher, folder: Path, command: str = "",
                 teacher_cost: dict | None = None) -> Path:
    """Write one pipeline folder: the teacher pipeline's components around the student denoiser (``teacher``: the
    teacher's pipeline), plus a model card and the block map."""
    weights = _student_weights(t)
    family = family_of(teacher)
    sub = family.subfolder
    student = type(getattr(teacher, sub)).from_pretrained(weights.parent, use_safetensors=True)  # checks it loads
    folder.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    with_denoiser(teacher, student, family).save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / sub)  # the search's own files, byte for byte (dtype and all)
    shutil.copytree(weights.parent, folder / sub)
    write_block_map(folder, block_map(family, getattr(teacher, sub), family.arch_from_id(t.genome),
                                      report.attrs.get("teacher", "toy"), report.attrs.get("space")))
    model_card(report, t, folder, command, teacher_cost, family=family,
               call_kwargs=family.call_kwargs(teacher)).save(folder / "README.md")
    return folder


def _teacher_cost(pipeline) -> dict:
    """The teacher denoiser's params and MACs, to state the student's as fractions of them (counted as the
    trials count them: the family's text tokens)."""
    family = family_of(pipeline)
    denoiser = getattr(pipeline, family.subfolder)
    return {"params": count_params(denoiser), "macs": count_macs(denoiser, text_len=family.text_tokens(pipeline),
                                                                 family=family)}


def _student_weights(t: TrialPoint) -> Path:
    if t.from_study:
        raise BlocksearchError(
            f"trial {t.number} ({t.design}) took its scores from bench fidelity's study after "
            f"{t.from_study.get('steps')} KD steps and trained no student here; allowed: a searched trial, or "
            f"train the design itself: blocksearch distill --design {t.design} --steps {t.from_study.get('steps')}")
    if not t.student_dir:
        raise BlocksearchError(f"trial {t.number} records no student_dir (user attr); it cannot be exported")
    weights = Path(t.student_dir) / UNET_WEIGHTS
    if not weights.is_file() or not (weights.parent / "config.json").is_file():
        raise BlocksearchError(f"trial {t.number}: student {t.student_dir} lacks config.json or {UNET_WEIGHTS} "
                               f"(was runs/ moved or cleaned?)")
    check_student(weights.parent, then=f"trial {t.number} is not exported; train its design again (blocksearch train "
                                       f"--design {t.genome}, or distill --design {t.genome}) or export another trial")
    return weights
