"""The model card: huggingface_hub metadata (licence rule, base model, model-index) and the body's tables."""

import json
import shlex

import pytest
from huggingface_hub import ModelCard, constants
from huggingface_hub.repocard_data import model_index_to_eval_results

from blocksearch.report import model_card as MC
from blocksearch.cli import build_parser
from blocksearch.report.compute import load_report
from blocksearch.teachers import resolve_teacher
from blocksearch.families.unet.family import FAMILY as UNET
from blocksearch.families.unet.genome import Genome
from blocksearch.families.unet.words import removed
from tests.conftest import BK, make_study


@pytest.fixture(autouse=True)
def no_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and a working folder where no spec names a folder by accident."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)


def _folder(path, readme=None, license_text=None):
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    if readme is not None:
        (path / "README.md").write_text(readme)
    if license_text is not None:
        (path / "LICENSE.md").write_text(license_text)
    return str(path)


@pytest.mark.parametrize("spec, expected", [
    ("toy", "mit"), ("sd-v1", "creativeml-openrail-m"), ("sd-v2", "openrail++"), ("sdxl", "openrail++"),
    ("CompVis/stable-diffusion-v1-4", "creativeml-openrail-m"),
    ("runwayml/stable-diffusion-v1-5", "creativeml-openrail-m"),
    ("stabilityai/stable-diffusion-2-1-base", "openrail++"), ("stabilityai/stable-diffusion-xl-base-1.0", "openrail++"),
    ("someone/stable-diffusion-v1-4-finetune", "other"), ("no such teacher", "other"),
])
def test_license_rule_on_spec_strings(spec, expected):
    lic = MC.teacher_license(spec)
    assert lic.id == expected
    assert lic.restricted == ("openrail" in expected) and lic.known == (expected != "other")


def test_license_of_a_teacher_folder(tmp_path):
    assert MC.teacher_license(_folder(tmp_path / "my-sdxl")).id == "other"  # nothing says: the user fills it in
    declared = _folder(tmp_path / "ft", readme="---\nlicense: apache-2.0\n---\n# my fine-tune\n")
    assert MC.teacher_license(declared).id == "apache-2.0"
    v1 = _folder(tmp_path / "v1", readme="# weights\n", license_text="CreativeML Open RAIL-M\ndated August 22, 2022")
    assert MC.teacher_license(v1) == MC.CardLicense("creativeml-openrail-m", "the teacher's LICENSE.md names the "
                                                                             "OpenRAIL licence")
    v2 = _folder(tmp_path / "v2", license_text="CreativeML Open RAIL++-M License")
    assert MC.teacher_license(v2).id == "openrail++"


def test_license_of_a_cached_hub_id_is_read_from_its_cached_card(tmp_path):
    snapshot = tmp_path / "hub" / "models--someone--sd-finetune" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    (snapshot / "README.md").write_text("---\nlicense: openrail++\n---\n")
    expected = MC.CardLicense("openrail++", "declared in the teacher's README.md")
    assert MC.teacher_license("someone/sd-finetune") == expected
    assert MC.teacher_license("someone/other").id == "other"


def test_base_model_is_the_hub_id_or_a_named_stand_in(tmp_path):
    assert MC.base_model("CompVis/stable-diffusion-v1-4")[0] == "CompVis/stable-diffusion-v1-4"
    assert MC.base_model("sd-v2")[0] == "stabilityai/stable-diffusion-2-1-base"
    name, note = MC.base_model("toy")
    assert name == MC.TOY_BASE_MODEL and "not a Hub repository" in note
    name, note = MC.base_model("toy-dit")
    assert name == MC.TOY_DIT_BASE_MODEL != MC.TOY_BASE_MODEL and f"`{name}` is not a Hub repository" in note
    name, note = MC.base_model(_folder(tmp_path / "teachers" / "my-sdxl"))
    assert name == "my-sdxl" and "Hub id" in note


def test_removed_lists_every_cut_against_the_teacher():
    topo = resolve_teacher("toy").topology()  # SD-v1 topology: 2 layers per down stage, attention in 3 stages
    assert removed(Genome.from_id(BK["bk_small"]), topo) == {
        **{f"down_blocks.{i}": "1 of 2 layers" for i in range(4)},
        **{f"up_blocks.{i}": "1 of 3 layers" for i in range(4)}, "mid_block": "the whole block"}
    cut = removed(Genome.from_id("L2-1-2_T1-0-1_Mres"), topo)
    assert cut == {"down_blocks.1": "1 of 2 layers, attention", "up_blocks.2": "1 of 3 layers, attention",
                   "down_blocks.3": "the whole stage", "up_blocks.0": "the whole stage", "mid_block": "attention"}
    assert removed(Genome.from_id("L2-2-2-2_T1-1-1-0_Mattn"), topo) == {}  # the teacher itself


