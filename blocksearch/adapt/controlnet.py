"""``blocksearch adapt controlnet``: a teacher's ControlNet (Zhang et al., arXiv 2302.05543) cut as its U-Net was.

A ControlNet copies the U-Net's down path and mid block and adds one zero convolution per down-path output (the
residual the U-Net adds at that skip). The student's ControlNet gets the student U-Net's down path, every tensor
taken from the teacher ControlNet's module of the same teacher name (``block_map.json``), each zero convolution
from the teacher's for the same skip, and the teacher ControlNet's mid block (its residual is added at the
student's bottleneck, mid block or not). diffusers' ``ControlNetModel`` has one ``layers_per_block`` for every
stage, so students whose stages keep different numbers of layers are refused, as are transformer students.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from blocksearch.adapt.blockmap import read_block_map
from blocksearch.errors import BlocksearchError

U_NET = "UNet2DConditionModel"  # the denoiser class whose ControlNet (``ControlNetModel``) this maps
PER_STAGE = ("down_block_types", "block_out_channels", "transformer_layers_per_block", "attention_head_dim",
             "num_attention_heads", "only_cross_attention")


def skips(config) -> list[str]:
    """The module whose output each zero convolution (``controlnet_down_blocks.k``) reads, in diffusers' order:
    ``conv_in``, then per stage its layers (attention where the stage has one) and its downsampler."""
    out, n = ["conv_in"], len(config["down_block_types"])
    for i, kind in enumerate(config["down_block_types"]):
        layer = "attentions" if kind.startswith("CrossAttn") else "resnets"
        out += [f"down_blocks.{i}.{layer}.{j}" for j in range(config["layers_per_block"])]
        out += [f"down_blocks.{i}.downsamplers.0"] if i < n - 1 else []
    return out


def student_controlnet_config(teacher_config, unet_config) -> dict:
    """The teacher ControlNet's config with the student U-Net's down path (per-stage fields, layers)."""
    layers = unet_config["layers_per_block"]
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(unet_config["down_block_types"])
    if len(set(layers)) != 1:
        raise BlocksearchError(f"the student's stages keep {layers} layers; diffusers' ControlNetModel has one "
                               f"layers_per_block for every stage: allowed, a student whose stages keep the same "
                               f"number of layers")
    cfg = {k: v for k, v in dict(teacher_config).items() if not k.startswith("_")}
    n = len(unet_config["down_block_types"])
    for key in PER_STAGE:
        value = unet_config.get(key)
        cfg[key] = list(value)[:n] if isinstance(value, (list, tuple)) else value
    cfg["layers_per_block"] = layers[0]
    return cfg


def adapt_controlnet(controlnet: str | Path, student: str | Path, out: str | Path) -> tuple[ControlNetModel, dict]:
    """The student's ControlNet cut from the teacher ControlNet folder ``controlnet``, saved to ``out``
    (diffusers, safetensors); returns it and counts (tensors copied, zero convolutions kept / dropped)."""
    doc = read_block_map(student)
    if doc["model_class"] != U_NET:
        raise BlocksearchError(f"adapt controlnet maps diffusers' ControlNetModel onto {U_NET} students; the "
                               f"student's denoiser is a {doc['model_class']} (family {doc['family']}): not supported")
    if not (Path(controlnet) / "config.json").is_file():
        raise BlocksearchError(f"ControlNet {controlnet}: no config.json; allowed: a diffusers ControlNetModel folder "
                               f"(save_pretrained, safetensors)")
    unet_config = UNet2DConditionModel.load_config(Path(student) / doc["subfolder"])
    config = student_controlnet_config(ControlNetModel.load_config(controlnet), unet_config)  # refuse before loading
    teacher = ControlNetModel.from_pretrained(controlnet, use_safetensors=True)
    cn = ControlNetModel.from_config(config)
    t_state, modules = teacher.state_dict(), doc["modules"]
    t_skips, s_skips = skips(teacher.config), skips(cn.config)
    skip_of = {s: k for k, s in enumerate(t_skips)}
    with torch.no_grad():
        for key, tensor in cn.state_dict().items():
            source = _source(key, modules, s_skips, skip_of, t_skips)
            if source not in t_state or t_state[source].shape != tensor.shape:
                raise BlocksearchError(f"{controlnet}: student ControlNet tensor {key} {tuple(tensor.shape)} has no "
                                       f"teacher tensor of that shape ({source}); a ControlNet for another base "
                                       f"model?")
            tensor.copy_(t_state[source])
    cn.save_pretrained(out, safe_serialization=True)
    return cn, {"zero_convs": len(s_skips), "teacher_zero_convs": len(t_skips)}


def _teacher_module(name: str, modules: dict[str, str]) -> str:
    """The teacher name of student module ``name`` (a prefix of the block map's modules): its renamed prefix."""
    leaf = next((s for s in modules if s.startswith(name + ".") or s == name), None)
    if leaf is None:
        return name  # a module without tensors of its own at this name: the teacher's of the same name
    return modules[leaf][:len(modules[leaf]) - len(leaf) + len(name)]


def _source(key: str, modules: dict[str, str], s_skips: list[str], skip_of: dict[str, int], t_skips) -> str:
    """The teacher ControlNet tensor of student ControlNet tensor ``key``."""
    if key.startswith("controlnet_down_blocks."):
        k, rest = key.split(".", 2)[1:]
        teacher = _teacher_module(s_skips[int(k)], modules)
        if teacher not in skip_of:
            raise BlocksearchError(f"the student's skip {s_skips[int(k)]} comes from teacher {teacher}, which feeds "
                                   f"no zero convolution of the teacher ControlNet ({len(t_skips)} skips)")
        return f"controlnet_down_blocks.{skip_of[teacher]}.{rest}"
    if key.startswith("down_blocks."):
        module, _, leaf = key.rpartition(".")
        return f"{modules.get(module, module)}.{leaf}"
    return key  # conv_in, embeddings, the conditioning embedding, the mid block and its zero convolution
