"""CLI habits: --version, -v/-q anywhere, one output flag (-o), renamed flags with deprecated aliases (one line on
stderr), and `run --print-config`, whose YAML `--config` reads back to the same settings."""

import argparse
import re
import subprocess
import sys
from importlib import metadata

import optuna
import pytest
import yaml

from blocksearch.search import driver as search
from blocksearch.cli import build_parser, main
from blocksearch.console import QUIET, quiet
from blocksearch.recipe.generation import generate
from blocksearch.commands.run_config import RUN_FLAGS, RUN_RENAMED, read_run_config
from blocksearch.search.selection import read_selection
from blocksearch.settings import SELECTION_SCORE
from blocksearch.families.unet.genome import Genome
from blocksearch.teachers import resolve_teacher
from blocksearch.space import load_space
from blocksearch.study import SearchConfig, open_storage, prepare_study
from tests.conftest import CHOICES, make_tiny_pipeline

optuna.logging.set_verbosity(optuna.logging.WARNING)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blocksearch.cli", *args], capture_output=True, text=True, timeout=300)


def leaf_verbs(parser: argparse.ArgumentParser, path=()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every verb and sub-verb parser that has no verbs under it, by its path (``("bench", "kd")``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    return {p: leaf for a in subs for name, sub in a.choices.items()
            for p, leaf in leaf_verbs(sub, (*path, name)).items()}


@pytest.fixture
def not_quiet(monkeypatch):
    """The test's own BLOCKSEARCH_QUIET: off now, and whatever a `-q` sets is undone after the test."""
    monkeypatch.setenv(QUIET, "0")


# -- --version ------------------------------------------------------------------------------------
def test_version_prints_the_installed_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout == f"blocksearch {metadata.version('blocksearch')}\n", proc.stderr


# -- -v / -q, before or after any verb ------------------------------------------------------------
# the required arguments of each verb, so that `-v` / `-q` can be parsed after it
REQUIRED = {("space", "show"): ["unet_blocks"], ("export",): ["--trial", "1", "-o", "x"], ("distill",): ["-o", "x"],
            ("train",): ["--design", "bk_small", "-o", "x"], ("evaluate",): ["dir"], ("toy", "build"): ["-o", "x"],
            ("toy", "sample"): ["a red circle", "-o", "x.png"], ("adapt", "lora"): ["l", "--student", "d", "-o", "x"],
            ("adapt", "controlnet"): ["c", "--student", "d", "-o", "x"],
            ("adapt", "ip-adapter"): ["i", "--student", "d", "-o", "x"]}


def test_every_verb_and_sub_verb_takes_v_and_q_after_its_name():
    parser = build_parser()
    verbs = leaf_verbs(parser)
    assert {("space", "list"), ("run",), ("bench", "kd"), ("toy", "check")} <= set(verbs)
    for path in verbs:
        argv = [*path, *REQUIRED.get(path, [])]
        for flag, on in (("-v", "verbose"), ("--quiet", "quiet")):
            args = parser.parse_args([*argv, flag])
            assert getattr(args, on) is True and args.verbose + args.quiet == 1, (path, flag)
        args = parser.parse_args(["-v", *argv])  # before the verb: a verb's parser does not reset it
        assert args.verbose is True and args.quiet is False, path
        args = parser.parse_args(argv)
        assert args.verbose is False and args.quiet is False, path


def test_v_and_q_together_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-v", "space", "list", "-q"])
    assert exit_.value.code == 2 and "-v/--verbose and -q/--quiet: choose one" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["space", "list", "-v", "-q"])
    assert exit_.value.code == 2


def test_v_and_q_after_a_sub_verb_from_the_shell():
    for args in (["space", "list", "-v"], ["space", "list", "--quiet"], ["-q", "space", "list"]):
        proc = cli(*args)
        assert proc.returncode == 0 and "unet_blocks" in proc.stdout and proc.stderr == "", (args, proc.stderr)


def test_q_turns_progress_bars_off_and_leaves_results(capsys, not_quiet):
    """-q sets BLOCKSEARCH_QUIET=1 (Ray's local workers inherit it); progress bars read it (console.quiet)."""
    pipe = make_tiny_pipeline()
    generate(pipe, ["a red circle"], [0], num_steps=1, progress=True)
    assert "generate: 100%" in capsys.readouterr().err  # the bar, without -q
    assert main(["space", "list", "-q"]) == 0 and quiet()
    assert "unet_blocks" in capsys.readouterr().out  # the result lines stay
    images = generate(pipe, ["a red circle"], [0], num_steps=1, progress=True)
    assert images.shape == (1, 3, 64, 64) and capsys.readouterr().err == ""  # no bar


def _finished_study(tmp_path) -> list[str]:
    """A study whose one finished trial reaches --trials 1, recorded with the settings of these flags: `run`
    has nothing to train, and prints the front and where the results are."""
    argv = ["run", "-o", str(tmp_path / "runs"), "--trials", "1", "--score", "fid", "--rungs", "none",
            "--noise-seeds", "1"]
    cfg = search.resolve(SearchConfig(runs_dir=str(tmp_path / "runs"), trials=1, score="fid", rungs=(), noise_seeds=1))
    ref = resolve_teacher(cfg.teacher)
    bound, unet = search.bind_space(load_space(cfg.space), ref)
    _, attrs = search.trial_job(cfg, ref, bound, unet)
    study = prepare_study(open_storage(cfg.storage, create_folder=True), cfg, bound, attrs)
    genome = "L1-1-1-1_T1-1-1-0_Mnone"
    params = bound.to_params(Genome.from_id(genome))
    dists = {k: optuna.distributions.CategoricalDistribution(CHOICES[k.rsplit(".", 1)[-1]]) for k in params}
    metrics = dict(fid=30.0, params=1e6, latency_ms=2.0, alignment=0.7, latency_cv=0.01)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[30.0, 1e6, 2.0],
                                              params=params, distributions=dists,
                                              user_attrs=dict(genome=genome, metrics=metrics, timings={})))
    return argv


