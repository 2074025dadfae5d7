"""t3: namespace changes (mkdir, rmdir, unlink, symlink, renames of pending files) are journaled
and reach the store through the write-back queue: what a user sees at once, what the bucket
holds after a drain, what a crash keeps, and what works while the store cannot be reached."""

from __future__ import annotations

import os
import stat as st
import threading
from typing import Any

import pytest
import trio
from vfs_harness import (
    DRAIN_TIMEOUT,
    GID,
    HOLD,
    UID,
    DelegatingRemote,
    Env,
    OutageRemote,
    check_invariants,
    close,
    drain,
    marker_metadata,
    names,
    read_file,
    requests,
    sha256,
    staging_files,
    write_file,
)

from zonefs.common.errors import NotEmpty, NotFound, RemoteError
from zonefs.remote import Remote, open_remote


async def test_unlink_then_create_replaces_the_object(env: Env) -> None:
    """`rm f; echo new > f` before the delete ran: one new version, no conflict copy."""
    old = await env.store.put("f", b"old")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.unlink("f")
        assert vfs.journal.deletes() == [("f", old.etag)]
        await write_file(vfs, "f", b"new bytes")
        # The new file took the delete over: one pending change for the key, in one row.
        assert vfs.journal.deletes() == []
        assert vfs.ledger.rows["f"].row.base_etag == old.etag
        await drain(vfs)
        assert await env.store.keys() == {"f"}
        assert await env.store.read("f") == b"new bytes"
        assert vfs.ledger.uploader.conflicts == 0
        assert requests(vfs, "delete") == 0
        await check_invariants(vfs)


async def test_a_file_never_uploaded_is_removed_without_a_request(env: Env) -> None:
    # mkdir pending like any create (exclusive_creates=local), as on a store without
    # conditional writes.
    async with env.vfs(writeback_delay=HOLD, exclusive_creates="local") as vfs:
        await write_file(vfs, "tmp", b"scratch")
        await vfs.unlink("tmp")
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.rmdir("d")
        await vfs.symlink("l", "t", UID, GID)
        await vfs.unlink("l")
        assert vfs.journal.deletes() == [] and list(vfs.journal.dirty_rows()) == []
        await drain(vfs)
        sent = {k: n for k, n in vfs.remote.requests.counts.items() if k != "list"}
        assert sent == {}, "only lookups (is the name free?) reach the store"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_removed_tree_stays_hidden_and_markers_go_last(env: Env) -> None:
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.mkdir("d/s", 0o755, UID, GID)
        await write_file(vfs, "d/a", b"a")
        await write_file(vfs, "d/s/b", b"b")
        await drain(vfs)
        assert await env.store.keys() == {"d/", "d/s/", "d/a", "d/s/b"}
        # rm -r d
        await vfs.unlink("d/s/b")
        with pytest.raises(NotEmpty):
            await vfs.rmdir("d")
        await vfs.rmdir("d/s")
        await vfs.unlink("d/a")
        await vfs.rmdir("d")
        assert names(await vfs.listdir("")) == []
        with pytest.raises(NotFound):
            await vfs.stat("d")
        assert sorted(k for k, _ in vfs.journal.deletes()) == ["d/", "d/a", "d/s/", "d/s/b"]
        assert len(await env.store.keys()) == 4, "nothing is sent before the write-back delay"
        remote.calls.clear()
        await drain(vfs)
        assert await env.store.keys() == set()
        deleted = [key for kind, key in remote.calls if kind == "delete"]
        assert sorted(deleted) == ["d/", "d/a", "d/s/", "d/s/b"]
        # A marker goes only once nothing below it is pending: the tree never shows again as
        # an empty directory while its files are being deleted.
        assert deleted.index("d/s/") > deleted.index("d/s/b")
        assert deleted.index("d/") > max(deleted.index("d/a"), deleted.index("d/s/"))
        assert names(await vfs.listdir("")) == []
        await check_invariants(vfs)


