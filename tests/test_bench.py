"""`blocksearch bench kd | latency` on a tiny teacher folder: they run and print their figures."""

import re
import subprocess
import sys

import pytest

from blocksearch.cli import main
from tests.conftest import save_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_kd_prints_both_ratios_with_targets(tmp_path, capsys):
    folder = save_tiny_teacher(tmp_path)
    assert main(["bench", "kd", "--teacher", folder, "--batch-size", "2", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    cached = re.search(r"warm cache / plain student step:\s+([\d.]+)\s+\(target <= 1.15\)", out)
    live = re.search(r"without cache / \(teacher forward \+ plain step\):\s+([\d.]+)\s+\(target <= 1.1\)", out)
    assert cached and live and float(cached[1]) > 0.5 and float(live[1]) > 0.5


def test_bench_latency_prints_ratios_to_the_teacher(tmp_path, capsys):
    folder = save_tiny_teacher(tmp_path)
    assert main(["bench", "latency", "--teacher", folder, "--repeats", "2", "--warmup", "1",
                 "--measurements", "2"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if not line.startswith("cv in")}
    assert set(rows) == {"teacher", "bk_base", "bk_small", "bk_tiny"}
    assert rows["teacher"][4] == "1.000"
    assert rows["bk_tiny"][1] == "L1-1-1_T1-1-1_Mnone"


def test_bench_latency_rejects_fp16_on_cpu(capsys):
    assert main(["bench", "latency", "--teacher", "sd-v1", "--dtype", "fp16"]) == 2
    assert "fp16 needs --device cuda" in capsys.readouterr().err


LIGHT_PARSER = """
import sys
from blocksearch.cli import build_parser
build_parser()
print(*sorted(m for m in ("blocksearch.bench.speed", "blocksearch.bench.stability", "blocksearch.bench.fidelity",
                          "blocksearch.toy.commands", "torch")
              if m in sys.modules))
"""


def test_building_the_parser_imports_no_verb_handlers():
    """The handler modules (bench/speed.py, bench/stability.py, toy/commands.py) import torch at their top: the parser
    imports them only when a verb runs, so that `blocksearch --help` stays fast."""
    proc = subprocess.run([sys.executable, "-c", LIGHT_PARSER], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
