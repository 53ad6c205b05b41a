"""Stage settings (DistillConfig, EvalConfig) as plain dicts: stored in the study, read back strictly;
and the default evaluation settings, which `blocksearch evaluate` and `blocksearch toy check` share
(here, not in evaluate.py, so that the CLI parsers read them without importing torch)."""

from dataclasses import asdict
from pathlib import Path

from blocksearch.errors import BlocksearchError

# The default evaluation settings (EvalConfig's and `blocksearch toy check`'s), sized for the toy teacher:
NUM_STEPS = 10  # sampler steps (the toy teacher's DPM-Solver++)
N_PROMPTS = 128  # held-out prompts
# classifier-free guidance: best for the toy teacher (zero terminal SNR, v-prediction) in a sweep of 2/3/4/5/7.5:
# text alignment 0.750/0.812/0.773/0.656/0.453, toy-FID 33.0/28.6/30.6/34.9/46.4 (`blocksearch toy check
# --guidance G`); SD-v1/v2 teachers are usually sampled at 7.5 (`blocksearch evaluate --guidance`)
GUIDANCE_SCALE = 3.0
# U-Net step latency, as trials and `bench stability` time it: repeats (ABBA-interleaved with the teacher),
# each a loop at least this long. Many short repeats beat few long ones on a VM whose speed drifts: four
# measurements of each BK design on the toy teacher (2-core VM, 1 thread) spread by 2.0-3.6 % (max-min over
# median) with 15 x 0.2 s, and by 1.1-1.8 % with 60 x 0.05 s, at ~10 s per measurement instead of ~7 s. 40 x 0.05 s
# (2026-12-04, `bench stability --repeats 40`, twice): isolated vs under load 0.3 % and 0.3 % (60: 1.8 % that day),
# at 5.0 s instead of 7.5 s for bk_tiny (measured one after the other): a default run's 16 measurements each
# hold the other lane idle
LATENCY_REPEATS = 40
LATENCY_MIN_S = 0.05
# `blocksearch bench search`'s measured tables (genome, fid, params, latency_ms; the rest of the space is a stand-in)
MEASURED_DIR = Path(__file__).parent / "measured"
MEASURED = MEASURED_DIR / "toy.csv"  # written from a real default run
FIDELITY = MEASURED_DIR / "fidelity-toy.csv"  # the fidelity study's table (`bench fidelity`), preferred
MEASURED_COLUMNS = ("genome", "fid", "params", "latency_ms")
# the held-out KD probe's scores (probe.py): possible first-stage scores of the search, lower is better
PROBE_KEYS = ("probe_out", "probe_feat", "probe_task", "probe_guide", "probe_cfg")
SELECTION_SCORE = MEASURED_DIR / "selection-score.json"  # `bench fidelity`'s chosen first-stage score of the search


class Settings:
    """Mixin for frozen settings dataclasses: ``to_dict`` and a ``from_dict`` that names unknown keys."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise BlocksearchError(f"unknown {cls.__name__} settings {sorted(unknown)}; "
                                   f"allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

CAPTION_DROPOUT = 0.1  # SD's and the toy teacher's training rate (toy/build.py, data.py); keeps CFG's unconditional branch alive
# <students>/<genome>/losses.jsonl: every KD step's losses of a trial's student (trial.py writes, reports draw)
LOSSES_FILE = "losses.jsonl"
