"""t3: stores that do not behave like S3 in small ways (SeaweedFS): a directory marker that
cannot be copied, keys the store rewrites, keys it refuses to be asked about. What a user sees
must not depend on them: no rename drops a directory, no name is written under another one,
no listing fails for a key it hides. Every expectation follows the store's probed answers, so
these pass on moto, the local zone and any endpoint named by ZONEFS_TEST_S3_ENDPOINT."""

from __future__ import annotations

import errno
import logging
import stat as st
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from vfs_harness import (
    GID,
    HOLD,
    UID,
    DelegatingRemote,
    Env,
    check_invariants,
    drain,
    names,
    read_file,
    write_file,
)

from zonefs.cache.journal import MOVE_COPY, Journal, Move
from zonefs.cli.main import restored_message
from zonefs.common import keys
from zonefs.common.errors import InvalidArgument, NotFound, PreconditionFailed, RemoteError
from zonefs.remote import ObjectInfo, Remote, open_remote
from zonefs.remote.probe import Capabilities, probe


class MarkerCopyRefused(DelegatingRemote):
    """SeaweedFS: CopyObject of a `dir/` marker answers NoSuchKey although the marker is there.
    Records every key a request named, by kind."""

    def __init__(self, inner: Remote) -> None:
        super().__init__(inner)
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _call(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], str):
            with self._lock:
                self.seen.append((kind, args[0]))
        return fn(*args, **kwargs)

    def _copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None,
              content_type: str | None = None, src_version_id: str | None = None) -> ObjectInfo:
        if src_key.endswith("/"):
            raise NotFound(f"{src_key}: no such object")
        return super()._copy(src_key, dst_key, metadata, content_type, src_version_id)

    def keys_of(self, kind: str) -> list[str]:
        return [k for seen_kind, k in self.seen if seen_kind == kind]


async def _probed(env: Env) -> Capabilities:
    """The store's answers, as a mount would have them (the probe cleans up after itself)."""
    remote = open_remote(env.zone)
    try:
        return await probe(remote)
    finally:
        close = getattr(remote, "close", None)
        if close is not None:
            close()


def _dir(mode: int) -> int:
    return st.S_IFDIR | mode


# -- 1. renames put directory markers anew ------------------------------------------------------


@pytest.mark.unversioned_on_moto
async def test_directory_rename_puts_markers_anew_and_keeps_empty_directories(env: Env) -> None:
    caps = await _probed(env)
    async with env.vfs(writeback_delay=HOLD, capabilities=caps) as vfs:
        await vfs.mkdir("d", 0o750, UID, GID)
        await vfs.mkdir("d/empty", 0o700, UID + 1, GID + 1)
        await vfs.mkdir("d/sub", 0o755, UID, GID)
        await vfs.mkdir("d/sub/deeper", 0o711, UID, GID)
        await write_file(vfs, "d/sub/f", b"a file")
        await drain(vfs)
        before = {p: (await vfs.stat(p)).meta
                  for p in ("d", "d/empty", "d/sub", "d/sub/deeper")}

    remote = MarkerCopyRefused(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=HOLD, capabilities=caps) as vfs:
        await vfs.rename("d", "e")
        # No marker was copied: each was put anew; only the file went by a copy.
        assert not [k for k in remote.keys_of("copy") if k.endswith("/")]
        assert remote.keys_of("copy") == ["d/sub/f"]
        assert sorted(k for k in remote.keys_of("put") if k.endswith("/")) == [
            "e/", "e/empty/", "e/sub/", "e/sub/deeper/"]
        assert await env.store.keys() == {"e/", "e/empty/", "e/sub/", "e/sub/deeper/",
                                          "e/sub/f"}
        assert names(await vfs.listdir("e")) == ["empty", "sub"]
        assert await vfs.listdir("e/empty") == []
        assert names(await vfs.listdir("e/sub")) == ["deeper", "f"]
        with pytest.raises(NotFound):
            await vfs.stat("d")
        for path, meta in before.items():
            moved = (await vfs.stat(keys.rebase(path, "d", "e"))).meta
            # The renamed directory's ctime is the rename's; the others' are kept.
            assert meta.same_but_ctime(moved) if path == "d" else moved == meta, path
        assert await read_file(vfs, "e/sub/f") == b"a file"
        await check_invariants(vfs)

    for path, meta in before.items():
        key = keys.dir_key(keys.rebase(path, "d", "e"))
        info = await env.store.head(key)
        assert info is not None and info.size == 0, key
        assert info.content_type == keys.DIR_CONTENT_TYPE, key
        if caps.dir_markers == "kept":  # else the store drops every marker's metadata
            kept = keys.decode_meta(info.metadata, is_dir=True, default_mode=0, default_uid=0,
                                    default_gid=0, fallback_mtime=0)
            assert meta.same_but_ctime(kept) if path == "d" else kept == meta, key
    # A new mount (the dircache gone) shows the same attributes: from the store where it keeps
    # them, from what this machine set where it does not.
    async with env.vfs(capabilities=caps) as vfs:
        for path, meta in before.items():
            moved = (await vfs.stat(keys.rebase(path, "d", "e"))).meta
            # The renamed directory's ctime is the rename's; the others' are kept.
            assert meta.same_but_ctime(moved) if path == "d" else moved == meta, path


