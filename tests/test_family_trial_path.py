"""The trial path through the denoiser family: one call (forward), target and KD features of tiny PixArt / SD3 / Flux
transformers built from the shipped configs; and on a tiny-budget toy transformer teacher, surgery -> distillation
-> probe -> evaluation -> report -> export, the exported folder loaded by stock diffusers in a fresh process."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import diffusers
import optuna
import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline

from blocksearch.search import trial
from blocksearch.cli import main
from blocksearch.recipe.distill import DistillConfig, distill, resolve_design
from blocksearch.errors import BlocksearchError
from blocksearch.report.export import export_study
from blocksearch.families.base import add_noise, get_family
from blocksearch.families.dit.surgery import build_student, kd_teacher_modules, model_topology
from blocksearch.families.dit.genome import DitGenome, DitTopology, load_teacher_config
from blocksearch.recipe.probe import Probe, ProbeConfig
from blocksearch.report.compute import build_report
from blocksearch.search.driver import bind_space, resolve, trial_job
from blocksearch.search.teacher_setup import params_table
from blocksearch.space import load_space
from blocksearch.study import SearchConfig
from blocksearch.recipe.teacher_cache import FeatureHooks
from blocksearch.teachers import load_teacher, resolve_teacher
from blocksearch.toy.build_dit import build_dit

FAMILY = get_family("dit")
# The shipped teacher configs with small widths and few blocks: the real classes' flags (PixArt's learned variance,
# Flux's guidance input and 2x2 packing) kept.
SHRINK = {
    "pixart-sigma": dict(num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, caption_channels=12,
                         num_layers=4, sample_size=8, interpolation_scale=1),
    "sd3-medium": dict(num_attention_heads=2, attention_head_dim=8, caption_projection_dim=16, joint_attention_dim=12,
                       pooled_projection_dim=8, num_layers=3, in_channels=4, out_channels=4, sample_size=8,
                       pos_embed_max_size=8),
    "flux-dev": dict(num_attention_heads=2, attention_head_dim=8, axes_dims_rope=[2, 2, 4], in_channels=16,
                     joint_attention_dim=12, pooled_projection_dim=8, num_layers=2, num_single_layers=3),
}
CUTS = {"pixart-sigma": "D1.3", "sd3-medium": "D0.2", "flux-dev": "D1_S0.2"}


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    shipped = load_teacher_config(name)
    config = {k: v for k, v in shipped.items() if not k.startswith("_")} | SHRINK[name]
    model = getattr(diffusers, shipped["_class_name"]).from_config(config).eval()
    with torch.no_grad():  # diffusers zero-initialises output layers: make every output depend on every weight
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def kd_batch(model, n: int = 2, size: int = 8, tokens: int = 5) -> SimpleNamespace:
    """What ``forward`` reads of a KD batch for ``model``: unpacked latents (B, C, H, W), timesteps, text, PixArt's
    text mask and SD3's / Flux's pooled text (BatchStream makes no pooled text yet: SD3 / Flux KD data is not built)."""
    torch.manual_seed(1)
    c = dict(model.config)
    channels = c["in_channels"] // 4 if "num_single_layers" in c else c["in_channels"]
    width = c.get("caption_channels") or c["joint_attention_dim"]
    pooled = torch.randn(n, c["pooled_projection_dim"]) if "pooled_projection_dim" in c else None
    batch = SimpleNamespace(noisy=torch.randn(n, channels, size, size), timesteps=torch.tensor([100, 900]),
                            text=torch.randn(n, tokens, width), mask=torch.tensor([[1] * tokens, [1, 1] + [0] * (tokens - 2)]),
                            pooled=pooled)
    batch.cond = {"encoder_hidden_states": batch.text, "encoder_attention_mask": batch.mask, "pooled_projections": pooled}
    return batch


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_one_call_is_the_stock_pipelines_call(name):
    model = tiny(name)
    batch = kd_batch(model)
    with torch.no_grad():
        pred = FAMILY.forward(model, batch.noisy, batch.timesteps, batch.cond)
        if name == "flux-dev":  # FluxPipeline's own packing, position ids, t / 1000 and guidance input
            b, ch, h, w = batch.noisy.shape
            out = model(hidden_states=FluxPipeline._pack_latents(batch.noisy, b, ch, h, w),
                        encoder_hidden_states=batch.text, pooled_projections=batch.pooled,
                        timestep=batch.timesteps.float() / 1000, guidance=torch.full((b,), 3.5),
                        img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                        txt_ids=torch.zeros(batch.text.shape[1], 3)).sample
            expected = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)
        elif name == "sd3-medium":
            expected = model(hidden_states=batch.noisy, encoder_hidden_states=batch.text,
                             pooled_projections=batch.pooled, timestep=batch.timesteps).sample
        else:  # PixArtSigmaPipeline: the text mask, no micro-conditions, the learned variance's half dropped
            expected = model(batch.noisy, encoder_hidden_states=batch.text, encoder_attention_mask=batch.mask,
                             timestep=batch.timesteps, added_cond_kwargs=dict(resolution=None, aspect_ratio=None)
                             ).sample[:, :4]
    assert pred.shape == batch.noisy.shape and torch.allclose(pred, expected, atol=1e-6)
    if name == "pixart-sigma":  # masked text tokens are never read; an attended one is
        other = {**batch.cond, "encoder_hidden_states": batch.text.clone()}
        other["encoder_hidden_states"][1, 3] += 1.0
        with torch.no_grad():
            same = FAMILY.forward(model, batch.noisy, batch.timesteps, other)
            other["encoder_hidden_states"][1, 0] += 1.0
            moved = FAMILY.forward(model, batch.noisy, batch.timesteps, other)
        assert torch.equal(same, pred) and not torch.allclose(moved[1], pred[1])


def test_training_targets_eps_v_and_flow():
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 400, 999])
    for kind in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(prediction_type=kind)
        target = FAMILY.training_target(sched, x0, noise, t)
        a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        assert torch.allclose(target, noise if kind == "epsilon" else a * noise - s * x0, atol=1e-6)
        assert torch.allclose(add_noise(sched, x0, noise, t), a * x0 + s * noise, atol=1e-6)
    flow = FlowMatchEulerDiscreteScheduler()  # SD3 / Flux: x_t on the line from x_0 (sigma 0) to the noise (sigma 1)
    noisy, target = add_noise(flow, x0, noise, t), FAMILY.training_target(flow, x0, noise, t)
    sigma = (t / 1000).view(-1, 1, 1, 1)
    assert torch.allclose(target, noise - x0) and torch.allclose(noisy - sigma * target, x0, atol=1e-5)
    assert torch.equal(noisy[0], x0[0])


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_kd_features_pair_up_in_shape(name):
    teacher = tiny(name)
    genome = DitGenome.from_id(CUTS[name])
    student = build_student(teacher, genome)
    topo = model_topology(teacher)
    assert {t for t, _ in student.kd_pairs} <= set(kd_teacher_modules(topo))
    batch = kd_batch(teacher)
    t_hooks = FeatureHooks(teacher, kd_teacher_modules(topo), FAMILY)
    s_hooks = FeatureHooks(student.denoiser, [s for _, s in student.kd_pairs], FAMILY)
    with torch.no_grad():
        FAMILY.forward(teacher, batch.noisy, batch.timesteps, batch.cond)
        FAMILY.forward(student.denoiser, batch.noisy, batch.timesteps, batch.cond)
    t_feats, s_feats = t_hooks.pop(), s_hooks.pop()
    assert len(t_feats) == len(kd_teacher_modules(topo)) and len(s_feats) == len(student.kd_pairs)
    for t, s in student.kd_pairs:
        assert torch.is_tensor(s_feats[s]) and s_feats[s].shape == t_feats[t].shape and len(s_feats[s]) == 2
    t_first, s_first = student.kd_pairs[0]  # block 0 kept as block 0 (SD3's cut): the same weights and input
    assert torch.allclose(s_feats[s_first], t_feats[t_first], atol=1e-5) == (t_first == "transformer_blocks.0")


# -- the toy transformer teacher, tiny budget ---------------------------------------------------------------
EVAL = dict(prompts=4, steps=2, batch_size=4, reference_images=8, latency_warmup=0, latency_repeats=2,
            latency_min_s=0.0, e2e_repeats=1)


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """This module's own cache folder, and so its own locks: other blocksearch processes on the machine (a search,
    a build) never hold up its latency measurements or teacher caches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine two threads can be 30x slower (a KD step: 8 s vs 0.25 s)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLOCKSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_dit(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("toy-dit") / "teacher"
    build_dit(folder, budget="tiny", threads=1)
    return str(folder)


@pytest.fixture(scope="module")
def searched(toy_dit, tmp_path_factory):
    """One trial of a dit search on the toy transformer, run as a Ray worker runs it (``trial._train_candidate``),
    and the study `blocksearch run` would leave: (tmp, storage url, outcome, teacher)."""
    tmp = tmp_path_factory.mktemp("dit-search")
    cfg = resolve(SearchConfig(space="dit_blocks", teacher=toy_dit, runs_dir=str(tmp / "runs"), steps=2,
                               batch_size=2, eval_prompts=4, inference_steps=2, latency_repeats=2, score="probe_task",
                               rungs=()))
    ref = resolve_teacher(cfg.teacher)
    bound, denoiser = bind_space(load_space("dit_blocks"), ref)
    job, attrs = trial_job(cfg, ref, bound, denoiser)
    cache = str(tmp / "cache")
    job = trial.TrialJob(**{**vars(job), "distill": job.distill | {"cache_dir": cache},
                            "eval": job.eval | EVAL | {"cache_dir": cache, "images": True}})
    genome = bound.design("flux_lite")  # first:8 of the toy's 16 blocks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial, "ProbeConfig", lambda: ProbeConfig(batches=1, batch_size=2))  # a small held-out set
        outcome = trial._train_candidate(genome, job, lambda step, losses: None)
    assert json.loads((Path(outcome.student_dir).parent / "block_map.json").read_text())["arch"] == genome.id
    url = f"sqlite:///{tmp / 'blocksearch.db'}"
    study = optuna.create_study(study_name=cfg.study, storage=url, directions=["minimize"] * 3)
    study.set_metric_names(["fid", "params", "latency_ms"])
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    params = bound.to_params(genome)
    dists = {k: optuna.distributions.CategoricalDistribution((True, False)) for k in params}  # one per block
    m = outcome.metrics
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, values=[m["fid"], m["params"], m["latency_ms"]], params=params,
        distributions=dists, user_attrs=dict(genome=genome.id, design="flux_lite", metrics=m,
                                             timings=outcome.timings, student_dir=outcome.student_dir)))
    return tmp, url, cfg, outcome, params_table(denoiser, bound)(genome)