async def test_namespace_changes_survive_a_crash(env: Env) -> None:
    await env.store.put("gone", b"deleted before the crash")
    await env.store.put("empty/", b"", content_type="application/x-directory")
    # mkdir pending like any create (exclusive_creates=local): the crash comes before it
    # reaches the store.
    async with env.vfs(writeback_delay=HOLD, exclusive_creates="local") as vfs:
        await vfs.mkdir("d", 0o750, UID, GID)
        await vfs.symlink("d/link", "../target", UID, GID)
        await vfs.unlink("gone")
        await vfs.rmdir("empty")
        await write_file(vfs, "draft", b"saved by rename")
        await vfs.rename("draft", "d/final")
        # The process dies here: nothing was sent, everything is in the journal.
    assert await env.store.keys() == {"gone", "empty/"}
    async with env.vfs(writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("")) == ["d"]
        assert names(await vfs.listdir("d")) == ["final", "link"]
        assert (await vfs.stat("d")).meta.mode == st.S_IFDIR | 0o750
        assert await vfs.readlink("d/link") == "../target"
        assert await read_file(vfs, "d/final") == b"saved by rename"
        await drain(vfs)
        assert await env.store.keys() == {"d/", "d/link", "d/final"}
        assert await env.store.read("d/link") == b"../target"
        md = await marker_metadata(vfs, env.store, "d")
        assert md["mode"] == str(st.S_IFDIR | 0o750)
        await check_invariants(vfs)


async def test_namespace_changes_while_the_store_is_down(env: Env) -> None:
    """Connections refused: creating, saving by rename, removing and linking all work, and
    reach the bucket once the store is back."""
    await env.store.put("doc.txt", b"version 1")
    await env.store.put("old.log", b"to remove")
    await env.store.put("olddir/", b"", content_type="application/x-directory")
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=0.05) as vfs:
        assert names(await vfs.listdir("")) == ["doc.txt", "old.log", "olddir"]
        assert await vfs.listdir("olddir") == []
        remote.down = True
        await vfs.mkdir("new", 0o755, UID, GID)
        await write_file(vfs, "new/a", b"written during the outage")
        await vfs.symlink("new/link", "a", UID, GID)
        # An editor's save: write a temporary file, rename it over the document.
        await write_file(vfs, ".doc.txt.swp", b"version 2")
        await vfs.rename(".doc.txt.swp", "doc.txt")
        await vfs.unlink("old.log")
        await vfs.rmdir("olddir")
        assert names(await vfs.listdir("")) == ["doc.txt", "new"]
        assert names(await vfs.listdir("new")) == ["a", "link"]
        assert await read_file(vfs, "doc.txt") == b"version 2"
        with pytest.raises(RemoteError):
            await vfs.ledger.writeback.flush("new/a")  # the upload fails, and stays queued
        assert vfs.pending_count == 6  # 4 rows to put, 2 deletes
        remote.down = False
        await drain(vfs)
        assert await env.store.keys() == {"doc.txt", "new/", "new/a", "new/link"}
        assert await env.store.read("doc.txt") == b"version 2"
        assert await env.store.read("new/a") == b"written during the outage"
        assert vfs.ledger.uploader.conflicts == 0
        await check_invariants(vfs)


