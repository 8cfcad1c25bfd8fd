"""The package's shape, checked: no import cycle, one module reads model output, no machine's absolute paths."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("samtok_rl", "rewards")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `path` imports, at any depth of the file (deferred imports count too)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycle():
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    # A package's __init__ importing its own submodules is how packages expose them; a submodule importing its own
    # package's __init__ back is the cycle to forbid, so edges into a parent package from its children are kept.
    graph = {m: {t for t in ts if not (t.startswith(m + "."))} for m, ts in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_rewards_use_no_private_helper_of_another_package():
    for name, path in modules().items():
        if not name.startswith("rewards"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("rewards"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_mask_and_grounding_grammars_live_in_parsing():
    """Only `samtok_rl.parsing` compiles patterns over mask or grounding tokens (the codec only writes them)."""
    pattern = re.compile(r"re\.(?:compile|findall|finditer|search|match|fullmatch)\([^)]*(?:mt_|object_ref)")
    owners = sorted(name for name, path in modules().items() if pattern.search(path.read_text()))
    assert owners == ["samtok_rl.parsing"]


def test_no_absolute_machine_paths():
    tracked = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".sh", ".toml", ""}]
    tracked = [p for p in tracked if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    pattern = re.compile(r"(?<![\w.])/(?:work|root|home|Users)/\w")
    offenders = [str(p.relative_to(ROOT)) for p in tracked if pattern.search(p.read_text(errors="ignore"))]
    assert offenders == []