@pytest.mark.unversioned_on_moto
async def test_directory_rename_keeps_a_pending_chmod_of_a_subdirectory(env: Env) -> None:
    caps = await _probed(env)
    async with env.vfs(writeback_delay=HOLD, capabilities=caps) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.mkdir("d/sub", 0o755, UID, GID)
        await drain(vfs)
        await vfs.setattr("d/sub", mode=0o700)  # pending: rides with the new marker
        await vfs.rename("d", "e")
        assert (await vfs.stat("e/sub")).meta.mode == _dir(0o700)
        await check_invariants(vfs)
        assert await env.store.keys() == {"e/", "e/sub/"}
    async with env.vfs(capabilities=caps) as vfs:
        assert (await vfs.stat("e/sub")).meta.mode == _dir(0o700)


@pytest.mark.unversioned_on_moto
async def test_resumed_rename_puts_a_marker_journaled_as_a_copy(env: Env) -> None:
    """A plan journaled before markers were put anew (a copy step, no headers): the resume
    reads the directory's attributes and puts the marker, never copies it."""
    caps = await _probed(env)
    async with env.vfs(capabilities=caps) as vfs:
        await vfs.mkdir("d", 0o705, UID, GID)
        await drain(vfs)
    journal = Journal(str(env.cache_dir / "journal.sqlite"))
    batch = journal.begin_rename("d", "e")
    journal.plan_moves(batch, [Move(MOVE_COPY, "d/", "e/", None)])
    journal.seal_rename(batch)
    journal.close()
    remote = MarkerCopyRefused(open_remote(env.zone))
    # The daemon has the probe's answers before it resumes renames.
    async with env.vfs(remote=remote, requeue=False, capabilities=caps) as vfs:
        assert await vfs.recover() == 1
        vfs.requeue_dirty()
        assert vfs.journal.renames() == []
        assert remote.keys_of("copy") == []
        assert (await vfs.stat("e")).meta.mode == _dir(0o705)
        with pytest.raises(NotFound):
            await vfs.stat("d")
        await check_invariants(vfs)
    assert await env.store.keys() == {"e/"}


@pytest.mark.unversioned_on_moto
async def test_a_copy_the_store_refuses_never_deletes_its_source(env: Env) -> None:
    """A store answering NoSuchKey to the copy of an object it holds: the rename fails and
    stays journaled; the source is not taken as vanished and deleted."""

    class CopyRefused(DelegatingRemote):
        def _copy(self, src_key: str, dst_key: str, *args: Any) -> ObjectInfo:
            raise NotFound(f"{src_key}: no such object")

    await env.store.put("d/f", b"keep me")
    async with env.vfs(remote=CopyRefused(open_remote(env.zone))) as vfs:
        with pytest.raises(RemoteError, match="no such key"):
            await vfs.rename("d", "e")
    assert await env.store.read("d/f") == b"keep me"
    async with env.vfs() as vfs:  # resumed with a store that copies
        assert vfs.journal.renames() == []
        assert await read_file(vfs, "e/f") == b"keep me"
        await check_invariants(vfs)
    assert await env.store.keys() == {"e/", "e/f"}


# -- 2. names the store would rewrite ----------------------------------------------------------


# Where the probe found backslashes rewritten (SeaweedFS), such a name is refused with a
# warning; elsewhere it is kept and nothing is logged.
@pytest.mark.expect_log(r"refused: the store rewrites a backslash in a key")
async def test_names_with_a_backslash_follow_the_probe(env: Env) -> None:
    caps = await _probed(env)
    async with env.vfs(capabilities=caps) as vfs:
        if caps.backslash_keys == "kept":
            await write_file(vfs, "x\\y", b"one file, not a directory")
            await vfs.mkdir("d\\e", 0o755, UID, GID)
            await drain(vfs)
            assert await env.store.keys() == {"x\\y", "d\\e/"}
            assert names(await vfs.listdir("")) == ["d\\e", "x\\y"]
            assert not (await vfs.stat("x\\y")).is_dir
        else:
            with pytest.raises(InvalidArgument):
                await vfs.create("x\\y", 0o644, UID, GID)
            await drain(vfs)
            assert await env.store.keys() == set()
        await check_invariants(vfs)


