"""Real mounts (t4): POSIX behaviour through the kernel, and the objects it leaves in the zone.

Every test runs twice through the `mount` fixture: against an S3 bucket on the test endpoint
and against an embedded local zone. Each one does what a user would do in a shell (cp, mv, ls,
tar, git, editors' save patterns …), checks what the user sees, and then, after `zonefs sync`,
checks the objects any other S3 tool would see: bytes, and the s3fs-compatible headers of
DESIGN.md §3 (`mode` decimal with type bits, `uid`, `gid`, `mtime` as `<sec>.<9 digits>`,
`zonefs-sha256` of the body).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import random
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    QUIRK_EMPTY_PARENT_REMOVED,
    QUIRK_LONG_NAMES,
    markers_keep_metadata,
    seaweedfs_quirk,
)
from mounts import (
    METADATA_TTL,
    LocalStore,
    Mount,
    S3Store,
    Store,
    StoredObject,
    fuse_unavailable_reason,
    is_mounted,
    needs_fuse,
    processes_mentioning,
    run,
    sh,
    subprocess_env,
    wait_for,
    zonefs_cli,
)

from zonefs.common.config import ZoneConfig

pytestmark = needs_fuse

MiB = 1 << 20
DIR_CONTENT_TYPE = "application/x-directory"
MTIME_RE = re.compile(r"^\d+\.\d{9}$")
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_file_object(obj: StoredObject, body: bytes, *, mode: int = 0o100644,
                      uid: int | None = None, gid: int | None = None) -> None:
    """An object written by zonefs: the bytes, and the headers DESIGN.md §3 promises."""
    assert obj.body == body, f"{obj.key}: body differs ({len(obj.body)} vs {len(body)} bytes)"
    md = obj.metadata
    assert md.get("mode") == str(mode), f"{obj.key}: mode header {md.get('mode')!r}"
    assert md.get("uid") == str(os.getuid() if uid is None else uid), md
    assert md.get("gid") == str(os.getgid() if gid is None else gid), md
    assert MTIME_RE.match(md.get("mtime", "")), f"{obj.key}: mtime header {md.get('mtime')!r}"
    assert md.get("zonefs-sha256") == sha256(body), f"{obj.key}: zonefs-sha256 header"


def check_matches_stat(obj: StoredObject, path: Path) -> None:
    """The headers say what `stat` through the mount says (mode, owner, mtime to the ns)."""
    s = os.lstat(path)
    md = obj.metadata
    assert (md.get("mode"), md.get("uid"), md.get("gid")) == (
        str(s.st_mode), str(s.st_uid), str(s.st_gid)), (obj.key, md)
    assert header_mtime_ns(obj) == s.st_mtime_ns, (obj.key, md.get("mtime"), s.st_mtime_ns)


def header_mtime_ns(obj: StoredObject) -> int:
    sec, _, nsec = obj.metadata["mtime"].partition(".")
    return int(sec) * 1_000_000_000 + int(nsec)


def errno_of(fn: object, *args: object) -> int:
    """The errno `fn(*args)` fails with (the test fails if it succeeds)."""
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} succeeded")


def ls_l(path: Path) -> dict[str, str]:
    """`ls -l` of a directory: name → the line's mode column (for names without spaces)."""
    out = run("ls", "-l", "--time-style=+%s", path).stdout.decode()
    entries = {}
    for line in out.splitlines()[1:]:  # the first line is "total N"
        fields = line.split()
        entries[fields[-1]] = fields[0]
    return entries


# -- what other tools wrote --------------------------------------------------------------------


def test_foreign_objects_get_mount_defaults_and_show_up_after_the_ttl(mount: Mount) -> None:
    # Objects another S3 tool wrote, without any zonefs or s3fs metadata.
    mount.store.put("foreign.txt", b"from another tool\n")
    mount.store.put("deep/dir/file.bin", bytes(range(256)))
    mount.store.put("gone.txt", b"removed soon")
    obj = mount.store.must_get("foreign.txt")

    s = os.stat(mount.path / "foreign.txt")
    assert stat.S_ISREG(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o644
    assert (s.st_uid, s.st_gid) == (os.getuid(), os.getgid())
    assert s.st_size == len(b"from another tool\n")
    # LastModified is the mtime (S3 dates have whole seconds in some responses: allow one).
    assert abs(s.st_mtime - obj.last_modified) <= 1.0
    listing = ls_l(mount.path)
    assert listing["foreign.txt"] == "-rw-r--r--"
    assert listing["deep"].startswith("d")  # a prefix without a marker is a directory
    assert os.listdir(mount.path / "deep" / "dir") == ["file.bin"]
    assert run("cat", mount.path / "foreign.txt").stdout == b"from another tool\n"
    assert (mount.path / "deep/dir/file.bin").read_bytes() == bytes(range(256))

    # Added and changed behind zonefs' back, after it listed the directory: visible once the
    # metadata TTL has passed.
    mount.store.put("later.txt", b"added later\n")
    mount.store.put("foreign.txt", b"changed by another tool\n")
    assert (mount.path / "gone.txt").read_bytes() == b"removed soon"
    mount.store.delete("gone.txt")
    time.sleep(METADATA_TTL + 0.5)
    assert sorted(os.listdir(mount.path)) == ["deep", "foreign.txt", "later.txt"]
    assert (mount.path / "later.txt").read_bytes() == b"added later\n"
    assert (mount.path / "foreign.txt").read_bytes() == b"changed by another tool\n"
    assert errno_of(os.stat, mount.path / "gone.txt") == errno.ENOENT


def test_headers_written_by_other_tools_are_read(mount: Mount) -> None:
    # s3fs writes decimal modes; some tools write leading-0 octal; rclone writes a float mtime.
    mount.store.put("s3fs.txt", b"s", {"mode": "33152", "uid": "1001", "gid": "1002",
                                       "mtime": "1500000000"})
    mount.store.put("octal.txt", b"o", {"mode": "0100755", "mtime": "1500000000.5"})
    mount.store.put("rclone.txt", b"r", {"mtime": "1500000000.123456789123"})
    mount.store.put("sym", b"s3fs.txt", {"mode": str(stat.S_IFLNK | 0o777)})
    s = os.stat(mount.path / "s3fs.txt")
    assert (s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns) == (
        0o100600, 1001, 1002, 1_500_000_000_000_000_000)
    o = os.stat(mount.path / "octal.txt")
    assert (o.st_mode, o.st_mtime_ns) == (0o100755, 1_500_000_000_500_000_000)
    assert os.stat(mount.path / "rclone.txt").st_mtime_ns == 1_500_000_000_123_456_789
    assert os.readlink(mount.path / "sym") == "s3fs.txt"
    assert (mount.path / "sym").read_bytes() == b"s"


def test_ls_l_of_a_directory_larger_than_one_listing_page(mount: Mount) -> None:
    # S3 lists 1,000 keys per page: 1,030 entries need a second page.
    names = [f"f{i:04d}.txt" for i in range(1030)]
    mount.store.put_many({f"many/{name}": name.encode() for name in names})
    mount.store.put("many/zz-sub/inner.txt", b"inner")
    started = time.monotonic()
    listing = ls_l(mount.path / "many")
    print(f"ls -l of 1,031 entries (cold): {time.monotonic() - started:.2f} s")
    assert sorted(listing) == names + ["zz-sub"]
    assert all(listing[n] == "-rw-r--r--" for n in names)
    assert listing["zz-sub"].startswith("d")
    assert (mount.path / "many" / "f1029.txt").read_bytes() == b"f1029.txt"
    mount.store.purge()  # one request per 1,000 versions instead of one per object


@pytest.mark.mount_options(uid="4321", gid="8765", umask="027")
def test_mount_options_set_defaults_for_foreign_objects(mount: Mount) -> None:
    mount.store.put("plain.txt", b"x")
    mount.store.put("dir/inner.txt", b"y")
    f = os.stat(mount.path / "plain.txt")
    d = os.stat(mount.path / "dir")
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_gid) == (0o640, 4321, 8765)
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o750, 4321, 8765)
    assert stat.S_ISDIR(d.st_mode)


# -- copying, moving, removing -----------------------------------------------------------------


# Where the probe found backslashes rewritten (SeaweedFS), such a name is refused with a
# warning; elsewhere it is kept and nothing is logged.
@pytest.mark.expect_log(r"refused: the store rewrites a backslash in a key")
def test_cat_and_cp_in_out_within(mount: Mount, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)

    run("cp", src, mount.path / "in.bin")
    assert run("cat", mount.path / "in.bin").stdout == data
    run("cp", mount.path / "in.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    (mount.path / "sub").mkdir()
    run("cp", mount.path / "in.bin", mount.path / "sub" / "copy.bin")
    assert (mount.path / "sub" / "copy.bin").read_bytes() == data
    assert os.stat(mount.path / "sub" / "copy.bin").st_size == len(data)

    # Names with spaces, punctuation and non-ASCII characters are keys spelled the same way.
    odd = "name with spaces & ünïcödé €.txt"
    run("cp", src, mount.path / "sub" / odd)
    assert odd in os.listdir(mount.path / "sub")
    punct = ["a+b=c?d#e", "100%25 sure", "back\\slash", "tab\there", "~!()*'"]
    if mount.kind == "local":
        # moto 5.2.5 answers 404 to a PUT of a key holding a newline (AWS stores it).
        punct.append("new\nline")
    if mount.status()["capabilities"]["backslash_keys"] != "kept":
        # The store would keep `back\slash` as `back/slash`: the name is refused up front.
        punct.remove("back\\slash")
        with pytest.raises(OSError) as refused:
            (mount.path / "sub" / "back\\slash").write_bytes(b"x")
        assert refused.value.errno == errno.EINVAL
    for name in punct:
        (mount.path / "sub" / name).write_bytes(name.encode())
    assert set(punct) <= set(os.listdir(mount.path / "sub"))
    # cp -p keeps the mode and the mtime.
    src.chmod(0o640)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_987_654_321))
    run("cp", "-p", src, mount.path / "kept.bin")
    s = os.stat(mount.path / "kept.bin")
    assert (stat.S_IMODE(s.st_mode), s.st_mtime_ns) == (0o640, 1_600_000_000_987_654_321)

    mount.sync()
    check_file_object(mount.store.must_get("in.bin"), data)
    check_matches_stat(mount.store.must_get("in.bin"), mount.path / "in.bin")
    check_file_object(mount.store.must_get("sub/copy.bin"), data)
    check_file_object(mount.store.must_get(f"sub/{odd}"), data)
    kept = mount.store.must_get("kept.bin")
    check_file_object(kept, data, mode=0o100640)
    assert kept.metadata["mtime"] == "1600000000.987654321"
    for name in punct:
        assert mount.store.must_get(f"sub/{name}").body == name.encode(), name
    assert mount.store.keys() == sorted(
        ["in.bin", "kept.bin", "sub/", "sub/copy.bin", f"sub/{odd}"]
        + [f"sub/{name}" for name in punct])


