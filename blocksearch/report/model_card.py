"""The model card of an exported student: a Hugging Face ``ModelCard`` whose metadata (``ModelCardData``:
base model, licence, library, pipeline tag, tags, and a ``model-index`` of the measured metrics) is written
by ``huggingface_hub`` itself, and whose body holds the architecture against the teacher, how every number
was measured, and the commands that made the student and that continue its training.

Licence: a derived model carries its teacher's licence, as the teacher's own Hub card declares it. Stable
Diffusion v1 is under the CreativeML OpenRAIL-M licence, v2 and XL under CreativeML OpenRAIL++-M; both are RAIL
licences whose use restrictions must travel with every derivative (their paragraph 4 / attachment A). SD3 and
SD3.5 are under the Stability AI Community License and FLUX.1 [dev] under its non-commercial licence: custom
licences, which the Hub writes as ``license: other`` with a ``license_name`` and ``license_link``; FLUX.1 [schnell]
is Apache-2.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData, try_to_load_from_cache

from blocksearch.errors import BlocksearchError
from blocksearch.objectives import UNIT, fmt
from blocksearch.families.base import Family
from blocksearch.families.unet.topology import ARCH_HUB, ARCH_LICENSE
from blocksearch.report.compute import ParetoReport, TrialPoint
from blocksearch.report.diagram import key as diagram_key, save_diagram
from blocksearch.report.samples import sample_grid, save_grid
from blocksearch.teachers import resolve_teacher, teacher_kind

PROJECT_LICENSE = "mit"  # blocksearch's own licence, which the bundled toy teacher ships under
TOY_BASE_MODEL = "blocksearch/toy-teacher"  # not a Hub repository: the toy teacher bundled with blocksearch
TOY_DIT_BASE_MODEL = "blocksearch/toy-dit-teacher"  # the same for the bundled toy transformer teacher
SHARED_TAGS = ("blocksearch", "knowledge-distillation", "block-removal", "text-to-image")  # every card's
# where a family's tag sits among the shared ones (the tag order of earlier cards); others follow them
TAG_ORDER = ("blocksearch", "bk-sdm", "knowledge-distillation", "block-removal", "text-to-image", "stable-diffusion")
# Hub licence ids of the published SD teachers: blocksearch's architecture names (families/unet/topology.py
# ARCH_LICENSE) and Hub ids
# and Hub ids; a custom licence is "other" with the name and link of the teacher card's ``license_name`` /
# ``license_link`` (HUB_LICENSE_NAMES)
HUB_LICENSE = ((r"^(compvis|runwayml|stable-diffusion-v1-5|stabilityai)/stable-diffusion-v1", "creativeml-openrail-m"),
               (r"^stabilityai/(stable-diffusion-2|stable-diffusion-xl|sdxl)", "openrail++"),
               (r"^stabilityai/stable-diffusion-3(\.5)?-", "stabilityai-ai-community"),  # SD3 Medium, SD3.5 Large/Medium
               (r"^black-forest-labs/flux\.1-dev", "flux-1-dev-non-commercial-license"),
               (r"^black-forest-labs/flux\.1-schnell", "apache-2.0"))
HUB_LICENSE_NAMES = {  # license_name -> license_link, as the teachers' Hub cards declare them (license: other)
    "stabilityai-ai-community": "https://stability.ai/community-license-agreement",
    "flux-1-dev-non-commercial-license": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"}
# blocksearch's architecture names -> the Hub checkpoints whose configs they copy: families/unet/topology.py ARCH_HUB
RAIL = ("creativeml-openrail-m", "openrail++", "openrail")
# Full-length training on one GPU: BK-SDM's global batch of 256, split into micro-batches
FULL_STEPS, FULL_BATCH, MICRO_BATCH = 50_000, 256, 16
# (metric key, label, key of its "how" in metrics["measured"], model-index metric type)
METRICS = (("fid", "FID (lower is better)", "fid", "fid"), ("kid", "KID (mean over subsets)", "fid", "kid"),
           ("alignment", "text alignment", "alignment", "text-alignment"),
           ("params", "U-Net parameters", "params", "params"), ("macs", "U-Net MACs per forward", "macs", "macs"),
           ("latency_ms", "U-Net latency (median)", "latency", "latency-ms"),
           ("e2e_ms", "one image end to end (median)", "e2e", "e2e-latency-ms"),
           ("memory_mb", "peak memory of one CFG U-Net step", "memory", "peak-memory-mb"))


@dataclass(frozen=True)
class CardLicense:
    """The Hub licence id a student inherits from its teacher, and where that was read."""

    id: str  # a Hub licence id (creativeml-openrail-m, openrail++, mit, ...) or "other": custom (named) or unknown
    source: str  # one clause for the card: why this licence
    name: str | None = None  # a custom licence's Hub ``license_name`` (with id "other")
    link: str | None = None  # its ``license_link``

    @classmethod
    def of(cls, license_id: str, source: str) -> "CardLicense":
        """A Hub licence id, or a custom licence's name from ``HUB_LICENSE_NAMES`` (then id "other")."""
        if license_id in HUB_LICENSE_NAMES:
            return cls("other", source, license_id, HUB_LICENSE_NAMES[license_id])
        return cls(license_id, source)

    @property
    def restricted(self) -> bool:
        """A RAIL or a named custom licence (Stability's community, FLUX.1 [dev]'s non-commercial): its use
        restrictions bind every derived model."""
        return self.id in RAIL or self.name is not None

    @property
    def known(self) -> bool:
        return self.id != "other" or self.name is not None


