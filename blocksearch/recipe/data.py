"""KD training data: a fixed, seeded stream of batches (noisy latent, timestep, text embedding, target).

Sources: the toy world's generator, or a user's folder of captioned images in the Hugging Face
``imagefolder`` layout (``metadata.jsonl`` or ``metadata.csv`` with ``file_name`` and ``text``
columns), whose VAE latents and text embeddings (as the teacher's family encodes them) are encoded once and
cached on disk (checked on read, rebuilt when corrupt: blocksearch/cache.py). Noise follows the teacher's
training schedule (DDPM forward process, Ho et al. 2020, or rectified flow's straight line for SD3 / Flux);
the target is the family's (``training_target``): the noise (epsilon prediction), the velocity (v-prediction,
Salimans & Ho 2022) or the flow, as the scheduler says.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from blocksearch.cache import checked, default_cache_dir, file_lock, lock_path, write_checked
from blocksearch.console import quiet
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import DEFAULT_FAMILY, Family, add_noise, is_flow
from blocksearch.settings import CAPTION_DROPOUT
from blocksearch.toy.world import sample_batch

CAPTION_COLUMNS = ("text", "caption")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


# ``Batch.cond`` entries under the names the dataset and teacher cache files have always used; others ``cond.<key>``.
STORED_AS = {"encoder_hidden_states": "text", "encoder_attention_mask": "mask"}
_COND_OF = {v: k for k, v in STORED_AS.items()}


def stored_name(key: str) -> str:
    """The name a ``Batch.cond`` entry has in a cache file (the files of earlier versions read the same)."""
    return STORED_AS.get(key, f"cond.{key}")


def cond_key(stored: str) -> str | None:
    """The ``Batch.cond`` entry of a cache file's tensor, or None where the tensor is not conditioning."""
    return _COND_OF.get(stored) or (stored[5:] if stored.startswith("cond.") else None)


@dataclass(frozen=True)
class Batch:
    """One KD batch: the student and teacher both see (noisy, timesteps, cond); target is eps, v or flow.
    ``cond``: the family's conditioning dict (``Family.encode_text``; read only by ``Family.forward``)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    cond: dict[str, torch.Tensor]
    target: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.noisy.to(device), self.timesteps.to(device), {k: v.to(device) for k, v in self.cond.items()},
                     self.target.to(device))

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` of every tensor (a micro-batch)."""
        return Batch(self.noisy[start:stop], self.timesteps[start:stop],
                     {k: v[start:stop] for k, v in self.cond.items()}, self.target[start:stop])

    def unconditional(self, empty: dict[str, torch.Tensor]) -> "Batch":
        """This batch with every caption replaced by the empty one (classifier-free guidance's other branch):
        ``empty`` is the family's cond of ``[""]``, every entry expanded to the batch."""
        cond = {k: empty[k].to(v.device).expand_as(v) for k, v in self.cond.items()}
        return Batch(self.noisy, self.timesteps, cond, self.target)


def drop_captions(cond: dict[str, torch.Tensor], empty: dict[str, torch.Tensor], drop: torch.Tensor) -> dict:
    """``cond`` with the rows where ``drop`` holds replaced by the empty caption's (caption dropout)."""
    return {k: torch.where(drop.view(-1, *[1] * (v.dim() - 1)), empty[k], v) for k, v in cond.items()}


def text_encoders(pipe) -> list[torch.nn.Module]:
    """The pipeline's text encoders in diffusers' order (SD: one; SDXL: two; SD3: three; Flux: two)."""
    return [e for e in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
            if e is not None]


