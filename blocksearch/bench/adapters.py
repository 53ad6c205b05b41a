"""``blocksearch bench adapters``: does a teacher's LoRA survive the cut? Measured on the toy (issue 32, item 5).

1. A LoRA (Hu et al., arXiv 2106.09685; peft, on the U-Net's attention projections) is trained on the toy teacher to
   draw every "circle" of a caption as a triangle (``REMAP``): half of each batch is scenes with a circle, rendered
   with triangles, half is scenes as they are, so that the rest of the world stays put. The loss is the toy
   teacher's own (v-prediction, Min-SNR; toy/build.py).
2. The student: ``--student DIR``, or ``--design`` cut from the teacher and distilled ``--distill-steps`` (BK-SDM KD).
3. The LoRA is mapped onto it (``adapt lora``) and, separately, fine-tuned there ``--finetune-steps`` by KD against
   the teacher with the LoRA (``adapt lora --finetune-steps``).
4. Each row generates the LoRA's prompts (captions with "circle", the toy's sampler and guidance) and is scored by
   the toy judge: alignment with the LoRA's meaning (every attribute right, circles read as triangles), alignment
   with the caption's plain meaning, and toy-judge FID against real images of the LoRA's meaning.

A ControlNet is not trained here (it would cost more CPU than the rest together): its structural round trip runs
instead (``adapt controlnet`` on a ControlNet made from the teacher U-Net, one generation through the stock
``StableDiffusionControlNetPipeline`` with the student), as does ``adapt ip-adapter`` on a random IP-Adapter (layers
kept). Computes first (``measure``), renders second (``render``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import (ControlNetModel, DDPMScheduler, StableDiffusionControlNetPipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from blocksearch.adapt.controlnet import adapt_controlnet
from blocksearch.adapt.finetune import finetune_lora
from blocksearch.adapt.ip_adapter import adapt_ip_adapter, cross_attention_layers
from blocksearch.adapt.lora import adapt_lora
from blocksearch.recipe.distill import DistillConfig, distill, resolve_design, write_student
from blocksearch.settings import GUIDANCE_SCALE, NUM_STEPS
from blocksearch.teachers import load_teacher, with_denoiser
from blocksearch.toy.build import min_snr_v_loss, noised_latents
from blocksearch.toy.judge import load_judge, text_alignment, toy_fid
from blocksearch.toy.sample import generate
from blocksearch.toy.world import Obj, Scene, all_captions, parse_prompt, random_scene, real_images, render

REMAP = ("circle", "triangle")  # the LoRA's lesson: this shape word draws that shape
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections, self and cross
SEED = 0x1_0A4


def remapped(scene: Scene) -> Scene:
    """The scene the LoRA means: every ``REMAP[0]`` drawn as ``REMAP[1]``."""
    swap = lambda o: Obj(REMAP[1] if o.shape == REMAP[0] else o.shape, o.colour, o.size)  # noqa: E731
    return Scene(tuple(swap(o) for o in scene.objects), scene.relation)


def lora_prompts(n: int) -> list[tuple[str, int]]:
    """The evaluation set: the one-object captions with a circle, then two-object ones with a circle (fixed draw);
    each with its own seed (cycled when ``n`` exceeds the captions)."""
    with_word = [c for c in all_captions() if REMAP[0] in c.split()]
    singles, pairs = with_word[:8], with_word[8:]
    rng = np.random.default_rng(SEED)
    order = singles + [pairs[i] for i in rng.permutation(len(pairs))]
    seeds = rng.integers(2**31, 2**32 - 1, size=n)
    return [(order[i % len(order)], int(s)) for i, s in enumerate(seeds)]


def lora_batch(n: int, index: int) -> tuple[torch.Tensor, list[str]]:
    """Batch ``index`` of the LoRA's training stream: images in [-1, 1] and captions; the first half has a circle
    in its caption (drawn as a triangle), the second half is the world as it is."""
    rng = np.random.default_rng([SEED, index])
    images, captions = [], []
    for i in range(n):
        scene = random_scene(rng)
        if i < n // 2:
            a = scene.objects[0]
            scene = Scene((Obj(REMAP[0], a.colour, a.size), *scene.objects[1:]), scene.relation)
        images.append(render(remapped(scene), rng))
        captions.append(scene.caption)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return x, captions


def train_lora(out: Path, steps: int, batch_size: int, lr: float, rank: int, device: str) -> dict:
    """Train the LoRA on the toy teacher's U-Net (text encoder and VAE frozen); save it with diffusers'
    ``save_lora_weights`` (peft keys + adapter metadata) to ``out``; its final loss and wall time."""
    start = time.perf_counter()
    t = load_teacher("toy", device)
    pipe, unet = t.pipeline, t.unet
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights="gaussian")
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)  # the training schedule, as data.py draws it
    gen, losses = torch.Generator().manual_seed(SEED), []
    unet.train()
    for step in range(steps):
        x, captions = lora_batch(batch_size, step)
        with torch.no_grad():
            cond = t.family.encode_text(pipe, captions)["encoder_hidden_states"]
        latents, noise, ts, noisy = noised_latents(pipe.vae, noise_sched, x.to(device), gen)
        loss = min_snr_v_loss(noise_sched, unet(noisy, ts, cond).sample, latents, noise, ts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss))
    unet.eval()
    state = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=state, unet_lora_adapter_metadata=config.to_dict())
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "rank": rank, "targets": TARGETS,
            "loss_first_10": float(np.mean(losses[:10])), "loss_last_10": float(np.mean(losses[-10:])),
            "wall_s": round(time.perf_counter() - start, 1)}


def make_student(work: Path, design: str, steps: int, batch_size: int, device: str) -> tuple[Path, dict]:
    """``design`` cut from the toy teacher and distilled ``steps`` KD steps (the teacher live), written to
    ``work/student`` with its block map."""
    t = load_teacher("toy", device)
    genome, name = resolve_design(t.denoiser, design)
    student = t.family.build_student(t.denoiser, genome)
    config = DistillConfig(steps=steps, batch_size=batch_size, teacher_cache="off")
    result = distill(t, student, config, device, progress=False)
    meta = {"teacher": "toy", "design": name, "space": "unet_blocks", "distill": config.to_dict()}
    write_student(work / "student", student, result, meta, t.family.subfolder, teacher_denoiser=t.denoiser)
    return work / "student", {"design": name or design, "arch": genome.id, "distill_steps": steps,
                              "distill_batch": batch_size,
                              "wall_s": round(result.wall_s, 1)}


def score(pipe, prompts: list[tuple[str, int]], reference: torch.Tensor, judge) -> dict:
    """Generate ``prompts`` with ``pipe`` (the toy's sampler steps and guidance); the judge's scores."""
    texts, seeds = [p for p, _ in prompts], [s for _, s in prompts]
    start = time.perf_counter()
    images = generate(pipe, texts, seeds, num_steps=NUM_STEPS, guidance_scale=GUIDANCE_SCALE, batch_size=32)
    meant = [remapped(parse_prompt(p)).caption for p in texts]
    return {"alignment_lora": text_alignment(images, meant, judge),
            "alignment_plain": text_alignment(images, texts, judge),
            "fid": toy_fid(images, reference), "generate_s": round(time.perf_counter() - start, 1)}


def rows(work: Path, student: Path, lora: Path, mapped: Path, tuned: Path, prompts, device: str) -> dict:
    """The scores of each row: the teacher with and without the LoRA, the student with the mapped LoRA, with the
    fine-tuned LoRA, and without."""
    judge = load_judge(device)
    meant = sorted({remapped(parse_prompt(p)).caption for p, _ in prompts})
    reference = real_images(4 * len(prompts), SEED, meant)
    t = load_teacher("toy", device)
    out = {}
    for name, denoiser, adapter in (("teacher + LoRA", None, lora), ("student + mapped LoRA", student, mapped),
                                    ("student + fine-tuned LoRA", student, tuned), ("student, no LoRA", student, None),
                                    ("teacher, no LoRA", None, None)):
        unet = (UNet2DConditionModel.from_pretrained(denoiser / t.family.subfolder).to(device) if denoiser
                else load_teacher("toy", device).unet)
        pipe = with_denoiser(t.pipeline, unet, t.family)
        pipe.set_progress_bar_config(disable=True)
        if adapter is not None:
            pipe.load_lora_weights(str(adapter))
        out[name] = score(pipe, prompts, reference, judge)
    return out


def structural(work: Path, student: Path, device: str) -> dict:
    """ControlNet and IP-Adapter round trips on the student, untrained: a ControlNet made from the teacher U-Net
    (``ControlNetModel.from_unet``, zero convolutions perturbed so the control acts) cut by ``adapt controlnet`` and
    run once through the stock ControlNet pipeline with an object-mask image; a random IP-Adapter's layers kept."""
    t = load_teacher("toy", device)
    torch.manual_seed(SEED)
    cn = ControlNetModel.from_unet(t.unet, conditioning_embedding_out_channels=(16, 32, 64))
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if "controlnet_" in name and "cond_embedding" not in name:
                p.add_(0.01 * torch.randn_like(p))
    cn.save_pretrained(work / "controlnet", safe_serialization=True)
    student_cn, counts = adapt_controlnet(work / "controlnet", student, work / "student_controlnet")
    unet = UNet2DConditionModel.from_pretrained(student / t.family.subfolder).to(device)
    parts = dict(t.pipeline.components) | {t.family.subfolder: unet}  # the student in the teacher's pipeline
    pipe = StableDiffusionControlNetPipeline(**parts, controlnet=student_cn, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt = lora_prompts(1)[0][0]
    mask = torch.from_numpy(render(parse_prompt(prompt), np.random.default_rng(SEED))).permute(2, 0, 1)[None] / 255.0
    run = lambda scale: pipe(prompt, image=mask, num_inference_steps=NUM_STEPS, output_type="np",  # noqa: E731
                             controlnet_conditioning_scale=scale, generator=torch.Generator().manual_seed(0)).images
    changed = float(np.abs(run(1.0) - run(0.0)).max())
    ip = {f"image_proj.{k}": v for k, v in (("proj.weight", torch.randn(4 * t.unet.config.cross_attention_dim, 8)),
                                           ("proj.bias", torch.zeros(4 * t.unet.config.cross_attention_dim)),
                                           ("norm.weight", torch.ones(t.unet.config.cross_attention_dim)),
                                           ("norm.bias", torch.zeros(t.unet.config.cross_attention_dim)))}
    for k, layer in enumerate(cross_attention_layers(t.unet)):
        shape = t.unet.get_submodule(layer).to_k.weight.shape
        ip |= {f"ip_adapter.{2 * k + 1}.{p}.weight": torch.randn(shape) for p in ("to_k_ip", "to_v_ip")}
    save_file(ip, work / "ip_adapter.safetensors")
    mapped_ip = adapt_ip_adapter(work / "ip_adapter.safetensors", student, work / "student_ip.safetensors", "toy")
    return {"controlnet": {"zero_convs": counts["zero_convs"], "teacher_zero_convs": counts["teacher_zero_convs"],
                           "runs_in_stock_pipeline": True, "max_pixel_change_scale_1_vs_0": round(changed, 4),
                           "trained": False},
            "ip_adapter": {"layers_kept": mapped_ip.kept, "teacher_layers": mapped_ip.teacher_layers,
                           "trained": False}}


def measure(args) -> dict:
    """The whole measurement: LoRA, student, mapping, fine-tuning, the scored rows, the structural round trips."""
    start, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trained = train_lora(work / "lora", args.lora_steps, args.batch_size, args.lora_lr, args.rank, args.device)
        if args.student:
            student, made = Path(args.student), {"design": None, "given": Path(args.student).name}
        else:
            student, made = make_student(work, args.design, args.distill_steps, args.batch_size, args.device)
        mapped = adapt_lora(work / "lora", student, work / "mapped.safetensors")
        tuned = finetune_lora(work / "lora", mapped.out, student, work / "tuned.safetensors", args.finetune_steps,
                              "toy", args.device, batch_size=args.batch_size)
        prompts = lora_prompts(args.prompts)
        scores = rows(work, student, work / "lora", mapped.out, tuned.out, prompts, args.device)
        shapes = structural(work, student, args.device)
    return {"remap": {"word": REMAP[0], "draws": REMAP[1]}, "lora": trained, "student": made,
            "adapt_lora": mapped.summary(), "finetune": tuned.summary(),
            "finetune_steps": args.finetune_steps, "prompts": len(prompts),
            "generation": {"steps": NUM_STEPS, "guidance": GUIDANCE_SCALE, "fid_reference_images": 4 * len(prompts)},
            "rows": scores, "structural": shapes, "torch_threads": torch.get_num_threads(),
            "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1),
            "load_average_1min": [round(load, 1), round(os.getloadavg()[0], 1)], "command": command()}


def command() -> str:
    """The command line as typed, from ``blocksearch`` on (no paths of this machine)."""
    return " ".join(["blocksearch", *sys.argv[1:]])


def render_report(result: dict) -> str:
    """README.md of the report: the table, then how each figure was measured."""
    lines = [f"# Adapters across the cut, on the toy ({result['student'].get('design') or 'given student'})", "",
             f"`{result['command']}`: {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU, "
             f"{result['torch_threads']} torch threads; the machine's 1-minute load average "
             f"{result['load_average_1min'][0]} at the start, {result['load_average_1min'][1]} at the end "
             f"(other jobs shared it).", "",
             f"A LoRA trained on the toy teacher to draw every \"{REMAP[0]}\" as a {REMAP[1]}, then carried onto the "
             f"student. Scores on {result['prompts']} prompts with \"{REMAP[0]}\" "
             f"({result['generation']['steps']} sampler steps, guidance {result['generation']['guidance']}).", "",
             "| model | alignment, LoRA's meaning | alignment, plain meaning | toy FID (LoRA's meaning) |",
             "|---|---|---|---|"]
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['alignment_lora']:.3f} | {r['alignment_plain']:.3f} | {r['fid']:.1f} |")
    lo, st, s = result["lora"], result["student"], result["structural"]
    lines += ["", "- alignment: the toy judge's fraction of images whose every attribute matches the prompt read as "
              f"the LoRA means it (\"{REMAP[0]}\" -> {REMAP[1]}), or as written; FID: toy-judge features against "
              f"{result['generation']['fid_reference_images']} real images of the LoRA's meaning (few images: "
              "compare rows, not with other reports).",
              f"- LoRA: rank {lo['rank']} on {', '.join(lo['targets'])}, {lo['steps']} steps of batch "
              f"{lo['batch_size']}, lr {lo['lr']}; loss {lo['loss_first_10']:.4f} -> {lo['loss_last_10']:.4f} "
              f"(mean of the first and last 10 steps); {lo['wall_s']:.0f} s.",
              f"- student: {json.dumps(st)}.",
              f"- `adapt lora`: {result['adapt_lora']}",
              f"- `--finetune-steps {result['finetune_steps']}`: {result['finetune']}",
              f"- ControlNet: not trained (CPU budget); structural round trip only: {s['controlnet']['zero_convs']} "
              f"of the teacher's {s['controlnet']['teacher_zero_convs']} zero convolutions kept, one generation "
              f"through the stock StableDiffusionControlNetPipeline with the student (max pixel change, control "
              f"scale 1 vs 0: {s['controlnet']['max_pixel_change_scale_1_vs_0']}).",
              f"- IP-Adapter: random weights, structural only: {s['ip_adapter']['layers_kept']} of the teacher's "
              f"{s['ip_adapter']['teacher_layers']} cross-attention layers kept.",
              "", "Figures: `results.json` (blocksearch/bench/adapters.py).", ""]
    return "\n".join(lines)


def cmd_bench_adapters(args) -> int:
    """Measure, write ``results.json`` and ``README.md`` to ``--out``, print the table."""
    result = measure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    text = render_report(result)
    (out / "README.md").write_text(text)
    print(text)
    print(f"report written to {out / 'README.md'}")
    return 0