def teacher_license(spec: str) -> CardLicense:
    """The teacher's licence, by a simple rule: the toy teacher is blocksearch's (MIT); sd-v1 and the SD-v1
    Hub ids are CreativeML OpenRAIL-M, sd-v2 / sdxl and theirs OpenRAIL++-M; a folder or cached Hub id
    declares its own (README ``license:``, or a README / LICENSE that names OpenRAIL); else "other"."""
    kind = _kind(spec)
    if kind in ("toy", "toy-folder"):
        return CardLicense(PROJECT_LICENSE, "the toy teacher is part of blocksearch, under its licence")
    if kind == "architecture":
        return CardLicense(ARCH_LICENSE[spec], f"the licence of the published {spec} weights")
    declared = _declared_license(spec, kind)
    if declared:
        return declared
    for pattern, license_id in HUB_LICENSE if kind == "hub" else ():
        if re.match(pattern, spec.lower()):
            return CardLicense.of(license_id, f"the licence of {spec} on the Hugging Face Hub")
    return CardLicense("other", f"blocksearch could not tell the licence of teacher {spec}")


def _declared_license(spec: str, kind: str) -> CardLicense | None:
    """A licence the teacher states itself: its README's metadata, or a README / LICENSE naming OpenRAIL."""
    if kind == "folder":
        files = [Path(spec) / "README.md", *sorted(Path(spec).glob("LICEN[CS]E*"))]
    elif kind == "hub":
        cached = try_to_load_from_cache(spec, "README.md")  # the local cache only: never the network
        files = [Path(cached)] if isinstance(cached, str) else []
    else:
        return None
    files = [f for f in files if f.is_file()]
    readme = next((f for f in files if f.name == "README.md"), None)
    if readme is not None:
        data = ModelCard.load(readme, ignore_metadata_errors=True).data
        if data.license:
            name, link = data.get("license_name"), data.get("license_link")
            if data.license == "other" and name:
                link = str(link) if str(link or "").startswith("http") else HUB_LICENSE_NAMES.get(str(name), link)
                return CardLicense("other", f"declared in the teacher's {readme.name}", str(name), link)
            return CardLicense(str(data.license), f"declared in the teacher's {readme.name}")
    for f in files:  # the SD licence texts say "CreativeML Open RAIL-M" / "Open RAIL++-M"
        rail = re.search(r"open ?rail(\+\+)?", f.read_text(encoding="utf-8", errors="replace").lower())
        if rail:
            return CardLicense("openrail++" if rail.group(1) else "creativeml-openrail-m",
                               f"the teacher's {f.name} names the OpenRAIL licence")
    return None