def test_the_teacher_is_resolved_once_into_its_family(toy_dit):
    ref = resolve_teacher(toy_dit)
    assert (ref.kind, ref.family.name, ref.family.pipeline_class) == ("toy-folder", "dit", "PixArtSigmaPipeline")
    assert resolve_teacher(toy_dit).topology() == DitTopology("PixArtTransformer2DModel", (("transformer_blocks", 16),))
    assert resolve_teacher(toy_dit).native_resolution() == 64 and resolve_teacher(toy_dit).is_toy
    assert resolve_teacher("toy").family.name == "unet" and resolve_teacher("toy-dit").family.name == "dit"
    assert resolve(SearchConfig(space="dit_blocks")).teacher == "toy-dit"  # `run --space dit_blocks`: the toy DiT
    assert resolve(SearchConfig(space="unet_blocks")).teacher == "toy"
    with pytest.raises(BlocksearchError, match="unet family but teacher .* is a dit teacher") as err:
        bind_space(load_space("unet_blocks"), resolve_teacher(toy_dit))
    assert "\n" not in str(err.value)


def test_a_trial_distils_probes_and_scores_a_transformer_student(searched):
    tmp, url, cfg, outcome, params = searched
    m = outcome.metrics
    assert outcome.student_dir.endswith("D0-7/transformer")
    assert json.loads((tmp / "runs" / cfg.study / "students" / "D0-7" / "transformer" / "config.json").read_text()
                      )["num_layers"] == 8
    assert m["params"] == params < 4.5e6 and m["macs"] > 0 and m["latency_ms"] > 0 and m["e2e_ms"] > 0
    assert m["fid"] > 0 and 0 <= m["alignment"] <= 1 and m["probe_task"] > 0 and m["probe_guide"] > 0
    assert "transformer" in m["measured"]["params"] and "16 text tokens" in m["measured"]["macs"]
    assert m["measured"]["generation"]["sampler"] == "DPMSolverMultistepScheduler"