@pytest.mark.unversioned_on_moto
def test_mv_file_and_directory_tree(mount: Mount) -> None:
    root = mount.path
    (root / "a.txt").write_bytes(b"file a\n")
    (root / "tree" / "sub").mkdir(parents=True)
    (root / "tree" / "empty").mkdir()
    (root / "tree" / "x.txt").write_bytes(b"x\n")
    (root / "tree" / "sub" / "y.bin").write_bytes(b"y" * 70_000)
    mount.sync()
    (root / "tree" / "sub" / "pending.txt").write_bytes(b"written just before the move\n")

    run("mv", root / "a.txt", root / "b.txt")
    run("mv", root / "tree", root / "moved")
    assert not (root / "a.txt").exists() and not (root / "tree").exists()
    assert (root / "b.txt").read_bytes() == b"file a\n"
    assert (root / "moved" / "sub" / "y.bin").read_bytes() == b"y" * 70_000
    assert (root / "moved" / "empty").is_dir()
    # A file moved into a directory, and a file moved before its upload happened.
    run("mv", root / "b.txt", root / "moved")
    (root / "fresh.txt").write_bytes(b"not uploaded yet\n")
    run("mv", root / "fresh.txt", root / "renamed.txt")
    assert sorted(os.listdir(root)) == ["moved", "renamed.txt"]

    mount.sync()
    assert mount.store.keys() == [
        "moved/", "moved/b.txt", "moved/empty/", "moved/sub/", "moved/sub/pending.txt",
        "moved/sub/y.bin", "moved/x.txt", "renamed.txt",
    ]
    check_file_object(mount.store.must_get("moved/sub/pending.txt"),
                      b"written just before the move\n")
    check_file_object(mount.store.must_get("moved/b.txt"), b"file a\n")
    check_file_object(mount.store.must_get("moved/x.txt"), b"x\n")
    check_file_object(mount.store.must_get("moved/sub/y.bin"), b"y" * 70_000)
    check_file_object(mount.store.must_get("renamed.txt"), b"not uploaded yet\n")


@pytest.mark.unversioned_on_moto
def test_mv_onto_existing_names(mount: Mount) -> None:
    root = mount.path
    for name in ("src", "empty", "full"):
        (root / name).mkdir()
    (root / "src" / "s.txt").write_bytes(b"s")
    (root / "full" / "f.txt").write_bytes(b"f")
    (root / "old.txt").write_bytes(b"old")
    (root / "new.txt").write_bytes(b"new")
    mount.sync()

    os.rename(root / "new.txt", root / "old.txt")  # replaces the file
    assert (root / "old.txt").read_bytes() == b"new"
    os.rename(root / "src", root / "empty")  # replaces the empty directory
    assert os.listdir(root / "empty") == ["s.txt"]
    assert errno_of(os.rename, root / "empty", root / "full") in (errno.ENOTEMPTY, errno.EEXIST)
    assert errno_of(os.rename, root / "old.txt", root / "full") == errno.EISDIR
    assert errno_of(os.rename, root / "full", root / "old.txt") == errno.ENOTDIR
    assert sorted(os.listdir(root)) == ["empty", "full", "old.txt"]
    mount.sync()
    assert mount.store.keys() == ["empty/", "empty/s.txt", "full/", "full/f.txt", "old.txt"]
    check_file_object(mount.store.must_get("old.txt"), b"new")


@pytest.mark.unversioned_on_moto
@pytest.mark.mount_options(writeback_delay="60")
def test_mv_directory_while_an_attribute_change_inside_is_pending(mount: Mount) -> None:
    root = mount.path
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"keep me\n")
    mount.sync()
    run("chmod", "600", root / "d" / "f.txt")  # queued for upload, a minute from now
    run("mv", root / "d", root / "e")
    assert (root / "e" / "f.txt").read_bytes() == b"keep me\n"
    mount.sync(timeout=8)
    assert mount.store.keys() == ["e/", "e/f.txt"]
    check_file_object(mount.store.must_get("e/f.txt"), b"keep me\n", mode=0o100600)


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_rename_noreplace_and_exchange(mount: Mount) -> None:
    root = mount.path
    (root / "a").write_bytes(b"a")
    (root / "b").write_bytes(b"b")
    assert errno_of(renameat2, root / "a", root / "b", RENAME_NOREPLACE) == errno.EEXIST
    assert errno_of(renameat2, root / "a", root / "b", RENAME_EXCHANGE) == errno.EINVAL
    renameat2(root / "a", root / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(root)) == ["b", "c"]
    assert (root / "b").read_bytes() == b"b" and (root / "c").read_bytes() == b"a"
    mount.sync()
    assert mount.store.keys() == ["b", "c"]


@pytest.mark.unversioned_on_moto
def test_rm_and_rm_r(mount: Mount) -> None:
    root = mount.path
    (root / "keep.txt").write_bytes(b"keep")
    (root / "f.txt").write_bytes(b"gone soon")
    (root / "d" / "b").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"a")
    (root / "d" / "b" / "c.txt").write_bytes(b"c")
    (root / "d" / "empty").mkdir()
    mount.sync()
    assert "d/b/c.txt" in mount.store.keys("d/")
    # Written and removed before its upload: it must never reach the bucket.
    (root / "d" / "b" / "short-lived.txt").write_bytes(b"gone before upload")
    (root / "never.txt").write_bytes(b"gone before upload")
    run("rm", root / "never.txt")

    run("rm", root / "f.txt")
    run("rm", "-r", root / "d")
    assert os.listdir(root) == ["keep.txt"]
    assert errno_of(os.stat, root / "d" / "a.txt") == errno.ENOENT
    mount.sync()
    assert mount.store.keys() == ["keep.txt"]


def test_open_files_survive_unlink_and_rename(mount: Mount) -> None:
    root = mount.path
    (root / "r.txt").write_bytes(b"still readable after rm\n")
    mount.sync()
    # A reader keeps its file after rm.
    with open(root / "r.txt", "rb") as reader:
        os.unlink(root / "r.txt")
        assert reader.read() == b"still readable after rm\n"
    # A writer whose file was removed must not bring it back when it closes.
    with open(root / "w.txt", "wb") as writer:
        writer.write(b"first part\n")
        writer.flush()
        os.unlink(root / "w.txt")
        writer.write(b"second part\n")
    # A writer whose file was renamed (log rotation) keeps writing under the new name.
    with open(root / "app.log", "wb") as log:
        log.write(b"line 1\n")
        log.flush()
        os.rename(root / "app.log", root / "app.log.1")
        log.write(b"line 2\n")
    assert sorted(os.listdir(root)) == ["app.log.1"]
    assert (root / "app.log.1").read_bytes() == b"line 1\nline 2\n"
    mount.sync()
    assert mount.store.keys() == ["app.log.1"]
    check_file_object(mount.store.must_get("app.log.1"), b"line 1\nline 2\n")


