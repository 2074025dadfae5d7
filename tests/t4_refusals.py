"""A change the store refuses for good (t4, real mounts): `zonefs sync` and `zonefs umount`
return within seconds naming it, `zonefs status` lists it, its bytes stay readable through the
mount and in the journal, and it is tried again when it changes or at the next mount.

The refusal is a real one: the local zone, like S3, refuses keys longer than 1024 bytes
(KeyTooLongError), and a path of four 200-byte directories and a 255-byte name is one.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from mounts import Mount, alive, is_mounted, needs_fuse, wait_for, zonefs_cli

pytestmark = needs_fuse

#: `zonefs sync` or `umount` with a refused change answers within this (issue 14).
DEADLINE = 10.0
DIRS = ["d" * 199 + str(n) for n in range(4)]  # 4 × 200 bytes: their markers are taken
NAME = "€" * 85  # 255 bytes, as long as a name may be; its key is 1059 bytes
LONG = "/".join([*DIRS, NAME])
BODY = b"kept while the store refuses it\n"


def write_refused_file(mount: Mount) -> None:
    assert len(LONG.encode()) > 1024
    (mount.path / os.path.dirname(LONG)).mkdir(parents=True)
    (mount.path / LONG).write_bytes(BODY)
    (mount.path / "ok.txt").write_bytes(b"taken\n")


def timed_cli(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = zonefs_cli(*args, timeout=DEADLINE + 20, check=False)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


@pytest.mark.parametrize("mount", ["local"], indirect=True)
@pytest.mark.expect_log(
    r"write-back: the store refused '.*' \(KeyTooLongError: ",
    r"unmount: '.*' is not in the bucket: the store refused it \(KeyTooLongError: ",
)
def test_sync_and_umount_name_a_refused_change_and_keep_it(mount: Mount) -> None:
    write_refused_file(mount)

    code, out, seconds = timed_cli("sync", str(mount.path))
    assert code == 1 and seconds < DEADLINE, (code, seconds, out)
    assert f"zonefs: {LONG}: refused by the store: KeyTooLongError: " in out, out
    # Everything else is in the bucket; the refused file's bytes read back through the mount.
    assert mount.store.must_get("ok.txt").body == b"taken\n"
    assert mount.store.get("/".join(DIRS) + "/") is not None
    assert mount.store.keys(DIRS[0] + "/") == [
        "/".join(DIRS[:n]) + "/" for n in range(1, len(DIRS) + 1)]
    assert (mount.path / LONG).read_bytes() == BODY

    status = mount.status()
    assert [(r["path"], r["answer"].split(":")[0]) for r in status["refused"]] == [
        (LONG, "KeyTooLongError")]
    assert status["writeback"]["refused"] == 1 and status["dirty_files"] == 1
    text = zonefs_cli("status", str(mount.path)).stdout
    assert f"refused      {LONG}: KeyTooLongError" in text, text

    # Unmounting would leave the change in the cache alone: the mount stays, and says why.
    code, out, seconds = timed_cli("umount", str(mount.path))
    assert code == 1 and seconds < DEADLINE, (code, seconds, out)
    assert f"{LONG}: refused by the store: KeyTooLongError" in out and "--lazy" in out, out
    assert is_mounted(mount.path)
    assert (mount.path / LONG).read_bytes() == BODY

    # A change is tried again: renamed to a name the store takes, it is uploaded.
    (mount.path / LONG).rename(mount.path / "short.txt")
    mount.sync(timeout=DEADLINE + 20)
    assert mount.store.must_get("short.txt").body == BODY
    assert mount.status()["refused"] == []
    log = mount.daemon_log()
    assert log.count(f"the store refused {LONG!r}") == 1, log  # logged once


@pytest.mark.parametrize("mount", ["local"], indirect=True)
@pytest.mark.expect_log(
    r"write-back: the store refused '.*' \(KeyTooLongError: ",
    r"unmount: '.*' is not in the bucket: the store refused it \(KeyTooLongError: ",
)
def test_sigterm_keeps_a_refused_change_for_the_next_mount(mount: Mount) -> None:
    write_refused_file(mount)
    assert wait_for(lambda: mount.status()["refused"], DEADLINE)
    pid = mount.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # what `systemctl stop` does
    assert wait_for(lambda: not alive(pid), DEADLINE), "the daemon did not exit on SIGTERM"
    assert not is_mounted(mount.path)
    mount.pid = None
    assert mount.store.must_get("ok.txt").body == b"taken\n"
    log = mount.daemon_log()
    assert f"{LONG!r} is not in the bucket: the store refused it (KeyTooLongError" in log, log

    # The journal kept it: the next mount tries it again (refused again) and still has the bytes.
    mount.start()
    assert wait_for(lambda: mount.status()["refused"], DEADLINE)
    assert (mount.path / LONG).read_bytes() == BODY
    (mount.path / LONG).unlink()  # given up: nothing is left to upload, the mount can go
    mount.sync(timeout=DEADLINE + 20)
    assert mount.status()["refused"] == []
    assert [k for k in mount.store.keys("") if k.endswith(NAME)] == []

