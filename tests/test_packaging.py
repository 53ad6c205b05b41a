"""Packaging: a built wheel holds every package and data file (the spaces of search_spaces/ as the package
data ``blocksearch.search_spaces``), and the installed wheel runs from outside the repository; the editable
install finds the same spaces; without fcntl (Windows) the CLI parses and the first lock is a one-line error."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from blocksearch.space import SPACES_DIR, resolve_space_path

ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "blocksearch", "search_spaces")


def _source_files(folder: str) -> list[str]:
    """The repository's files under ``folder`` (tracked or not ignored; a plain walk outside a git checkout)."""
    if (ROOT / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", folder], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
        return sorted(p for p in out if (ROOT / p).is_file())
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in with ``pip install --target``), built from a copy of the
    build's inputs so that the build writes no build/ or egg-info into the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    (built,) = (tmp / "dist").glob("blocksearch-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(built)],
                   check=True, capture_output=True, timeout=600)
    return built, tmp / "site"


def _outside(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), BLOCKSEARCH_CACHE=str(cwd / "cache"))
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_holds_every_package_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel[0]).namelist())
    expected = {p for p in _source_files("blocksearch") if not p.endswith(".pyc")}
    expected |= {"blocksearch/" + p for p in _source_files("search_spaces")}  # the mapped folder
    assert expected - names == set()
    spaces = {n for n in names if n.startswith("blocksearch/search_spaces/") and n.endswith(".yaml")}
    assert {"blocksearch/search_spaces/unet_blocks.yaml", "blocksearch/search_spaces/unet_blocks_sdxl.yaml"} <= spaces
    assert "blocksearch/py.typed" in names
    assert "blocksearch/toy/assets/unet/diffusion_pytorch_model.safetensors" in names
    assert not any(n.startswith(("search_spaces/", "tests/")) for n in names)  # nothing at the top level but ours
    (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert "MIT License" in zipfile.ZipFile(wheel[0]).read(license_file).decode()
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel[0]).read(meta).decode()
    assert "License-Expression: MIT" in text and "Classifier: Operating System :: POSIX" in text


def test_installed_wheel_runs_from_outside_the_repository(wheel, tmp_path):
    _, site = wheel
    where = _outside(site, sys.executable, "-c", "import blocksearch, blocksearch.space as s; "
                     "print(blocksearch.__file__); print(s.SPACES_DIR); print(blocksearch.__version__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    file, spaces, version = where.stdout.split()
    assert Path(file) == site / "blocksearch" / "__init__.py"  # not the editable checkout
    assert Path(spaces) == site / "blocksearch" / "search_spaces"
    assert version == metadata.version("blocksearch")
    listed = _outside(site, sys.executable, "-m", "blocksearch.cli", "space", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[-1] for line in listed.stdout.splitlines()}
    assert {p.stem for p in SPACES_DIR.glob("*.yaml")} <= set(rows)  # every shipped space, the new ones too
    assert Path(rows["unet_blocks"]) == site / "blocksearch" / "search_spaces" / "unet_blocks.yaml"
    # the console entry point, on the bundled toy teacher (its weights come from the wheel too)
    shown = _outside(site, str(site / "bin" / "blocksearch"), "space", "show", "unet_blocks", "--teacher", "toy",
                     cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "distinct architectures: 576" in shown.stdout
    assert f"({site / 'blocksearch' / 'search_spaces' / 'unet_blocks.yaml'})" in shown.stdout
    assert next(line for line in shown.stdout.splitlines() if line.startswith("bk_small")).split()[2] == "4.830M"  # four significant figures (issue 31)


def test_editable_install_maps_search_spaces_onto_the_package():
    # pip's record of the install (the checkout's own blocksearch.egg-info, first on sys.path here, has none)
    installs = [json.loads(d.read_text("direct_url.json") or "{}") for d in metadata.distributions(name="blocksearch")]
    if not any(i.get("dir_info", {}).get("editable") for i in installs):
        pytest.skip("blocksearch is not installed editable here (`pip install -e .` is the dev setup)")
    spec = importlib.util.find_spec("blocksearch.search_spaces")
    assert Path(spec.origin) == ROOT / "search_spaces" / "__init__.py"
    assert SPACES_DIR == ROOT / "search_spaces"
    assert resolve_space_path("unet_blocks") == ROOT / "search_spaces" / "unet_blocks.yaml"


def test_pyproject_lists_every_package():
    """setuptools' find cannot see the mapped search_spaces/, so pyproject lists the packages: a new one must
    be added there (the wheel test would fail too, slower)."""
    text = (ROOT / "pyproject.toml").read_text()
    packages = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "blocksearch").rglob("__init__.py")}
    assert packages and all(f'"{name}"' in text for name in packages | {"blocksearch.search_spaces"})


NO_FCNTL = """
import sys
sys.modules["fcntl"] = None  # `import fcntl` raises ImportError, as on Windows
from blocksearch.cli import build_parser
from blocksearch.cache import file_lock, lock_path
from blocksearch.errors import BlocksearchError
args = build_parser().parse_args(["space", "list"])
print("parsed", args.handler.__name__)
try:
    with file_lock(lock_path("x", sys.argv[1])):
        print("locked")
except BlocksearchError as err:
    print("error:", err)
try:
    build_parser().parse_args(["--help"])
except SystemExit as stop:
    print("help exit", stop.code)
"""


def test_without_fcntl_parsing_works_and_a_lock_says_posix_only(tmp_path):
    proc = subprocess.run([sys.executable, "-c", NO_FCNTL, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "parsed cmd_space_list"
    assert lines[1] == (f"error: blocksearch needs a POSIX system (Linux or macOS): file locks use fcntl, not "
                        f"available on {sys.platform}")
    assert "usage: blocksearch" in proc.stdout and lines[-1] == "help exit 0"
    assert "locked" not in lines
