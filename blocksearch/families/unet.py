"""Surgery: (teacher U-Net, Genome) -> Student, a plain diffusers U-Net initialised from the teacher.

The weight map is derived from the Genome, never tabulated per design (BK-SDM, arXiv 2305.15798,
Sec. 3.1, writes one table per variant):
- a down stage keeping k of n layers: student layer j <- teacher layer j (j < k);
- the tied up stage keeping m = k+1 of n+1 layers: student 0..m-2 <- teacher 0..m-2 and the student's
  last <- the teacher's last (its skip input has the stage's input width; BK keeps 0 and 2 of 3);
- a transformer keeping d of D blocks: student block t <- teacher block t (t < d);
- a removed innermost stage shifts the up stages (student up_blocks.i <- teacher up_blocks.i+1) and
  the new final down stage has no downsampler.
The same derivation gives the KD layer pairs: the output of every surviving stage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from blocksearch.recipe.cost import unet_inputs
from blocksearch.recipe.data import encode_text
from blocksearch.errors import BlocksearchError
from blocksearch.families.base import scheduler_target
from blocksearch.space import Genome, Topology
from blocksearch.teachers import load_unet, topology_of

log = logging.getLogger(__name__)

MID_TYPES = {"cross_attn": "UNetMidBlock2DCrossAttn", "resnet": "UNetMidBlock2D", "none": None}
# Config fields that diffusers reads per stage (an int applies to all stages).
PER_STAGE_KEYS = ("block_out_channels", "layers_per_block", "transformer_layers_per_block",
                  "attention_head_dim", "num_attention_heads", "only_cross_attention",
                  "cross_attention_dim")
_UP_KEY = re.compile(r"^up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)$")
_MODULE = re.compile(r"^((?:down_blocks|up_blocks)\.\d+\.(?:resnets|attentions|upsamplers|downsamplers)\.\d+"
                     r"|mid_block\.(?:resnets|attentions)\.\d+|[a-z_]+(?:\.\d+)?)")


@dataclass(frozen=True)
class Student:
    """A student U-Net with how it was made: config, weight map and KD layer pairs."""

    genome: Genome
    unet: UNet2DConditionModel
    weight_map: dict[str, str]  # student module -> teacher module (diffusers dotted names)
    fresh: tuple[str, ...]  # student tensors not copied from the teacher (empty for every move)
    kd_pairs: tuple[tuple[str, str], ...]  # (teacher module, student module): stage outputs

    @property
    def denoiser(self) -> UNet2DConditionModel:
        """The student U-Net under the family-neutral name the trial path uses."""
        return self.unet

    @property
    def config(self) -> dict:
        return dict(self.unet.config)


def student_config(teacher_config, genome: Genome) -> dict:
    """The diffusers config of the student: the teacher's with the Genome's blocks."""
    topo = topology_of(teacher_config)
    n_t, n = topo.n_stages, len(genome.layers)
    cfg = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    for key in PER_STAGE_KEYS:
        value = cfg.get(key)
        if isinstance(value, (list, tuple)) and len(value) == n_t:
            cfg[key] = tuple(value[:n])
    cfg["down_block_types"] = tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in genome.depth)
    cfg["up_block_types"] = tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(genome.depth))
    cfg["layers_per_block"] = tuple(genome.layers)
    depth = [d or 1 for d in genome.depth]  # unused for attention-free stages
    if not genome.depth[-1]:  # diffusers ties the mid block's depth to the last stage's entry
        depth[-1] = topo.mid_depth
    cfg["transformer_layers_per_block"] = tuple(depth)
    cfg["mid_block_type"] = MID_TYPES[genome.mid]
    return cfg


def teacher_key(key: str, genome: Genome, topo: Topology) -> str:
    """The teacher tensor a student tensor is initialised from (the derived weight map)."""
    match = _UP_KEY.match(key)
    if not match:
        return key  # down stages, mid block, embeddings and convs keep their names
    i, kind, j, rest = int(match[1]), match[2], int(match[3]), match[4]
    shift = topo.n_stages - len(genome.layers)
    stage = len(genome.layers) - 1 - i  # the down stage this up stage is tied to
    m, n_up = genome.layers[stage] + 1, topo.layers[stage] + 1
    if kind != "upsamplers" and j == m - 1:
        j = n_up - 1
    return f"up_blocks.{i + shift}.{kind}.{j}.{rest}"


def kd_pairs(genome: Genome, topo: Topology) -> tuple[tuple[str, str], ...]:
    """(teacher, student) modules whose outputs feature KD matches: every surviving stage."""
    n, shift = len(genome.layers), topo.n_stages - len(genome.layers)
    pairs = []
    for i in range(n):
        teacher = f"down_blocks.{i}"
        if shift and i == n - 1:  # the student's stage lost its downsampler: match the pre-downsample output
            last = topo.layers[i] - 1
            teacher += f".attentions.{last}" if topo.depth[i] else f".resnets.{last}"
        pairs.append((teacher, f"down_blocks.{i}"))
    if genome.mid != "none" and topo.mid != "none" and not shift:  # a shifted mid sees another resolution
        pairs.append(("mid_block", "mid_block"))
    pairs += [(f"up_blocks.{i + shift}", f"up_blocks.{i}") for i in range(n)]
    return tuple(pairs)


def kd_teacher_modules(topo: Topology) -> tuple[str, ...]:
    """Every teacher module that ``kd_pairs`` names for some Genome that fits ``topo`` (what the teacher
    cache stores). ``kd_pairs`` reads only the number of stages and whether the mid block is kept, so
    the union over the teacher's own layout and the layout with the innermost stage removed is all."""
    layouts = [Genome(topo.layers, topo.depth, topo.mid)]
    if topo.n_stages > 1:
        layouts.append(Genome(topo.layers[:-1], topo.depth[:-1], topo.mid))
    return tuple(dict.fromkeys(t for genome in layouts for t, _ in kd_pairs(genome, topo)))


