"""Surgery: (teacher U-Net, Genome) -> Student, a plain diffusers U-Net initialised from the teacher.

The weight map is derived from the Genome, never tabulated per design (BK-SDM, arXiv 2305.15798,
Sec. 3.1, writes one table per variant):
- a down stage keeping k of n layers: student layer j <- teacher layer j (j < k);
- the tied up stage keeping m = k+1 of n+1 layers: student 0..m-2 <- teacher 0..m-2 and the student's
  last <- the teacher's last (its skip input has the stage's input width; BK keeps 0 and 2 of 3);
- a transformer keeping d of D blocks: student block t <- teacher block t (t < d), on the way down and, layer by
  layer, on the way up, where the depths may differ per layer (SSD-1B's up path keeps 4, 4 and 10 of 10: the first
  4 of the first two layers' ten, all of the last's);
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

from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.genome import Genome, Topology
from blocksearch.families.unet.topology import load_unet, topology_of

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
    cfg["reverse_transformer_layers_per_block"] = None if not genome.up else tuple(  # diffusers: in up-stage order
        tuple(up) if d else 1 for up, d in reversed(list(zip(genome.up_depths, genome.depth))))
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
    if kind != "upsamplers":
        j = up_source(j, genome.layers[stage] + 1, topo.layers[stage] + 1)
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


def up_source(j: int, kept: int, teacher: int) -> int:
    """The teacher layer that student layer ``j`` of an up stage keeping ``kept`` of ``teacher`` layers comes from:
    the first ``kept - 1`` in order, then the teacher's last (its skip input has the stage's input width)."""
    return j if j < kept - 1 else teacher - 1


def _check_fits(genome: Genome, topo: Topology) -> None:
    up_fits = all(d <= big[up_source(j, len(mine), len(big))] for mine, big in zip(genome.up_depths, topo.up_depths)
                  for j, d in enumerate(mine))
    if len(genome.layers) not in (topo.n_stages, topo.n_stages - 1) or any(
            k > n for k, n in zip(genome.layers, topo.layers)) or any(
            d > t for d, t in zip(genome.depth, topo.depth)) or not up_fits:
        raise BlocksearchError(f"genome {genome.id} does not fit the teacher topology {topo}")


def load_student(folder, teacher: UNet2DConditionModel) -> Student:
    """A saved student (``DIR/unet`` or a U-Net folder) to continue distilling: its Genome is read back
    from its config, and its KD pairs are derived against ``teacher`` as for a fresh cut."""
    unet = load_unet(folder, next(teacher.parameters()).device, what="--init", expected="a student folder "
                     "written by blocksearch distill/export or a diffusers U-Net folder")
    own, topo = topology_of(unet.config), topology_of(teacher.config)
    genome = Genome(own.layers, own.depth, own.mid, own.up)
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


def describe(genome: Genome, teacher_config) -> list[tuple[str, str]]:
    """(student module, the teacher module it comes from) for every module of the student (the weight map, built on
    the meta device)."""
    topo = topology_of(teacher_config)
    with torch.device("meta"):
        keys = UNet2DConditionModel.from_config(student_config(teacher_config, genome)).state_dict()
    return list({_module(k): _module(teacher_key(k, genome, topo)) for k in keys}.items())
