"""Failure (t5): a bucket seeded with keys that are not POSIX paths. Listings and `find`
complete, nothing outside the mount is touched, and `zonefs status` names each odd key."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from mounts import Mount, fuse_unavailable_reason, run

pytestmark = pytest.mark.skipif(
    fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason())
)


@pytest.mark.expect_log(
    "is not a valid file name; hidden",
    "is both a file and a directory; showing the directory",
)
def test_hostile_keys_never_crash_a_listing_nor_escape(mount: Mount, tmp_path: Path) -> None:
    hostile = {
        "a//b": b"empty segment",
        "/leading": b"leading slash",
        "x" * 300: b"name too long",
        "deep/" + "y" * 256: b"segment too long",
        "both": b"a file and a prefix",
        "both/child": b"child",
        "ok/fine.txt": b"an ordinary file",
        ".zonefs/planted": b"the reserved name",
    }
    if mount.kind == "local":  # HTTP stacks may normalise dot segments before S3 sees them
        hostile |= {"./x": b"dot", "../escape": b"dotdot", "ok/../../etc/zonefs-escape": b"up"}
    for key, body in hostile.items():
        # A key the store refuses (SeaweedFS: a segment over 255 bytes) is not there to hide.
        with contextlib.suppress(ClientError):
            mount.store.put(key, body)
    # What the store holds: some rewrite names (SeaweedFS: `a//b` is `a/b`, `/leading` is
    # `leading`).
    stored = set(mount.store.keys())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"untouched")
    before = sorted(os.listdir(tmp_path))

    run("ls", "-laR", mount.path)
    found = run("find", mount.path).stdout.decode().splitlines()
    assert all(p == str(mount.path) or p.startswith(str(mount.path) + "/") for p in found)
    names = {os.path.relpath(p, mount.path) for p in found}
    assert {"ok", "ok/fine.txt", "both", "both/child"} <= names
    assert not any(n.startswith("..") or "//" in n for n in names)
    assert (mount.path / "ok" / "fine.txt").read_bytes() == b"an ordinary file"
    assert (mount.path / "both").is_dir()  # the directory wins; the object is reported
    assert sorted(os.listdir(tmp_path)) == before
    assert (outside / "sentinel").read_bytes() == b"untouched"
    assert not Path("/etc/zonefs-escape").exists()

    odd = {o["key"]: o["what"] for o in mount.status()["odd_keys"]}
    assert "both" in odd and "file and a directory" in odd["both"]
    # zonefs' own tree (its change log lives there): hidden, and not odd.
    assert ".zonefs" not in odd and ".zonefs/planted" not in names
    if "x" * 300 in stored:
        assert any("x" * 300 in k for k in odd)
    if "a//b" in stored:
        assert any("a" in k and "not a valid file name" in w for k, w in odd.items())
    # The ordinary file can still be written next to them.
    (mount.path / "ok" / "new.txt").write_bytes(b"new")
    mount.sync()
    assert mount.store.must_get("ok/new.txt").body == b"new"


def test_hostile_headers_never_break_a_listing(mount: Mount) -> None:
    """Headers any writer of the bucket can set, out of every range the kernel takes (a device
    number over 32 bits, times past a 64-bit count of nanoseconds, garbage): the objects list
    and stat with those fields taken as absent, and their neighbours are not affected."""
    import stat as st

    huge = "9" * 30
    mount.store.put("dev", b"", {"mode": str(st.S_IFCHR | 0o600), "rdev": huge})
    mount.store.put("times", b"t", {"mtime": huge, "ctime": f"-{huge}", "atime": "1.5e9"})
    mount.store.put("fine", b"f", {"mtime": "1500000000.5", "ctime": "1600000000",
                                   "atime": "1400000000"})
    assert sorted(os.listdir(mount.path)) == ["dev", "fine", "times"]
    assert os.lstat(mount.path / "dev").st_rdev == 0
    s = os.stat(mount.path / "times")
    assert s.st_mtime_ns == s.st_ctime_ns == s.st_atime_ns  # LastModified for all three
    f = os.stat(mount.path / "fine")
    assert (f.st_mtime_ns, f.st_ctime_ns, f.st_atime_ns) == (
        1_500_000_000_500_000_000, 1_600_000_000_000_000_000, 1_400_000_000_000_000_000)
