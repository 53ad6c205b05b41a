"""Shared tiny models (STYLE.md #8): seeded U-Nets with SD-v1, SD-v2 and SDXL topology, and one tiny
SD pipeline (with a random toy judge: a stand-in for the toy teacher). Plain functions, plus fixtures."""

import os
import sys

import optuna
import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from blocksearch.teachers import resolve_teacher
from blocksearch.families.unet.genome import Genome
from blocksearch.space import load_space
from blocksearch.teachers import resolve_teacher, Teacher
from blocksearch.families.unet.family import FAMILY as UNET
from blocksearch.toy import models as M
from blocksearch.toy.assets import JUDGE_FILE
from blocksearch.toy.judge import ToyJudge
from blocksearch.toy.tiny_sdxl import UNET as TINY_SDXL_UNET

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests start local Ray clusters deliberately without tokens
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = dict(block_out_channels=(8, 16, 16, 16), norm_num_groups=4, sample_size=16,
            cross_attention_dim=16, attention_head_dim=4)
TINY_CONFIGS = {
    "sd-v1": TINY,
    "sd-v2": dict(TINY, cross_attention_dim=24, attention_head_dim=(2, 4, 4, 4), use_linear_projection=True),
    "sdxl": TINY_SDXL_UNET,  # diffusers' SDXL pipeline tests' size (blocksearch/toy/tiny_sdxl.py)
}
SPACE_OF = {"sd-v1": "unet_blocks", "sd-v2": "unet_blocks", "sdxl": "unet_blocks_sdxl"}


def tiny_unet(kind: str = "sd-v1", seed: int = 0) -> UNet2DConditionModel:
    """A tiny seeded U-Net with the block topology of ``kind``; weights are random but non-trivial."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_CONFIGS[kind]).eval()
    with torch.no_grad():  # diffusers zero-initialises some projections; make every tensor distinctive
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet


def make_tiny_pipeline(prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    """A tiny random SD pipeline on the toy vocabulary: 64x64 images -> 4x16x16 latents, SD-v1 topology."""
    torch.manual_seed(0)
    tok = M.make_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    vae = AutoencoderKL(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=64)
    zero_snr = prediction_type == "v_prediction"  # an epsilon model cannot start at zero SNR (Lin et al.)
    sched = DPMSolverMultistepScheduler(**{**M.SCHEDULE, "rescale_betas_zero_snr": zero_snr},
                                        prediction_type=prediction_type)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text.eval(), tokenizer=tok, unet=tiny_unet("sd-v1"),
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_tiny_teacher(tmp_path, prediction_type: str = "epsilon") -> Teacher:
    """The tiny pipeline with a random toy judge: a stand-in for the toy teacher in fast tests."""
    torch.manual_seed(1)
    model = ToyJudge()
    with torch.no_grad():  # scale features up so that FID differences are far above 1e-6
        model.feature.weight.mul_(300)
    judge = tmp_path / JUDGE_FILE
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, judge)
    return Teacher("tiny", make_tiny_pipeline(prediction_type), UNET, judge)


def save_tiny_teacher(tmp_path) -> str:
    """A `blocksearch toy build`-like folder (pipeline + judge.safetensors) for CLI tests."""
    teacher = make_tiny_teacher(tmp_path)
    folder = tmp_path / "teacher"
    teacher.pipeline.save_pretrained(folder, safe_serialization=True)
    (folder / JUDGE_FILE).write_bytes(teacher.judge_path.read_bytes())
    return str(folder)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine, 2 OpenMP threads can be 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_teacher_folder(tmp_path) -> str:
    """``save_tiny_teacher`` in the test's own tmp_path."""
    return save_tiny_teacher(tmp_path)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


_SESSION: dict[str, int] = {}


