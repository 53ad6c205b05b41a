"""KD lr schedule per run segment (a warm restart: SGDR) and EMA of the student (issue 19); opt-in, so a
default run and its identity (checkpoints, bench fidelity's checkpoint root) are what they were before."""

import json
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

import blocksearch.recipe.distill as D
from blocksearch.bench.fidelity import checkpoint_root, run_identity, stage_settings
from blocksearch.cli import build_parser
from blocksearch.recipe.distill import CHECKPOINT_FILE, EMA_FILE, DistillConfig, distill, resolve_design, trajectory
from blocksearch.errors import BlocksearchError
from blocksearch.families.unet.surgery import build_student
from blocksearch.recipe.schedules import lr_at
from tests.conftest import make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

# TRAJECTORY before issue 19: the identity of a default run must stay exactly this
OLD_TRAJECTORY = ("batch_size", "lr", "lambda_task", "lambda_out", "lambda_feat", "feat_norm", "precision", "seed",
                  "data", "resolution", "max_grad_norm")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def _student(teacher):
    return build_student(teacher.unet, resolve_design(teacher.unet, "bk_small")[0])


def _config(tmp_path, steps, **kw):
    return DistillConfig(steps=steps, batch_size=2, cache_dir=str(tmp_path / "cache"), teacher_cache="off", **kw)


def _weights(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lr_restarts_its_warmup_and_decay_in_each_segment(tmp_path, teacher, monkeypatch):
    applied, step = [], D.Distiller.step

    def spy(self, *args):
        applied.append(self.opt.param_groups[0]["lr"])
        return step(self, *args)

    monkeypatch.setattr(D.Distiller, "step", spy)
    base = DistillConfig.lr
    distill(teacher, _student(teacher), _config(tmp_path, 5, schedule="cosine", warmup=2), progress=False,
            save_to=tmp_path / "ck5")
    distill(teacher, _student(teacher), _config(tmp_path, 9, schedule="cosine", warmup=2), progress=False,
            resume_from=tmp_path / "ck5")
    want = [lr_at(j, base, 2, 5, "cosine") for j in range(5)] + [lr_at(j, base, 2, 4, "cosine") for j in range(4)]
    assert applied == pytest.approx(want, rel=1e-12)
    assert applied[0] == applied[5] == base / 2 and applied[1] == applied[6] == base  # the warm-up restarts
    assert base > applied[3] > applied[4] and base > applied[8]  # then each segment decays
    info = json.loads((tmp_path / "ck5" / CHECKPOINT_FILE).read_text())
    assert info["distill"]["schedule"] == "cosine" and info["distill"]["warmup"] == 2 and "ema" not in info["distill"]
    with pytest.raises(BlocksearchError, match="its distill differs"):  # another schedule: another trajectory
        distill(teacher, _student(teacher), _config(tmp_path, 7, schedule="linear", warmup=2), progress=False,
                resume_from=tmp_path / "ck5")


def test_ema_student_is_the_closed_form_and_a_ladder_equals_a_straight_run(tmp_path, teacher):
    decay = 0.5
    student = _student(teacher)
    ema = {k: v.detach().clone() for k, v in student.unet.named_parameters()}  # from the surgery's
    raw = []
    distill(teacher, student, _config(tmp_path, 4, ema=decay), progress=False, save_to=tmp_path / "straight",
            on_step=lambda i, r: raw.append({k: v.detach().clone() for k, v in student.unet.named_parameters()}))
    for n, w in enumerate(raw):  # ema <- d * ema + (1 - d) * w after every step, d warmed up to decay
        d = min(decay, (1 + n) / (10 + n))
        ema = {k: d * ema[k] + (1 - d) * w[k] for k in ema}
    final = dict(student.unet.named_parameters())
    assert all(torch.allclose(final[k], ema[k], atol=1e-6) for k in ema)
    saved_ema, saved_raw = (load_file(tmp_path / "straight" / f) for f in (EMA_FILE, D.WEIGHTS_FILE))
    assert _same(_weights(student.unet), saved_ema)  # the student is the EMA; the checkpoint keeps the raw ones
    assert all(torch.equal(saved_raw[k], w) for k, w in raw[-1].items())
    assert not torch.allclose(saved_raw["conv_out.weight"], saved_ema["conv_out.weight"])

    distill(teacher, _student(teacher), _config(tmp_path, 2, ema=decay), progress=False, save_to=tmp_path / "ck2")
    ladder = _student(teacher)
    distill(teacher, ladder, _config(tmp_path, 4, ema=decay), progress=False, resume_from=tmp_path / "ck2",
            save_to=tmp_path / "ck4")
    for name in (EMA_FILE, D.WEIGHTS_FILE):  # constant lr: 0->2->4 is 0->4, raw and EMA weights alike
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "ck4" / name)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    again = _student(teacher)  # at its checkpoint's step: trains nothing, ends with the EMA weights
    distill(teacher, again, _config(tmp_path, 4, ema=decay), progress=False, resume_from=tmp_path / "ck4")
    assert _same(_weights(again.unet), load_file(tmp_path / "ck4" / EMA_FILE))


