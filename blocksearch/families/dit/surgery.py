"""Surgery for transformer denoisers (family ``dit``): (teacher transformer, DitGenome) -> DitStudent.

Depth pruning as in TinyFusion (arXiv 2412.01199) and Freepik's Flux.1-Lite: the student is the teacher's
diffusers config with fewer blocks (``num_layers``, Flux's ``num_single_layers``), and the weight map is derived
from the genome: student block i <- teacher block kept[i] in each group, every other tensor copied by name.
One exception, derived rather than copied: SD3's last joint block only reads the text stream
(``context_pre_only``), so when a student's last block comes from an inner teacher block, its
``norm1_context`` (AdaLayerNormContinuous: scale, shift) is the teacher block's AdaLayerNormZero rows for
(scale_msa, shift_msa) — the same modulation of the text tokens that the teacher block applied.
KD pairs: student block i with teacher block kept[i], plus the final projection (the output before unpatchify).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from blocksearch.errors import BlocksearchError
from blocksearch.families.dit.genome import GROUPS, DitGenome, DitTopology, topology_of

log = logging.getLogger(__name__)

_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.*)$")
_MODULE = re.compile(r"^((?:single_)?transformer_blocks\.\d+|[A-Za-z_0-9]+)")


@dataclass(frozen=True)
class DitStudent:
    """A student transformer with how it was made: config, weight map and KD pairs."""

    genome: DitGenome
    denoiser: torch.nn.Module
    weight_map: dict[str, str]  # student module -> teacher module (diffusers dotted names)
    derived: tuple[str, ...]  # student tensors computed from a teacher tensor rather than copied (SD3's last block)
    kd_pairs: tuple[tuple[str, str], ...]  # (teacher module, student module)
    fresh: tuple[str, ...] = ()  # as the U-Net's Student: always empty here, every tensor is copied or derived

    @property
    def unet(self) -> torch.nn.Module:
        """The denoiser under the name distill.py uses today."""
        return self.denoiser

    @property
    def config(self) -> dict:
        return dict(self.denoiser.config)


def model_topology(model: torch.nn.Module) -> DitTopology:
    """A model's topology (its class from the object: ``model.config`` has no ``_class_name``)."""
    return topology_of({**dict(model.config), "_class_name": type(model).__name__})


def student_config(teacher_config, genome: DitGenome) -> dict:
    """The diffusers config of the student: the teacher's with fewer blocks per group (SD3.5's dual-attention
    block indices follow the kept blocks)."""
    topo = topology_of(teacher_config)
    check_fits(genome, topo)
    cfg = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    for group in topo.groups:
        cfg[GROUPS[group][1]] = len(genome.blocks(group))
    if cfg.get("dual_attention_layers"):
        dual = set(cfg["dual_attention_layers"])
        cfg["dual_attention_layers"] = tuple(i for i, t in enumerate(genome.blocks("transformer_blocks")) if t in dual)
    return cfg


def check_fits(genome: DitGenome, topo: DitTopology) -> None:
    if genome.groups != topo.groups or any(genome.blocks(g)[-1] >= topo.depth(g) for g in topo.groups):
        raise BlocksearchError(f"genome {genome.id} does not fit the teacher ({topo.model_class}, blocks per group "
                               f"{dict(topo.depths)})")


def teacher_key(key: str, genome: DitGenome) -> str:
    """The teacher tensor a student tensor comes from: block i of a group <- block kept[i]; others by name."""
    match = _BLOCK.match(key)
    if not match:
        return key
    return f"{match[1]}.{genome.blocks(match[1])[int(match[2])]}.{match[3]}"


def kd_pairs(genome: DitGenome, topo: DitTopology) -> tuple[tuple[str, str], ...]:
    """(teacher, student) modules whose outputs feature KD matches: each kept block with the teacher block it
    came from, and the final projection."""
    pairs = [(f"{g}.{t}", f"{g}.{i}") for g in topo.groups for i, t in enumerate(genome.blocks(g))]
    final = final_module(topo.model_class)
    return tuple(pairs + [(final, final)])


def kd_teacher_modules(topo: DitTopology) -> tuple[str, ...]:
    """Every teacher module some genome pairs with (what a teacher cache would store): all blocks, the output."""
    return tuple(f"{g}.{i}" for g, n in topo.depths for i in range(n)) + (final_module(topo.model_class),)


def final_module(model_class: str) -> str:
    return "proj_out_2" if model_class == "DiTTransformer2DModel" else "proj_out"


def block_feature(out) -> torch.Tensor:
    """The image-stream hidden states of a block's output: joint blocks (SD3, Flux) return
    ``(encoder_hidden_states, hidden_states)``; PixArt / DiT blocks and projections return a tensor."""
    return out[-1] if isinstance(out, tuple) else out


def build_student(teacher: torch.nn.Module, genome: DitGenome) -> DitStudent:
    """Cut ``teacher`` down to ``genome``; copy and shape-check every tensor; every student key is mapped."""
    topo = model_topology(teacher)
    param = next(teacher.parameters())
    with torch.device(param.device):
        student = type(teacher).from_config(student_config(teacher.config, genome))
    if param.dtype != torch.float32:
        student.to(param.dtype)
    student.train(teacher.training)  # DiT's label dropout, PixArt's dropout: the mode follows the teacher's
    t_state, weight_map, derived = teacher.state_dict(), {}, []
    last = f"transformer_blocks.{len(genome.blocks('transformer_blocks')) - 1}.norm1_context.linear."
    with torch.no_grad():
        for key, tensor in student.state_dict().items():
            source = teacher_key(key, genome)
            value = t_state.get(source)
            if value is not None and key.startswith(last) and value.shape[0] == 3 * tensor.shape[0]:
                shift, scale = value.chunk(6, dim=0)[:2]  # AdaLayerNormZero rows: shift, scale, gate, ... (x2)
                value = torch.cat([scale, shift], dim=0)  # AdaLayerNormContinuous rows: scale, shift
                derived.append(key)
            if value is None or value.shape != tensor.shape:
                raise BlocksearchError(f"{genome.id}: student tensor {key} {tuple(tensor.shape)} has no teacher tensor "
                                       f"of that shape ({source}); not a {topo.model_class} this surgery knows")
            if not tensor.is_meta:
                tensor.copy_(value)
            weight_map.setdefault(_MODULE.match(key)[1], _MODULE.match(source)[1])
    for s_mod, t_mod in weight_map.items():
        log.debug("weight map %s: %s <- %s", genome.id, s_mod, t_mod)
    return DitStudent(genome, student, weight_map, tuple(derived), kd_pairs(genome, topo))


def describe(genome: DitGenome, teacher_config) -> list[tuple[str, str]]:
    """(student block, the teacher block it came from) for every kept block."""
    topo = topology_of(teacher_config)
    check_fits(genome, topo)
    return [(f"{g}.{i}", f"{g}.{t}") for g in topo.groups for i, t in enumerate(genome.blocks(g))]
