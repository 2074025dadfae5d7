"""Helpers for driving `zonefs.core.vfs.Vfs` directly (no FUSE): a running core over a real zone, a
second view of the store to check what landed there, and the invariant check every t3 test
ends with.

The core runs the way the daemon runs it: one trio nursery holding the write-back scheduler and
every task the core spawns (range fetches, metadata prefetch), so an exception escaping one of
those tasks fails the test instead of vanishing; and with the store probe's answers, found (and
cached in the cache dir) the way the daemon finds them, so that what a test expects of the store
follows what the store can do, not what one server does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat as st
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio

from zonefs.cache.blobs import BlobStore
from zonefs.cache.journal import Journal
from zonefs.common import keys
from zonefs.common.config import MountOptions, ZoneConfig
from zonefs.common.errors import NotFound, RemoteError
from zonefs.core.vfs import Handle, Vfs
from zonefs.pending.leftovers import MultipartJournal
from zonefs.remote import ListPage, ObjectInfo, Remote, VersionPage, open_remote
from zonefs.remote.probe import CACHE_FILE, Capabilities, load_or_probe, read_cache, write_cache

#: Longest a drain may take in a test: uploads here are small, so more means a stuck retry loop.
DRAIN_TIMEOUT = 15.0
#: With this write-back delay nothing uploads during a test unless fsync or drain asks for it.
HOLD = 60.0
UID, GID = 1234, 5678


@dataclass
class Store:
    """The zone as another client sees it, through a separate `Remote` (and boto3 for S3)."""

    kind: str
    remote: Remote
    s3_client: Any = None
    bucket: str = ""

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            return await self.remote.head(key)
        except NotFound:
            return None

    async def read(self, key: str) -> bytes:
        info = await self.remote.head(key)
        if info.size == 0:
            return b""
        return await self.remote.get_range(key, 0, info.size)

    async def keys(self, prefix: str = "") -> set[str]:
        out: set[str] = set()
        token = None
        while True:
            page = await self.remote.list(prefix, None, token)
            out.update(o.key for o in page.objects)
            token = page.next_token
            if not token:
                return out

    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  content_type: str | None = None) -> ObjectInfo:
        return await self.remote.put_bytes(key, data, dict(metadata or {}), content_type)

    async def upload(self, key: str, path: str, metadata: Mapping[str, str] | None = None,
                     ) -> ObjectInfo:
        return await self.remote.upload(key, path, dict(metadata or {}))

    def raw_metadata(self, key: str) -> dict[str, str] | None:
        """The x-amz-meta-* headers exactly as S3 returns them (None for a local zone)."""
        if self.s3_client is None:
            return None
        return dict(self.s3_client.head_object(Bucket=self.bucket, Key=key)["Metadata"])


#: Probe answers by (zone kind, endpoint, bucket versioning state), for `Env.capabilities`.
_PROBED: dict[tuple[str, str | None, str], Capabilities] = {}


@dataclass
class Env:
    """One zone (S3 bucket on the test endpoint, or an embedded local zone) and a cache dir."""

    kind: str
    zone: ZoneConfig
    cache_dir: Path
    store: Store

    def options(self, **changes: Any) -> MountOptions:
        base = MountOptions(writeback_delay=0.05, metadata_ttl=30.0, cache_dir=str(self.cache_dir))
        return replace(base, **changes)

    async def capabilities(self, opts: MountOptions | None = None) -> Capabilities:
        """The store probe's answers for this zone, with the options' overrides, as the daemon
        gets them (`load_or_probe`): probed, then read from capabilities.json in the cache dir.

        The probe goes through the store's own remote (`self.store`): a test's wrapper plays a
        store's failures, not what it can do, and its request counts stay the test's own. A
        server answers alike for every bucket in the same versioning state, so the session
        probes each (server, state) once and hands the answers to later cache dirs, as an
        earlier mount of the zone would have left them."""
        opts = opts or self.options()
        remote, overrides = self.store.remote, dict(opts.store_overrides)
        cache = str(self.cache_dir / CACHE_FILE)
        seen: tuple[str, str | None, str] | None = None
        if not overrides and read_cache(cache, remote.description) is None:
            try:
                seen = (self.kind, self.zone.endpoint_url, await remote.bucket_versioning())
            except Exception:  # a store without the versioning API: probe it every time
                seen = None
            if seen in _PROBED:
                write_cache(cache, _PROBED[seen], remote.description)
        caps = await load_or_probe(remote, str(self.cache_dir), overrides=overrides,
                                   read_only=opts.read_only)
        if seen is not None and caps.source == "probed" and caps.complete:
            _PROBED[seen] = caps
        return caps

    @asynccontextmanager
    async def vfs(self, *, remote: Remote | None = None, requeue: bool = True,
                  capabilities: Capabilities | None = None,
                  **changes: Any) -> AsyncIterator[Vfs]:
        """A running `Vfs` on this zone and cache dir; stopped (not drained) on exit, the way a
        crash stops it: whatever is pending stays in the journal for the next one. It has the
        store probe's answers (`capabilities`), or those given."""
        opts = self.options(**changes)
        caps = capabilities or await self.capabilities(opts)
        journal = Journal(str(self.cache_dir / "journal.sqlite"))
        # The journal hears of every multipart upload, as the daemon arranges it; a remote
        # a test brings gets it too, unless the test gave it a log of its own.
        if remote is None:
            remote = open_remote(self.zone, multipart_log=MultipartJournal(journal))
        elif remote.multipart_log is None:
            remote.multipart_log = MultipartJournal(journal)
        blobs = BlobStore(str(self.cache_dir), capacity=opts.cache_size)
        try:
            async with trio.open_nursery() as nursery:
                def spawn(fn: Any) -> None:
                    nursery.start_soon(fn)

                core = Vfs(remote, journal, blobs, opts, caps, spawn=spawn)
                _watch_schedules(core)
                await nursery.start(core.ledger.writeback.run)
                if requeue:
                    await core.recover()  # what the daemon does before it mounts
                    core.requeue_dirty()
                try:
                    yield core
                finally:
                    # A crash ends the process and its threads: the staging pool's refill
                    # must not go on making files beside the next core (same pid, same
                    # names) after that core's start-up removed the ones it found.
                    while blobs.staging_pool.refilling:
                        await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
        finally:
            journal.close()
            close = getattr(remote, "close", None)
            if close is not None:
                close()
            # What a crash leaves: the staging files made ahead, not their descriptors (the
            # whole test run is one process, and would otherwise hold thousands).
            _close_descriptors_under(self.cache_dir / "staging")


