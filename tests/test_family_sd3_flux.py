"""SD3 / SD3.5 and Flux in the dit family: ``Batch.cond`` equal to the stock pipelines' ``encode_prompt``, Flux's
call equal to FluxPipeline's own, the teacher cache's bytes per step (computed = written; full size on the meta
device), and block removal keeping SD3's ``context_pre_only`` last block and SD3.5's dual-attention layers right."""

import json

import pytest
import torch
from PIL import Image
from diffusers import (FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline,
                       UNet2DConditionModel)

from blocksearch.families.base import family_of, get_family
from blocksearch.families.dit.family import FAMILY as DIT
from blocksearch.families.dit.genome import DitGenome, load_teacher_config
from blocksearch.families.dit.pipeline import T5_LEN, flux_ids
from blocksearch.families.dit.surgery import build_student
from blocksearch.families.unet.topology import ARCHITECTURES
from blocksearch.recipe.data import BatchStream, encode_images
from blocksearch.recipe.teacher_cache import cache_bytes_parts, open_cache
from blocksearch.toy.tiny_flux import save_tiny_flux, tiny_flux_pipeline
from blocksearch.toy.tiny_sd3 import TRANSFORMER as SD3_TINY, save_tiny_sd3, tiny_sd3_pipeline

CAPTIONS = ["a red circle", "", "a small blue square left of a large green triangle"]


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3_pipeline()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux_pipeline()


@torch.no_grad()  # as the pipelines' __call__ runs encode_prompt (CPU kernels differ with autograd on)
def test_sd3_cond_is_the_stock_encode_prompt(sd3):
    family = family_of(sd3)
    cond = family.encode_text(sd3, CAPTIONS)
    embeds, _, pooled, _ = sd3.encode_prompt(CAPTIONS, None, None, do_classifier_free_guidance=False,
                                             **family.call_kwargs(sd3))
    assert set(cond) == {"encoder_hidden_states", "pooled_projections"}
    assert torch.equal(cond["encoder_hidden_states"], embeds) and torch.equal(cond["pooled_projections"], pooled)
    assert embeds.shape[1] == family.text_tokens(sd3) == 16 + 16  # CLIP's context + T5's tokens


@torch.no_grad()
def test_flux_cond_and_ids_are_the_stock_ones(flux):
    family = family_of(flux)
    cond = family.encode_text(flux, CAPTIONS)
    embeds, pooled, text_ids = flux.encode_prompt(CAPTIONS, None, max_sequence_length=16)
    assert torch.equal(cond["encoder_hidden_states"], embeds) and torch.equal(cond["pooled_projections"], pooled)
    assert torch.equal(cond["guidance"], torch.full((3,), 3.5))  # FluxPipeline's default guidance_scale
    txt_ids, img_ids = flux_ids(embeds.shape[1], 8, 8, embeds)
    assert torch.equal(txt_ids, text_ids)
    assert torch.equal(img_ids, flux._prepare_latent_image_ids(3, 8, 8, "cpu", embeds.dtype))
    assert family.call_kwargs(flux) == {"max_sequence_length": 16, "height": 64, "width": 64}


@torch.no_grad()
def test_flux_forward_is_the_pipeline_call(flux):
    """Our call on (B, C, H, W) latents equals FluxPipeline's transformer call on its packed latents, unpacked."""
    family = family_of(flux)
    cond = family.encode_text(flux, CAPTIONS[:2])
    noisy, t = torch.randn(2, 4, 16, 16), torch.tensor([100, 800])
    ours = family.forward(flux.transformer, noisy, t, cond)
    packed = flux._pack_latents(noisy, 2, 4, 16, 16)
    txt_ids, _ = flux_ids(16, 8, 8, noisy)
    theirs = flux.transformer(hidden_states=packed, timestep=t / 1000, guidance=torch.full((2,), 3.5),
                              pooled_projections=cond["pooled_projections"],
                              encoder_hidden_states=cond["encoder_hidden_states"], txt_ids=txt_ids,
                              img_ids=flux._prepare_latent_image_ids(2, 8, 8, "cpu", noisy.dtype)).sample
    assert torch.equal(ours, flux._unpack_latents(theirs, 64, 64, flux.vae_scale_factor))


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_cache_bytes_per_step_is_what_the_cache_file_holds(which, sd3, flux, tmp_path):
    pipe = {"sd3": sd3, "flux": flux}[which]
    family = family_of(pipe)
    stream = BatchStream(pipe, "toy", 2, 0, tmp_path, family=family)
    cache = open_cache("tiny", pipe.transformer, stream, 1, tmp_path, dtype="fp16", family=family)
    with cache.path.open("rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    stored = {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    parts = cache_bytes_parts(pipe.transformer.config, 2, 16, 2, text_tokens=family.text_tokens(pipe),
                              model_class=type(pipe.transformer), family=family)
    assert parts["cond"] == sum(v for k, v in stored.items() if k == "text" or k.startswith("cond."))
    assert sum(parts.values()) == sum(stored.values())


@pytest.mark.slow  # the full-size models on the meta device: ~1 min on 2 shared cores
@pytest.mark.parametrize("teacher, text, cond", [
    ("sdxl", 77, 77 * 2048 + 1280 + 6),  # CLIP-L + CLIP-G states; CLIP-G's pooled projection; six time_ids
    ("sd3-medium", 333, (77 + 256) * 4096 + 2 * 1024),  # CLIP-L/G 77 + T5 256 tokens of 4096; pooled 768 + 1280
    ("flux-dev", 512, 512 * 4096 + 768 + 1)])  # T5 512 tokens of 4096; CLIP-L pooled 768; guidance
