"""Time-bounded caches of what the bucket looked like: listings, entries and negative lookups.

The caches hold only remote facts; local changes that have not reached the bucket live in the
journal and are laid over these by `vfs`. Every entry expires after the metadata TTL, so changes
made by other clients show within it. After a local mutation, `vfs` calls `invalidate` (or
`put_entry` with what it now knows), which also drops the parent's listing: a listing is cached
whole or not at all.

A listing or lookup that was in flight while such a local change was made must not bring back
what the store said before it (an upload that landed while a listing was on its way: the
listing still shows the old size and ETag). Reads of the store are bracketed by `begin_fetch`
and `end_fetch`; while one is in flight every local change is stamped, and `put_listing` and
`put_fetched` let the newer local facts win over what the fetch brought. After a local change
nothing is known of (an invalidation: a directory marker deleted, a rename), they say so, and
the caller asks the store again: what the fetch brought may show a name that is gone.

Other views of the store built by this mount (the history under `.zonefs/`) register with
`on_local_change`: every local change told to this cache (`put_entry`, `invalidate`,
`invalidate_tree`, `expire_tree`, `clear`) is passed on to them at once; what a fetch brought
(`put_fetched`, `put_listing`) is not a change and is not passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

from zonefs.common.keys import PosixMeta, is_within, split


@dataclass(slots=True)
class Entry:
    """One remote name. `meta` is None until the object's headers were read (or remembered)."""

    is_dir: bool
    size: int = 0
    etag: str | None = None
    mtime: float = 0.0  # LastModified
    meta: PosixMeta | None = None
    version_id: str | None = None
    # A directory's entry that hides an object of the same name (`x` and `x/y` both exist):
    # that object, shown if the directory's delete is pending.
    shadowed: Entry | None = None
    # A directory's: whether a marker object (`dir/`) holds its attributes (None: not known
    # yet; False: the directory exists only as a prefix of other keys).
    marker: bool | None = None


#: What `DirCache.entry` returns when it knows nothing (distinct from None: "known missing").
UNKNOWN = object()