def test_the_probe_of_the_teacher_against_itself_is_zero(toy_dit):
    teacher = load_teacher(toy_dit)
    topo = teacher.family.topology(teacher.denoiser.config)
    probe = Probe.build(teacher, teacher.family.kd_teacher_modules(topo), ProbeConfig(batches=1, batch_size=2))
    assert probe.batches[0].cond["encoder_attention_mask"] is not None and probe.empty["encoder_attention_mask"][0].tolist()[:3] == [1, 1, 0]
    pairs = tuple((t, t) for t in teacher.family.kd_teacher_modules(topo))
    own = probe.score(teacher.denoiser, pairs)
    assert own["probe_out"] == own["probe_feat"] == own["probe_guide"] == 0.0 and own["probe_task"] > 0
    student = build_student(teacher.denoiser, resolve_design(teacher.denoiser, "tinyfusion_14", "dit_blocks")[0])
    cut = probe.score(student.denoiser, student.kd_pairs)
    assert cut["probe_out"] > 0 and cut["probe_feat"] > 0


def test_a_continued_student_equals_a_straight_run(toy_dit, tmp_path):
    teacher = load_teacher(toy_dit)
    genome, _ = resolve_design(teacher.denoiser, "D0-3.8-15", "dit_blocks")  # drop_span:4-7, by its id
    base = dict(batch_size=2, cache_dir=str(tmp_path / "cache"), lr=1e-3)

    def student():
        return build_student(teacher.denoiser, genome)

    straight, first, second = student(), student(), student()
    distill(teacher, straight, DistillConfig(steps=4, **base), progress=False, cache_steps=4)
    distill(teacher, first, DistillConfig(steps=2, **base), progress=False, cache_steps=4, save_to=tmp_path / "ck")
    distill(teacher, second, DistillConfig(steps=4, **base), progress=False, cache_steps=4, resume_from=tmp_path / "ck")
    a, b = straight.denoiser.state_dict(), second.denoiser.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["proj_out.weight"], student().denoiser.state_dict()["proj_out.weight"])  # it trained


