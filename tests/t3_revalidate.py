"""Names looked up again once the metadata TTL has passed: a directory the mount listed is
revalidated with one LIST of it, not one per name (`git status` in a checkout), and what that
listing brings never wins over what the mount knows better (pending rows and deletes, an
upload that landed while it was on its way); while the store cannot be reached the last known
answer stands.

The core runs without FUSE over a real zone (moto's S3 server over HTTP, and the embedded
local zone); requests are counted by the remote's own counter, or recorded by a wrapper
Remote. Each test ends with `check_invariants`."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
from vfs_harness import (
    HOLD,
    DelegatingRemote,
    Env,
    OutageRemote,
    check_invariants,
    drain,
    names,
    read_file,
    requests,
    write_file,
)

from zonefs.common.errors import NotFound
from zonefs.core import view
from zonefs.remote import ListPage, open_remote

TTL = 0.3
FILES = [f"f{i:02d}" for i in range(40)]


async def stat_all(vfs: Any, paths: list[str]) -> dict[str, int | None]:
    """Stat every path at once, as `git status` does from several threads: path -> size
    (None: not found)."""
    out: dict[str, int | None] = {}

    async def one(path: str) -> None:
        try:
            out[path] = (await vfs.stat(path)).size
        except NotFound:
            out[path] = None

    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(one, path)
    return out


async def seed(env: Env, directory: str, count: int = len(FILES)) -> None:
    async with trio.open_nursery() as nursery:
        for name in FILES[:count]:
            nursery.start_soon(env.store.put, f"{directory}/{name}", name.encode())


async def test_stats_past_the_ttl_cost_one_list_of_the_directory(env: Env) -> None:
    await seed(env, "src")
    await seed(env, "lib", 10)
    # The kernel looks up each component: the directories, then the names in them.
    paths = ["src", "lib"] + [f"src/{n}" for n in FILES] + [f"lib/{n}" for n in FILES[:10]]
    async with env.vfs(metadata_ttl=TTL) as vfs:
        # The first `git status` lists every directory.
        assert names(await vfs.listdir("")) == ["lib", "src"]
        assert names(await vfs.listdir("src")) == FILES
        assert names(await vfs.listdir("lib")) == FILES[:10]
        first = await stat_all(vfs, paths)
        assert first == {p: 0 if "/" not in p else 3 for p in paths}
        for _ in range(2):
            await trio.sleep(TTL + 0.1)
            lists, heads = requests(vfs, "list"), requests(vfs, "head")
            gets = requests(vfs, "get")
            assert await stat_all(vfs, paths) == first
            # One LIST per directory (and one of the root for `src` and `lib` themselves),
            # where each name used to cost one; headers come from the journal by ETag.
            assert requests(vfs, "list") - lists == 3
            assert requests(vfs, "get") == gets
            # Headers of directories with no marker: one HEAD each, as before.
            assert requests(vfs, "head") - heads <= 2
        await check_invariants(vfs)


async def test_revalidated_names_show_another_writers_changes(env: Env) -> None:
    await seed(env, "d", 10)
    async with env.vfs(metadata_ttl=TTL) as vfs:
        assert names(await vfs.listdir("d")) == FILES[:10]
        assert (await vfs.stat("d/f01")).size == 3
        await env.store.put("d/f01", b"grown by another writer")
        await env.store.remote.delete("d/f02")
        await env.store.put("d/new", b"added")
        await trio.sleep(TTL + 0.1)
        lists = requests(vfs, "list")
        got = await stat_all(vfs, ["d/f01", "d/f02", "d/new", "d/missing", "d/f03"])
        assert got == {"d/f01": len(b"grown by another writer"), "d/f02": None,
                       "d/new": len(b"added"), "d/missing": None, "d/f03": 3}
        assert requests(vfs, "list") - lists == 1
        # The negative answers stand for the TTL: no request for them.
        with pytest.raises(NotFound):
            await vfs.stat("d/missing")
        with pytest.raises(NotFound):
            await vfs.stat("d/f02")
        assert requests(vfs, "list") - lists == 1
        assert await read_file(vfs, "d/f01") == b"grown by another writer"
        assert await read_file(vfs, "d/new") == b"added"
        await check_invariants(vfs)


async def test_pending_rows_and_deletes_win_over_the_new_listing(env: Env) -> None:
    await seed(env, "d", 5)
    async with env.vfs(metadata_ttl=TTL, writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("d")) == FILES[:5]
        await write_file(vfs, "d/f00", b"local, not uploaded")
        await write_file(vfs, "d/local", b"new here")
        await vfs.unlink("d/f01")
        await trio.sleep(TTL + 0.1)
        got = await stat_all(vfs, ["d/f00", "d/local", "d/f01", "d/f02"])
        assert got == {"d/f00": len(b"local, not uploaded"), "d/local": len(b"new here"),
                       "d/f01": None, "d/f02": 3}
        assert names(await vfs.listdir("d")) == ["f00", "f02", "f03", "f04", "local"]
        await drain(vfs)
        assert await env.store.read("d/f00") == b"local, not uploaded"
        assert await env.store.head("d/f01") is None
        await check_invariants(vfs)


class GatedListRemote(DelegatingRemote):
    """Holds the answer to a LIST of `prefix` (delimited) once `armed`: the store has answered
    (what it held at that moment), the answer waits for `gate`. `entered` is set then.
    `lists` records the prefix of every LIST."""

    def __init__(self, inner: Any, prefix: str) -> None:
        super().__init__(inner)
        self.prefix = prefix
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.lists: list[str] = []

    def _list(self, prefix: str, delimiter: str | None, token: str | None,
              max_keys: int) -> ListPage:
        self.lists.append(prefix)
        page = self.inner._list(prefix, delimiter, token, max_keys)
        if self.armed and prefix == self.prefix and delimiter == "/":
            self.armed = False
            self.entered.set()
            self.gate.wait(30)
        return page


async def test_an_upload_landing_while_the_listing_is_on_its_way_wins(env: Env) -> None:
    await seed(env, "d", 5)
    remote = GatedListRemote(open_remote(env.zone), "d/")
    async with env.vfs(remote=remote, metadata_ttl=TTL, writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("d")) == FILES[:5]
        assert (await vfs.stat("d/f00")).size == 3
        await write_file(vfs, "d/f00", b"uploaded meanwhile")
        await vfs.unlink("d/f01")
        await write_file(vfs, "d/f02", b"pending")
        await trio.sleep(TTL + 0.1)
        remote.armed = True
        got: dict[str, int | None] = {}
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                async def revalidate() -> None:
                    got.update(await stat_all(vfs, ["d/f00", "d/f01", "d/f02", "d/f03"]))
                nursery.start_soon(revalidate)
                await trio.to_thread.run_sync(remote.entered.wait, 10)
                # The listing holds the store as it was; meanwhile the upload of f00 and
                # the delete of f01 land.
                await vfs.ledger.writeback.flush("d/f00")
                await vfs.ledger.writeback.flush("d/f01")
                remote.gate.set()
        assert got == {"d/f00": len(b"uploaded meanwhile"), "d/f01": None,
                       "d/f02": len(b"pending"), "d/f03": 3}
        assert await env.store.head("d/f01") is None
        # What the listing brought was kept with the newer facts laid over it.
        remote.lists.clear()
        assert (await vfs.stat("d/f00")).size == len(b"uploaded meanwhile")
        with pytest.raises(NotFound):
            await vfs.stat("d/f01")
        assert names(await vfs.listdir("d")) == ["f00", "f02", "f03", "f04"]
        assert [p for p in remote.lists if p.startswith("d/")] == []
        assert await read_file(vfs, "d/f00") == b"uploaded meanwhile"
        await check_invariants(vfs)


async def test_while_the_store_is_down_revalidation_answers_from_the_last_listing(
        env: Env) -> None:
    await seed(env, "d", 5)
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, metadata_ttl=TTL) as vfs:
        assert names(await vfs.listdir("d")) == FILES[:5]
        assert (await vfs.stat("d/f00")).size == 3
        await trio.sleep(TTL + 0.1)
        remote.down = True
        got = await stat_all(vfs, ["d/f00", "d/f01", "d/unknown"])
        assert got == {"d/f00": 3, "d/f01": 3, "d/unknown": None}
        assert names(await vfs.listdir("d")) == FILES[:5]
        remote.down = False
        await env.store.put("d/unknown", b"there now")
        remote.calls.clear()
        assert (await vfs.stat("d/unknown")).size == len(b"there now")
        assert [c for c in remote.calls if c[0] == "list"] == [("list", "d/")]
        await check_invariants(vfs)


async def test_a_big_directory_is_looked_up_name_by_name_until_a_listing_pays(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stat in a directory whose last listing took several pages does not list it whole:
    each name costs one LIST of its own until as many were looked up as the listing takes
    pages. (Pages of 10 entries here, so that a few dozen keys make a big directory.)"""
    monkeypatch.setattr(view, "RELIST_ENTRIES", 10)
    await seed(env, "big", 25)  # three pages
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, metadata_ttl=TTL) as vfs:
        assert len(await vfs.listdir("big")) == 25
        await trio.sleep(TTL + 0.1)
        remote.calls.clear()
        for name in FILES[:5]:
            assert (await vfs.stat(f"big/{name}")).size == 3
        lists = [key for kind, key in remote.calls if kind == "list"]
        assert lists == ["big/f00", "big/f01", "big/f02", "big/"], lists
        await check_invariants(vfs)


