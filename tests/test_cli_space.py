"""`blocksearch space show`: the table, the published sizes, and bad input (exit 2, one line)."""

import os
import subprocess
import sys

import pytest

from blocksearch.cli import main

GOOD = """name: t
stages:
  down_blocks.0: {up: up_blocks.3, layers: [1, 2]}
  down_blocks.1: {up: up_blocks.2, layers: [1, 2]}
  down_blocks.2: {up: up_blocks.1, layers: [1, 2]}
  down_blocks.3: {up: up_blocks.0, layers: [1, 2], removable: true}
mid_block: [cross_attn, none]
designs:
  small: {layers: [1, 1, 1, 1], mid_block: none}
"""


def test_space_show_sd_v1_prints_the_published_bk_sizes(capsys):
    assert main(["space", "show", "unet_blocks", "--teacher", "sd-v1"]) == 0
    out = capsys.readouterr().out
    assert "distinct architectures: 576" in out
    for name, size in [("teacher", "859.5M"), ("bk_base", "579.4M"), ("bk_small", "482.3M"), ("bk_tiny", "323.4M")]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert size in line, line


@pytest.mark.parametrize("edit, message", [
    (("stages:\n  down", "stages: [\n  down"), "malformed YAML"),
    (("down_blocks.2:", "down_blocks.9:"), "unknown stage 'down_blocks.9'"),
    (("down_blocks.0: {up: up_blocks.3, layers: [1, 2]}", "down_blocks.0: {up: up_blocks.3, layers: [3]}"),
     "keep 3 of 2 is impossible"),
    (("mid_block: none}", "mid_block: resnet}"), "design is outside the space"),
])
def test_bad_space_file_is_one_line_exit_2(tmp_path, capsys, edit, message):
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(*edit))
    assert main(["space", "show", str(path), "--teacher", "sd-v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blocksearch: error: ") and str(path) in err and message in err
    assert "\n" not in err and "Traceback" not in err


def test_teacher_topology_mismatch_is_one_line_exit_2(capsys, tmp_path):
    assert main(["space", "show", "unet_blocks", "--teacher", "sdxl"]) == 2
    err = capsys.readouterr().err
    assert "teacher sdxl is a sdxl teacher; space unet_blocks is for the unet family" in err and err.count("\n") == 1
    path = tmp_path / "three.yaml"  # a unet space with SDXL's three stages, bound to SD-v1's four
    path.write_text(GOOD.replace("  down_blocks.3: {up: up_blocks.0, layers: [1, 2], removable: true}\n", "")
                    .replace("up_blocks.3", "up_blocks.x").replace("up_blocks.1", "up_blocks.0")
                    .replace("up_blocks.2", "up_blocks.1").replace("up_blocks.x", "up_blocks.2")
                    .replace("[1, 1, 1, 1]", "[1, 1, 1]"))
    assert main(["space", "show", str(path), "--teacher", "sd-v1"]) == 2
    err = capsys.readouterr().err
    assert "has 3 stages but the teacher has 4" in err and err.count("\n") == 1


def test_unknown_teacher_and_space(capsys):
    assert main(["space", "show", "unet_blocks", "--teacher", "sd-v9"]) == 2
    assert "allowed: toy, sd-v1" in capsys.readouterr().err
    assert main(["space", "show", "no_such_space"]) == 2
    assert "allowed: ['dit_blocks', 'unet_blocks', 'unet_blocks_sdxl']" in capsys.readouterr().err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "blocksearch.cli", "space", "show", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown space" in proc.stderr


QUIET = """
import sys, warnings
from blocksearch.cli import main
assert main(sys.argv[1:]) == 0
warnings.warn("a library deprecation", FutureWarning)
from diffusers.utils import logging
logging.get_logger("diffusers.models.modeling_utils").warning("accelerate was not found")
"""


def test_library_warnings_reach_the_output_only_with_verbose():
    from blocksearch.cli import LIBRARY_VERBOSITY

    env = {k: v for k, v in os.environ.items() if k not in LIBRARY_VERBOSITY.values()}  # as a user's shell
    runs = {flag: subprocess.run([sys.executable, "-c", QUIET, *flag, "space", "list"], capture_output=True,
                                 text=True, timeout=300, env=env) for flag in ((), ("-v",))}
    quiet, verbose = runs[()], runs[("-v",)]
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "unet_blocks" in quiet.stdout and quiet.stderr == ""
    assert "a library deprecation" in verbose.stderr and "accelerate was not found" in verbose.stderr


def test_space_show_sdxl_prints_the_published_students_to_four_figures(capsys):
    assert main(["space", "show", "unet_blocks_sdxl", "--teacher", "sdxl"]) == 0
    out = capsys.readouterr().out
    assert "distinct architectures: 1620" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert "2.567G" in rows["teacher"]  # four significant figures (was "2.6G")
    for name, ours, published in [("ssd_1b", "1.331G", "1,331,334,404"), ("vega", "745.2M", "745,225,604"),
                                  ("koala_1b", "1.161G", "1,161,184,324"), ("koala_700m", "782.8M", "782,822,724")]:
        assert ours in rows[name] and f"{published} vs ours {published} (+0.000%)" in rows[name], rows[name]
