"""The layers call only downward (DESIGN.md, "Layers"; issue 9 item 1).

The import-linter contract in pyproject.toml says which layer may import which
(even under TYPE_CHECKING); `make test` runs it, and so does this test. A
second check reads the sources: no module outside ``tether.store`` touches a
private member of the store (``store._end``, ``self._store._owner``...), the
seam through which the layers used to call each other in a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tether.store.core

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(tether.store.__file__).resolve().parents[1]


def test_the_layers_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def _store_private_members() -> set[str]:
    """Private names defined by the store's classes (methods, properties, attributes)."""
    core = tether.store.core
    names: set[str] = set()
    for top in [v for v in vars(core).values() if isinstance(v, type)]:
        for cls in top.__mro__:
            if not cls.__module__.startswith("tether.store"):
                continue
            names |= {n for n in vars(cls) if n.startswith("_") and not n.startswith("__")}
            names |= {n for n in getattr(cls, "__annotations__", {}) if n.startswith("_")}
    return names


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in {"self", "cls"}


def test_no_private_member_of_the_store_is_used_outside_it() -> None:
    private = _store_private_members()
    assert {"_owner", "_lock_rows", "_event"} <= private  # the check sees the store's privates
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not _is_self(node.value)
                and "store" in ast.unparse(node.value).lower()
            ):
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_the_store_package_imports_nothing_above_it() -> None:
    above = ("lifecycle", "liveness", "compose", "agents", "gateway", "cli")
    found = []
    for path in sorted((SRC / "store").rglob("*.py")):
        package = ["tether", *path.relative_to(SRC).parts[:-1]]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = [*base, *(node.module or "").split(".")]
                if len(module) > 1 and module[0] == "tether" and module[1] in above:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}: {'.'.join(module)}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if len(parts) > 1 and parts[0] == "tether" and parts[1] in above:
                        found.append(f"{path.relative_to(SRC)}:{node.lineno}: {alias.name}")
    assert found == []