@pytest.mark.expect_log("refused: the store rewrites a backslash in a key")
async def test_names_with_a_backslash_are_refused_where_the_store_rewrites_them(
    env: Env, caplog: pytest.LogCaptureFixture,
) -> None:
    caps = replace(await _probed(env), backslash_keys="rewritten")  # as `-o` would set it
    async with env.vfs(capabilities=caps) as vfs:
        await write_file(vfs, "f", b"f")
        await vfs.mkdir("d", 0o755, UID, GID)
        await drain(vfs)
        before = await env.store.keys()
        caplog.clear()
        for attempt in (
            vfs.create("x\\y", 0o644, UID, GID),
            vfs.create("d\\", 0o644, UID, GID),
            vfs.mkdir("d/a\\b", 0o755, UID, GID),
            vfs.symlink("l\\k", "target", UID, GID),
            vfs.rename("f", "f\\g"),
            vfs.rename("d", "d\\e"),
        ):
            with pytest.raises(InvalidArgument) as refused:
                await attempt
            assert refused.value.errno == errno.EINVAL
            assert "does not keep a backslash" in str(refused.value)
        refusals = [r for r in caplog.records if "rewrites a backslash" in r.getMessage()]
        assert len(refusals) == 6 and all(r.levelno == logging.WARNING for r in refusals)
        assert "'x/y'" in refusals[0].getMessage()  # what the name would have become
        # Nothing was written, under that name or another; nothing is pending.
        assert not vfs.ledger.rows and not vfs.ledger.deletes.by_key
        await drain(vfs)
        assert await env.store.keys() == before
        assert names(await vfs.listdir("")) == ["d", "f"]
        # A target with a backslash is only a symlink's body: it is kept as it is.
        await vfs.symlink("link", "a\\b", UID, GID)
        await drain(vfs)
        assert await vfs.readlink("link") == "a\\b"
        await check_invariants(vfs)


# -- 3. keys that are not paths: hidden, never asked about -------------------------------------


def _odd(key: str) -> bool:
    """Whether a key (or a listing's prefix) names something that is not a valid path."""
    segments = key.removesuffix("/").split("/") if key else []
    return any(not keys.is_valid_name(seg) for seg in segments)


