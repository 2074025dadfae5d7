"""The layering of DESIGN.md §4, checked from the imports of every module (no import runs).

cli → daemon → fuse_ops → vfs → {files → view, renames} → {objects, uploads → deletes, dircache,
writeback, blobs, journal, remote}
→ {keys, config, errors}: a module may import only what sits below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zonefs"

# Which zonefs modules each module must never import (directly), and which outside libraries
# only some modules may import.
FORBIDDEN = {
    "vfs": {"fuse_ops", "daemon", "cli", "content"},
    "view": {"vfs", "files", "renames", "fuse_ops", "daemon", "cli", "content"},
    "files": {"vfs", "renames", "fuse_ops", "daemon", "cli", "content"},
    "objects": {"vfs", "view", "files", "uploads", "fuse_ops", "daemon", "cli"},
    "uploads": {"vfs", "view", "files", "fuse_ops", "daemon", "cli"},
    "deletes": {"vfs", "view", "files", "uploads", "renames", "objects", "fuse_ops",
                "daemon", "cli"},
    "leftovers": {"vfs", "view", "files", "uploads", "renames", "objects", "fuse_ops",
                  "daemon", "cli"},
    "renames": {"vfs", "fuse_ops", "daemon", "cli", "objects"},
    "writeback": {"remote", "vfs", "objects", "uploads", "blobs", "journal"},
    "blobs": {"vfs", "objects", "uploads", "remote", "journal"},
    "journal": {"vfs", "objects", "uploads", "remote", "blobs"},
    "dircache": {"vfs", "objects", "uploads", "remote"},
    "inodes": {"vfs", "remote", "blobs", "journal"},
    "keys": {"vfs", "remote", "config"},
    "errors": {"keys", "config", "vfs", "remote"},
}
ONLY_IN = {
    "pyfuse3": {"fuse_ops", "daemon"},
    "boto3": {"remote.s3"},
    "botocore": {"remote.s3"},
}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Top-level names imported: 'pyfuse3', 'boto3', or zonefs modules like 'vfs'."""
    package = name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add((node.module or "").split(".")[0])
                continue
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            if node.module is None:
                found.update(".".join([*base, a.name]).strip(".") for a in node.names)
            else:
                found.add(target.split(".")[0] if target.startswith("remote") else target)
    return found


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_follow_the_layers(name: str) -> None:
    imported = _imports(name, MODULES[name])
    bad = imported & FORBIDDEN.get(name, set())
    assert not bad, f"zonefs/{name}.py imports {sorted(bad)}, above it in the layering"
    for library, allowed in ONLY_IN.items():
        if library in imported:
            assert name in allowed, f"only {sorted(allowed)} may import {library}; {name} does"


def test_every_module_says_what_it_owns() -> None:
    for name, tree in MODULES.items():
        if name.endswith("__main__"):
            continue
        assert ast.get_docstring(tree), f"zonefs/{name}.py has no module docstring"
