"""Imports run one way: no driftlab module imports one that imports it back.

The graph is read from the source with `ast` (nothing is imported), with every
`import` and `from ... import` of a driftlab module as an edge, those inside functions
included: a deferred import still ties two modules together. A package's `__init__` is
not an implicit dependency of its submodules (Python runs it first, but it is the
package's table of contents, not a layer).
"""

import ast
import pathlib

import pytest


PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "driftlab"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _imported(node, module: str, is_package: bool, modules) -> set[str]:
    """The driftlab modules one import statement names (a submodule where `from X import
    name` names one, else `X` itself)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if node.level:
        # A relative import is resolved against the importing module's package.
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = set()
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        if submodule in modules:
            found.add(submodule)
        elif target in modules:
            found.add(target)
    return found


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
    """`{module: driftlab modules it imports}` over every module under `root`."""
    modules = _modules(root)
    graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                edges |= _imported(node, module, is_package, modules)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as `[a, b, ..., a]`, or None (depth-first search, three colours)."""
    state = dict.fromkeys(graph, "new")
    stack: list[str] = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if state.get(target) == "new":
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if state[node] == "new":
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_driftlab_imports_form_no_cycle():
    graph = import_graph()
    assert len(graph) > 20 and graph["driftlab"], "the walk found driftlab's modules"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _write(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(
    "files",
    [
        # The loop this test was written for: two modules importing each other, one of
        # them only inside a function.
        {
            "__init__.py": "",
            "cli.py": "from . import _weak\n",
            "_weak.py": "def run():\n    from .cli import helper\n",
        },
        # Through a third module, with absolute imports and `from package import module`.
        {
            "__init__.py": "",
            "a.py": "import pkg.b\n",
            "b.py": "from pkg import c\n",
            "c.py": "from pkg.a import name\n",
        },
        # Two levels up, from a subpackage's module to a top-level module and back.
        {
            "__init__.py": "",
            "top.py": "from .sub import _low\n",
            "sub/__init__.py": "",
            "sub/_low.py": "from .. import top\n",
        },
    ],
    ids=["function-level", "through-a-third", "relative-two-levels"],
)
def test_the_walk_finds_cycles(tmp_path, files):
    cycle = find_cycle(import_graph(_write(tmp_path, files)))
    assert cycle is not None and cycle[0] == cycle[-1]


def test_the_walk_accepts_a_layered_package(tmp_path):
    # Submodules importing their siblings and a package re-exporting them form no cycle.
    root = _write(
        tmp_path,
        {
            "__init__.py": "from .sub import Thing\nfrom . import _ground\n",
            "_ground.py": "import math\n",
            "sub/__init__.py": "from ._thing import Thing as Thing\n",
            "sub/_thing.py": "from .._ground import x\nfrom . import _helper\n",
            "sub/_helper.py": "from pkg._ground import y\n",
        },
    )
    graph = import_graph(root)
    assert graph["pkg.sub._thing"] == {"pkg._ground", "pkg.sub._helper"}
    assert graph["pkg"] == {"pkg.sub", "pkg._ground"}
    assert find_cycle(graph) is None
