"""The shape of the code: no import cycles, short modules, arrows pointing inward.

The layers are transports -> node -> replication / durable -> crdt, with the
CLI on top.  These checks read the source with `ast` (nothing is imported),
so they hold for imports inside functions and `if TYPE_CHECKING:` blocks too:
a cycle hidden there is still a cycle a reader has to untangle.  Each check
is a plain function over a directory, and the tests at the end feed it a
small package made for the purpose, to show it fails when it should.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "replica"

MAX_MODULE_LINES = 450
MAX_SCRIPT_LINES = 600
MAX_README_LINES = 350
DOCS = ("architecture.md", "durability.md", "replication.md", "benchmarks.md", "decisions.md")
CORE = "replica.crdt"
CORE_MAY_NOT_IMPORT = ("asyncio", "socket", "os", "subprocess")
SHELL = ("replica.node", "replica.transports", "replica.cli")
BELOW_THE_NODE = ("replica.durable", "replica.replication")

Graph = dict[str, set[str]]


# -- the walker ------------------------------------------------------------------------------


def modules_of(package: Path) -> dict[str, Path]:
    """Every module of the package directory `package`, by dotted name (packages by their own)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """Every module `module` imports, anywhere in its file.

    A name of the package is resolved to the module it loads: `from p.q import r`
    is `p.q.r` when r is a submodule and `p.q` otherwise.  Other names stay as
    written (`os.path`).
    """
    modules = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_ours(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else _ours(base, modules))
    found.discard(module)
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _ours(name: str, modules: set[str]) -> str:
    """The longest module of ours that `name` starts with, or `name` itself."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix
    return name


def all_imports(package: Path) -> dict[str, set[str]]:
    """Every module of `package` and everything it imports."""
    modules = modules_of(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def module_graph(package: Path) -> Graph:
    """Every module of `package` and the modules of the same package it imports."""
    imports = all_imports(package)
    return {
        name: {target for target in found if target in imports} for name, found in imports.items()
    }


def find_cycles(graph: Graph) -> list[list[str]]:
    """Cycles (first module repeated at the end) that together pass through every module on one.

    For each strongly connected component, a shortest cycle through its first
    module not yet on a cycle found, until every member is on one.
    """
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) == 1 and not component & graph.get(min(component), set()):
            continue
        uncovered = set(component)
        while uncovered:
            cycle = _cycle_through(min(uncovered), component, graph)
            uncovered -= set(cycle)
            cycles.append(cycle)
    return sorted(cycles)


def _strongly_connected(graph: Graph) -> Iterator[set[str]]:
    """Tarjan's algorithm, iterative (a deep package must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                yield component


