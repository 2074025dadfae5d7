"""InodeTable: lookup counts, forget, deferred removal, subtree renames; check() after each step."""

from __future__ import annotations

import pytest

from zonefs.common.errors import InvalidArgument, NotFound
from zonefs.mount.inodes import ROOT_INODE, InodeTable


@pytest.fixture
def table() -> InodeTable:
    t = InodeTable()
    t.check()
    return t


def test_root_inode_matches_pyfuse3() -> None:
    pyfuse3 = pytest.importorskip("pyfuse3")
    assert pyfuse3.ROOT_INODE == ROOT_INODE


def test_root_always_exists_and_is_never_forgotten(table: InodeTable) -> None:
    assert table.ino_of("") == ROOT_INODE
    assert table.path_of(ROOT_INODE) == ""
    assert table.lookup("") == ROOT_INODE
    table.forget(ROOT_INODE, 5)  # more than it has: clamps, never drops
    table.check()
    assert table.is_live(ROOT_INODE)
    assert table.lookup_count(ROOT_INODE) == 0
    assert len(table) == 1
    with pytest.raises(InvalidArgument):
        table.remove("")
    with pytest.raises(InvalidArgument):
        table.rename("", "x")


def test_lookup_counts_and_forget_to_zero(table: InodeTable) -> None:
    a = table.lookup("a")
    assert a != ROOT_INODE
    assert table.lookup("a") == a
    assert table.lookup("a") == a
    table.check()
    assert table.lookup_count(a) == 3
    assert table.ino_of("a") == a  # no count change
    assert table.lookup_count(a) == 3

    table.forget(a, 2)
    table.check()
    assert table.lookup_count(a) == 1
    assert table.path_of(a) == "a"

    table.forget(a, 1)
    table.check()
    assert not table.is_live(a)
    assert table.ino_of("a") is None
    assert table.lookup_count(a) == 0
    assert len(table) == 1
    with pytest.raises(NotFound):
        table.path_of(a)
    # Numbers are never reused, even once the old inode is gone.
    again = table.lookup("a")
    table.check()
    assert again > a


def test_forget_never_raises(table: InodeTable) -> None:
    a = table.lookup("a")
    table.forget(12345, 1)  # unknown inode
    table.forget(a, 0)
    table.forget(a, -3)  # nonsense counts never make a count grow or go negative
    table.check()
    assert table.lookup_count(a) == 1
    table.forget(a, 10)
    table.check()
    assert len(table) == 1
    table.forget(a, 1)  # already gone
    table.check()


def test_numbers_are_distinct_and_increasing(table: InodeTable) -> None:
    inos = [table.lookup(f"d/f{i}") for i in range(100)]
    table.check()
    assert inos == sorted(inos)
    assert len(set(inos)) == 100
    assert len(table) == 101


def test_remove_defers_until_forget(table: InodeTable) -> None:
    f = table.lookup("d/f")
    table.lookup("d/f")
    table.remove("d/f")
    table.check()
    # Detached: no path, but the kernel's references are still counted.
    assert not table.is_live(f)
    assert table.ino_of("d/f") is None
    with pytest.raises(NotFound):
        table.path_of(f)
    assert table.lookup_count(f) == 2
    assert len(table) == 2

    # A new file at the same path is a new inode; the old one is untouched by it.
    g = table.lookup("d/f")
    table.check()
    assert g != f
    assert table.path_of(g) == "d/f"

    table.forget(f, 2)
    table.check()
    assert len(table) == 2  # root and g
    assert table.path_of(g) == "d/f"  # forgetting the old inode leaves the new mapping alone
    table.forget(g, 1)
    table.check()
    assert len(table) == 1


def test_remove_unknown_path_is_a_no_op(table: InodeTable) -> None:
    table.lookup("a")
    table.remove("nothing/here")
    table.check()
    assert table.ino_of("a") is not None


def test_remove_directory_detaches_stale_children(table: InodeTable) -> None:
    d = table.lookup("d")
    x = table.lookup("d/x")
    other = table.lookup("dx")  # shares the prefix "d" but is not below "d/"
    table.remove("d")
    table.check()
    assert not table.is_live(d)
    assert not table.is_live(x)
    assert table.path_of(other) == "dx"
    assert table.lookup("d/x") != x