def test_q_run_prints_the_front_and_the_results_without_progress_lines(tmp_path, capsys, not_quiet):
    argv = _finished_study(tmp_path)
    assert main(argv) == 0
    loud = capsys.readouterr().out
    assert "first-stage score: " in loud and "nothing to run" in loud and "\nresults: study 'unet_blocks-toy'" in loud
    assert main(["-q", *argv]) == 0
    out = capsys.readouterr().out
    assert "first-stage score" not in out and "nothing to run" not in out and "report 'unet_blocks-toy'" not in out
    tail = loud[loud.index("\n\nstudy 'unet_blocks-toy'") + 1:]
    assert "report 'unet_blocks-toy': written in" in tail  # what the report and its pictures took: progress, not -q
    assert out == "".join(line for line in tail.splitlines(keepends=True) if not line.startswith("report '"))


# -- bad input: one line, exit 2 ---------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["run", "--teacher-cache", "nope"], ["train", "--precision", "nope"],
                                  ["evaluate", "x", "--protocol", "nope"]], ids=lambda argv: argv[0])
def test_a_bad_flag_value_is_one_line_without_the_usage_and_exit_2(argv):
    proc = cli(*argv)
    flag = argv[-2]
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"blocksearch {argv[0]}: error: argument {flag}: invalid choice: 'nope'")


# -- -o: the output of every verb that writes files ------------------------------------------------
OUTPUT = {("report",): ([], "out"), ("export",): (["--front"], "out"), ("distill",): ([], "out"),
          ("train",): (["--design", "bk_small"], "out"), ("evaluate",): (["dir"], "out"), ("run",): ([], "runs_dir"),
          ("bench", "fidelity"): ([], "out"), ("toy", "build"): ([], "out"),
          ("toy", "sample"): (["a red circle"], "out")}