def build_student(teacher: UNet2DConditionModel, genome: Genome) -> Student:
    """Cut ``teacher`` down to ``genome``; copy and shape-check every tensor; log the map."""
    topo = topology_of(teacher.config)
    _check_fits(genome, topo)
    param = next(teacher.parameters())
    with torch.device(param.device):
        unet = UNet2DConditionModel.from_config(student_config(teacher.config, genome))
    if param.dtype != torch.float32:
        unet.to(param.dtype)
    t_state, s_state = teacher.state_dict(), unet.state_dict()
    weight_map, fresh = {}, []
    with torch.no_grad():
        for key, tensor in s_state.items():
            source = teacher_key(key, genome, topo)
            if source not in t_state or t_state[source].shape != tensor.shape:
                fresh.append(key)
                continue
            if not tensor.is_meta:
                tensor.copy_(t_state[source])
            weight_map.setdefault(_module(key), _module(source))
    for s_mod, t_mod in weight_map.items():
        log.debug("weight map %s: %s <- %s", genome.id, s_mod, t_mod)
    if fresh:
        log.warning("%s: %d tensors freshly initialised: %s", genome.id, len(fresh), fresh[:5])
    return Student(genome, unet, weight_map, tuple(fresh), kd_pairs(genome, topo))


def _check_fits(genome: Genome, topo: Topology) -> None:
    if len(genome.layers) not in (topo.n_stages, topo.n_stages - 1) or any(
            k > n for k, n in zip(genome.layers, topo.layers)) or any(
            d > t for d, t in zip(genome.depth, topo.depth)):
        raise BlocksearchError(f"genome {genome.id} does not fit the teacher topology {topo}")


