"""The package's layers, read statically from the imports (ast, nothing run).

    method/   Child-Tuning itself        imports neither run/ nor study/, nor Hydra (hydra,
                                         omegaconf), the records or the plans' jobs
    run/      one run -> one record      never imports study/
    study/    records -> tables, ...     never imports torch, transformers, run/ or method/
    top level the shared base            imports no layer; plus the thin entry modules
                                         (train: run's, aggregate and plan: study's), which
                                         nothing imports

"Imports" counts a module's own imports at any level (lazy ones inside functions included) and,
for the study and method layers, what the shared modules they import load on import (their
module-level imports, followed through). A shared module's lazy imports (records' environment
probe, checkpoints' and mask_cache's torch) run only when the run side calls them, so they are
not followed. No module imports a private name (leading underscore) of another module, by
`from .x import _name` or as `x._name` through an imported module."""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import childtune

PACKAGE = Path(childtune.__file__).resolve().parent
LAYERS = ("method", "run", "study")
ENTRY = {"train": "run", "aggregate": "study", "plan": "study"}
FORBIDDEN = {  # per layer: external packages and shared modules it must not reach
    "study": {":torch", ":transformers"},
    "method": {":hydra", ":omegaconf", "records", "jobs"},
}
NOT_IMPORTED_BY = {"study": {"run", "method"}, "method": {"run", "study"}, "run": {"study"},
                   "shared": {"method", "run", "study", "entry"}}
RULES = {
    "study": "the study layer reaching torch, transformers, the run or the method layer",
    "method": "the method layer reaching the run or study layer, Hydra, records or jobs",
    "run": "the run layer importing the study layer",
    "shared": "a shared top-level module importing a layer or an entry module",
    "entry": "a module importing a thin entry module",
    "private": "a private name of another module imported",
}


def modules(root: Path) -> dict[str, ast.Module]:
    """Every module under `root` by dotted name relative to it ('run.train', 'records'; a
    sub-package's __init__ is the sub-package's name, the root's is '__init__')."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return out


def layer(name: str) -> str:
    first = name.split(".")[0]
    if first in LAYERS:
        return first
    return "entry" if name in ENTRY else "shared"


def _package(name: str) -> list[str]:
    """The package a module's relative imports start from, as parts."""
    parts = [] if name == "__init__" else name.split(".")
    return parts if name in LAYERS else parts[:-1]


