"""``blocksearch run``'s flags as data: one per SearchConfig field (RUN_FLAGS), and the YAML file of them that
``run --config`` reads and ``run --print-config`` writes."""

from __future__ import annotations

import argparse

import yaml

from blocksearch.commands.common import TEACHER_HELP
from blocksearch.console import deprecated
from blocksearch.errors import BlocksearchError
from blocksearch.search.samplers import SAMPLERS
from blocksearch.search.selection import CHOICES as SCORE_CHOICES
from blocksearch.study import INITS, OBJECTIVES, SearchConfig


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _step_counts(text: str) -> tuple[int, ...]:
    """``--rungs``: comma-separated KD step counts; ``none`` or ``0``: no rung."""
    names = _names(str(text).lower())
    if names in ((), ("none",), ("0",), ("off",)):
        return ()
    try:
        return tuple(int(n) for n in names)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: comma-separated KD step counts, or none") from None


# One flag per SearchConfig field (--cpus-per-trial sets cpus_per_trial); the defaults are SearchConfig's,
# shown by the help as "(default: ...)". A help text that names a default describes a derived one.
RUN_FLAGS = (
    ("space", dict(help="space name or .yaml path")),
    ("teacher", dict(help=TEACHER_HELP)),
    ("trials", dict(type=int, help="finished trials the study should reach, reference designs included")),
    ("study", dict(help="study name (default: <space>-<teacher>)")),
    ("storage", dict(help="Optuna storage URL (default: sqlite:///<runs-dir>/blocksearch.db)")),
    ("runs_dir", dict(help="where the study's database, students and Ray results go (default: <cwd>/runs; "
                           "the report goes to <runs-dir>/../reports/<study>)")),
    ("address", dict(help="Ray cluster: 'auto' or host:port of 'ray start --head' (default: start a local Ray)")),
    ("dashboard_host", dict(help="interface of a local Ray's dashboard (a loopback address keeps it to this machine)")),
    ("dashboard_port", dict(type=int, help="local Ray dashboard port")),
    ("cpus_per_trial", dict(type=float, help="CPUs per trial")),
    ("gpus_per_trial", dict(type=float, help="GPUs per trial (0: the trials run on CPU)")),
    ("max_concurrent", dict(type=int, help="trials in parallel (default: as many as the cluster's resources allow)")),
    ("score", dict(choices=SCORE_CHOICES, help="the first stage's quality score: fid (toy-FID / FID of generated "
                                               "images), a held-out KD probe score (probe_cfg, probe_out, ...: no "
                                               "images, paired across candidates), or auto: the score bench fidelity "
                                               "validated for the toy teacher (blocksearch/measured/selection-score.json)"
                                               " and its KD budget, FID for real teachers; the rungs rank by FID")),
    ("steps", dict(type=int, help="distillation steps per trial (default: the first-stage score's budget, else "
                                  "distill's)")),
    ("eval_prompts", dict(type=int, help="evaluation prompts (default: evaluate's)")),
    # a real teacher's settings, as `distill` and `evaluate` name them; defaults follow the teacher
    ("data", dict(help="KD data: toy, or an imagefolder (images + metadata.jsonl/.csv with file_name and text); "
                       "required for a real teacher (default: toy for the toy teacher)")),
    ("reference", dict(help="real teachers: folder of real images for FID (at least --eval-prompts of them); an "
                            "imagefolder's captions are the prompts")),
    ("captions", dict(help="real teachers: imagefolder whose first --eval-prompts captions are the prompts "
                           "(default: --reference's if it has metadata, else --data's)")),
    ("inception_weights", dict(help="real teachers: torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
                                    "(default: found in the blocksearch or torch hub cache)")),
    ("clip_model", dict(help="real teachers: local CLIP model folder for the text alignment score (needed by "
                             "--min-alignment > 0)")),
    ("guidance", dict(type=float, help="classifier-free guidance scale (default: the toy's 3 for the toy teacher, "
                                       "BK-SDM's 7.5 for SD teachers)")),
    ("inference_steps", dict(type=int, help="denoising steps per generated image, with the teacher's own scheduler "
                                            "(default: the toy's 10, BK-SDM's 25 for SD teachers; was "
                                            "--sampler-steps)")),
    ("resolution", dict(type=int, help="image size in px for generation and the imagefolder's KD latents "
                                       "(default: the teacher's own, unet sample_size x the VAE scale factor)")),
    ("precision", dict(choices=("fp32", "bf16", "fp16"), help="KD mixed precision, a fast path (default: fp32)")),
    ("batch_size", dict(type=int, help="KD batch size (default: distill's, 16)")),
    ("lr", dict(type=float, help="KD learning rate (default: the toy's 5e-4; BK-SDM's 5e-5 for SD teachers)")),
    ("kd_schedule", dict(choices=("constant", "linear", "cosine"), help="KD learning rate over each run segment "
                                                                       "(the first stage, each rung): a warm "
                                                                       "restart that decays towards 0 at the "
                                                                       "segment's end (default: constant)")),
    ("kd_warmup", dict(type=int, help="KD linear warm-up steps at the start of each run segment (default: 0)")),
    ("kd_ema", dict(type=float, help="EMA decay of each student's weights, warmed up, carried across rungs; the "
                                     "EMA student is scored and saved (e.g. 0.99; default: off)")),
    ("teacher_cache", dict(choices=("auto", "disk", "off"), help="teacher outputs: auto = on disk where they fit "
                                                                 "under the cap (BLOCKSEARCH_CACHE_GB and the disk's "
                                                                 "free space), else a live teacher; disk = refuse "
                                                                 "over the cap; off = always live")),
    ("sampler", dict(help=f"Optuna sampler: {' | '.join(SAMPLERS)}")),
    ("init", dict(choices=INITS, help="the first trials: designs (the named designs) or one-shot (then the students "
                                      "that keep each group's most important blocks, scored without training, at a "
                                      "few sizes: a warm start; transformer spaces)")),
    ("seed", dict(type=int, help="seed of the sampler and of distillation")),
    ("objectives", dict(type=_names, help="comma-separated objectives: " + ", ".join(
        f"{o} ({d[:3]}imised)" for o, d in OBJECTIVES.items()))),
    ("max_params", dict(type=float, help="parameter budget: candidates above it are infeasible (an Optuna "
                                         "constraint)")),
    ("min_alignment", dict(type=float, help="text-aware feasibility: a student whose text alignment is below this "
                                            "fraction of the teacher's is infeasible (never on the front); 0 turns "
                                            "the rule off")),
    ("latency_device", dict(help="deployment target of latency and memory: cpu or cuda (default: where the "
                                 "trials run)")),
    ("latency_dtype", dict(choices=("fp32", "fp16", "bf16"), help="dtype on the deployment target (default: fp16 "
                                                                 "on CUDA, fp32 on CPU)")),
    ("latency_repeats", dict(type=int, help="timed repeats of each latency measurement (default: evaluate's 40; "
                                            "end to end: at most 3)")),
    ("noise_seeds", dict(type=int, help="seeds at which each reference design is trained and scored (each extra "
                                        "seed: KD again with seed + k, images at another generation seed; FID, "
                                        "KID, text alignment; latency is not measured again): the report's seed "
                                        "noise, within which no domination is claimed; 1 turns it off")),
    ("noise_source", dict(choices=("auto", "measure"), help="where the reference designs' other seeds come from: "
                                                          "auto = bench fidelity's study "
                                                          "(blocksearch/measured/selection-score.json) where this "
                                                          "run's own scores reproduce it (same teacher, recipe, "
                                                          "budget and evaluation set), else trained here; measure "
                                                          "= always trained here")),
    ("rung_references", dict(choices=("open", "all"), help="which reference designs each rung continues besides "
                                                           "the students near the front: open = those no "
                                                           "searched student dominates on quality beyond noise "
                                                           "in the study below (a settled comparison is not "
                                                           "trained again), all = every one (default: open)")),
    ("rungs", dict(type=_step_counts, help="longer KD budgets, spent where the front is: after the search, the "
                                           "students on or within noise of the front, and the reference designs "
                                           "left open (--rung-references) beside at most a quarter of the "
                                           "feasible searched students, "
                                           "continue from their KD checkpoints to each of these step counts in "
                                           "turn, each rung a study <study>@<steps> whose front compares only "
                                           "students of that budget (default: 4 x --steps; none: off)")),
    ("asha", dict(action="store_true", help="stop weak candidates early (ASHA on the output-KD loss); they are "
                                            "recorded PRUNED")),
    ("heartbeat_interval", dict(type=int, help="seconds between heartbeats of this driver's running trials "
                                               "(several drivers may share a study's storage)")),
    ("heartbeat_grace", dict(type=int, help="seconds without a heartbeat after which another driver marks a "
                                            "trial FAIL and re-queues it once (Optuna's heartbeat grace period, "
                                            "unrelated to --asha; was --grace-period)")),
    ("trial_retries", dict(type=int, help="times a trial runs again when its Ray worker process died (SIGKILL: "
                                          "out of memory, a pre-empted node), under the same Optuna trial, so the "
                                          "study still trains the design once; KD keeps no checkpoint mid-run, "
                                          "so a retry trains the candidate again from surgery (a rung's, from "
                                          "the checkpoint below): the same student, its time spent twice. An "
                                          "error inside the trial (exception, NaN loss) is not retried: it is "
                                          "recorded FAIL. 0: no retry (Ray Tune's FailureConfig.max_failures)")),
)
# Renamed run flags: the SearchConfig field -> its old name, still accepted (deprecated, one line on stderr) on the
# command line and as a --config key. A study stores stage settings, not flag names: resuming one is unaffected.
RUN_RENAMED = {"inference_steps": "sampler_steps", "heartbeat_grace": "grace_period"}
RUN_SHORT = {"runs_dir": "-o"}  # -o: the output of every verb that writes files


