"""Inode numbers for a path-based filesystem: the inode <-> path table and its lookup counts.

The kernel names files by inode number; the `vfs` core names them by path. `InodeTable` maps
between the two and keeps, exactly, the kernel's lookup count of every inode it has handed out
(pyfuse3 leaves that to the filesystem: `lookup`, `create`, `mkdir`, `symlink` and an accepted
`readdir_reply` each add one, `forget` subtracts). `fuse_ops` calls it; nothing else does.

It must not do I/O, import pyfuse3, or know about objects, blobs or attributes: an entry is only
a number, a path and a count. Paths are zonefs paths (relative, '/'-separated, '' for the root;
see `keys`), taken as given.

Invariants (`check()` verifies them):
- `ROOT_INODE` always exists, always names '', and is never dropped, whatever `forget` says.
- Inode numbers come from a monotonic counter and are never reused, so a stale inode held by the
  kernel can never name another file, and the FUSE `generation` can always be 0.
- Every *attached* path has one inode and that inode names that path back: a bijection between
  live paths and live inodes.
- Every inode but the root has a lookup count >= 1; it is dropped when `forget` brings the count
  to 0 and not before. `remove` and a `rename` over an existing entry only *detach* an inode from
  its path (deferred removal): it keeps its count, `path_of` raises `NotFound` for it, and a new
  lookup of the same path gets a new number.

Cost: `lookup`, `forget` and `remove`/`rename` of a path with nothing looked up below it are
O(depth). Detaching or moving a subtree whose descendants the kernel knows scans the whole table
once (O(n), a few ms at 100,000 entries); a per-directory count of attached descendants tells
when that scan can be skipped, so renaming a file never scans.
"""

from __future__ import annotations

import logging
from collections import Counter

from zonefs.common.errors import InvalidArgument, NotFound
from zonefs.common.keys import is_within, parents, rebase

log = logging.getLogger(__name__)

#: The root's inode number; pyfuse3.ROOT_INODE has the same value (the FUSE protocol fixes it).
ROOT_INODE = 1
ROOT_PATH = ""


