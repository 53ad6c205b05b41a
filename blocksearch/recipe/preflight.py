"""Preflight: a real teacher's inputs are checked before Ray starts -- each problem one line, exit 2.

A wrong folder must cost one line, never N failed trials (docs/design.md, "Real teachers"). Every check
raises ``BlocksearchError`` naming the path, what is wrong and what is allowed; ``check_real_inputs``
runs all of them and reports every problem, one per line.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from transformers import CLIPModel, CLIPProcessor
from transformers.utils import logging as hf_logging

from blocksearch.recipe.data import IMAGE_SUFFIXES, read_metadata
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import DEFAULT_FAMILY, FAMILIES, family_name_of, get_family
from blocksearch.families.unet.topology import ARCHITECTURES
from blocksearch.teachers import TOY_TEACHERS

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's inception-v3-compat
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# component -> (config file, weights file); None: no weights (tokenizer, scheduler). The denoiser's row is the
# U-Net's (SD_DENOISER); a transformer teacher's folder has its family's subfolder in its place.
SD_DENOISER = FAMILIES[DEFAULT_FAMILY].subfolder
SD_COMPONENTS = {
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("tokenizer_config.json", None),
    "scheduler": ("scheduler_config.json", None),
}
# the parts a pipeline has where its model_index.json names them (SDXL's second text encoder and tokenizer)
MORE_COMPONENTS = {
    "text_encoder_2": ("config.json", "model.safetensors"),
    "tokenizer_2": ("tokenizer_config.json", None),
}


def check_teacher_folder(path) -> None:
    """A diffusers Stable Diffusion folder: model_index.json and the five parts, weights as safetensors (a
    transformer teacher's folder: ``transformer/`` in the U-Net's place; SDXL's: also the second text encoder and
    tokenizer its model_index.json names)."""
    root = Path(path)
    if not root.is_dir():
        raise BlocksearchError(f"teacher folder {root} does not exist; expected a diffusers StableDiffusionPipeline "
                               f"folder (save_pretrained): model_index.json, {', '.join(SD_COMPONENTS)}")
    index = _read_json(root / "model_index.json", "teacher folder")
    family = family_name_of(p.name for p in root.iterdir() if p.is_dir())
    denoiser = FAMILIES[family].subfolder
    named = {k: v for k, v in MORE_COMPONENTS.items() if isinstance(index.get(k), list) and index[k][0] is not None}
    for part, (config, weights) in (SD_COMPONENTS | named).items():
        part = denoiser if part == SD_DENOISER else part
        if not (root / part).is_dir():
            raise BlocksearchError(f"teacher folder {root} has no {part}/; a diffusers SD folder has "
                                   f"model_index.json and {'/, '.join(SD_COMPONENTS)}/")
        _read_json(root / part / config, "teacher folder")
        if weights:
            _check_weights(root / part, weights)
    _check_unet_topology(root / denoiser / "config.json", family)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BlocksearchError(f"{what} {path.parent} has no {path.name}; expected a diffusers folder "
                               f"(save_pretrained) with {path.name}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise BlocksearchError(f"{path}: not valid JSON ({type(err).__name__})") from None


def _check_weights(folder: Path, name: str) -> None:
    """The plain safetensors file (or its shard index); refuse pickles, which torch.load would execute."""
    if (folder / name).is_file() or (folder / f"{name}.index.json").is_file():
        return
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    other = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if other:
        why = f"only {other[0]} (a variant file); blocksearch loads the plain {name}"
    elif pickles:
        why = (f"only pickled weights ({pickles[0]}), which blocksearch refuses to load (unpickling runs code); "
               f"convert them to {name} (safetensors)")
    else:
        why = f"no weights; expected {name}"
    raise BlocksearchError(f"teacher folder {folder.parent}: {folder.name}/ has {why}")


def _check_unet_topology(config: Path, family: str) -> None:
    """The denoiser's blocks are ones surgery knows (``family``'s: a U-Net's, or a transformer class of dit's)."""
    read = get_family(family).topology
    try:
        read(_read_json(config, "teacher folder"))
    except (BlocksearchError, KeyError) as err:
        raise BlocksearchError(f"{config}: {err}") from None


def check_data_folder(path) -> None:
    """A Hugging Face imagefolder: images + metadata.jsonl/.csv (file_name, text), every image there."""
    root = Path(path)
    if not root.is_dir():
        raise BlocksearchError(f"dataset folder {root} does not exist; pass 'toy' or an imagefolder "
                               f"(images + metadata.jsonl or metadata.csv with file_name and text)")
    items = read_metadata(root)  # names the metadata file when columns or images are missing
    odd = [f for f, _ in items if Path(f).suffix.lower() not in IMAGE_SUFFIXES]
    if odd:
        raise BlocksearchError(f"dataset folder {root}: {odd[0]} is not an image; allowed suffixes: "
                               f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    if not any(caption.strip() for _, caption in items):
        raise BlocksearchError(f"dataset folder {root}: all {len(items)} captions are empty; KD needs at least one")


def check_captions(path, needed: int) -> None:
    """An imagefolder with at least ``needed`` captions: the evaluation's prompts are its first ``needed``."""
    root = Path(path)
    found = len(read_metadata(root))  # names the metadata file when columns or images are missing
    if found < needed:
        raise BlocksearchError(f"captions of {root}: {found} rows, but the evaluation asks for {needed} prompts; "
                               f"allowed: --eval-prompts {found} or fewer, or a folder with more captions")