def read_run_config(path: str) -> dict:
    """``--config FILE``: a YAML mapping of run flags (``steps: 5``, ``eval-prompts: 8``), typed as the flags."""
    flags = dict(RUN_FLAGS)
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise BlocksearchError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise BlocksearchError(f"--config {path}: malformed YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BlocksearchError(f"--config {path}: expected a mapping of flag names to values, got a "
                               f"{type(data).__name__}")
    out, keys, old_names = {}, {}, {old: new for new, old in RUN_RENAMED.items()}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in old_names:
            name = old_names[name]
            deprecated(f"--config {path}: {key}", name.replace("_", "-"))
        if name not in flags:
            raise BlocksearchError(f"--config {path}: unknown key {key!r}; allowed: "
                                   f"{', '.join(n.replace('_', '-') for n in flags)}")
        if name in keys:
            raise BlocksearchError(f"--config {path}: {keys[name]!r} and {key!r} name the same flag; keep one")
        keys[name] = key
        out[name] = None if value is None else _config_value(path, key, value, flags[name])
    return {name: value for name, value in out.items() if value is not None}  # null: the default


def dump_run_config(cfg: SearchConfig) -> str:
    """``run --print-config``: every run flag's value in ``cfg`` as the YAML ``--config`` reads back (null: the
    default, one that follows the teacher or the first-stage score)."""
    values = {name.replace("_", "-"): getattr(cfg, name) for name, _ in RUN_FLAGS}
    body = yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, sort_keys=False,
                          default_flow_style=None, width=120)
    return "# blocksearch run --config FILE (null: the default; flags on the command line override a key)\n" + body


