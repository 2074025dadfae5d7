"""Deletes asked for and not yet in the bucket: `unlink`, `rmdir`, and the old name of a
renamed pending file.

`PendingDeletes` owns the in-memory mirror of the journal's `deletes` table: zone key (`a/b` for
a file, `a/b/` for a directory marker) -> the ETag the object had when the delete was asked for
(None: not known to exist). `vfs` lays it over the remote listing, so a key with a pending
delete is hidden; the write-back queue applies it, under the key itself as its queue name (a
key has at most one pending change, so a delete and an upload never share a name).

Invariants:
- A delete is in the journal (fsync'ed) before the call that asked for it returns, and it is
  handed to the write-back queue only after that.
- A write of a key with a pending delete (a new file, directory or symlink there, a pending
  file renamed onto it) takes the delete over (`take`): its journal row leaves in the same
  transaction that journals the write, so a crash in between applies the delete, never loses it.
- A directory marker's delete waits until no delete below it is pending: a removed tree never
  shows again, as an empty directory, while its files are still being deleted.
- The delete of a renamed clean file's old name waits until the copy that reads it has been
  made (`still_needed`): a crash in between leaves the object under both names, never none.
- A delete whose ETag is unknown looks first (HEAD): a versioned bucket gets no delete marker
  for an object that never existed. One with a known ETag deletes whatever version is current
  when it runs (S3 has no conditional DELETE that every store honours).
- Once the store confirmed a delete, the remembered object goes and the dircache is told.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zonefs.common import keys
from zonefs.common.errors import NotFound

if TYPE_CHECKING:
    from zonefs.cache.dircache import DirCache
    from zonefs.cache.journal import Journal
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PendingDelete:
    """A key to delete, and the ETag its object had when the delete was asked for."""

    key: str
    etag: str | None


def _ancestor_dir_keys(key: str) -> Iterator[str]:
    """The marker keys of the directories above `key`, nearest first, without the root's."""
    path = key[:-1] if key.endswith("/") else key
    for parent in keys.parents(path):
        if parent:
            yield keys.dir_key(parent)


class PendingDeletes:
    """Pending deletes by zone key; see the module docstring for the invariants."""

    def __init__(self, remote: Remote, journal: Journal, cache: DirCache, *,
                 schedule: Callable[[str], None], progress: Callable[[], None],
                 still_needed: Callable[[str], bool] = lambda key: False) -> None:
        self.remote, self.journal, self.cache = remote, journal, cache
        self._schedule = schedule
        self._progress = progress
        self._still_needed = still_needed
        self.by_key: dict[str, PendingDelete] = {}
        self._below: Counter[str] = Counter()  # marker key -> pending deletes strictly below
        for key, etag in journal.deletes():
            self._add(PendingDelete(key, etag))

    def __len__(self) -> int:
        return len(self.by_key)

    def __contains__(self, key: object) -> bool:
        return key in self.by_key

    def get(self, key: str) -> PendingDelete | None:
        return self.by_key.get(key)

    def hides(self, path: str, is_dir: bool) -> bool:
        """Whether the remote entry at `path` (a directory or not) is deleted locally."""
        return bool(self.by_key) and (keys.dir_key(path) if is_dir else path) in self.by_key

    def any_below(self, key: str) -> bool:
        """Whether a delete is pending strictly below the directory marker `key`."""
        return self._below[key] > 0

    def below(self, path: str) -> Iterator[str]:
        """Keys with a pending delete at or below the directory `path`."""
        top = keys.dir_key(path)
        return (k for k in list(self.by_key) if k.startswith(top))

    # -- changes ------------------------------------------------------------------------------

    def add(self, key: str, etag: str | None, *, drop_dirty: str | None = None) -> None:
        """Journal a delete of `key` (with the dirty row `drop_dirty` going in the same
        transaction), then queue it."""
        self.journal.put_delete(key, etag, drop_dirty=drop_dirty)
        self.remember(key, etag)

    def remember(self, key: str, etag: str | None) -> None:
        """Queue a delete the caller has journaled itself."""
        self._add(PendingDelete(key, etag))
        self._schedule(key)

    def take(self, key: str) -> PendingDelete | None:
        """Take over the pending delete of `key` (a write is about to replace the object).
        Memory only: the caller's journal write of the new row drops the delete's row. The
        caller has cancelled the key's queue entry first."""
        d = self.by_key.get(key)
        if d is not None:
            self._remove(key)
        return d

    def requeue(self) -> int:
        """Queue every journaled delete (at mount)."""
        for key in self.by_key:
            self._schedule(key)
        return len(self.by_key)

    # -- applying -----------------------------------------------------------------------------

    async def apply(self, key: str, cancel: threading.Event | None = None) -> None:
        """Write-back callable for a delete: DELETE `key` in the store, then forget it."""
        d = self.by_key.get(key)
        if d is None:
            return
        if key.endswith("/") and self._below[key]:
            return  # queued again when the last delete below it lands (see _remove)
        if self._still_needed(key):
            return  # a pending copy (a rename) reads it first; queued again when it is made
        exists = True
        if d.etag is None:
            try:
                await self.remote.head(key)
            except NotFound:
                exists = False
        if exists:
            await self.remote.delete(key)  # a key that is gone already is fine
        if self.by_key.get(key) is not d:
            return  # taken over by a write meanwhile: that write's row replaced this one
        self.journal.drop_delete(key)
        self._remove(key)
        if key.endswith("/"):
            self.cache.invalidate(key[:-1])  # it may live on as a prefix of other keys
        else:
            self.cache.put_entry(key, None)
        self._progress()

    # -- internals ----------------------------------------------------------------------------

    def _add(self, d: PendingDelete) -> None:
        if d.key in self.by_key:
            self.by_key[d.key] = d
            return
        self.by_key[d.key] = d
        for parent in _ancestor_dir_keys(d.key):
            self._below[parent] += 1

    def _remove(self, key: str) -> None:
        del self.by_key[key]
        for parent in _ancestor_dir_keys(key):
            self._below[parent] -= 1
            if self._below[parent] <= 0:
                del self._below[parent]
                if parent in self.by_key:
                    self._schedule(parent)  # its turn: nothing below it is pending now