@pytest.mark.expect_log("conflict: 'd/taken' was changed in the bucket")
async def test_new_files_in_a_directory_never_listed_while_the_store_is_down(
        env: Env) -> None:
    """Connections refused, in directories the mount never listed (the root and `d`, known
    only by name): new files can be created, a name nothing is known of shows as absent,
    and a name another writer took meanwhile is never overwritten: the local bytes end as
    a conflict copy once the store is back."""
    await env.store.put("d/old", b"listed by nobody")
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=0.05) as vfs:
        assert (await vfs.stat("d")).is_dir
        remote.down = True
        await write_file(vfs, "d/new", b"written during the outage")
        await write_file(vfs, "top", b"at the root")
        await write_file(vfs, "d/taken", b"local bytes")
        with pytest.raises(NotFound):
            await vfs.stat("d/unknown")
        assert await read_file(vfs, "d/new") == b"written during the outage"
        await env.store.put("d/taken", b"another writer's")  # meanwhile, elsewhere
        remote.down = False
        await drain(vfs)
        keys = await env.store.keys()
        assert {"d/old", "d/new", "top", "d/taken"} <= keys
        assert await env.store.read("d/new") == b"written during the outage"
        assert await env.store.read("top") == b"at the root"
        assert await env.store.read("d/taken") == b"another writer's"
        conflicts = [k for k in keys if k.startswith("d/taken.conflict-")]
        assert len(conflicts) == 1 and await env.store.read(conflicts[0]) == b"local bytes"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_rename_onto_a_removed_tree(env: Env) -> None:
    """`rm -r b; mv a b` before the deletes ran: b holds a's files and none of its own."""
    await env.store.put("a/x", b"x")
    await env.store.put("b/y", b"y")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.unlink("b/y")
        await vfs.rmdir("b")
        await vfs.rename("a", "b")
        assert names(await vfs.listdir("")) == ["b"]
        assert names(await vfs.listdir("b")) == ["x"]
        await drain(vfs)
        keys = await env.store.keys()
        assert "b/x" in keys and not {"a/x", "b/y"} & keys
        assert await env.store.read("b/x") == b"x"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_file_where_a_directory_was_removed(env: Env) -> None:
    await env.store.put("x/f", b"f")
    await env.store.put("plain", b"plain bytes")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.unlink("x/f")
        await vfs.rmdir("x")
        await write_file(vfs, "x", b"now a file")
        listing = dict(await vfs.listdir(""))
        assert not listing["x"].is_dir and listing["x"].size == len(b"now a file")
        await drain(vfs)
        assert await env.store.keys() == {"x", "plain"}
        # The same with a clean file moved there by a copy in the store.
        await vfs.mkdir("y", 0o755, UID, GID)
        await write_file(vfs, "y/f", b"f")
        await drain(vfs)
        await vfs.unlink("y/f")
        await vfs.rmdir("y")
        await vfs.rename("plain", "y")
        listing = dict(await vfs.listdir(""))
        assert not listing["y"].is_dir and listing["y"].size == len(b"plain bytes")
        await drain(vfs)
        assert await env.store.keys() == {"x", "y"}
        assert await read_file(vfs, "y") == b"plain bytes"
        await check_invariants(vfs)


async def test_fsync_of_a_directory_applies_its_changes(env: Env) -> None:
    await env.store.put("u", b"uploaded")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.unlink("u")
        await write_file(vfs, "d/inner", b"not this directory's entry")
        await vfs.sync_dir("")
        assert await env.store.keys() == {"d/"}
        await vfs.sync_dir("d")
        assert await env.store.keys() == {"d/", "d/inner"}
        await check_invariants(vfs)


async def test_chmod_of_a_directory_and_symlink_is_batched(env: Env) -> None:
    # mkdir pending like any create (exclusive_creates=local), as on a store without
    # conditional writes.
    async with env.vfs(writeback_delay=HOLD, exclusive_creates="local") as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.setattr("d", mode=0o700)
        await vfs.setattr("d", uid=7)
        await vfs.symlink("l", "target", UID, GID)
        await vfs.setattr("l", uid=8)
        await drain(vfs)
        assert requests(vfs, "put") == 2, "one PUT each, with the last attributes"
        d = await marker_metadata(vfs, env.store, "d")
        link = await env.store.head("l")
        assert link is not None and link.metadata is not None
        assert (d["mode"], d["uid"]) == (str(st.S_IFDIR | 0o700), "7")
        assert link.metadata["uid"] == "8"
        await check_invariants(vfs)


async def test_write_handle_kept_across_unlink_and_recreate(env: Env) -> None:
    """A file open for writing, unlinked, and a new file of the same name: each keeps its
    own bytes; only the new one reaches the bucket."""
    async with env.vfs(writeback_delay=HOLD) as vfs:
        first, _ = await vfs.create("f", 0o644, UID, GID)
        await vfs.write(first, 0, b"first")
        await vfs.unlink("f")
        await write_file(vfs, "f", b"second")
        await vfs.write(first, 5, b" more")
        await close(vfs, first)
        await drain(vfs)
        assert await env.store.keys() == {"f"}
        assert await env.store.read("f") == b"second"
        vfs.ledger.sync_journal()  # staging files of uploads go once that is durable
        assert await staging_files(vfs) == []
        await check_invariants(vfs)


