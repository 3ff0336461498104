"""The package's shape (issue 21, docs/architecture.md): the import graph has no cycle, counting imports inside
functions (which only defer a heavy module, never hide a loop); a module longer than ~400 lines says why in its
docstring."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_layerprune"
LONG = 420  # lines; a longer module's docstring has a "Long module:" paragraph saying why


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (top level or inside a function)."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_layerprune"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(resolve(full if full in mods else node.module))
            elif isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.startswith("hf_layerprune")}
        graph[name] = {d for d in deps if d and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "hf_layerprune.flow.stages" in graph and "hf_layerprune.recipe" in graph["hf_layerprune.flow.stages"]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # the check itself finds one
    assert [" -> ".join(c) for c in cycles(graph)] == []


def test_recipe_is_a_leaf_and_scoring_knows_nothing_of_healing_or_surgery():
    graph = import_graph()
    assert graph["hf_layerprune.recipe"] <= {"hf_layerprune.runtime.errors"}
    for name, deps in graph.items():
        if name.startswith("hf_layerprune.scoring"):
            assert not {d for d in deps if d.startswith(("hf_layerprune.healing", "hf_layerprune.surgery.layers"))}, name


def test_long_modules_say_why():
    unexplained = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > LONG and "Long module:" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert unexplained == []


# --- issue 33: docs/architecture.md names only what exists -------------------------------------------------------
DOC = PACKAGE.parent / "docs" / "architecture.md"


def _cited() -> tuple[set[str], set[str]]:
    """(file paths, dotted Python names) that docs/architecture.md cites in backticks or by file name."""
    import re

    text = DOC.read_text(encoding="utf-8")
    files = set(re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:py|json|md))\b", text))
    names = {m.rstrip("()") for m in re.findall(r"`([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+(?:\(\))?)`", text)}
    return files, {n for n in names if not n.endswith((".py", ".json", ".md"))}


def test_every_file_the_architecture_page_names_exists():
    files, _ = _cited()
    missing = [f for f in sorted(files) if not any((root / f).exists() for root in (PACKAGE, PACKAGE.parent,
                                                                                    PACKAGE.parent / "docs"))
               and f not in ("layerprune.json", "config.json")]
    assert len(files) > 20 and missing == []


def test_every_python_name_the_architecture_page_cites_exists():
    """`module.name` (relative to the package) and `Class.method` written in docs/architecture.md resolve."""
    import importlib

    _, names = _cited()
    classes = {}
    for name in modules():
        for node in ast.walk(ast.parse(modules()[name].read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                classes[node.name] = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AnnAssign))
                                      and hasattr(n, "name")} | {t.id for n in node.body if isinstance(n, ast.AnnAssign)
                                                                 for t in [n.target] if isinstance(t, ast.Name)}
    missing = []
    for dotted in sorted(names):
        head, _, attr = dotted.rpartition(".")
        if head in classes:
            if attr not in classes[head]:
                missing.append(dotted)
            continue
        try:
            module = importlib.import_module(f"hf_layerprune.{head}")
        except ImportError:
            missing.append(dotted)
            continue
        if not hasattr(module, attr) and not (PACKAGE / head.replace(".", "/") / f"{attr}.py").exists():
            missing.append(dotted)
    assert len(names) > 10 and missing == []


# --- issue 33: the parts and what they may import (docs/architecture.md, "Parts") ------------------------------------
ALL = {"runtime", "architectures", "recipe", "report", "surgery", "scoring", "healing", "evaluation", "card", "hub",
       "flow", "cli"}
MAY_IMPORT = {
    "runtime": set(),  # errors, registries, progress, ranks, calibration text, output folders: leaves
    "architectures": {"runtime"},  # the families, described as data
    "recipe": {"runtime"},  # typed inputs
    "report": {"runtime"},  # the typed run record; never the Hub
    "surgery": {"runtime", "architectures", "recipe"},  # weights in, weights out
    "scoring": {"surgery", "runtime", "architectures", "recipe", "report"},
    "healing": {"surgery", "runtime", "architectures", "recipe", "report"},  # a healer takes and returns sections
    "evaluation": {"surgery", "runtime", "architectures", "recipe", "report"},
    # renders a Report, no Hub; it reads the method registries (scoring, healing) for descriptions and citations,
    # which import torch: a report that names no metric or healer renders without it (tests/test_report.py)
    "card": {"report", "runtime", "recipe", "scoring", "healing"},
    "hub": {"runtime", "surgery", "report"},  # every Hub call (verification reloads what it pushed)
    "flow": ALL - {"cli"},  # the only part that calls several others
    "cli": ALL,  # flags -> Recipe -> Flow
}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "root"


def test_the_package_root_holds_only_part_folders():
    entries = {p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert entries - {"__init__.py", "__main__.py"} == ALL


def test_parts_import_only_what_the_architecture_allows():
    """Every import of a package module (top level, inside functions, in package __init__ files) goes along an arrow
    of MAY_IMPORT; the package root (its __version__) may be imported by any part."""
    wrong = sorted(f"{a} -> {b}" for a, deps in import_graph().items() for b in deps
                   if part_of(a) in MAY_IMPORT and part_of(b) not in MAY_IMPORT[part_of(a)] | {part_of(a), "root"})
    assert wrong == []