def base_model(spec: str) -> tuple[str, str]:
    """The card's ``base_model`` (the teacher's Hub id where it has one) and a note on it for the body."""
    kind = _kind(spec)
    if kind == "hub":
        return spec, f"the teacher, `{spec}` on the Hugging Face Hub"
    if kind == "architecture":
        return ARCH_HUB[spec], f"`{ARCH_HUB[spec]}`, whose architecture teacher `{spec}` names"
    if kind in ("toy", "toy-folder"):
        name = TOY_DIT_BASE_MODEL if spec == "toy-dit" else TOY_BASE_MODEL
        return name, (f"the toy teacher bundled with blocksearch; `{name}` is not a Hub repository, so remove "
                      "`base_model` before pushing this card to the Hub")
    name = Path(spec).name or spec
    return name, (f"the local teacher folder `{spec}`; set `base_model` to the teacher's Hub id before pushing "
                  f"this card to the Hub")


def card_tags(family: Family) -> list[str]:
    """The shared tags and the family's ``card_tags``, in ``TAG_ORDER``."""
    rank = {t: i for i, t in enumerate(TAG_ORDER)}
    return sorted([*SHARED_TAGS, *family.card_tags], key=lambda t: rank.get(t, len(TAG_ORDER)))


def eval_results(report: ParetoReport, t: TrialPoint, family: Family) -> list[EvalResult]:
    """The trial's measured metrics as Hub eval results on its evaluation set (one per metric it has)."""
    a, m = report.attrs, t.metrics
    ev = a.get("eval") or {}
    prompts = (a.get("eval_set") or {}).get("prompts", ev.get("prompts"))
    if _kind(a.get("teacher", "")) in ("toy", "toy-folder"):
        dataset_type, dataset_name = "blocksearch/toy-world", f"toy world held-out prompts ({prompts})"
    elif ev.get("reference") or ev.get("captions"):
        folder = Path(ev.get("captions") or ev["reference"]).name
        dataset_type, dataset_name = "imagefolder", f"{folder} captions ({prompts} prompts)"
    else:
        dataset_type, dataset_name = "prompts", f"{prompts} evaluation prompts"
    name = family.denoiser_name
    return [EvalResult(task_type="text-to-image", dataset_type=dataset_type, dataset_name=dataset_name,
                       metric_type=kind, metric_name=label.replace("U-Net", name),
                       metric_value=int(m[key]) if UNIT.get(key) == "count" else float(m[key]))
            for key, label, _, kind in METRICS if m.get(key) is not None]


def _kind(spec: str) -> str:
    """``teachers.teacher_kind``, or "unknown" for a spec that names nothing (a moved folder)."""
    try:
        return teacher_kind(spec)
    except BlocksearchError:
        return "unknown"


def card_data(report: ParetoReport, t: TrialPoint, family: Family) -> ModelCardData:
    """The card's YAML metadata, built by ``huggingface_hub``."""
    teacher = report.attrs.get("teacher", "?")
    lic = teacher_license(teacher)
    tags = card_tags(family)
    return ModelCardData(base_model=base_model(teacher)[0], license=lic.id, license_name=lic.name,
                         license_link=lic.link, library_name="diffusers",
                         pipeline_tag="text-to-image", tags=list(tags),
                         model_name=f"{report.study}-trial{t.number}-{t.genome}",
                         eval_results=eval_results(report, t, family) or None)


def continue_command(report: ParetoReport, folder: Path) -> str:
    """Full-length training of the exported student on one GPU (BK-SDM's recipe, micro-batched)."""
    a = report.attrs
    data = (a.get("distill") or {}).get("data") if isinstance(a.get("distill"), dict) else None
    return (f"blocksearch train --teacher {a.get('teacher', '?')} --init {folder}"
            + (f" --data {data}" if data and data != "toy" else "")
            + f" --steps {FULL_STEPS} --batch-size {FULL_BATCH} --micro-batch-size {MICRO_BATCH} --lr 5e-5"
              f" --precision bf16 --gpus-per-worker 1 -o {folder}-full")


def _how(how) -> str:
    text = ", ".join(f"{k}={v}" for k, v in how.items()) if isinstance(how, dict) else str(how)
    return text.replace("|", "/").replace("\n", " ")


