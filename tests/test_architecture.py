"""The package's shape holds: imports point down the layers, siblings stay apart, and no module cycle exists.

The imports are read with ``ast`` (every import, including those inside functions and under
TYPE_CHECKING), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "worker"

# Lower ranks are lower layers. Modules of one rank may not import each other across subpackages
# (state and mail are siblings); the package's root modules are the façade, above everything.
LAYERS: Mapping[str, int] = {
    "domain": 0,
    "config": 1,
    "state": 2,
    "mail": 2,
    "service": 3,
    "ops": 4,
}
ROOT_RANK = 5
# Libraries that do I/O (network, processes, files, the clock of a loop): never imported by the pure layer.
IO_LIBRARIES = frozenset(
    {"redis", "fakeredis", "dramatiq", "aiosmtplib", "smtplib", "socket", "asyncio", "subprocess", "os", "pathlib"}
)


def module_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    name = package_dir.name
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [name, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules of the package that ``module`` imports, wherever the import statement stands."""
    known = set(known)
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from .x import y` names the submodule x.y when there is one, else an attribute of x.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            # The longest known module the name lies in (an attribute import counts as its module).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def external_imports_of(path: Path) -> set[str]:
    """The top-level names of the libraries a file imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    files = module_files(package_dir)
    return {module: imports_of(module, path, files) for module, path in files.items()}


def layer_of(module: str) -> tuple[str | None, int]:
    """The module's subpackage and its rank; the root modules (façade, entry points) sit on top."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1], LAYERS[parts[1]]
    return None, ROOT_RANK


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        layer, rank = layer_of(module)
        for target in sorted(targets):
            target_layer, target_rank = layer_of(target)
            if target_layer == layer:
                continue
            if target_rank > rank:
                problems.append(f"{module} imports {target}: up a layer ({layer} -> {target_layer})")
            elif target_rank == rank:
                problems.append(f"{module} imports {target}: a sibling layer ({layer} -> {target_layer})")
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph(PACKAGE_DIR)) == []


def test_every_import_points_down_a_layer_or_stays_in_its_subpackage() -> None:
    assert layer_violations(import_graph(PACKAGE_DIR)) == []


def test_the_domain_layer_imports_no_library_that_does_io() -> None:
    for path in sorted((PACKAGE_DIR / "domain").glob("*.py")):
        assert external_imports_of(path) & IO_LIBRARIES == set(), path.name


def test_every_module_lies_in_a_layer_except_the_facade_and_entry_points() -> None:
    outside = {m for m in module_files(PACKAGE_DIR) if layer_of(m)[0] is None}
    assert outside == {"worker", "worker.entrypoint", "worker.__main__"}


def test_each_subpackage_opens_with_a_docstring_saying_what_it_may_import() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((PACKAGE_DIR / layer / "__init__.py").read_text()))
        assert doc and "import" in doc, layer


# The checker itself, on a small package made for the purpose: it must see what it is there to catch.


def _package(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / "worker"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_finds_a_cycle_hidden_in_a_function_and_under_type_checking(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "service/__init__.py": "",
            "service/runtime.py": "def build():\n    from .actors import Actors\n",
            "service/actors.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runtime import Runtime\n"
            ),
        },
    )
    assert cycles(import_graph(root)) == [["worker.service.actors", "worker.service.runtime"]]


@pytest.mark.parametrize(
    ("importer", "statement", "expected"),
    [
        ("domain/routing.py", "from ..config.settings import Settings", "up a layer (domain -> config)"),
        ("state/store.py", "from worker.mail import render", "a sibling layer (state -> mail)"),
        ("mail/render.py", "import worker.service.runtime", "up a layer (mail -> service)"),
    ],
)
def test_the_checker_finds_an_import_up_a_layer_or_across_siblings(
    tmp_path: Path, importer: str, statement: str, expected: str
) -> None:
    files = {f"{layer}/__init__.py": "" for layer in LAYERS}
    files.update(
        {
            "config/settings.py": "",
            "mail/render.py": "",
            "service/runtime.py": "",
            "domain/routing.py": "",
            "state/store.py": "",
        }
    )
    files[importer] = statement + "\n"
    [problem] = layer_violations(import_graph(_package(tmp_path, files)))
    assert problem.endswith(expected)


def test_the_checker_allows_imports_down_the_layers(tmp_path: Path) -> None:
    files = {f"{layer}/__init__.py": "" for layer in LAYERS}
    files.update(
        {
            "domain/events.py": "",
            "state/store.py": "from ..domain.events import Event\n",
            "ops/cli.py": "from worker.state import store\nfrom ..domain import events\n",
        }
    )
    assert layer_violations(import_graph(_package(tmp_path, files))) == []