def _close_descriptors_under(top: Path) -> None:
    """Close this process's descriptors of files below `top`."""
    prefix = f"{top}/"
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # closed meanwhile (the listing's own descriptor among them)
        if target.startswith(prefix):
            with contextlib.suppress(OSError):
                os.close(int(name))


@contextmanager
def unversioned_bucket(client: Any) -> Iterator[str]:
    """A fresh S3 bucket without versioning, emptied and removed afterwards."""
    name = f"zonefs-t3-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for obj in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=obj["Key"])
            for up in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
                client.abort_multipart_upload(Bucket=name, Key=up["Key"],
                                              UploadId=up["UploadId"])
            client.delete_bucket(Bucket=name)
        except Exception as exc:  # cleanup must not hide the test's own result
            print(f"could not remove test bucket {name}: {exc}")


#: Paths each core handed to its write-back queue without a journal row, by id(core).
_UNJOURNALED: dict[int, list[str]] = {}


def _watch_schedules(core: Vfs) -> None:
    """Record every path scheduled for upload while the journal has no row for it: the core
    promises to write the row first (so a crash right after cannot lose the file)."""
    seen = _UNJOURNALED[id(core)] = []
    schedule = core.ledger.writeback.schedule

    def checked(key: str, *, delay: float | None = None, at_most: float | None = None,
                keep_due: bool = False) -> None:
        # Queue names are zone keys: a file's path, a directory's marker key, a deleted key.
        journaled = {f"{r.path}/" if st.S_ISDIR(r.meta.mode) else r.path
                     for r in core.journal.dirty_rows()}
        journaled.update(k for k, _ in core.journal.deletes())
        if key not in journaled:
            seen.append(key)
        schedule(key, delay=delay, at_most=at_most, keep_due=keep_due)

    core.ledger.writeback.schedule = checked  # type: ignore[method-assign]


