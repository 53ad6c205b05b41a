"""Import structure: no cycles, and the toy package never reaches up into the command line."""

import ast
from pathlib import Path

import blocksearch

ROOT = Path(blocksearch.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def imports(module: str, top_level_only: bool) -> set[str]:
    """The blocksearch modules that importing ``module`` runs (packages' __init__ included)."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blocksearch"):
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    run = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}
    return {m for m in run if m in MODULES and m != module and not module.startswith(m + ".")}


def graph(modules, top_level_only: bool) -> dict[str, set[str]]:
    return {m: imports(m, top_level_only) & set(modules) for m in modules}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, found = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycles_at_module_level():
    assert find_cycles(graph(MODULES, top_level_only=True)) == []


def test_no_cycles_inside_the_toy_package_even_through_function_imports():
    toy = [m for m in MODULES if m.startswith("blocksearch.toy")]
    assert find_cycles(graph(toy, top_level_only=False)) == []


def test_toy_never_imports_the_command_line():
    toy = [m for m in MODULES if m.startswith("blocksearch.toy")]
    assert {m for m in toy if "blocksearch.cli" in imports(m, top_level_only=False)} == set()
