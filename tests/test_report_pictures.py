"""The report's pictures (issue 34): block diagrams drawn from the family's ``layout``, the sample grid (one row
per model, the same prompts and seeds in each, the evaluation's own images), legends that hide no point (on the
drawn extents, not pixels) in the committed examples, the first stage's promoted students, and optuna artifacts
read back through optuna's own API."""

import base64
import csv
import json
from pathlib import Path

import optuna
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

from blocksearch.families.base import get_family
from blocksearch.families.dit.genome import load_teacher_config, topology_of as dit_topology
from blocksearch.families.unet.genome import Genome
from blocksearch.families.unet.surgery import build_student, student_config
from blocksearch.families.unet.topology import SDXL, topology_of as unet_topology
from blocksearch.recipe.evaluate import EvalConfig, ToyScorer, generate_images
from blocksearch.report import plots, render
from blocksearch.report.artifacts import upload_pictures
from blocksearch.report.compute import build_report, load_report
from blocksearch.report.diagram import boxes, diagram_figure
from blocksearch.report.pictures import draw_pictures
from blocksearch.report.samples import SAMPLES, SAMPLES_DIR, grid_figure, models, sample_grid, sample_set
from blocksearch.teachers import load_teacher, resolve_teacher
from tests.conftest import make_study, save_tiny_teacher

ROOT = Path(__file__).resolve().parents[1]
UNET, DIT = get_family("unet"), get_family("dit")
TOY = resolve_teacher("toy").topology()


def expected_boxes(stages) -> dict[str, bool]:
    out = {f"{s.name}/{p.source}": p.kept for s in stages for p in s.parts}
    out |= {f"{s.name}/{p.source}/attention": p.kept_attention > 0 for s in stages for p in s.parts
            if p.attention and s.role != "blocks"}
    return out


# -- diagrams: the drawn boxes are the family's description ---------------------------------------------------
@pytest.mark.parametrize("family, topo, arch", [
    (UNET, TOY, "L1-1-1_T1-1-1_Mnone"), (UNET, TOY, "L2-1-1_T1-0-1_Mnone"), (UNET, TOY, "L2-2-2-2_T1-1-1-0_Mattn"),
    (UNET, unet_topology(SDXL), "L2-1-1_T0-2-4_Mres"),
    (DIT, dit_topology(load_teacher_config("pixart-sigma")), "D0-26s2"),
    (DIT, dit_topology(load_teacher_config("flux-dev")), "D0-7_S0-37")])
def test_the_diagram_draws_the_family_layout(family, topo, arch):
    stages = family.layout(family.arch_from_id(arch), topo)
    assert boxes(diagram_figure(stages, arch)) == expected_boxes(stages)


def test_the_unet_layout_is_what_surgery_keeps():
    """bk_tiny on the toy teacher: one layer per down stage, up stages keep layers 0 and 2 of 3 (BK-SDM), no mid
    block, no innermost stage; the kept resnets add up to the student config's layers."""
    genome = Genome.from_id("L1-1-1_T1-1-1_Mnone")
    drawn = boxes(diagram_figure(UNET.layout(genome, TOY)))
    assert [drawn[f"up_blocks.1/{k}"] for k in range(3)] == [True, False, True]
    assert not any(v for k, v in drawn.items() if k.startswith(("down_blocks.3/", "up_blocks.0/", "mid_block/")))
    config = student_config(resolve_teacher("toy").load_denoiser("meta").config, genome)
    assert sum(v for k, v in drawn.items() if k.startswith("down_blocks") and "attention" not in k) == \
        sum(config["layers_per_block"])
    sdxl = boxes(diagram_figure(UNET.layout(Genome.from_id("L2-1-1_T0-2-4_Mres"), unet_topology(SDXL))))
    assert sdxl["mid_block/0"] and not sdxl["mid_block/1"] and not sdxl["mid_block/1/attention"]
    assert "down_blocks.0/0/attention" not in sdxl  # SDXL's first stage has no attention


def test_the_transformer_layout_labels_kept_blocks_by_teacher_block():
    topo = dit_topology(load_teacher_config("flux-dev"))
    fig = diagram_figure(DIT.layout(DIT.arch_from_id("D0-7_S0-37"), topo))
    drawn = boxes(fig)
    assert [drawn[f"transformer_blocks/{t}"] for t in range(19)] == [t < 8 for t in range(19)]
    assert all(drawn[f"single_transformer_blocks/{t}"] for t in range(38))
    pixart = DIT.layout(DIT.arch_from_id("D0-26s2"), dit_topology(load_teacher_config("pixart-sigma")))
    labels = {t.get_text() for t in diagram_figure(pixart).axes[0].texts}
    assert {str(t) for t in range(0, 28, 2)} <= labels and "1" not in labels