def model_card(report: ParetoReport, t: TrialPoint, folder: Path, export_command: str = "",
               teacher_cost: dict | None = None, *, family: Family, call_kwargs: dict | None = None) -> ModelCard:
    """The model card: ``ModelCardData`` metadata, then architecture vs the teacher, metrics with how
    they were measured, licence, provenance and the command that continues training. ``family``: the teacher's
    denoiser family; ``call_kwargs``: what its stock pipeline's call needs beyond its defaults (the snippet
    shows them)."""
    a, m = report.attrs, t.metrics
    teacher = a.get("teacher", "?")
    lic, (_, base_note) = teacher_license(teacher), base_model(teacher)
    title = f"{report.study} trial {t.number}" + (f" ({t.design})" if t.design else "")
    what = family.card_summary.format(denoiser=family.denoiser_name, model_class=type_name(family))
    extra = "".join(f", {k}={v!r}" for k, v in (call_kwargs or {}).items())
    lines = [f"# {title}: `{t.genome}`", "",
             f"{what}, initialised from teacher `{teacher}`'s weights and trained by a short "
             f"feature-level knowledge-distillation run. The VAE, text encoder, tokenizer and scheduler are the "
             f"teacher's, unchanged. {'On' if t.on_front else 'Not on'} the study's Pareto front. "
             f"Base model: {base_note}.", "",
             "```python", f"from diffusers import {family.pipeline_class}", "",
             f'pipe = {family.pipeline_class}.from_pretrained("{folder}")',
             f'image = pipe("a prompt", num_inference_steps=20{extra}).images[0]', "```", "",
             *license_lines(lic), *_samples_lines(report, t, folder), *_architecture_lines(t, teacher, family, folder),
             *_metric_lines(report, t, folder, teacher_cost, family),
             "## How it was made", "", f"- search: `{a.get('command', '?')}` (study `{report.study}`, "
             f"trial {t.number}, space `{a.get('space', '?')}`)"]
    if export_command:
        lines.append(f"- export: `{export_command}`")
    steps = (a.get("distill") or {}).get("steps", "?") if isinstance(a.get("distill"), dict) else "?"
    if family.trains:  # blocksearch train continues this family's students (train.py)
        lines += ["", "## Continue training at full length", "",
                  f"The search trained this student for {steps} steps only, enough to rank candidates, not to "
                  f"converge. Continue from this folder with BK-SDM's recipe (50K iterations, batch 256, AdamW lr "
                  f"5e-5, all loss weights 1) on one GPU: each optimizer step accumulates the gradients of "
                  f"{FULL_BATCH // MICRO_BATCH} micro-batches of {MICRO_BATCH} (a global batch of {FULL_BATCH}) in "
                  f"bf16; lower `--micro-batch-size` if it runs out of memory (the global batch stays {FULL_BATCH}).",
                  "", "```", continue_command(report, folder), "```", ""]
    else:
        lines += ["", f"The search trained this student for {steps} KD steps only, enough to rank candidates, not "
                      f"to converge.", ""]
    return ModelCard(f"---\n{card_data(report, t, family).to_yaml()}\n---\n\n" + "\n".join(lines))


def type_name(family: Family) -> str:
    """The diffusers class of a transformer family's teacher (``PixArtTransformer2DModel``, ...)."""
    return getattr(family, "model_class", None) or family.denoiser_name


def license_lines(lic: CardLicense) -> list[str]:
    text = f"`{lic.id}`: {lic.source}."
    if lic.name:
        text = f"`{lic.name}` ({lic.link}): {lic.source}."
    if lic.restricted:
        text += (" This student is a derivative of its teacher, so the licence's use restrictions travel with "
                 "it: anyone who shares or uses it must keep them and pass them on to its users.")
    if not lic.known:
        text += (" Fill in `license:` in this card's header with the teacher's licence before sharing it; a "
                 "derived model is bound by its teacher's licence.")
    return ["## Licence", "", text, ""]


CARD_SAMPLES, CARD_DIAGRAM = "samples.png", "architecture.png"  # written beside the card