@pytest.mark.parametrize("verb", OUTPUT, ids=" ".join)
def test_o_is_the_output_of_every_verb_that_writes_files(verb):
    extra, dest = OUTPUT[verb]
    assert getattr(build_parser().parse_args([*verb, *extra, "-o", "there"]), dest) == "there"
    if dest == "out":
        assert build_parser().parse_args([*verb, *extra, "--out", "there"]).out == "there"


# -- renamed flags: the old spelling still works and says so in one line -------------------------
RENAMED = [  # (verb and its other arguments, old flag, new flag, value, dest)
    (["evaluate", "dir"], "--sampler-steps", "--inference-steps", "3", "inference_steps"),
    (["bench", "deploy"], "--steps", "--inference-steps", "3", "inference_steps"),
    (["toy", "check"], "--steps", "--inference-steps", "3", "inference_steps"),
    (["toy", "sample", "a red circle", "-o", "x.png"], "--steps", "--inference-steps", "3", "inference_steps"),
    (["toy", "sample", "a red circle"], "--output", "--out", "x.png", "out"),
    (["run"], "--sampler-steps", "--inference-steps", "3", "inference_steps"),
    (["run"], "--grace-period", "--heartbeat-grace", "9", "heartbeat_grace"),
]


@pytest.mark.parametrize("argv, old, new, value, dest", RENAMED, ids=lambda x: x if isinstance(x, str) else None)
def test_an_old_flag_sets_the_new_setting_and_prints_one_deprecation_line(capsys, argv, old, new, value, dest):
    with_new = build_parser().parse_args([*argv, new, value])
    assert capsys.readouterr().err == ""
    with_old = build_parser().parse_args([*argv, old, value])
    assert capsys.readouterr().err == f"blocksearch: {old} is deprecated; use {new}\n"
    assert getattr(with_old, dest) == getattr(with_new, dest) == (int(value) if value.isdigit() else value)
    assert vars(with_old) == vars(with_new)  # the same namespace: no stray setting of the old name


def test_help_shows_only_the_new_spellings(capsys):
    for verb, old, new in ((["evaluate"], "--sampler-steps", "--inference-steps"),
                           (["run"], "--sampler-steps", "--inference-steps"),
                           (["run"], "--grace-period", "--heartbeat-grace"),
                           (["bench", "deploy"], "--steps", "--inference-steps"),
                           (["toy", "check"], "--steps", "--inference-steps"),
                           (["toy", "sample"], "--output", "--out")):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*verb, "--help"])
        text = " ".join(capsys.readouterr().out.split()).replace(f"was {old}", "")  # run's help names it once
        assert new in text and not re.search(rf"(?<![\w-]){old}(?![\w-])", text), (verb, old)


def test_run_old_flags_resolve_to_the_same_settings(capsys):
    old = main(["run", "--sampler-steps", "3", "--grace-period", "9", "--print-config"])
    printed_old = capsys.readouterr()
    assert old == 0 and printed_old.err.splitlines() == [
        "blocksearch: --sampler-steps is deprecated; use --inference-steps",
        "blocksearch: --grace-period is deprecated; use --heartbeat-grace"]
    assert main(["run", "--inference-steps", "3", "--heartbeat-grace", "9", "--print-config"]) == 0
    printed_new = capsys.readouterr()
    assert printed_new.err == "" and printed_new.out == printed_old.out
    settings = yaml.safe_load(printed_new.out)
    assert settings["inference-steps"] == 3 and settings["heartbeat-grace"] == 9


def test_config_with_old_keys_is_accepted_with_one_line_each(tmp_path, capsys):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text("sampler_steps: 3\ngrace-period: 9\nsteps: 5\n")
    new.write_text("inference-steps: 3\nheartbeat_grace: 9\nsteps: 5\n")
    assert read_run_config(str(old)) == read_run_config(str(new)) == {"inference_steps": 3, "heartbeat_grace": 9,
                                                                       "steps": 5}
    assert capsys.readouterr().err.splitlines() == [
        f"blocksearch: --config {old}: sampler_steps is deprecated; use inference-steps",
        f"blocksearch: --config {old}: grace-period is deprecated; use heartbeat-grace"]
    both = tmp_path / "both.yaml"
    both.write_text("sampler-steps: 3\ninference-steps: 4\n")
    assert main(["run", "--config", str(both)]) == 2
    assert "'sampler-steps' and 'inference-steps' name the same flag; keep one" in capsys.readouterr().err


