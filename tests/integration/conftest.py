"""Integration fixtures: an untrained toy-topology teacher pipeline (real diffusers parts, built in
seconds, no training) and helpers to run ``blocksearch run`` as a user would."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--steps", "2", "--eval-prompts", "4", "--latency-repeats", "2", "--rungs", "none"]  # rungs: test_rungs_search


@pytest.fixture(scope="session", autouse=True)
def integration_cache(tmp_path_factory):
    """The integration runs keep their caches and lock files in one folder of their own, never the user's
    ~/.cache/blocksearch, and no wait for the measurement slot lasts past 60 s (a process that holds it and
    never yields -- say an orphaned worker of a killed driver -- slows a test, it cannot hang it)."""
    folder = tmp_path_factory.mktemp("cache")
    saved = {k: os.environ.get(k) for k in ("BLOCKSEARCH_CACHE", "BLOCKSEARCH_SLOT_TIMEOUT")}
    os.environ.update(BLOCKSEARCH_CACHE=str(folder), BLOCKSEARCH_SLOT_TIMEOUT="60")
    yield folder
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A toy-topology StableDiffusionPipeline folder with a toy judge (random seeded weights)."""
    from blocksearch.toy import models as M
    from blocksearch.toy.build import make_pipeline
    from blocksearch.toy.assets import JUDGE_FILE
    from blocksearch.toy.judge import ToyJudge

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("teacher")
    tokenizer = M.make_tokenizer()
    pipe = make_pipeline(M.make_vae(), tokenizer, M.make_text_encoder(tokenizer), M.make_unet())
    pipe.save_pretrained(out, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in ToyJudge().state_dict().items()}, out / JUDGE_FILE)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    import ray

    ip = ray.util.get_node_ip_address()
    return None if ip.startswith("127.") else ip


def run_cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    """``blocksearch <args>`` through tests/integration/driver.py (the real CLI, test candidate)."""
    return subprocess.Popen([sys.executable, str(Path(__file__).parent / "driver.py"), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
