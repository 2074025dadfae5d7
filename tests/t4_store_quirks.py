"""Real mounts (t4) on stores with quirks (SeaweedFS): `mv` of a tree keeps its empty
directories and their attributes, and a name the store would rewrite is refused with EINVAL.
Expectations follow the store probe's answers (`zonefs status`), so these pass on moto, the
local zone and any endpoint named by ZONEFS_TEST_S3_ENDPOINT."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from mounts import Mount, needs_fuse, run

pytestmark = needs_fuse


@pytest.mark.unversioned_on_moto
def test_mv_of_a_tree_keeps_its_empty_directories_and_their_attributes(mount: Mount) -> None:
    root = mount.path
    (root / "tree" / "empty").mkdir(parents=True)
    (root / "tree" / "sub" / "deeper" / "deepest").mkdir(parents=True)
    (root / "tree" / "sub" / "f.txt").write_bytes(b"f\n")
    os.chmod(root / "tree" / "empty", 0o700)
    os.chmod(root / "tree" / "sub" / "deeper", 0o750)
    os.utime(root / "tree" / "empty", ns=(1_600_000_000_000_000_000,) * 2)
    mount.sync()
    dirs = ["", "empty", "sub", "sub/deeper", "sub/deeper/deepest"]
    before = {d: os.stat(root / "tree" / d) for d in dirs}

    run("mv", root / "tree", root / "moved")
    _gone(root / "tree")
    for d in dirs:
        now = os.stat(root / "moved" / d)
        assert stat.S_ISDIR(now.st_mode), d
        old = before[d]
        assert (now.st_mode, now.st_uid, now.st_gid) == (old.st_mode, old.st_uid,
                                                         old.st_gid), d
    assert os.stat(root / "moved" / "empty").st_mtime_ns == 1_600_000_000_000_000_000
    assert os.listdir(root / "moved" / "empty") == []
    assert os.listdir(root / "moved" / "sub" / "deeper") == ["deepest"]
    assert (root / "moved" / "sub" / "f.txt").read_bytes() == b"f\n"

    mount.sync()
    assert mount.store.keys() == [
        "moved/", "moved/empty/", "moved/sub/", "moved/sub/deeper/",
        "moved/sub/deeper/deepest/", "moved/sub/f.txt"]
    caps = mount.status()["capabilities"]
    if caps["dir_markers"] == "kept":  # else the store keeps no headers on a marker
        marker = mount.store.must_get("moved/empty/")
        assert marker.metadata["mode"] == str(stat.S_IFDIR | 0o700)
        assert marker.metadata["mtime"] == "1600000000.000000000"
    # After a remount (no cache of the listing) the tree and its attributes are the same.
    mount.remount()
    for d in dirs:
        assert os.stat(root / "moved" / d).st_mode == before[d].st_mode, d


def _gone(path: Path) -> None:
    """Nothing is left at `path` but, at most, empty directories: a versioned bucket on moto
    or SeaweedFS still lists a prefix whose keys all have delete markers (AWS does not; see
    the `mount` fixture's `unversioned_on_moto`, which the external endpoint does not get)."""
    if path.exists():
        assert [p for p in path.rglob("*") if not p.is_dir()] == []


# Where the probe found backslashes rewritten (SeaweedFS), such a name is refused with a
# warning; elsewhere it is kept and nothing is logged.
@pytest.mark.expect_log(r"refused: the store rewrites a backslash in a key")
def test_a_name_with_a_backslash_follows_the_probe(mount: Mount) -> None:
    root = mount.path
    caps = mount.status()["capabilities"]
    if caps["backslash_keys"] == "kept":
        (root / "x\\y").write_bytes(b"a file\n")
        mount.sync()
        assert mount.store.must_get("x\\y").body == b"a file\n"
        assert os.listdir(root) == ["x\\y"] and (root / "x\\y").is_file()
    else:
        _names_with_a_backslash_are_refused(mount)


@pytest.mark.mount_options(backslash_keys="rewritten")
@pytest.mark.expect_log("refused: the store rewrites a backslash in a key")
def test_names_with_a_backslash_are_refused_where_the_store_rewrites_them(mount: Mount) -> None:
    caps = mount.status()["capabilities"]
    assert caps["backslash_keys"] == "rewritten" and "backslash_keys" in caps["overridden"]
    _names_with_a_backslash_are_refused(mount)


def _names_with_a_backslash_are_refused(mount: Mount) -> None:
    root = mount.path
    (root / "ok").write_bytes(b"ok\n")
    for attempt in (
        lambda: (root / "x\\y").write_bytes(b"refused\n"),
        lambda: (root / "d\\e").mkdir(),
        lambda: os.symlink("target", root / "l\\k"),
        lambda: os.rename(root / "ok", root / "o\\k"),
    ):
        with pytest.raises(OSError) as refused:
            attempt()
        assert refused.value.errno == errno.EINVAL
    mount.sync()
    assert os.listdir(root) == ["ok"]
    assert mount.store.keys() == ["ok"]
    assert mount.daemon_log().count("the store rewrites a backslash in a key") == 4