def _cycle_through(start: str, component: set[str], graph: Graph) -> list[str]:
    """A shortest path from `start` back to itself inside `component` (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, ())):
                if target not in component:
                    continue
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def too_long(paths: Iterable[Path], limit: int, root: Path) -> list[str]:
    """`path (N lines)` for every file longer than `limit` lines."""
    found = []
    for path in sorted(paths):
        lines = len(path.read_text(errors="replace").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(root)} ({lines} lines, limit {limit})")
    return found


def forbidden_imports(
    imports: dict[str, set[str]], importers: Iterable[str], forbidden: Iterable[str]
) -> list[str]:
    """`a imports b` for every module under an `importers` prefix importing a `forbidden` one."""
    sources = tuple(importers)
    targets = tuple(forbidden)
    return [
        f"{module} imports {target}"
        for module, found in sorted(imports.items())
        if _under(module, sources)
        for target in sorted(found)
        if _under(target, targets)
    ]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def core_escapes(imports: dict[str, set[str]], core: str, package: str) -> list[str]:
    """Modules of `core` that import something of `package` outside `core`, or I/O."""
    outside = [
        f"{module} imports {target}"
        for module, found in sorted(imports.items())
        if _under(module, (core,))
        for target in sorted(found)
        if _under(target, (package,)) and not _under(target, (core,))
    ]
    return outside + forbidden_imports(imports, [core], CORE_MAY_NOT_IMPORT)


def missing_docs(repo: Path) -> list[str]:
    problems = too_long([repo / "README.md"], MAX_README_LINES, repo)
    problems += [f"docs/{name} is missing" for name in DOCS if not (repo / "docs" / name).is_file()]
    return problems


def _script_files(repo: Path) -> list[Path]:
    return [
        path
        for path in (repo / "scripts").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]


# -- the checks on this repository ------------------------------------------------------------


def test_no_import_cycles() -> None:
    cycles = find_cycles(module_graph(PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_long_modules_or_scripts() -> None:
    long = too_long(PACKAGE.rglob("*.py"), MAX_MODULE_LINES, REPO)
    long += too_long(_script_files(REPO), MAX_SCRIPT_LINES, REPO)
    assert not long, "too long:\n" + "\n".join(long)


def test_the_core_imports_nothing_of_the_shell_and_no_io() -> None:
    escapes = core_escapes(all_imports(PACKAGE), CORE, PACKAGE.name)
    assert not escapes, "\n".join(escapes)


def test_durable_and_replication_never_import_the_node_transports_or_cli() -> None:
    upward = forbidden_imports(all_imports(PACKAGE), BELOW_THE_NODE, SHELL)
    assert not upward, "\n".join(upward)


def test_readme_is_short_and_docs_hold_every_topic() -> None:
    problems = missing_docs(REPO)
    assert not problems, "\n".join(problems)


# -- the checks themselves, on packages made to fail them -------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    """A package `pkg` under `root` holding `files` (relative paths -> source)."""
    for relative, source in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "pkg"


def test_a_cycle_through_type_checking_a_function_and_a_submodule_is_found(
    tmp_path: Path,
) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n",
            "b.py": "def later():\n    from pkg.sub import c\n",
            "sub/__init__.py": "",
            "sub/c.py": "from .. import a\n",
            "d.py": "import pkg.a\nimport os.path\n",
        },
    )
    graph = module_graph(package)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}  # the submodule, not the package `pkg.sub`
    assert graph["pkg.sub.c"] == {"pkg.a"}  # relative, resolved
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_no_cycle_is_reported_for_a_layered_package(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "top.py": "from pkg import low, mid\n",
            "mid.py": "from pkg.low import thing\n",
            "low.py": "thing = 1\n",
        },
    )
    graph = module_graph(package)
    assert graph["pkg.top"] == {"pkg.low", "pkg.mid"}
    assert graph["pkg.mid"] == {"pkg.low"}  # `thing` is no module: the module that holds it
    assert find_cycles(graph) == []


def test_a_module_importing_itself_through_its_package_is_a_cycle() -> None:
    assert find_cycles({"p": {"p.a"}, "p.a": {"p"}}) == [["p", "p.a", "p"]]
    assert find_cycles({"p.a": {"p.a"}}) == [["p.a", "p.a"]]


def test_every_module_of_a_tangle_is_on_a_reported_cycle() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "a"], ["c", "b", "c"]]


def test_a_long_file_is_named_and_one_at_the_limit_is_not(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert too_long(tmp_path.glob("*.py"), MAX_MODULE_LINES, tmp_path) == [
        f"long.py ({MAX_MODULE_LINES + 1} lines, limit {MAX_MODULE_LINES})"
    ]


def test_a_core_module_with_io_or_a_shell_import_is_named(tmp_path: Path) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "crdt/__init__.py": "",
            "crdt/pure.py": "import dataclasses\nfrom pkg.crdt import other\n",
            "crdt/other.py": "",
            "crdt/leaky.py": "def f():\n    import os.path\n    from pkg.node import router\n",
            "node/__init__.py": "",
            "node/router.py": "from pkg.crdt import pure\n",
        },
    )
    assert core_escapes(all_imports(package), "pkg.crdt", "pkg") == [
        "pkg.crdt.leaky imports pkg.node.router",
        "pkg.crdt.leaky imports os.path",
    ]


@pytest.mark.parametrize("upward", ["from pkg.node import router", "import pkg.cli.main"])
def test_a_lower_layer_importing_the_shell_is_named(tmp_path: Path, upward: str) -> None:
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "durable/__init__.py": "",
            "durable/store.py": f"import typing\nif typing.TYPE_CHECKING:\n    {upward}\n",
            "node/__init__.py": "",
            "node/router.py": "from pkg.durable import store\n",
            "cli/__init__.py": "",
            "cli/main.py": "",
        },
    )
    found = forbidden_imports(all_imports(package), ["pkg.durable"], ["pkg.node", "pkg.cli"])
    assert len(found) == 1 and found[0].startswith("pkg.durable.store imports pkg.")


def test_a_long_readme_and_a_missing_doc_are_named(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    for name in DOCS[1:]:
        (tmp_path / "docs" / name).write_text("# a topic\n")
    (tmp_path / "README.md").write_text("line\n" * MAX_README_LINES)
    assert missing_docs(tmp_path) == [f"docs/{DOCS[0]} is missing"]
    (tmp_path / "README.md").write_text("line\n" * (MAX_README_LINES + 1))
    (tmp_path / "docs" / DOCS[0]).write_text("# modules\n")
    assert missing_docs(tmp_path) == [
        f"README.md ({MAX_README_LINES + 1} lines, limit {MAX_README_LINES})"
    ]