def _samples_lines(report: ParetoReport, t: TrialPoint, folder: Path) -> list[str]:
    """The student's sample row under the teacher's (samples.py; the report's rows, kept beside the student),
    written to ``folder``; nothing where the study generated no images for it or its student is gone."""
    try:
        grid = sample_grid(report, [t])
    except BlocksearchError as err:  # the study's evaluation set is not readable here: the card stands without
        return ["## Samples", "", f"No samples: {err}.", ""]
    if grid is None or len(grid.rows) < 2:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    save_grid(grid.samples, grid.rows, folder / CARD_SAMPLES)
    s = grid.samples
    return ["## Samples", "", f"![the teacher (top) and this student (bottom) on the same prompts and seeds]"
            f"({CARD_SAMPLES})", "", f"The teacher (top row) and this student (bottom row) on {len(s.prompts)} prompts "
            f"of the search's evaluation set, the same seed per column ({', '.join(map(str, s.seeds))}), "
            f"{s.steps} sampler steps, guidance {s.guidance}: images the evaluation scored.", ""]


def _architecture_lines(t: TrialPoint, teacher: str, family: Family, folder: Path | None = None) -> list[str]:
    """The block diagram (written to ``folder``), removed modules in one line, then a row per teacher module:
    the teacher's, the student's (for a transformer: which student block each kept teacher block became), what
    was removed."""
    lines = ["## Architecture against the teacher", ""]
    try:
        genome, topo = family.arch_from_id(t.genome), resolve_teacher(teacher).topology()
    except BlocksearchError as err:
        return lines + [f"Removed: {t.architecture}.", "", f"(table unavailable: {err})", ""]
    if folder is not None and family.layout is not None:
        folder.mkdir(parents=True, exist_ok=True)
        stages = family.layout(genome, topo)
        save_diagram(stages, folder / CARD_DIAGRAM, t.genome)
        lines += [f"![what the student keeps of the teacher's {family.denoiser_name}]({CARD_DIAGRAM})", "",
                  diagram_key(stages)[0].upper() + diagram_key(stages)[1:] + ".", ""]
    lines += [f"Removed: {t.architecture}.", "",
              "Block map: [`block_map.json`](block_map.json) names the teacher module every student module came "
              "from, and the removed and renamed ones (for runtimes and adapter loaders; `blocksearch adapt lora` "
              "carries a teacher LoRA over by it).", ""]
    try:
        cut = family.removed(genome, topo)
        lines += ["| module (teacher) | teacher | student | removed |", "|---|---|---|---|"]
        lines += [f"| `{mod}` | {a_} | {b_} | {cut.get(mod, '-')} |"
                  for mod, a_, b_ in family.architecture_table(genome, topo)]
    except BlocksearchError as err:
        lines.append(f"(table unavailable: {err})")
    return lines + [""]


def _metric_lines(report: ParetoReport, t: TrialPoint, folder: Path, teacher_cost: dict | None,
                  family: Family) -> list[str]:
    a, m = report.attrs, t.metrics
    measured = m.get("measured") or {}
    lines = ["## Metrics", "", "The same numbers are in this card's `model-index`.", "",
             "| metric | value | how measured |", "|---|---|---|"]
    for key, label, how_key, _ in METRICS:
        if m.get(key) is None and key in ("kid", "e2e_ms", "memory_mb"):
            continue  # recorded by later versions only
        value = fmt(key, m.get(key))
        if teacher_cost and key in teacher_cost and m.get(key):
            value += f" ({m[key] / teacher_cost[key]:.1%} of the teacher's {fmt(key, teacher_cost[key])})"
        if key == "latency_ms" and m.get("latency_cv") is not None:
            value += f" (cv {m['latency_cv']:.1%})"
        label = label.replace("U-Net", family.denoiser_name)
        lines.append(f"| {label} | {value} | {_how(measured.get(how_key, measured.get(key, '')))} |")
    if "generation" in measured:
        lines.append(f"| images scored | - | {_how(measured['generation'])} |")
    return lines + ["", f"Search settings: device `{a.get('device', '?')}`; distillation "
                        f"{_how(a.get('distill', '?'))}; evaluation {_how(a.get('eval', '?'))}. "
                        f"Re-measure this folder: `blocksearch evaluate {folder / family.subfolder} "
                        f"--teacher {a.get('teacher', '?')}`.", ""]
