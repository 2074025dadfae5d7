"""The change log through the core (`Vfs`), two mounts of one zone (two cache dirs): what one
writes, the other forgets it cached as soon as it lists the records (core/changelog.py).

Records are hints: hostile or missing ones cost freshness (a resync), never a wrong answer or
a crash; idle mounts make one request per poll; records do not pile up in the store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from vfs_harness import Env, drain, read_file, write_file

from zonefs.common.errors import NotFound
from zonefs.core import changelog
from zonefs.core.changelog import PREFIX

if TYPE_CHECKING:
    from zonefs.core.vfs import Vfs

#: A poll interval fast enough for tests (the option's lowest).
POLL = 0.2


@asynccontextmanager
async def two_mounts(env: Env, tmp_path: Path) -> AsyncIterator[tuple[Vfs, Vfs]]:
    """Two running cores on `env`'s zone with their change logs running, TTL 30 s."""
    other = replace(env, cache_dir=tmp_path / "other-cache")
    other.cache_dir.mkdir()
    async with env.vfs(change_poll=POLL) as a, other.vfs(change_poll=POLL) as b, \
            trio.open_nursery() as nursery:
        await nursery.start(a.changes.run)
        await nursery.start(b.changes.run)
        yield a, b
        nursery.cancel_scope.cancel()


async def eventually(check: object, what: str, *, within: float = 10.0) -> None:
    """Await `check()` (an async callable returning bool) until it holds."""
    with trio.move_on_after(within):
        while not await check():  # type: ignore[operator]
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what}: not within {within} s")


def record_keys(keys: set[str]) -> list[str]:
    return sorted(k for k in keys if k.startswith(PREFIX))


async def test_what_one_mount_writes_the_other_forgets_it_cached(env: Env,
                                                                 tmp_path: Path) -> None:
    """B caches a file's bytes, a missing name and a listing (for 30 s); A rewrites the file,
    creates the name and removes another: B shows each within a few polls."""
    async with two_mounts(env, tmp_path) as (a, b):
        await write_file(a, "f", b"old")
        await write_file(a, "gone", b"x")
        await drain(a)
        await eventually(lambda: _reads(b, "f", b"old"), "the first upload")
        with pytest.raises(NotFound):
            await b.stat("new")
        assert await _lists(b, ["f", "gone"])

        await write_file(a, "f", b"new, and longer")
        await write_file(a, "new", b"n")
        await a.unlink("gone")
        await drain(a)
        await eventually(lambda: _reads(b, "f", b"new, and longer"), "the rewrite")
        await eventually(lambda: _reads(b, "new", b"n"), "the create")
        await eventually(lambda: _lists(b, ["f", "new"]), "the delete")
        assert b.changes.stats.records_read >= 1
        assert b.status()["changes"]["other_mounts"] == 1


async def _reads(vfs: Vfs, path: str, body: bytes) -> bool:
    try:
        return await read_file(vfs, path) == body
    except NotFound:
        return False


async def _lists(vfs: Vfs, names: list[str]) -> bool:
    return sorted(name for name, _ in await vfs.listdir("")) == names


async def test_hostile_records_are_ignored(env: Env, tmp_path: Path) -> None:
    """Records that are not JSON, name keys outside the tree, or have odd keys of their own
    are skipped; the mount goes on applying the good ones."""
    async with two_mounts(env, tmp_path) as (a, b):
        await write_file(a, "f", b"one")
        await drain(a)
        await eventually(lambda: _reads(b, "f", b"one"), "the first upload")
        writer = "0123456789abcdef"
        bodies = [b"not json", b"[]", json.dumps({"keys": [1, None, "../x", ".zonefs/x", "",
                                                          "a//b", "ok"],
                                                 "trees": [{"x": 1}, "/abs"]}).encode()]
        for seq, body in enumerate(bodies, start=1):
            await env.store.remote.put_bytes(f"{PREFIX}{writer}/{seq:012d}", body, {})
        await env.store.remote.put_bytes(f"{PREFIX}{writer}/not-a-seq", b"{}", {})
        await env.store.remote.put_bytes(f"{PREFIX}short/000000000001", b"{}", {})
        await b.changes.poll()  # sees the new writer: from now on its records apply
        await env.store.remote.put_bytes(f"{PREFIX}{writer}/{4:012d}", bodies[2], {})
        await b.changes.poll()
        assert b.changes.stats.resyncs == 0
        await write_file(a, "f", b"two")
        await drain(a)
        await eventually(lambda: _reads(b, "f", b"two"), "a good record after them")