async def test_directory_removed_and_made_again_before_its_deletes(env: Env) -> None:
    """A directory whose marker never reached the store, holding a file that did (fsync):
    `rm -r` hides it at once, and a new `mkdir` of the name works and starts empty."""
    # mkdir pending like any create (exclusive_creates=local), as on a store without
    # conditional writes.
    async with env.vfs(writeback_delay=HOLD, exclusive_creates="local") as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        handle, _ = await vfs.create("d/f", 0o644, UID, GID)
        await vfs.write(handle, 0, b"durable")
        await vfs.fsync(handle)
        await close(vfs, handle)
        assert await env.store.keys() == {"d/f"}
        await vfs.unlink("d/f")
        await vfs.rmdir("d")
        assert names(await vfs.listdir("")) == []
        with pytest.raises(NotFound):
            await vfs.stat("d")
        await vfs.mkdir("d", 0o700, UID, GID)
        assert await vfs.listdir("d") == []
        await drain(vfs)
        assert await env.store.keys() == {"d/"}
        assert names(await vfs.listdir("")) == ["d"]
        await check_invariants(vfs)


async def test_name_reused_after_a_delete_of_an_unknown_object(env: Env) -> None:
    """A pending file whose upload may have landed before a crash (the journal cannot say) is
    renamed away, and another file is renamed to its old name: that file replaces whatever
    the name holds, without a conflict copy."""
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "doc", b"first draft")
    await env.store.put("doc", b"first draft")  # its upload landed; the crash came first
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.rename("doc", "doc.bak")
        assert vfs.journal.deletes() == [("doc", None)]  # the object's ETag is not known
        await write_file(vfs, ".doc.swp", b"second draft")
        await vfs.rename(".doc.swp", "doc")
        assert vfs.journal.deletes() == []
        await drain(vfs)
        assert await env.store.keys() == {"doc", "doc.bak"}
        assert await env.store.read("doc") == b"second draft"
        assert await env.store.read("doc.bak") == b"first draft"
        assert vfs.ledger.uploader.conflicts == 0
        await check_invariants(vfs)


async def test_flush_applies_a_delete_whose_queue_entry_went(env: Env) -> None:
    """Flushing a key (a directory rename applies the deletes where it goes first) applies its
    pending delete even when nothing has it queued any more."""
    await env.store.put("target", b"old")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("")) == ["target"]
        await vfs.unlink("target")
        await vfs.ledger.writeback.cancel("target")  # as a rename that looked at it first does
        await vfs.ledger.flush(["target"])
        assert vfs.journal.deletes() == []
        assert await env.store.keys() == set()
        await check_invariants(vfs)


async def test_own_upload_that_landed_before_a_crash_is_no_conflict(env: Env) -> None:
    """An upload of the first bytes of a file was sent just before the process died and
    landed; the file had been written again meanwhile. The next mount uploads the new bytes
    and finds that object: its bytes are this cache dir's own, so it is replaced, with no
    conflict copy."""
    first, second = b"sent, then the process died", b"written again before the crash"
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "f", first)
        vfs.journal.add_attempt("f", sha256(first))  # what an upload records before it sends
        await write_file(vfs, "f", second)
    await env.store.put("f", first, {"zonefs-sha256": sha256(first)})  # and it landed
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await drain(vfs)
        assert vfs.ledger.uploader.conflicts == 0
        assert await env.store.keys() == {"f"}
        assert await env.store.read("f") == second
        await check_invariants(vfs)
        assert vfs.journal.attempts() == {}


# -- renames of clean files: pending copies ---------------------------------------------------


async def test_rename_of_a_clean_file_is_a_pending_copy(env: Env) -> None:
    """`mv a b` of an uploaded file: no request before it returns; `b` reads the bytes at
    once (from `a`'s object), `a` is gone from the mount; the store gets the copy, then the
    delete of `a`."""
    data = os.urandom(5000)
    await env.store.put("a", data, {"mode": str(st.S_IFREG | 0o640), "uid": "7"})
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("")) == ["a"]
        assert (await vfs.stat("a")).meta.uid == 7
        remote.calls.clear()
        await vfs.rename("a", "b")
        assert remote.calls == [], "nothing is sent before the write-back delay"
        assert names(await vfs.listdir("")) == ["b"]
        s = await vfs.stat("b")
        assert (s.size, s.meta.mode, s.meta.uid) == (len(data), st.S_IFREG | 0o640, 7)
        assert await read_file(vfs, "b") == data
        with pytest.raises(NotFound):
            await vfs.stat("a")
        await drain(vfs)
        kinds = [kind for kind, _ in remote.calls]
        assert kinds.index("copy") < kinds.index("delete"), "copied, then deleted"
        assert await env.store.keys() == {"b"}
        assert await env.store.read("b") == data
        info = await env.store.head("b")
        assert info is not None and info.metadata is not None and info.metadata["uid"] == "7"
        await check_invariants(vfs)