class RefusesOddKeys(DelegatingRemote):
    """A HEAD or listing that names an odd key answers 400 (SeaweedFS, for `..` segments
    under a prefix); every such request is recorded."""

    def __init__(self, inner: Remote) -> None:
        super().__init__(inner)
        self.asked: list[tuple[str, str]] = []

    def _call(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if kind in ("head", "list", "get") and args and _odd(args[0]):
            self.asked.append((kind, args[0]))
            raise RemoteError(f"{args[0]}: 400 Bad Request")
        return fn(*args, **kwargs)


@pytest.mark.expect_log("is not a valid file name; hidden")
async def test_a_listing_never_asks_about_the_odd_keys_it_hides(env: Env) -> None:
    odd = ["a//b", "dir/" + "y" * 256, "dir//twice", "x" * 300]
    if env.kind == "local":  # HTTP stacks may normalise dot segments before S3 sees them
        odd += ["dots/./f", "dots/../g", "dir/../up", "dir/sub/.."]
    for key in odd:
        await env.store.put(key, b"odd")
    await env.store.put("dir/fine", b"fine")
    await env.store.put("dir/sub/inner", b"inner")
    remote = RefusesOddKeys(open_remote(env.zone))
    async with env.vfs(remote=remote) as vfs:
        # What `ls -laR` does: every listing, then a stat of every entry (headers fetched).
        todo = [""]
        seen = []
        while todo:
            path = todo.pop()
            for name, _ in await vfs.listdir(path):
                child = keys.join(path, name)
                seen.append(child)
                full = await vfs.stat(child)
                if full.is_dir:
                    todo.append(child)
                else:
                    await read_file(vfs, child)
        assert remote.asked == []
        assert {"dir", "dir/fine", "dir/sub", "dir/sub/inner"} <= set(seen)
        assert all(not _odd(p) for p in seen), seen
        assert set(vfs.view.reported) and all(
            "not a valid file name" in w or "both" in w for w in vfs.view.reported.values())
        await check_invariants(vfs)


async def test_a_lookup_the_store_refuses_for_a_dot_segment_is_not_found(env: Env) -> None:
    """What a store answers to a HEAD of a key with a `..` segment (SeaweedFS: 400 Bad
    Request) is "no such object" to zonefs, never a failure."""
    remote = open_remote(env.zone)
    for key in ("../outside.txt", "a/../b", "./c"):
        with pytest.raises(NotFound):
            await remote.head(key)


# -- 4. the body of a `dir/` key is never relied on --------------------------------------------


@pytest.mark.unversioned_on_moto
async def test_the_body_of_a_dir_key_is_never_read(env: Env) -> None:
    """SeaweedFS drops the body of a key ending in `/`; elsewhere another tool may give it one.
    zonefs never reads it: the directory shows, moves and lists the same either way, and no
    symlink or file lives in a `dir/` key (a symlink's target is the body of its own key)."""
    await env.store.put("d/", b"17 bytes of body!")
    await env.store.put("d/f", b"f")
    remote = MarkerCopyRefused(open_remote(env.zone))
    async with env.vfs(remote=remote) as vfs:
        s = await vfs.stat("d")
        assert s.is_dir and s.size == 0
        assert names(await vfs.listdir("d")) == ["f"]
        await vfs.symlink("to-dir", "d/", UID, GID)
        await drain(vfs)
        await vfs.rename("d", "e")
        assert names(await vfs.listdir("e")) == ["f"]
        await check_invariants(vfs)
    again = MarkerCopyRefused(open_remote(env.zone))
    async with env.vfs(remote=again) as vfs:
        assert await vfs.readlink("to-dir") == "d/"  # read from the store: a fresh core
        assert (await vfs.stat("e")).is_dir
    for r in (remote, again):
        assert not [k for k in r.keys_of("get") if k.endswith("/")], r.seen
    assert await env.store.keys() == {"e/", "e/f", "to-dir"}
    assert await env.store.read("e/") == b""  # put anew, empty: never copied


# -- 5. restore on a store whose copy answer has no version id ---------------------------------


class CopyWithoutVersionId(DelegatingRemote):
    """Answers a copy without its version id, as Ceph RGW does."""

    def _copy(self, *args: Any) -> ObjectInfo:
        return replace(super()._copy(*args), version_id=None)


async def test_restore_names_the_new_version_the_store_did_not_tell(env: Env) -> None:
    remote = CopyWithoutVersionId(open_remote(env.zone))
    async with env.vfs(remote=remote) as vfs:
        if not vfs.capabilities.keeps_versions:
            pytest.skip("the store keeps no versions")
        await write_file(vfs, "r", b"one")
        await drain(vfs)
        await write_file(vfs, "r", b"two")
        await drain(vfs)
        first = (await vfs.version_list("r"))[-1]["version_id"]
        done = await vfs.restore("r", version_id=first)
        latest = (await vfs.version_list("r"))[0]
        assert done["new_version"] == latest["version_id"] and done["new_version"]
        assert await read_file(vfs, "r") == b"one"
        await check_invariants(vfs)
    line = restored_message("r", done)
    assert f"(new version {done['new_version']}, 3 B)" in line, line
    assert "None" not in restored_message("r", {**done, "new_version": None})


# -- a lost condition where nothing is there ----------------------------------------------------


class LosesConditionsOverNothing(DelegatingRemote):
    """Answers 412 to a conditional upload of a key that does not exist, as SeaweedFS does
    for If-None-Match where a directory of that name was emptied, and for If-Match on a key
    deleted meanwhile (for the keys in `lost`)."""

    def __init__(self, inner: Remote, lost: set[str]) -> None:
        super().__init__(inner)
        self.lost = lost

    def _upload(self, key: str, src: str, metadata: Mapping[str, str],
                content_type: str | None, cancel: threading.Event | None = None,
                **conditions: Any) -> ObjectInfo:
        if key in self.lost and (conditions.get("if_none_match") or conditions.get("if_match")):
            try:
                self.inner._head(key)
            except NotFound:
                raise PreconditionFailed(f"{key}: 412 Precondition Failed") from None
        return self.inner._upload(key, src, metadata, content_type, cancel, **conditions)


@pytest.mark.expect_log("conflict: 'taken' was changed in the bucket")
async def test_a_lost_condition_over_nothing_writes_the_file_not_a_conflict(env: Env) -> None:
    """A 412 for a key with no object is not another writer: the file is written, and no
    conflict copy is made. A real other writer still ends as a conflict copy."""
    await env.store.put("edited", b"old")
    remote = LosesConditionsOverNothing(open_remote(env.zone), {"new", "edited", "taken"})
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        await write_file(vfs, "new", b"a new file")
        assert await read_file(vfs, "edited") == b"old"
        await write_file(vfs, "edited", b"edited here")
        await env.store.remote.delete("edited")  # deleted elsewhere meanwhile: written anew
        await write_file(vfs, "taken", b"local")
        await env.store.put("taken", b"another writer's")
        await drain(vfs)
        keys = await env.store.keys()
        assert await env.store.read("new") == b"a new file"
        assert await env.store.read("edited") == b"edited here"
        assert await env.store.read("taken") == b"another writer's"
        assert [k for k in keys if ".conflict-" in k and k.startswith("taken")] != []
        assert not [k for k in keys if ".conflict-" in k and not k.startswith("taken")]
        await check_invariants(vfs)
