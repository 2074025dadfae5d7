"""Failure (t5): two mounts of one bucket writing the same file. Nothing is lost: the upload
that would replace a version it did not start from keeps its bytes as
`<name>.conflict-<UTC time>` beside the file, and says so — with conditional writes, and with
them switched off (compare, then put)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mounts import Mount, S3Store, fuse_unavailable_reason

pytestmark = pytest.mark.skipif(
    fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason())
)


@pytest.fixture(params=["conditional", "compare-then-put"])
def two_mounts(request: pytest.FixtureRequest, s3_endpoint: str, bucket: str,
               s3_client: Any, tmp_path: Path) -> Iterator[tuple[Mount, Mount]]:
    options = {} if request.param == "conditional" else {"conditional_writes": "not-implemented"}
    mounts = [Mount("s3", f"s3://{bucket}", tmp_path / f"mnt-{n}", tmp_path / f"cache-{n}",
                    S3Store(s3_client, bucket), endpoint_url=s3_endpoint, options=dict(options))
              for n in ("a", "b")]
    try:
        for m in mounts:
            m.start()
        yield mounts[0], mounts[1]
    finally:
        for m in mounts:
            m.cleanup()


def conflicts(m: Mount, name: str) -> list[str]:
    return sorted(m.store.keys(f"{name}.conflict-"))


@pytest.mark.expect_log("conflict: 'f.txt' was changed in the bucket by another writer")
def test_concurrent_edits_keep_both(two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    (a.path / "f.txt").write_bytes(b"base\n")
    a.sync()
    time.sleep(1.2)  # past B's metadata TTL
    assert (b.path / "f.txt").read_bytes() == b"base\n"
    with open(b.path / "f.txt", "r+b") as fb:  # B's edit starts from "base"
        (a.path / "f.txt").write_bytes(b"from A\n")
        a.sync()
        fb.write(b"from B\n")
    b.sync()
    assert b.store.must_get("f.txt").body == b"from A\n"  # B did not overwrite A's version
    [copy] = conflicts(b, "f.txt")
    assert b.store.must_get(copy).body == b"from B\n"
    assert copy.removeprefix("f.txt.conflict-").endswith("Z")
    log = b.daemon_log()
    assert "conflict" in log and "f.txt" in log and copy in log
    time.sleep(1.2)
    assert (b.path / "f.txt").read_bytes() == b"from A\n"
    assert (b.path / copy).read_bytes() == b"from B\n"


@pytest.mark.parametrize("two_mounts", ["conditional"], indirect=True)
@pytest.mark.expect_log("conflict: 'new.txt' was changed in the bucket by another writer")
def test_two_new_files_of_one_name_keep_both(two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    b.remount(options={"writeback_delay": "30"})
    (b.path / "new.txt").write_bytes(b"B was first to write, last to upload\n")
    (a.path / "new.txt").write_bytes(b"A uploaded first\n")
    a.sync()
    b.sync()
    assert b.store.must_get("new.txt").body == b"A uploaded first\n"
    [copy] = conflicts(b, "new.txt")
    assert b.store.must_get(copy).body == b"B was first to write, last to upload\n"


def test_sequential_edits_are_no_conflict(two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    for n in range(3):
        for m in (a, b):
            time.sleep(1.2)
            (m.path / "turns.txt").write_bytes(f"{m.path.name} {n}\n".encode())
            m.sync()
    assert b.store.must_get("turns.txt").body == b"mnt-b 2\n"
    assert conflicts(b, "turns.txt") == []