def test_a_renamed_flag_leaves_the_studys_stored_settings_as_they_were():
    """A study records stage settings (its eval.steps), never a flag's name: one recorded before the rename is
    compared (study.check_settings) with the same keys and values, and resumes."""
    assert set(RUN_RENAMED) <= {name for name, _ in RUN_FLAGS} & set(SearchConfig.__dataclass_fields__)
    cfg = search.resolve(SearchConfig(inference_steps=3, heartbeat_grace=9, score="fid"))
    ref = resolve_teacher(cfg.teacher)
    bound, unet = search.bind_space(load_space(cfg.space), ref)
    _, attrs = search.trial_job(cfg, ref, bound, unet)
    assert attrs["eval"]["steps"] == 3
    names = set(attrs) | {f"{k}.{n}" for k, v in attrs.items() if isinstance(v, dict) for n in v}
    flags = ("sampler_steps", "inference_steps", "grace_period", "heartbeat_grace")
    assert not [n for n in names if n.rsplit(".", 1)[-1] in flags], names


# -- run --print-config ---------------------------------------------------------------------------
def test_print_config_round_trips_through_config_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--trials", "3", "--inference-steps", "4", "--objectives", "fid,params", "--rungs", "none",
            "--asha", "--teacher-cache", "off", "--max-params", "5e6", "-o", "myruns"]
    assert main([*argv, "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# blocksearch run --config FILE")
    settings = yaml.safe_load(printed)
    assert [k.replace("-", "_") for k in settings] == [name for name, _ in RUN_FLAGS]  # every flag, in --help's order
    assert (settings["trials"], settings["inference-steps"], settings["objectives"], settings["rungs"]) == (
        3, 4, ["fid", "params"], [])
    assert (settings["asha"], settings["teacher-cache"], settings["max-params"], settings["steps"]) == (
        True, "off", 5e6, None)
    assert settings["runs-dir"] == str(tmp_path / "myruns") and settings["study"] == "unet_blocks-toy"
    record = read_selection(SELECTION_SCORE)  # the last line says what score auto and the null steps resolve to
    assert printed.splitlines()[-1].startswith(
        f"# score auto resolves to: {record['predictor']} after {record['budget']} KD steps, rungs none (FID)")
    assert settings["storage"] == f"sqlite:///{tmp_path / 'myruns' / 'blocksearch.db'}"
    (tmp_path / "run.yaml").write_text(printed)
    assert main(["run", "--config", "run.yaml", "--print-config"]) == 0
    again = capsys.readouterr()
    assert again.out == printed and again.err == ""
    assert search.resolve(SearchConfig(**read_run_config("run.yaml"))) == search.resolve(SearchConfig(
        trials=3, inference_steps=4, objectives=("fid", "params"), rungs=(), asha=True, teacher_cache="off",
        max_params=5e6, runs_dir="myruns"))
    assert not (tmp_path / "myruns").exists()  # nothing ran, no storage was created


def test_print_config_of_bad_settings_is_one_line_exit_2(capsys):
    assert main(["run", "--trials", "0", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("blocksearch: error: --trials must be >= 1") and err.count("\n") == 1


# -- --help reads like a man page -----------------------------------------------------------------
def test_every_verb_describes_itself_and_every_flag():
    def walk(parser, path=()):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, (*path, name))

    missing = [" ".join(path) for path, p in walk(build_parser()) if path and not p.description]
    missing += [f"{' '.join(path)} {a.option_strings or a.dest}" for path, p in walk(build_parser()) for a in p._actions
                if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []
