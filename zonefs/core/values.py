"""The values the core hands out: what `stat` shows for a path (`Stat`), a directory's
entries as a readdir handle holds them (`Listing`) and an open file (`Handle`).

A `Handle` reads from a local file descriptor (staging file or blob) or, for a large object not
yet cached, from a `RangeFetcher`. It keeps the `Stat` it was opened with, and a writer the
pending row it writes (`DirtyFile`, owned by the pending wing), so that a file whose name is gone
(unlinked, or renamed over) while it is open is still described by its handles alone.
"""

from __future__ import annotations

import stat as st
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zonefs.common import keys

if TYPE_CHECKING:
    from zonefs.cache.dircache import Entry
    from zonefs.common.keys import PosixMeta
    from zonefs.core.fetch import RangeFetcher
    from zonefs.pending.rows import DirtyFile


@dataclass(slots=True)
class Stat:
    """What `stat` shows for a path."""

    meta: PosixMeta
    size: int
    etag: str | None = None
    # clean, dirty or uploading; unlinked for an open file whose name is gone
    state: str = "clean"
    # The attributes are the mount's defaults, standing in until the object's headers are
    # read (a listing does not wait for them): not to be cached by the kernel. The type is
    # right, but for an object small enough to be a symlink, which shows as a file until then.
    provisional: bool = False

    @property
    def is_dir(self) -> bool:
        return st.S_ISDIR(self.meta.mode)



@dataclass(slots=True)
class Handle:
    """An open file. Reads come from `fd` (a local file) or from `fetcher` (ranges)."""

    path: str
    writable: bool
    append: bool = False
    fd: int = -1
    dirty: DirtyFile | None = None
    fetcher: RangeFetcher | None = None
    pinned: str | None = None
    wrote: bool = False
    etag: str | None = None
    keep_cache: bool = False
    # What stat showed when it was opened; for a reader, what an fstat answers once the name
    # is gone (a writer answers from `dirty`). Replaced, never changed in place: a Stat may be
    # shared with a cache.
    opened: Stat | None = None


class Listing(Sequence[tuple[str, Stat]]):
    """A directory's (name, Stat) pairs as one listing found them, sorted by name.

    The names and the entries they stand for are fixed when it is made; each Stat is made
    when it is read, from that entry (or what became known of the name since: a pending row,
    an upload that landed, headers fetched). A readdir handle holds one of these while it
    is open: for 100,000 names that is the listing's own entries and a list of references,
    where a Stat and attributes made ahead for each name took about 30 MB more.
    """

    __slots__ = ("_entries", "_path", "_stat", "names")

    def __init__(self, path: str, names: list[str], entries: dict[str, Entry],
                 stat: Callable[[str, Entry], Stat]) -> None:
        self._path = path
        self.names = names  # sorted; each a key of `entries`
        self._entries = entries
        self._stat = stat  # (child path, its listed entry) -> what it shows now

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self._pair(name) for name in self.names[index]]
        return self._pair(self.names[index])

    def __iter__(self) -> Iterator[tuple[str, Stat]]:
        return map(self._pair, self.names)

    def _pair(self, name: str) -> tuple[str, Stat]:
        return name, self._stat(keys.join(self._path, name), self._entries[name])