async def marker_metadata(vfs: Vfs, store: Store, path: str) -> dict[str, str]:
    """The attributes of directory `path` as its marker carries them in the store; where the
    probe found that the store drops a marker's metadata (SeaweedFS), the marker must exist
    and the attributes are those this mount remembers having sent with it."""
    key = keys.dir_key(path)
    info = await store.head(key)
    assert info is not None, f"no marker {key!r} in the store"
    if vfs.capabilities.dir_markers == "kept":
        assert info.metadata is not None
        return dict(info.metadata)
    row = vfs.journal.get_object(key)
    assert row is not None and row.meta is not None, f"{key!r}: nothing remembered of it"
    return keys.encode_meta(row.meta)


def names(listing: list[tuple[str, object]]) -> list[str]:
    return [name for name, _ in listing]


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `predicate()` every millisecond: catches short states such as an upload in flight
    without sleeping a fixed time."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.001)


# -- file operations as a program does them ----------------------------------------------------

REG = st.S_IFREG


async def write_file(vfs: Vfs, path: str, data: bytes, mode: int = 0o640,
                     uid: int = 1234, gid: int = 5678) -> None:
    """create + write + close (flush and release): what `cp` does."""
    handle, _ = await vfs.create(path, mode, uid, gid)
    await write_all(vfs, handle, data)
    await close(vfs, handle)


async def write_all(vfs: Vfs, handle: Handle, data: bytes, offset: int = 0,
                    block: int = 128 << 10) -> None:
    for start in range(0, len(data), block):
        chunk = data[start:start + block]
        assert await vfs.write(handle, offset + start, chunk) == len(chunk)


async def close(vfs: Vfs, handle: Handle) -> None:
    await vfs.flush(handle)
    await vfs.release(handle)


async def read_file(vfs: Vfs, path: str) -> bytes:
    handle = await vfs.open(path, os.O_RDONLY)
    try:
        size = (await vfs.stat(path)).size
        out = bytearray()
        while len(out) < size:
            chunk = await vfs.read(handle, len(out), 1 << 20)
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        await vfs.release(handle)


async def drain(vfs: Vfs, timeout: float = DRAIN_TIMEOUT) -> int:
    """Upload everything pending; trio.TooSlowError after `timeout` (a stuck retry loop)."""
    return await vfs.ledger.writeback.drain(timeout=timeout)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def requests(vfs: Vfs, kind: str) -> int:
    return vfs.remote.requests.counts.get(kind, 0)


MiB = 1 << 20
#: An `mtime` header as zonefs writes it: seconds and nanoseconds.
MTIME_RE = re.compile(r"^\d+\.\d{9}$")


def mtime_ns_of(header: str) -> int:
    sec, frac = header.split(".")
    return int(sec) * 1_000_000_000 + int(frac)


# -- invariants -------------------------------------------------------------------------------