def reference_count(path) -> int:
    """Images of a reference folder: the rows of its metadata if it has one, else the image files in it."""
    root = Path(path)
    if (root / "metadata.jsonl").is_file() or (root / "metadata.csv").is_file():
        return len(read_metadata(root))
    return len(image_files(root))


def image_files(root: Path) -> list[Path]:
    """Image files directly in ``root``, sorted by name."""
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_reference_folder(path, needed: int) -> None:
    """An FID reference folder with at least ``needed`` images."""
    root = Path(path)
    if not root.is_dir():
        raise BlocksearchError(f"reference folder {root} does not exist; expected a folder of real images "
                               f"({', '.join(sorted(IMAGE_SUFFIXES))}) or an imagefolder with metadata")
    found = reference_count(root)
    if found < needed:
        raise BlocksearchError(f"reference folder {root} has {found} images; FID here needs at least {needed} "
                               f"(allowed: {', '.join(sorted(IMAGE_SUFFIXES))} files directly in it)")


def inception_skeleton(device: str = "meta") -> torch.nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3, built without its weights (no download).

    Its constructor always loads a state dict; hand it an empty one from memory and skip the load."""
    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.device(device):
        return Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=empty)


def check_inception_weights(path) -> None:
    """Open the file as torch-fidelity would, but safely: a plain tensor dict with Inception's keys and shapes.

    torch-fidelity unpickles the file (``torch.load(weights_only=False)``), so blocksearch first opens
    it with ``torch.load(weights_only=True)`` and refuses anything that is not a plain tensor dict."""
    file, allowed = Path(path), f"expected torch-fidelity's {INCEPTION_FILE}"
    if not file.is_file():
        raise BlocksearchError(f"Inception weights {file} do not exist; {allowed}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as err:
        raise BlocksearchError(f"Inception weights {file} do not open with torch.load(weights_only=True) "
                               f"({type(err).__name__}); refused, since torch-fidelity would unpickle them; "
                               f"{allowed}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BlocksearchError(f"Inception weights {file} hold a {type(state).__name__}, not a plain dict of "
                               f"tensors; {allowed}")
    expected = {k: tuple(v.shape) for k, v in inception_skeleton().state_dict().items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra else
                f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, not {expected[wrong[0]]}")
        raise BlocksearchError(f"Inception weights {file} do not match FeatureExtractorInceptionV3 ({what}; "
                               f"{len(missing)} missing, {len(extra)} unexpected, {len(wrong)} misshapen); {allowed}")


def check_clip_model(path) -> None:
    """A local CLIP folder that transformers' CLIPModel and CLIPProcessor load offline from safetensors."""
    folder = Path(path)
    if not folder.is_dir():
        raise BlocksearchError(f"CLIP model folder {folder} does not exist; expected a local folder that "
                               f"CLIPModel and CLIPProcessor load (config, model.safetensors, processor files)")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a check prints its verdict only
    try:
        CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BlocksearchError(f"CLIP model folder {folder} does not load offline with CLIPModel + CLIPProcessor "
                               f"({type(err).__name__}); expected config.json, model.safetensors and the "
                               f"processor files (save_pretrained)") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def check_real_inputs(teacher=None, data=None, reference=None, inception_weights=None, clip_model=None,
                      fid_images: int = 2) -> None:
    """Every check above for whatever is given; all problems at once, one line each.

    ``teacher`` is checked when it names a folder; toy, the meta architectures and hub ids (owner/name,
    resolved in the local Hugging Face cache) are teachers.py's to load."""
    checks = []
    if teacher is not None and _is_folder_spec(str(teacher)):
        checks.append(lambda: check_teacher_folder(teacher))
    if data is not None and data != "toy":
        checks.append(lambda: check_data_folder(data))
    if reference is not None:
        checks.append(lambda: check_reference_folder(reference, fid_images))
    if inception_weights is not None:
        checks.append(lambda: check_inception_weights(inception_weights))
    if clip_model is not None:
        checks.append(lambda: check_clip_model(clip_model))
    problems = []
    for check in checks:  # every check, so that one run shows every problem
        try:
            check()
        except BlocksearchError as err:
            problems.append(str(err))
    if problems:
        raise BlocksearchError("\n".join(problems))


def _is_folder_spec(spec: str) -> bool:
    if spec in TOY_TEACHERS or spec in ARCHITECTURES:
        return False
    hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    return Path(spec).exists() or not hub_id
