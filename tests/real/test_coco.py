"""BK-SDM's MS-COCO protocol on a fake COCO: prompts, reference images, and a 4-prompt subset end to end."""

import json
import math

import pytest
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

from blocksearch.cli import main
from blocksearch.recipe.coco import (PUBLISHED, ProtocolSpec, coco_prompts, coco_reference_images, evaluate_protocol,
                              protocol_pipeline)
from blocksearch.errors import BlocksearchError

TINY_SPEC = ProtocolSpec(resolution=32, steps=3)  # the tiny pipeline's 32 px; everything else is the protocol's


def test_spec_is_bk_sdm_section_4():
    spec = ProtocolSpec()
    assert (spec.prompts, spec.steps, spec.guidance, spec.resolution, spec.eval_resolution) == (30000, 25, 7.5, 512, 256)
    assert PUBLISHED["bk-sdm-small"] == {"fid": 16.98, "is": 31.68, "clip": 0.2677}


def test_prompts_one_caption_per_distinct_image(tiny_coco):
    captions, images_dir = tiny_coco
    pairs = coco_prompts(captions, 8, seed=0)
    files = [f for f, _ in pairs]
    assert len(set(files)) == 8 and all((images_dir / f).is_file() for f in files)
    data = json.loads(captions.read_text())
    by_file = {im["file_name"]: im["id"] for im in data["images"]}
    for f, text in pairs:  # each caption is one of that image's own
        assert text in [a["caption"] for a in data["annotations"] if a["image_id"] == by_file[f]]
    assert coco_prompts(captions, 8, seed=0) == pairs  # deterministic
    assert coco_prompts(captions, 3, seed=0) == pairs[:3]  # a limit is a prefix of the full set
    assert coco_prompts(captions, 8, seed=1) != pairs


def test_prompts_refuse_bad_input(tiny_coco, tmp_path):
    captions, _ = tiny_coco
    with pytest.raises(BlocksearchError, match="asked for 9 prompts.*8 images"):
        coco_prompts(captions, 9)
    bad = tmp_path / "captions.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(BlocksearchError, match=f"{bad}: not the COCO captions format"):
        coco_prompts(bad, 1)
    with pytest.raises(BlocksearchError, match="does not exist"):
        coco_prompts(tmp_path / "nope.json", 1)


def test_reference_images(tiny_coco, tmp_path):
    _, images_dir = tiny_coco
    ref = coco_reference_images(images_dir)
    assert [p.name for p in ref] == sorted(p.name for p in images_dir.iterdir())
    (tmp_path / "empty").mkdir()
    with pytest.raises(BlocksearchError, match="has 0 images"):
        coco_reference_images(tmp_path / "empty")


def test_protocol_pipeline_uses_pndm_without_touching_the_callers(sd_folder):
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    out = protocol_pipeline(pipe, ProtocolSpec())
    assert type(out.scheduler).__name__ == "PNDMScheduler" and out.scheduler.config.skip_prk_steps
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler) and out.unet is pipe.unet
    with pytest.raises(BlocksearchError, match="'Nope'"):
        protocol_pipeline(pipe, ProtocolSpec(scheduler="Nope"))


def test_a_4_prompt_subset_end_to_end(sd_folder, tiny_coco, inception_file, clip_folder, tmp_path):
    """Random Inception and CLIP weights: the figures exercise the path, they mean nothing. ~10-50 s on 2 busy
    cores, most of it torch-fidelity's FID (eigenvalues of a 2048x2048 matrix)."""
    captions, images_dir = tiny_coco
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    result = evaluate_protocol(pipe, TINY_SPEC, captions, images_dir, inception_file, clip_folder, limit=4,
                               batch_size=2, cache_dir=tmp_path / "cache", out_dir=tmp_path / "images")
    assert result["subset"] is True and result["prompts"] == 4
    assert "SUBSET: 4 of 30000" in result["measured"]["protocol"]
    assert all(math.isfinite(result[k]) for k in ("fid", "is", "clip")) and -1 <= result["clip"] <= 1
    assert result["measured"]["fid"]["generated"] == 4 and "8 images" in result["measured"]["fid"]["reference"]
    assert result["measured"]["generation"]["steps"] == 3 and "4 splits" in result["measured"]["is"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert list((tmp_path / "cache" / "fidelity").glob("blocksearch-coco-*"))  # reference statistics kept


def test_protocol_refuses_bad_inputs_before_generating(sd_folder, tiny_coco, inception_file, clip_folder, tmp_path):
    captions, images_dir = tiny_coco
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BlocksearchError, match=str(bad)):
        evaluate_protocol(None, TINY_SPEC, captions, images_dir, bad, clip_folder, limit=4)
    with pytest.raises(BlocksearchError, match="--limit 0: allowed 1..30000"):
        evaluate_protocol(None, TINY_SPEC, captions, images_dir, inception_file, clip_folder, limit=0)


def test_cli_protocol_prints_the_published_figures(sd_folder, tiny_coco, inception_file, clip_folder, tmp_path,
                                                   capsys):
    """`evaluate --protocol bk-sdm` on the tiny teacher (its own U-Net): a 4-prompt subset at 32 px that
    says it is a subset and which settings are not the protocol's, next to BK-SDM's table."""
    captions, images_dir = tiny_coco
    args = ["evaluate", str(sd_folder), "--teacher", str(sd_folder), "--protocol", "bk-sdm", "--coco-captions",
            str(captions), "--coco-images", str(images_dir), "--inception-weights", str(inception_file),
            "--clip-model", str(clip_folder), "--cache-dir", str(tmp_path / "cache")]
    out_file = tmp_path / "coco.json"
    assert main(args + ["--limit", "4", "--resolution", "32", "--inference-steps", "3", "-o", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "SUBSET (--limit 4)" in out and "NOT the protocol's settings: steps 3 (BK-SDM: 25), resolution 32" in out
    for model, fig in PUBLISHED.items():
        assert f"{model} (published)" in out and f"{fig['fid']:.2f}" in out
    result = json.loads(out_file.read_text())
    assert result["prompts"] == 4 and result["subset"] and result["spec"]["steps"] == 3
    i = args.index("--coco-images")
    assert main(args[:i] + args[i + 2:]) == 2  # a missing input: one line, exit 2
    err = capsys.readouterr().err.strip()
    assert "needs --coco-images" in err and "\n" not in err
