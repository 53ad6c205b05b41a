"""``blocksearch adapt lora --finetune-steps N``: the mapped LoRA continued on the student by KD against the teacher
with the LoRA (issue 32, item 4), for when the removed blocks carried part of the adapter's effect.

The teacher is the teacher pipeline with the teacher's LoRA fused into it (its text encoder's part too, so that the
student sees the text the LoRA'd pipeline gives); the student is the student's denoiser with the mapped LoRA as a peft
adapter, and only the LoRA's A and B train. The loss is the distillation recipe's (``recipe/distill.py``,
``Distiller``: BK-SDM's output and feature KD, arXiv 2305.15798) with ``lambda_task`` 0 by default: the training
images are the data's, whose captions the LoRA may mean otherwise (a LoRA that redraws a word), so the only target
is the teacher-plus-LoRA's. The teacher runs live (never the teacher cache: the cache names the teacher without its
LoRA). The result is written as the mapped LoRA was: kohya keys stay kohya (alpha = rank), others become
diffusers/peft keys (``unet.<module>.lora_A.weight``, scale 1), and text-encoder modules are copied unchanged.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from blocksearch.adapt.blockmap import read_block_map
from blocksearch.adapt.lora import LoraAdapted, adapt_lora, parse, read_lora, rename, write_lora
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.distill import DistillConfig, Distiller, batch_stream
from blocksearch.teachers import resolve_teacher

ADAPTER = "blocksearch_kd"
FINETUNE = dict(lr=1e-3, lambda_task=0.0, teacher_cache="off")  # LoRA-sized lr; KD only; the teacher live


@dataclass(frozen=True)
class Finetuned:
    """What ``finetune_lora`` did: steps, the KD loss at the first and last step, wall time, the file written."""

    steps: int
    first_loss: float | None
    last_loss: float | None
    wall_s: float
    out: Path

    def summary(self) -> str:
        if not self.steps:
            return "finetune: 0 steps; the mapped LoRA unchanged"
        return (f"finetune: {self.steps} KD steps against the teacher with its LoRA in {self.wall_s:.1f} s; loss "
                f"{self.first_loss:.4f} -> {self.last_loss:.4f}")


def lora_to_student(lora, student, out, finetune_steps: int = 0, teacher: str | None = None, device: str = "cpu",
                    **kd) -> tuple[LoraAdapted, Finetuned | None]:
    """``adapt_lora`` to ``out``; with ``finetune_steps`` the mapped LoRA is then fine-tuned in place."""
    mapped = adapt_lora(lora, student, out)
    if not finetune_steps:
        return mapped, None
    return mapped, finetune_lora(lora, mapped.out, student, mapped.out, finetune_steps, teacher, device, **kd)


def finetune_lora(teacher_lora, mapped, student, out, steps: int, teacher: str | None = None, device: str = "cpu",
                  **kd) -> Finetuned:
    """Continue the mapped LoRA file ``mapped`` on the student folder ``student`` for ``steps`` KD steps against
    ``teacher`` (default: the block map's) with ``teacher_lora`` fused; write it to ``out``. ``kd``: DistillConfig
    fields (batch_size, lr, seed, data, ...) over ``FINETUNE``'s."""
    start = time.perf_counter()
    doc = read_block_map(student)
    spec = teacher or doc["teacher"]
    ref = resolve_teacher(spec)
    if ref.family.load_student is None:
        raise BlocksearchError(f"--finetune-steps continues LoRAs on U-Net students; teacher {spec} is a "
                               f"{ref.family.denoiser_name}: map the LoRA without fine-tuning")
    config = DistillConfig(**(FINETUNE | {k: v for k, v in kd.items() if v is not None} | {"steps": steps}))
    t = ref.load(device)
    t.pipeline.load_lora_weights(str(teacher_lora))  # the KD teacher: the teacher with its LoRA, fused
    t.pipeline.fuse_lora()
    t.pipeline.unload_lora_weights()
    s = t.family.load_student(student, t.unet)
    tensors, _ = read_lora(mapped)
    modules = parse(tensors, doc)
    kohya = any(m.kohya for m in modules)
    flat = {name.replace(".", "_"): name for name in doc["modules"]}  # kohya's module names -> the student's
    _add_adapter(s.denoiser, {flat.get(m.module, m.module) if m.kohya else m.module: m for m in modules
                              if m.component == "denoiser"})
    recipe = Distiller(t, s, config, device)
    recipe.unet.requires_grad_(False)
    params = [p for n, p in recipe.unet.named_parameters() if f".{ADAPTER}." in n]
    for p in params:
        p.requires_grad_(True)
    recipe.opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    stream, losses = batch_stream(t, config), []
    torch.manual_seed(config.seed)
    try:
        for i in range(steps):
            batch = stream[i].to(device)
            t_out, t_feats = recipe.teacher_targets(batch)
            losses.append(recipe.step(i + 1, batch, t_out, t_feats)["loss"])
    finally:
        recipe.close()
    written = _lora_tensors(s.denoiser, doc["subfolder"], kohya)
    for m in modules:
        if m.component != "denoiser":
            written.update(rename(m, m.module, 1.0))
    path = write_lora(written, out)
    first, last = (losses[0], losses[-1]) if losses else (None, None)
    return Finetuned(steps, first, last, time.perf_counter() - start, path)


def _add_adapter(denoiser, modules: dict) -> None:
    """The mapped LoRA (student module -> LoraModule) as a peft adapter on ``denoiser``: each module's A, and B
    times its kohya alpha / r (peft keys carry their scale already: ``adapt_lora`` folded it into B), with
    lora_alpha = r (scale 1)."""
    if any("up_bias" in {role for role, _ in m.tensors.values()} for m in modules.values()):
        raise BlocksearchError("--finetune-steps: a LoRA with lora_B biases is not fine-tuned; map it without "
                               "--finetune-steps")
    state, ranks = {}, {}
    for name, m in modules.items():
        down = next(t for role, t in m.tensors.values() if role == "down")
        up = next(t for role, t in m.tensors.values() if role == "up")
        alpha = next((t for role, t in m.tensors.values() if role == "alpha"), None)
        r = down.shape[0]
        scale = float(alpha) / r if alpha is not None else 1.0
        state[f"{name}.lora_A.weight"], state[f"{name}.lora_B.weight"] = down, up * scale
        ranks[name] = r
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {re.escape(k): v for k, v in ranks.items() if v != r0}
    config = LoraConfig(r=r0, lora_alpha=r0, target_modules=sorted(ranks), rank_pattern=pattern,
                        alpha_pattern=pattern, init_lora_weights=False)
    denoiser.add_adapter(config, adapter_name=ADAPTER)
    result = set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise BlocksearchError(f"the mapped LoRA's {unexpected[0]} has no module in the student's denoiser")


def _lora_tensors(denoiser, subfolder: str, kohya: bool) -> dict[str, torch.Tensor]:
    """The adapter's tensors as a loadable LoRA file: ``<subfolder>.<module>.lora_A.weight`` / ``lora_B``, or kohya's
    ``lora_unet_<module>.lora_down.weight`` / ``lora_up.weight`` / ``alpha`` (= rank: scale 1)."""
    out = {}
    for key, tensor in get_peft_model_state_dict(denoiser, adapter_name=ADAPTER).items():
        tensor = tensor.detach().cpu().contiguous()
        if not kohya:
            out[f"{subfolder}.{key}"] = tensor
            continue
        module, _, suffix = key.rpartition(".lora_")
        flat = f"lora_unet_{module.replace('.', '_')}"
        out[f"{flat}.lora_{'down' if suffix.startswith('A') else 'up'}.weight"] = tensor
        if suffix.startswith("A"):
            out[f"{flat}.alpha"] = torch.tensor(float(tensor.shape[0]))
    return out