def load_student(folder, teacher: UNet2DConditionModel) -> Student:
    """A saved student (``DIR/unet`` or a U-Net folder) to continue distilling: its Genome is read back
    from its config, and its KD pairs are derived against ``teacher`` as for a fresh cut."""
    unet = load_unet(folder, next(teacher.parameters()).device, what="--init", expected="a student folder "
                     "written by blocksearch distill/export or a diffusers U-Net folder")
    own, topo = topology_of(unet.config), topology_of(teacher.config)
    genome = Genome(own.layers, own.depth, own.mid)
    _check_fits(genome, topo)
    expected = student_config(teacher.config, genome)
    as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    differ = [k for k in ("block_out_channels", "cross_attention_dim", "in_channels", "attention_head_dim")
              if as_tuple(expected.get(k)) != as_tuple(unet.config.get(k))]
    if differ:
        raise BlocksearchError(f"--init {folder}: {differ[0]} {unet.config.get(differ[0])} is not a cut of the "
                               f"teacher's ({expected.get(differ[0])}); distil it from the teacher it came from")
    return Student(genome, unet, {}, (), kd_pairs(genome, topo))


def _module(key: str) -> str:
    return _MODULE.match(key)[1]


# -- the report's and model card's words (report.py and model_card.py re-export them) -----------------------
MID_TEXT = {"cross_attn": "resnet + cross-attention transformer + resnet", "resnet": "2 resnets (no attention)",
            "none": "removed"}


def architecture_diff(genome: Genome, topo: Topology) -> str:
    """What ``genome`` removes from the teacher, e.g. 'down_blocks.1: 1 of 2 layers; up_blocks.2: 2 of 3;
    mid_block removed; down_blocks.3/up_blocks.0 removed'."""
    n_t, parts = topo.n_stages, []
    for i, (k, d) in enumerate(zip(genome.layers, genome.depth)):
        down, up, big_k, big_d = f"down_blocks.{i}", f"up_blocks.{n_t - 1 - i}", topo.layers[i], topo.depth[i]
        if k != big_k:
            parts.append(f"{down}: {k} of {big_k} layers; {up}: {k + 1} of {big_k + 1}")
        if big_d and not d:
            parts.append(f"{down}/{up}: attention removed")
        elif d != big_d:
            parts.append(f"{down}/{up}: transformer depth {d} of {big_d}")
    if genome.mid != topo.mid:
        parts.append("mid_block removed" if genome.mid == "none" else "mid_block: attention removed")
    if len(genome.layers) < n_t:
        parts.append(f"down_blocks.{n_t - 1}/up_blocks.0 removed")
    return "; ".join(parts) or "teacher (nothing removed)"


def architecture_table(genome: Genome, topo: Topology) -> list[tuple[str, str, str]]:
    """(teacher module, teacher's blocks, student's blocks) for every stage, down, mid and up."""
    n_t, n = topo.n_stages, len(genome.layers)

    def stage(layers: int, depth: int) -> str:
        return f"{layers} x (resnet + transformer depth {depth})" if depth else f"{layers} x resnet"

    rows = []
    for i in range(n_t):
        kept = stage(genome.layers[i], genome.depth[i]) if i < n else "removed"
        rows.append((f"down_blocks.{i}", stage(topo.layers[i], topo.depth[i]), kept))
    rows.append(("mid_block", MID_TEXT[topo.mid], MID_TEXT[genome.mid]))
    for j in range(n_t):
        i = n_t - 1 - j  # the down stage this up stage is tied to by the skip connections
        kept = "removed" if i >= n else stage(genome.layers[i] + 1, genome.depth[i])
        if i < n and n < n_t:
            kept += f" (student up_blocks.{j - (n_t - n)})"
        rows.append((f"up_blocks.{j}", stage(topo.layers[i] + 1, topo.depth[i]), kept))
    return rows