@pytest.mark.expect_log("key 'd/both' is both a file and a directory")
@pytest.mark.unversioned_on_moto
async def test_markers_and_shadowed_files_through_a_new_listing(env: Env) -> None:
    await env.store.put("d/both", b"file body")
    await env.store.put("d/both/in", b"in")
    await env.store.put("d/empty/", b"", content_type="application/x-directory")
    await env.store.put("d/plain", b"plain")
    async with env.vfs(metadata_ttl=TTL, writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("d")) == ["both", "empty", "plain"]
        await trio.sleep(TTL + 0.1)
        lists = requests(vfs, "list")
        assert (await vfs.stat("d/both")).is_dir
        assert (await vfs.stat("d/empty")).is_dir
        assert not (await vfs.stat("d/plain")).is_dir
        assert requests(vfs, "list") - lists == 1
        # rm -r d/both (not uploaded yet): the file the directory hid shows.
        await vfs.unlink("d/both/in")
        await vfs.rmdir("d/both")
        await trio.sleep(TTL + 0.1)
        s = await vfs.stat("d/both")
        assert not s.is_dir and s.size == len(b"file body")
        await drain(vfs)
        assert await read_file(vfs, "d/both") == b"file body"
        assert await vfs.listdir("d/empty") == []
        await check_invariants(vfs)


async def test_concurrent_lookups_of_one_name_share_one_request(env: Env) -> None:
    """The kernel sends a lookup per caller: eight threads stat'ing the same path in a
    directory never listed cost one LIST, not eight."""
    await seed(env, "d", 3)
    async with env.vfs(metadata_ttl=TTL) as vfs:
        lists = requests(vfs, "list")
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(vfs.stat, "d")
        # One lookup of `d` (the root was never listed either).
        assert requests(vfs, "list") - lists == 1
        lists = requests(vfs, "list")
        got = await stat_all(vfs, ["d/f00"] * 8)
        assert got == {"d/f00": 3}
        assert requests(vfs, "list") - lists == 1
        await check_invariants(vfs)
