"""Size and cost of transformer designs on the meta device (``space show`` of a dit space): exact params, the
paper's params (DiT's shared embedders), MACs (torch.utils.flop_counter) and published figures."""

from __future__ import annotations

import json
from dataclasses import dataclass

import diffusers
import torch
from torch.utils.flop_counter import FlopCounterMode

from blocksearch.families.dit.genome import DitGenome, model_class_of
from blocksearch.families.dit.pipeline import forward_inputs
from blocksearch.families.dit.surgery import student_config


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
    meta = model if next(model.parameters()).is_meta else meta_model(
        {**dict(model.config), "_class_name": type(model).__name__})
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
    text tokens; default: the class's pipeline's, ``TEXT_LEN``). Designs with the same student config (the same
    number of blocks per group: ``last_12`` and ``first_12``) are built and counted once."""
    model_class, config = model_class_of(teacher_config), dict(teacher_config)
    teacher_pub = ((config["_published_params"], config.get("_published_source", ""))
                   if "_published_params" in config else None)
    rows, counted = [], {}
    for name, genome in [("teacher", bound.teacher_genome), *bound.named_designs().items()]:
        config = student_config(teacher_config, genome)
        key = json.dumps(config, sort_keys=True, default=list)
        if key not in counted:
            model = meta_model(config, model_class)
            counted[key] = (count_params(model), paper_params(model), count_macs(model, latent_size, text_len))
        pub = bound.space.published.get(name)
        published = teacher_pub if name == "teacher" else (
            (pub.params, pub.source) if pub is not None and pub.teacher == teacher_name else None)
        rows.append(DesignCost(name, genome, *counted[key], published))
    return rows
