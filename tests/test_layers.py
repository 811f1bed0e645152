"""The package's dependency directions, read statically from the imports (ast, nothing run):

(a) the study side (plans, tables, figures, uploads) never imports torch, transformers or a
    training / method module, neither itself (at any level, lazy imports included) nor through
    what its childtune imports load on import (their module-level imports, followed through);
(b) no module outside the study side imports a study-side module (so neither the training
    side nor what it shares with the study side ever reaches the study layer);
(c) no module imports a private name (leading underscore) of another childtune module, by
    `from .x import _name` or as `x._name` through an imported module.

Shared modules (SHARED) are the torch-free ones both sides use; every module in neither set
counts as training / method code. A new module the study side needs must be added to SHARED
knowingly. Lazy imports inside shared modules (records' environment probe, checkpoints'
save/load) are not followed: they load torch only when the run side calls them."""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import childtune

PACKAGE = Path(childtune.__file__).resolve().parent
STUDY = {"plan", "progress", "aggregate", "tables", "figures", "evidence", "wandb_tables", "readme",
         "record_plots"}
SHARED = {"__init__", "atomic", "cli", "errors", "records", "run_record", "config_keys",
          "checkpoints", "jobs", "mask_kinds", "mask_cache", "loggers"}
FORBIDDEN_IN_STUDY = {"torch", "transformers"}


def _modules(root: Path) -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(root.glob("*.py"))}


def _lazy(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a function (so not run on import)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _imports(tree: ast.Module, names: set[str], package: str = "childtune"):
    """(target, imported name or None, lazy, line) per import: target is a childtune module
    (its stem) or an external top-level package prefixed with ':'."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        lazy = _lazy(node, parents)
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == package:
                    yield (parts[1] if len(parts) > 1 else "__init__"), None, lazy, node.lineno
                else:
                    yield ":" + parts[0], None, lazy, node.lineno
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 0 and parts[0] != package:
                yield ":" + parts[0], None, lazy, node.lineno
                continue
            inner = parts[1:] if node.level == 0 else [p for p in parts if p]
            for alias in node.names:
                if inner:       # from .x import name
                    yield inner[0], alias.name, lazy, node.lineno
                elif alias.name in names:   # from . import x (a module)
                    yield alias.name, None, lazy, node.lineno
                else:           # from . import name (of the package's __init__)
                    yield "__init__", alias.name, lazy, node.lineno


def _module_aliases(tree: ast.Module, names: set[str], package: str = "childtune") -> set[str]:
    """Local names bound to childtune modules (`from . import x as y`, `import childtune.x as y`)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == package) \
                and not (node.module or "").replace(package, "").strip("."):
            bound |= {a.asname or a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.Import):
            bound |= {a.asname for a in node.names
                      if a.asname and a.name.startswith(package + ".")}
    return bound


def violations(root: Path) -> dict[str, list[str]]:
    """The offenders of rules a, b and c in the package at `root`, as readable lines."""
    trees = _modules(root)
    names = set(trees)
    edges = {m: list(_imports(t, names)) for m, t in trees.items()}
    training = names - STUDY - SHARED
    found: dict[str, list[str]] = {"a": [], "b": [], "c": []}

    for start in sorted(STUDY & names):         # (a): a breadth-first walk keeping the path
        seen, queue = {start: [start]}, deque([start])
        while queue:
            module = queue.popleft()
            loaded = {"__init__"} if module != "__init__" else set()  # the package loads first
            for target, _, lazy, _line in edges.get(module, []):
                if module in STUDY or not lazy:
                    loaded.add(target)
            for target in sorted(loaded):
                path = seen[module] + [target.lstrip(":")]
                if target.lstrip(":") in FORBIDDEN_IN_STUDY or target in training:
                    found["a"].append(" -> ".join(path))
                elif target in names and target not in seen:
                    seen[target] = path
                    queue.append(target)

    for module in sorted(names - STUDY):         # (b)
        for target, _, _lazy_, line in edges[module]:
            if target in STUDY:
                found["b"].append(f"{module}.py:{line} imports {target}")

    for module, tree in sorted(trees.items()):   # (c)
        for target, name, _lazy_, line in edges[module]:
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                found["c"].append(f"{module}.py:{line} imports {target}.{name}")
        aliases = _module_aliases(tree, names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                found["c"].append(f"{module}.py:{node.lineno} uses {node.value.id}.{node.attr}")
    return {rule: sorted(set(lines)) for rule, lines in found.items()}


def test_the_layer_sets_name_real_modules():
    names = set(_modules(PACKAGE))
    assert not (STUDY | SHARED) - names, (STUDY | SHARED) - names
    assert not STUDY & SHARED


@pytest.mark.parametrize("rule, what", [
    ("a", "study-side modules reaching torch, transformers or training / method code"),
    ("b", "modules outside the study side importing it"),
    ("c", "private names imported from another childtune module")])
def test_dependencies_point_one_way(rule, what):
    offenders = violations(PACKAGE)[rule]
    assert not offenders, f"{what}:\n  " + "\n  ".join(offenders)


def test_the_checker_finds_each_kind_of_offender(tmp_path):
    """A small fake package with one offender of each rule (so the checks are not vacuous)."""
    files = {
        "__init__.py": "",
        "records.py": "import json\n",
        "jobs.py": "from . import records\n\ndef later():\n    import torch\n",
        "masks.py": "import torch\n_CHUNK = 1\n",
        "fisher.py": "from .masks import _CHUNK\nfrom . import masks as M\nx = M._CHUNK\n",
        "transfer.py": "from . import plan\n",
        "plan.py": "from . import jobs\nfrom .records import json\n",
        "tables.py": "from .plan import jobs\n\ndef f():\n    from . import fisher\n",
        "figures.py": "import childtune.transfer\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    assert found["a"] == ["figures -> transfer", "tables -> fisher"]
    assert found["b"] == ["transfer.py:1 imports plan"]
    assert found["c"] == ["fisher.py:1 imports masks._CHUNK", "fisher.py:3 uses M._CHUNK"]
