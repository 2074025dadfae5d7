"""The change log: how mounts of one zone learn of each other's changes within seconds.

Every write this mount makes in the store (`Remote.on_change`) is announced in a *record*: a
small object `.zonefs/changes/<mount id>/<seq>` whose body lists the keys it changed (JSON,
`{"v": 1, "keys": [...], "trees": [...]}`). Each mount lists `.zonefs/changes/` once a second,
reads the records of other mounts it has not seen, and forgets what it cached of each key
named there (the listing cache, and the kernel's entries, attributes and pages through the
mount's `on_changed` callback), so that the next `ls`, `stat` or `open` asks the store.

Records are hints: what a mount shows always comes from the store, so a record lost, late or
never written (a crash between a write and its record) costs freshness, never correctness:
the change shows within `metadata_ttl`, as one made by another S3 tool does.

Keys and ordering:
- `<mount id>` is 16 random hex digits, new at each start; `<seq>` counts that mount's records
  from 1 (12 digits). A reader applies each mount's records in `seq` order and notices a gap
  (records removed before it read them): then it forgets everything it cached (`resync`).
- A record is written `GATHER` seconds after the first key it holds was announced; more than
  `MAX_KEYS` keys become the directories holding them (`trees`), or the whole zone.
- A record is removed by its writer `RETAIN` seconds after it was written, except the newest,
  which stays as the mount's sign of life. A mount with nothing to announce for `HEARTBEAT`
  seconds writes an empty record (a heartbeat, not read by others: its size is 0). Records of
  a mount silent for `STALE` seconds (it crashed, or was unmounted) are removed by the others.
- A mount that could not list the records for `RETAIN - 20` seconds may have missed some: it
  resyncs on its next listing. (`change_poll` is at most 10 s, well inside that.)

Cost: when idle, one request per `POLL` seconds (`-o change_poll`) per mount: a LIST, replaced
by the heartbeat's PUT and the previous heartbeat's DELETE once a minute. While changing, at
most one PUT and one DELETE per `GATHER` seconds more, plus one GET per record of another
mount.

Owner of the records this mount wrote, the announcements not yet written, and what it has read
of other mounts' records. Its requests have kinds of their own (`changes-list`, `changes-get`,
`changes-put`, `changes-delete`), so they are counted apart and never announced.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from zonefs.common import keys
from zonefs.common.errors import NotFound, RemoteError, ZonefsError
from zonefs.common.keys import RESERVED

if TYPE_CHECKING:
    from zonefs.cache.dircache import DirCache
    from zonefs.remote.base import ObjectInfo, Remote

log = logging.getLogger(__name__)

PREFIX = f"{RESERVED}/changes/"
POLL = 1.0  # seconds between listings of the records (`-o change_poll`)
GATHER = 0.2  # seconds an announcement waits for others to share its record
RETAIN = 60.0  # seconds a record stays in the store (the newest stays longer)
HEARTBEAT = 60.0  # seconds without a record before an empty one is written
STALE = 600.0  # seconds of silence after which a mount's records are removed by others
MAX_KEYS = 1000  # keys in one record; more are announced as the directories holding them
START_TIMEOUT = 5.0  # longest wait for the first heartbeat and listing at mount
CLOSE_TIMEOUT = 2.0  # longest wait for the last record at unmount
RETRY_MAX = 10.0  # longest wait before writing a record again after a failure
#: Kernel and cache invalidation for paths another mount changed (paths, trees): the mount's.
OnChanged = Callable[[list[str], list[str]], Awaitable[None]]


@dataclass(slots=True)
class _Mine:
    """A record this mount wrote and has not removed yet."""

    key: str
    version_id: str | None
    written: float  # time.monotonic()


@dataclass(slots=True)
class ChangeLogStats:
    """What `zonefs status` and the metrics show of the change log."""

    records_written: int = 0
    records_read: int = 0
    paths_announced: int = 0
    paths_heard: int = 0
    resyncs: int = 0
    other_mounts: int = 0
    last_listing: float | None = None  # time.time() of the last listing that was answered
    # Seconds from a record's LastModified to this mount applying it (the newest ones).
    delays: list[float] = field(default_factory=list)


def _record_key(mount_id: str, seq: int) -> str:
    return f"{PREFIX}{mount_id}/{seq:012d}"


def _parse(key: str) -> tuple[str, int] | None:
    """(mount id, seq) of a record's key; None for anything else under the prefix."""
    rest = key[len(PREFIX):]
    mount_id, _, seq = rest.partition("/")
    if len(mount_id) != 16 or not seq.isdigit() or len(seq) != 12:
        return None
    try:
        int(mount_id, 16)
    except ValueError:
        return None
    return mount_id, int(seq)