def test_report_and_export_describe_the_transformer_and_stock_diffusers_loads_it(searched, tmp_path):
    tmp, url, cfg, outcome, _ = searched
    report = build_report(optuna.load_study(study_name=cfg.study, storage=url))
    assert report.trials[0].architecture == ("transformer_blocks: 8 of 16 blocks kept (teacher blocks 0-7); "
                                             "removed 8-15")
    out = tmp_path / "export"
    folder, = export_study(cfg.study, url, out, trial=0)
    card = (folder / "README.md").read_text()
    assert "| `transformer_blocks.3` | transformer block | kept as transformer_blocks.3 | - |" in card
    assert "| `transformer_blocks.12` | transformer block | removed | the whole block |" in card
    assert "PixArtSigmaPipeline.from_pretrained" in card and "max_sequence_length=16" in card
    assert "transformer parameters" in card and "U-Net" not in card
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "PixArtSigmaPipeline" and not (folder / "unet").exists()
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        open(f"{outcome.student_dir}/diffusion_pytorch_model.safetensors", "rb").read())
    script = textwrap.dedent(f"""
        import sys, torch
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r})
        assert type(pipe).__name__ == "PixArtSigmaPipeline" and pipe.transformer.config.num_layers == 8
        images = pipe(["a red circle", "a small blue square"], num_inference_steps=2, guidance_scale=3.0,
                      generator=torch.Generator().manual_seed(0), output_type="np", max_sequence_length=16,
                      use_resolution_binning=False, clean_caption=False).images
        assert images.shape == (2, 64, 64, 3), images.shape
        assert not any(m == "blocksearch" or m.startswith("blocksearch.") for m in sys.modules)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]


def test_distill_and_space_show_take_the_toy_transformer(toy_dit, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", toy_dit, "--space", "dit_blocks", "--design", "tinyfusion_14", "--steps", "1",
                 "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "-o", str(out)]) == 0
    assert json.loads((out / "transformer" / "config.json").read_text())["num_layers"] == 8  # every:2 of 16
    assert json.loads((out / "distill.json").read_text())["genome"] == "D0-14s2" and not (out / "unet").exists()
    assert main(["space", "show", "dit_blocks", "--teacher", toy_dit]) == 0
    shown = capsys.readouterr().out
    assert "(PixArtTransformer2DModel, PixArtSigmaPipeline)" in shown and "16 text tokens" in shown
    assert re.search(r"transformer_blocks +16 +4-16 +64839  keep 25%\.\.100%", shown)  # sum C(16, k), k = 4..16
    assert re.search(r"flux_lite +D0-7 +2\.29M", shown) and "distinct architectures: 64839;" in shown
    with pytest.raises(BlocksearchError, match="unknown design 'bk_small'"):
        resolve_design(load_teacher(toy_dit).denoiser, "bk_small", "dit_blocks")