class InodeTable:
    """Inode numbers <-> paths, with lookup counts.

    Attributes (all private):
    - `_ino`: attached path -> inode.
    - `_path`: attached inode -> path; the exact inverse of `_ino`.
    - `_count`: lookup count of every known inode, attached or detached.
    - `_below`: path -> number of attached paths strictly below it (only non-zero counts kept).
    - `_next`: the next inode number to hand out.
    """

    def __init__(self) -> None:
        self._ino: dict[str, int] = {}
        self._path: dict[int, str] = {}
        self._count: dict[int, int] = {ROOT_INODE: 0}
        self._below: dict[str, int] = {}
        self._next = ROOT_INODE + 1
        self._attach(ROOT_PATH, ROOT_INODE)

    def __len__(self) -> int:
        """Number of known inodes, detached ones and the root included."""
        return len(self._count)

    # -- queries -----------------------------------------------------------------------------

    def ino_of(self, path: str) -> int | None:
        """The inode attached to `path`, if any; the lookup count is unchanged."""
        return self._ino.get(path)

    def path_of(self, ino: int) -> str:
        """The path of `ino`; `NotFound` if it is unknown, forgotten, or detached (removed)."""
        try:
            return self._path[ino]
        except KeyError:
            raise NotFound(f"inode {ino} has no path") from None

    def is_live(self, ino: int) -> bool:
        """Whether `ino` still names a path (it is known and not detached)."""
        return ino in self._path

    def attached_under(self, top: str) -> list[tuple[str, int]]:
        """(path, inode) of `top` and of every attached path below it ('' : all of them)."""
        if not top:
            return list(self._ino.items())
        return self._subtree(top)

    def lookup_count(self, ino: int) -> int:
        """The kernel's current lookup count of `ino`; 0 if unknown."""
        return self._count.get(ino, 0)

    # -- kernel-driven changes ---------------------------------------------------------------

    def lookup(self, path: str) -> int:
        """The inode of `path`, allocated if it has none; adds one to its lookup count."""
        ino = self._ino.get(path)
        if ino is None:
            ino = self._next
            self._next += 1
            self._attach(path, ino)
            self._count[ino] = 1
        else:
            self._count[ino] += 1
        return ino

    def forget(self, ino: int, nlookup: int) -> None:
        """Subtract `nlookup` from the count of `ino`, dropping the inode at 0. Never raises.

        pyfuse3 requires `forget` not to raise, so an unknown inode or an excessive `nlookup`
        is only logged: counts clamp at 0 rather than go negative.
        """
        count = self._count.get(ino)
        if count is None:
            log.debug("forget(%d, %d): unknown inode, ignored", ino, nlookup)
            return
        if nlookup > count:
            log.debug("forget(%d, %d): count is only %d", ino, nlookup, count)
        count = max(0, count - max(0, nlookup))
        if count or ino == ROOT_INODE:
            self._count[ino] = count
            return
        del self._count[ino]
        path = self._path.get(ino)
        if path is not None:  # still attached: the path goes with it
            self._detach(path)

    # -- namespace changes -------------------------------------------------------------------

    def remove(self, path: str) -> None:
        """Detach `path` (unlink/rmdir) and anything still attached below it.

        The inodes live on until forgotten. Below a directory there can only be stale entries
        (rmdir needs an empty directory, but another client may have deleted its objects); they
        are detached too, so that a new directory of the same name starts with fresh inodes.
        """
        if path == ROOT_PATH:
            raise InvalidArgument("the root cannot be removed")
        for sub, _ in self._subtree(path):
            self._detach(sub)

    def rename(self, old: str, new: str) -> None:
        """Move the inodes of `old` and of every path below it to the same places below `new`.

        Whatever was attached at or below `new` was replaced: it is detached first. A move
        into its own subtree, or over one of its ancestors, is refused (the vfs refuses it with
        the right errno before it gets here). O(n) when something below `old` or `new` is
        attached, O(depth) otherwise.
        """
        if old == new:
            return
        if ROOT_PATH in (old, new) or is_within(new, old) or is_within(old, new):
            raise InvalidArgument(f"cannot rename {old!r} to {new!r}")
        for sub, _ in self._subtree(new):
            self._detach(sub)
        moving = self._subtree(old)
        for sub, _ in moving:
            self._detach(sub)
        for sub, ino in moving:
            self._attach(rebase(sub, old, new), ino)

    # -- checks ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise AssertionError if an invariant does not hold (for tests; O(n))."""
        _require(self._ino.get(ROOT_PATH) == ROOT_INODE, "root path not attached to ROOT_INODE")
        _require(self._path.get(ROOT_INODE) == ROOT_PATH, "ROOT_INODE does not name the root")
        _require(len(self._ino) == len(self._path), "path and inode maps differ in size")
        for path, ino in self._ino.items():
            _require(self._path.get(ino) == path, f"{path!r} -> {ino} does not map back")
            _require(ino in self._count, f"attached inode {ino} has no lookup count")
        for ino, count in self._count.items():
            _require(0 < ino < self._next, f"inode {ino} was never allocated")
            _require(count >= 0, f"inode {ino} has a negative count {count}")
            _require(count >= 1 or ino == ROOT_INODE, f"inode {ino} kept with count 0")
        below: Counter[str] = Counter()
        for path in self._ino:
            below.update(parents(path))
        _require(dict(below) == self._below, "descendant counts are out of date")

    # -- internals ---------------------------------------------------------------------------

    def _attach(self, path: str, ino: int) -> None:
        self._ino[path] = ino
        self._path[ino] = path
        below = self._below
        for parent in parents(path):
            below[parent] = below.get(parent, 0) + 1

    def _detach(self, path: str) -> None:
        ino = self._ino.pop(path, None)
        if ino is None:
            return
        del self._path[ino]
        below = self._below
        for parent in parents(path):
            left = below[parent] - 1
            if left:
                below[parent] = left
            else:
                del below[parent]

    def _subtree(self, top: str) -> list[tuple[str, int]]:
        """(path, inode) for `top` and every attached path below it."""
        found: list[tuple[str, int]] = []
        ino = self._ino.get(top)
        if ino is not None:
            found.append((top, ino))
        wanted = self._below.get(top, 0)
        if wanted:
            prefix = top + "/"
            for path, sub_ino in self._ino.items():
                if path.startswith(prefix):
                    found.append((path, sub_ino))
                    wanted -= 1
                    if not wanted:  # every descendant found: no need to scan further
                        break
        return found


def _require(condition: bool, message: str) -> None:
    # Not `assert`: check() must work under `python -O` too.
    if not condition:
        raise AssertionError(message)
