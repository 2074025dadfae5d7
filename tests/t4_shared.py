"""Many mounts, one zone (t4): two real mounts of the same zone with their own cache dirs, as
two machines would have them.

`open(O_CREAT|O_EXCL)` and `mkdir` are exclusive across the mounts where the store enforces
conditional creates (the probe's answer): of two mounts racing for a name, exactly one wins and
the other gets EEXIST.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mounts import Mount


@contextlib.contextmanager
def second_mount(mount: Mount, tmp_path: Path) -> Iterator[Mount]:
    """Another mount of `mount`'s zone, with its own mount point and cache dir."""
    other = Mount(mount.kind, mount.zone_url, tmp_path / "mnt-2", tmp_path / "cache-2",
                  mount.store, endpoint_url=mount.endpoint_url, options=dict(mount.options))
    try:
        other.start()
        yield other
    finally:
        other.cleanup()


def race(first: Callable[[], None], second: Callable[[], None]) -> list[int]:
    """Run both at once (released together); the errno each failed with, 0 for success."""
    start = threading.Barrier(2)
    results = [0, 0]

    def run(i: int, fn: Callable[[], None]) -> None:
        start.wait()
        try:
            fn()
        except OSError as exc:
            results[i] = exc.errno or -1

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate((first,
                                                                                  second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def exclusive_create(path: Path, text: bytes) -> Callable[[], None]:
    def create() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
    return create


def _exclusive_across_mounts(mount: Mount) -> None:
    if not mount.status()["exclusive_creates"]["across_mounts"]:
        pytest.skip("the store does not enforce conditional creates (the probe's answer)")


def test_o_excl_races_between_two_mounts_have_one_winner(mount: Mount, tmp_path: Path) -> None:
    """100 races of `open(O_CREAT|O_EXCL)` between two mounts: each has exactly one winner,
    the other gets EEXIST, and the winner's bytes are the file's."""
    _exclusive_across_mounts(mount)
    with second_mount(mount, tmp_path) as other:
        assert other.status()["exclusive_creates"]["across_mounts"]
        for i in range(100):
            got = race(exclusive_create(mount.path / f"lock{i}", b"a"),
                       exclusive_create(other.path / f"lock{i}", b"b"))
            assert sorted(got) == [0, errno.EEXIST], (i, got)
            winner = b"a" if got[0] == 0 else b"b"
            assert (other.path / f"lock{i}").read_bytes() in (b"", winner)
        mount.sync()
        other.sync()
        for i in range(100):
            assert mount.store.must_get(f"lock{i}").body in (b"a", b"b")


def test_mkdir_races_between_two_mounts_have_one_winner(mount: Mount, tmp_path: Path) -> None:
    """100 races of `mkdir` between two mounts: each has exactly one winner, the other gets
    EEXIST (where the store keeps a marker's headers: the probe's dir_markers=kept)."""
    if not mount.status()["exclusive_creates"]["mkdir_across_mounts"]:
        pytest.skip("mkdir is exclusive on each mount only here (the probe's answers)")
    with second_mount(mount, tmp_path) as other:
        for i in range(100):
            got = race(lambda i=i: os.mkdir(mount.path / f"dir{i}"),
                       lambda i=i: os.mkdir(other.path / f"dir{i}"))
            assert sorted(got) == [0, errno.EEXIST], (i, got)
        for i in range(100):
            assert mount.store.get(f"dir{i}/") is not None
