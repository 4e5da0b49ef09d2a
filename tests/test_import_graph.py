"""Imports stay one-way: no import cycle among the modules of tinymm/ and export/, and the runtime
never imports torch, transformers, ctranslate2, train/ or export/.

Every module is parsed with ``ast`` (nothing is imported). Its imports are collected wherever
they are written, at module level or inside a function, since a function-level import that
closes a cycle is still a cycle, only one that fails later. ``from tinymm.x import y`` counts as
an import of the submodule ``tinymm.x.y`` when there is one, else of ``tinymm.x``; relative
imports are resolved against the module's package. Not counted: imports under ``if
TYPE_CHECKING:`` (never run), and the submodule names a package ``__init__`` lists as strings for
``tinymm.lazy_exports`` or ``importlib`` (resolved by name when used, the way the family registry
finds its modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tinymm", "export")  # whose modules form the graph
FORBIDDEN_IN_RUNTIME = ("torch", "transformers", "ctranslate2", "train", "export")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of PACKAGES."""
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(node: ast.ImportFrom, name: str, path: Path) -> str:
    """The absolute module of ``from <module> import ...`` in module ``name`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports, by absolute name: ``import a.b`` gives a.b; ``from a import b``
    gives a.b when that is a module of ``known``, else a (b is a name defined in a)."""
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        module = _resolve(node, name, path)
        for alias in node.names:
            found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of PACKAGES it imports."""
    modules = _modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) & known for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``, each sorted, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def _cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest import path around the cycle from the component's first module, for the
    failure message: a -> b -> ... -> a."""
    members, start = set(component), component[0]
    previous: dict[str, str | None] = {start: None}
    queue = [start]
    for node in queue:
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])  # type: ignore[arg-type]
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [*component, "..."]  # not reached: a strongly connected component has a cycle through each member


def test_there_is_no_import_cycle():
    graph = import_graph()
    cycles = [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(_cycle_through(c, graph)) for c in cycles)


def test_the_graph_sees_function_level_imports_and_skips_lazy_names():
    graph = import_graph()
    # loading.load_with imports the family registry at module level; the registry finds the
    # families by name, so neither it nor loading imports a family module.
    assert "tinymm.families" in graph["tinymm.pipelines.loading"]
    assert not any(m.startswith("tinymm.families.") for m in graph["tinymm.families"])
    # demo.run_tasks imports the spoken-question pipeline inside the function.
    assert "tinymm.pipelines.spoken_question" in graph["tinymm.commands.demo"]
    # `from tinymm.bundle.errors import X` is an edge to the submodule, not to tinymm.bundle.
    assert "tinymm.bundle.errors" in graph["tinymm.families"] and "tinymm.bundle" not in graph["tinymm.families"]
    # A lazy-exports package __init__ names its submodules as strings: no edges.
    assert graph["tinymm.pipelines"] == {"tinymm.lazy_exports"}


def test_relative_imports_and_submodules_resolve(tmp_path):
    module = tmp_path / "pkg" / "sub" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text("from . import sibling\nfrom ..other import name\nfrom .. import other\n"
                      "def f():\n    import pkg.late\n", encoding="utf-8")
    known = {"pkg", "pkg.sub", "pkg.sub.sibling", "pkg.other", "pkg.late"}
    assert imported_modules("pkg.sub.mod", module, known) & known == {"pkg.sub.sibling", "pkg.other", "pkg.late"}
    init = tmp_path / "pkg" / "sub" / "__init__.py"
    init.write_text("from .sibling import x\nif TYPE_CHECKING:\n    from pkg import late\n", encoding="utf-8")
    assert imported_modules("pkg.sub", init, known) & known == {"pkg.sub.sibling"}


def test_cycles_are_found():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"], ["d"]]
    assert _cycle_through(["a", "b", "c"], {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle_through(["a", "b", "c"], {"a": {"b", "c"}, "b": {"c"}, "c": {"a"}}) == ["a", "c", "a"]
    assert _cycle_through(["a"], {"a": {"a"}}) == ["a", "a"]


def test_the_runtime_never_imports_torch_transformers_ctranslate2_train_or_export():
    offenders = []
    for name, path in _modules().items():
        if not name.startswith("tinymm"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):  # TYPE_CHECKING imports included: a type may not come from there either
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module]
            else:
                continue
            offenders += [f"{name}: {t}" for t in targets if t.split(".")[0] in FORBIDDEN_IN_RUNTIME]
    assert not offenders, offenders
