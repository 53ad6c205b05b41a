"""The README and docs/ stay true: short README, links that resolve, the quick start's two commands (the test
command is the one .ci/run runs; the run command parses), the code's design-note references resolve, and every
``blocksearch <verb> --flag`` written in the docs names a flag that verb's parser knows."""

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from blocksearch.cli import build_parser
from blocksearch.commands.run import main as cmd_run

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 200
GLOBAL_FLAGS = {"-h", "--help", "-v", "--verbose", "-q", "--quiet", "--version"}

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- markdown helpers ---------------------------------------------------------------------------------
def fenced_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def prose(text: str) -> str:
    """The text without fenced blocks and inline code: where links and headings are."""
    return INLINE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, inline markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", text)):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """Relative links (and images) of ``path`` whose file, or anchor in it, does not exist."""
    text = path.read_text() if text is None else text
    bad = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: no such file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text() if file_part else text):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    return bad


# -- blocksearch commands in the docs --------------------------------------------------------------------
def documented_commands(text: str) -> list[list[str]]:
    """Every ``blocksearch ...`` command in fenced blocks (one per shell command; continuation lines joined)
    and in inline code spans, as tokens."""
    commands = []
    for block in fenced_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"\s(?:&&|\|\||\||;)\s", line):
                try:
                    tokens = shlex.split(part, comments=True)
                except ValueError:
                    continue
                if tokens[:1] == ["blocksearch"]:
                    commands.append(tokens)
    for span in INLINE.findall(FENCE.sub("", text)):
        if span.startswith("blocksearch "):
            try:
                commands.append(shlex.split(span))
            except ValueError:
                commands.append(span.split())
    return commands


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def command_problems(tokens: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with one documented command: an unknown verb, or a flag its (sub-)verb's parser lacks.
    Only current spellings count: a deprecated alias in the docs is a problem too."""
    where, path, problems = parser, [], []
    for token in tokens[1:]:
        token = token.strip("[]")
        if not token or token in ("|", "...", "…"):
            continue
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            known = {s for a in where._actions for s in a.option_strings} | GLOBAL_FLAGS
            if not re.fullmatch(r"-\d.*", flag) and flag not in known:
                problems.append(f"{' '.join(['blocksearch', *path])}: unknown flag {flag}")
            continue
        verbs = _verbs(where)
        if not verbs:
            continue  # a positional argument or a flag's value
        if token.startswith("<") or token.isupper():
            break  # a placeholder verb: nothing more to check
        if token not in verbs:  # no flag before a (sub-)verb takes a value: this is a wrong verb
            problems.append(f"{' '.join(['blocksearch', *path])}: unknown verb {token!r}")
            break
        where, path = verbs[token], [*path, token]
    return problems


# -- the tests ----------------------------------------------------------------------------------------
def test_docs_exist_and_readme_is_short():
    assert {p.name for p in DOCS} >= {"design.md", "search.md", "real-teachers.md", "latency.md", "toy-teacher.md",
                                      "benchmarks.md", "cli.md", "train.md", "export.md", "families.md"}
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; at most {MAX_README_LINES}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_absolute_machine_paths(page):
    found = re.findall(r"(?<![\w.~])/(?:work|root|home|Users|tmp|mnt)/\S*", page.read_text())
    assert found == [], f"{_rel(page)}: absolute paths {found}"


def quick_start() -> list[str]:
    """The quick start's commands: the first fenced block under '## Quick start', comments dropped."""
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = fenced_blocks(section)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def ci_test_command() -> str:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip() == "# README test command:")
    return next(line.strip() for line in lines[i + 1:] if line.strip())


def test_quick_start_is_two_commands_and_the_test_command_is_ci_s():
    commands = quick_start()
    assert len(commands) == 2, commands
    assert commands[1] == ci_test_command() == "pip install -e '.[test]' && python -m pytest -q"


def run_command() -> list[str]:
    install, _, run = quick_start()[0].partition("&&")
    assert install.strip().startswith("pip install"), install
    tokens = shlex.split(run)
    assert tokens[:4] == ["blocksearch", "run", "--space", "unet_blocks"], tokens
    return tokens


def test_quick_start_run_command_parses():
    args = build_parser().parse_args(run_command()[1:])
    assert args.handler is cmd_run and args.space == "unet_blocks"


