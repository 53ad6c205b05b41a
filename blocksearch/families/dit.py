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

import diffusers
import torch
from torch.utils.flop_counter import FlopCounterMode

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import scheduler_target
from blocksearch.families.dit_genome import (GROUPS, DitGenome, DitTopology, architecture_diff, architecture_table,
                                             model_class_of, removed, topology_of)
from blocksearch.families.dit_pipeline import call_kwargs, encode_text, forward, max_text, prediction

log = logging.getLogger(__name__)

PIPELINES = {"PixArtTransformer2DModel": "PixArtSigmaPipeline", "SD3Transformer2DModel": "StableDiffusion3Pipeline",
             "FluxTransformer2DModel": "FluxPipeline", "DiTTransformer2DModel": "DiTPipeline"}
# Text tokens of one call in the teacher's pipeline: T5 300 (PixArt-Sigma), CLIP 77 + T5 256 (SD3), T5 512 (Flux).
TEXT_LEN = {"PixArtTransformer2DModel": 300, "SD3Transformer2DModel": 333, "FluxTransformer2DModel": 512,
            "DiTTransformer2DModel": 0}
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


def forward_inputs(config, batch: int = 1, latent_size: int | None = None, device="meta", dtype=torch.float32,
                   text_len: int | None = None) -> dict:
    """Keyword inputs of one denoiser call as the class's diffusers pipeline makes them (random latents and text;
    Flux: 2x2-packed latent tokens with their position ids, timestep in [0, 1] and the guidance value)."""
    model_class, c = model_class_of(config), dict(config)
    text_len = TEXT_LEN[model_class] if text_len is None else text_len
    rand = lambda *shape: torch.randn(*shape, device=device, dtype=dtype)  # noqa: E731
    full = lambda value, kind=dtype: torch.full((batch,), value, device=device, dtype=kind)  # noqa: E731
    if model_class == "FluxTransformer2DModel":
        side = (latent_size or 128) // 2  # 1024 px -> 128x128 latents -> 64x64 packed tokens
        rows = torch.arange(side, device=device).repeat_interleave(side)
        cols = torch.arange(side, device=device).repeat(side)
        inputs = dict(hidden_states=rand(batch, side * side, c["in_channels"]),
                      encoder_hidden_states=rand(batch, text_len, c["joint_attention_dim"]),
                      pooled_projections=rand(batch, c["pooled_projection_dim"]), timestep=full(0.5),
                      img_ids=torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).to(dtype),
                      txt_ids=torch.zeros(text_len, 3, device=device, dtype=dtype))
        if c.get("guidance_embeds"):
            inputs["guidance"] = full(3.5)
        return inputs
    size = latent_size or c["sample_size"]
    inputs = dict(hidden_states=rand(batch, c["in_channels"], size, size))
    if model_class == "SD3Transformer2DModel":
        return inputs | dict(encoder_hidden_states=rand(batch, text_len, c["joint_attention_dim"]),
                             pooled_projections=rand(batch, c["pooled_projection_dim"]), timestep=full(500.0))
    if model_class == "DiTTransformer2DModel":
        return inputs | dict(timestep=full(500, torch.long), class_labels=full(0, torch.long))
    extra = c.get("use_additional_conditions")
    extra = c["sample_size"] == 128 if extra is None else extra  # diffusers' own default (PixArt-alpha 1024)
    added = (dict(resolution=rand(batch, 2), aspect_ratio=rand(batch, 1)) if extra
             else dict(resolution=None, aspect_ratio=None))
    return inputs | dict(encoder_hidden_states=rand(batch, text_len, c["caption_channels"]),
                         timestep=full(500, torch.long), added_cond_kwargs=added)


def describe(genome: DitGenome, teacher_config) -> list[tuple[str, str]]:
    """(student block, the teacher block it came from) for every kept block."""
    topo = topology_of(teacher_config)
    check_fits(genome, topo)
    return [(f"{g}.{i}", f"{g}.{t}") for g in topo.groups for i, t in enumerate(genome.blocks(g))]


