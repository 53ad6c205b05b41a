"""Tiny stand-ins for a real teacher's inputs (issue 11), built in seconds on the CPU with no network.

A random SD-format pipeline (SD-v1 block topology at tiny channels; not the toy, no judge), a captioned
imagefolder, an FID reference folder, a fake MS-COCO (captions json + images), Inception weights in
torch-fidelity's format and a tiny CLIP folder. All weights are random: they exercise the code paths,
they measure nothing.
"""

import json

import pytest
import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel,
                          CLIPTokenizer)

from tests.conftest import TINY

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
WORDS = ("red", "green", "blue", "cat", "dog", "boat", "on", "a", "the", "street", "beach", "table")
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, 2 OpenMP threads can be 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer written here (no download); 77 tokens, as SD pads to."""
    vocab = {BOS: 0, EOS: 1}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_ids(tok) -> dict:
    return dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)


def tiny_sd_pipeline() -> StableDiffusionPipeline:
    """Random weights, SD-v1 block topology: 32 px images -> 4x8x8 latents, 16-d text, PNDM like SD-v1.4."""
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(**TEXT, **_text_ids(tok))).eval()
    vae = AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=32)
    unet = UNet2DConditionModel(**dict(TINY, sample_size=8)).eval()
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def caption(i: int) -> str:
    return f"a {WORDS[i % 3]} {WORDS[3 + i % 3]} on the {WORDS[9 + i % 3]}"


def write_images(folder, n: int, seed: int, name="{i:03d}.png", size=(40, 36)) -> list[str]:
    """``n`` small random-colour images with a square in them; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    names = []
    for i in range(n):
        back, front = (torch.randint(0, 256, (2, 3), generator=gen)).tolist()
        image = Image.new("RGB", size, tuple(back))
        image.paste(tuple(front), (4 + i % 8, 4, 20 + i % 8, 20))
        names.append(name.format(i=i))
        image.save(folder / names[-1])
    return names


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    """The tiny pipeline saved as a diffusers folder with safetensors weights."""
    folder = tmp_path_factory.mktemp("real") / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def data_folder(tmp_path_factory):
    """A 32-image Hugging Face imagefolder with captions in metadata.jsonl."""
    folder = tmp_path_factory.mktemp("real") / "data"
    names = write_images(folder, 32, seed=1)
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f, "text": caption(i)}) + "\n" for i, f in enumerate(names)))
    return folder


@pytest.fixture(scope="session")
def reference_folder(tmp_path_factory):
    """Another 32 images, no captions: an FID reference set."""
    folder = tmp_path_factory.mktemp("real") / "reference"
    write_images(folder, 32, seed=2)
    return folder


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """A fake MS-COCO val2014: captions json in the COCO format (8 images, 2-3 captions each) + 8 jpgs."""
    root = tmp_path_factory.mktemp("coco")
    names = write_images(root / "val2014", 8, seed=3, name="COCO_val2014_{i:012d}.jpg", size=(48, 40))
    images = [{"id": 100 + i, "file_name": f, "height": 40, "width": 48} for i, f in enumerate(names)]
    annotations = [{"id": 1000 + 10 * i + k, "image_id": 100 + i, "caption": f"{caption(i + k)} {k}"}
                   for i in range(8) for k in range(2 + i % 2)]
    captions = root / "annotations" / "captions_val2014.json"
    captions.parent.mkdir()
    captions.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return captions, root / "val2014"


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """Inception weights in torch-fidelity's format with RANDOM values, to exercise the path only: the key
    names and shapes of FeatureExtractorInceptionV3's state dict, built without a download (~95 MB)."""
    from blocksearch.recipe.preflight import inception_skeleton

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(inception_skeleton("cpu").state_dict(), path)
    return path


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    """A tiny random CLIPModel (text + vision) with its processor and tokenizer, safetensors."""
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    config = CLIPConfig(text_config=dict(**TEXT, **_text_ids(tok)), projection_dim=8,
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    folder = tmp_path_factory.mktemp("real") / "tiny-clip"
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return folder
