"""Export chosen students as plain diffusers ``StableDiffusionPipeline`` folders with a model card.

Each folder holds the trial's student U-Net (copied byte for byte from its ``student_dir``), the
teacher's VAE, text encoder, tokenizer and scheduler, ``model_index.json`` and a ``README.md`` model
card — the way BK-SDM ships its students (arXiv 2305.15798): a stock pipeline with a smaller U-Net.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm

from blocksearch.cost import count_macs, count_params
from blocksearch.errors import BlocksearchError
from blocksearch.render import fmt
from blocksearch.report import ParetoReport, TrialPoint, architecture_table, load_report, teacher_topology
from blocksearch.space import Genome
from blocksearch.teachers import load_teacher

PIPELINE_FILES = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json", "README.md")
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
    """The teacher's StableDiffusionPipeline (its VAE, text encoder, tokenizer and scheduler are reused)."""
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
    scale = _teacher_cost(teacher.unet)
    folders = []
    for t in tqdm(chosen, desc="export", unit="student", disable=len(chosen) < 2):
        folder = out / f"trial{t.number}_{t.genome}" if front else out
        command = f"blocksearch export --study {study}" + (f" --storage {storage}" if storage else "") + (
            " --front" if front else f" --design {design}" if design else f" --trial {t.number}") + f" -o {out}"
        folders.append(export_trial(report, t, teacher, folder, command, scale))
    return folders


def export_trial(report: ParetoReport, t: TrialPoint, teacher, folder: Path, command: str = "",
                 teacher_cost: dict | None = None) -> Path:
    """Write one pipeline folder: the teacher's components around the student U-Net, plus a model card."""
    weights = _student_weights(t)
    student = UNet2DConditionModel.from_pretrained(weights.parent, use_safetensors=True)  # checks it loads
    folder.mkdir(parents=True, exist_ok=True)
    for name in PIPELINE_FILES:
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    pipe = StableDiffusionPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                                   unet=student, scheduler=teacher.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(folder / "unet")  # the search's own files, byte for byte (dtype and all)
    shutil.copytree(weights.parent, folder / "unet")
    (folder / "README.md").write_text(model_card(report, t, folder, command, teacher_cost), encoding="utf-8")
    return folder


def _teacher_cost(unet) -> dict:
    """The teacher U-Net's params and MACs, to state the student's as fractions of them."""
    return {"params": count_params(unet), "macs": count_macs(unet)}


def _student_weights(t: TrialPoint) -> Path:
    if not t.student_dir:
        raise BlocksearchError(f"trial {t.number} records no student_dir (user attr); it cannot be exported")
    weights = Path(t.student_dir) / UNET_WEIGHTS
    if not weights.is_file() or not (weights.parent / "config.json").is_file():
        raise BlocksearchError(f"trial {t.number}: student U-Net {t.student_dir} lacks config.json or {UNET_WEIGHTS} "
                               f"(was runs/ moved or cleaned?)")
    return weights


# -- the model card ----------------------------------------------------------------------------------
METRIC_ROWS = (("fid", "FID (lower is better)", "fid"), ("alignment", "text alignment", "alignment"),
               ("params", "U-Net parameters", "params"), ("macs", "U-Net MACs per forward", "macs"),
               ("latency_ms", "U-Net latency (median)", "latency"))


def _how(how) -> str:
    text = ", ".join(f"{k}={v}" for k, v in how.items()) if isinstance(how, dict) else str(how)
    return text.replace("|", "/").replace("\n", " ")


def model_card(report: ParetoReport, t: TrialPoint, folder: Path, export_command: str = "",
               teacher_cost: dict | None = None) -> str:
    """A Hugging Face model card: architecture vs the teacher, metrics with how measured, provenance."""
    a, m = report.attrs, t.metrics
    teacher = a.get("teacher", "?")
    title = f"{report.study} trial {t.number}" + (f" ({t.design})" if t.design else "")
    lines = ["---", "library_name: diffusers", "pipeline_tag: text-to-image",
             "tags: [stable-diffusion, knowledge-distillation, bk-sdm, blocksearch]", "---", "",
             f"# {title}: `{t.genome}`", "",
             f"A block-removed Stable Diffusion U-Net found by blocksearch (BK-SDM, arXiv 2305.15798, as a "
             f"multi-objective search), initialised from teacher `{teacher}`'s weights and trained by a short "
             f"feature-level knowledge-distillation run. The VAE, text encoder, tokenizer and scheduler are the "
             f"teacher's, unchanged. {'On' if t.on_front else 'Not on'} the study's Pareto front.", "",
             "```python", "from diffusers import StableDiffusionPipeline", "",
             f'pipe = StableDiffusionPipeline.from_pretrained("{folder}")',
             'image = pipe("a prompt", num_inference_steps=20).images[0]', "```", "",
             "## Architecture against the teacher", "", f"Removed: {t.architecture}.", ""]
    try:
        rows = architecture_table(Genome.from_id(t.genome), teacher_topology(teacher))
        lines += ["| module (teacher) | teacher | student |", "|---|---|---|"]
        lines += [f"| `{mod}` | {a_} | {b_} |" for mod, a_, b_ in rows]
    except BlocksearchError as err:
        lines.append(f"(table unavailable: {err})")
    measured = m.get("measured") or {}
    lines += ["", "## Metrics", "", "| metric | value | how measured |", "|---|---|---|"]
    for key, label, how_key in METRIC_ROWS:
        value = fmt(key, m.get(key))
        if teacher_cost and key in teacher_cost and m.get(key):
            value += f" ({m[key] / teacher_cost[key]:.1%} of the teacher's {fmt(key, teacher_cost[key])})"
        if key == "latency_ms" and m.get("latency_cv") is not None:
            value += f" (cv {m['latency_cv']:.1%})"
        lines.append(f"| {label} | {value} | {_how(measured.get(how_key, measured.get(key, '')))} |")
    if "generation" in measured:
        lines.append(f"| images scored | - | {_how(measured['generation'])} |")
    lines += ["", f"Search settings: device `{a.get('device', '?')}`; distillation {_how(a.get('distill', '?'))}; "
                  f"evaluation {_how(a.get('eval', '?'))}. Re-measure this folder: "
                  f"`blocksearch evaluate {folder / 'unet'} --teacher {teacher}`.", "",
              "## How it was made", "", f"- search: `{a.get('command', '?')}` (study `{report.study}`, "
              f"trial {t.number}, space `{a.get('space', '?')}`)"]
    if export_command:
        lines.append(f"- export: `{export_command}`")
    steps = (a.get("distill") or {}).get("steps", "?") if isinstance(a.get("distill"), dict) else "?"
    lines += ["", "## Continue distillation at full length", "",
              f"The search trained this student for {steps} steps only, enough to rank candidates, not to "
              f"converge. Continue from this folder with the full recipe (BK-SDM: 50K iterations, batch 256, "
              f"AdamW lr 5e-5, all loss weights 1):", "", "```",
              f"blocksearch distill --teacher {teacher} --init {folder} --steps 50000 --batch-size 256 --lr 5e-5 "
              f"-o {folder}-full",
              "```", ""]
    return "\n".join(lines)