def test_quick_start_run_command_resolves_its_settings(tmp_path):
    """The same command with --print-config: its settings resolve (nothing runs, nothing is written)."""
    proc = subprocess.run([sys.executable, "-m", "blocksearch.cli", *run_command()[1:], "--print-config"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    settings = yaml.safe_load(proc.stdout)
    assert settings["space"] == "unet_blocks" and settings["teacher"] == "toy"
    assert list(tmp_path.iterdir()) == []


def design_references() -> list[tuple[str, str]]:
    """(file, text) of every design-note reference in the package's code."""
    refs = []
    for path in sorted((ROOT / "blocksearch").rglob("*.py")):
        for line in path.read_text().splitlines():
            if "design.md" in line.lower():
                refs.append((_rel(path), line))
    return refs


def test_code_cites_docs_design_md_and_its_sections_exist():
    refs = design_references()
    assert refs, "the code cites the design note"
    design = ROOT / "docs" / "design.md"
    assert design.is_file()
    sections = {slug(t) for _, t in HEADING.findall(design.read_text())}
    for where, line in refs:
        assert "docs/design.md" in line and "DESIGN.md" not in line, f"{where}: {line.strip()}"
        for quoted, bare in re.findall(r'docs/design\.md,\s*(?:"([^"]+)"|([A-Z][\w ]*)\))', line):
            assert slug(quoted or bare) in sections, f"{where}: no section {quoted or bare!r} in docs/design.md"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_documented_flags_exist(page):
    parser = build_parser()
    commands = documented_commands(page.read_text())
    problems = [p for tokens in commands for p in command_problems(tokens, parser)]
    assert problems == []


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for sub in {id(p): p for p in _verbs(parser).values()}.values():
        yield from _parsers(sub)


# flags of other tools that the docs show next to blocksearch's (hf download, pip, python, ray start, tensorboard)
FOREIGN_FLAGS = {"--exclude", "--include", "--local-dir", "-e", "-m", "--head", "--port", "--num-cpus", "--address",
                 "--logdir", "--runslow",  # pytest's opt-in for the slow tests (tests/conftest.py)
                 "--artifact-dir"}  # optuna-dashboard's (docs/reports.md)
FLAG = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")


def flags_written(text: str) -> set[str]:
    """Every flag-like token in inline code and in ```bash blocks."""
    found = set()
    for span in INLINE.findall(FENCE.sub("", text)):
        found |= set(FLAG.findall(span))
    for block in re.findall(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M):
        found |= set(FLAG.findall(block))
    return found


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_flag_written_in_code_exists(page):
    """Flags in prose code spans too (`--heartbeat-grace`): some verb knows each one; deprecated spellings
    appear only in cli.md's table of renamed flags."""
    parser = build_parser()
    current = {s for p in _parsers(parser) for a in p._actions for s in a.option_strings}
    old = {s for p in _parsers(parser) for s in p._option_string_actions} - current
    allowed = current | FOREIGN_FLAGS | (old if page.name == "cli.md" else set())
    assert sorted(flags_written(page.read_text()) - allowed) == []


def test_cli_md_lists_every_renamed_flag():
    parser = build_parser()
    current = {s for p in _parsers(parser) for a in p._actions for s in a.option_strings}
    old = {s for p in _parsers(parser) for s in p._option_string_actions} - current
    assert old and old <= flags_written((ROOT / "docs" / "cli.md").read_text())


def test_the_checks_catch_what_they_check(tmp_path):
    """Each check fails on a wrong page: a bad flag, a deprecated spelling, a bad verb, a missing file or anchor."""
    parser = build_parser()
    page = ("```bash\nblocksearch run --space unet_blocks --no-such-flag 1\n```\n"
            "`blocksearch evaluate D --sampler-steps 5`")
    problems = [p for t in documented_commands(page) for p in command_problems(t, parser)]
    assert problems == ["blocksearch run: unknown flag --no-such-flag",
                        "blocksearch evaluate: unknown flag --sampler-steps"]
    assert command_problems(["blocksearch", "serch", "--space", "x"], parser) == ["blocksearch: unknown verb 'serch'"]
    assert command_problems(["blocksearch", "bench", "speed"], parser) == ["blocksearch bench: unknown verb 'speed'"]
    assert command_problems(["blocksearch", "bench", "deploy", "--kd-steps", "5"], parser) == []
    assert command_problems(["blocksearch", "bench", "deploy", "--kd-step", "5"], parser) != []
    assert command_problems(["blocksearch", "-v", "space", "list", "-q"], parser) == []
    assert flags_written("use `--grace-period`\n```bash\nx --sampler-steps 3\n```\n```text\n--not-code\n```") == {
        "--grace-period", "--sampler-steps"}
    (tmp_path / "b.md").write_text("# Title\n\n## Two words\n")
    md = tmp_path / "a.md"
    text = "[ok](b.md#two-words) [gone](c.md) [bad](b.md#nope) [web](https://x.org) `[code](d.md)`"
    assert [b.split(":")[0] for b in broken_links(md, text)] == ["c.md", "b.md#nope"]
