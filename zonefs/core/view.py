"""What the mount shows of a zone: the remote listing with the pending local changes laid over
it, answered by path (`stat`, `listdir`), with no knowledge of FUSE or inodes.

`View` combines the remote facts cached in `DirCache` (listings, entries, negative lookups)
with the changes not yet in the bucket that the pending ledger holds: dirty rows (files,
symlinks and directories to put) and pending deletes. `objects.RemoteObjects` supplies the
POSIX attributes of remote objects (remembered by ETag, else one request); the `.zonefs` tree
and `-o at=` views are `versions.History`'s.

Invariants:
- Files, directories and symlinks not yet uploaded appear in listings and stats whatever the
  remote listing says; keys whose delete is pending are hidden (an object a hidden directory
  shadowed shows instead), and a directory with pending rows below it exists.
- What a listing or lookup brings back after awaiting the store never overrides a newer local
  fact: an upload that landed meanwhile put its object in the dircache, and that is what is
  answered (the kernel must not be told an older size, or a made-up type).
- Keys that cannot be shown as they are (not valid names, `.zonefs` at the root, a file hidden
  by a directory of the same name) are never a crash: each is reported once (`reported`, for
  `zonefs status`) and hidden.
- While the store cannot be reached, lookups and listings answer from what was last known.
- Past the metadata TTL, a name in a directory whose last listing held at most `RELIST_ENTRIES`
  entries is answered from a new listing of that directory, shared by every lookup in it
  meanwhile (`git status` revalidates a directory with one LIST, not one per name); in a
  larger directory each name is looked up alone until as many names were looked up there as
  a listing would take pages, then it is listed again (never more than twice the requests of
  the cheaper way). At most one listing of a directory, and one lookup of a name, is on its
  way at a time: who needs it meanwhile waits for it (the kernel sends a lookup per caller).
- A listing never waits for headers (nor, while the store cannot be reached, does a stat of
  an entry a listing showed): an entry whose headers are not remembered shows the
  mount's defaults as a `provisional` Stat (the kernel is told not to keep it), with the type
  the listing gives (a directory, else a file). `stat` always answers with the headers; the
  first stat that has to fetch them starts fetching those of its directory's other unknown
  entries (`ls -l`), once per listing.
"""

from __future__ import annotations

import logging
import stat as st
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from cachetools import LRUCache

from zonefs.cache.dircache import UNKNOWN, DirCache, Entry
from zonefs.common import keys
from zonefs.common.errors import (
    InvalidArgument,
    NameTooLong,
    NotADirectory,
    NotFound,
    ReadOnly,
    RemoteError,
)
from zonefs.common.keys import RESERVED, PosixMeta
from zonefs.core.values import Listing, Stat

if TYPE_CHECKING:
    from zonefs.cache.journal import Journal
    from zonefs.common.config import MountOptions
    from zonefs.core.fetch import Spawn
    from zonefs.core.objects import RemoteObjects
    from zonefs.core.versions import History
    from zonefs.pending.ledger import Ledger
    from zonefs.pending.rows import DirtyFile
    from zonefs.remote.base import ObjectInfo, Remote
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Entries whose headers are fetched ahead of a listing's reader in one batch of HEADs.
PREFETCH_BATCH = 1000
#: Times a lookup or listing is asked again when a local change raced it (see `DirCache`); the
#: last answer stands, uncached.
FETCH_ATTEMPTS = 3
#: Odd keys remembered for `zonefs status` (each is still logged once, up to this many).
MAX_REPORTED = 1000
#: Entries of one LIST page. A lookup past the TTL in a directory whose last listing held at
#: most this many entries lists the directory again (one request, like a lookup of the name).
RELIST_ENTRIES = 1000


