"""The package's layering, checked on the source (an AST test, no imports run).

- ``edgeship.runtime`` never imports ``edgeship.converters`` (at any level).
- core (``edgeship.*`` outside the CLI, the demos and ``__main__``) never imports
  ``edgeship.runtime`` or ``edgeship.converters`` at module level.
- nothing imports a private name (``_x``) from another edgeship module.
- core and runtime import no heavy framework at module level.
- no module over 500 lines outside tests.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"sdk": "edgeship", "converters": "edgeship.converters", "runtime": "edgeship.runtime"}
TOP_FLOOR = ("edgeship.cli", "edgeship.demos", "edgeship.__main__")
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "onnx", "tf2onnx", "onnx2tf", "openvino", "cv2",
         "keras", "ray", "nncf")
MAX_LINES = 500


def _modules():
    for folder, pkg in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for root, _dirs, files in os.walk(base):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(root, f)
                rel = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                parts = [p for p in rel.split(".") if p != "__init__"]
                name = ".".join([pkg] + parts)
                # sdk/ holds edgeship itself; its converters/runtime folders are separate trees
                yield name, path, f == "__init__.py"


def _imports(path, modname, is_pkg):
    """(imported module, names, at module level?) for every import in the file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    package = modname if is_pkg else modname.rpartition(".")[0]
    def walk(node, level_top):
        for child in ast.iter_child_nodes(node):
            inside_fn = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, [], level_top
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    if child.level > 1:
                        base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                yield mod, [a.name for a in child.names], level_top
            yield from walk(child, level_top and not inside_fn)

    yield from walk(tree, True)


ALL = sorted(_modules())


def _is_core(name):
    return not (name.startswith("edgeship.runtime") or name.startswith("edgeship.converters")
                or any(name == t or name.startswith(t + ".") for t in TOP_FLOOR))


def test_modules_found():
    names = [n for n, _p, _i in ALL]
    assert "edgeship.runtime" in names and "edgeship.converters" in names and "edgeship.errors" in names


@pytest.mark.parametrize("name,path,is_pkg", ALL, ids=[n for n, _p, _i in ALL])
def test_layering(name, path, is_pkg):
    problems = []
    for mod, names, module_level in _imports(path, name, is_pkg):
        if name.startswith("edgeship.runtime") and mod.startswith("edgeship.converters"):
            problems.append(f"runtime imports {mod}")
        if _is_core(name) and module_level and (mod.startswith("edgeship.runtime") or mod.startswith("edgeship.converters")):
            problems.append(f"core imports {mod} at module level")
        if (_is_core(name) or name.startswith("edgeship.runtime")) and module_level and mod.split(".")[0] in HEAVY:
            problems.append(f"imports {mod} at module level")
        if mod.startswith("edgeship"):
            for n in names:
                if n.startswith("_") and not n.startswith("__") and mod != name:
                    problems.append(f"imports private {mod}.{n}")
    assert not problems, f"{name}: " + "; ".join(problems)


@pytest.mark.parametrize("name,path,is_pkg", ALL, ids=[n for n, _p, _i in ALL])
def test_module_size(name, path, is_pkg):
    lines = sum(1 for _ in open(path, encoding="utf-8"))
    assert lines <= MAX_LINES, f"{name} has {lines} lines (> {MAX_LINES}): split it"


def _graph(module_level_only: bool):
    names = {n for n, _p, _i in ALL}
    graph = {}
    for name, path, is_pkg in ALL:
        deps = set()
        for mod, imported, level in _imports(path, name, is_pkg):
            if module_level_only and not level:
                continue
            for cand in [mod] + [f"{mod}.{n}" for n in imported]:
                if cand in names and cand != name:
                    deps.add(cand)
        graph[name] = deps
    return graph


def _cycles(graph):
    seen, stack, on, found = set(), [], set(), []

    def visit(n):
        seen.add(n)
        stack.append(n)
        on.add(n)
        for d in sorted(graph[n]):
            if d in on:
                found.append(stack[stack.index(d):] + [d])
            elif d not in seen:
                visit(d)
        stack.pop()
        on.discard(n)

    for n in sorted(graph):
        if n not in seen:
            visit(n)
    return found


def test_no_module_level_import_cycles():
    # a package importing its own submodules (``__init__`` re-exports) is not a cycle of the design
    g = _graph(True)
    cycles = [c for c in _cycles(g) if not any(c[i + 1].startswith(c[i] + ".") for i in range(len(c) - 1))]
    assert not cycles, "module-level import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
