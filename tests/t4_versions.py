"""Real mounts (t4): every version reachable — `.zonefs/versions`, `.zonefs/at`, `-o at=`,
`zonefs versions`, `restore` and `undelete` — on a versioned S3 bucket and the local zone, plus
an unversioned bucket and a suspended local zone.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import empty_bucket
from mounts import Mount, S3Store, fuse_unavailable_reason, zonefs_cli

pytestmark = pytest.mark.skipif(
    fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason())
)


def versions_dir(mount: Mount, rel: str) -> Path:
    return mount.path / ".zonefs" / "versions" / rel


def utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tick() -> float:
    """A moment strictly between what came before and what comes after, on stores whose
    LastModified has whole seconds."""
    time.sleep(1.1)
    moment = time.time()
    time.sleep(1.1)
    return moment


def write_version(mount: Mount, rel: str, body: bytes) -> None:
    (mount.path / rel).write_bytes(body)
    mount.sync()


def tree(top: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and directory (None) below `top`, by relative path."""
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(top):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), top)] = None
        for f in files:
            out[os.path.relpath(os.path.join(root, f), top)] = Path(root, f).read_bytes()
    return out


def test_every_version_is_listed_and_readable(mount: Mount) -> None:
    bodies = [b"first\n", b"second, longer\n", b"3\n", b"fourth and last " * 1000]
    (mount.path / "docs").mkdir()
    for body in bodies:
        write_version(mount, "docs/report.txt", body)
    entries = os.listdir(versions_dir(mount, "docs/report.txt"))
    assert len(entries) == 4
    # Newest first (names start with the time, but a store may give whole seconds only).
    stamps = [e.split("_", 1)[0] for e in entries]
    assert stamps == sorted(stamps, reverse=True)
    for name, body in zip(entries, reversed(bodies), strict=True):
        version = versions_dir(mount, "docs/report.txt") / name
        assert version.read_bytes() == body
        assert version.stat().st_size == len(body)
        assert not version.stat().st_mode & 0o222
    # The directory mirrors the tree; the reserved tree is not in the bucket nor the listing.
    assert os.listdir(versions_dir(mount, "docs")) == ["report.txt"]
    assert "docs" in os.listdir(versions_dir(mount, ""))
    assert ".zonefs" not in os.listdir(mount.path)
    stored_keys = mount.store.keys()
    assert not [k for k in stored_keys if ".zonefs" in k]
    # `zonefs versions` says the same, newest first, with the content hash.
    listed = json.loads(zonefs_cli("versions", str(mount.path / "docs/report.txt"),
                                   "--json").stdout)
    assert [v["name"] for v in listed] == entries
    assert [v["size"] for v in listed] == [len(b) for b in reversed(bodies)]
    assert listed[0]["current"] and not any(v["current"] for v in listed[1:])
    assert all(v["sha256"] for v in listed)
    table = zonefs_cli("versions", str(mount.path / "docs/report.txt")).stdout
    assert all(v["version_id"] in table for v in listed)


def test_delete_then_undelete(mount: Mount) -> None:
    write_version(mount, "gone.txt", b"old\n")
    write_version(mount, "gone.txt", b"precious\n")
    (mount.path / "gone.txt").unlink()
    mount.sync()
    assert mount.store.get("gone.txt") is None
    entries = os.listdir(versions_dir(mount, "gone.txt"))
    assert len(entries) == 3 and entries[0].endswith(".deleted")
    assert (versions_dir(mount, "gone.txt") / entries[0]).read_bytes() == b""
    assert "gone.txt" in os.listdir(versions_dir(mount, ""))  # deleted files included

    out = zonefs_cli("undelete", str(mount.path / "gone.txt")).stdout
    assert "is back" in out
    assert (mount.path / "gone.txt").read_bytes() == b"precious\n"
    assert mount.store.must_get("gone.txt").body == b"precious\n"
    again = zonefs_cli("undelete", str(mount.path / "gone.txt"), check=False)
    assert again.returncode == 1 and "is not deleted" in again.stderr


