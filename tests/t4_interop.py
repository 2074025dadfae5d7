"""A bucket shared with s3fs-fuse (t4): what one mount writes, the other shows the same way.

s3fs is the de-facto convention for POSIX attributes in object headers (`x-amz-meta-mode`,
`-uid`, `-gid`, `-mtime`, `-ctime`, `-atime`; special files as empty objects with their type in
`mode`). These tests mount the same bucket with s3fs (the Debian package) and zonefs, write
through one, and compare what `lstat` shows through both: type, permissions, owner, size and the
three times. s3fs 1.90 keeps no device number: that one field is not compared.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import markers_keep_metadata
from mounts import Mount, is_mounted, wait_for

S3FS = shutil.which("s3fs")


@contextlib.contextmanager
def s3fs_mounted(mount: Mount, path: Path, workdir: Path) -> Iterator[Path]:
    """The bucket of `mount` mounted by s3fs at `path` (credentials in a 0600 file, never in
    argv), unmounted and its process ended afterwards."""
    assert S3FS is not None and mount.endpoint_url is not None
    bucket = mount.zone_url.removeprefix("s3://")
    passwd = workdir / "s3fs.passwd"
    fd = os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.environ['AWS_ACCESS_KEY_ID']}:{os.environ['AWS_SECRET_ACCESS_KEY']}\n")
    path.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "s3fs.log", "ab")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [S3FS, bucket, str(path), "-f", "-o", f"url={mount.endpoint_url}",
         "-o", "use_path_request_style", "-o", "endpoint=us-east-1",
         "-o", f"passwd_file={passwd}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: is_mounted(path) or proc.poll() is not None, 20)
        assert is_mounted(path), (workdir / "s3fs.log").read_text()[-2000:]
        yield path
    finally:
        if is_mounted(path):
            subprocess.run(["fusermount3", "-u", str(path)], check=False)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def shown(path: Path) -> tuple[int, int, int, int, int, int, int]:
    """What a user compares: mode with type, owner, size (files), and the three times."""
    s = os.lstat(path)
    size = s.st_size if stat.S_ISREG(s.st_mode) else 0
    return (s.st_mode, s.st_uid, s.st_gid, size, s.st_mtime_ns, s.st_atime_ns, s.st_ctime_ns)


def make_entries(root: Path) -> list[str]:
    """A file with set times and a changed owner, a FIFO, a character device (where the test
    runs as root), a directory and a symlink; their names."""
    (root / "f").write_bytes(b"some bytes\n")
    os.chmod(root / "f", 0o640)
    os.chown(root / "f", 1234, 5678)
    os.utime(root / "f", ns=(1_600_000_000_000_000_000, 1_700_000_000_000_000_000))
    os.mkfifo(root / "fifo", 0o600)
    (root / "dir").mkdir(0o750)
    os.symlink("f", root / "link")
    names = ["f", "fifo", "dir", "link"]
    if os.geteuid() == 0:
        os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        names.append("null")
    return names


pytestmark = [
    pytest.mark.skipif(S3FS is None, reason="s3fs is not installed (the Debian package s3fs)"),
]


def test_zonefs_shows_what_s3fs_wrote_as_s3fs_does(mount: Mount, tmp_path: Path) -> None:
    if mount.kind != "s3":
        pytest.skip("s3fs mounts S3 buckets")
    with s3fs_mounted(mount, tmp_path / "s3fs", tmp_path) as s3fs_root:
        names = make_entries(s3fs_root)
        mount.remount(cache_dir=tmp_path / "fresh-cache")  # nothing of it known here
        if not markers_keep_metadata(mount):
            names.remove("dir")  # its attributes are nowhere but in s3fs' memory
        for name in names:
            assert shown(mount.path / name) == shown(s3fs_root / name), name
        assert os.readlink(mount.path / "link") == "f"
        assert stat.S_ISFIFO(os.lstat(mount.path / "fifo").st_mode)


def test_s3fs_shows_what_zonefs_wrote_as_zonefs_does(mount: Mount, tmp_path: Path) -> None:
    if mount.kind != "s3":
        pytest.skip("s3fs mounts S3 buckets")
    names = make_entries(mount.path)
    mount.sync()
    if not markers_keep_metadata(mount):
        names.remove("dir")  # its attributes are nowhere but in this cache dir
    with s3fs_mounted(mount, tmp_path / "s3fs", tmp_path) as s3fs_root:
        for name in names:
            assert shown(s3fs_root / name) == shown(mount.path / name), name
        assert os.readlink(s3fs_root / "link") == "f"
        assert (s3fs_root / "f").read_bytes() == b"some bytes\n"