class DirCache:
    """Listings (dir path → {name: Entry}), entries (path → Entry) and negative entries."""

    def __init__(self, ttl: float, *, max_dirs: int = 512, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self._listings: TTLCache[str, dict[str, Entry]] = TTLCache(max_dirs, ttl)
        self._entries: TTLCache[str, Entry | None] = TTLCache(max_entries, ttl)
        # The last listing of each directory, past its TTL: what a lookup falls back on while
        # the store cannot be reached. The same dicts as `_listings`, so entries updated by
        # local changes stay current; any invalidation drops it (then lookups fail instead).
        self._last: LRUCache[str, dict[str, Entry]] = LRUCache(max_dirs)
        self._last_entries: LRUCache[str, Entry | None] = LRUCache(max_entries)
        # Local changes stamped while fetches are in flight: path -> (stamp, whole tree).
        self._stamp = 0
        self._fetches = 0
        self._changed: dict[str, tuple[int, bool]] = {}
        self._listeners: list[Callable[[str, bool], None]] = []

    def on_local_change(self, listener: Callable[[str, bool], None]) -> None:
        """Call `listener(path, tree)` after every local change of `path` (of everything
        below it too when `tree`; '' with `tree` for the whole zone)."""
        self._listeners.append(listener)

    def _tell(self, path: str, *, tree: bool = False) -> None:
        for listener in self._listeners:
            listener(path, tree)

    # -- fetches racing local changes ---------------------------------------------------------

    def begin_fetch(self) -> int:
        """A read of the store starts; returns the stamp to pass to `put_listing` or
        `put_fetched`. Pair it with `end_fetch`."""
        self._fetches += 1
        return self._stamp

    def end_fetch(self) -> None:
        self._fetches -= 1
        if self._fetches <= 0:
            self._fetches = 0
            self._changed.clear()  # no fetch left that a stamp could matter to

    def _touch(self, path: str, *, tree: bool = False) -> None:
        self._stamp += 1
        if self._fetches:
            self._changed[path] = (self._stamp, tree)

    def _changes_since(self, since: int) -> list[tuple[str, bool]]:
        return [(p, tree) for p, (stamp, tree) in self._changed.items() if stamp > since]

    def put_fetched(self, path: str, entry: Entry | None, since: int) -> Entry | None | object:
        """Cache what a lookup that began at stamp `since` found at `path`, unless a local
        change of `path` came meanwhile: then that newer fact is returned instead, or
        UNKNOWN when nothing is known of it (`entry` may be out of date: look it up again)."""
        for p, tree in self._changes_since(since):
            if p == path or (tree and is_within(path, p)):
                return self.entry(path)
        self._put(path, entry)
        return entry

    def listing(self, path: str) -> dict[str, Entry] | None:
        return self._listings.get(path)

    def put_listing(self, path: str, names: dict[str, Entry], since: int | None = None) -> bool:
        """Cache the listing of `path`. With `since` (the stamp of `begin_fetch`), entries
        changed locally while it was fetched are first set to what is known now (in `names`
        too); after a change nothing is known of, the listing is not cached, and False says
        that `names` may be out of date (list again)."""
        if since is not None:
            keep = True
            for p, tree in self._changes_since(since):
                if tree and is_within(path, p):
                    keep = False
                elif split(p)[0] == path and p:
                    known = self._entries.get(p, UNKNOWN)
                    if known is UNKNOWN:
                        keep = False
                    elif known is None:
                        names.pop(split(p)[1], None)
                    else:
                        names[split(p)[1]] = known  # type: ignore[assignment]
            if not keep:
                return False
        self._listings[path] = names
        self._last[path] = names
        return True

    def last_listing(self, path: str) -> dict[str, Entry] | None:
        """The last listing of `path`, however old (None if there is none, or it was
        invalidated since)."""
        return self._last.get(path)

    def last_entry(self, path: str) -> Entry | None | object:
        """What was last known of `path`, however old: like `entry`, past the TTL."""
        if path in self._last_entries:
            return self._last_entries[path]
        listing = self._last.get(split(path)[0])
        if listing is not None:
            return listing.get(split(path)[1])
        return UNKNOWN

    def entry(self, path: str) -> Entry | None | object:
        """The entry at `path`, None if known missing, UNKNOWN if nothing is cached."""
        if path in self._entries:
            return self._entries[path]
        parent, name = split(path)
        listing = self._listings.get(parent)
        if listing is not None:
            return listing.get(name)
        return UNKNOWN

    def put_entry(self, path: str, entry: Entry | None) -> None:
        """A local change: `path` is now `entry` in the store (None: it is gone)."""
        self._put(path, entry)
        self._tell(path)

    def _put(self, path: str, entry: Entry | None) -> None:
        self._touch(path)
        self._entries[path] = entry
        self._last_entries[path] = entry
        parent, name = split(path)
        for listing in {id(x): x for x in (self._listings.get(parent), self._last.get(parent))
                        if x is not None}.values():
            if entry is None:
                listing.pop(name, None)
            else:
                listing[name] = entry

    def set_meta(self, path: str, meta: PosixMeta) -> None:
        """The attributes of the entry at `path` are `meta` here (not in the store): in its
        cached entry and its parent's listings, until they are fetched again."""
        parent, name = split(path)
        for source in (self._entries.get(path), self._last_entries.get(path),
                       *(x.get(name) for x in (self._listings.get(parent), self._last.get(parent))
                         if x is not None)):
            if isinstance(source, Entry):
                source.meta = meta

    def invalidate(self, path: str) -> None:
        """Forget `path` and its parent's listing."""
        self._touch(path)
        self._entries.pop(path, None)
        self._last_entries.pop(path, None)
        self._listings.pop(split(path)[0], None)
        self._last.pop(split(path)[0], None)
        self._tell(path)

    def changed_elsewhere(self, path: str, *, tree: bool = False) -> None:
        """Another mount changed `path` (and everything below it, with `tree`): forget it,
        and every directory above it, whose listings may have changed with it (a directory
        made by a new key, or gone with its last one)."""
        if tree:
            self.invalidate_tree(path)
        else:
            self.invalidate(path)
        parent = split(path)[0]
        while parent:
            self.invalidate(parent)
            parent = split(parent)[0]

    def invalidate_tree(self, top: str) -> None:
        """Forget `top`, everything below it, and its parent's listing."""
        self._touch(top, tree=True)
        for cache in (self._entries, self._listings, self._last, self._last_entries):
            for path in [p for p in cache if is_within(p, top)]:
                cache.pop(path, None)
        self._listings.pop(split(top)[0], None)
        self._last.pop(split(top)[0], None)
        self._tell(top, tree=True)

    def expire_tree(self, top: str) -> None:
        """Ask the store again about `top` and everything below it, but keep their last
        listings to answer from while it cannot be reached."""
        self._touch(top, tree=True)
        for cache in (self._entries, self._listings):
            for path in [p for p in cache if is_within(p, top)]:
                cache.pop(path, None)
        self._listings.pop(split(top)[0], None)
        self._tell(top, tree=True)

    def clear(self) -> None:
        self._entries.clear()
        self._listings.clear()
        self._last.clear()
        self._last_entries.clear()
        self._tell("", tree=True)