def test_card_metadata_parses_and_round_trips_the_trials_metrics(tmp_path):
    """Offline checks: ModelCard parses the header, ModelCardData validates the model-index, and
    model_index_to_eval_results reads the metrics back (ModelCard.validate needs the Hub)."""
    report = load_report("unet_blocks-toy", make_study(tmp_path, teacher="sd-v1"))
    t = report.trial(3)
    path = tmp_path / "README.md"
    MC.model_card(report, t, tmp_path / "out", family=UNET).save(path)
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert {k: data[k] for k in ("base_model", "license", "library_name", "pipeline_tag")} == {
        "base_model": "CompVis/stable-diffusion-v1-4", "license": "creativeml-openrail-m", "library_name": "diffusers",
        "pipeline_tag": "text-to-image"}
    assert {"blocksearch", "bk-sdm", "knowledge-distillation", "block-removal"} <= set(data["tags"])
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == f"unet_blocks-toy-trial3-{t.genome}"
    assert {r.metric_type: r.metric_value for r in results} == {
        "fid": 11.0, "text-alignment": 0.5, "params": 70, "macs": 4_000_000, "latency-ms": 12.0}
    assert {m: t.metrics[k] for k, _, _, m in MC.METRICS if k in t.metrics} == {
        r.metric_type: r.metric_value for r in results}
    assert "use restrictions travel with it" in card.text and "Fill in `license:`" not in card.text
    assert "accumulates the gradients of 16 micro-batches of 16" in card.text
    assert (f"blocksearch train --teacher sd-v1 --init {tmp_path / 'out'} --steps 50000 --batch-size 256 "
            f"--micro-batch-size 16 --lr 5e-5 --precision bf16 --gpus-per-worker 1") in card.text
    train = build_parser().parse_args(shlex.split(MC.continue_command(report, tmp_path / "out"))[1:])
    assert (train.init, train.batch_size, train.micro_batch_size, train.gpus_per_worker, train.precision) == (
        str(tmp_path / "out"), 256, 16, 1, "bf16")  # the card's command is one the train verb accepts
    assert "| `mid_block` | resnet + cross-attention transformer + resnet | 1 resnet (no attention) | attention |" \
        in card.text


def test_card_of_a_teacher_with_unknown_licence_asks_the_user_to_fill_it_in(tmp_path):
    teacher = _folder(tmp_path / "my-sdxl")
    report = load_report("unet_blocks-toy", make_study(tmp_path, teacher=teacher))
    card = MC.model_card(report, report.trial(1), tmp_path / "out", family=UNET)
    assert card.data.license == "other" and card.data.base_model == "my-sdxl"
    assert "Fill in `license:` in this card's header" in card.text


def test_the_card_shows_the_students_block_diagram(tmp_path):
    """The card's architecture section opens with the student's diagram, written beside the card and drawn from
    the family's layout; a study without the student on disk has no sample row (nothing to sample)."""
    report = load_report("unet_blocks-toy", make_study(tmp_path, teacher="sd-v1"))
    out = tmp_path / "out"
    text = MC.model_card(report, report.trial(3), out, family=UNET).text
    assert f"![what the student keeps of the teacher's U-Net]({MC.CARD_DIAGRAM})" in text
    assert (out / MC.CARD_DIAGRAM).read_bytes()[:4] == b"\x89PNG"
    assert "## Samples" not in text and not (out / MC.CARD_SAMPLES).exists()


@pytest.mark.parametrize("spec, license_id, name", [
    ("stabilityai/stable-diffusion-xl-base-1.0", "openrail++", None),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "other", "stabilityai-ai-community"),
    ("stabilityai/stable-diffusion-3.5-large", "other", "stabilityai-ai-community"),
    ("stabilityai/stable-diffusion-3.5-medium", "other", "stabilityai-ai-community"),
    ("black-forest-labs/FLUX.1-dev", "other", "flux-1-dev-non-commercial-license"),
    ("black-forest-labs/FLUX.1-schnell", "apache-2.0", None),
])
def test_each_teachers_card_has_its_own_base_model_and_licence(spec, license_id, name, tmp_path):
    """The Hub metadata of each teacher's own card: a custom licence is `other` with its name and link."""
    lic = MC.teacher_license(spec)
    assert (lic.id, lic.name, lic.known) == (license_id, name, True)
    assert lic.restricted == (license_id != "apache-2.0")
    assert (lic.link is not None) == (name is not None)
    assert MC.base_model(spec)[0] == spec
    meta = ModelCard(f"---\n{MC.ModelCardData(base_model=spec, license=lic.id, license_name=lic.name, license_link=lic.link).to_yaml()}\n---\n").data
    assert (meta.base_model, meta.license, meta.get("license_name")) == (spec, license_id, name)
    text = "\n".join(MC.license_lines(lic))
    assert (name or license_id) in text and ("Fill in" not in text)


def test_a_teacher_folder_declaring_a_custom_licence_passes_its_name_on(tmp_path):
    """A downloaded FLUX.1-dev folder's README says `license: other` + its name; a relative link becomes the Hub's."""
    flux = _folder(tmp_path / "flux", readme="---\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\n"
                                              "license_link: LICENSE.md\n---\n# FLUX.1 [dev]\n")
    lic = MC.teacher_license(flux)
    assert (lic.id, lic.name) == ("other", "flux-1-dev-non-commercial-license")
    assert lic.link == MC.HUB_LICENSE_NAMES["flux-1-dev-non-commercial-license"]
