"""Time-bounded caches of what the bucket looked like: listings, entries and negative lookups.

The caches hold only remote facts; local changes that have not reached the bucket live in the
journal and are laid over these by `vfs`. Every entry expires after the metadata TTL, so changes
made by other clients show within it. After a local mutation, `vfs` calls `invalidate` (or
`put_entry` with what it now knows), which also drops the parent's listing: a listing is cached
whole or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

from .keys import PosixMeta, is_within, split


@dataclass(slots=True)
class Entry:
    """One remote name. `meta` is None until the object's headers were read (or remembered)."""

    is_dir: bool
    size: int = 0
    etag: str | None = None
    mtime: float = 0.0  # LastModified
    meta: PosixMeta | None = None
    version_id: str | None = None


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

    def listing(self, path: str) -> dict[str, Entry] | None:
        return self._listings.get(path)

    def put_listing(self, path: str, names: dict[str, Entry]) -> None:
        self._listings[path] = names
        self._last[path] = names

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
        self._entries[path] = entry
        self._last_entries[path] = entry
        parent, name = split(path)
        for listing in {id(x): x for x in (self._listings.get(parent), self._last.get(parent))
                        if x is not None}.values():
            if entry is None:
                listing.pop(name, None)
            else:
                listing[name] = entry

    def invalidate(self, path: str) -> None:
        """Forget `path` and its parent's listing."""
        self._entries.pop(path, None)
        self._last_entries.pop(path, None)
        self._listings.pop(split(path)[0], None)
        self._last.pop(split(path)[0], None)

    def invalidate_tree(self, top: str) -> None:
        """Forget `top`, everything below it, and its parent's listing."""
        for cache in (self._entries, self._listings, self._last, self._last_entries):
            for path in [p for p in cache if is_within(p, top)]:
                cache.pop(path, None)
        self._listings.pop(split(top)[0], None)
        self._last.pop(split(top)[0], None)

    def clear(self) -> None:
        self._entries.clear()
        self._listings.clear()
        self._last.clear()
        self._last_entries.clear()