async def test_renames_of_clean_files_while_the_store_is_down(env: Env) -> None:
    await env.store.put("a", b"first")
    await env.store.put("b", b"second")
    await env.store.put("c", b"third")
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=0.05) as vfs:
        assert names(await vfs.listdir("")) == ["a", "b", "c"]
        for name in "abc":
            await vfs.stat(name)
        remote.down = True
        await vfs.rename("a", "x")          # a plain move
        await vfs.rename("b", "c")          # over another clean file
        await vfs.rename("x", "y")          # moved again before its copy
        assert names(await vfs.listdir("")) == ["c", "y"]
        assert (await vfs.stat("y")).size == len(b"first")
        remote.down = False
        await drain(vfs)
        assert await env.store.keys() == {"c", "y"}
        assert await env.store.read("y") == b"first"
        assert await env.store.read("c") == b"second"
        assert vfs.ledger.uploader.conflicts == 0
        await check_invariants(vfs)


async def test_rename_of_a_clean_file_survives_a_crash(env: Env) -> None:
    await env.store.put("old", b"moved across a crash")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.stat("old")
        await vfs.rename("old", "new")
    assert await env.store.keys() == {"old"}
    async with env.vfs(writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("")) == ["new"]
        assert await read_file(vfs, "new") == b"moved across a crash"
        await drain(vfs)
        assert await env.store.keys() == {"new"}
        assert await env.store.read("new") == b"moved across a crash"
        await check_invariants(vfs)


async def test_renamed_file_written_or_removed_before_its_copy(env: Env) -> None:
    await env.store.put("a", b"original")
    await env.store.put("b", b"doomed")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.stat("a")
        await vfs.stat("b")
        await vfs.rename("a", "a2")
        handle = await vfs.open("a2", os.O_WRONLY | os.O_APPEND)
        await vfs.write(handle, 0, b" + more")
        await close(vfs, handle)
        await vfs.rename("b", "b2")
        await vfs.unlink("b2")
        await vfs.rename("a2", "a")  # and back under its old name
        assert names(await vfs.listdir("")) == ["a"]
        assert await read_file(vfs, "a") == b"original + more"
        await drain(vfs)
        assert await env.store.keys() == {"a"}
        assert await env.store.read("a") == b"original + more"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_object_a_pending_copy_reads_is_not_replaced_under_it(env: Env) -> None:
    """`mv d/l x/l` (a pending copy reading d/l), then a new d/l, then `mv d y`: the copy
    still gets the first object's bytes, though a new file took the name and the directory
    moved (found by the random-operations test)."""
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.mkdir("x", 0o755, UID, GID)
        await vfs.symlink("d/l", "first target", UID, GID)
        await drain(vfs)
        await vfs.rename("d/l", "x/l")
        await vfs.symlink("d/l", "second target", UID, GID)
        await drain(vfs)  # the new d/l waits for the copy that reads the old one
        assert await env.store.read("x/l") == b"first target"
        await vfs.rename("d/l", "d/m")
        await vfs.rename("x/l", "x/n")
        await vfs.symlink("x/l", "third target", UID, GID)
        await vfs.rename("d", "y")
        assert await vfs.readlink("x/n") == "first target"
        assert await vfs.readlink("y/m") == "second target"
        await drain(vfs)
        assert await env.store.read("x/n") == b"first target"
        assert await env.store.read("y/m") == b"second target"
        assert await env.store.read("x/l") == b"third target"
        assert {k for k in await env.store.keys() if not k.endswith("/")} == {
            "x/n", "y/m", "x/l"}
        await check_invariants(vfs)


