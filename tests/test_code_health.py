"""The package's import structure: no import cycles, and imports at the top of each module except where
laziness is the point (a fast ``--help``, optional plotting libraries, Ray in workers and after validation)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "blocksearch"
# module -> what it may import inside functions, and why
LAZY = {
    # each verb's `main` imports the one stage function that does its work (torch, diffusers, Optuna, Ray):
    # `blocksearch --help` and bad flags build every verb's parser, and stay fast
    "blocksearch.commands.space": "teachers.show_space: the teacher and the families' student builders (torch)",
    "blocksearch.commands.run": "search/launch.py: the search driver (torch, Optuna; Ray once it has work)",
    "blocksearch.commands.distill": "recipe/distill_folder.py: torch, the teacher and the KD run",
    "blocksearch.commands.evaluate": "recipe/evaluate_folder.py: torch, the teacher and the evaluation",
    "blocksearch.commands.report": "report/render.py: the report renderer (Optuna, torch through the teachers)",
    "blocksearch.commands.export": "report/export.py: the exporter (diffusers pipelines)",
    "blocksearch.commands.train": "train/job.py: the Ray Train job",
    "blocksearch.commands.adapt": "adapt/finetune.py (LoRA), controlnet.py or ip_adapter.py (one per kind's "
                                  "handler): torch, the families",
    "blocksearch.toy.cli": "toy/commands.py, the toy verbs' handlers, for the same reason",
    "blocksearch.search.driver": "Ray (search/ray_tune.py, 1-3 s to import) only once a search has work for it",
    "blocksearch.bench.fidelity": "Ray, only when ladders run on it",
}
MAX_LAZY = 15  # function-level imports in the whole package (issue 30); each module's are in LAZY


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.AST, names: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            candidates = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in names}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, 1972)."""
    index, low, stack, on, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles_in_the_package():
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


def _function_imports(tree: ast.Module) -> dict[str, list[int]]:
    """Function name -> the lines of the imports inside it (a nested function's count once, in the outermost)."""
    found, seen = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lazy = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in seen]
            seen |= {id(n) for n in lazy}
            if lazy:
                found[node.name] = [n.lineno for n in lazy]
    return found


def test_imports_sit_at_the_top_except_where_laziness_is_the_point():
    inside = {name: found for name, tree in _modules().items() if (found := _function_imports(tree))}
    assert {name: where for name, where in inside.items() if name not in LAZY} == {}
    total = sum(len(lines) for found in inside.values() for lines in found.values())
    assert total <= MAX_LAZY, f"{total} function-level imports: {inside}"
    assert sum(map(len, _function_imports(ast.parse("def f():\n import os\n def g():\n  import sys")).values())) == 2


# The floors of the data flow, bottom up (DESIGN.md "Data flow"): a module imports from its own floor or below.
FLOORS = (
    ("blocksearch.errors", "blocksearch.settings", "blocksearch.cache", "blocksearch.console",
     "blocksearch.objectives"),
    ("blocksearch.toy.world", "blocksearch.toy.assets", "blocksearch.toy.models"),
    ("blocksearch.families", "blocksearch.space"),
    ("blocksearch.teachers", "blocksearch.adapt"),
    ("blocksearch.recipe", "blocksearch.toy.judge", "blocksearch.toy.sample",
     "blocksearch.adapt.finetune"),  # a LoRA fine-tuned by the distillation recipe
    ("blocksearch.study",),
    ("blocksearch.report",),
    ("blocksearch.search",),
    ("blocksearch.train",),
    ("blocksearch.bench", "blocksearch.toy"),
    ("blocksearch.commands", "blocksearch.cli", "blocksearch"),
)


def floor_of(module: str) -> int:
    """The floor of the longest FLOORS prefix that names ``module`` (a package prefix or the module itself)."""
    best = (-1, -1)
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), level))
    assert best[1] >= 0, f"{module}: on no floor of FLOORS; add it"
    return best[1]


def test_no_import_runs_back_up_a_floor():
    modules = _modules()
    upward = sorted(f"{name} -> {dep}" for name, tree in modules.items()
                    for dep in _imports(tree, set(modules)) if floor_of(dep) > floor_of(name))
    assert upward == []
    assert floor_of("blocksearch.search.trial") > floor_of("blocksearch.recipe.distill")  # the check can fail


# module:line text (stripped) -> why the string equal to a family's name stays: an on-disk key, whose change would
# rename cache files or change a folder layout that earlier runs wrote
ON_DISK = {
    'blocksearch.recipe.teacher_cache:identity = {"format": FORMAT, "teacher": teacher_name, "unet": '
    'fingerprint(unet), "steps": steps,': "the teacher cache's identity key: its hash names the cache files",
    'blocksearch.recipe.preflight:"unet": ("config.json", "diffusion_pytorch_model.safetensors"),':
        "a pipeline folder's component folder `unet/`, as diffusers lays it out (the preflight's file table)",
    'blocksearch.report.export:PIPELINE_FILES = ("unet", "transformer", "vae", "text_encoder", "tokenizer", '
    '"scheduler", "model_index.json",': "the component folders of an exported diffusers pipeline",
}


def test_no_family_name_outside_the_families():
    """Only ``families/`` (and the toy teachers it ships) names a family: everyone else asks the family object;
    ``ON_DISK`` lists the strings that are names on disk which merely equal a family's."""
    from blocksearch.families.base import FAMILIES

    names, lines = set(FAMILIES), {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        lines[name] = path.read_text().splitlines()
    found = sorted(f"{name}:{lines[name][node.lineno - 1].strip()}" for name, tree in _modules().items()
                   if not name.startswith(("blocksearch.families", "blocksearch.toy"))
                   for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in names)
    assert [f for f in found if f not in ON_DISK] == []
    assert set(ON_DISK) <= set(found)  # an entry whose line changed or went: update or drop it
    assert "unet" in names  # the check can fail: the registry's names are what it looks for