def _config_value(path: str, key, value, kwargs: dict):
    """A YAML value as its flag would parse it; a wrong type is one line naming the file and the key."""
    kind = kwargs.get("type")
    if kwargs.get("action") == "store_true":
        ok, want = isinstance(value, bool), "true or false"
    elif kind is int:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind is float:
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if ok else value
    elif kind is _step_counts:
        ok, want = isinstance(value, (str, int, list)) and not isinstance(value, bool), "KD step counts or none"
        try:
            value = _step_counts(",".join(map(str, value)) if isinstance(value, list) else value) if ok else value
        except argparse.ArgumentTypeError:
            ok = False
    elif kind is _names:
        ok, want = isinstance(value, (str, list)), "a list of names or comma-separated text"
        value = _names(",".join(map(str, value)) if isinstance(value, list) else value) if ok else value
    else:
        if isinstance(value, bool) and "off" in kwargs.get("choices", ()):  # YAML 1.1 reads off / on as booleans
            value = "on" if value else "off"
        ok, want = isinstance(value, (str, int, float)) and not isinstance(value, bool), "text"
        value = str(value) if ok else value
    if ok and kwargs.get("choices") and value not in kwargs["choices"]:
        ok, want = False, " | ".join(kwargs["choices"])
    if not ok:
        raise BlocksearchError(f"--config {path}: {key}: {value!r} is not {want}")
    return value