# -- the sample grid -------------------------------------------------------------------------------------------
@pytest.fixture
def sampled_study(tmp_path, one_thread):
    """make_study's case on a tiny toy-like teacher folder, each student saved (surgery, untrained), and a
    12-prompt, 2-step evaluation."""
    folder = save_tiny_teacher(tmp_path)
    url = make_study(tmp_path, teacher=folder)
    study = optuna.load_study(study_name="unet_blocks-toy", storage=url)
    study.set_user_attr("eval", EvalConfig(prompts=12, steps=2, batch_size=64).to_dict())
    teacher = load_teacher(folder)
    for t in study.get_trials():
        if t.values:
            build_student(teacher.denoiser, Genome.from_id(t.user_attrs["genome"])).unet.save_pretrained(
                t.user_attrs["student_dir"], safe_serialization=True)
    return url, teacher, tmp_path


def test_the_grid_has_a_row_per_model_on_the_same_prompts_and_seeds(sampled_study, monkeypatch):
    url, teacher, tmp_path = sampled_study
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    report = load_report("unet_blocks-toy", url)
    grid = sample_grid(report)
    assert [r.label for r in grid.rows] == ["teacher"] + [t.design or f"trial {t.number}" for t in models(report)]
    assert all(r.images.shape[0] == SAMPLES and r.images.dtype == torch.uint8 for r in grid.rows)
    kept = [json.loads((Path(t.student_dir).parent / SAMPLES_DIR / "samples.json").read_text())
            for t in models(report)]
    assert all(k["prompts"] == list(grid.samples.prompts) and k["seeds"] == list(grid.samples.seeds) for k in kept)
    assert len(set(grid.samples.prompts)) == SAMPLES  # spread over the set, not its first prompts
    # each row holds the images the evaluation scored: the whole prompt set generated at once, then picked
    config = EvalConfig.from_dict(report.attrs["eval"])
    prompts, seeds = ToyScorer(None, config).prompt_set()
    full = generate_images(teacher, teacher.denoiser, prompts, seeds, config, "cpu", progress=False)
    picks = [prompts.index(p) for p in grid.samples.prompts]
    assert (full[picks].int() - grid.rows[0].images.int()).abs().max() <= 1
    fig = grid_figure(grid.samples, grid.rows)
    assert len(fig.axes) == len(grid.rows) * SAMPLES
    assert [ax.get_ylabel() for ax in fig.axes[::SAMPLES]] == [r.label for r in grid.rows]
    assert all(f"seed {s}" in ax.get_title() for ax, s in zip(fig.axes[:SAMPLES], grid.samples.seeds))
    again = sample_grid(report)  # read back from the kept PNGs, not generated again
    assert all(torch.equal(a.images, b.images) for a, b in zip(grid.rows, again.rows))
    out = render.write_report("unet_blocks-toy", url, tmp_path / "report")
    readme = (out / "README.md").read_text()
    assert "![the teacher, the front students and the reference designs on the same prompts](samples.png)" in readme
    assert (out / "samples" / f"trial{grid.rows[1].trial}-samples.png").is_file()


def test_a_study_that_generated_no_images_has_no_grid(tmp_path):
    url = make_study(tmp_path)
    optuna.load_study(study_name="unet_blocks-toy", storage=url).set_user_attr("eval", {"images": False})
    assert sample_set({"eval": {"images": False}}, True) is None
    assert sample_grid(load_report("unet_blocks-toy", url)) is None


# -- plots that never hide data: the committed examples -----------------------------------------------------
def study_of_csv(tmp_path, folder: str, name: str, attrs: dict | None = None) -> str:
    """A study with the trials of a committed report's trials.csv (objective values, genome, design, feasible)."""
    rows = list(csv.DictReader(open(ROOT / "reports" / folder / "trials.csv")))
    head = list(rows[0])
    objectives = head[head.index("on_front") + 1:next(i for i, h in enumerate(head) if h.startswith("metrics."))]
    url = f"sqlite:///{tmp_path / 'blocksearch.db'}"
    study = optuna.create_study(study_name=name, storage=url, directions=["minimize"] * len(objectives),
                                load_if_exists=True)
    study.set_metric_names(objectives)
    for k, v in (attrs or {}).items():
        study.set_user_attr(k, v)
    for r in rows:
        complete = r["state"] == "COMPLETE" and all(r[o] for o in objectives)
        ua = {"genome": r["genome"]} | ({"design": r["design"]} if r["design"] else {})
        if "promoted_from" in (attrs or {}):
            ua["promoted_from"] = attrs["promoted_from"][r["genome"]]
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.FAIL,
            values=[float(r[o]) for o in objectives] if complete else None, user_attrs=ua,
            constraints={"text_rule": 0.0 if r["feasible"] == "True" else 1.0}))
    return url


def hidden_points(fig) -> list:
    """Data points (display coordinates of every scatter offset) inside a legend's drawn box."""
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends, "no legend drawn"
    boxes_ = [leg.get_window_extent(renderer) for leg in legends]
    hidden = []
    for ax in fig.axes:
        for coll in ax.collections:
            for x, y in ax.transData.transform(coll.get_offsets()):
                hidden += [(ax.get_xlabel(), x, y) for b in boxes_ if b.contains(x, y)]
    return hidden


@pytest.mark.parametrize("base", ["unet_blocks-toy", "dit_blocks-toy-dit"])
def test_no_legend_hides_a_point_of_the_committed_examples(tmp_path, base):
    below = {r["genome"]: int(r["number"]) for r in csv.DictReader(open(ROOT / "reports" / base / "trials.csv"))}
    url = study_of_csv(tmp_path, base, base, {"rungs": [480]})
    promoted = {r["genome"]: below[r["genome"]] for r in csv.DictReader(
        open(ROOT / "reports" / f"{base}@480" / "trials.csv"))}
    study_of_csv(tmp_path, f"{base}@480", f"{base}@480", {"rung": {"of": base, "from": base},
                                                          "promoted_from": promoted})
    for name in (base, f"{base}@480"):
        report = load_report(name, url)
        fig = plots.render_png(report, tmp_path / f"{name}.png")
        assert hidden_points(fig) == []
        labelled = {t.get_text() for ax in fig.axes for t in ax.texts}
        assert {plots.point_name(report.trial(n)) for n in report.front} <= labelled
        assert {report.trial(n).design for n in report.reference_trials.values()} <= labelled
    first = load_report(base, url)
    assert set(first.promoted) == set(promoted.values()) and first.promoted_to == f"{base}@480"
    fig = plots.render_png(first, tmp_path / "first.png")
    assert f"promoted to {base}@480" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_a_legend_inside_the_axes_would_be_caught(tmp_path):
    """The overlap check can fail: a legend drawn over the points is found."""
    url = make_study(tmp_path)
    fig = plots.render_png(load_report("unet_blocks-toy", url), tmp_path / "p.png")
    for legend in fig.legends:
        legend.remove()
    ax = fig.axes[0]
    ax.legend(loc="center", markerscale=8, fontsize=40, bbox_to_anchor=(0.5, 0.5))
    assert hidden_points(fig) != []


# -- optuna-dashboard: artifacts, and the HTML hover ----------------------------------------------------------
def test_the_pictures_round_trip_through_optuna_artifacts(tmp_path):
    url = make_study(tmp_path)
    report = load_report("unet_blocks-toy", url)
    folder = tmp_path / "report"
    pictures = draw_pictures(report, folder)
    assert set(pictures.diagrams) == {t.number for t in models(report)}
    store = tmp_path / "artifacts"
    uploaded = upload_pictures(report, pictures, folder)  # the default store: beside the SQLite file
    assert (tmp_path / "artifacts").is_dir() and set(uploaded) == set(pictures.diagrams)
    study = optuna.load_study(study_name="unet_blocks-toy", storage=url)
    metas = {m.filename: m for m in get_all_artifact_meta(study)}
    assert set(metas) == {f"trial{n}-diagram.png" for n in pictures.diagrams}
    for n, rel in pictures.diagrams.items():
        back = tmp_path / f"back-{n}.png"
        download_artifact(artifact_store=FileSystemArtifactStore(str(store)), file_path=str(back),
                          artifact_id=metas[f"trial{n}-diagram.png"].artifact_id)
        assert back.read_bytes() == (folder / rel).read_bytes()
        assert metas[f"trial{n}-diagram.png"].mimetype == "image/png"
    assert upload_pictures(report, pictures, folder) == {}  # a second report step uploads nothing again
    assert len(get_all_artifact_meta(study)) == len(metas)


def test_the_html_hover_shows_the_diagram(tmp_path):
    url = make_study(tmp_path)
    out = render.write_report("unet_blocks-toy", url, tmp_path / "report")
    page = (out / "index.html").read_text()
    assert "plotly_hover" in page and len(list((out / "diagrams").iterdir())) == 4  # the front and the designs
    for png in (out / "diagrams").iterdir():  # each inlined, keyed by its trial's number
        n = png.name.removeprefix("trial").removesuffix("-diagram.png")
        assert f'"{n}": "data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"' in page
    report = build_report(optuna.load_study(study_name="unet_blocks-toy", storage=url), url)
    assert '"customdata":[' in page.replace(" ", "") and all(f"{n}" in page for n in report.front)


def test_the_model_card_shows_the_students_row_under_the_teachers(sampled_study, monkeypatch):
    from blocksearch.report import model_card as MC

    url, teacher, tmp_path = sampled_study
    monkeypatch.setenv("BLOCKSEARCH_CACHE", str(tmp_path / "cache"))
    report = load_report("unet_blocks-toy", url)
    t = report.trial(report.front[0])
    text = MC.model_card(report, t, tmp_path / "card", family=teacher.family).text
    assert "![the teacher (top) and this student (bottom) on the same prompts and seeds](samples.png)" in text
    assert (tmp_path / "card" / MC.CARD_SAMPLES).is_file() and (tmp_path / "card" / MC.CARD_DIAGRAM).is_file()
    grid = sample_grid(report, [t])
    assert [r.label for r in grid.rows] == ["teacher", t.design or f"trial {t.number}"]
