"""Real mounts (t4): POSIX behaviour through the kernel, and the objects it leaves in the zone.

Every test runs twice through the `mount` fixture: against an S3 bucket on the test endpoint
and against an embedded local zone. Each one does what a user would do in a shell (cp, mv, ls,
tar, git, editors' save patterns …), checks what the user sees, and then, after `zonefs sync`,
checks the objects any other S3 tool would see: bytes, and the s3fs-compatible headers of
DESIGN.md §3 (`mode` decimal with type bits, `uid`, `gid`, `mtime` as `<sec>.<9 digits>`,
`zonefs-sha256` of the body).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest
from mounts import METADATA_TTL, Mount, StoredObject, needs_fuse, run, sh

pytestmark = needs_fuse

MiB = 1 << 20
DIR_CONTENT_TYPE = "application/x-directory"
MTIME_RE = re.compile(r"^\d+\.\d{9}$")


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
    """`ls -l` of a directory: name → the line's mode column."""
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
    time.sleep(METADATA_TTL + 0.5)
    assert "later.txt" in os.listdir(mount.path)
    assert (mount.path / "later.txt").read_bytes() == b"added later\n"
    assert (mount.path / "foreign.txt").read_bytes() == b"changed by another tool\n"


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

    mount.sync()
    check_file_object(mount.store.must_get("in.bin"), data)
    check_file_object(mount.store.must_get("sub/copy.bin"), data)
    assert mount.store.keys() == ["in.bin", "sub/", "sub/copy.bin"]


def test_mv_file_and_directory_tree(mount: Mount) -> None:
    root = mount.path
    (root / "a.txt").write_bytes(b"file a\n")
    (root / "tree" / "sub").mkdir(parents=True)
    (root / "tree" / "empty").mkdir()
    (root / "tree" / "x.txt").write_bytes(b"x\n")
    (root / "tree" / "sub" / "y.bin").write_bytes(b"y" * 70_000)
    mount.sync()

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
        "moved/", "moved/b.txt", "moved/empty/", "moved/sub/", "moved/sub/y.bin",
        "moved/x.txt", "renamed.txt",
    ]
    check_file_object(mount.store.must_get("moved/b.txt"), b"file a\n")
    check_file_object(mount.store.must_get("moved/x.txt"), b"x\n")
    check_file_object(mount.store.must_get("moved/sub/y.bin"), b"y" * 70_000)
    check_file_object(mount.store.must_get("renamed.txt"), b"not uploaded yet\n")


def test_rm_and_rm_r(mount: Mount) -> None:
    root = mount.path
    (root / "keep.txt").write_bytes(b"keep")
    (root / "f.txt").write_bytes(b"gone soon")
    (root / "d" / "b").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"a")
    (root / "d" / "b" / "c.txt").write_bytes(b"c")
    (root / "d" / "empty").mkdir()
    mount.sync()
    assert "d/b/c.txt" in mount.store.keys()

    run("rm", root / "f.txt")
    run("rm", "-r", root / "d")
    assert os.listdir(root) == ["keep.txt"]
    assert errno_of(os.stat, root / "d" / "a.txt") == errno.ENOENT
    mount.sync()
    assert mount.store.keys() == ["keep.txt"]


def test_mkdir_p_and_rmdir(mount: Mount) -> None:
    root = mount.path
    run("mkdir", "-p", root / "a" / "b" / "c")
    assert (root / "a" / "b" / "c").is_dir()
    assert stat.S_IMODE(os.stat(root / "a" / "b").st_mode) == 0o755
    mount.sync()
    for key in ("a/", "a/b/", "a/b/c/"):
        marker = mount.store.must_get(key)
        assert marker.body == b"" and marker.content_type == DIR_CONTENT_TYPE, marker
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
    assert mount.store.must_get("d/").metadata["mode"] == str(stat.S_IFDIR | 0o700)

    if os.geteuid() != 0:
        return  # chown to another owner needs root
    run("chown", "1234:5678", root / "f.txt")
    s = os.stat(root / "f.txt")
    assert (s.st_uid, s.st_gid) == (1234, 5678)
    mount.sync()
    check_file_object(mount.store.must_get("f.txt"), b"mode bits\n", mode=0o100600,
                      uid=1234, gid=5678)


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
    expected = bytes(data)
    expected = expected[:3000] + patch + expected[8000:]
    expected = expected[:700_000] + b"XYZ" + expected[700_003:]
    expected = expected[: len(data) - 2] + b"tail past the end"

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


def test_hard_links_and_special_files_are_refused(mount: Mount) -> None:
    root = mount.path
    (root / "f.txt").write_bytes(b"only one name\n")
    assert errno_of(os.link, root / "f.txt", root / "g.txt") == errno.EPERM
    assert run("ln", root / "f.txt", root / "g.txt", check=False).returncode != 0
    refused = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)
    assert errno_of(os.mkfifo, root / "fifo") in refused
    if os.geteuid() == 0:  # creating device nodes needs root before the file system is asked
        assert errno_of(os.mknod, root / "null", stat.S_IFCHR | 0o600,
                        os.makedev(1, 3)) in refused
    assert os.listdir(root) == ["f.txt"]
    mount.sync()
    assert mount.store.keys() == ["f.txt"]


def test_names_over_255_bytes_are_refused(mount: Mount) -> None:
    root = mount.path
    for length in (256, 300):
        assert errno_of(open, root / ("n" * length), "w") == errno.ENAMETOOLONG
        assert errno_of(os.mkdir, root / ("d" * length)) == errno.ENAMETOOLONG
    # 255 bytes is the limit, counted in bytes: 85 three-byte characters fit, 86 do not.
    (root / ("n" * 255)).write_bytes(b"ok")
    (root / ("€" * 85)).write_bytes(b"euro")
    assert errno_of(open, root / ("€" * 86), "w") == errno.ENAMETOOLONG
    mount.sync()
    assert mount.store.keys() == sorted(["n" * 255, "€" * 85])


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
    assert mount.status()["dirty_files"] == 2

    out = mount.sync()
    assert "2 file(s)" in out, out
    # `zonefs sync` has returned: the objects must be there now, without waiting further.
    check_file_object(mount.store.must_get("p1.txt"), b"pending one\n")
    check_file_object(mount.store.must_get("dir/p2.bin"), b"2" * 50_000)
    assert mount.status()["dirty_files"] == 0


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
    out = mount.umount()
    assert "uploaded 2 file(s)" in out, out
    check_file_object(mount.store.must_get("a.txt"), b"uploaded at unmount\n")
    check_file_object(mount.store.must_get("sub/b.bin"), b"b" * 100_000)


# -- large files and remounts ----------------------------------------------------------------


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

    # A fresh cache dir: nothing local, so reads go to the store in ranges.
    mount.remount(cache_dir=tmp_path / "cold-cache")
    with open(mount.path / "big.bin", "rb") as f:
        for off in sorted(rng.sample(range(size - 4096), 12), reverse=True):
            f.seek(off)
            assert f.read(4096) == data[off:off + 4096], off
    assert file_sha256(mount.path / "big.bin") == digest


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


def tree_snapshot(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Relative path → (mode, bytes of a file / target of a link / None for a directory)."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            s = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(s.st_mode):
                out[rel] = (s.st_mode, os.readlink(p))
            elif stat.S_ISDIR(s.st_mode):
                out[rel] = (s.st_mode, None)
            else:
                out[rel] = (s.st_mode, p.read_bytes())
    return out

