"""The daemon's buffer budget (`-o max_memory`): bytes its own buffers may hold at once.

What counts: the bytes of ranged GETs in flight and those kept for the content hash
(`fetch.RangeFetcher`), which are what grows with parallel cold reads of large files. What
does not need to: uploads and downloads of whole objects stream through small buffers, and
listings are bounded by the listing cache (`max_memory` keeps a share for them; see
`buffer_budget`).

Rules that keep a holder from waiting forever:
- A GET a reader waits for takes its bytes with `take`, which waits until enough were given
  back; one larger than the whole budget goes alone once nothing else is held.
- What is optional does without when there is no room: read-ahead asks `try_take`, and bytes
  kept for the hash past their GET ask `keep`, which allows them half the budget at most
  (`KEEP_SHARE`): GETs, which end on their own, always find room as others end, so no GET
  waits on bytes that wait on it.
- Buffers give way to listings: the budget leaves listings a share of the cap
  (`LISTING_SHARE`), and a directory of many names can take more than that (about 700 bytes
  a name, all told). So bytes are taken only while the daemon's resident size plus them
  stays within the cap less HEADROOM, and kept for the hash only then; a GET that does not
  fit waits for held bytes to be given back, and goes alone once nothing is held (a listing
  that fills the cap by itself slows reads to one chunk at a time; it does not stop them).

Owner of the count of bytes held; every holder gives back exactly what it took.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

import trio

from zonefs.common.config import MIN_MAX_MEMORY

#: The share of the budget that bytes kept past their GET (for the hash) may fill.
KEEP_SHARE = 0.5
MiB = 1 << 20
#: The default cap (`-o max_memory`): this, or a quarter of the machine's memory if less.
DEFAULT_MAX_MEMORY = 512 * MiB
#: The share of `max_memory` kept for listings and the listing cache.
LISTING_SHARE = 0.25
#: The least buffers need: three chunks of a sequential read (fetch.CHUNK, 8 MiB).
MIN_BUFFERS = 24 * MiB
#: What bytes are taken within when the daemon nears its cap: the cap less this, room for
#: what grows while a GET is in flight (a listing being read, the hash's reads). Four cold
#: readers and a listing of 100,000 keys under a 160M cap peaked at 172 MiB without it and
#: at 163-167 MiB with it.
HEADROOM = 16 * MiB


#: glibc's mallopt parameter, and the size from which allocations get pages of their own.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 * MiB


def return_large_buffers() -> None:
    """Have glibc give every buffer of MMAP_THRESHOLD or more pages of its own, handed back
    to the system when freed. By default it raises that threshold as large buffers are freed
    (up to 32 MiB), after which 8 MiB GET buffers come from per-thread heaps that keep their
    memory: measured, 4 parallel cold reads then peaked 50-100 MiB higher."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc
        return


def default_max_memory() -> int:
    """DEFAULT_MAX_MEMORY, or a quarter of the machine's memory when that is less (and
    MIN_MAX_MEMORY at least)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return DEFAULT_MAX_MEMORY
    return max(MIN_MAX_MEMORY, min(DEFAULT_MAX_MEMORY, total // 4))


def resident_bytes() -> int:
    """This process's resident set size now (0 where /proc does not say)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def buffer_budget(max_memory: int, resident: int) -> int:
    """The bytes buffers may hold under `max_memory`, for a daemon already `resident` bytes
    large: what is left after it and the listings' share. May be below zero (too small)."""
    return int(max_memory - resident - max_memory * LISTING_SHARE)


def least_max_memory(resident: int) -> int:
    """The least `max_memory` (whole MiB) leaving MIN_BUFFERS to a daemon `resident` large."""
    need = (resident + MIN_BUFFERS) / (1 - LISTING_SHARE)
    return -(-int(need) // MiB) * MiB


class MemoryBudget:
    """Bytes held by buffers, against `limit`. See the module docstring for the rules."""

    def __init__(self, limit: int, *, cap: int | None = None,
                 resident: Callable[[], int] | None = None) -> None:
        self.limit = limit
        # `-o max_memory`: no bytes are taken while they would bring the resident size
        # (`resident()`, this process's by default) past it. None: only `limit` counts.
        self.cap = cap
        self._resident = resident or resident_bytes
        self.used = 0
        self.kept = 0  # of `used`: bytes kept past their GET
        self.peak = 0
        self.waits = 0  # GETs that waited for room
        self._freed = trio.Event()

    def try_take(self, n: int) -> bool:
        """Take `n` bytes if they fit now."""
        if self.used + n > self.limit or self._near_cap(n):
            return False
        self._add(n)
        return True

    async def take(self, n: int) -> None:
        """Take `n` bytes, waiting until they fit (or, larger than the budget, until nothing
        else is held)."""
        if not self.try_take(n):
            self.waits += 1
            while self.used and not self.try_take(n):
                freed = self._freed
                await freed.wait()
            if not self.used:
                self._add(n)

    def keep(self, n: int) -> bool:
        """Whether `n` taken bytes may be kept past their GET (within KEEP_SHARE); the caller
        gives them back if not."""
        if self.kept + n > self.limit * KEEP_SHARE or self._near_cap(n):
            return False  # near the cap: freed now, read back from the disk for the hash
        self.kept += n
        return True

    def give_kept(self, n: int) -> None:
        self.kept -= n
        self.give(n)

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()
        self._freed = trio.Event()

    def _near_cap(self, n: int) -> bool:
        """Whether `n` more bytes would bring the resident size past the cap less HEADROOM."""
        return self.cap is not None and self._resident() + n > self.cap - HEADROOM

    def _add(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def to_dict(self) -> dict[str, int]:
        return {"limit": self.limit, "used": self.used, "kept": self.kept, "peak": self.peak,
                "waits": self.waits, "cap": self.cap or 0}