def test_undelete_after_browsing_the_history(mount: Mount) -> None:
    """Looking at a file's versions, then deleting it: `undelete` sees the delete at once,
    and so does the versions directory."""
    write_version(mount, "seen.txt", b"kept\n")
    before = os.listdir(versions_dir(mount, "seen.txt"))
    assert len(before) == 1
    (mount.path / "seen.txt").unlink()
    mount.sync()
    out = zonefs_cli("undelete", str(mount.path / "seen.txt")).stdout
    assert "is back" in out
    assert (mount.path / "seen.txt").read_bytes() == b"kept\n"
    assert os.listdir(versions_dir(mount, "seen.txt")) == before
    (mount.path / "seen.txt").unlink()
    mount.sync()
    entries = os.listdir(versions_dir(mount, "seen.txt"))
    assert len(entries) == 2 and entries[0].endswith(".deleted")


def test_restore_by_id_and_by_time(mount: Mount) -> None:
    write_version(mount, "r.txt", b"one\n")
    between = tick()
    write_version(mount, "r.txt", b"two\n")
    write_version(mount, "r.txt", b"three\n")
    listed = json.loads(zonefs_cli("versions", str(mount.path / "r.txt"), "--json").stdout)
    two = listed[1]["version_id"]

    zonefs_cli("restore", str(mount.path / "r.txt"), "--version", two)
    assert (mount.path / "r.txt").read_bytes() == b"two\n"
    assert mount.store.must_get("r.txt").body == b"two\n"

    out = zonefs_cli("restore", str(mount.path / "r.txt"), "--at", utc(between)).stdout
    assert "current again" in out
    assert (mount.path / "r.txt").read_bytes() == b"one\n"
    # Nothing was overwritten: every version is still there, plus the two restores.
    assert len(os.listdir(versions_dir(mount, "r.txt"))) == 5

    bad = zonefs_cli("restore", str(mount.path / "r.txt"), "--version", "no-such-id",
                     check=False)
    assert bad.returncode == 1 and "no version" in bad.stderr
    early = zonefs_cli("restore", str(mount.path / "r.txt"), "--at", "2001-01-01",
                       check=False)
    assert early.returncode == 1 and "did not exist yet" in early.stderr
    bad_time = zonefs_cli("restore", str(mount.path / "r.txt"), "--at", "yesterday",
                          check=False)
    assert bad_time.returncode == 2 and "not a time" in bad_time.stderr


def test_point_in_time_views(mount: Mount) -> None:
    (mount.path / "d").mkdir()
    (mount.path / "a.txt").write_bytes(b"a1")
    (mount.path / "d" / "b.txt").write_bytes(b"b1")
    mount.sync()
    t1 = tick()
    (mount.path / "a.txt").rename(mount.path / "c.txt")
    (mount.path / "d" / "b.txt").unlink()
    (mount.path / "d" / "e.txt").write_bytes(b"e1")
    (mount.path / "c.txt").write_bytes(b"c2")
    mount.sync()
    t2 = tick()
    (mount.path / "c.txt").unlink()
    mount.sync()

    at = mount.path / ".zonefs" / "at"
    assert tree(at / utc(t1)) == {"a.txt": b"a1", "d": None, "d/b.txt": b"b1"}
    assert tree(at / utc(t2)) == {"c.txt": b"c2", "d": None, "d/e.txt": b"e1"}
    assert tree(at / utc(t2) / "d") == {"e.txt": b"e1"}
    assert tree(at / "2001-01-01") == {}
    assert os.listdir(at / "-1h") == []
    assert tree(at / "-0s") == tree(mount.path)  # relative to now: the current tree
    with pytest.raises(FileNotFoundError):
        os.stat(at / "not-a-time")

    # The whole zone mounted as it was at t1: read-only.
    mount.remount(options={"at": utc(t1)})
    assert tree(mount.path) == {"a.txt": b"a1", "d": None, "d/b.txt": b"b1"}
    with pytest.raises(OSError) as err:
        (mount.path / "new.txt").write_bytes(b"x")
    assert err.value.errno == errno.EROFS