def test_defaults_keep_the_identity_and_checkpoints_of_before(tmp_path, teacher):
    cfg = DistillConfig()
    old = {k: getattr(cfg, k) for k in OLD_TRAJECTORY}
    assert trajectory(cfg) == old and trajectory(asdict(cfg)) == old
    assert trajectory({k: v for k, v in asdict(cfg).items() if k not in D.OPTIONAL_TRAJECTORY}) == old
    assert trajectory(DistillConfig(ema=0.9, warmup=3)) == old | {"warmup": 3, "ema": 0.9}

    args = build_parser().parse_args(["bench", "fidelity"])
    distill_dict, eval_dict = stage_settings(args)
    assert not set(D.OPTIONAL_TRAJECTORY) & set(distill_dict)
    identity = run_identity(teacher, distill_dict, eval_dict)
    stage = {k: distill_dict[k] for k in OLD_TRAJECTORY}
    assert identity["distill"] == stage and list(identity["distill"]) == list(OLD_TRAJECTORY)
    before = run_identity(teacher, dict(stage), eval_dict)  # the dict of a version without the new settings
    assert checkpoint_root(identity) == checkpoint_root(before)
    cosine = run_identity(teacher, distill_dict | {"schedule": "cosine"}, eval_dict)
    assert checkpoint_root(cosine) != checkpoint_root(identity)

    distill(teacher, _student(teacher), _config(tmp_path, 1), progress=False, save_to=tmp_path / "ck")
    info = json.loads((tmp_path / "ck" / CHECKPOINT_FILE).read_text())
    assert list(info["distill"]) == list(OLD_TRAJECTORY) and not (tmp_path / "ck" / EMA_FILE).exists()
    with pytest.raises(BlocksearchError, match="its distill differs"):  # no EMA in it to continue
        distill(teacher, _student(teacher), _config(tmp_path, 2, ema=0.5), progress=False, resume_from=tmp_path / "ck")


@pytest.mark.parametrize("kw, allowed", [
    ({"schedule": "step"}, "allowed: constant, linear, cosine"),
    ({"warmup": -1}, "allowed: an integer >= 0"),
    ({"warmup": 1.5}, "allowed: an integer >= 0"),
    ({"ema": 1.0}, r"allowed: 0 \(off\) or a decay in \(0, 1\)"),
    ({"ema": -0.1}, r"allowed: 0 \(off\) or a decay in \(0, 1\)"),
])
def test_bad_values_name_the_allowed_ones(kw, allowed):
    with pytest.raises(BlocksearchError, match=allowed) as err:
        DistillConfig(**kw)
    assert "\n" not in str(err.value)


def test_bench_fidelity_flags_reach_the_distill_settings_only_when_set(capsys):
    parser = build_parser()
    args = parser.parse_args(["bench", "fidelity", "--kd-schedule", "cosine", "--kd-warmup", "3", "--kd-ema", "0.9"])
    distill_dict, _ = stage_settings(args)
    assert {k: distill_dict[k] for k in D.OPTIONAL_TRAJECTORY} == {"schedule": "cosine", "warmup": 3, "ema": 0.9}
    assert DistillConfig.from_dict(distill_dict).schedule == "cosine"
    only = stage_settings(parser.parse_args(["bench", "fidelity", "--kd-ema", "0.99", "--kd-schedule", "constant"]))[0]
    assert only["ema"] == 0.99 and "schedule" not in only and "warmup" not in only
    with pytest.raises(BlocksearchError, match="allowed: an integer >= 0"):
        stage_settings(parser.parse_args(["bench", "fidelity", "--kd-warmup", "-2"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "fidelity", "--help"])
    assert "warm restart" in capsys.readouterr().out


def test_run_flags_reach_every_trial_s_distill_config_and_bad_ones_exit_2(capsys):
    from blocksearch.cli import main
    from blocksearch.search.run_settings import stage_configs
    from blocksearch.study import SearchConfig
    from blocksearch.teachers import resolve_teacher

    toy = resolve_teacher("toy")
    cfg = stage_configs(SearchConfig(kd_schedule="cosine", kd_warmup=5, kd_ema=0.9), toy)[0]
    assert (cfg.schedule, cfg.warmup, cfg.ema) == ("cosine", 5, 0.9)
    assert trajectory(cfg)["schedule"] == "cosine"  # a rung continues only a student of the same schedule
    default = stage_configs(SearchConfig(), toy)[0]
    assert (default.schedule, default.warmup, default.ema) == ("constant", 0, 0.0)
    for argv, message in ((["--kd-ema", "1.5"], "--kd-ema 1.5: allowed: 0 (off) or a decay in (0, 1)"),
                          (["--kd-warmup", "-1"], "--kd-warmup -1: allowed: an integer >= 0")):
        assert main(["run", *argv, "--print-config"]) == 2
        assert message in capsys.readouterr().err
