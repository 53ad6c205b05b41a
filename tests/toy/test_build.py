"""The tiny budget runs the whole `toy build` code path; its output loads as a StableDiffusionPipeline."""

import json

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from blocksearch.toy import models as M


def test_tiny_build_loads_and_generates(tiny_build):
    info = json.loads((tiny_build / "build.json").read_text())
    assert info["budget"] == "tiny" and info["wall_seconds"]["total_s"] < 120
    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_build, dtype=torch.float32, local_files_only=True, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    out = pipe("a small red circle", num_inference_steps=2, guidance_scale=3.0, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 64, 64)
    assert pipe.unet.dtype == torch.float32


def test_unet_has_sd_v1_topology():
    cfg = UNet2DConditionModel(**M.UNET).config
    assert cfg.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert cfg.up_block_types == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert cfg.mid_block_type == "UNetMidBlock2DCrossAttn" and cfg.layers_per_block == 2
    c = cfg.block_out_channels
    assert [x // c[0] for x in c] == [1, 2, 4, 4] and cfg.sample_size == 16


def test_tokenizer_one_token_per_word_and_round_trip(tmp_path):
    from transformers import CLIPTokenizer

    tok = M.make_tokenizer()
    tok.save_pretrained(tmp_path)
    tok2 = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a small red circle above a blue square"
    assert tok(text).input_ids == tok2(text).input_ids
    assert len(tok(text).input_ids) == len(text.split()) + 2 and tok2.model_max_length == M.MAX_TOKENS


def test_schedule_has_zero_terminal_snr_and_sampling_starts_there(tiny_build):
    """Lin et al. (arXiv 2305.08891): training sees pure noise at the last step, and sampling starts at it."""
    assert float(M.make_train_scheduler().alphas_cumprod[-1]) == 0.0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_build, local_files_only=True, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler.set_timesteps(10)
    assert int(pipe.scheduler.timesteps[0]) == 999 and pipe.scheduler.config.rescale_betas_zero_snr


def test_train_timesteps_put_three_quarters_in_the_noisier_half():
    from blocksearch.toy.build import train_timesteps

    t = train_timesteps(20000, 1000, torch.Generator().manual_seed(0))
    assert int(t.min()) >= 0 and int(t.max()) == 999
    assert abs(float((t >= 500).float().mean()) - 0.75) < 0.02
    assert abs(float((t < 250).float().mean()) - 0.125) < 0.02
