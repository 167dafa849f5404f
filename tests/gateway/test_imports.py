"""The gateway's modules import in layers: no import cycle, also through the imports made inside
functions (compose -> images -> runtime/docker -> supervisor -> runtime/docker was one), and
every module imports alone in a fresh interpreter. docker-py stays in the two modules that serve
the CLI's Engine verbs (images, fleet); the docker runtime's supervisor, a long-running process,
loads neither docker-py nor the HTTP stack under it (its own client: gateway.runtime.engine_api).

The fresh-interpreter imports start one `python -c 'import gateway.X'` per module (so that test
is in the sim tier; the rest are unit): the only way to see what importing one module alone does. A
cycle through imports made inside functions passes that test (the old one did): the import
graph read from the sources, every import statement at any depth, is what finds it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gateway

PACKAGE = Path(gateway.__file__).resolve().parent
ROOT = PACKAGE.parent
# The docker-py users: images for the CLI verbs (engine), Swarm services (fleet deploy/status).
DOCKER_MODULES = {"gateway.runtime.engine", "gateway.swarm"}
# What `fieldgate up DIR --runtime docker` must not load: docker-py and what it brings cost the
# supervisor ~9 MiB PSS (issue 10: the supervisor <= 20 MiB).
NOT_IN_DOCKER_SUPERVISOR = {"docker", "requests", "urllib3", "charset_normalizer", "idna", "email", "http.client"}
PACKAGES = {"gateway", "gateway.runtime"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(tree: ast.AST) -> set[str]:
    """Every module an import statement names, at any depth, except under `if TYPE_CHECKING:`."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from gateway import x`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph() -> dict[str, set[str]]:
    """gateway module -> the gateway modules it imports (the packages themselves are empty)."""
    known = set(MODULES) - PACKAGES
    return {module_name(path): {m for m in imported(ast.parse(path.read_text(), str(path)))
                                if m in known and m != module_name(path)}
            for path in PACKAGE.rglob("*.py")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(_path(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through a component, for the message: a -> b -> ... -> a."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = min(m for m in graph[path[-1]] if m in component)
        if nxt in seen:
            return [*path[path.index(nxt):], nxt]
        path.append(nxt)
        seen.add(nxt)


@pytest.mark.unit
def test_the_tarjan_check_finds_a_cycle_through_imports_inside_functions() -> None:
    source = "def f():\n    from gateway.b import x\n"
    graph = {"gateway.a": {m for m in imported(ast.parse(source)) if m.startswith("gateway.b")},
             "gateway.b": {"gateway.c"}, "gateway.c": {"gateway.a"}}
    assert cycles(graph) == [["gateway.a", "gateway.b", "gateway.c", "gateway.a"]]
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway.b import x\n"
    assert imported(ast.parse(guarded)) == {"typing", "typing.TYPE_CHECKING"}


@pytest.mark.unit
def test_no_gateway_module_imports_itself_back_in_a_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


@pytest.mark.unit
def test_only_the_engine_clients_import_docker() -> None:
    users = {module_name(p) for p in PACKAGE.rglob("*.py")
             if any(m == "docker" or m.startswith("docker.") for m in imported(ast.parse(p.read_text())))}
    assert users == DOCKER_MODULES


@pytest.mark.sim
def test_every_gateway_module_imports_alone_in_a_fresh_interpreter() -> None:
    """One interpreter per module, all started at once (a cold import takes ~1 s here)."""
    runs = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name in MODULES}
    failed = {}
    for name, run in runs.items():
        out, _ = run.communicate(timeout=120)
        if run.returncode != 0:
            failed[name] = out.strip().splitlines()[-1] if out.strip() else f"exit {run.returncode}"
    assert not failed, failed
    assert {"gateway.supervisor", "gateway.runtime.docker", "gateway.runtime.process"} <= set(MODULES)


@pytest.mark.sim
def test_the_docker_runtimes_supervisor_loads_no_docker_py_nor_its_http_stack() -> None:
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, gateway.cli, gateway.supervisor, gateway.runtime.docker, "
         "asyncio.subprocess; print(' '.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout.split()
    loaded = {m if m in NOT_IN_DOCKER_SUPERVISOR else m.split(".")[0] for m in modules
              if m in NOT_IN_DOCKER_SUPERVISOR or m.split(".")[0] in NOT_IN_DOCKER_SUPERVISOR}
    assert not loaded, f"the docker supervisor imports {sorted(loaded)}"
