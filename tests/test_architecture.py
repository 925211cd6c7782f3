"""The import rule of docs/architecture.md, checked on the source: layers point one way.

Every `import robustact.X` / `from robustact.X import ...` under src/robustact (at module level or inside a
function) is an edge from the importing module's layer to the imported module's layer; an edge the rule does not
allow fails here, so the layering cannot silently decay again.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "robustact"

# Module prefix -> layer (the longest prefix wins). `robustact` itself is its public face: the top.
LAYER_OF = {
    "robustact.errors": "base", "robustact.utils": "base", "robustact.registry": "base", "robustact.fields": "base",
    "robustact.fileio": "base", "robustact.distributed": "base",
    "robustact.data": "data",
    "robustact.models": "models",
    "robustact.defenses": "defenses",
    "robustact.attacks": "attacks", "robustact.attacks.bpda": "attacks",
    "robustact.config": "config",
    "robustact.checkpoints": "checkpoints",
    "robustact.training": "training",
    "robustact.evaluation": "evaluation", "robustact.evaluation.stats": "evaluation",
    "robustact.evaluation.audit": "evaluation",
    "robustact.analysis": "analysis",
    "robustact.cli": "top", "robustact.bench": "top", "robustact.reproduce": "top", "robustact.__main__": "top",
    "robustact": "top",
}

# What each layer may import (besides itself). data and models import nothing above them; defenses only
# models; attacks never evaluation, training or run loading (checkpoints); training and evaluation sit on top
# of both and not on each other; only the top (the command line, bench, the package face) imports everything.
BELOW = {
    "base": set(),
    "data": {"base"},
    "models": {"base"},
    "defenses": {"base", "models"},
    "attacks": {"base", "models", "defenses"},
    "config": {"base", "data", "models", "defenses"},
    "checkpoints": {"base", "data", "models", "defenses", "config"},
    "training": {"base", "data", "models", "defenses", "attacks", "config", "checkpoints"},
    "evaluation": {"base", "data", "models", "defenses", "attacks", "config", "checkpoints"},
    "analysis": {"base", "data", "models", "defenses", "attacks", "config", "checkpoints", "evaluation"},
    "top": set(LAYER_OF.values()),
}


def layer(module: str) -> str:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in LAYER_OF:
            return LAYER_OF[prefix]
    raise KeyError(f"{module} is in no layer; add it to LAYER_OF (and docs/architecture.md)")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every robustact module `source` imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "robustact"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "robustact":
                continue
            # `from robustact import evaluation` imports that subpackage; `from robustact import X` for a name X
            # defined in robustact/__init__.py imports the package face itself
            folder = SRC.parent / name.replace(".", "/")
            subs = {a.name for a in node.names if (folder / a.name).is_dir() or (folder / f"{a.name}.py").exists()}
            found |= {f"{name}.{sub}" for sub in subs}
            if len(subs) < len(node.names):
                found.add(name)
    return found


def forbidden_edges(files: dict[str, tuple[str, bool]]) -> list[str]:
    bad = []
    for module, (source, is_package) in files.items():
        mine = layer(module)
        for target in sorted(imports_of(source, module, is_package)):
            theirs = layer(target)
            if theirs != mine and theirs not in BELOW[mine]:
                bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return bad


def source_files() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted(SRC.rglob("*.py"))}


def test_layers_point_one_way():
    files = source_files()
    assert len(files) > 40
    assert forbidden_edges(files) == []


def test_every_module_has_a_layer():
    for module in source_files():
        layer(module)


@pytest.mark.parametrize("module, source", [
    ("robustact.attacks.adaptive", "from robustact.evaluation.engine import predict\n"),
    ("robustact.attacks.wrappers", "def f():\n    from robustact.checkpoints import load_model\n"),
    ("robustact.models.registry", "def f():\n    from robustact.defenses.placement import place_defense\n"),
    ("robustact.defenses.cifs", "from robustact.training import Trainer\n"),
    ("robustact.training.trainer", "from robustact.evaluation.engine import evaluate\n"),
    ("robustact.data.splits", "import robustact.config\n"),
    ("robustact.defenses.placement", "from .. import attacks\n"),
    ("robustact.models.layers", "from robustact import build_model\n"),
])
def test_the_rule_catches_each_kind_of_edge(module, source):
    """The checks above can fail: each of these edges (several were in 0.1.0) is reported."""
    assert forbidden_edges({module: (source, False)})
