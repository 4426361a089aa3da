"""The import graph of hpctune, read with `ast` (module-level AND in-function imports): no
cycle anywhere, and the layering the architecture promises (docs/architecture.md).

Imports under ``if TYPE_CHECKING:`` count too: an import for annotations only still makes
the two modules depend on each other's layer (hpctune.plan.activations once named
memory.PlanInput that way while memory imported activations)."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted((ROOT / "hpctune").rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    return mods


def _targets(mods: dict, cur: str, node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = cur.split(".")[: None if mods[cur].name == "__init__.py" else -1]
        base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported hpctune module: line}, every import statement counted."""
    mods = _modules()
    edges: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for m in _targets(mods, name, node):
                    while m not in mods and "." in m:
                        m = m.rsplit(".", 1)[0]
                    if m in mods and m != name and m.startswith("hpctune"):
                        edges[name].setdefault(m, node.lineno)
    return edges


def cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_in_function_imports_and_cycles():
    """The walk is not vacuous: it finds a lazy import, and a cycle made of one."""
    edges = import_graph()
    assert "hpctune.train.run" in edges["hpctune.commands.train"]  # imported inside command()
    fake = {k: dict(v) for k, v in edges.items()}
    fake["hpctune.errors"] = {"hpctune.commands.train": 1}
    assert cycles(fake)


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (module-level or in-function): " + "; ".join(" -> ".join(c) for c in found)


def _reaches(edges, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in edges.get(todo.pop(), {}):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_layers():
    edges = import_graph()
    # job.py is arithmetic over profile + recipe: no rules, no planner, no rendering.
    assert not {m for m in _reaches(edges, "hpctune.job") if m.startswith(("hpctune.rules", "hpctune.plan",
                                                                              "hpctune.render", "hpctune.prepare"))}
    # the planner knows nothing of Jobs, rules or commands
    for m in [m for m in edges if m.startswith("hpctune.plan")]:
        assert not {x for x in edges[m] if x.startswith(("hpctune.job", "hpctune.rules", "hpctune.prepare",
                                                         "hpctune.commands"))}, m
    # rules sit below prepare and render: they never import them, nor commands or the run package's services
    for m in [m for m in edges if m.startswith("hpctune.rules")]:
        bad = {x for x in edges[m] if x.startswith(("hpctune.prepare", "hpctune.render", "hpctune.commands",
                                                    "hpctune.train"))}
        assert not bad, (m, bad)
    # a command never imports another command (shared code lives in the library)
    for m in [m for m in edges if m.startswith("hpctune.commands.")]:
        others = {x for x in edges[m] if x.startswith("hpctune.commands.") and x != "hpctune.commands._options"}
        assert not others, (m, others)
    # the run folder's layout is read on the compute nodes: it imports nothing of hpctune but
    # errors (the recipe loader, lazily), never a backend, the registry or submitit
    assert set(edges.get("hpctune.run.folder", {})) <= {"hpctune.recipe", "hpctune.yamlfile"}
    # the training imports the run folder, the rules and the recipe, never the login side's services
    for m in [m for m in edges if m.startswith("hpctune.train")]:
        bad = {x for x in edges[m] if x.startswith(("hpctune.run.registry", "hpctune.run.backends", "hpctune.run.submit",
                                                    "hpctune.prepare", "hpctune.render", "hpctune.commands"))}
        assert not bad, (m, bad)
    # render writes a folder; it neither prepares nor starts nor registers runs
    assert not {x for x in edges["hpctune.render"] if x.startswith(("hpctune.prepare", "hpctune.run.registry",
                                                                   "hpctune.run.backends", "hpctune.run.submit"))}
    # the registry reads records and folders; backends read the registry, never the other way
    assert not {x for x in edges["hpctune.run.registry"] if x.startswith(("hpctune.run.backends", "hpctune.run.submit"))}
    # prepare composes the decision; it does not render, submit or print
    assert not {x for x in edges["hpctune.prepare"] if x.startswith(("hpctune.render", "hpctune.run", "hpctune.commands"))}
    # only prepare composes load -> auto layout -> resolve -> rules: nobody else resolves a Job
    resolvers = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "hpctune.job" and \
                    any(a.name == "resolve" for a in node.names):
                resolvers.add(name)
            if isinstance(node, ast.Attribute) and node.attr == "resolve" and \
                    getattr(node.value, "id", "") in ("job", "job_mod"):
                resolvers.add(name)
    assert resolvers <= {"hpctune.prepare"}, resolvers