def meta_model(config, model_class: str | None = None) -> torch.nn.Module:
    """A transformer built from a config on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        return getattr(diffusers, model_class or model_class_of(config)).from_config(
            {k: v for k, v in dict(config).items() if not k.startswith("_")})


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_params(model: torch.nn.Module) -> int:
    """Params as the DiT paper counts them: diffusers' DiT repeats the timestep and class embedders in every
    block (AdaLayerNormZero's ``emb``), DiT shares one; other classes count as they are."""
    if type(model).__name__ != "DiTTransformer2DModel":
        return count_params(model)
    blocks = model.transformer_blocks
    return count_params(model) - (len(blocks) - 1) * count_params(blocks[0].norm1.emb)


def count_macs(model: torch.nn.Module, latent_size: int | None = None, text_len: int | None = None) -> int:
    """MACs of one forward at batch 1 on the meta device (torch.utils.flop_counter: matmuls and attention)."""
    meta = meta_model({**dict(model.config), "_class_name": type(model).__name__})
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(**forward_inputs(meta.config, 1, latent_size, text_len=text_len))
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class DesignCost:
    """One row of ``space show``: a design's exact size and cost, and its published size on this teacher."""

    name: str
    genome: DitGenome
    params: int  # exact, as diffusers builds it
    paper_params: int  # as the model's paper counts (differs for DiT only, see paper_params)
    macs: int
    published: tuple[float, str] | None  # (params, source) where a figure is published for this teacher


def design_costs(bound, teacher_config, teacher_name: str, latent_size: int | None = None,
                 text_len: int | None = None) -> list[DesignCost]:
    """The teacher and every named design of a bound dit space, built on the meta device (MACs at ``text_len``
    text tokens; default: the class's pipeline's, ``TEXT_LEN``)."""
    model_class, config = model_class_of(teacher_config), dict(teacher_config)
    teacher_pub = ((config["_published_params"], config.get("_published_source", ""))
                   if "_published_params" in config else None)
    rows = []
    for name, genome in [("teacher", bound.teacher_genome), *bound.named_designs().items()]:
        model = meta_model(student_config(teacher_config, genome), model_class)
        pub = bound.space.published.get(name)
        published = teacher_pub if name == "teacher" else (
            (pub.params, pub.source) if pub is not None and pub.teacher == teacher_name else None)
        rows.append(DesignCost(name, genome, count_params(model), paper_params(model),
                               count_macs(model, latent_size, text_len), published))
    return rows


class DitFamily:
    """Transformer denoisers as a family (families/base.py). The pipeline class follows the teacher's class:
    ``FAMILY.for_teacher(config)`` gives the family object of one class."""

    name = "dit"
    subfolder = "transformer"
    denoiser_name = "transformer"

    def __init__(self, model_class: str | None = None):
        self.model_class = model_class

    def for_teacher(self, config) -> "DitFamily":
        return DitFamily(model_class_of(config))

    @property
    def pipeline_class(self) -> str:
        if self.model_class is None:
            raise BlocksearchError("the dit family's pipeline follows the teacher's class; use FAMILY.for_teacher("
                                   f"config).pipeline_class (one of {', '.join(PIPELINES.values())})")
        return PIPELINES[self.model_class]

    def topology(self, denoiser_config) -> DitTopology:
        return topology_of(denoiser_config)

    def student_config(self, teacher_config, arch: DitGenome) -> dict:
        return student_config(teacher_config, arch)

    def build_student(self, teacher_denoiser: torch.nn.Module, arch: DitGenome) -> DitStudent:
        return build_student(teacher_denoiser, arch)

    def kd_pairs(self, arch: DitGenome, topology: DitTopology) -> tuple[tuple[str, str], ...]:
        return kd_pairs(arch, topology)

    def forward_inputs(self, config, batch: int = 1, latent_size: int | None = None, device="meta",
                       dtype=torch.float32, text_len: int | None = None) -> dict:
        return forward_inputs(config, batch, latent_size, device, dtype, text_len)

    def describe(self, arch: DitGenome, teacher_config) -> list[tuple[str, str]]:
        return describe(arch, teacher_config)

    def training_target(self, scheduler, latents, noise, timesteps):
        return scheduler_target(scheduler, latents, noise, timesteps)

    def arch_from_id(self, text: str) -> DitGenome:
        return DitGenome.from_id(text)

    def forward(self, denoiser, noisy, timesteps, batch) -> torch.Tensor:
        return forward(denoiser, noisy, timesteps, batch)

    def kd_feature(self, output) -> torch.Tensor:
        return block_feature(output)

    def kd_teacher_modules(self, topology: DitTopology) -> tuple[str, ...]:
        return kd_teacher_modules(topology)

    def encode_text(self, pipeline, captions):
        return encode_text(pipeline, captions)

    def text_tokens(self, pipeline) -> int:
        model_class = type(pipeline.transformer).__name__
        return max_text(pipeline) if model_class == "PixArtTransformer2DModel" else TEXT_LEN[model_class]

    def call_kwargs(self, pipeline) -> dict:
        return call_kwargs(pipeline)

    def architecture_diff(self, arch: DitGenome, topology: DitTopology) -> str:
        return architecture_diff(arch, topology)

    def architecture_table(self, arch: DitGenome, topology: DitTopology) -> list[tuple[str, str, str]]:
        return architecture_table(arch, topology)

    def removed(self, arch: DitGenome, topology: DitTopology) -> dict[str, str]:
        return removed(arch, topology)

    def prediction(self, config, output: torch.Tensor) -> torch.Tensor:
        return prediction(config, output)


FAMILY = DitFamily()