def _lazy(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def imports(name: str, tree: ast.Module, names: set[str], package: str = "childtune"):
    """(target, imported name or None, lazy, line) per import: a module of the package (dotted
    name), or an external top-level package prefixed with ':'."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def resolve(parts: list[str], alias: str | None):
        base = ".".join(parts) or "__init__"
        full = ".".join([*parts, alias]) if alias else None
        if full in names:
            return full, None
        return base, alias

    for node in ast.walk(tree):
        lazy = _lazy(node, parents)
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != package:
                    yield ":" + parts[0], None, lazy, node.lineno
                else:
                    yield resolve(parts[1:], None)[0], None, lazy, node.lineno
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".") if node.module else []
            if node.level == 0 and parts[0] != package:
                yield ":" + parts[0], None, lazy, node.lineno
                continue
            if node.level == 0:
                base = parts[1:]
            else:
                start = _package(name)
                base = start[:len(start) - (node.level - 1)] + parts
            for alias in node.names:
                target, imported = resolve(base, alias.name)
                yield target, imported, lazy, node.lineno


def _module_aliases(name: str, tree: ast.Module, names: set[str]) -> set[str]:
    """Local names bound to package modules (`from . import x as y`, `import childtune.x as y`)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            resolved = imports(name, ast.Module([node], []), names)
            bound |= {a.asname or a.name for a, (target, imported, _, _) in zip(node.names, resolved)
                      if imported is None and target in names}
        elif isinstance(node, ast.Import):
            bound |= {a.asname for a in node.names if a.asname and a.name.startswith("childtune.")}
    return bound


def _loaded(name: str, edges: dict, start_layer: str) -> set[str]:
    """What importing `name` loads, as the walk sees it: all of a module's imports for modules
    of the walking layer, the module-level ones for the shared modules it reaches; importing
    a module loads its packages' __init__ first."""
    out = {t for t, _, lazy, _ in edges.get(name, []) if layer(name) == start_layer or not lazy}
    parts = name.split(".")
    out |= {".".join(parts[:i]) for i in range(1, len(parts))} | {"__init__"}
    return out - {name}


def violations(root: Path) -> dict[str, list[str]]:
    """The offenders of every rule in the package at `root`, as readable lines."""
    trees = modules(root)
    names = set(trees)
    edges = {m: list(imports(m, t, names)) for m, t in trees.items()}
    found: dict[str, list[str]] = {rule: [] for rule in RULES}

    for start in sorted(m for m in names if layer(m) in FORBIDDEN or ENTRY.get(m) in FORBIDDEN):
        walking = ENTRY.get(start, layer(start))
        banned = FORBIDDEN[walking]
        seen, queue = {start: [start]}, deque([start])
        while queue:
            module = queue.popleft()
            for target in sorted(_loaded(module, edges, walking)):
                path = seen[module] + [target.lstrip(":")]
                if target in banned or layer(target) in NOT_IMPORTED_BY[walking]:
                    found[walking].append(" -> ".join(path))
                elif target in names and target not in seen and \
                        layer(target) in (walking, "shared"):
                    seen[target] = path
                    queue.append(target)

    for module in sorted(names):
        kind = ENTRY.get(module, layer(module))
        for target, imported, _lazy_, line in edges[module]:
            where = f"{module}:{line}"
            if kind in ("run", "shared") and layer(target) in NOT_IMPORTED_BY[kind]:
                found[kind].append(f"{where} imports {target}")
            elif layer(target) == "entry" and target != module:
                found["entry"].append(f"{where} imports {target}")
            if imported and imported.startswith("_") and not imported.startswith("__") \
                    and target != module:
                found["private"].append(f"{where} imports {target}.{imported}")
        aliases = _module_aliases(module, trees[module], names)
        for node in ast.walk(trees[module]):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in aliases and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                found["private"].append(f"{module}:{node.lineno} uses "
                                        f"{node.value.id}.{node.attr}")
    return {rule: sorted(set(lines)) for rule, lines in found.items()}


def test_every_layer_and_entry_module_is_there():
    names = set(modules(PACKAGE))
    assert set(LAYERS) <= names and set(ENTRY) <= names
    for name in LAYERS:
        assert any(m.startswith(name + ".") for m in names), name


@pytest.mark.parametrize("rule", list(RULES))
def test_dependencies_point_one_way(rule):
    offenders = violations(PACKAGE)[rule]
    assert not offenders, f"{RULES[rule]}:\n  " + "\n  ".join(offenders)


def test_the_checker_finds_each_kind_of_offender(tmp_path):
    """A small fake package with offenders of every rule (so the checks are not vacuous)."""
    files = {
        "__init__.py": "",
        "records.py": "import json\n",
        "errors.py": "from .study import tables\n",
        "atomic.py": "\ndef later():\n    import torch\n",
        "train.py": "from .run.loop import main\n",
        "plan.py": "from .study.plan import main\n",
        "method/__init__.py": "",
        "method/masks.py": "import torch\n_CHUNK = 1\n",
        "method/fisher.py": "from .masks import _CHUNK\nfrom . import masks as M\nx = M._CHUNK\n"
                            "from .. import atomic\n\ndef f():\n    from ..run import loop\n",
        "method/variants.py": "import omegaconf\nfrom ..records import json\n",
        "run/__init__.py": "",
        "run/loop.py": "from ..method import fisher\nfrom .. import train\n",
        "run/transfer.py": "from ..study import plan\n",
        "study/__init__.py": "",
        "study/plan.py": "from .. import atomic, records\n",
        "study/tables.py": "from .plan import records\n\ndef f():\n    from ..method import masks\n",
        "study/figures.py": "import childtune.run.loop\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(tmp_path)
    assert found["study"] == ["study.figures -> run.loop", "study.tables -> method.masks"]
    assert found["method"] == ["method.fisher -> run.loop", "method.variants -> omegaconf",
                               "method.variants -> records"]
    assert found["run"] == ["run.transfer:1 imports study.plan"]
    assert found["shared"] == ["errors:1 imports study.tables"]
    assert found["entry"] == ["run.loop:2 imports train"]
    assert found["private"] == ["method.fisher:1 imports method.masks._CHUNK",
                                "method.fisher:3 uses M._CHUNK"]
