"""`blocksearch run` on a real (SD-format) teacher: settings that follow the teacher, --config, inputs
refused before any trial, a resume with other settings refused, and one end-to-end Ray run (issue 11).

The tiny pipeline, Inception and CLIP weights are random (tests/real/conftest.py): the figures exercise
the real-teacher path, they mean nothing."""

import dataclasses
import json
import shutil

import optuna
import pytest

from blocksearch.search import driver as search
from blocksearch.search import ray_tune
from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.commands.run_config import _step_counts
from blocksearch.search.run_settings import stage_configs
from blocksearch.space import load_space
from blocksearch.study import SearchConfig, open_storage, prepare_study
from blocksearch.families.unet.topology import topology_of
from blocksearch.teachers import resolve_teacher

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def real_args(sd_folder, data_folder, reference_folder, inception_file, clip_folder, tmp_path):
    """The flags of a cheap real-teacher run; the storage and runs dir in tmp_path."""
    return ["run", "--teacher", str(sd_folder), "--data", str(data_folder), "--reference", str(reference_folder),
            "--inception-weights", str(inception_file), "--clip-model", str(clip_folder), "--study", "real",
            "--storage", f"sqlite:///{tmp_path / 's.db'}", "--runs-dir", str(tmp_path / "runs"),
            "--eval-prompts", "4", "--inference-steps", "2", "--steps", "5", "--batch-size", "4", "--rungs", "none"]


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must not start: a run that gets that far stops with this error instead."""
    def refuse(cfg):
        raise BlocksearchError("test: Ray would start here")
    monkeypatch.setattr(ray_tune, "start_ray", refuse)  # the driver starts Ray through search/ray_tune.py


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("blocksearch: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_defaults_follow_the_teacher(sd_folder, data_folder, reference_folder, inception_file, clip_folder):
    toy = resolve_teacher("toy")
    toy_distill, toy_eval = stage_configs(SearchConfig(), toy)
    assert (toy_eval.guidance, toy_eval.steps, toy_eval.resolution) == (3.0, 10, 64) and toy_distill.lr == 5e-4
    assert toy_distill.data == "toy" and toy_eval.reference is None
    cfg = search.resolve(SearchConfig(teacher=str(sd_folder), data=str(data_folder), reference=str(reference_folder),
                                      inception_weights=str(inception_file), clip_model=str(clip_folder)))
    ref = resolve_teacher(cfg.teacher)
    distill_cfg, eval_cfg = stage_configs(cfg, ref)
    assert resolve_teacher(str(sd_folder)).native_resolution() == 32  # unet sample_size 8 x the VAE's 4
    assert (eval_cfg.guidance, eval_cfg.steps, eval_cfg.resolution) == (7.5, 25, 32)  # BK-SDM's, the teacher's size
    assert distill_cfg.lr == 5e-5 and distill_cfg.resolution == 32 and distill_cfg.data == str(data_folder)
    assert eval_cfg.captions == str(data_folder)  # the reference has no captions: the prompts are the data's
    given = dict(guidance=5.0, resolution=16, lr=1e-4, inference_steps=3)
    flags = stage_configs(search.resolve(dataclasses.replace(cfg, **given)), ref)
    assert (flags[1].guidance, flags[1].resolution, flags[1].steps, flags[0].lr) == (5.0, 16, 3, 1e-4)
    with pytest.raises(BlocksearchError, match="--reference, --clip-model: for real teachers"):
        stage_configs(SearchConfig(reference=str(reference_folder), clip_model=str(clip_folder)), toy)
    with pytest.raises(BlocksearchError, match="toy teacher works at its own 64 px"):
        stage_configs(SearchConfig(resolution=128), toy)


def test_config_file_with_flags_overriding_it(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg: seen.append(cfg))
    config = tmp_path / "study.yaml"
    config.write_text("eval-prompts: 8\ninference_steps: 2\nguidance: 4\nobjectives: [fid, params]\nasha: true\n"
                      "teacher-cache: off\nsteps: 5\n")
    assert main(["run", "--config", str(config), "--steps", "7"]) == 0
    cfg = seen[0]
    assert (cfg.eval_prompts, cfg.inference_steps, cfg.guidance, cfg.objectives) == (8, 2, 4.0, ("fid", "params"))
    assert cfg.asha is True and cfg.teacher_cache == "off" and cfg.steps == 7  # the flag wins over the file
    for text, word in (("stepz: 5\n", "unknown key 'stepz'; allowed: space, teacher"), ("steps: five\n", "steps"),
                       ("precision: fp8\n", "fp32 | bf16 | fp16"), ("- steps\n", "expected a mapping"),
                       ("steps: [\n", "malformed YAML")):
        config.write_text(text)
        err = one_line_error(capsys, main(["run", "--config", str(config)]))
        assert str(config) in err and word in err, err
    assert len(seen) == 1


def _break(kind: str, tmp_path, sd_folder, data_folder, reference_folder, inception_file, clip_folder):
    """The flag to change and its bad value, and what the one-line error must say."""
    if kind == "teacher without unet/":
        bad = shutil.copytree(sd_folder, tmp_path / "teacher")
        shutil.rmtree(bad / "unet")
        return "--teacher", bad, "has no unet/"
    if kind == "data without captions":
        bad = shutil.copytree(data_folder, tmp_path / "data")
        (bad / "metadata.jsonl").unlink()
        return "--data", bad, "has no captions"
    if kind == "empty reference":
        (tmp_path / "ref").mkdir()
        return "--reference", tmp_path / "ref", "has 0 images"
    if kind == "unreadable weights":
        (tmp_path / "w.pth").write_bytes(b"not a checkpoint")
        return "--inception-weights", tmp_path / "w.pth", "do not open with torch.load(weights_only=True)"
    return "--clip-model", tmp_path / "no-clip", "does not exist"


@pytest.mark.parametrize("kind", ["teacher without unet/", "data without captions", "empty reference",
                                  "unreadable weights", "missing CLIP folder"])
def test_bad_real_inputs_are_refused_before_any_trial(kind, real_args, tmp_path, no_ray, capsys, sd_folder,
                                                      data_folder, reference_folder, inception_file, clip_folder):
    flag, bad, message = _break(kind, tmp_path, sd_folder, data_folder, reference_folder, inception_file, clip_folder)
    args = list(real_args)
    args[args.index(flag) + 1] = str(bad)
    err = one_line_error(capsys, main(args))
    assert message in err and str(bad) in err, err
    assert not optuna.study.get_all_study_names(f"sqlite:///{tmp_path / 's.db'}")  # no study, no trial, no Ray
    assert not (tmp_path / "runs").exists()


def test_a_real_teacher_needs_its_inputs(real_args, no_ray, capsys):
    def without(flag):
        i = real_args.index(flag)
        return real_args[:i] + real_args[i + 2:]

    for flag, message in (("--data", "pass --data"), ("--reference", "pass --reference"),
                          ("--clip-model", "needs a CLIP score: pass --clip-model DIR")):
        err = one_line_error(capsys, main(without(flag)))
        assert message in err, err
    err = one_line_error(capsys, main(real_args + ["--eval-prompts", "40"]))  # 32 reference images
    assert "has 32 images; FID here needs at least 40" in err


def test_a_resumed_study_with_other_settings_is_refused_untouched(real_args, sd_folder, tmp_path, no_ray, capsys):
    cfg = search.resolve(search_config(real_args))
    ref = resolve_teacher(cfg.teacher)
    teacher_unet = ref.load_denoiser()
    bound = load_space("unet_blocks").bind(topology_of(teacher_unet.config))
    job, attrs = search.trial_job(cfg, ref, bound, teacher_unet)
    assert len(attrs["teacher_unet_sha256"]) == 64 and attrs["data"]["items"] == 32
    assert attrs["eval_set"]["reference_images"] == 32 and attrs["eval"]["guidance"] == 7.5
    storage = open_storage(cfg.storage)
    study = prepare_study(storage, cfg, bound, attrs)
    before = (dict(study.user_attrs), [(t.number, t.state) for t in study.trials])
    err = one_line_error(capsys, main(real_args + ["--steps", "6", "--guidance", "2"]))
    assert "distill.steps 5 -> 6" in err and "eval.guidance 7.5 -> 2.0" in err and "new --study" in err, err
    after = optuna.load_study(study_name="real", storage=storage)
    assert (dict(after.user_attrs), [(t.number, t.state) for t in after.trials]) == before
    # what does not change a trial's result may change: --trials, --max-concurrent, --cpus-per-trial, ...
    code = main(real_args + ["--trials", "9", "--max-concurrent", "1", "--cpus-per-trial", "2",
                             "--teacher-cache", "off"])
    assert code == 2 and "Ray would start here" in capsys.readouterr().err


def search_config(args: list[str]) -> SearchConfig:
    pairs = dict(zip(args[1::2], args[2::2]))
    types = {"eval_prompts": int, "inference_steps": int, "steps": int, "batch_size": int, "rungs": _step_counts}
    return SearchConfig(**{k[2:].replace("-", "_"): types.get(k[2:].replace("-", "_"), str)(v)
                           for k, v in pairs.items()})


@pytest.mark.integration
@pytest.mark.slow  # ~2 min; CI runs a folder teacher end to end on Ray (test_tiny_pipelines_run.py[sd3]) and the real-FID path (test_coco.py)
def test_run_on_a_real_teacher_end_to_end(real_args, tmp_path, capsys, monkeypatch):
    """Two Ray trials on the tiny SD-format teacher, then the report and an exported student that plain
    diffusers loads. --min-alignment 0: a random tiny CLIP's alignment is noise around 0 (it may be
    negative), so a floor relative to the teacher's would mean nothing here. ~1-2 min on 2 busy cores."""
    from diffusers import StableDiffusionPipeline

    from tests.integration.conftest import free_port

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    code = main(real_args + ["--trials", "2", "--min-alignment", "0", "--dashboard-port", str(free_port())])
    out = capsys.readouterr().out
    assert code == 0, out
    study = optuna.load_study(study_name="real", storage=f"sqlite:///{tmp_path / 's.db'}")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2, out
    for t in complete:
        measured = t.user_attrs["metrics"]["measured"]
        assert measured["fid"]["feature_extractor"] == "inception-v3-compat"
        assert measured["alignment"].startswith("CLIP score") and t.user_attrs["metrics"]["alignment"] is not None
        assert measured["generation"]["guidance"] == 7.5 and measured["generation"]["resolution"] == [32, 32]
    assert study.user_attrs["eval"]["clip_model"] and len(study.user_attrs["teacher_unet_sha256"]) == 64
    assert "teacher cache ready: " in out
    assert (tmp_path / "reports" / "real" / "index.html").is_file()
    exported = tmp_path / "export"
    assert main(["export", "--study", "real", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--trial",
                 str(complete[0].number), "-o", str(exported)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(exported)  # plain diffusers, no blocksearch code
    assert json.loads((exported / "unet" / "config.json").read_text())["sample_size"] == 8
    assert sum(p.numel() for p in pipe.unet.parameters()) == complete[0].user_attrs["metrics"]["params"]


def test_weights_sha256_sees_every_byte(sd_folder):
    import torch

    from blocksearch.teachers import resolve_teacher, weights_sha256

    unet = resolve_teacher(str(sd_folder)).load_denoiser()
    before = weights_sha256(unet)
    assert before == weights_sha256(resolve_teacher(str(sd_folder)).load_denoiser())  # stable across loads
    with torch.no_grad():
        last = list(unet.parameters())[-1]
        last.view(-1)[-1] += 1e-3  # one value, far from the leading ones that data.fingerprint reads
    assert weights_sha256(unet) != before


def test_evaluate_defaults_follow_the_teacher(sd_folder, reference_folder, data_folder, monkeypatch, tmp_path):
    """`blocksearch evaluate` on an SD teacher: BK-SDM's guidance 7.5 and 25 steps unless given."""
    import blocksearch.recipe.evaluate as E

    seen = []
    monkeypatch.setattr(E, "evaluate", lambda teacher, unet, config, device: seen.append(config) or 1 / 0)
    args = ["evaluate", str(sd_folder), "--teacher", str(sd_folder), "--reference", str(reference_folder),
            "--captions", str(data_folder), "--prompts", "4"]
    for extra in ([], ["--guidance", "2", "--inference-steps", "3"]):
        with pytest.raises(ZeroDivisionError):
            main(args + extra)
    assert [(c.guidance, c.steps) for c in seen] == [(7.5, 25), (2.0, 3)]
