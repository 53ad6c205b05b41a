"""Transformer denoisers (PixArt, SD3, Flux, DiT) as a denoiser family (families/base.py): depth pruning as in
TinyFusion (arXiv 2412.01199) and Flux.1-Lite. ``FAMILY``'s members are this folder's functions; the pipeline
class follows the teacher's class (``FAMILY.for_teacher(config)``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import diffusers

from blocksearch.families.base import DenoiserFamily, student_from_block_map
from blocksearch.families.dit.blockmap import weight_map
from blocksearch.families.dit import oneshot
from blocksearch.families.dit.describe import layout
from blocksearch.families.dit.genome import (DitGenome, architecture_diff, architecture_table, model_class_of, removed,
                                             topology_of)
from blocksearch.families.dit.pipeline import (PIPELINES, call_kwargs, cond_of_inputs, encode_text, forward,
                                               forward_inputs, text_tokens)
from blocksearch.families.dit.show import show_space
from blocksearch.families.dit.space import load
from blocksearch.families.dit.surgery import (block_feature, build_student, describe, kd_pairs, kd_teacher_modules,
                                              student_config)


def specialise(family: DenoiserFamily, config) -> DenoiserFamily:
    """The family of one teacher: its diffusers class and that class's stock pipeline."""
    model_class = model_class_of(config)
    return dataclasses.replace(family, model_class=model_class, stock_pipeline=PIPELINES[model_class])


def load_pipeline(source: str, device: str) -> diffusers.DiffusionPipeline:
    """The class ``model_index.json`` names (PixArtSigmaPipeline, StableDiffusion3Pipeline, FluxPipeline)."""
    pipe = diffusers.DiffusionPipeline.from_pretrained(source, local_files_only=True, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_student_denoiser(folder, teacher_denoiser):
    """A student folder's transformer, of the teacher's class: ``DIR/transformer`` (distill's, export's) or a
    transformer folder."""
    sub = FAMILY.subfolder if (Path(folder) / FAMILY.subfolder).is_dir() else None
    return type(teacher_denoiser).from_pretrained(folder, subfolder=sub, use_safetensors=True)


def load_student(folder, teacher_denoiser):
    """A saved student to go on from (``distill --init``, ``train --init``): its kept blocks are its block map's."""
    return student_from_block_map(FAMILY, folder, teacher_denoiser)


FAMILY = DenoiserFamily(
    name="dit", subfolder="transformer", denoiser_name="transformer", load_space=load, topology=topology_of,
    arch_from_id=DitGenome.from_id, student_config=student_config, build_student=build_student, kd_pairs=kd_pairs,
    kd_teacher_modules=kd_teacher_modules, encode_text=encode_text, forward=forward, forward_inputs=forward_inputs,
    describe=describe, architecture_diff=architecture_diff, architecture_table=architecture_table, removed=removed,
    load_pipeline=load_pipeline, weight_map=weight_map, id_example="'D0-7' (blocks 0..7 kept)", trains=True,
    card_tags=("diffusion-transformer", "depth-pruning"),
    card_summary="A depth-pruned {denoiser} ({model_class}) found by blocksearch (blocks removed as TinyFusion, "
                 "arXiv 2412.01199, and Flux.1-Lite remove them; BK-SDM's recipe as a multi-objective search)",
    kd_feature=block_feature, text_tokens=text_tokens, call_kwargs=call_kwargs, cond_of_inputs=cond_of_inputs,
    specialise=specialise, load_student=load_student,
    load_student_denoiser=load_student_denoiser, show_space=show_space, toy_teacher="toy-dit", layout=layout,
    one_shot=oneshot, selection_file="selection-score-dit.json")