class _Flight:
    """One request of the store on its way (a listing, a lookup); who else needs the same
    answer meanwhile waits for `done` and shares it (`result`, or `error`)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.finished = False
        self.result: Any = None
        self.error: Exception | None = None


async def _shared(flights: dict[str, _Flight], key: str,
                  fetch: Callable[[], Awaitable[T]]) -> T:
    """`await fetch()`, unless the same one (`key` in `flights`) is on its way: then its
    answer, or its error. If the task that fetched was cancelled, fetch anew."""
    while (flight := flights.get(key)) is not None:
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        if flight.finished:
            return flight.result  # type: ignore[no-any-return]
    flight = flights[key] = _Flight()
    try:
        flight.result = await fetch()
        flight.finished = True
        return flight.result  # type: ignore[no-any-return]
    except Exception as exc:
        flight.error = exc
        raise
    finally:
        del flights[key]
        flight.done.set()


#: Directories whose subdirectory count (`View.subdirs`) is remembered.
SUBDIR_COUNTS = 4096


class View:
    """Stat and listings of paths; see the module docstring for the invariants."""

    def __init__(self, remote: Remote, journal: Journal, cache: DirCache,
                 objects: RemoteObjects, ledger: Ledger, history: History,
                 opts: MountOptions, capabilities: Capabilities, *, spawn: Spawn) -> None:
        self.remote, self.journal, self.cache, self.objects = remote, journal, cache, objects
        self.ledger, self.history, self.opts = ledger, history, opts
        self.capabilities = capabilities
        self._spawn = spawn
        self.mount_time_ns = time.time_ns()
        # When an entry of the mount root was last created, removed or renamed: its mtime
        # and ctime (the root has no marker to keep them: they last as long as the mount).
        self._root_changed_ns = self.mount_time_ns
        # directory -> how many subdirectories it has, as far as this mount knows: counted at
        # its last listing (or 0 at its mkdir), then kept up by this mount's mkdir, rmdir and
        # renames (`st_nlink` is 2 plus this, as on a local filesystem).
        self._subdirs: LRUCache[str, int] = LRUCache(maxsize=SUBDIR_COUNTS)
        # Keys the mount cannot show as they are (reported once each; `zonefs status` lists them).
        self.reported: dict[str, str] = {}
        self._prefetched: dict[str, int] = {}  # directory -> id() of the listing prefetched
        self._listing: dict[str, _Flight] = {}  # directory -> its listing on its way
        self._lookup: dict[str, _Flight] = {}  # path -> its lookup on its way
        # directory -> (id() of its last listing, names looked up alone since it expired)
        self._alone: dict[str, tuple[int, int]] = {}

    # -- stat -----------------------------------------------------------------------------------

    def root_meta(self) -> PosixMeta:
        # Created, removed or renamed entries move mtime and ctime; atime is the mount time.
        changed = self._root_changed_ns
        return PosixMeta(st.S_IFDIR | self.opts.dir_mode, self.opts.uid, self.opts.gid,
                         changed, changed, self.mount_time_ns)

    def root_changed(self) -> None:
        """An entry of the mount root was created, removed or renamed."""
        self._root_changed_ns = time.time_ns()

    def check_writable(self, path: str) -> None:
        if self.opts.read_only:
            raise ReadOnly(path)
        if keys.is_within(path, RESERVED):
            raise ReadOnly(f"{RESERVED} is read-only")

    def check_new_name(self, path: str) -> None:
        """Raise the errno a user should see for the name of `path`, about to be created (or
        renamed to): a name the store would keep under another key is refused (EINVAL), and
        one longer than the store takes (ENAMETOOLONG), with one log line, before anything is
        written."""
        name = keys.split(path)[1]
        if len(name.encode("utf-8", "surrogateescape")) > keys.NAME_MAX:
            raise NameTooLong(name[:40] + "...")
        if not keys.is_valid_name(name):
            raise InvalidArgument(f"invalid name {name!r}")
        longest = self.capabilities.max_name_bytes
        if len(name.encode("utf-8", "surrogateescape")) > longest:
            log.warning("%r refused: the store takes names of at most %d bytes (store probe: "
                        "max_name_bytes=%d)", path, longest, longest)
            raise NameTooLong(f"{path}: the store takes names of at most {longest} bytes")
        if "\\" in name and self.capabilities.backslash_keys != "kept":
            log.warning("%r refused: the store rewrites a backslash in a key (it would show as "
                        "%r; store probe: backslash_keys=%s)", path, path.replace("\\", "/"),
                        self.capabilities.backslash_keys)
            raise InvalidArgument(f"{path}: the store does not keep a backslash in a name")

    async def stat(self, path: str) -> Stat:
        if path and keys.is_within(path, RESERVED):
            return await self.history.stat(path)
        if self.opts.at is not None:
            return await self.history.stat_at(path, self.opts.at)
        if path == "":
            return Stat(self.root_meta(), 0)
        df = self.ledger.row(path)
        if df is not None:
            return Stat(df.row.meta, df.row.size, df.row.base_etag, self._state(df))
        entry = await self._entry(path)
        if entry.meta is None and not self.objects.remembered_meta(path, entry):
            # `ls -l` stats every entry right after the listing: fetch the headers of the
            # others too, concurrently, instead of one request after another.
            self._prefetch_siblings(path)
            try:
                await self.objects.ensure_meta(path, entry)
            except RemoteError as exc:
                if not exc.transient:
                    raise
                # The store cannot be reached: the entry is known to exist (from a listing),
                # only its headers are not. Show the defaults, not to be kept, rather than
                # fail: `rm` and `mv` of it still work, and they are applied later.
                return Stat(self.objects.default_meta(entry),
                            0 if entry.is_dir else entry.size, entry.etag, provisional=True)
        # Awaited: the file may have been written meanwhile, or an upload of it landed.
        df = self.ledger.row(path)
        if df is not None:
            return Stat(df.row.meta, df.row.size, df.row.base_etag, self._state(df))
        entry = self._freshest(path, entry)
        assert entry.meta is not None
        return Stat(entry.meta, 0 if entry.is_dir else entry.size, entry.etag)

    async def _is_dir(self, path: str) -> bool:
        """Whether `path` is a directory (NotFound if nothing): its type, not its headers."""
        if path == "":
            return True
        df = self.ledger.row(path)
        if df is not None:
            return df.is_dir
        return (await self._entry(path)).is_dir

    def _state(self, df: DirtyFile) -> str:
        return "uploading" if self.ledger.is_uploading(df) else "dirty"

    async def _entry(self, path: str) -> Entry:
        """The remote entry at `path` (cached), or NotFound."""
        entry = self.cache.entry(path)
        if entry is UNKNOWN:
            entry = await self._revalidate(path)
        if entry is not None:
            assert isinstance(entry, Entry)
            entry = self._visible(path, entry)
        if entry is None:
            if self.has_pending_below(path):
                return Entry(is_dir=True, mtime=self.mount_time_ns / 1e9)
            raise NotFound(path)
        return entry

    async def _revalidate(self, path: str) -> Entry | None:
        """What `path` is in the store, nothing being cached of it: from a new listing of its
        directory when that costs no more than a lookup of the name (see the module
        docstring), else from a lookup of the name alone."""
        parent = keys.split(path)[0]
        if self._relist_pays(parent):
            try:
                await self._list_shared(parent)
            except RemoteError as exc:
                if not exc.transient:
                    raise
                return self._last_known(path, exc)
            entry = self.cache.entry(path)
            if entry is not UNKNOWN:
                return entry  # type: ignore[return-value]
            # Local changes kept racing the listing (it was not kept), or dropped it since:
            # ask for the name alone.
        found = await _shared(self._lookup, path, lambda: self._fetch_entry(path))
        # Who waited for another task's lookup: a local change may have come since.
        known = self.cache.entry(path)
        return found if known is UNKNOWN else known  # type: ignore[return-value]

    def _relist_pays(self, parent: str) -> bool:
        """Whether a lookup in `parent` (its listing expired) should list it again: its last
        listing took one page, or as many names were looked up alone since it expired as a
        listing takes pages."""
        if parent in self._listing:
            return True  # on its way: waiting for it costs nothing
        last = self.cache.last_listing(parent)
        if last is None:
            return False  # never listed (or changed here since): the size is unknown
        pages = -(-len(last) // RELIST_ENTRIES)
        if pages <= 1:
            return True
        seen, alone = self._alone.get(parent, (0, 0))
        alone = alone + 1 if seen == id(last) else 1
        if alone > pages:
            self._alone.pop(parent, None)
            return True
        if len(self._alone) > 4096:
            self._alone.clear()
        self._alone[parent] = (id(last), alone)
        return False

    async def _fetch_entry(self, path: str) -> Entry | None:
        """Ask the store what `path` is; while it cannot be reached, what was last known."""
        for _ in range(FETCH_ATTEMPTS):
            found, known = await self._fetch_entry_once(path)
            if known is not UNKNOWN:
                return known  # type: ignore[return-value]
            # Changed here meanwhile in a way nothing is known of (a delete of its
            # directory marker landed): what the store said may already be gone.
        return found

    async def _fetch_entry_once(self, path: str) -> tuple[Entry | None, Entry | None | object]:
        """One lookup of `path`: what the store said, and what the mount knows now (UNKNOWN
        when a local change raced the lookup)."""
        since = self.cache.begin_fetch()
        try:
            try:
                found = await self._lookup_remote(path)
            except RemoteError as exc:
                if not exc.transient:
                    raise
                stale = self._last_known(path, exc)
                return stale, stale
            # An upload that landed meanwhile knows better than the lookup.
            return found, self.cache.put_fetched(path, found, since)
        finally:
            self.cache.end_fetch()

    def _last_known(self, path: str, exc: RemoteError) -> Entry | None:
        """The store cannot be reached: answer from what was last known (the entry, or its
        directory's last listing), so that known names still resolve. A name nothing is known
        of shows as absent (not remembered as such): it can be created in any directory
        meanwhile, and its upload waits and never replaces an object another writer put
        there (that ends as a conflict copy)."""
        stale = self.cache.last_entry(path)
        if stale is UNKNOWN:
            log.debug("store unreachable; %r taken for absent: %s", path, exc)
            return None
        log.debug("store unreachable; %r answered from what was last known", path)
        return stale  # type: ignore[return-value]

    def _visible(self, path: str, entry: Entry) -> Entry | None:
        """The remote entry at `path` as the mount shows it: None when its delete is pending
        (a file the directory shadowed may show instead)."""
        if not self.ledger.hides(path, entry.is_dir):
            return entry
        shadowed = entry.shadowed
        if shadowed is not None and not self.ledger.hides(path, False):
            return shadowed
        return None

    async def _lookup_remote(self, path: str) -> Entry | None:
        """One LIST tells whether `path` is a file, a directory or nothing.

        Listing with the name itself as prefix returns the object `path` and the common prefix
        `path/` together (siblings such as `path.txt` sort between them, hence the loop); a
        file's headers then come from the journal when its ETag is remembered, else a HEAD.
        """
        token: str | None = None
        found: ObjectInfo | None = None
        while True:
            page = await self.remote.list(path, "/", token, 100)
            for obj in page.objects:
                if obj.key == path:
                    found = obj
            if any(p == path + "/" for p in page.prefixes):
                return Entry(is_dir=True, mtime=self.mount_time_ns / 1e9,
                             shadowed=None if found is None else self._file_entry(found))
            last = max([o.key for o in page.objects] + page.prefixes, default="")
            token = page.next_token
            if not token or last > path + "/":
                break
        return None if found is None else self._file_entry(found)

    def _file_entry(self, obj: ObjectInfo) -> Entry:
        """The entry of a listed object, with its headers when the journal remembers them."""
        memo = self.journal.get_object(obj.key, obj.etag)
        return Entry(False, obj.size, obj.etag, obj.mtime, memo.meta if memo else None)

    # -- listing --------------------------------------------------------------------------------

    async def listdir(self, path: str) -> list[tuple[str, Stat]]:
        """Sorted (name, Stat) of a directory, pending local files included."""
        return list(await self.listing(path))

    async def listing(self, path: str) -> Sequence[tuple[str, Stat]]:
        """What `listdir` answers, as a `Listing`: the names as they are now, each Stat
        made when it is read (a readdir handle holds one of these while it is open)."""
        if path and keys.is_within(path, RESERVED):
            return await self.history.listdir(path)
        if self.opts.at is not None:
            return await self.history.listdir_at(path, self.opts.at)
        if not await self._is_dir(path):
            raise NotADirectory(path)
        names = dict(await self._remote_listing(path))
        # Names with a pending row here: whether it shows a directory (it answers for them).
        rows_here: dict[str, bool] = {}
        if self.ledger.has_deletes():
            for name, entry in list(names.items()):
                shown = self._visible(keys.join(path, name), entry)
                if shown is None:
                    del names[name]  # a pending row below brings a directory back (next loop)
                else:
                    names[name] = shown
        for dpath, df in self.ledger.items():
            parent, name = keys.split(dpath)
            if parent == path:
                # Shown from its row below; this stands in if its upload lands meanwhile.
                names.setdefault(name, Entry(is_dir=df.is_dir))
                rows_here[name] = st.S_ISDIR(df.row.meta.mode)
            elif keys.is_within(dpath, path) and dpath != path:
                sub = dpath[len(path) + 1 if path else 0:].split("/", 1)[0]
                names.setdefault(sub, Entry(is_dir=True, mtime=self.mount_time_ns / 1e9))
        if path == "":
            names.pop(RESERVED, None)
        # `_listed_stat` keeps a listed entry's type (`_freshest` only ever answers one of the
        # same type), so a row is all that can change it.
        self._subdirs[path] = sum(1 for name, entry in names.items()
                                  if rows_here.get(name, entry.is_dir))
        return Listing(path, sorted(names), names, self._listed_stat)

    def _listed_stat(self, child: str, entry: Entry) -> Stat:
        """The Stat of `child`, which a listing showed as `entry`."""
        df = self.ledger.row(child)
        if df is not None:
            return Stat(df.row.meta, df.row.size, df.row.base_etag, "dirty")
        entry = self._freshest(child, entry)
        size = 0 if entry.is_dir else entry.size
        if not self.objects.remembered_meta(child, entry):
            # Headers never seen: a listing does not wait for them (`find` and `ls` need
            # only names and types). The entry shows the mount's defaults, which the kernel
            # must not keep: the first stat of it asks for its headers.
            return Stat(self.objects.default_meta(entry), size, entry.etag, provisional=True)
        assert entry.meta is not None
        return Stat(entry.meta, size, entry.etag)

    # -- subdirectory counts (st_nlink) -----------------------------------------------------

    def subdirs(self, path: str) -> int:
        """How many subdirectories the directory `path` has, as far as this mount knows (0
        for a directory never listed here)."""
        return self._subdirs.get(path, 0)

    def _count(self, parent: str, delta: int) -> None:
        if parent in self._subdirs:
            self._subdirs[parent] = max(0, self._subdirs[parent] + delta)

    def dir_added(self, path: str) -> None:
        """`mkdir path`: a new, empty directory in its parent."""
        self._subdirs[path] = 0
        self._count(keys.split(path)[0], +1)

    def dir_removed(self, path: str) -> None:
        self._subdirs.pop(path, None)
        self._count(keys.split(path)[0], -1)

    def dir_moved(self, old: str, new: str, *, replaced: bool) -> None:
        """The directory `old` is now `new` (`replaced`: an empty directory was there)."""
        count = self._subdirs.pop(old, None)
        for below in [p for p in self._subdirs if keys.is_within(p, old)]:
            del self._subdirs[below]  # listed again under their new names
        self._count(keys.split(old)[0], -1)
        if not replaced:
            self._count(keys.split(new)[0], +1)
        if count is not None:
            self._subdirs[new] = count

    def has_marker(self, path: str) -> bool:
        """Whether the directory `path` is known to have a marker object (`dir/`)."""
        known = self.cache.entry(path)
        if not isinstance(known, Entry):
            known = self.cache.last_entry(path)
        return isinstance(known, Entry) and known.is_dir and known.marker is True

    def set_cached_meta(self, path: str, meta: PosixMeta) -> None:
        """Show `meta` for the remote entry `path` until the mount fetches it again."""
        self.cache.set_meta(path, meta)

    def _freshest(self, path: str, entry: Entry) -> Entry:
        """`entry` (from a listing, or standing in for a pending row), or what the dircache
        learnt of the same name since, when that is of the same type and has its headers: an
        upload that left the dirty rows while a listing was being answered put its object
        there, and the kernel must not be told the older size (or a made-up type)."""
        known = self.cache.entry(path)
        if (isinstance(known, Entry) and known.is_dir == entry.is_dir
                and known.meta is not None and (not entry.is_dir or entry.meta is None)):
            return known
        return entry

    async def _remote_listing(self, path: str) -> dict[str, Entry]:
        cached = self.cache.listing(path)
        if cached is not None:
            return cached
        try:
            return await self._list_shared(path)
        except RemoteError as exc:
            stale = self.cache.last_listing(path) if exc.transient else None
            if stale is None:
                raise
            log.debug("store unreachable; listing of %r from its last listing", path)
            return stale

    async def _list_shared(self, path: str) -> dict[str, Entry]:
        """`_list_remote(path)`, one at a time per directory: who needs it while a listing of
        it is on its way (lookups past the TTL, a readdir) waits for that one and shares its
        answer or its error. What a local change meanwhile did is in it (`put_listing`), and
        in the dircache that waiters read afterwards."""
        return await _shared(self._listing, path, lambda: self._list_remote(path))

    async def _list_remote(self, path: str) -> dict[str, Entry]:
        for _ in range(FETCH_ATTEMPTS):
            since = self.cache.begin_fetch()
            try:
                names = await self._list_pages(path)
                # An upload that landed while the pages came knows better than they do.
                kept = self.cache.put_listing(path, names, since)
            finally:
                self.cache.end_fetch()
            if kept:
                break
            # A change here nothing is known of came meanwhile (a subdirectory's marker
            # deleted): the pages may show a name that is gone. List again.
        return names

    async def _list_pages(self, path: str) -> dict[str, Entry]:
        prefix = keys.dir_key(path)
        names: dict[str, Entry] = {}
        token: str | None = None
        while True:
            page = await self.remote.list(prefix, "/", token)
            for obj in page.objects:
                name = obj.key[len(prefix):]
                if name == "":
                    continue  # the directory's own marker
                if not self._showable(path, name):
                    continue
                names[name] = self._file_entry(obj)
            for pre in page.prefixes:
                name = pre[len(prefix):-1]
                if not self._showable(path, name):
                    continue
                shadowed = names.get(name)
                if shadowed is not None:
                    self._report(keys.join(path, name), "is both a file and a directory; "
                                 "showing the directory")
                names[name] = Entry(is_dir=True, mtime=self.mount_time_ns / 1e9,
                                    shadowed=shadowed)
            token = page.next_token
            if not token:
                return names

    def _showable(self, parent: str, name: str) -> bool:
        if parent == "" and name == RESERVED:
            # zonefs' own (the change log's records, the store probe's keys): not odd.
            return False
        if not keys.is_valid_name(name):
            self._report(keys.join(parent, name), "is not a valid file name; hidden")
            return False
        return True

    def _report(self, path: str, what: str) -> None:
        if path in self.reported or len(self.reported) >= MAX_REPORTED:
            return
        self.reported[path] = what
        log.warning("key %r %s", path, what)

    def _prefetch_siblings(self, path: str) -> None:
        """The headers of `path` are needed: start reading those of every entry of its
        directory's listing not yet known, once per listing, in the background."""
        parent = keys.split(path)[0]
        listing = self.cache.listing(parent) or self.cache.last_listing(parent)
        if listing is None or self._prefetched.get(parent) == id(listing):
            return
        if len(self._prefetched) > 4096:
            self._prefetched.clear()
        self._prefetched[parent] = id(listing)
        self._prefetch_meta(parent, listing)

    def _prefetch_meta(self, path: str, names: dict[str, Entry]) -> None:
        """Read the headers of every entry not yet known, concurrently, in the background.

        `ls -l` asks for each entry's attributes right after the listing; fetching them all at
        once, bounded by the remote's request limit, beats one HEAD after another.
        """
        todo = [(keys.join(path, name), e) for name, e in list(names.items())
                if e.meta is None]
        if todo:
            self._spawn(lambda: self._prefetch_all(todo))

    async def _prefetch_all(self, todo: list[tuple[str, Entry]]) -> None:
        # In batches of PREFETCH_BATCH, so that listing a directory of 100,000 keys does not
        # hold 100,000 waits at once; half the request slots, so that reads still get theirs.
        workers = max(1, self.opts.max_requests // 2)
        for at in range(0, len(todo), PREFETCH_BATCH):
            try:
                await self.objects.prefetch_headers(todo[at:at + PREFETCH_BATCH],
                                                    workers=workers)
            except Exception as exc:  # the reader that needs it will see the error itself
                log.debug("prefetch in %r failed: %s", todo[at][0], exc)

    def has_pending_below(self, path: str) -> bool:
        return self.ledger.has_below(path)

    async def parent_dir(self, path: str) -> None:
        parent = keys.split(path)[0]
        if not (await self.stat(parent)).is_dir:
            raise NotADirectory(parent)

    async def exists(self, path: str) -> Stat | None:
        try:
            return await self.stat(path)
        except NotFound:
            return None
