"""Export: round trip through plain diffusers in a fresh process; bad input."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import UNet2DConditionModel
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file, save_file

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.report.export import export_study
from blocksearch.report.compute import load_report
from blocksearch.families.unet.genome import Genome
from blocksearch.families.unet.surgery import build_student
from tests.conftest import make_tiny_pipeline as tiny_pipeline
from tests.conftest import BK, CASE, make_study

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A study over a tiny teacher folder whose trials 0-4 have saved students, as a search leaves them;
    returns (tmp, url, inputs, the outputs trial 2's student gave inside the search)."""
    tmp = tmp_path_factory.mktemp("export")
    teacher = tiny_pipeline()
    teacher.save_pretrained(tmp / "teacher", safe_serialization=True)
    url = make_study(tmp, teacher=str(tmp / "teacher"))
    torch.manual_seed(1)
    inputs = dict(sample=torch.randn(2, 4, 16, 16), timestep=torch.tensor([10, 700]),
                  encoder_hidden_states=torch.randn(2, 77, 16))
    outputs = {}
    for number, (state, _, genome, _) in enumerate(CASE):
        student = build_student(teacher.unet, Genome.from_id(genome)).unet.eval()  # as evaluate() scores it
        with torch.no_grad():  # stands in for the KD run: the student is no longer the teacher's copy
            for p in student.parameters():
                p.add_(0.01 * torch.randn_like(p))
            outputs[number] = student(**inputs).sample
        if state == "COMPLETE":
            student.save_pretrained(tmp / "students" / genome / "unet", safe_serialization=True)
    save_file(inputs | {"in_search": outputs[2], "saved": saved_outputs(tmp / "students" / CASE[2][2], inputs)},
              tmp / "inputs.safetensors")
    return tmp, url


def saved_outputs(student_dir, inputs) -> torch.Tensor:
    """The outputs of the student as the search saved it (student_dir/unet), loaded back here."""
    unet = UNet2DConditionModel.from_pretrained(student_dir / "unet", use_safetensors=True)
    with torch.no_grad():
        return unet(**inputs).sample


def assert_same_student(sample: torch.Tensor, expected: dict) -> None:
    """Equal to the student in the search, in memory and reloaded from student_dir, up to float rounding:
    the same weights (the files are byte-identical) may take another CPU kernel in another process
    (thread count, memory alignment), ~1e-6 apart; a wrong weight or config is off by ~1e-1."""
    for key in ("saved", "in_search"):
        torch.testing.assert_close(sample, expected[key], rtol=1e-5, atol=1e-5)


ROUND_TRIP = textwrap.dedent("""
    import sys, torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file
    folder, data, out = sys.argv[1:]
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    x = load_file(data)
    with torch.no_grad():
        sample = pipe.unet(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"]).sample
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=2.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert not any(m.startswith("blocksearch") for m in sys.modules), "blocksearch was imported"
    save_file({"sample": sample, "image": torch.from_numpy(image).contiguous()}, out)
""")


def test_export_round_trip_in_plain_diffusers(searched, tmp_path, capsys):
    tmp, url = searched
    out = tmp_path / "student"
    assert main(["export", "--study", "unet_blocks-toy", "--storage", url, "--trial", "2", "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out.splitlines()[-1]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tmp / "students" / CASE[2][2] / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    card = (out / "README.md").read_text()
    assert "| `mid_block` |" in card and "blocksearch train --teacher" in card and f"--init {out}" in card
    assert "toy-judge features" in card and "blocksearch run --space unet_blocks" in card
    assert "of the teacher's" in card  # params and MACs as fractions of the teacher's
    block_map = json.loads((out / "block_map.json").read_text())  # linked from the card; no path of this machine
    assert "[`block_map.json`](block_map.json)" in card and str(tmp) not in (out / "block_map.json").read_text()
    assert (block_map["teacher"], block_map["space"], block_map["arch"]) == ("teacher", "unet_blocks", CASE[2][2])
    assert block_map["modules"]["up_blocks.1.resnets.1.conv1"] == "up_blocks.1.resnets.2.conv1"  # L1-2-1-2: stage 2 cut
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": "", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", ROUND_TRIP, str(out), str(tmp / "inputs.safetensors"),
                    str(tmp_path / "result.safetensors")], check=True, cwd=tmp_path, env=env, timeout=300)
    result, expected = load_file(tmp_path / "result.safetensors"), load_file(tmp / "inputs.safetensors")
    assert_same_student(result["sample"], expected)
    assert result["image"].shape == (1, 64, 64, 3) and torch.isfinite(result["image"]).all()