def uncached_pread(fd: int, size: int, offset: int = 0) -> bytes:
    """pread after dropping the kernel's cached pages of the file: the bytes come from zonefs."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return os.pread(fd, size, offset)


def check_unlinked_writer(fd: int, before: bytes, mode: int) -> None:
    """What a descriptor open for writing on a file whose name is gone must still do: fstat,
    pwrite/pread of its own bytes, ftruncate (shrink and grow), fchmod, futimens, fsync."""
    s = os.fstat(fd)
    assert (s.st_size, s.st_nlink, stat.S_IMODE(s.st_mode)) == (len(before), 0, mode)
    assert uncached_pread(fd, len(before) + 10) == before
    assert os.pwrite(fd, b"patch", 5) == 5
    data = before[:5] + b"patch" + before[10:]
    assert uncached_pread(fd, 1 << 20) == data
    assert os.pwrite(fd, b"tail", len(data)) == 4
    data += b"tail"
    assert os.fstat(fd).st_size == len(data)
    assert uncached_pread(fd, 1 << 20) == data
    os.ftruncate(fd, 8)
    assert os.fstat(fd).st_size == 8
    assert uncached_pread(fd, 1 << 20) == data[:8]
    os.ftruncate(fd, 3000)
    assert os.fstat(fd).st_size == 3000
    assert uncached_pread(fd, 1 << 20) == data[:8] + bytes(2992)
    os.fchmod(fd, 0o600)
    assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    when = 1_600_000_000_123_456_789
    os.utime(fd, ns=(when, when))
    assert os.fstat(fd).st_mtime_ns == when
    os.fsync(fd)  # only the local file: there is nothing to upload
    assert uncached_pread(fd, 10) == data[:8] + bytes(2)


def test_a_writer_keeps_working_after_unlink(mount: Mount) -> None:
    root = mount.path
    (root / "keep.txt").write_bytes(b"kept\n")
    # Never closed: nothing of it was journaled or uploaded.
    fresh = os.urandom(100_000)
    fd = os.open(root / "fresh.bin", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        assert os.write(fd, fresh) == len(fresh)
        os.unlink(root / "fresh.bin")
        check_unlinked_writer(fd, fresh, 0o640)
    finally:
        os.close(fd)
    # Uploaded, then opened for write, written, and removed: a delete, and nothing after it.
    (root / "old.bin").write_bytes(b"uploaded once\n")
    mount.sync()
    fd = os.open(root / "old.bin", os.O_RDWR)
    try:
        assert os.pwrite(fd, b"UPLOADED", 0) == 8
        os.unlink(root / "old.bin")
        assert not (root / "old.bin").exists()
        check_unlinked_writer(fd, b"UPLOADED once\n", 0o644)
    finally:
        os.close(fd)
    assert sorted(os.listdir(root)) == ["keep.txt"]
    mount.sync()
    assert mount.store.keys() == ["keep.txt"]
    check_file_object(mount.store.must_get("keep.txt"), b"kept\n")


def test_a_writer_keeps_working_after_a_rename_over_its_file(mount: Mount) -> None:
    root = mount.path
    (root / "target.txt").write_bytes(b"old contents\n")
    mount.sync()
    fd = os.open(root / "target.txt", os.O_RDWR)
    try:
        assert os.pwrite(fd, b"OLD", 0) == 3
        (root / "new.txt").write_bytes(b"the replacement\n")
        os.rename(root / "new.txt", root / "target.txt")
        check_unlinked_writer(fd, b"OLD contents\n", 0o644)
        # The name shows the file that replaced it, untouched by the descriptor.
        assert (root / "target.txt").read_bytes() == b"the replacement\n"
        s = os.stat(root / "target.txt")
        assert (s.st_size, s.st_nlink, stat.S_IMODE(s.st_mode)) == (16, 1, 0o644)
    finally:
        os.close(fd)
    # A pending file (closed, not yet uploaded) renamed over while open for write.
    (root / "log.txt").write_bytes(b"pending bytes\n")
    fd = os.open(root / "log.txt", os.O_RDWR | os.O_APPEND)
    try:
        (root / "log.new").write_bytes(b"rotated\n")
        os.rename(root / "log.new", root / "log.txt")
        assert os.write(fd, b"more\n") == 5
        assert os.fstat(fd).st_size == 19
        assert uncached_pread(fd, 100) == b"pending bytes\nmore\n"
    finally:
        os.close(fd)
    assert sorted(os.listdir(root)) == ["log.txt", "target.txt"]
    assert (root / "log.txt").read_bytes() == b"rotated\n"
    mount.sync()
    assert mount.store.keys() == ["log.txt", "target.txt"]
    check_file_object(mount.store.must_get("target.txt"), b"the replacement\n")
    check_file_object(mount.store.must_get("log.txt"), b"rotated\n")


def test_a_reader_keeps_its_file_after_unlink(mount: Mount) -> None:
    root = mount.path
    small = os.urandom(50_000)
    (root / "small.bin").write_bytes(small)
    mount.sync()
    fd = os.open(root / "small.bin", os.O_RDONLY)
    try:
        os.unlink(root / "small.bin")
        mount.sync()  # the delete is applied: the bucket no longer has it
        assert mount.store.get("small.bin") is None
        s = os.fstat(fd)
        assert (s.st_size, s.st_nlink, stat.S_IMODE(s.st_mode)) == (len(small), 0, 0o644)
        assert uncached_pread(fd, 1 << 20) == small
        assert uncached_pread(fd, 100, 40_000) == small[40_000:40_100]
        os.fchmod(fd, 0o400)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o400
        assert errno_of(os.ftruncate, fd, 0) == errno.EINVAL  # the kernel: not open for writing
        assert os.fstat(fd).st_size == len(small)
    finally:
        os.close(fd)
    assert os.listdir(root) == []
    mount.sync()
    assert mount.store.keys() == []


def test_a_reader_of_a_large_object_keeps_reading_ranges_after_unlink(mount: Mount) -> None:
    # Written by another tool, so nothing of it is cached: reads fetch ranges from the store,
    # by the version that was opened (the bucket is versioned; the local zone always is).
    big = os.urandom(9 * MiB)
    mount.store.put("big.bin", big)
    time.sleep(METADATA_TTL + 0.2)
    fd = os.open(mount.path / "big.bin", os.O_RDONLY)
    try:
        os.unlink(mount.path / "big.bin")
        mount.sync()
        assert mount.store.get("big.bin") is None
        assert os.fstat(fd).st_size == len(big)
        # Nothing was read before the delete (a read at 0 would fetch ahead): these ranges
        # come from the version that was opened, now behind a delete marker.
        assert uncached_pread(fd, 4096, 8 * MiB + 100) == big[8 * MiB + 100:8 * MiB + 4196]
        assert uncached_pread(fd, 4096, 0) == big[:4096]
    finally:
        os.close(fd)


def test_rewrite_while_the_upload_runs_keeps_the_last_bytes(mount: Mount) -> None:
    first, second = os.urandom(20 * MiB), os.urandom(20 * MiB)
    f = mount.path / "busy.bin"
    f.write_bytes(first)
    time.sleep(0.4)  # past the write-back delay: the upload of `first` is under way
    f.write_bytes(second)
    assert f.read_bytes() == second
    mount.sync()
    obj = mount.store.must_get("busy.bin")
    assert obj.body == second, "the bucket holds the older bytes"
    assert obj.metadata.get("zonefs-sha256") == sha256(second)


def test_sqlite_database_inside_the_mount(mount: Mount) -> None:
    db_path = mount.path / "app.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        with db:
            db.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(500)])
        with db:
            db.execute("UPDATE t SET v = 'changed' WHERE id % 7 = 0")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM t WHERE v = 'changed'").fetchone() == (71,)
    assert os.listdir(mount.path) == ["app.db"]  # the rollback journal is gone
    mount.sync()
    assert mount.store.keys() == ["app.db"]
    copy = mount.path.parent / "copy.db"
    copy.write_bytes(mount.store.must_get("app.db").body)
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("SELECT count(*) FROM t").fetchone() == (500,)


@seaweedfs_quirk(QUIRK_EMPTY_PARENT_REMOVED)
def test_mkdir_p_and_rmdir(mount: Mount) -> None:
    root = mount.path
    run("mkdir", "-p", root / "a" / "b" / "c")
    assert (root / "a" / "b" / "c").is_dir()
    assert stat.S_IMODE(os.stat(root / "a" / "b").st_mode) == 0o755
    mount.sync()
    keeps = markers_keep_metadata(mount)
    for key in ("a/", "a/b/", "a/b/c/"):
        marker = mount.store.must_get(key)
        assert marker.body == b"", marker
        if keeps:
            assert marker.content_type == DIR_CONTENT_TYPE, marker
            assert marker.metadata.get("mode") == str(stat.S_IFDIR | 0o755)

    run("rmdir", root / "a" / "b" / "c")
    assert not (root / "a" / "b" / "c").exists()
    (root / "a" / "b" / "file").write_bytes(b"1")
    assert errno_of(os.rmdir, root / "a" / "b") == errno.ENOTEMPTY
    assert run("rmdir", root / "a" / "b", check=False).returncode != 0
    assert (root / "a" / "b" / "file").read_bytes() == b"1"
    mount.sync()
    assert mount.store.keys() == ["a/", "a/b/", "a/b/file"]


def test_touch_creates_and_sets_mtime(mount: Mount) -> None:
    root = mount.path
    run("touch", root / "new.txt")
    assert (root / "new.txt").read_bytes() == b""
    (root / "old.txt").write_bytes(b"old content\n")
    mount.sync()
    check_file_object(mount.store.must_get("new.txt"), b"")

    run("touch", "-d", "@1500000000.123456789", root / "old.txt")
    assert os.stat(root / "old.txt").st_mtime_ns == 1_500_000_000_123_456_789
    mount.sync()
    obj = mount.store.must_get("old.txt")
    assert obj.metadata["mtime"] == "1500000000.123456789"
    check_file_object(obj, b"old content\n")

    before = time.time_ns()
    run("touch", root / "old.txt")  # to now
    assert os.stat(root / "old.txt").st_mtime_ns >= before - 1_000_000_000
    mount.sync()
    assert header_mtime_ns(mount.store.must_get("old.txt")) >= before - 1_000_000_000


def test_chmod_and_chown(mount: Mount) -> None:
    root = mount.path
    (root / "f.txt").write_bytes(b"mode bits\n")
    (root / "d").mkdir()
    mount.sync()

    run("chmod", "600", root / "f.txt")
    run("chmod", "700", root / "d")
    assert stat.S_IMODE(os.stat(root / "f.txt").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o700
    mount.sync()
    check_file_object(mount.store.must_get("f.txt"), b"mode bits\n", mode=0o100600)
    if markers_keep_metadata(mount):
        assert mount.store.must_get("d/").metadata["mode"] == str(stat.S_IFDIR | 0o700)

    if os.geteuid() != 0:
        return  # chown to another owner needs root
    run("chown", "1234:5678", root / "f.txt")
    s = os.stat(root / "f.txt")
    assert (s.st_uid, s.st_gid) == (1234, 5678)
    mount.sync()
    check_file_object(mount.store.must_get("f.txt"), b"mode bits\n", mode=0o100600,
                      uid=1234, gid=5678)
    # Rewriting the contents (O_TRUNC, as `>` does) keeps the mode and the owner.
    sh("printf 'new contents\\n' > f.txt", cwd=root)
    s = os.stat(root / "f.txt")
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o600, 1234, 5678)
    mount.sync()
    check_file_object(mount.store.must_get("f.txt"), b"new contents\n", mode=0o100600,
                      uid=1234, gid=5678)


def test_chmod_of_a_file_not_yet_uploaded(mount: Mount) -> None:
    f = mount.path / "script.sh"
    f.write_bytes(b"#!/bin/sh\necho hi\n")
    run("chmod", "755", f)  # typically right after writing, before the upload
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o755
    assert run(f).stdout == b"hi\n"
    mount.sync()
    obj = mount.store.must_get("script.sh")
    check_file_object(obj, b"#!/bin/sh\necho hi\n", mode=0o100755)
    check_matches_stat(obj, f)


def test_truncate_shrink_and_grow(mount: Mount) -> None:
    f = mount.path / "t.bin"
    data = os.urandom(10_000)
    f.write_bytes(data)
    mount.sync()

    run("truncate", "-s", "100", f)
    assert os.stat(f).st_size == 100 and f.read_bytes() == data[:100]
    mount.sync()
    check_file_object(mount.store.must_get("t.bin"), data[:100])

    run("truncate", "-s", "5000", f)
    grown = data[:100] + bytes(4900)
    assert f.read_bytes() == grown
    mount.sync()
    check_file_object(mount.store.must_get("t.bin"), grown)


def test_symlink_and_readlink(mount: Mount) -> None:
    root = mount.path
    (root / "target.txt").write_bytes(b"pointed at\n")
    run("ln", "-s", "target.txt", root / "rel")
    run("ln", "-s", "/nowhere/absolute", root / "abs")
    assert run("readlink", root / "rel").stdout == b"target.txt\n"
    assert os.readlink(root / "abs") == "/nowhere/absolute"
    assert stat.S_ISLNK(os.lstat(root / "rel").st_mode)
    assert run("cat", root / "rel").stdout == b"pointed at\n"

    mount.sync()
    for key, target in (("rel", b"target.txt"), ("abs", b"/nowhere/absolute")):
        obj = mount.store.must_get(key)
        assert obj.body == target
        assert stat.S_ISLNK(int(obj.metadata["mode"])), obj.metadata


def test_append_with_shell_redirection(mount: Mount) -> None:
    sh("printf 'one\\n' > log.txt; printf 'two\\n' >> log.txt", cwd=mount.path)
    assert (mount.path / "log.txt").read_bytes() == b"one\ntwo\n"
    mount.sync()
    check_file_object(mount.store.must_get("log.txt"), b"one\ntwo\n")
    # Appending to a file that is already only in the bucket.
    sh("printf 'three\\n' >> log.txt", cwd=mount.path)
    assert (mount.path / "log.txt").read_bytes() == b"one\ntwo\nthree\n"
    mount.sync()
    check_file_object(mount.store.must_get("log.txt"), b"one\ntwo\nthree\n")


def test_in_place_random_writes(mount: Mount, tmp_path: Path) -> None:
    data = bytearray(os.urandom(MiB))
    # One file written through the mount, one written by another tool (zonefs must fetch it).
    (mount.path / "mine.bin").write_bytes(data)
    mount.store.put("theirs.bin", bytes(data))
    mount.sync()

    patch = os.urandom(5000)
    (tmp_path / "patch").write_bytes(patch)
    for name in ("mine.bin", "theirs.bin"):
        run("dd", f"if={tmp_path / 'patch'}", f"of={mount.path / name}", "bs=1000",
            "seek=3", "conv=notrunc", "status=none")
        with open(mount.path / name, "r+b") as f:
            f.seek(700_000)
            f.write(b"XYZ")
            f.seek(len(data) - 2)
            f.write(b"tail past the end")
            f.seek(len(data) + 100_000)
            f.write(b"after a hole")
    expected = bytes(data)
    expected = expected[:3000] + patch + expected[8000:]
    expected = expected[:700_000] + b"XYZ" + expected[700_003:]
    expected = expected[: len(data) - 2] + b"tail past the end"
    expected = expected + bytes(len(data) + 100_000 - len(expected)) + b"after a hole"

    for name in ("mine.bin", "theirs.bin"):
        assert (mount.path / name).read_bytes() == expected, name
    mount.sync()
    for name in ("mine.bin", "theirs.bin"):
        check_file_object(mount.store.must_get(name), expected)


def test_df_and_statvfs(mount: Mount) -> None:
    out = run("df", "-P", mount.path).stdout.decode().splitlines()
    assert len(out) == 2 and out[1].split()[-1] == str(mount.path), out
    sv = os.statvfs(mount.path)
    assert sv.f_bsize > 0 and sv.f_blocks > 0 and sv.f_bavail > 0
    assert sv.f_namemax == 255


# -- what applications do --------------------------------------------------------------------


def test_editor_save_patterns(mount: Mount) -> None:
    root = mount.path
    doc = root / "doc.txt"
    doc.write_bytes(b"version 1\n")
    mount.sync()

    # gedit, VS Code, most libraries: write a temp file, fsync it, rename it over the original.
    tmp = root / ".doc.txt.tmp-1234"
    with open(tmp, "wb") as f:
        f.write(b"version 2\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, doc)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # what careful editors and databases do after a rename
    finally:
        os.close(dir_fd)
    assert doc.read_bytes() == b"version 2\n"
    assert os.listdir(root) == ["doc.txt"]

    # vim's default: rename the original to a backup, write a new file, remove the backup.
    os.rename(doc, root / "doc.txt~")
    doc.write_bytes(b"version 3\n")
    os.unlink(root / "doc.txt~")
    assert doc.read_bytes() == b"version 3\n"

    mount.sync()
    assert mount.store.keys() == ["doc.txt"]
    check_file_object(mount.store.must_get("doc.txt"), b"version 3\n")


def make_source_tree(top: Path) -> dict[str, bytes]:
    """A small source tree: nested dirs, sizes from 0 to 200 kB, a script, a symlink, an empty
    dir. Returns relative path → bytes of the regular files."""
    rng = random.Random(4)
    files = {
        "README.md": b"# project\n",
        "empty.txt": b"",
        "src/main.c": b"int main(void) { return 0; }\n" * 50,
        "src/lib/util.h": b"#pragma once\n",
        "src/lib/data.bin": rng.randbytes(200_000),
        "docs/guide/intro.txt": b"intro\n" * 1000,
        "scripts/build.sh": b"#!/bin/sh\necho build\n",
    }
    for rel, body in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(body)
    (top / "scripts" / "build.sh").chmod(0o755)
    (top / "build").mkdir()
    (top / "src" / "current").symlink_to("lib")
    return files


def test_tar_extract_into_and_create_from_the_mount(mount: Mount, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    files = make_source_tree(src)
    with tarfile.open(tmp_path / "in.tar", "w") as tar:
        tar.add(src, arcname="proj")

    run("tar", "-C", mount.path, "-xf", tmp_path / "in.tar")
    run("diff", "-r", "--no-dereference", src, mount.path / "proj")
    assert stat.S_IMODE(os.stat(mount.path / "proj/scripts/build.sh").st_mode) == 0o755
    assert os.readlink(mount.path / "proj/src/current") == "lib"

    run("tar", "-C", mount.path, "-cf", tmp_path / "out.tar", "proj")
    (tmp_path / "back").mkdir()
    run("tar", "-C", tmp_path / "back", "-xf", tmp_path / "out.tar")
    run("diff", "-r", "--no-dereference", src, tmp_path / "back" / "proj")

    mount.sync()
    for rel, body in files.items():
        mode = 0o100755 if rel.endswith(".sh") else 0o100644
        obj = mount.store.must_get(f"proj/{rel}")
        assert obj.body == body and obj.metadata.get("mode") == str(mode), rel
        assert obj.metadata.get("zonefs-sha256") == sha256(body), rel
    assert mount.store.must_get("proj/build/").content_type == DIR_CONTENT_TYPE
    assert mount.store.must_get("proj/src/current").body == b"lib"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_init_add_commit_inside_the_mount(mount: Mount, tmp_path: Path) -> None:
    repo = mount.path / "repo"
    repo.mkdir()
    (repo / "hello.py").write_text("print('hello')\n")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "mod.py").write_text("X = 1\n" * 100)
    home = tmp_path / "home"
    home.mkdir()
    env_prefix = (f"HOME={home} GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@e "
                  "GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@e ")
    sh(env_prefix + "git init -q -b main . && git add . && git commit -q -m first", cwd=repo)
    (repo / "hello.py").write_text("print('hello, again')\n")
    sh(env_prefix + "git commit -q -am second", cwd=repo)

    log = sh(env_prefix + "git log --format=%s", cwd=repo).stdout
    assert log == b"second\nfirst\n"
    assert sh(env_prefix + "git status --porcelain", cwd=repo).stdout == b""
    sh(env_prefix + "git fsck --no-progress", cwd=repo)

    mount.sync()
    keys = mount.store.keys("repo/")
    assert "repo/.git/HEAD" in keys and "repo/hello.py" in keys
    assert not [k for k in keys if k.endswith(".lock")], keys
    assert mount.store.must_get("repo/hello.py").body == b"print('hello, again')\n"


# -- what is refused -------------------------------------------------------------------------


def test_hard_links_are_refused(mount: Mount) -> None:
    """One file is one object: a second name for it cannot be kept (the one POSIX behaviour
    zonefs does not give)."""
    root = mount.path
    (root / "f.txt").write_bytes(b"only one name\n")
    assert errno_of(os.link, root / "f.txt", root / "g.txt") == errno.EPERM
    assert run("ln", root / "f.txt", root / "g.txt", check=False).returncode != 0
    assert os.listdir(root) == ["f.txt"]
    mount.sync()
    assert mount.store.keys() == ["f.txt"]


@seaweedfs_quirk(QUIRK_LONG_NAMES, run=False)
def test_names_longer_than_the_store_takes_are_refused(mount: Mount) -> None:
    """255 bytes (NAME_MAX), or less where the store's probe found it takes less (a versioned
    SeaweedFS bucket: 246): a longer name is ENAMETOOLONG before anything is written."""
    root = mount.path
    limit = mount.status()["capabilities"]["max_name_bytes"]
    for length in (limit + 1, 300):
        assert errno_of(open, root / ("n" * length), "w") == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, root / ("d" * length)) == errno.ENAMETOOLONG
    # Counted in bytes: as many three-byte characters as fit, and not one more.
    euros = limit // 3
    (root / ("n" * limit)).write_bytes(b"ok")
    (root / ("€" * euros)).write_bytes(b"euro")
    assert errno_of(open, root / ("€" * (euros + 1)), "w") == errno.ENAMETOOLONG
    mount.sync()
    assert mount.store.keys() == sorted(["n" * limit, "€" * euros])


def test_names_that_are_not_utf8_are_refused_cleanly(mount: Mount) -> None:
    root = os.fsencode(mount.path)
    assert errno_of(os.stat, root + b"/bad\xffname") == errno.ENOENT
    assert errno_of(open, root + b"/bad\xffname", "wb") in (errno.EINVAL, errno.EILSEQ)
    assert errno_of(os.mkdir, root + b"/dir\xff") in (errno.EINVAL, errno.EILSEQ)
    assert os.listdir(mount.path) == []
    assert "failed unexpectedly" not in mount.daemon_log()


def test_dot_zonefs_is_reserved(mount: Mount) -> None:
    root = mount.path
    (root / "a.txt").write_bytes(b"a")
    (root / "d").mkdir()
    (root / "d" / ".zonefs").write_bytes(b"only the root's is reserved")
    assert ".zonefs" not in os.listdir(root)
    refused = (errno.EROFS, errno.EPERM, errno.EACCES, errno.EEXIST)
    assert errno_of(open, root / ".zonefs" / "x", "w") in refused
    assert errno_of(os.mkdir, root / ".zonefs") in refused
    assert errno_of(open, root / ".zonefs", "w") in refused + (errno.EISDIR,)
    mount.sync()
    assert mount.store.keys() == ["a.txt", "d/", "d/.zonefs"]


@pytest.mark.mount_options(ro="")
def test_read_only_mount_refuses_writes(mount: Mount) -> None:
    mount.store.put("f.txt", b"read me\n")
    mount.store.put("d/", b"", content_type=DIR_CONTENT_TYPE)
    root = mount.path
    assert (root / "f.txt").read_bytes() == b"read me\n"
    assert os.listdir(root / "d") == []

    assert errno_of(open, root / "new.txt", "w") == errno.EROFS
    assert errno_of(open, root / "f.txt", "r+b") == errno.EROFS
    assert errno_of(os.mkdir, root / "e") == errno.EROFS
    assert errno_of(os.unlink, root / "f.txt") == errno.EROFS
    assert errno_of(os.rmdir, root / "d") == errno.EROFS
    assert errno_of(os.rename, root / "f.txt", root / "g.txt") == errno.EROFS
    assert errno_of(os.chmod, root / "f.txt", 0o600) == errno.EROFS
    assert errno_of(os.symlink, "f.txt", root / "l") == errno.EROFS
    assert run("touch", root / "f.txt", check=False).returncode != 0
    assert mount.store.keys() == ["d/", "f.txt"]
    assert mount.store.must_get("f.txt").body == b"read me\n"


# -- when bytes reach the bucket -------------------------------------------------------------


@pytest.mark.mount_options(writeback_delay="60")
def test_pending_files_are_visible_and_sync_waits_for_the_bucket(mount: Mount) -> None:
    root = mount.path
    (root / "p1.txt").write_bytes(b"pending one\n")
    (root / "dir").mkdir()
    (root / "dir" / "p2.bin").write_bytes(b"2" * 50_000)
    # Closed, not uploaded: visible and readable through the mount, not yet in the bucket.
    assert sorted(os.listdir(root)) == ["dir", "p1.txt"]
    assert ls_l(root / "dir")["p2.bin"] == "-rw-r--r--"
    assert os.stat(root / "dir" / "p2.bin").st_size == 50_000
    assert (root / "p1.txt").read_bytes() == b"pending one\n"
    assert mount.store.get("p1.txt") is None and mount.store.get("dir/p2.bin") is None
    status = mount.status()
    # mkdir is in the store at once where it is exclusive across mounts, else put by
    # write-back; either way the directory's new times (a file was made in it) are pending,
    # unless the store drops a marker's headers (then the cache dir remembers them).
    exclusive = status["exclusive_creates"]["mkdir_across_mounts"]
    assert (mount.store.get("dir/") is not None) == exclusive
    dirs = 1 if not exclusive or markers_keep_metadata(mount) else 0
    assert (status["dirty_files"], status["pending_dirs"], status["pending"]) == (
        2, dirs, 2 + dirs)
    human = zonefs_cli("status", str(root)).stdout
    assert re.search(r"dirty files\s+2\b", human), human
    assert re.search(rf"pending\s+{dirs} directories to create or change, 0 deletes",
                     human), human

    # Within the delay, rewrites and attribute changes are coalesced into one upload.
    (root / "p1.txt").write_bytes(b"pending one, rewritten\n")
    run("chmod", "640", root / "p1.txt")
    (root / "p1.txt").write_bytes(b"pending one\n")

    out = mount.sync()
    assert f"{2 + dirs} change(s)" in out, out
    # `zonefs sync` has returned: the objects must be there now, without waiting further.
    check_file_object(mount.store.must_get("p1.txt"), b"pending one\n", mode=0o100640)
    check_file_object(mount.store.must_get("dir/p2.bin"), b"2" * 50_000)
    assert mount.status()["pending"] == 0
    assert mount.store.get("dir/") is not None
    if mount.kind == "local" or mount.store.versions("p1.txt") > 0:  # a versioned store
        assert mount.store.versions("p1.txt") == 1


def test_opening_for_write_without_writing_uploads_nothing(mount: Mount) -> None:
    f = mount.path / "f.txt"
    f.write_bytes(b"unchanged\n")
    mount.sync()
    before = mount.store.versions("f.txt")
    with open(f, "r+b"):
        pass
    with open(f, "ab"):
        pass
    mount.sync()
    assert f.read_bytes() == b"unchanged\n"
    assert mount.store.versions("f.txt") == before
    check_file_object(mount.store.must_get("f.txt"), b"unchanged\n")


def test_attribute_changes_that_change_nothing_make_no_new_version(mount: Mount) -> None:
    f = mount.path / "f.txt"
    f.write_bytes(b"some bytes\n")
    mount.sync()
    before = mount.store.versions("f.txt")
    if before == 0:
        pytest.skip("the store keeps no versions")
    run("chmod", "644", f)  # the mode it already has
    os.chown(f, -1, -1)  # the owner it already has
    time.sleep(0.5)  # past the write-back delay
    mount.sync()
    assert mount.store.versions("f.txt") == before


@pytest.mark.mount_options(writeback_delay="60")
def test_unmounting_with_fusermount_still_uploads_pending_files(mount: Mount) -> None:
    (mount.path / "late.txt").write_bytes(b"uploaded after fusermount3 -u\n")
    assert mount.store.get("late.txt") is None
    pid = mount.pid
    run("fusermount3", "-u", mount.path)
    assert not is_mounted(mount.path)
    # The daemon uploads what is pending, then exits.
    assert wait_for(lambda: not processes_mentioning(str(mount.path)), 30), "daemon still up"
    assert pid is not None
    check_file_object(mount.store.must_get("late.txt"), b"uploaded after fusermount3 -u\n")


@pytest.mark.mount_options(writeback_delay="60")
def test_fsync_returns_once_the_object_is_in_the_bucket(mount: Mount) -> None:
    fd = os.open(mount.path / "durable.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable now\n")
        os.fsync(fd)
        # Still open, and the write-back delay is a minute: only fsync can have uploaded it.
        check_file_object(mount.store.must_get("durable.txt"), b"durable now\n")
        os.write(fd, b"more\n")
    finally:
        os.close(fd)
    assert (mount.path / "durable.txt").read_bytes() == b"durable now\nmore\n"
    assert mount.store.must_get("durable.txt").body == b"durable now\n"  # not yet: delay


@pytest.mark.mount_options(writeback_delay="60")
def test_umount_uploads_pending_files(mount: Mount) -> None:
    (mount.path / "a.txt").write_bytes(b"uploaded at unmount\n")
    (mount.path / "sub").mkdir()
    (mount.path / "sub" / "b.bin").write_bytes(b"b" * 100_000)
    assert mount.store.get("a.txt") is None
    # Two files, and the directory: its marker (mkdir, where it stays pending) or its new
    # times (where the store keeps a marker's headers).
    status = mount.status()
    dirs = 1 if not status["exclusive_creates"]["mkdir_across_mounts"] or markers_keep_metadata(
        mount) else 0
    out = mount.umount()
    assert f"uploaded {2 + dirs} change(s)" in out, out
    check_file_object(mount.store.must_get("a.txt"), b"uploaded at unmount\n")
    check_file_object(mount.store.must_get("sub/b.bin"), b"b" * 100_000)


def test_umount_refuses_while_a_file_is_open_for_writing(mount: Mount) -> None:
    writer = open(mount.path / "open.txt", "wb")  # noqa: SIM115 - closed below, maybe failing
    try:
        writer.write(b"first half, ")
        writer.flush()
        proc = zonefs_cli("umount", str(mount.path), check=False)
        assert proc.returncode != 0, f"umount of a busy mount succeeded: {proc.stdout}"
        assert is_mounted(mount.path)
        writer.write(b"second half\n")
    finally:
        with contextlib.suppress(OSError):
            writer.close()
    mount.umount()
    check_file_object(mount.store.must_get("open.txt"), b"first half, second half\n")


# -- large files, the cache, remounts --------------------------------------------------------


@pytest.mark.mount_options(cache_size="2M")
def test_a_small_cache_still_serves_every_file(mount: Mount) -> None:
    blobs = {f"f{i}.bin": os.urandom(768 * 1024) for i in range(6)}  # 4.5 MiB in all
    for name, body in blobs.items():
        (mount.path / name).write_bytes(body)
    mount.sync()
    for _ in range(2):
        for name, body in blobs.items():
            assert (mount.path / name).read_bytes() == body, name
    for name, body in blobs.items():
        check_file_object(mount.store.must_get(name), body)
    cached = mount.status()["cache"]["cached_bytes"]
    assert cached <= 2 * MiB + 768 * 1024, f"{cached} bytes cached with cache_size=2M"


def test_large_file_multipart_and_cold_ranged_reads(mount: Mount, tmp_path: Path) -> None:
    size = 40 * MiB
    rng = random.Random(40)
    data = rng.randbytes(size)
    digest = sha256(data)
    with open(mount.path / "big.bin", "wb") as f:
        for off in range(0, size, MiB):
            f.write(data[off:off + MiB])
    assert os.stat(mount.path / "big.bin").st_size == size
    assert file_sha256(mount.path / "big.bin") == digest
    mount.sync()
    obj = mount.store.must_get("big.bin")
    assert sha256(obj.body) == digest and obj.metadata.get("zonefs-sha256") == digest
    del obj
    if mount.kind == "s3":
        head = mount.store.client.head_object(  # type: ignore[attr-defined]
            Bucket=mount.store.bucket, Key="big.bin")  # type: ignore[attr-defined]
        assert re.fullmatch(r'"[0-9a-f]{32}-\d+"', head["ETag"]), head["ETag"]  # multipart

    # A fresh cache dir: nothing local, so reads go to the store in ranges.
    mount.remount(cache_dir=tmp_path / "cold-cache")
    with open(mount.path / "big.bin", "rb") as f:
        for off in sorted(rng.sample(range(size - 4096), 12), reverse=True):
            f.seek(off)
            assert f.read(4096) == data[off:off + 4096], off
    # Two readers at once share the fetch and both get every byte.
    readers = [subprocess.Popen(["sha256sum", str(mount.path / "big.bin")],
                                stdout=subprocess.PIPE) for _ in range(2)]
    for reader in readers:
        out, _ = reader.communicate(timeout=60)
        assert out.split()[0].decode() == digest


def test_sizes_around_the_read_and_upload_thresholds(mount: Mount, tmp_path: Path) -> None:
    # 8 MiB: objects above it are read by ranges (8 MiB chunks); 16 MiB: uploads above it are
    # multipart (16 MiB parts). Off-by-one mistakes live at these edges.
    sizes = [0, 1, 8 * MiB - 1, 8 * MiB, 8 * MiB + 1, 16 * MiB, 16 * MiB + 1]
    rng = random.Random(8)
    bodies = {f"s{size}.bin": rng.randbytes(size) for size in sizes}
    for name, body in bodies.items():
        (mount.path / name).write_bytes(body)
    mount.sync()
    for name, body in bodies.items():
        obj = mount.store.must_get(name)
        assert len(obj.body) == len(body) and obj.body == body, name
        assert obj.metadata.get("zonefs-sha256") == sha256(body), name
    mount.remount(cache_dir=tmp_path / "cold-cache")
    for name, body in bodies.items():
        with open(mount.path / name, "rb") as f:
            if len(body) > 2:
                f.seek(len(body) - 2)  # the very end first, then everything
                assert f.read() == body[-2:], name
                f.seek(0)
            assert f.read() == body, name


SHORT_TTL = 0.3


@pytest.mark.mount_options(metadata_ttl=str(SHORT_TTL))
def test_another_mount_of_the_same_zone_sees_changes_after_the_ttl(
    mount: Mount, tmp_path: Path
) -> None:
    other = Mount(mount.kind, mount.zone_url, tmp_path / "mnt2", tmp_path / "cache2",
                  Store(), endpoint_url=mount.endpoint_url,
                  options={"metadata_ttl": str(SHORT_TTL)})
    try:
        other.start()
        (mount.path / "shared.txt").write_bytes(b"version A\n")
        (mount.path / "shared.txt").chmod(0o640)
        mount.sync()
        time.sleep(SHORT_TTL + 0.2)
        # The other mount reads it, with the writer's attributes, and keeps it in its caches.
        assert (other.path / "shared.txt").read_bytes() == b"version A\n"
        assert stat.S_IMODE(os.stat(other.path / "shared.txt").st_mode) == 0o640
        # A change of the same size (the kernel page cache must not serve the old bytes).
        (mount.path / "shared.txt").write_bytes(b"version B\n")
        mount.sync()
        time.sleep(SHORT_TTL + 0.3)
        assert (other.path / "shared.txt").read_bytes() == b"version B\n"
        # And the other way round, for a new file in a new directory.
        (other.path / "from-other").mkdir()
        (other.path / "from-other" / "x.txt").write_bytes(b"x\n")
        other.sync()
        time.sleep(SHORT_TTL + 0.3)
        assert (mount.path / "from-other" / "x.txt").read_bytes() == b"x\n"
        other.umount()
    finally:
        other.cleanup()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def test_remount_with_the_same_cache_dir_shows_everything(mount: Mount) -> None:
    root = mount.path
    (root / "top.txt").write_bytes(b"top\n")
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f.bin").write_bytes(b"f" * 30_000)
    (root / "d" / "f.bin").chmod(0o600)
    (root / "link").symlink_to("d/f.bin")
    snapshot = tree_snapshot(root)

    mount.remount()
    assert tree_snapshot(root) == snapshot
    (root / "after.txt").write_bytes(b"still writable\n")
    mount.sync()
    check_file_object(mount.store.must_get("after.txt"), b"still writable\n")


def test_remount_with_a_fresh_cache_dir_reads_attributes_from_the_bucket(
    mount: Mount, tmp_path: Path
) -> None:
    root = mount.path
    (root / "top.txt").write_bytes(b"top\n")
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f.bin").write_bytes(b"f" * 30_000)
    (root / "d" / "f.bin").chmod(0o600)
    os.utime(root / "d" / "f.bin", ns=(1_400_000_000_000_000_000, 1_400_000_000_000_000_001))
    (root / "d" / "e").chmod(0o700)
    (root / "link").symlink_to("d/f.bin")
    snapshot = tree_snapshot(root)
    keeps = markers_keep_metadata(mount)

    def seen(snap: Snapshot) -> dict[str, object]:
        # Without marker metadata in the store, directory attributes live in the cache dir
        # only: after a fresh one, directories are there with the mount's defaults.
        return {p: v if keeps or not stat.S_ISDIR(v[0]) else "dir" for p, v in snap.items()}

    mount.remount(cache_dir=tmp_path / "fresh-cache")
    assert seen(tree_snapshot(root)) == seen(snapshot)
    sh("printf 'appended\\n' >> top.txt", cwd=root)  # needs the bytes from the bucket
    assert (root / "top.txt").read_bytes() == b"top\nappended\n"
    mount.sync()
    check_file_object(mount.store.must_get("top.txt"), b"top\nappended\n")


Snapshot = dict[str, tuple[int, int, int, int | None, bytes | str | None]]


def tree_snapshot(root: Path) -> Snapshot:
    """Relative path → (mode, uid, gid, mtime of files, bytes of a file / target of a link /
    None for a directory). Directory mtimes are left out: no promise covers them."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            s = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(s.st_mode):
                content: bytes | str | None = os.readlink(p)
            elif stat.S_ISDIR(s.st_mode):
                content = None
            else:
                content = p.read_bytes()
            mtime = None if stat.S_ISDIR(s.st_mode) else s.st_mtime_ns
            out[rel] = (s.st_mode, s.st_uid, s.st_gid, mtime, content)
    return out



