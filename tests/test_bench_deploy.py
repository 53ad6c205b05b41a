"""bench deploy: the SD-shaped pipelines around the teacher have the published sizes (built on the meta
device), a shrunk one runs end to end, and the table reports how much lower than the teacher."""

from types import SimpleNamespace

import pytest
import torch

from blocksearch.families.unet.family import FAMILY as UNET
from blocksearch.bench.deploy import kd_check, random_pipeline, table
from blocksearch.bench.deploy_denoiser import random_denoiser, synthetic_batch
from blocksearch.cli import main
from blocksearch.families.base import family_of_config
from blocksearch.errors import BlocksearchError
from blocksearch.space import load_space
from blocksearch.recipe.teacher_cache import cache_bytes_per_step
from blocksearch.families.unet.topology import topology_of


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name, unet, text", [("sd-v1", 859_520_964, 123_060_480),  # SD-v1.4, CLIP ViT-L/14
                                              ("sd-v2", 865_910_724, 340_387_840)])  # SD-v2.1-base, OpenCLIP ViT-H
def test_pipelines_have_the_published_sizes(name, unet, text):
    with torch.device("meta"):
        pipe = random_pipeline(name)
    assert (_params(pipe.unet), _params(pipe.text_encoder), _params(pipe.vae)) == (unet, text, 83_653_863)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 512


def test_a_shrunk_pipeline_encodes_77_tokens_and_denoises():
    pipe = random_pipeline("sd-v1", scale=0.1)
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        out = pipe.unet(torch.randn(1, 4, 8, 8), 10, text).sample
    assert text.shape == (1, 77, 64) and out.shape == (1, 4, 8, 8)


def test_sdxl_is_refused_in_one_line():
    with pytest.raises(BlocksearchError, match="allowed: toy, a toy-built folder, sd-v1, sd-v2 .* sdxl, sd3-medium, "
                                               "flux-dev .the denoiser alone"):
        random_pipeline("sdxl")


def test_table_says_how_much_lower_than_the_teacher_and_the_published_figure():
    m = lambda step, e2e, mem: dict(latency_ms=step, e2e_ms=e2e, memory_mb=mem, weights_mb=1.0)  # noqa: E731
    out = table([("teacher", "T", 10, m(10.0, 100.0, 50.0)), ("bk_small", "S", 5, m(6.4, 90.0, 40.0))])
    small = out.splitlines()[2]
    assert "36.0%" in small and "10.0%" in small and "20.0%" in small and small.endswith("~36%")


def test_the_kd_check_distils_bk_small_at_the_teachers_size(tmp_path, monkeypatch, capsys):
    """`--kd-steps`: one trial's KD on a synthetic imagefolder through the real path (save, load_teacher, imagefolder
    encoding, the teacher cache's auto decision); here at a tenth of SD-v1's widths and 64 px."""
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    pipe = random_pipeline("sd-v1", scale=0.1)
    pipe.unet.register_to_config(sample_size=8)  # 64 px images: seconds on a CPU
    bound = load_space("unet_blocks").bind(topology_of(pipe.unet.config))
    args = SimpleNamespace(device="cpu", kd_steps=4, kd_batch=2, kd_precision="fp32", teacher="sd-v1")
    out = kd_check(pipe, bound, args)
    assert out["cached"] and out["cache_bytes_per_step"] == cache_bytes_per_step(pipe.unet.config, 2, 8, 2, family=UNET)
    assert out["step_s"] > 0 and out["peak_mb"] is None and "fits" in out["teacher_cache"]
    printed = capsys.readouterr().out
    assert "KD check: bk_small from the sd-v1 teacher, 4 steps of batch 2 at 64 px, fp32" in printed
    assert "KD step (median of the warm steps): " in printed and "teacher cache: on disk" in printed


# -- SDXL, SD3 and Flux: the denoiser alone (bench/deploy_denoiser.py) --------------------------------------
@pytest.mark.parametrize("name, params", [("sdxl", 2_567_463_684), ("sd3-medium", 2_028_328_000),
                                          ("flux-dev", 11_901_408_320)])
def test_the_denoiser_only_teachers_are_the_shipped_configs(name, params):
    """Full size on the meta device: the published denoisers (SDXL's U-Net, docs/families.md's counts)."""
    with torch.device("meta"):
        model = random_denoiser(name)
    assert _params(model) == pytest.approx(params, rel=1e-3)


@pytest.mark.parametrize("name", ["sdxl", "sd3-medium"])  # flux-dev: the same path, 12 min here (57 blocks x 19 designs)
def test_bench_deploy_measures_the_denoiser_of_each_design_and_one_kd_step(name, capsys, tmp_path, monkeypatch,
                                                                           one_thread):
    """At a twentieth of the widths and an 8x8 latent: every named design's step and peak memory against the
    teacher's, then two KD steps of the space's first design with the teacher cache's bytes per step."""
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    assert main(["bench", "deploy", "--teacher", name, "--scale", "0.05", "--latent", "8", "--warmup", "1",
                 "--repeats", "2", "--kd-steps", "2", "--kd-batch", "2", "--kd-precision", "fp32"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            ("teacher", "koala_700m", "flux_lite", "tinyfusion_14") and "%" in line]
    assert rows and rows[0][0] == "teacher" and rows[0][4] == "0.0%"
    assert all(float(r[4].rstrip("%")) > 0 for r in rows[1:])  # every design steps faster than the teacher
    config = random_denoiser(name, 0.05).config
    kd = next(line for line in out.splitlines() if line.startswith("teacher cache of a 120-step trial"))
    family = family_of_config({**dict(config), "_class_name": type(random_denoiser(name, 0.05)).__name__})
    per_step = cache_bytes_per_step(config, 2, 8, 2, text_tokens=family.text_len or {"sd3-medium": 333,
                                                                                   "flux-dev": 512}[name],
                                    model_class=type(random_denoiser(name, 0.05)), family=family)
    assert f"{per_step / 2**20:.1f} MiB per step" in kd and "on disk" in kd
    assert "KD step of " in out and "memory after the KD check phase" in out


def test_a_synthetic_kd_batch_is_in_the_familys_conditioning():
    """Flux's packed tokens come back as a (B, 16, H, W) latent; SDXL's cond carries its added embeddings."""
    flux = random_denoiser("flux-dev", 0.05)
    batch = synthetic_batch(flux, family_of_config({**dict(flux.config), "_class_name": "FluxTransformer2DModel"}),
                            2, 8, 512)
    assert batch.noisy.shape == (2, 16, 8, 8) and set(batch.cond) == {"encoder_hidden_states", "pooled_projections"}
    sdxl = random_denoiser("sdxl", 0.05)
    batch = synthetic_batch(sdxl, family_of_config({**dict(sdxl.config), "_class_name": "UNet2DConditionModel"}),
                            2, 8, 77)
    assert set(batch.cond) == {"encoder_hidden_states", "text_embeds", "time_ids"}


def test_an_unknown_denoiser_only_teacher_is_one_line():
    with pytest.raises(BlocksearchError, match="the denoiser-only teachers are sdxl, sd3-medium, flux-dev"):
        random_denoiser("pixart-sigma")