def test_exported_card_is_a_hub_model_card_with_the_trials_metrics(searched, tmp_path):
    """ModelCard.load parses the exported README offline; its model-index holds the trial's own numbers."""
    tmp, url = searched
    [out] = export_study("unet_blocks-toy", url, tmp_path / "card", trial=3)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "teacher" and data["license"] == "other"  # a local folder that states no licence
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert {"blocksearch", "bk-sdm", "knowledge-distillation", "block-removal", "text-to-image"} <= set(data["tags"])
    _, results = model_index_to_eval_results(data["model-index"])
    trial = load_report("unet_blocks-toy", url).trial(3)
    assert {r.metric_type: r.metric_value for r in results} == {
        "fid": trial.metrics["fid"], "text-alignment": trial.metrics["alignment"], "params": trial.metrics["params"],
        "macs": trial.metrics["macs"], "latency-ms": trial.metrics["latency_ms"]}
    assert trial.metrics["fid"] == CASE[3][1][0] and "Fill in `license:`" in card.text
    assert "| `down_blocks.3` | 2 x resnet | removed | the whole stage |" in card.text


def test_export_front_and_design(searched, tmp_path):
    tmp, url = searched
    folders = export_study("unet_blocks-toy", url, tmp_path / "front", front=True)
    assert [f.name for f in folders] == [f"trial{n}_{CASE[n][2]}" for n in (2, 3, 1)]
    assert all((f / "model_index.json").is_file() for f in folders)
    [folder] = export_study("unet_blocks-toy", url, tmp_path / "small", design="bk_small")
    assert json.loads((folder / "unet" / "config.json").read_text())["mid_block_type"] is None


def test_export_bad_input(searched, tmp_path, capsys):
    tmp, url = searched
    with pytest.raises(BlocksearchError, match=r"unknown trial 42 .* completed trials: \[0, 1, 2, 3, 4\]"):
        export_study("unet_blocks-toy", url, tmp_path / "a", trial=42)
    with pytest.raises(BlocksearchError, match="trial 5 .* is PRUNED"):
        export_study("unet_blocks-toy", url, tmp_path / "a", trial=5)
    with pytest.raises(BlocksearchError, match=r"design 'bk_tiny'.*\['bk_base', 'bk_small'\]"):
        export_study("unet_blocks-toy", url, tmp_path / "a", design="bk_tiny")
    with pytest.raises(BlocksearchError, match=r"unknown study 'x'.*\['unet_blocks-toy'\]"):
        export_study("x", url, tmp_path / "a", trial=0)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["export", "--study", "unet_blocks-toy", "--storage", url, "--trial", "0", "-o", str(full)]) == 2
    assert "not empty" in capsys.readouterr().err and not (full / "model_index.json").exists()
    assert main(["export", "--study", "unet_blocks-toy", "--storage", url, "--trial", "0", "-o", str(full),
                 "--force"]) == 0
    assert (full / "model_index.json").is_file() and (full / "keep.txt").read_text() == "mine"
    assert BK["bk_base"] in (full / "README.md").read_text()


def test_a_reference_design_taken_from_the_fidelity_study_has_no_student_to_export(tmp_path):
    url = make_study(tmp_path, case=[CASE[0] + ({"from_study": {"checked_at": 30, "steps": 120}},), *CASE[1:]])
    with pytest.raises(BlocksearchError, match=r"trial 0 \(bk_base\) took its scores from bench fidelity's "
                                               r"study .* blocksearch distill --design bk_base --steps 120"):
        export_study("unet_blocks-toy", url, tmp_path / "b", trial=0)


@pytest.mark.slow
def test_export_round_trip_on_the_toy_teacher(tmp_path):
    """The same round trip through load_teacher("toy"): the bundled teacher's VAE, text encoder, tokenizer."""
    from blocksearch.teachers import load_teacher

    try:
        teacher = load_teacher("toy")
    except BlocksearchError as err:
        pytest.skip(f"toy teacher not available: {err}")
    url = make_study(tmp_path, case=CASE[:2])  # bk_base, bk_small; teacher "toy"
    student = build_student(teacher.unet, Genome.from_id(CASE[1][2])).unet.eval()
    student.save_pretrained(tmp_path / "students" / CASE[1][2] / "unet", safe_serialization=True)
    torch.manual_seed(1)
    cfg = student.config
    inputs = dict(sample=torch.randn(1, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                  timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 77, cfg.cross_attention_dim))
    with torch.no_grad():
        in_search = student(**inputs).sample
    saved = saved_outputs(tmp_path / "students" / CASE[1][2], inputs)
    save_file(inputs | {"in_search": in_search, "saved": saved}, tmp_path / "inputs.safetensors")
    [out] = export_study("unet_blocks-toy", url, tmp_path / "out", design="bk_small")
    subprocess.run([sys.executable, "-c", ROUND_TRIP, str(out), str(tmp_path / "inputs.safetensors"),
                    str(tmp_path / "result.safetensors")], check=True, cwd=tmp_path, timeout=600,
                   env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    result = load_file(tmp_path / "result.safetensors")
    assert_same_student(result["sample"], load_file(tmp_path / "inputs.safetensors"))
    assert torch.isfinite(result["image"]).all()