def removed(genome: Genome, topo: Topology) -> dict[str, str]:
    """What the student removed, per teacher module (diffusers paths); modules kept whole are absent."""
    n_t, n, out = topo.n_stages, len(genome.layers), {}

    def stage(layers: int, kept: int, depth: int, kept_depth: int) -> str:
        parts = [f"{layers - kept} of {layers} layers"] if kept < layers else []
        if depth and not kept_depth:
            parts.append("attention")
        elif kept_depth < depth:
            parts.append(f"transformer depth {depth} -> {kept_depth}")
        return ", ".join(parts)

    for i in range(n_t):
        j = n_t - 1 - i  # the up stage tied to down stage i
        if i >= n:
            out[f"down_blocks.{i}"] = out[f"up_blocks.{j}"] = "the whole stage"
            continue
        out[f"down_blocks.{i}"] = stage(topo.layers[i], genome.layers[i], topo.depth[i], genome.depth[i])
        out[f"up_blocks.{j}"] = stage(topo.layers[i] + 1, genome.layers[i] + 1, topo.depth[i], genome.depth[i])
    if genome.mid != topo.mid:
        out["mid_block"] = {"none": "the whole block", "resnet": "attention"}.get(
            genome.mid, f"{MID_TEXT[topo.mid]} -> {MID_TEXT[genome.mid]}")
    return {k: v for k, v in out.items() if v}


class UNetFamily:
    """SD's ``UNet2DConditionModel`` as a family (families/base.py): the functions above behind one object."""

    name = "unet"
    subfolder = "unet"
    pipeline_class = "StableDiffusionPipeline"
    denoiser_name = "U-Net"

    def topology(self, denoiser_config) -> Topology:
        return topology_of(denoiser_config)

    def student_config(self, teacher_config, arch: Genome) -> dict:
        return student_config(teacher_config, arch)

    def build_student(self, teacher_denoiser: UNet2DConditionModel, arch: Genome) -> Student:
        return build_student(teacher_denoiser, arch)

    def kd_pairs(self, arch: Genome, topology: Topology) -> tuple[tuple[str, str], ...]:
        return kd_pairs(arch, topology)

    def forward_inputs(self, config, batch: int = 1, latent_size: int | None = None, device="meta",
                       dtype=torch.float32, text_len: int = 77) -> dict:
        return unet_inputs(config, batch, latent_size, device, dtype, text_len)

    def describe(self, arch: Genome, teacher_config) -> list[tuple[str, str]]:
        topo = topology_of(teacher_config)
        with torch.device("meta"):
            keys = UNet2DConditionModel.from_config(student_config(teacher_config, arch)).state_dict()
        return list({_module(k): _module(teacher_key(k, arch, topo)) for k in keys}.items())

    def training_target(self, scheduler, latents, noise, timesteps):
        return scheduler_target(scheduler, latents, noise, timesteps)

    def arch_from_id(self, text: str) -> Genome:
        return Genome.from_id(text)

    def forward(self, denoiser, noisy, timesteps, batch) -> torch.Tensor:
        return denoiser(noisy, timesteps, batch.text).sample

    def kd_feature(self, output) -> torch.Tensor:
        """A stage's output: down blocks return (hidden states, skips), the U-Net an output object."""
        if isinstance(output, tuple):
            return output[0]
        return output.sample if hasattr(output, "sample") else output

    def kd_teacher_modules(self, topology: Topology) -> tuple[str, ...]:
        return kd_teacher_modules(topology)

    def encode_text(self, pipeline, captions):
        return encode_text(pipeline, captions), None

    def text_tokens(self, pipeline) -> int:
        return 77  # SD's CLIP context, as cost.py and latency.py count every U-Net (the toy's 16 included)

    def call_kwargs(self, pipeline) -> dict:
        return {}

    def architecture_diff(self, arch: Genome, topology: Topology) -> str:
        return architecture_diff(arch, topology)

    def architecture_table(self, arch: Genome, topology: Topology) -> list[tuple[str, str, str]]:
        return architecture_table(arch, topology)

    def removed(self, arch: Genome, topology: Topology) -> dict[str, str]:
        return removed(arch, topology)


FAMILY = UNetFamily()