def _path_of(key: str) -> str | None:
    """The path a changed key names (a marker `d/` names `d`); None for a key that is not
    a path of the tree (the reserved tree, `a//b`, `..`: keys the mount never shows)."""
    path = key[:-1] if key.endswith("/") else key
    if not path or keys.is_within(path, RESERVED) or \
            not all(keys.is_valid_name(name) for name in path.split("/")):
        return None
    return path


class ChangeLog:
    """Announces this mount's writes and applies other mounts'; see the module docstring."""

    def __init__(self, remote: Remote, cache: DirCache, *, writable: bool,
                 forget_opened: Callable[[str], None], poll: float = POLL) -> None:
        self.remote, self.cache = remote, cache
        self.writable = writable
        self.poll_interval = poll
        self._forget_opened = forget_opened
        self.mount_id = secrets.token_hex(8)
        self.stats = ChangeLogStats()
        #: Told of paths other mounts changed, after the caches here forgot them (the mount
        #: sets it: the kernel's caches).
        self.on_changed: OnChanged | None = None
        #: Told whether other mounts are watching the zone, whenever that changes.
        self.on_others: Callable[[bool], None] | None = None
        # Announcements not written yet.
        self._keys: set[str] = set()
        self._trees: set[str] = set()
        self._announced = trio.Event()
        self._seq = 0
        self._mine: list[_Mine] = []
        self._heartbeat_due = False
        self._last_written = time.monotonic()
        self._cannot_write = False
        # Other mounts: mount id -> the highest seq applied. None until the first listing.
        self._seen: dict[str, int] | None = None
        self._last_listed = time.monotonic()

    @property
    def running(self) -> bool:
        return self.remote.on_change == self.announce

    def to_dict(self) -> dict[str, object]:
        """What `zonefs status` shows: whether it runs, how many other mounts write records,
        what was written and read, and how late the last records were applied (seconds from
        their LastModified)."""
        st = self.stats
        delays = sorted(st.delays)
        return {
            "running": self.running,
            "mount_id": self.mount_id,
            "poll_seconds": self.poll_interval,
            "other_mounts": st.other_mounts,
            "records_written": st.records_written,
            "records_read": st.records_read,
            "paths_announced": st.paths_announced,
            "paths_heard": st.paths_heard,
            "resyncs": st.resyncs,
            "last_listing": None if st.last_listing is None else round(st.last_listing, 3),
            "applied_after_max_seconds": round(delays[-1], 3) if delays else None,
        }

    # -- announcing ------------------------------------------------------------------------------

    def announce(self, key: str) -> None:
        """A write of `key` may have landed in the store (`Remote.on_change`)."""
        path = _path_of(key)
        if path is None:
            return
        self._keys.add(path)
        if len(self._keys) > MAX_KEYS:
            self._trees.update(keys.split(p)[0] for p in self._keys)
            self._keys.clear()
            if len(self._trees) > MAX_KEYS:
                self._trees = {""}
        self.stats.paths_announced += 1
        self._announced.set()

    async def _write_announced(self) -> None:
        """Write records of what was announced until nothing is left (or writing stopped)."""
        while (self._keys or self._trees) and not self._cannot_write:
            body = json.dumps({"v": 1, "keys": sorted(self._keys),
                               "trees": sorted(self._trees)}).encode()
            self._keys.clear()
            self._trees.clear()
            await self._write(body)

    async def _write(self, body: bytes) -> None:
        """Write the next record, retrying the same key with the same body until the store
        takes it: a reader never sees a gap in the seqs, nor two bodies under one key (a
        retry of a PUT that landed after all writes it again)."""
        key = _record_key(self.mount_id, self._seq + 1)
        failures = 0
        while True:
            try:
                info = await self.remote.put_bytes(key, body, {}, "application/json",
                                                   kind="changes-put")
                break
            except ZonefsError as exc:
                if self._stop_writing(exc):
                    return
                failures += 1
                wait = min(RETRY_MAX, 0.25 * 2 ** min(failures, 10))
                log.debug("change record not written (%s); again in %.1f s", exc, wait)
                await trio.sleep(wait)
        self._seq += 1
        self._mine.append(_Mine(key, info.version_id, time.monotonic()))
        self._last_written = time.monotonic()
        self.stats.records_written += 1

    def _stop_writing(self, exc: ZonefsError) -> bool:
        """Whether `exc` says this mount may not write records at all (read-only keys)."""
        if _transient(exc):
            return False
        if not self._cannot_write:
            self._cannot_write = True
            self._keys.clear()
            self._trees.clear()
            log.info("other mounts will see this mount's changes within metadata_ttl: the "
                     "store refused its change records (%s)", exc)
        return True

    def _old_records(self) -> int:
        """How many of this mount's records are due for removal (older than RETAIN, never
        the newest)."""
        old_before = time.monotonic() - RETAIN
        return sum(1 for mine in self._mine[:-1] if mine.written < old_before)

    async def _remove_old(self, *, at_most: int) -> None:
        """Remove up to `at_most` of this mount's records due for removal."""
        for _ in range(min(at_most, self._old_records())):
            mine = self._mine[0]
            try:
                await self._remove(mine.key, mine.version_id)
            except ZonefsError as exc:
                if _transient(exc):
                    log.debug("change record %s not removed yet: %s", mine.key, exc)
                    return
                # Refused for good (a store that keeps versions but does not let them be
                # removed): the record stays; other mounts skip what they applied.
                log.debug("change record %s stays: %s", mine.key, exc)
            self._mine.pop(0)

    async def _remove(self, key: str, version_id: str | None) -> None:
        # The version itself where the store keeps versions: no delete marker piles up.
        if version_id is not None:
            try:
                await self.remote.delete_version(key, version_id, kind="changes-delete")
                return
            except ZonefsError as exc:
                if _transient(exc):
                    raise
        await self.remote.delete(key, kind="changes-delete")

    # -- the loops -----------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Announce this mount's writes and watch for other mounts' until cancelled. Ready
        once the first heartbeat and listing were tried (START_TIMEOUT at most): the mount
        then starts from what the store holds."""
        self.remote.on_change = self.announce
        try:
            with trio.move_on_after(START_TIMEOUT):
                if self.writable:
                    await self._write(b"")
                await self._list_quietly()
            async with trio.open_nursery() as nursery:
                if self.writable:
                    nursery.start_soon(self._writer)
                task_status.started()
                await self._watch()
        finally:
            self.remote.on_change = None

    async def _writer(self) -> None:
        """Every write of records and their removal: announcements (GATHER seconds after the
        first), and the heartbeats and removals `_watch` asks for in place of a listing."""
        while not self._cannot_write:
            await self._announced.wait()
            self._announced = trio.Event()
            if self._keys or self._trees:
                await trio.sleep(GATHER)
                await self._write_announced()
                await self._remove_old(at_most=len(self._mine))
            elif self._heartbeat_due:
                await self._write(b"")
            else:
                await self._remove_old(at_most=1)
            self._heartbeat_due = False

    async def _watch(self) -> None:
        """One request each poll: the listing, or in its place a heartbeat (written by
        `_writer`) or the removal of an old record, when one is due and nothing else is
        being written."""
        while True:
            await trio.sleep(self.poll_interval)
            if self.writable and not self._cannot_write and not self._announced.is_set():
                if time.monotonic() - self._last_written >= HEARTBEAT:
                    self._heartbeat_due = True
                    self._announced.set()
                    continue
                if self._old_records():
                    self._announced.set()
                    continue
            await self._list_quietly()

    async def close(self) -> None:
        """At unmount: write what was announced and not written yet, remove the old records.
        The newest ones stay for the other mounts to read; they remove them later (STALE)."""
        if not self.writable or self._cannot_write or \
                self.remote.health.not_answering("") is not None:
            return
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._write_announced()
            await self._remove_old(at_most=len(self._mine))

    # -- watching ----------------------------------------------------------------------------

    async def _list_quietly(self) -> None:
        try:
            await self.poll()
        except ZonefsError as exc:
            log.debug("change records not listed: %s", exc)

    async def poll(self) -> None:
        """List the records, and apply those of other mounts not applied yet."""
        started = time.monotonic()
        found, store_now = await self._list()
        missed = self._seen is not None and started - self._last_listed > RETAIN - 20
        self._last_listed = started
        self.stats.last_listing = time.time()
        others = sum(1 for recs in found.values()
                     if recs[-1][1].mtime >= store_now - 2 * HEARTBEAT - 30)
        if (others > 0) != (self.stats.other_mounts > 0) and self.on_others is not None:
            self.on_others(others > 0)
        self.stats.other_mounts = others
        if self._seen is None or missed:
            # The first listing: what the records say happened before this mount read the
            # store. After a long gap: some may be gone unread.
            if missed:
                await self.resync("the change records were not listed for too long")
            self._seen = {mid: recs[-1][0] for mid, recs in found.items()}
            return
        for mount_id, recs in found.items():
            if recs[-1][1].mtime < store_now - STALE:
                if self.writable and not self._cannot_write:
                    await self._remove_stale(recs)
                continue
            last = self._seen.get(mount_id)
            new = [(seq, info) for seq, info in recs if last is None or seq > last]
            expected = new[0][0] if last is None and new else (last or 0) + 1
            for seq, info in new:
                if seq != expected or not await self._apply(info):
                    await self.resync(f"records of mount {mount_id} were removed unread")
                    break
                expected = seq + 1
            self._seen[mount_id] = recs[-1][0]
        for gone in set(self._seen) - set(found):
            del self._seen[gone]

    async def _list(self) -> tuple[dict[str, list[tuple[int, ObjectInfo]]], float]:
        """Other mounts' records in the store (mount id -> [(seq, info)] by seq), and the
        store's time as far as the records tell (their newest LastModified)."""
        found: dict[str, list[tuple[int, ObjectInfo]]] = {}
        store_now = 0.0
        token: str | None = None
        while True:
            page = await self.remote.list(PREFIX, None, token, kind="changes-list")
            for info in page.objects:
                parsed = _parse(info.key)
                if parsed is None:
                    continue
                store_now = max(store_now, info.mtime)
                if parsed[0] != self.mount_id:
                    found.setdefault(parsed[0], []).append((parsed[1], info))
            token = page.next_token
            if not token:
                break
        for recs in found.values():
            recs.sort(key=lambda r: r[0])
        return found, store_now or time.time()

    async def _apply(self, info: ObjectInfo) -> bool:
        """Forget what the record `info` names. False when it is gone."""
        if info.size == 0:
            return True  # a heartbeat
        try:
            body = await self.remote.get_range(info.key, 0, info.size, kind="changes-get")
        except NotFound:
            return False
        self.stats.records_read += 1
        paths, trees = _decode(body, info.key)
        for path in paths:
            self.cache.changed_elsewhere(path)
            self._forget_opened(path)
        for top in trees:
            self.cache.changed_elsewhere(top, tree=True)
        self.stats.paths_heard += len(paths) + len(trees)
        self.stats.delays = [*self.stats.delays[-99:], max(0.0, time.time() - info.mtime)]
        if self.on_changed is not None and (paths or trees):
            await self.on_changed(paths, trees)
        return True

    async def resync(self, why: str) -> None:
        """Forget everything cached of the store: changes may have been missed."""
        log.info("asking the store again about every name: %s", why)
        self.stats.resyncs += 1
        self.cache.expire_tree("")
        if self.on_changed is not None:
            await self.on_changed([], [""])

    async def _remove_stale(self, recs: list[tuple[int, ObjectInfo]]) -> None:
        """Remove the records of a mount silent for STALE seconds (a few per listing)."""
        for _, info in recs[:10]:
            try:
                await self.remote.delete(info.key, kind="changes-delete")
            except ZonefsError as exc:
                log.debug("stale change record %s not removed: %s", info.key, exc)


def _transient(exc: ZonefsError) -> bool:
    """Whether a request that failed with `exc` may succeed if tried again."""
    return isinstance(exc, RemoteError) and exc.transient


def _decode(body: bytes, key: str) -> tuple[list[str], list[str]]:
    """The paths and trees a record names; nothing for a record that is not one."""
    try:
        data = json.loads(body)
        names = data.get("keys", []), data.get("trees", [])
    except (ValueError, AttributeError):
        log.debug("%s is not a change record; ignored", key)
        return [], []
    paths = [p for p in names[0] if isinstance(p, str) and _path_of(p) == p]
    trees = [t for t in names[1] if isinstance(t, str) and (t == "" or _path_of(t) == t)]
    return paths, trees
