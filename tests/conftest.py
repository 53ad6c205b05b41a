"""Shared tiny models (STYLE.md #8): seeded U-Nets with SD-v1, SD-v2 and SDXL topology, and one tiny
SD pipeline (with a random toy judge: a stand-in for the toy teacher). Plain functions, plus fixtures."""

import os

import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from blocksearch.teachers import Teacher
from blocksearch.toy import models as M
from blocksearch.toy.assets import JUDGE_FILE
from blocksearch.toy.judge import ToyJudge

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests start local Ray clusters deliberately without tokens
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, sample_size=16,
            cross_attention_dim=16, attention_head_dim=4)
TINY_CONFIGS = {
    "sd-v1": TINY,
    "sd-v2": dict(TINY, cross_attention_dim=24, attention_head_dim=(2, 4, 4, 4), use_linear_projection=True),
    "sdxl": dict(
        block_out_channels=(8, 16, 16), norm_num_groups=4, sample_size=16, cross_attention_dim=24,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(2, 4, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=12 + 6 * 4),
}
SPACE_OF = {"sd-v1": "unet_blocks", "sd-v2": "unet_blocks", "sdxl": "unet_blocks_sdxl"}


def tiny_unet(kind: str = "sd-v1", seed: int = 0) -> UNet2DConditionModel:
    """A tiny seeded U-Net with the block topology of ``kind``; weights are random but non-trivial."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_CONFIGS[kind]).eval()
    with torch.no_grad():  # diffusers zero-initialises some projections; make every tensor distinctive
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet


def make_tiny_pipeline(prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """A tiny random SD pipeline on the toy vocabulary: 64x64 images -> 4x16x16 latents, SD-v1 topology."""
    torch.manual_seed(0)
    tok = M.make_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=64)
    zero_snr = prediction_type == "v_prediction"  # an epsilon model cannot start at zero SNR (Lin et al.)
    sched = DPMSolverMultistepScheduler(**{**M.SCHEDULE, "rescale_betas_zero_snr": zero_snr},
                                        prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.eval(), tokenizer=tok, unet=tiny_unet("sd-v1"),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_teacher(tmp_path, prediction_type: str = "epsilon") -> Teacher:
    """The tiny pipeline with a random toy judge: a stand-in for the toy teacher in fast tests."""
    torch.manual_seed(1)
    model = ToyJudge()
    with torch.no_grad():  # scale features up so that FID differences are far above 1e-6
        model.feature.weight.mul_(300)
    judge = tmp_path / JUDGE_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, judge)
    return Teacher("tiny", make_tiny_pipeline(prediction_type), judge)


def save_tiny_teacher(tmp_path) -> str:
    """A `blocksearch toy build`-like folder (pipeline + judge.safetensors) for CLI tests."""
    teacher = make_tiny_teacher(tmp_path)
    folder = tmp_path / "teacher"
    teacher.pipeline.save_pretrained(folder, safe_serialization=True)
    (folder / JUDGE_FILE).write_bytes(teacher.judge_path.read_bytes())
    return str(folder)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine, 2 OpenMP threads can be 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_teacher_folder(tmp_path) -> str:
    """``save_tiny_teacher`` in the test's own tmp_path."""
    return save_tiny_teacher(tmp_path)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
