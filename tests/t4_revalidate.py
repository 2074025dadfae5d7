"""Real mounts (t4): names stat'ed again once the metadata TTL has passed, as `git status` does
in a checkout, show what another writer changed, deleted and added, and the mount revalidates
each directory with one LIST of it rather than one per name.

Runs against an S3 bucket on the test endpoint and an embedded local zone (the `mount`
fixture); the other writer is boto3 (or the local zone's own store)."""

from __future__ import annotations

import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor

from mounts import METADATA_TTL, Mount, needs_fuse

pytestmark = needs_fuse

DIRS = [f"src/d{d}" for d in range(10)]
FILES = [f"{d}/f{f:02d}.c" for d in DIRS for f in range(30)]


def lstat_all(mount: Mount, paths: list[str]) -> dict[str, int | None]:
    """What `git status` does: lstat every tracked path from several threads, then read every
    directory for untracked files. path -> size (None: ENOENT), and the names seen."""

    def one(path: str) -> tuple[str, int | None]:
        try:
            return path, os.lstat(mount.path / path).st_size
        except OSError as exc:
            assert exc.errno == errno.ENOENT, exc
            return path, None

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, paths))


def walk(mount: Mount) -> set[str]:
    return {os.path.relpath(os.path.join(top, name), mount.path)
            for top, _, files in os.walk(mount.path) for name in files}


def test_stats_after_the_ttl_show_another_writers_changes_with_one_list_per_directory(
        mount: Mount) -> None:
    mount.store.put_many({path: path.encode() for path in FILES})
    # The first `git status`: every directory read, every file stat'ed.
    assert walk(mount) == set(FILES)
    assert lstat_all(mount, FILES) == {p: len(p) for p in FILES}

    mount.store.put("src/d1/f01.c", b"changed by another writer")
    mount.store.delete("src/d2/f02.c")
    mount.store.put("src/d3/new.c", b"added")
    time.sleep(METADATA_TTL + 0.5)

    before = mount.status()["requests"].get("list", 0)
    got = lstat_all(mount, FILES + ["src/d3/new.c"])
    after = mount.status()["requests"].get("list", 0)
    expected: dict[str, int | None] = {p: len(p) for p in FILES}
    expected.update({"src/d1/f01.c": len(b"changed by another writer"), "src/d2/f02.c": None,
                     "src/d3/new.c": len(b"added")})
    assert got == expected
    # One LIST per directory (and of `src` and the root, whose names are looked up too),
    # where it used to be one per name: 300 here.
    assert after - before <= len(DIRS) + 2, after - before
    assert walk(mount) == set(FILES) - {"src/d2/f02.c"} | {"src/d3/new.c"}
    assert (mount.path / "src/d1/f01.c").read_bytes() == b"changed by another writer"
    assert (mount.path / "src/d3/new.c").read_bytes() == b"added"
