"""The layering of docs/architecture.md, checked from the imports of every module (no import
runs).

The package is split into wings, one folder each, ranked from the leaves up:

    common (0) → remote (1) → cache (2) → pending (3) → core (4) → mount (5) → cli (6)

A module imports only modules of a lower rank or of its own wing, and the imports inside a
wing form no cycle: so the whole graph has none (checked too), and how deep it is stays
bounded. A module that sits in no wing fails: a new folder gets a rank here first. Some
outside libraries belong to one place only (pyfuse3 to the mount side, boto3 to the S3 remote).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zonefs"

#: Each wing (a folder of the package, or a top-level module) and its rank.
RANKS = {
    "zonefs": 0,  # the package itself: its version
    "common": 0,
    "remote": 1,
    "cache": 2,
    "pending": 3,
    "core": 4,
    "mount": 5,
    "cli": 6,
    "__main__": 7,
}
#: Outside libraries only some wings or modules may import.
ONLY_IN = {
    "pyfuse3": {"mount"},
    "boto3": {"remote.s3", "remote.s3_errors"},
    "botocore": {"remote.s3", "remote.s3_errors", "remote.s3_multipart", "remote.lean.remote"},
}
#: The longest chain of imports (in modules) the graph may have.
MAX_DEPTH = 8


def _modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name under zonefs ('core.vfs', 'remote', 'zonefs'
    for the package's own __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "zonefs"] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def wing(name: str) -> str:
    return name.split(".")[0]


def _resolve(name: str, level: int, module: str | None) -> str:
    """The dotted name (under zonefs) an import statement of module `name` names."""
    if level == 0:
        assert module is not None
        return module
    package = name.split(".") if _is_package(name) else name.split(".")[:-1]
    base = package[: len(package) - level + 1]
    return ".".join(["zonefs", *base, *([module] if module else [])])


def _is_package(name: str) -> bool:
    return name == "zonefs" or (PACKAGE / name.replace(".", "/") / "__init__.py").exists()


def _local(dotted: str) -> str | None:
    """'zonefs.core.vfs' -> 'core.vfs'; 'zonefs' -> 'zonefs'; None outside the package."""
    if dotted == "zonefs":
        return "zonefs"
    if dotted.startswith("zonefs."):
        return dotted[len("zonefs."):]
    return None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import statements under `if TYPE_CHECKING:` (annotations only)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


@functools.cache
def imports(name: str, *, runtime: bool = False) -> tuple[frozenset[str], frozenset[str]]:
    """(zonefs modules, outside top-level libraries) that module `name` imports, anywhere in
    it: inside functions and under `if TYPE_CHECKING:` too (each is an edge of the plan),
    unless `runtime`, which leaves out the imports for annotations only."""
    mods: set[str] = set()
    libs: set[str] = set()
    skip = _type_checking_only(MODULES[name]) if runtime else set()
    for node in ast.walk(MODULES[name]):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = _local(alias.name)
                if local is None:
                    libs.add(alias.name.split(".")[0])
                else:
                    mods.add(local)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.level, node.module)
            local = _local(target)
            if local is None:
                libs.add(target.split(".")[0])
                continue
            for alias in node.names:
                sub = f"{local}.{alias.name}" if local != "zonefs" else alias.name
                mods.add(sub if sub in MODULES else local)
    return frozenset(mods - {name}), frozenset(libs)


def test_every_module_has_a_rank() -> None:
    lost = sorted(n for n in MODULES if wing(n) not in RANKS)
    assert not lost, f"modules in no ranked wing (add the wing to RANKS): {lost}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_only_lower_ranks_or_its_own_wing(name: str) -> None:
    mods, libs = imports(name)
    rank = RANKS[wing(name)]
    above = sorted(m for m in mods if wing(m) != wing(name) and RANKS[wing(m)] >= rank)
    assert not above, f"zonefs/{name} (rank {rank}) imports {above}, not below it"
    for library, allowed in ONLY_IN.items():
        if library in libs:
            assert name in allowed or wing(name) in allowed, (
                f"only {sorted(allowed)} may import {library}; {name} does")


def _cycle() -> list[str] | None:
    """One import cycle of the whole graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(imports(n)[0]):
            if state.get(m) == 1:
                return [*path[path.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(MODULES):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def longest_chain() -> list[str]:
    """The longest chain of imports that run (annotations aside: those name a type, they
    run nothing), from the module that imports to the one imported last."""

    @functools.cache
    def chain(n: str) -> tuple[str, ...]:
        best: tuple[str, ...] = ()
        for m in imports(n, runtime=True)[0]:
            c = chain(m)
            if len(c) > len(best):
                best = c
        return (n, *best)

    return list(max((chain(n) for n in MODULES), key=len))


def test_the_import_graph_is_shallow() -> None:
    chain = longest_chain()
    assert len(chain) <= MAX_DEPTH, (
        f"{len(chain)} floors deep (at most {MAX_DEPTH}): " + " → ".join(chain))


def test_every_module_says_what_it_owns() -> None:
    for name, tree in MODULES.items():
        if name.endswith("__main__"):
            continue
        assert ast.get_docstring(tree), f"zonefs/{name} has no module docstring"


# -- pending state has one owner ----------------------------------------------------------------

#: The pending wing's collections: reached through the ledger's operations and queries only.
PENDING_COLLECTIONS = {"rows", "deletes", "writeback", "settler", "uploader"}
#: Fields only a pending row (`DirtyFile`) has.
PENDING_ROW_FIELDS = {"kind", "writers", "persisted", "uploaded_generation", "uploaded",
                      "absent", "claimed"}
#: Methods that change a dict, set or list.
MUTATORS = {"pop", "popitem", "setdefault", "update", "clear", "add", "discard", "remove",
            "append", "extend", "insert"}


def _chain(node: ast.expr) -> list[str]:
    """The attribute names of `a.b.c` (['a', 'b', 'c']), subscripts skipped."""
    names: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            if isinstance(node, ast.Name):
                names.append(node.id)
            return names[::-1]


def _pending_writes(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, what) for each place that reaches into the ledger's collections or changes a
    pending row's fields."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PENDING_COLLECTIONS:
            found.append((node.lineno, f"reaches .{node.attr}"))
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                chain = _chain(t)
                if len(chain) < 2 or chain[0] == "self" and len(chain) == 2:
                    continue  # a local name, or an object's own field
                if "row" in chain[1:] or chain[-1] in PENDING_ROW_FIELDS:
                    found.append((t.lineno, "assigns " + ".".join(chain)))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in MUTATORS and "row" in _chain(node.func.value)):
            found.append((node.lineno, "changes " + ".".join(_chain(node.func))))
    return found


def test_only_the_pending_wing_changes_pending_state() -> None:
    """Outside zonefs/pending, no module reaches into the ledger's collections (its rows,
    deletes, write-back queue) or assigns a field of a pending row: it asks the ledger."""
    bad = [f"zonefs/{name.replace('.', '/')}.py:{line}: {what}"
           for name, tree in MODULES.items() if wing(name) != "pending"
           for line, what in _pending_writes(tree)]
    assert not bad, "pending state changed outside its owner:\n" + "\n".join(bad)


def test_the_pending_check_sees_a_reach() -> None:
    """The check above finds what it is meant to (so that it cannot pass by finding nothing)."""
    tree = ast.parse("df.row.size = 3\nself.ledger.rows.pop(p)\nh.dirty.writers += 1\n"
                     "x.row.meta.append(1)\nself.kind = 1\n")
    assert sorted(line for line, _ in _pending_writes(tree)) == [1, 2, 3, 4]
