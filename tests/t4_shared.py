"""Many mounts, one zone (t4): two and three real mounts of the same zone with their own cache
dirs, as machines would have them.

- A change made through one mount shows on the others long before `metadata_ttl` (here 60 s)
  would let them ask the store again: the change log (core/changelog.py) tells them, and
  they drop what they and the kernel cache of it.
- `open(O_CREAT|O_EXCL)` and `mkdir` are exclusive across the mounts where the store enforces
  conditional creates (the probe's answer): of two mounts racing for a name, exactly one wins
  and the other gets EEXIST.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO

import pytest
from mounts import Mount, second_mount


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


#: How long a change may take to show on another mount in these tests: well inside the
#: metadata_ttl they mount with (60 s), so only the change log can have told them.
SHOWS_WITHIN = 20.0


def _seen(check: Callable[[], bool]) -> float:
    """Seconds until `check()` holds (polled every 10 ms); fails after SHOWS_WITHIN."""
    start = time.monotonic()
    while not check():
        waited = time.monotonic() - start
        assert waited < SHOWS_WITHIN, "not seen within the change log's time"
        time.sleep(0.01)
    return time.monotonic() - start


def _reads(path: Path, body: bytes | None) -> Callable[[], bool]:
    """Whether `path` reads `body` now (None: whether it is gone), as `cat` and `ls` see."""
    def check() -> bool:
        try:
            listed = path.name in os.listdir(path.parent)
        except FileNotFoundError:
            listed = False
        try:
            got: bytes | None = path.read_bytes()
        except FileNotFoundError:
            got = None
        return got == body and listed == (body is not None)
    return check


@pytest.mark.mount_options(metadata_ttl="60")
def test_changes_show_on_other_mounts_long_before_the_ttl(mount: Mount, tmp_path: Path) -> None:
    """Files created, rewritten, renamed and deleted through one mount show on two others
    (`ls`, `stat`, `cat`: the new bytes) within seconds, though each of them had the old
    state cached (for metadata_ttl=60 s, in its own caches and in the kernel's)."""
    with second_mount(mount, tmp_path) as b, second_mount(mount, tmp_path, "3") as c:
        others = (b, c)
        times: dict[str, list[float]] = {}

        def change(kind: str, act: Callable[[], None], *shows: tuple[str, bytes | None]) -> None:
            for other in others:  # what they cache before the change
                for name, _ in shows:
                    with contextlib.suppress(FileNotFoundError):
                        (other.path / name).read_bytes()
                    os.listdir(other.path)
            act()
            for other in others:
                for name, body in shows:
                    times.setdefault(kind, []).append(_seen(_reads(other.path / name, body)))

        for i in range(3):
            new, renamed = mount.path / f"f{i}", mount.path / f"g{i}"
            change("create", partial(new.write_bytes, b"one"), (f"f{i}", b"one"))
            change("rewrite", partial(new.write_bytes, b"two, longer"),
                   (f"f{i}", b"two, longer"))
            change("rename", partial(new.rename, renamed), (f"f{i}", None),
                   (f"g{i}", b"two, longer"))
            change("delete", renamed.unlink, (f"g{i}", None))
        mkdir = mount.path / "d"
        change("mkdir", lambda: (mkdir.mkdir(), (mkdir / "x").write_bytes(b"x")),
               ("d/x", b"x"))
        for other in others:
            assert other.status()["changes"]["other_mounts"] == 2
        print({kind: round(max(t), 2) for kind, t in times.items()})


@pytest.mark.mount_options(metadata_ttl="60")
def test_tail_f_on_one_mount_follows_appends_made_through_another(mount: Mount,
                                                                  tmp_path: Path) -> None:
    """A `tail -f` started on one mount prints the lines another mount appends to the file,
    each within seconds: its open file follows the file into each newer version that begins
    with the bytes it read."""
    log_file = mount.path / "app.log"
    log_file.write_bytes(b"line 0\n")
    mount.sync()
    with second_mount(mount, tmp_path) as other:
        tail = subprocess.Popen(["tail", "-n", "+1", "-s", "0.2", "-f",
                                 str(other.path / "app.log")], stdout=subprocess.PIPE,
                                bufsize=0)
        try:
            assert tail.stdout is not None
            lines = _lines(tail.stdout)
            assert next(lines) == b"line 0\n"
            for i in range(1, 4):
                with open(log_file, "ab") as out:
                    out.write(b"line %d\n" % i)
                try:
                    got = next(lines)
                except AssertionError as exc:
                    seen = (other.path / "app.log").read_bytes()
                    raise AssertionError(f"line {i} not printed; the other mount reads "
                                         f"{seen!r}; its change log: "
                                         f"{other.status()['changes']}") from exc
                assert got == b"line %d\n" % i
        finally:
            tail.kill()
            tail.wait()


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of `stream`, each awaited for SHOWS_WITHIN at most."""
    # poll(), not select(): a whole test run can hold descriptors past select's limit.
    poller = select.poll()
    poller.register(stream, select.POLLIN)
    while True:
        assert poller.poll(SHOWS_WITHIN * 1000), "no line within the change log's time"
        yield stream.readline()