async def test_renamed_file_written_before_its_copy_frees_its_old_name(env: Env) -> None:
    await env.store.put("a", b"original")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.stat("a")
        await vfs.rename("a", "b")
        handle = await vfs.open("b", os.O_WRONLY | os.O_APPEND)
        await vfs.write(handle, 0, b"!")
        await close(vfs, handle)
        await drain(vfs)
        assert await env.store.keys() == {"b"}, "the old name's delete no longer waits"
        assert await env.store.read("b") == b"original!"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_directory_renamed_over_the_one_its_pending_copy_reads(env: Env) -> None:
    """`mv d/f x/f` (a pending copy reading d/f), then `mv x d` over the now empty d: the
    copy is made first, d's old marker and d/f go, and d holds f with its marker (found by
    the random-operations test)."""
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.mkdir("x", 0o700, UID, GID)
        await write_file(vfs, "d/f", b"the bytes")
        await drain(vfs)
        await vfs.rename("d/f", "x/f")
        assert await vfs.listdir("d") == []
        await vfs.rename("x", "d")
        assert names(await vfs.listdir("d")) == ["f"]
        await drain(vfs)
        assert await env.store.keys() == {"d/", "d/f"}
        assert await env.store.read("d/f") == b"the bytes"
        assert (await vfs.stat("d")).meta.mode == st.S_IFDIR | 0o700
        await check_invariants(vfs)


class _HeldListings(DelegatingRemote):
    """Answers to listings under `prefix` wait, once `hold` is set, until `release` is: the
    store answered, and the answer is slow to arrive. `waiting` is set when one waits."""

    def __init__(self, inner: Remote, prefix: str) -> None:
        super().__init__(inner)
        self.prefix, self.hold = prefix, False
        self.waiting, self.release = threading.Event(), threading.Event()

    def _call(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        answer = fn(*args, **kwargs)
        if kind == "list" and self.hold and str(args[0]).startswith(self.prefix):
            self.waiting.set()
            self.release.wait(DRAIN_TIMEOUT)
        return answer


async def test_rename_of_a_file_whose_upload_lands_meanwhile(env: Env) -> None:
    """`mv a d/b` of a file with new bytes, whose upload lands while the rename looks `d/b`
    up: the rename moves the object that upload left, so `d/b` reads the new bytes at once
    (found by the random-operations test: EIO, the read asked for the replaced object)."""
    await env.store.put("a", b"old bytes")
    await env.store.put("d/x", b"x")
    remote = _HeldListings(open_remote(env.zone), "d")
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        await vfs.stat("a")
        handle = await vfs.open("a", os.O_WRONLY | os.O_TRUNC)
        await vfs.write(handle, 0, b"new bytes")
        await close(vfs, handle)
        remote.hold = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(vfs.rename, "a", "d/b")
            await trio.to_thread.run_sync(remote.waiting.wait, DRAIN_TIMEOUT)
            vfs.ledger.writeback.schedule("a", delay=0)
            await vfs.ledger.writeback.flush("a")  # lands while the rename waits for its lookup
            assert await env.store.read("a") == b"new bytes"
            remote.release.set()
        assert names(await vfs.listdir("")) == ["d"]
        assert await read_file(vfs, "d/b") == b"new bytes"
        await drain(vfs)
        assert await env.store.keys() == {"d/b", "d/x"}
        assert await env.store.read("d/b") == b"new bytes"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_listing_on_its_way_while_a_directory_delete_lands(env: Env) -> None:
    """`rmdir d/e`, whose delete lands while a listing of `d` is on its way: that listing does
    not show `e` again (found by the random-operations test: `find` listed a removed
    directory, whose lookup then failed)."""
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.mkdir("d/e", 0o755, UID, GID)
        await write_file(vfs, "d/f", b"f")
        await drain(vfs)
    remote = _HeldListings(open_remote(env.zone), "d/")
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        await vfs.rmdir("d/e")
        remote.hold = True
        listed: list[list[str]] = []

        async def list_d() -> None:
            listed.append(names(await vfs.listdir("d")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(list_d)
            await trio.to_thread.run_sync(remote.waiting.wait, DRAIN_TIMEOUT)
            await vfs.ledger.flush(["d/e/"])  # lands while the listing's answer is on its way
            assert "d/e/" not in await env.store.keys()
            remote.release.set()
        assert listed == [["f"]]
        with pytest.raises(NotFound):
            await vfs.stat("d/e")
        await check_invariants(vfs)