def test_rename_file(table: InodeTable) -> None:
    f = table.lookup("a/f")
    table.rename("a/f", "b/g")
    table.check()
    assert table.path_of(f) == "b/g"
    assert table.ino_of("a/f") is None
    assert table.ino_of("b/g") == f
    assert table.lookup_count(f) == 1


def test_rename_subtree(table: InodeTable) -> None:
    d = table.lookup("src")
    sub = table.lookup("src/sub")
    deep = table.lookup("src/sub/deep.txt")
    f = table.lookup("src/f")
    sibling = table.lookup("src2/f")  # not below "src/"
    table.rename("src", "dst/moved")
    table.check()
    assert table.path_of(d) == "dst/moved"
    assert table.path_of(sub) == "dst/moved/sub"
    assert table.path_of(deep) == "dst/moved/sub/deep.txt"
    assert table.path_of(f) == "dst/moved/f"
    assert table.path_of(sibling) == "src2/f"
    assert table.ino_of("src") is None
    assert table.ino_of("src/sub/deep.txt") is None
    # Counts move with the inodes.
    assert table.lookup_count(deep) == 1


def test_rename_moves_children_even_without_the_directory_inode(table: InodeTable) -> None:
    # The kernel knows "a/b/c" but not "a" itself (e.g. "a" was forgotten already).
    c = table.lookup("a/b/c")
    table.rename("a", "z")
    table.check()
    assert table.path_of(c) == "z/b/c"


def test_rename_over_existing_entry(table: InodeTable) -> None:
    src = table.lookup("new.tmp")
    dst = table.lookup("doc.txt")
    table.lookup("doc.txt")
    table.rename("new.tmp", "doc.txt")  # the editor's save pattern
    table.check()
    assert table.path_of(src) == "doc.txt"
    assert table.ino_of("new.tmp") is None
    # The replaced inode is detached but waits for forget.
    assert not table.is_live(dst)
    assert table.lookup_count(dst) == 2
    with pytest.raises(NotFound):
        table.path_of(dst)
    table.forget(dst, 2)
    table.check()
    assert table.path_of(src) == "doc.txt"
    assert len(table) == 2


def test_rename_directory_over_directory_detaches_its_subtree(table: InodeTable) -> None:
    old_dir = table.lookup("old")
    old_child = table.lookup("old/keep")
    new_dir = table.lookup("new")
    new_child = table.lookup("new/stale")
    table.rename("old", "new")
    table.check()
    assert table.path_of(old_dir) == "new"
    assert table.path_of(old_child) == "new/keep"
    assert not table.is_live(new_dir)
    assert not table.is_live(new_child)
    assert table.ino_of("new/stale") is None
    table.forget(new_child, 1)
    table.forget(new_dir, 1)
    table.check()
    assert len(table) == 3


def test_rename_of_unknown_path_only_detaches_target(table: InodeTable) -> None:
    t = table.lookup("target")
    table.rename("ghost", "target")
    table.check()
    assert not table.is_live(t)
    assert table.ino_of("target") is None


def test_rename_same_path_and_nested_renames(table: InodeTable) -> None:
    a = table.lookup("a")
    table.rename("a", "a")
    table.check()
    assert table.path_of(a) == "a"
    with pytest.raises(InvalidArgument):
        table.rename("a", "a/b")
    with pytest.raises(InvalidArgument):
        table.rename("a/b", "a")
    table.check()
    assert table.path_of(a) == "a"


def test_removed_inode_forgotten_after_rename_does_not_touch_new_owner(
    table: InodeTable,
) -> None:
    old = table.lookup("x")
    table.remove("x")
    table.lookup("y")
    table.rename("y", "x")
    table.check()
    table.forget(old, 1)
    table.check()
    assert table.ino_of("x") is not None


def test_check_detects_corruption(table: InodeTable) -> None:
    a = table.lookup("a")
    table._path[a] = "b"  # a deliberately broken table
    with pytest.raises(AssertionError):
        table.check()


def test_many_entries() -> None:
    table = InodeTable()
    n = 100_000
    inos = [table.lookup(f"dir{i % 100}/file{i}") for i in range(n)]
    assert len(table) == n + 1
    table.rename("dir7", "moved")  # one O(n) scan
    assert table.path_of(inos[7]) == "moved/file7"
    for i in range(0, n, 2):
        table.remove(f"dir{i % 100}/file{i}")
    for ino in inos:
        table.forget(ino, 1)
    table.check()
    assert len(table) == 1