def test_reserved_tree_is_read_only(mount: Mount) -> None:
    write_version(mount, "f.txt", b"data")
    version = versions_dir(mount, "f.txt") / os.listdir(versions_dir(mount, "f.txt"))[0]
    attempts: list[Any] = [
        lambda: (mount.path / ".zonefs" / "x").write_bytes(b"x"),
        lambda: (mount.path / ".zonefs" / "versions" / "d").mkdir(),
        lambda: version.write_bytes(b"changed"),
        lambda: version.unlink(),
        lambda: os.rename(mount.path / "f.txt", mount.path / ".zonefs" / "f.txt"),
        lambda: os.truncate(version, 0),
        lambda: os.chmod(version, 0o777),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno == errno.EROFS
    assert version.read_bytes() == b"data"
    assert mount.store.keys() == ["f.txt"]


def test_read_handle_keeps_its_version(mount: Mount) -> None:
    small, large = b"small original " * 100, os.urandom(9 << 20)
    mount.store.put("small.bin", small)
    mount.store.put("large.bin", large)
    time.sleep(1.2)  # past the metadata TTL: opens see the objects
    with open(mount.path / "small.bin", "rb") as s, open(mount.path / "large.bin", "rb") as g:
        assert s.read(10) == small[:10]
        assert g.read(4096) == large[:4096]
        mount.store.put("small.bin", b"replaced")
        mount.store.put("large.bin", b"replaced too")
        assert s.read() == small[10:]
        g.seek(8 << 20)
        assert g.read() == large[8 << 20:]
    time.sleep(1.2)
    assert (mount.path / "small.bin").read_bytes() == b"replaced"  # a new open: the new one


def test_metadata_changes_make_one_version_per_flush(mount: Mount) -> None:
    f = mount.path / "m.txt"
    with open(f, "wb") as out:
        out.write(b"content")
    os.chmod(f, 0o600)
    os.utime(f, (1_700_000_000, 1_700_000_000))
    mount.sync()
    assert mount.store.versions("m.txt") == 1  # the write and both changes: one upload
    os.chmod(f, 0o640)
    os.utime(f, (1_700_000_100, 1_700_000_100))
    os.chmod(f, 0o644)
    mount.sync()
    assert mount.store.versions("m.txt") == 2
    stored = mount.store.must_get("m.txt")
    assert stored.body == b"content" and int(stored.metadata["mode"]) & 0o777 == 0o644


@pytest.fixture
def unversioned_mount(s3_endpoint: str, s3_client: Any, tmp_path: Path) -> Iterator[Mount]:
    name = f"zonefs-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    m = Mount("s3", f"s3://{name}", tmp_path / "mnt", tmp_path / "cache",
              S3Store(s3_client, name), endpoint_url=s3_endpoint)
    try:
        m.start()
        yield m
    finally:
        m.cleanup()
        empty_bucket(s3_client, name)
        s3_client.delete_bucket(Bucket=name)


def test_unversioned_bucket_shows_the_current_version_only(unversioned_mount: Mount) -> None:
    m = unversioned_mount
    write_version(m, "u.txt", b"one")
    write_version(m, "u.txt", b"two")
    entries = os.listdir(versions_dir(m, "u.txt"))
    assert len(entries) == 1 and entries[0].endswith("_null")
    assert (versions_dir(m, "u.txt") / entries[0]).read_bytes() == b"two"
    for args in (["restore", "--version", "null"], ["undelete"]):
        proc = zonefs_cli(args[0], str(m.path / "u.txt"), *args[1:], check=False)
        assert proc.returncode == 1 and "versioning is not enabled" in proc.stderr
    (m.path / "u.txt").unlink()
    m.sync()
    time.sleep(1.2)  # history views, like listings, refresh within the metadata TTL
    assert not (versions_dir(m, "")).joinpath("u.txt").exists()  # deletes are permanent here


@pytest.mark.parametrize("mount", ["local"], indirect=True)
def test_suspended_local_zone_keeps_older_versions(mount: Mount) -> None:
    write_version(mount, "s.txt", b"kept from before")
    mount.store.remote.set_versioning("suspended")  # type: ignore[attr-defined]
    write_version(mount, "s.txt", b"null one")
    write_version(mount, "s.txt", b"null two")  # replaces the null version
    entries = os.listdir(versions_dir(mount, "s.txt"))
    assert len(entries) == 2 and entries[0].endswith("_null")
    assert [(versions_dir(mount, "s.txt") / e).read_bytes() for e in entries] == [
        b"null two", b"kept from before"]
    older = entries[1].split("_", 1)[1]
    zonefs_cli("restore", str(mount.path / "s.txt"), "--version", older)
    assert (mount.path / "s.txt").read_bytes() == b"kept from before"