# -- options and ways of mounting --------------------------------------------------------------


def test_s3_prefix_zone_sees_and_writes_only_its_prefix(
    s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    if fuse_unavailable_reason():
        pytest.skip(fuse_unavailable_reason() or "")
    store = S3Store(s3_client, bucket)
    store.put("team/data/", b"", content_type=DIR_CONTENT_TYPE)  # a console's "folder"
    store.put("team/data/inside.txt", b"inside\n")
    store.put("team/data/sub/deeper.txt", b"deeper\n")
    store.put("team/data-not-mine.txt", b"outside\n")
    store.put("team/other.txt", b"outside\n")
    store.put("elsewhere.txt", b"outside\n")
    m = Mount("s3", f"s3://{bucket}/team/data", tmp_path / "mnt", tmp_path / "cache", store,
              endpoint_url=s3_endpoint)
    try:
        m.start()
        root = m.path
        assert sorted(os.listdir(root)) == ["inside.txt", "sub"]
        assert (root / "sub" / "deeper.txt").read_bytes() == b"deeper\n"
        (root / "new.txt").write_bytes(b"new\n")
        (root / "dir").mkdir()
        run("cp", root / "inside.txt", root / "dir" / "copy.txt")
        run("mv", root / "new.txt", root / "dir" / "moved.txt")
        (root / "link").symlink_to("dir/moved.txt")
        run("rm", root / "inside.txt")
        m.sync()
        assert store.keys() == [
            "elsewhere.txt", "team/data-not-mine.txt", "team/data/", "team/data/dir/",
            "team/data/dir/copy.txt", "team/data/dir/moved.txt", "team/data/link",
            "team/data/sub/deeper.txt", "team/other.txt",
        ]
        check_file_object(store.must_get("team/data/dir/moved.txt"), b"new\n")
        check_file_object(store.must_get("team/data/dir/copy.txt"), b"inside\n")
        assert store.must_get("team/data/link").body == b"dir/moved.txt"
        m.umount()
    finally:
        m.cleanup()


def test_profile_credentials_from_a_shared_credentials_file(
    s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    if fuse_unavailable_reason():
        pytest.skip(fuse_unavailable_reason() or "")
    creds = tmp_path / "credentials"
    creds.write_text(
        "[zonefs-t4]\n"
        f"aws_access_key_id = {os.environ.get('AWS_ACCESS_KEY_ID', 'testing')}\n"
        f"aws_secret_access_key = {os.environ.get('AWS_SECRET_ACCESS_KEY', 'testing')}\n"
    )
    creds.chmod(0o600)
    env: dict[str, str | None] = {
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None, "AWS_SHARED_CREDENTIALS_FILE": str(creds),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
    }
    m = Mount("s3", f"s3://{bucket}", tmp_path / "mnt", tmp_path / "cache",
              S3Store(s3_client, bucket), endpoint_url=s3_endpoint, env=env,
              extra_args=["--profile", "zonefs-t4", "--region", "us-east-1"])
    try:
        m.start()
        (m.path / "f.txt").write_bytes(b"with a profile\n")
        m.sync()
        check_file_object(m.store.must_get("f.txt"), b"with a profile\n")
        m.umount()
    finally:
        m.cleanup()


def test_a_missing_local_zone_dir_is_created(tmp_path: Path) -> None:
    if fuse_unavailable_reason():
        pytest.skip(fuse_unavailable_reason() or "")
    zone_dir = tmp_path / "new" / "zone"
    m = Mount("local", f"file://{zone_dir}", tmp_path / "mnt", tmp_path / "cache", Store())
    try:
        m.start()
        assert os.listdir(m.path) == []
        (m.path / "first.txt").write_bytes(b"first object\n")
        m.umount()
        m.store = LocalStore(ZoneConfig.parse(f"file://{zone_dir}"), tmp_path / "scratch")
        check_file_object(m.store.must_get("first.txt"), b"first object\n")
    finally:
        m.cleanup()


def test_foreground_mount_drains_and_unmounts_on_sigterm(
    local_zone: ZoneConfig, tmp_path: Path
) -> None:
    if fuse_unavailable_reason():
        pytest.skip(fuse_unavailable_reason() or "")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    store = LocalStore(local_zone, tmp_path / "scratch")
    proc = subprocess.Popen(
        [sys.executable, "-m", "zonefs", "mount", local_zone.url, str(mnt), "--foreground",
         "-o", f"cache_dir={tmp_path / 'cache'},writeback_delay=60"],
        env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: is_mounted(mnt) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.communicate()
        assert wait_for(lambda: os.path.exists(mnt / ".zonefs"), 10)  # answering
        (mnt / "f.txt").write_bytes(b"uploaded on SIGTERM\n")
        assert store.get("f.txt") is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert not is_mounted(mnt)
        check_file_object(store.must_get("f.txt"), b"uploaded on SIGTERM\n")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_allow_other_lets_other_users_in_with_permission_checks(
    local_zone: ZoneConfig, tmp_path: Path
) -> None:
    if fuse_unavailable_reason():
        pytest.skip(fuse_unavailable_reason() or "")
    nobody = 65534

    def as_nobody(script: str, dir_fd: int) -> subprocess.CompletedProcess[bytes]:
        # The mount point's parents (pytest's tmp dirs) are private to root: reach the mount
        # through an inherited directory descriptor instead of a path.
        return subprocess.run(["/bin/sh", "-c", script.replace("DIR", f"/proc/self/fd/{dir_fd}")],
                              user=nobody, group=nobody, extra_groups=[], pass_fds=(dir_fd,),
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)

    m = Mount("local", local_zone.url, tmp_path / "mnt", tmp_path / "cache",
              LocalStore(local_zone, tmp_path / "scratch"))
    try:
        m.start()
        (m.path / "public.txt").write_bytes(b"for everyone\n")
        (m.path / "private.txt").write_bytes(b"root only\n")
        (m.path / "private.txt").chmod(0o600)
        fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            denied = as_nobody("cat DIR/public.txt", fd)
            assert denied.returncode != 0 and b"ermission denied" in denied.stderr
        finally:
            os.close(fd)

        m.remount(options={"allow_other": ""})
        fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert as_nobody("cat DIR/public.txt", fd).stdout == b"for everyone\n"
            assert as_nobody("cat DIR/private.txt", fd).returncode != 0
            assert as_nobody("echo x >> DIR/public.txt", fd).returncode != 0
            assert as_nobody("echo x > DIR/new.txt", fd).returncode != 0
        finally:
            os.close(fd)
        assert sorted(os.listdir(m.path)) == ["private.txt", "public.txt"]
        assert (m.path / "public.txt").read_bytes() == b"for everyone\n"
        m.umount()
    finally:
        m.cleanup()


@pytest.mark.mount_options(dir_markers="dropped")
def test_directory_attributes_survive_a_store_that_drops_marker_metadata(mount: Mount) -> None:
    """On a store that keeps no metadata on `dir/` markers (SeaweedFS), the attributes this
    machine set still show, also after a remount."""
    (mount.path / "private").mkdir(mode=0o700)
    os.chmod(mount.path / "private", 0o710)
    mount.store.put("private/", b"")  # what such a store keeps: a bare marker
    mount.remount()
    assert (mount.path / "private").stat().st_mode & 0o7777 == 0o710


def test_names_over_name_max_are_enametoolong_on_every_call(mount: Mount) -> None:
    """A name over 255 bytes gives ENAMETOOLONG whatever the call, as on ext4: not only a
    create, but a stat, chmod, unlink, open without O_CREAT, rename and rmdir of it."""
    root = mount.path
    (root / "d").mkdir()
    (root / "f").write_bytes(b"f")
    long = root / "d" / ("x" * 256)
    for call in (os.stat, os.lstat, os.unlink, os.rmdir, lambda p: os.chmod(p, 0o600),
                 lambda p: os.open(p, os.O_RDONLY), lambda p: os.open(p, os.O_WRONLY | os.O_CREAT),
                 os.mkdir,
                 lambda p: os.rename(root / "f", p), lambda p: os.rename(p, root / "g")):
        assert errno_of(call, long) == errno.ENAMETOOLONG, call
    assert errno_of(os.stat, root / ("é" * 128)) == errno.ENAMETOOLONG  # 256 bytes
    assert sorted(os.listdir(root)) == ["d", "f"] and os.listdir(root / "d") == []


def test_readdir_lists_dot_and_dotdot(mount: Mount) -> None:
    """`ls -a` shows `.` and `..` with their inode numbers, in every directory."""
    root = mount.path
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "file").write_bytes(b"x")
    for directory, parent in ((root, root), (root / "a", root), (root / "a" / "b", root / "a")):
        out = subprocess.run(["ls", "-ai1", str(directory)], capture_output=True, text=True,
                             check=True).stdout.split("\n")
        shown = dict(reversed(line.split(maxsplit=1)) for line in out if line.strip())
        assert int(shown["."]) == os.stat(directory).st_ino
        if directory != root:  # the root's `..` belongs to the filesystem it is mounted on
            assert int(shown[".."]) == os.stat(parent).st_ino
        assert set(shown) - {".", ".."} == set(os.listdir(directory))
    # Many entries: the offsets after `.` and `..` go on across readdir calls.
    many = root / "many"
    many.mkdir()
    for i in range(300):
        (many / f"n{i:03d}").write_bytes(b"")
    listed = subprocess.run(["ls", "-a1", str(many)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == [".", ".."] + [f"n{i:03d}" for i in range(300)]


def test_default_permissions_is_accepted(mount: Mount) -> None:
    """`-o default_permissions` (common in fstab lines) is accepted: the kernel always checks
    permissions on a zonefs mount."""
    (mount.path / "f").write_bytes(b"kept")
    mount.remount(options={"default_permissions": ""})
    assert (mount.path / "f").read_bytes() == b"kept"
    os.chmod(mount.path / "f", 0o400)
    if os.geteuid() == 0:
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              "cat", str(mount.path / "f")], capture_output=True, text=True)
        assert out.returncode != 0 and "Permission denied" in out.stderr


def test_o_trunc_and_truncate_set_mtime_to_now(mount: Mount) -> None:
    """Emptying a file with O_TRUNC (`> file` in a shell) or `truncate` changes its mtime and
    ctime, even when no byte is written after, and the bucket's `mtime` header follows."""
    root = mount.path
    for name in ("clean", "pending", "empty"):
        (root / name).write_bytes(b"" if name == "empty" else b"some bytes\n")
    mount.sync()  # `clean` and `empty` now only in the bucket; `pending` is rewritten below
    (root / "pending").write_bytes(b"pending bytes\n")
    old = 1_500_000_000_000_000_000
    for name in ("clean", "pending", "empty"):
        os.utime(root / name, ns=(old, old))
    before = time.time_ns() - 1_000_000_000
    for name in ("clean", "pending", "empty"):
        os.close(os.open(root / name, os.O_WRONLY | os.O_TRUNC))
        s = os.stat(root / name)
        assert (s.st_size, s.st_mtime_ns >= before, s.st_ctime_ns >= before) == (0, True, True)
    (root / "by-name").write_bytes(b"cut by name\n")
    mount.sync()
    os.utime(root / "by-name", ns=(old, old))
    run("truncate", "-s", "4", root / "by-name")
    assert os.stat(root / "by-name").st_mtime_ns >= before
    assert os.stat(root / "by-name").st_ctime_ns >= before
    mount.sync()
    for name in ("clean", "pending", "empty", "by-name"):
        obj = mount.store.must_get(name)
        assert header_mtime_ns(obj) >= before, name


def test_fifos_and_sockets_are_kept_as_objects_with_their_mode(mount: Mount,
                                                                tmp_path: Path) -> None:
    """`mkfifo` and a unix socket's `bind()` make entries of their type: an empty object whose
    `mode` header carries the type bits (as s3fs writes them). The kernel gives them their
    behaviour: a FIFO passes bytes between a writer and a reader."""
    import socket
    import threading

    root = mount.path
    (root / "d").mkdir()
    os.mkfifo(root / "d" / "fifo", 0o640)
    sock_path = root / "d" / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(sock_path))
        assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    fifo = root / "d" / "fifo"
    s = os.stat(fifo)
    assert stat.S_ISFIFO(s.st_mode) and stat.S_IMODE(s.st_mode) == 0o640
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    fifo.write_bytes(b"through the pipe\n")
    reader.join(10)
    assert got == [b"through the pipe\n"]
    assert os.stat(fifo).st_size == 0
    mount.sync()
    for name, kind in (("d/fifo", stat.S_IFIFO), ("d/sock", stat.S_IFSOCK)):
        obj = mount.store.must_get(name)
        assert obj.body == b""
        assert stat.S_IFMT(int(obj.metadata["mode"])) == kind, (name, obj.metadata)
    assert int(mount.store.must_get("d/fifo").metadata["mode"]) == stat.S_IFIFO | 0o640
    mount.remount(cache_dir=tmp_path / "fresh-cache")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert stat.S_ISSOCK(os.stat(sock_path).st_mode)
    listed = subprocess.run(["find", str(root / "d"), "-type", "p"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert listed == [str(fifo)]
    os.unlink(fifo)
    os.unlink(sock_path)
    mount.sync()
    left = mount.store.keys()
    assert [k for k in left if k.startswith("d/") and k != "d/"] == []


def header_ns(obj: StoredObject, name: str) -> int:
    """A time header (`mtime`, `ctime`, `atime`: decimal seconds) in nanoseconds."""
    sec, _, frac = obj.metadata[name].partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


@pytest.mark.skipif(os.geteuid() != 0, reason="creating device nodes needs root")
def test_device_nodes_keep_their_type_and_number(mount: Mount, tmp_path: Path) -> None:
    """`mknod` of a character or block device makes an entry of its type with its device
    number, kept as the `mode` and `rdev` headers of an empty object. The mount is nodev (as
    every FUSE mount is unless asked): a device node in a bucket cannot be opened through it."""
    root = mount.path
    null, disk = root / "null", root / "disk"
    os.mknod(null, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(disk, stat.S_IFBLK | 0o600, os.makedev(8, 17))
    for path, kind, dev in ((null, stat.S_IFCHR, (1, 3)), (disk, stat.S_IFBLK, (8, 17))):
        s = os.lstat(path)
        assert stat.S_IFMT(s.st_mode) == kind
        assert (os.major(s.st_rdev), os.minor(s.st_rdev)) == dev
    assert errno_of(open, null, "rb") == errno.EACCES
    mount.sync()
    obj = mount.store.must_get("null")
    assert obj.body == b""
    assert int(obj.metadata["mode"]) == stat.S_IFCHR | 0o600
    assert int(obj.metadata["rdev"]) == os.makedev(1, 3)
    mount.remount(cache_dir=tmp_path / "fresh-cache")
    s = os.lstat(disk)
    assert stat.S_ISBLK(s.st_mode) and s.st_rdev == os.makedev(8, 17)
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    listed = subprocess.run(["find", str(root), "-type", "c"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == [str(null)]


def test_ctime_and_atime_are_kept_and_change_as_on_a_local_filesystem(
        mount: Mount, tmp_path: Path) -> None:
    """ctime changes with the data, mode, owner, times and name of a file; atime is what
    `utimensat` set (reads do not move it: the mount is noatime). The three times are the
    object's `mtime`, `ctime` and `atime` headers (s3fs' names, decimal seconds), exactly, and
    a new mount with an empty cache dir shows them again."""
    root = mount.path
    f = root / "f"
    f.write_bytes(b"first bytes\n")
    s = os.stat(f)
    assert s.st_atime_ns <= s.st_mtime_ns == s.st_ctime_ns  # created, then written

    def changes(action: Callable[[], object], *, mtime: bool, path: Path = f) -> None:
        before = os.stat(f)
        time.sleep(0.02)
        action()
        after = os.stat(path)
        assert after.st_ctime_ns > before.st_ctime_ns, action
        assert (after.st_mtime_ns > before.st_mtime_ns) == mtime, action

    changes(lambda: os.chmod(f, 0o600), mtime=False)
    changes(lambda: os.chown(f, os.getuid(), os.getgid() + 1), mtime=False)
    changes(lambda: f.write_bytes(b"second bytes\n"), mtime=True)
    changes(lambda: os.truncate(f, 3), mtime=True)
    changes(lambda: os.utime(f, ns=(1_000_000_000_123, 2_000_000_000_456)), mtime=False)
    s = os.stat(f)
    assert (s.st_atime_ns, s.st_mtime_ns) == (1_000_000_000_123, 2_000_000_000_456)
    g = root / "g"
    changes(lambda: os.rename(f, g), mtime=False, path=g)
    assert (os.stat(g).st_atime_ns, os.stat(g).st_mtime_ns) == (
        1_000_000_000_123, 2_000_000_000_456)
    assert g.read_bytes() == b"sec"
    assert os.stat(g).st_atime_ns == 1_000_000_000_123  # noatime: reads keep it
    run("touch", "-a", "-d", "@1500000000.5", g)
    shown = os.stat(g)
    assert shown.st_atime_ns == 1_500_000_000_500_000_000
    mount.sync()
    obj = mount.store.must_get("g")
    assert (header_ns(obj, "atime"), header_ns(obj, "mtime"), header_ns(obj, "ctime")) == (
        shown.st_atime_ns, shown.st_mtime_ns, shown.st_ctime_ns)
    mount.remount(cache_dir=tmp_path / "fresh-cache")
    again = os.stat(g)
    assert (again.st_atime_ns, again.st_mtime_ns, again.st_ctime_ns) == (
        shown.st_atime_ns, shown.st_mtime_ns, shown.st_ctime_ns)
    assert again.st_gid == os.getgid() + 1 and stat.S_IMODE(again.st_mode) == 0o600


def test_a_directory_s_times_change_with_its_entries(mount: Mount, tmp_path: Path) -> None:
    """Creating, removing or renaming an entry sets its directory's mtime and ctime to now, at
    once; the new times are kept on the directory's marker, one put however many entries
    changed, and a new mount with an empty cache dir shows them."""
    root = mount.path
    (root / "d").mkdir()
    (root / "e").mkdir()
    mount.sync()
    old = 1_500_000_000_000_000_000

    def check(action: Callable[[], object], *dirs: str) -> None:
        for name in dirs:
            os.utime(root / name, ns=(old, old))
        before = time.time_ns() - 5_000_000
        action()
        for name in dirs:
            s = os.stat(root / name)
            assert s.st_mtime_ns >= before and s.st_ctime_ns >= before, (action, name)

    check(lambda: (root / "d" / "f").write_bytes(b"f"), "d")
    check(lambda: (root / "d" / "sub").mkdir(), "d")
    check(lambda: os.symlink("f", root / "d" / "link"), "d")
    check(lambda: os.mkfifo(root / "d" / "fifo"), "d")
    check(lambda: os.unlink(root / "d" / "link"), "d")
    check(lambda: os.rmdir(root / "d" / "sub"), "d")
    check(lambda: os.rename(root / "d" / "f", root / "e" / "f"), "d", "e")
    check(lambda: os.rename(root / "e" / "f", root / "e" / "g"), "e")
    root_before = os.stat(root).st_mtime_ns
    time.sleep(0.02)
    (root / "top").write_bytes(b"t")
    assert os.stat(root).st_mtime_ns > root_before
    mount.sync()
    puts = int(mount.status()["requests"].get("put", 0))
    for i in range(50):
        (root / "d" / f"many-{i}").write_bytes(b"m")
    mount.sync()
    kept = markers_keep_metadata(mount)
    # The 50 files, and the marker of `d` once (where the store keeps a marker's headers;
    # elsewhere the cache dir remembers the times, with no request).
    assert int(mount.status()["requests"]["put"]) - puts == (51 if kept else 50)
    shown = os.stat(root / "d")
    if kept:
        assert header_ns(mount.store.must_get("d/"), "mtime") == shown.st_mtime_ns
    mount.remount()
    again = os.stat(root / "d")
    assert (again.st_mtime_ns, again.st_ctime_ns) == (shown.st_mtime_ns, shown.st_ctime_ns)
    mount.remount(cache_dir=tmp_path / "fresh-cache")
    if kept:  # else only the cache dir that set them remembers them
        again = os.stat(root / "d")
        assert (again.st_mtime_ns, again.st_ctime_ns) == (shown.st_mtime_ns, shown.st_ctime_ns)


def test_a_directory_made_only_of_keys_gets_no_marker_for_its_times(mount: Mount) -> None:
    """A directory that exists only as the prefix of other keys (another tool's layout) shows
    its new times in the mount, but no marker object is added to the bucket for them."""
    mount.store.put("data/a.csv", b"a")
    root = mount.path
    assert os.listdir(root / "data") == ["a.csv"]
    before = time.time_ns() - 5_000_000
    (root / "data" / "b.csv").write_bytes(b"b")
    assert os.stat(root / "data").st_mtime_ns >= before
    mount.sync()
    assert mount.store.keys() == ["data/a.csv", "data/b.csv"]


@pytest.mark.unversioned_on_moto
def test_a_directory_s_link_count_is_two_and_one_per_subdirectory(mount: Mount,
                                                                  tmp_path: Path) -> None:
    """`st_nlink` of a directory is 2 plus its subdirectories (each one's `..`), as far as the
    mount knows them: from its last listing, kept up by this mount's mkdir, rmdir and renames."""
    root = mount.path
    (root / "d").mkdir()
    assert os.stat(root / "d").st_nlink == 2
    for name in ("a", "b", "c"):
        (root / "d" / name).mkdir()
    (root / "d" / "file").write_bytes(b"not a directory")
    assert os.stat(root / "d").st_nlink == 5
    os.rmdir(root / "d" / "a")
    assert os.stat(root / "d").st_nlink == 4
    (root / "e").mkdir()
    os.rename(root / "d" / "b", root / "e" / "b")
    assert (os.stat(root / "d").st_nlink, os.stat(root / "e").st_nlink) == (3, 3)
    mount.remount(cache_dir=tmp_path / "fresh-cache")
    os.listdir(root / "d")  # known once listed
    assert os.stat(root / "d").st_nlink == 3
    listed = os.listdir(root)
    assert os.stat(root).st_nlink == 2 + len(listed)


@pytest.mark.mount_options(max_memory="256M")
def test_max_memory_sets_the_buffer_budget_and_reads_stay_right(mount: Mount) -> None:
    """`-o max_memory=256M`: what the daemon takes and the listings' share are set aside, the
    rest is the buffer budget (`zonefs status`); a large file read through it is whole, and
    the budget is all given back after."""
    body = os.urandom(40 << 20)
    mount.store.put("big.bin", body)
    memory = mount.status()["memory"]
    assert 0 < memory["limit"] < 256 << 20 and memory["used"] == 0
    assert hashlib.sha256((mount.path / "big.bin").read_bytes()).digest() == \
        hashlib.sha256(body).digest()
    assert wait_for(lambda: mount.status()["memory"]["used"] == 0, timeout=60)