def _check_dirty_state(vfs: Vfs) -> None:
    """The in-memory dirty files and the journal agree, and every data file exists."""
    rows = {r.path: r for r in vfs.journal.dirty_rows()}
    for path, df in vfs.ledger.rows.items():
        assert df.row.path == path, f"dirty entry {path!r} names {df.row.path!r}"
        if df.row.data is not None:
            assert os.path.isfile(vfs.blobs.abspath(df.row.data)), f"{path}: data file missing"
        if df.persisted:
            assert path in rows, f"{path}: persisted but not in the journal"
            assert rows[path].data == df.row.data, f"{path}: journal names other data"
    for path, r in rows.items():
        # A journal row nobody tracks would resurrect (or endlessly retry) at the next mount.
        assert path in vfs.ledger.rows, f"journal row {path!r} is not a dirty file of the core"
        if r.data is not None:
            assert os.path.isfile(vfs.blobs.abspath(r.data)), f"journal row {path!r}: no data"
    # Pending deletes: memory and journal agree (a delete taken over by a row not yet
    # journaled stays in the journal until that row is), and no key has two pending changes.
    deletes = dict(vfs.journal.deletes())
    claimed = {df.claimed for df in vfs.ledger.rows.values() if df.claimed is not None}
    for key in vfs.ledger.deletes.by_key:
        assert key in deletes, f"pending delete {key!r} is not in the journal"
    for key in deletes:
        assert key in vfs.ledger.deletes.by_key or key in claimed, (
            f"journaled delete {key!r} is neither pending nor taken over")
    for df in vfs.ledger.rows.values():
        assert df.queue_key not in vfs.ledger.deletes.by_key, f"{df.queue_key!r}: row and delete"


def _check_blobs(vfs: Vfs, *, handles_open: bool) -> None:
    root = Path(vfs.blobs.root)
    sizes: dict[str, int] = {}
    for shard in (root / "blobs").iterdir():
        for f in shard.iterdir():
            assert f.name[:2] == shard.name
            data = f.read_bytes()
            # A blob enters the cache under a hash only after its bytes were hashed.
            assert sha256(data) == f.name, f"blob {f.name} does not hold the bytes it names"
            assert st.S_IMODE(f.stat().st_mode) == 0o600
            sizes[f.name] = len(data)
    assert vfs.blobs.used == sum(sizes.values()), "blob accounting drifted from the disk"
    assert vfs.blobs.stats()["blobs"] == len(sizes)
    assert all(vfs.blobs.has(name) for name in sizes)
    if not handles_open:
        assert os.listdir(root / "tmp") == [], "a download was left behind in tmp/"
        assert not vfs.blobs._pins, f"blobs still pinned with no handle open: {vfs.blobs._pins}"


async def staging_files(vfs: Vfs) -> list[str]:
    """The files in staging/ but those the staging pool made ahead of creates."""
    pool = vfs.blobs.staging_pool
    while pool.refilling:  # a file being made ahead may not be queued yet
        await trio.sleep(0.001)
    ahead = {os.path.basename(p) for p in pool.ahead()}
    return sorted(n for n in os.listdir(os.path.join(vfs.blobs.root, "staging"))
                  if n not in ahead)


async def check_invariants(vfs: Vfs, *, handles_open: bool = False) -> None:
    """What must hold whenever the core is quiet; drains the write-back queue on the way.

    - no path was handed to the write-back queue before its journal row was written;
    - every dirty file's data file exists, and a persisted one is in the journal (same data);
      every journal row is a dirty file of the core;
    - after a drain with no writer left, nothing is dirty, and staging/ holds no file that
      no dirty row names;
    - blobs/ holds only files whose SHA-256 is their name, and the store's byte count equals
      the sizes on disk; with no handle open, tmp/ is empty and nothing is pinned.
    """
    unjournaled = _UNJOURNALED.get(id(vfs), [])
    assert not unjournaled, f"scheduled for upload before their journal row: {unjournaled}"
    _check_dirty_state(vfs)
    await drain(vfs)
    _check_dirty_state(vfs)
    if not handles_open:
        assert not vfs.ledger.rows, f"still dirty after drain: {sorted(vfs.ledger.rows)}"
        assert list(vfs.journal.dirty_rows()) == []
        left = sorted(vfs.ledger.deletes.by_key)
        assert not left, f"deletes still pending: {left}"
        assert vfs.journal.deletes() == []
    # Uploaded rows' staging files go once their journal commit is durable (the daemon's
    # timer; here at once).
    vfs.ledger.sync_journal()
    named = {df.row.data for df in vfs.ledger.rows.values() if df.row.data is not None}
    for name in await staging_files(vfs):
        assert f"staging/{name}" in named, f"staging/{name} has no dirty row"
    _check_blobs(vfs, handles_open=handles_open)


