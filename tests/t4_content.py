"""Real mounts (t4): the content identity a user can see — `user.zonefs.*` extended attributes,
`zonefs info` and `zonefs cat sha1://…` — against an S3 bucket and an embedded local zone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest
from mounts import Mount, fuse_unavailable_reason, subprocess_env, zonefs_cli

pytestmark = pytest.mark.skipif(
    fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason())
)

def xattrs(path: os.PathLike[str] | str) -> dict[str, str]:
    return {
        name.removeprefix("user.zonefs."): os.getxattr(path, name).decode()
        for name in os.listxattr(path)
    }


def test_xattrs_of_a_pending_then_uploaded_file(mount: Mount) -> None:
    body = b"hello kachery\n"
    f = mount.path / "dir name" / "k ü.txt"
    f.parent.mkdir()
    f.write_bytes(body)
    sha1, sha256 = hashlib.sha1(body).hexdigest(), hashlib.sha256(body).hexdigest()

    pending = xattrs(f)
    assert pending["sha1"] == sha1 and pending["sha256"] == sha256
    assert pending["state"] in ("dirty", "uploading")
    assert pending["uri"] == f"sha1://{sha1}?label=k%20%C3%BC.txt"
    assert "etag" not in pending  # no object yet

    mount.sync()
    clean = xattrs(f)
    assert clean["state"] == "clean" and clean["sha256"] == sha256
    stored = mount.store.must_get("dir name/k ü.txt")
    assert stored.metadata["zonefs-sha1"] == sha1
    assert set(clean) >= {"etag", "sha1", "sha256", "state", "uri"}
    if mount.kind == "local":  # the embedded zone always keeps versions
        assert clean["version_id"]
    # A directory carries none, and nothing else can be set.
    assert os.listxattr(mount.path / "dir name") == []
    with pytest.raises(OSError) as err:
        os.getxattr(f, "user.zonefs.nothing")
    assert err.value.errno == errno.ENODATA
    # No labels and no ACLs: said so, so that `ls -l` stops asking for every file.
    for name in ("security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as err:
            os.getxattr(f, name)
        assert err.value.errno in (errno.ENOTSUP, errno.EOPNOTSUPP), name
    with pytest.raises(OSError) as err:
        os.setxattr(f, "user.zonefs.sha1", b"forged")
    assert err.value.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)


def test_info_of_an_object_written_by_another_tool(mount: Mount) -> None:
    body = b"written elsewhere\n" * 100
    mount.store.put("other.bin", body)
    info = json.loads(zonefs_cli("info", str(mount.path / "other.bin")).stdout)
    sha1 = hashlib.sha1(body).hexdigest()
    assert info["size"] == len(body)
    assert info["sha1"] == sha1 and info["sha256"] == hashlib.sha256(body).hexdigest()
    assert info["uri"] == f"sha1://{sha1}?label=other.bin"
    assert info["objectKey"].endswith("other.bin")
    assert info["bucketUri"].endswith("/other.bin")
    assert info["state"] == "clean" and info["etag"]
    assert info["cached"] is True  # hashing it downloaded it once into the blob cache


def test_info_outside_a_mount_and_of_a_directory(mount: Mount, tmp_path: os.PathLike[str]) -> None:
    out = zonefs_cli("info", str(tmp_path), check=False)
    assert out.returncode == 2 and "is not in a zonefs mount" in out.stderr
    (mount.path / "d").mkdir()
    out = zonefs_cli("info", str(mount.path / "d"), check=False)
    assert out.returncode == 1 and "not a regular file" in out.stderr
    assert "Traceback" not in out.stderr


def test_cat_by_content_uri(mount: Mount) -> None:
    body = os.urandom(300_000)
    (mount.path / "data.bin").write_bytes(body)
    mount.sync()
    uri = os.getxattr(mount.path / "data.bin", "user.zonefs.uri").decode()
    assert _cat_bytes(uri) == body
    missing = zonefs_cli("cat", "sha1://" + "0" * 40, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"zonefs: no mounted zone knows sha1 {'0' * 40}"
    bad = zonefs_cli("cat", "sha256://abc", check=False)
    assert bad.returncode == 2 and "not a content URI" in bad.stderr


def _cat_bytes(uri: str) -> bytes:
    proc = subprocess.run([sys.executable, "-m", "zonefs", "cat", uri], capture_output=True,
                          timeout=60, env=subprocess_env(), stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.mount_options(writeback_delay="60", cache_size="2M")
def test_dirty_data_waits_for_uploads_at_the_cache_cap(mount: Mount) -> None:
    """Writing 3× the cap with a long write-back delay: writes wait for uploads, none fails,
    and dirty data never passes the cap between files."""
    cap = 2 << 20
    bodies = {f"f{i}.bin": os.urandom(1_000_000) for i in range(6)}
    for name, body in bodies.items():
        (mount.path / name).write_bytes(body)
        assert mount.status()["dirty_bytes"] <= cap
    mount.sync()
    for name, body in bodies.items():
        assert mount.store.must_get(name).body == body
        assert (mount.path / name).read_bytes() == body


@pytest.mark.mount_options(kachery_mirror="")
def test_kachery_mirror_key(mount: Mount) -> None:
    body = b"mirrored for kachery clients\n"
    (mount.path / "a.txt").write_bytes(body)
    (mount.path / "same.txt").write_bytes(body)
    mount.sync()
    sha1 = hashlib.sha1(body).hexdigest()
    mirror = f"sha1/{sha1[0:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
    assert mount.store.must_get(mirror).body == body
    assert mount.store.versions(mirror) == 1  # the same content is mirrored once
    assert mount.store.must_get("a.txt").body == body


@pytest.mark.mount_options(writeback_delay="60", cache_size="2M")
def test_clean_blobs_make_room_for_dirty_data_under_one_cap(mount: Mount) -> None:
    cap = 2 << 20
    clean = os.urandom(1_500_000)
    mount.store.put("clean.bin", clean)
    assert (mount.path / "clean.bin").read_bytes() == clean  # now a cached blob
    (mount.path / "dirty.bin").write_bytes(os.urandom(1_500_000))
    status = mount.status()
    assert status["dirty_bytes"] == 1_500_000
    assert status["cache"]["cached_bytes"] + status["dirty_bytes"] <= cap
    assert (mount.path / "clean.bin").read_bytes() == clean  # downloaded again if evicted
