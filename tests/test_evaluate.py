"""Evaluation: deterministic FID through torch-fidelity, honest metrics, one scorer per teacher, errors."""

import json

import pytest
import torch
import torch_fidelity

from blocksearch.cli import main
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.evaluate import EvalConfig, Metrics, RealScorer, ToyScorer, evaluate, image_distance, scorer_for
from blocksearch.recipe.generation import ImageSet
from blocksearch.teachers import Teacher
from blocksearch.toy.world import heldout_prompts, real_images
from blocksearch.families.unet.family import FAMILY as UNET
from tests.conftest import make_tiny_pipeline, make_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(prompts=12, steps=2, reference_images=24, latency_warmup=1, latency_repeats=3, latency_min_s=0.0)


def test_same_student_prompts_and_seeds_give_the_same_fid(tmp_path):
    teacher = make_tiny_teacher(tmp_path)
    config = EvalConfig(**FAST, cache_dir=str(tmp_path / "cache"))
    first = evaluate(teacher, teacher.unet, config, progress=False)
    assert list((tmp_path / "cache" / "fidelity").glob("blocksearch-ref-*"))  # reference stats cached
    again = evaluate(teacher, teacher.unet, config, progress=False)
    assert abs(first.fid - again.fid) < 1e-6 and first.alignment == again.alignment
    other = evaluate(teacher, teacher.unet, EvalConfig(**FAST | {"seed": 1}, cache_dir=str(tmp_path / "cache")),
                     progress=False)
    assert abs(other.fid - first.fid) > 1e-6  # the seeds matter: the test can fail
    assert first.fid > 0 and 0 <= first.alignment <= 1
    assert first.params == sum(p.numel() for p in teacher.unet.parameters()) and first.macs > 0
    assert first.latency_ms > 0 and first.latency_cv >= 0
    assert set(first.timings) == {"generate_s", "score_s", "latency_s"}
    m = first.measured
    assert m["fid"]["feature_extractor"] == "toy-judge" and m["generation"]["prompts"] == 12
    assert m["latency"]["what"].startswith("one U-Net forward, batch 2") and "torch_threads" in m["latency"]
    assert first.kid > 0 and first.kid_std >= 0 and "12" in m["fid"]["kid"]  # KID subsets capped at 12 images
    assert Metrics.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    old_study = {k: v for k, v in first.to_dict().items() if k not in ("kid", "kid_std")}
    assert Metrics.from_dict(old_study).kid is None  # metrics stored before KID still load


def test_kid_leaves_fid_as_it_was(tmp_path):
    """FID of the FID-only torch-fidelity call (before KID was added) equals FID next to KID."""
    teacher = make_tiny_teacher(tmp_path)
    prompts = [p for p, _ in heldout_prompts(12)]
    images, reference = real_images(12, 7, prompts), real_images(24, 8, prompts)
    distance, how = image_distance(images, ImageSet.of(reference), "toy-judge", str(teacher.judge_path), tmp_path,
                                   "cpu", ["test"], "24 images")
    fid_only = torch_fidelity.calculate_metrics(
        input1=ImageSet.of(images), input2=ImageSet.of(reference), fid=True, feature_extractor="toy-judge",
        feature_extractor_weights_path=str(teacher.judge_path), cuda=False, cache=False, verbose=False)
    assert distance.fid == pytest.approx(fid_only["frechet_inception_distance"], rel=1e-12)
    assert distance.kid_std >= 0 and "subsets of 12" in how["kid"]


def test_one_scorer_per_kind_of_teacher(tmp_path):
    """The toy scorer (bundled judge): held-out prompts; toy-FID and alignment rank real images above noise."""
    from blocksearch.toy.assets import ASSETS, JUDGE_FILE

    teacher = make_tiny_teacher(tmp_path)
    config = EvalConfig(**FAST, cache_dir=str(tmp_path))
    assert isinstance(scorer_for(teacher, config), ToyScorer)
    toy = ToyScorer(ASSETS / JUDGE_FILE, config)
    prompts, seeds = toy.prompt_set()
    assert list(zip(prompts, seeds)) == heldout_prompts(12)
    real = real_images(12, 7, prompts)
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (d_real, how), (d_noise, _) = (toy.distance(images, prompts, tmp_path, "cpu") for images in (real, noise))
    assert d_real.fid < 0.5 * d_noise.fid and d_real.kid < d_noise.kid and how["feature_extractor"] == "toy-judge"
    assert toy.alignment(real, prompts, "cpu")[0] > 0.8 > toy.alignment(noise, prompts, "cpu")[0]
    real_teacher = scorer_for(Teacher("some/real-model", teacher.pipeline, teacher.family), config)
    assert isinstance(real_teacher, RealScorer) and real_teacher.alignment(real, prompts, "cpu")[0] is None


def test_real_teacher_without_inception_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    data = tmp_path / "ref"
    data.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(data / "0.png")
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "0.png", "text": "a red circle"}) + "\n")
    teacher = Teacher("some/real-model", make_tiny_pipeline(), UNET)  # no judge: a real teacher
    config = EvalConfig(**FAST | {"prompts": 1}, reference=str(data), cache_dir=str(tmp_path))
    with pytest.raises(BlocksearchError, match="weights-inception-2015-12-05-6726825d.pth.*offline"):
        evaluate(teacher, teacher.unet, config, progress=False)
    with pytest.raises(BlocksearchError, match="needs --reference"):
        evaluate(teacher, teacher.unet, EvalConfig(**FAST), progress=False)


def test_cli_evaluate_writes_metrics(tiny_teacher_folder, tmp_path, capsys):
    folder = tiny_teacher_folder
    student = tmp_path / "student"
    assert main(["distill", "--teacher", folder, "--design", "bk_small", "--steps", "0", "-o", str(student),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(["evaluate", str(student), "--prompts", "8", "--inference-steps", "2", "--reference-images", "16",
                 "--latency-repeats", "2", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["teacher"] == folder and metrics["eval"]["prompts"] == 8
    assert "fid" in out and "metrics written to" in out
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    # -o an existing folder: the metrics go to <folder>/metrics.json (it used to end in a traceback after the work)
    (tmp_path / "runs").mkdir()
    args = [str(student), "--prompts", "8", "--inference-steps", "2", "--reference-images", "16",
            "--latency-repeats", "2", "--cache-dir", str(tmp_path / "cache")]
    assert main(["evaluate", *args, "-o", str(tmp_path / "runs")]) == 0
    assert json.loads((tmp_path / "runs" / "metrics.json").read_text())["eval"]["prompts"] == 8
    assert "the toy evaluation set has" not in capsys.readouterr().out  # a tiny teacher: not the toy's set


def test_cli_evaluate_refuses_an_output_in_a_missing_folder_before_any_work(tmp_path, capsys, monkeypatch):
    import blocksearch.commands.evaluate as cli
    import blocksearch.teachers
    monkeypatch.setattr(blocksearch.teachers, "load_teacher", lambda *a, **k: pytest.fail("work started"))
    code = main(["evaluate", str(tmp_path), "-o", str(tmp_path / "no" / "such" / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"-o {tmp_path / 'no' / 'such' / 'm.json'}: folder {tmp_path / 'no' / 'such'} does not exist" in err[0]
    assert cli.metrics_path(None, tmp_path, "metrics.json") == tmp_path / "metrics.json"
    assert cli.metrics_path(str(tmp_path), tmp_path / "x", "m.json") == tmp_path / "m.json"
    assert cli.metrics_path(str(tmp_path / "a.json"), tmp_path / "x", "m.json") == tmp_path / "a.json"


def test_cli_evaluate_says_when_the_toy_set_has_fewer_prompts_than_asked(tmp_path, capsys, monkeypatch):
    import blocksearch.recipe.evaluate
    student = tmp_path / "student"
    assert main(["distill", "--design", "bk_tiny", "--steps", "0", "-o", str(student),
                 "--cache-dir", str(tmp_path / "cache")]) == 0

    def stop(*a, **k):
        raise BlocksearchError("stopped before generating")
    monkeypatch.setattr(blocksearch.recipe.evaluate, "evaluate", stop)
    capsys.readouterr()
    assert main(["evaluate", str(student), "--prompts", "512"]) == 2
    assert "--prompts 512: the toy evaluation set has 312 prompts; all of them are generated" in capsys.readouterr().out
    assert main(["evaluate", str(student), "--prompts", "128"]) == 2
    assert "the toy evaluation set has" not in capsys.readouterr().out


def test_the_toy_prompts_note_names_the_flag_and_stays_quiet_within_the_set():
    from types import SimpleNamespace

    from blocksearch.recipe.evaluate import toy_prompts_note
    toy, real = SimpleNamespace(is_toy=True), SimpleNamespace(is_toy=False)
    assert toy_prompts_note("--eval-prompts", 400, toy) == ("--eval-prompts 400: the toy evaluation set has 312 "
                                                            "prompts; all of them are generated")
    assert toy_prompts_note("--eval-prompts", 312, toy) is None
    assert toy_prompts_note("--eval-prompts", 400, real) is None