# -- Remotes that wrap another one -------------------------------------------------------------


class DelegatingRemote(Remote):
    """Delegates every blocking call to `inner` through `_call`, which subclasses wrap to
    change what the store does (answer late, fail, record)."""

    def __init__(self, inner: Remote) -> None:
        super().__init__()
        self.inner = inner
        self.description = inner.description

    def _call(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def _check(self) -> None:
        self._call("check", self.inner._check)

    def _head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        return self._call("head", self.inner._head, key, version_id)

    def _list(self, prefix: str, delimiter: str | None, token: str | None,
              max_keys: int) -> ListPage:
        return self._call("list", self.inner._list, prefix, delimiter, token, max_keys)

    def _get_range(self, key: str, start: int, length: int, version_id: str | None = None,
                   if_match: str | None = None) -> bytes:
        return self._call("get", self.inner._get_range, key, start, length, version_id,
                          if_match)

    def _download(self, key: str, dest: str, version_id: str | None = None,
                  if_match: str | None = None) -> ObjectInfo:
        return self._call("get", self.inner._download, key, dest, version_id, if_match)

    def _upload(self, key: str, src: str, metadata: Mapping[str, str],
                content_type: str | None, cancel: threading.Event | None = None,
                **conditions: Any) -> ObjectInfo:
        return self._call("put", self.inner._upload, key, src, metadata, content_type, cancel,
                          **conditions)

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                   content_type: str | None, **conditions: Any) -> ObjectInfo:
        return self._call("put", self.inner._put_bytes, key, data, metadata, content_type,
                          **conditions)

    def _copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None,
              content_type: str | None = None, src_version_id: str | None = None) -> ObjectInfo:
        return self._call("copy", self.inner._copy, src_key, dst_key, metadata, content_type,
                          src_version_id)

    def _delete(self, key: str) -> None:
        self._call("delete", self.inner._delete, key)

    def _bucket_versioning(self) -> str:
        return self._call("versioning", self.inner._bucket_versioning)

    def _list_versions(self, prefix: str, delimiter: str | None,
                       marker: tuple[str, str] | None, max_keys: int) -> VersionPage:
        return self._call("list_versions", self.inner._list_versions, prefix, delimiter,
                          marker, max_keys)

    def _delete_version(self, key: str, version_id: str) -> None:
        self._call("delete", self.inner._delete_version, key, version_id)


class SlowAckRemote(DelegatingRemote):
    """An upload stores its object, then waits `ack_delay` seconds before returning. That is
    S3 after the last byte was sent: the object exists, the response is on its way, and a
    cancel can no longer stop it. `stored` is set when the object exists."""

    def __init__(self, inner: Remote, ack_delay: float) -> None:
        super().__init__(inner)
        self.ack_delay = ack_delay
        self.stored = threading.Event()

    def _upload(self, key: str, src: str, metadata: Mapping[str, str],
                content_type: str | None, cancel: threading.Event | None = None,
                **conditions: Any) -> ObjectInfo:
        info = self.inner._upload(key, src, metadata, content_type, None, **conditions)
        self.stored.set()
        threading.Event().wait(self.ack_delay)
        return info


class OutageRemote(DelegatingRemote):
    """A store that can be taken down: while `down` is set every request fails at once, as
    when connections are refused (a transient error). `calls` records (kind, first argument)
    of every request that reached the store, in order."""

    def __init__(self, inner: Remote) -> None:
        super().__init__(inner)
        self.down = False
        self.calls: list[tuple[str, str]] = []

    def _call(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise RemoteError(f"{kind}: connection refused (test outage)", transient=True)
        self.calls.append((kind, str(args[0]) if args else ""))
        return fn(*args, **kwargs)