async def test_records_removed_unread_make_the_mount_ask_again(env: Env,
                                                               tmp_path: Path) -> None:
    """A gap in a mount's records (removed before this one read them): everything cached is
    asked again (a resync), so nothing stale stays."""
    async with two_mounts(env, tmp_path) as (a, b):
        await write_file(a, "f", b"one")
        await drain(a)
        await eventually(lambda: _reads(b, "f", b"one"), "the first upload")
        # A record of A's that B will never read: written and removed between two polls.
        b_poll = b.changes.poll_interval
        b.changes.poll_interval = 3600.0
        await trio.sleep(2 * POLL)
        await a.changes._write(json.dumps({"v": 1, "keys": ["f"], "trees": []}).encode())
        lost = a.changes._mine[-1]
        await a.changes._remove(lost.key, lost.version_id)
        await env.store.put("f", b"changed by another tool")
        await a.changes._write(b"")  # a later record: the gap shows
        b.changes.poll_interval = b_poll
        await b.changes.poll()
        assert b.changes.stats.resyncs == 1
        assert await read_file(b, "f") == b"changed by another tool"


async def test_idle_mounts_make_one_request_per_poll_and_records_do_not_pile_up(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle, each mount makes one change-log request per poll, heartbeats included; records
    older than RETAIN go (all but the newest), and heartbeats are never read by the others."""
    await _idle_and_pile_up(env, tmp_path, monkeypatch)


@pytest.mark.unversioned_on_moto
async def test_records_do_not_pile_up_in_an_unversioned_bucket(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same in a bucket without versioning (records are removed by key, not version)."""
    if env.kind != "s3" or await env.store.remote.bucket_versioning() == "enabled":
        pytest.skip("needs an unversioned bucket (the tests' own moto)")
    await _idle_and_pile_up(env, tmp_path, monkeypatch)


async def _idle_and_pile_up(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(changelog, "RETAIN", 1.0)
    monkeypatch.setattr(changelog, "HEARTBEAT", 1.0)
    async with two_mounts(env, tmp_path) as (a, b):
        for i in range(5):
            await write_file(a, f"f{i}", b"x")
            await drain(a)
            await trio.sleep(0.1)
        await trio.sleep(1.5)  # the records get old
        before = {kind: n for kind, n in b.remote.requests.counts.items()
                  if kind.startswith("changes-")}
        gets = b.remote.requests.counts.get("changes-get", 0)
        started = trio.current_time()
        await trio.sleep(2.5)
        took = trio.current_time() - started
        after = {kind: n for kind, n in b.remote.requests.counts.items()
                 if kind.startswith("changes-")}
        made = sum(after.values()) - sum(before.values())
        assert made <= took / POLL + 1, (before, after)
        assert b.remote.requests.counts.get("changes-get", 0) == gets  # heartbeats only
        assert b.changes.stats.records_written >= 3  # its own heartbeats
        # Each mount keeps its newest record only, once the others are old.
        left = record_keys(await env.store.keys(PREFIX))
        assert len(left) == 2, left


async def test_a_mount_without_the_right_to_write_records_still_watches(
        env: Env, tmp_path: Path) -> None:
    """A read-only mount writes no records, and still hears of the others' changes."""
    other = replace(env, cache_dir=tmp_path / "other-cache")
    other.cache_dir.mkdir()
    async with env.vfs(change_poll=POLL) as a, other.vfs(change_poll=POLL, read_only=True) as b, \
            trio.open_nursery() as nursery:
        await nursery.start(a.changes.run)
        await nursery.start(b.changes.run)
        await write_file(a, "f", b"one")
        await drain(a)
        await eventually(lambda: _reads(b, "f", b"one"), "the first upload")
        await write_file(a, "f", b"two")
        await drain(a)
        await eventually(lambda: _reads(b, "f", b"two"), "the rewrite")
        assert b.changes.stats.records_written == 0
        assert b.remote.requests.counts.get("changes-put", 0) == 0
        nursery.cancel_scope.cancel()


async def test_records_of_a_mount_gone_silent_are_removed_by_the_others(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount that stopped (or crashed) leaves its newest records; once they are older than
    STALE (by the store's clock) the others remove them."""
    monkeypatch.setattr(changelog, "STALE", 2.0)
    monkeypatch.setattr(changelog, "HEARTBEAT", 1.0)
    gone = f"{PREFIX}fedcba9876543210/{1:012d}"
    await env.store.remote.put_bytes(gone, b"", {})
    async with two_mounts(env, tmp_path) as (a, _):
        assert gone in await env.store.keys(PREFIX)

        async def removed() -> bool:
            return gone not in await env.store.keys(PREFIX)

        await eventually(removed, "the stale record's removal")
        assert len(record_keys(await env.store.keys(PREFIX))) >= 2  # the live mounts' own
        assert a.changes.stats.resyncs == 0