def fingerprint(*modules: torch.nn.Module) -> str:
    """A cheap, stable identity of weights: names, shapes and the leading values of every tensor."""
    h = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            h.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class BatchStream:
    """Batch ``i`` of the stream is a pure function of (teacher, data, seed, batch size, i)."""

    def __init__(self, pipeline, data: str = "toy", batch_size: int = 16, seed: int = 0,
                 cache_dir: Path | None = None, resolution: int | None = None, *, family: Family):
        self.pipe, self.data, self.batch_size, self.seed = pipeline, data, batch_size, seed
        self.family = family
        flow = is_flow(pipeline.scheduler)  # SD3, Flux: the straight-line forward process (families/base.py)
        self.scheduler = (type(pipeline.scheduler) if flow else DDPMScheduler).from_config(pipeline.scheduler.config)
        self.prediction_type = "flow" if flow else self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "flow"):
            raise BlocksearchError(f"teacher scheduler prediction_type {self.prediction_type!r} is not "
                                   f"supported; allowed: epsilon, v_prediction, or a flow-matching scheduler")
        if data == "toy" and resolution is not None:
            raise BlocksearchError(f"resolution {resolution} applies to an imagefolder --data; the toy world's "
                                   f"images have their own size")
        self.folder = None if data == "toy" else ImageFolder(data, pipeline, cache_dir or default_cache_dir(),
                                                               resolution, family=family)
        self._empty = None

    @property
    def identity(self) -> dict:
        return {"data": self.data if self.folder is None else self.folder.identity, "seed": self.seed,
                "batch_size": self.batch_size, "prediction_type": self.prediction_type,
                "caption_dropout": CAPTION_DROPOUT,
                "encoders": fingerprint(self.pipe.vae, *text_encoders(self.pipe))}

    @torch.no_grad()
    def __getitem__(self, i: int) -> Batch:
        gen = torch.Generator().manual_seed(hash_seed(self.seed, i))
        latents, cond = self._draw(i, gen)
        drop = torch.rand(len(latents), generator=gen) < CAPTION_DROPOUT
        cond = drop_captions(cond, self.empty_cond(), drop)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
        noisy = add_noise(self.scheduler, latents, noise, t)
        target = self.family.training_target(self.scheduler, latents, noise, t)
        return Batch(noisy, t, cond, target)

    @torch.no_grad()
    def clean(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Batch ``i``'s clean latents, cond (no caption dropped) and noise, as ``self[i]`` draws them."""
        gen = torch.Generator().manual_seed(hash_seed(self.seed, i))
        latents, cond = self._draw(i, gen)
        torch.rand(len(latents), generator=gen)  # the caption-dropout draw of ``self[i]``: the same noise follows
        return latents, cond, torch.randn(latents.shape, generator=gen)

    def _draw(self, i: int, gen: torch.Generator):
        if self.folder is not None:
            return self.folder.sample(self.batch_size, gen)
        images, captions, _ = sample_batch(self.batch_size, 0xD157 + self.seed, i)
        latents = encode_images(self.pipe, images, gen)
        return latents, self.family.encode_text(self.pipe, captions)

    def empty_cond(self) -> dict[str, torch.Tensor]:
        """The empty caption's cond (the family's ``encode_text([""])``): caption dropout and the CFG branch."""
        if self._empty is None:
            self._empty = self.family.encode_text(self.pipe, [""])
        return self._empty


def hash_seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


@torch.no_grad()
def encode_images(pipe, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Images in [-1, 1] -> VAE latents (one sample of the posterior), shifted and scaled as the pipeline's decode
    undoes it: ``(z - shift_factor) * scaling_factor`` (SD3's and Flux's VAEs have a shift; SD's none)."""
    vae = pipe.vae
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    noise = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((dist.mean + dist.std * noise).float().cpu() - shift) * vae.config.scaling_factor


class ImageFolder:
    """A Hugging Face imagefolder of captioned images, encoded once (VAE latents + text embeddings)."""

    def __init__(self, root: str, pipe, cache_dir: Path, resolution: int | None = None, *, family: Family):
        self.root = Path(root)
        self.family = family
        denoiser = getattr(pipe, self.family.subfolder)
        sample = denoiser.config.get("sample_size")  # Flux's transformer has none: its VAE's image size
        self.size = resolution or (sample * pipe.vae_scale_factor if sample else pipe.vae.config.sample_size)
        if not self.root.is_dir():
            raise BlocksearchError(f"dataset folder {root} does not exist; pass 'toy' or an imagefolder "
                                   f"(images + metadata.jsonl or metadata.csv with file_name and text)")
        self.items = read_metadata(self.root)
        meta = next(p for p in (self.root / "metadata.jsonl", self.root / "metadata.csv") if p.exists())
        stat = meta.stat()
        self.identity = {"folder": str(self.root.resolve()), "items": len(self.items),
                         "metadata": [stat.st_size, int(stat.st_mtime)], "resolution": self.size}
        own = [] if self.family.name == DEFAULT_FAMILY else [self.family.name]  # the keys of earlier versions' files
        key = hashlib.sha256(json.dumps([self.identity, fingerprint(pipe.vae, *text_encoders(pipe)), *own])
                             .encode()).hexdigest()[:16]
        path = cache_dir / f"dataset-{key}.safetensors"
        with file_lock(lock_path(path.stem, cache_dir)):  # one process encodes, the others wait and read it
            if not checked(path):  # missing, or corrupt: moved aside (one line) and encoded again
                tensors = self._encode(pipe)
                write_checked(path, lambda tmp: save_file(tensors, tmp),
                              sum(t.numel() * t.element_size() for t in tensors.values()))
            cached = load_file(path)
        self.latents = cached["latents"]
        self.cond = {cond_key(k): v for k, v in cached.items() if cond_key(k)}

    def _encode(self, pipe) -> dict[str, torch.Tensor]:
        size = self.size
        gen = torch.Generator().manual_seed(0)
        latents, conds = [], []
        for i in tqdm(range(0, len(self.items), 16), desc="encode dataset", unit="batch", disable=quiet()):
            chunk = self.items[i:i + 16]
            images = torch.stack([load_image(self.root / f, size) for f, _ in chunk])
            latents.append(encode_images(pipe, images, gen))
            conds.append(self.family.encode_text(pipe, [c for _, c in chunk]))
        return {"latents": torch.cat(latents).contiguous()} | {
            stored_name(k): torch.cat([c[k] for c in conds]).contiguous() for k in conds[0]}

    def sample(self, n: int, gen: torch.Generator):
        idx = torch.randint(0, len(self.latents), (n,), generator=gen)
        return self.latents[idx], {k: v[idx] for k, v in self.cond.items()}


def read_metadata(root: Path) -> list[tuple[str, str]]:
    """(file_name, caption) rows of metadata.jsonl / metadata.csv; a clear error when captions are missing."""
    jsonl, table = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.exists():
        try:
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        except ValueError as err:
            raise BlocksearchError(f"{jsonl}: not JSON lines ({err})") from None
    elif table.exists():
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        raise BlocksearchError(
            f"dataset folder {root} has no captions: expected metadata.jsonl or metadata.csv with "
            f"columns file_name and text (Hugging Face imagefolder layout)")
    source = jsonl if jsonl.exists() else table
    column = next((c for c in CAPTION_COLUMNS if rows and c in rows[0]), None)
    if not rows or "file_name" not in rows[0] or column is None:
        raise BlocksearchError(f"{source}: needs columns file_name and a caption column "
                               f"({' or '.join(CAPTION_COLUMNS)}); found {sorted(rows[0]) if rows else 'no rows'}")
    items = [(r["file_name"], str(r[column])) for r in rows]
    missing = [f for f, _ in items if not (root / f).is_file()]
    if missing:
        raise BlocksearchError(f"{source}: {len(missing)} images are missing, e.g. {root / missing[0]}")
    return items


def load_image(path: Path, size: int) -> torch.Tensor:
    """RGB image -> (3, size, size) in [-1, 1]: resize the short side, centre-crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = size / min(im.size)
        im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                       Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return x.permute(2, 0, 1).float().div(127.5).sub(1)