def pytest_sessionfinish(session, exitstatus):
    _SESSION["exitstatus"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process once pytest has reported, with the session's exit status, skipping the
    interpreter's own teardown. Why: CI once died with SIGSEGV (exit 139) after "564 passed" was printed, in
    native teardown at interpreter exit (not reproduced here in the same suite; Ray's, grpc's and torch's
    threads are the candidates), which turned a passing suite into a failed one. Ray is shut down first, so
    that no local cluster outlives the tests."""
    if "exitstatus" not in _SESSION:
        return
    try:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - the verdict below must not depend on Ray's teardown
        print(f"conftest: ray.shutdown failed at exit: {exc!r}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_SESSION["exitstatus"])


# -- a study as `blocksearch run` writes it, built by hand (report, rungs) -------------------------
OBJECTIVES = ["fid", "params", "latency_ms"]
BK = {"bk_base": "L1-1-1-1_T1-1-1-0_Mattn", "bk_small": "L1-1-1-1_T1-1-1-0_Mnone",
      "bk_tiny": "L1-1-1_T1-1-1_Mnone"}
# (state, values, genome, design): the hand-computed case. Front = trials 2, 3, 1; trial 2 dominates bk_base
# by 10% in every objective; trial 0 (bk_base) has rank 1, trial 4 rank 2 (dominated by trial 0).
CASE = [
    ("COMPLETE", (10.0, 100.0, 10.0), BK["bk_base"], "bk_base"),
    ("COMPLETE", (12.0, 80.0, 8.0), BK["bk_small"], "bk_small"),
    ("COMPLETE", (9.0, 90.0, 9.0), "L1-2-1-2_T1-1-1-0_Mattn", None),
    ("COMPLETE", (11.0, 70.0, 12.0), "L1-1-1_T1-0-1_Mres", None),
    ("COMPLETE", (13.0, 120.0, 11.0), "L2-2-2-2_T0-1-1-0_Mattn", None),
    ("PRUNED", None, "L2-1-2-2_T1-1-1-0_Mnone", None),
    ("FAIL", None, "L2-2-1-1_T1-1-0-0_Mattn", None),
]


CHOICES = {"removed": [False, True], "layers": [1, 2], "depth": [0, 1], "mid_block": ["cross_attn", "resnet", "none"]}


def make_study(tmp_path, case=CASE, name="unet_blocks-toy", teacher="toy", seed_scores=None):
    """A study as `blocksearch run` writes it (the study contract), built with optuna.trial.create_trial;
    ``seed_scores``: design name -> the rows its trial carries (scores at more generation seeds)."""
    url = f"sqlite:///{tmp_path / 'blocksearch.db'}"
    study = optuna.create_study(study_name=name, storage=url, directions=["minimize"] * 3)
    study.set_metric_names(OBJECTIVES)
    space = load_space("unet_blocks")
    bound = space.bind(resolve_teacher("toy").topology())
    attrs = dict(space="unet_blocks", space_path=str(space.path), teacher=teacher,
                 distill=dict(steps=200, batch_size=8, lr=1e-4), eval=dict(prompts=64, steps=20, seed=0),
                 device="cpu", command="blocksearch run --space unet_blocks", reference_designs=BK)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for i, (state, values, genome, design, *extra) in enumerate(case):
        extra = dict(extra[0]) if extra else {}
        constraints = extra.pop("constraints", None)
        params = bound.to_params(Genome.from_id(genome))
        dists = {k: optuna.distributions.CategoricalDistribution(CHOICES[k.rsplit(".", 1)[-1]]) for k in params}
        ua = dict(genome=genome, timings=dict(kd_s=3.0 + i, generate_s=1.0, score_s=0.5, total_s=5.0 + i),
                  student_dir=str(tmp_path / "students" / genome / "unet"))
        if design:
            ua["design"] = design
            if seed_scores and design in seed_scores:
                ua["seed_scores"] = seed_scores[design]
        if values:
            ua["metrics"] = dict(fid=values[0], params=values[1], latency_ms=values[2], macs=1e6 * (i + 1),
                                 alignment=0.5, latency_cv=0.01,
                                 measured=dict(fid="toy-judge features, 64 held-out prompts, seed 0",
                                               latency="median of 20 runs after 3 warm-up, cpu"))
        if state == "FAIL":
            ua["error"] = "non-finite loss at step 7"
        study.add_trial(optuna.trial.create_trial(
            state=getattr(optuna.trial.TrialState, state), values=values, params=params, distributions=dists,
            user_attrs=ua | extra, constraints=constraints))
    return url


# The noise case: the designs' FID at two generation seeds, sample variance 0.5 each: sigma = sqrt(0.5), the FID
# margin z sqrt(2) sigma = 2.0; alignment sigma sqrt(0.0002); params exact; latency_ms from latency_cv 0.01 with the
# repeats unrecorded: sqrt(mean((sqrt(pi/2) x 0.01 x {10, 8})^2)) ~ 0.1135 ms, margin ~ 0.32 ms. Against bk_base
# (10, 100, 10): trial 2 is 1.0 lower in FID only (dominates on raw values, within noise); trial 3 is 1.0 higher in
# FID (within noise) but has 10 fewer params (exact) and 1 ms less latency: beyond noise, though not on raw values;
# trial 5 is 2.5 lower in FID (beyond the margin of 2.0) and better in the rest: beyond noise.
NOISE_CASE = [
    ("COMPLETE", (10.0, 100.0, 10.0), BK["bk_base"], "bk_base"),
    ("COMPLETE", (12.0, 80.0, 8.0), BK["bk_small"], "bk_small"),
    ("COMPLETE", (9.0, 100.0, 10.0), "L1-2-1-2_T1-1-1-0_Mattn", None),
    ("COMPLETE", (11.0, 90.0, 9.0), "L1-1-1_T1-0-1_Mres", None),
    ("COMPLETE", (13.0, 120.0, 11.0), "L2-2-2-2_T0-1-1-0_Mattn", None),
    ("COMPLETE", (7.5, 95.0, 9.5), "L2-1-2-2_T1-1-1-0_Mnone", None),
]
SEED_SCORES = {"bk_base": [{"seed": 0, "fid": 10.0, "alignment": 0.5}, {"seed": 1, "fid": 11.0, "alignment": 0.52}],
               "bk_small": [{"seed": 0, "fid": 12.0, "alignment": 0.5}, {"seed": 1, "fid": 13.0, "alignment": 0.48}]}
