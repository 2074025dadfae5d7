"""The daemon's buffer budget (`-o max_memory`): bytes its own buffers may hold at once.

What counts: the bytes of ranged GETs in flight and those kept for the content hash
(`fetch.RangeFetcher`), which are what grows with parallel cold reads of large files. What
does not need to: uploads and downloads of whole objects stream through small buffers, and
listings are bounded by the listing cache (`max_memory` keeps a share for them; see
`buffer_budget`).

Rules that keep a holder from waiting forever:
- A GET a reader waits for takes its bytes with `take`, which waits until enough were given
  back; one that does not fit goes alone once no other GET is in flight (bytes kept for the
  hash may wait for it: the hash needs its pages first).
- What is optional does without when there is no room: read-ahead asks `try_take`, and bytes
  kept for the hash past their GET ask `keep`, which allows them half the budget at most
  (`KEEP_SHARE`): GETs, which end on their own, always find room as others end, so no GET
  waits on bytes that wait on it.
- Buffers give way to listings: the budget leaves listings a share of the cap
  (`LISTING_SHARE`), and a directory of many names can take more than that (about 700 bytes
  a name, all told). So bytes are taken only while the daemon's resident size, the bytes of
  GETs still in flight and them stay within the cap less HEADROOM. Near the cap, bytes are
  kept for the hash only while a GET as large would still fit beside them, and a chunk is
  fetched in small GETs (`fetch.PIECE`); a GET that does not fit waits for other GETs to
  end and then goes alone (a listing that fills the cap by itself slows reads to one small
  GET at a time; it does not stop them).

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


#: glibc's mallopt parameters: the size from which allocations get pages of their own, and
#: how many arenas (heaps) threads share.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 * MiB
MALLOC_ARENAS = 2


def tune_allocator() -> None:
    """Have glibc hand memory back as the daemon frees it; call it before any thread starts.

    - Every buffer of MMAP_THRESHOLD or more gets pages of its own, returned to the system
      when freed. By default glibc raises that threshold as large buffers are freed (up to
      32 MiB), after which 8 MiB GET buffers come from heaps that keep their memory:
      measured, 4 parallel cold reads then peaked 50-100 MiB higher.
    - Threads share MALLOC_ARENAS heaps. By default each thread that allocates gets one of
      its own (up to 8 per core), and each keeps what its thread freed: four cold readers
      and a listing of 100,000 keys under `max_memory=160M` peaked at 163-182 MiB, and at
      142-146 MiB with one or two."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
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
        if self.used + n > self.limit or self.near_cap(n):
            return False
        self._add(n)
        return True

    async def take(self, n: int) -> None:
        """Take `n` bytes, waiting until they fit (or, when they do not fit beside the bytes
        kept for the hash, until no other GET is in flight: kept bytes may wait for this
        GET, whose pages the hash needs first)."""
        if not self.try_take(n):
            self.waits += 1
            while self._in_flight() and not self.try_take(n):
                freed = self._freed
                await freed.wait()
            if not self._in_flight():
                self._add(n)

    def keep(self, n: int) -> bool:
        """Whether `n` taken bytes may be kept past their GET: within KEEP_SHARE, and near
        the cap only while a GET as large would still fit beside them. The caller gives them
        back if not."""
        # `n` is still counted in flight: what it asks is room for as many bytes more.
        if self.kept + n > self.limit * KEEP_SHARE or self.near_cap(n):
            return False  # near the cap: freed now, read back from the disk for the hash
        self.kept += n
        self._wake()  # no longer in flight
        return True

    def give_kept(self, n: int) -> None:
        self.kept -= n
        self.give(n)

    def give(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        """Let every `take` waiting for room look again."""
        self._freed.set()
        self._freed = trio.Event()

    def near_cap(self, n: int) -> bool:
        """Whether `n` more bytes would bring the resident size past the cap less HEADROOM
        (False without a cap). The bytes of GETs in flight count as coming too: the resident
        size shows them only as they arrive, and four GETs taken at once each saw the same
        resident size (measured: 40 MiB held at a 172 MiB peak under a 160M cap)."""
        return (self.cap is not None
                and self._resident() + self._in_flight() + n > self.cap - HEADROOM)

    def _in_flight(self) -> int:
        """Bytes taken for GETs that have not ended: not resident yet, or only in part."""
        return self.used - self.kept

    def _add(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def to_dict(self) -> dict[str, int]:
        return {"limit": self.limit, "used": self.used, "kept": self.kept, "peak": self.peak,
                "waits": self.waits, "cap": self.cap or 0}