def test_cache_bytes_per_step_at_full_size(teacher, text, cond):
    """The conditioning's bytes per sample (fp32) at 1024 px: docs/families.md's table."""
    if teacher == "sdxl":
        config, cls, family = ARCHITECTURES["sdxl"], UNet2DConditionModel, get_family("sdxl")
    else:
        config = load_teacher_config(teacher)
        cls, family = {"sd3-medium": SD3Transformer2DModel, "flux-dev": FluxTransformer2DModel}[teacher], DIT
        family = family.for_teacher(config)
    parts = cache_bytes_parts(config, 1, 128, 2, text_tokens=text, model_class=cls, family=family)
    assert parts["cond"] == 4 * cond
    assert sum(parts.values()) == {"sdxl": 57_652_256, "sd3-medium": 310_599_688, "flux-dev": 1_445_989_388}[teacher]


def test_t5_len_is_the_pipelines_default_for_real_tokenizers(sd3):
    assert T5_LEN == {"SD3Transformer2DModel": 256, "FluxTransformer2DModel": 512}
    assert sd3.tokenizer_3.model_max_length == 16 and family_of(sd3).call_kwargs(sd3) == {"max_sequence_length": 16}


# -- surgery: SD3's context_pre_only last block, SD3.5's dual-attention layers -----------------------------------
def _sd35(blocks: int = 6, dual=(0, 1, 2)):
    torch.manual_seed(0)
    model = SD3Transformer2DModel(**{**SD3_TINY, "num_layers": blocks, "dual_attention_layers": dual}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("cut, dual", [("D1.2.4.5", (0, 1)), ("D0.3.5", (0,)), ("D3-5", ()), ("D0-2.4", (0, 1, 2))])
def test_sd35_dual_attention_follows_the_kept_blocks(cut, dual):
    teacher = _sd35()
    student = build_student(teacher, DitGenome.from_id(cut))
    model, kept = student.denoiser, student.genome.blocks("transformer_blocks")
    assert tuple(model.config.dual_attention_layers) == dual
    for i, t in enumerate(kept):
        assert model.transformer_blocks[i].use_dual_attention == teacher.transformer_blocks[t].use_dual_attention
        assert model.transformer_blocks[i].context_pre_only == (i == len(kept) - 1)
    t_state = teacher.state_dict()
    for key, value in model.state_dict().items():  # every tensor is its source block's, but the derived norm
        if key not in student.derived:
            block = key.split(".")
            if block[0] == "transformer_blocks":
                block[1] = str(kept[int(block[1])])
            assert torch.equal(value, t_state[".".join(block)]), key
    cond = dict(encoder_hidden_states=torch.randn(2, 5, 32), pooled_projections=torch.randn(2, 32))
    assert DIT.forward(model, torch.randn(2, 4, 16, 16), torch.tensor([1, 900]), cond).shape == (2, 4, 16, 16)


def test_sd35_student_reloads_in_the_stock_class(tmp_path):
    student = build_student(_sd35(), DitGenome.from_id("D1.4")).denoiser
    student.save_pretrained(tmp_path, safe_serialization=True)
    again = SD3Transformer2DModel.from_pretrained(tmp_path)
    assert tuple(again.config.dual_attention_layers) == (0,) and again.transformer_blocks[1].context_pre_only
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values()))


# -- the tiny pipelines' folders, offline -----------------------------------------------------------------------
def test_tiny_folders_load_in_the_stock_classes_offline(tmp_path):
    sd3 = StableDiffusion3Pipeline.from_pretrained(save_tiny_sd3(tmp_path / "sd3", dual_attention_layers=(0, 1)),
                                                   local_files_only=True)
    flux = FluxPipeline.from_pretrained(save_tiny_flux(tmp_path / "flux"), local_files_only=True)
    assert tuple(sd3.transformer.config.dual_attention_layers) == (0, 1) and flux.transformer.config.guidance_embeds
    assert sd3.tokenizer_3("a red circle").input_ids == flux.tokenizer_2("a red circle").input_ids == [3, 11, 6, 1]
    assert all(f.stat().st_size < 2**14 for f in (tmp_path / "flux" / "tokenizer_2").iterdir())


def test_imagefolder_latents_are_shifted_as_the_pipeline_decodes_them(flux, tmp_path):
    """A Flux teacher (no sample_size) encodes an imagefolder at its VAE's size; the latents are
    (z - shift_factor) * scaling_factor, which FluxPipeline's decode (z / scaling_factor + shift_factor) undoes."""
    for i in range(2):
        Image.new("RGB", (80, 80), (200 * i, 50, 100)).save(tmp_path / f"{i}.png")
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": "a red circle"})
                                                     + "\n" for i in range(2)))
    stream = BatchStream(flux, str(tmp_path), 2, 0, tmp_path / "cache", family=family_of(flux))
    latents, cond, _ = stream.clean(0)
    assert latents.shape == (2, 4, 16, 16) and cond["encoder_hidden_states"].shape == (2, 16, 32)
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    ours = encode_images(flux, images, torch.Generator().manual_seed(0))
    dist = flux.vae.encode(images).latent_dist
    raw = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(0))
    config = flux.vae.config
    assert config.shift_factor and torch.allclose(ours / config.scaling_factor + config.shift_factor, raw, atol=1e-6)
