"""The write-back queue: when each dirty path is uploaded, and how failed uploads are retried.

Owns: a per-path delay queue (a heap ordered by due time), coalescing of rewrites, cancelling an
upload whose file changed under it, at most `max_uploads` uploads at once, retries with capped
exponential backoff, the set of refused paths, and the waits behind fsync (`flush`),
`zonefs sync` and unmount (`drain`).

It must not know what a path stands for (files, blobs, the journal and the remote live
elsewhere), only that paths nest ('/'-separated): a path and those below it never upload at once.
It gets an injected `upload(path, cancel)` coroutine (rclone's PutFn) that does the work and
raises on failure; `cancel` is a `threading.Event` for upload code running in a worker thread.
The queue lives in memory only: the caller writes the journal row *before* `schedule()`, and
after a crash the daemon schedules every dirty path from the journal again.

Invariant: a path handed to `schedule()` is uploaded after its delay, or stays queued and is
retried until an upload succeeds or `cancel(path)` is called, or stays refused (below). Nothing
is dropped silently: not on failure, not on a refusal, not when a rewrite cancels an upload, not
when `run()` is cancelled (an interrupted upload goes back into the queue, due at once).

Refusals: an attempt that raises `Refused` (the store answered that it will never take this
request: KeyTooLongError, InvalidArgument, AccessDenied on the key ...) is not retried on a
timer, as the same request would get the same answer. The path stays pending, "refused" with
the store's answer (`refused()`), out of the heap, until `schedule()` is called for it again (the
file was written, renamed, or the mount restarted and re-queued its journal) or `cancel()`.
`drain()` does not wait for refused paths; `flush()` of one raises its refusal. A refusal is
logged once as a warning (again only when the store answers otherwise). A path whose upload
the store fails with an internal error (500) HELD_AFTER times in a row, each time while the
store answered another request (the uploads layer asks it), is *held*: reported as refused
in the same way, so that a drain does not wait for it, but it stays on its retry timer
(SeaweedFS answers some names so, every time).

Further invariants:
- A path is never uploaded while a path above or below it is (a directory's marker and the
  files in it): the one due later waits for the other to end (see `_nested_running`).
- The same path is never uploaded twice at once. Rescheduling a path during its upload cancels
  that attempt (sets its event and cancels its trio cancel scope) and the path starts again only
  once the cancelled attempt has ended and the new due time has come.
- At most `max_uploads` attempts run at once, cancelled ones included until they have ended (a
  worker thread may still be sending bytes).
- An attempt that was cancelled counts as cancelled whatever it raises (a thread that saw the
  event fails with its own error); one that succeeds after its path was rescheduled is counted
  in `stats.uploaded` but is not final: the path stays queued for the new bytes.

Bursts of creates: while files are being created (the last `note_create()` less than
`BURST_QUIET` ago: `tar -x`, `cp -r`, a checkout, a build), a due upload waits for the burst to
pause, at most `BURST_MAX_WAIT` past its due time. Uploads competing with the burst for the CPU
and the event loop doubled an untar of 2,000 small files (6 s instead of 3 s, SeaweedFS on 2
cores) and barely brought its last upload sooner. Never held: paths scheduled with an explicit
`delay=0` (fsync, a full cache) or waited for by `flush()`, and everything while `drain()` runs.

Retry policy: after the n-th consecutive failure of a path it is due again after
``min(max_retry_delay, 2 ** (n - 1)) * uniform(0.5, 1.0)`` seconds: 1, 2, 4 ... s up to
`max_retry_delay`, with jitter so that a store coming back is not hit by every path at once.
While `drain()` runs, the wait is capped at `DRAIN_RETRY_CAP`. The log level rises with the
count: DEBUG for the first failure, INFO for the second, WARNING from the third on.

Call everything from trio tasks, never from worker threads. `flush()` and `drain()` make progress
only while `run()` is running; the daemon starts `run()` in its nursery, and at shutdown awaits
`drain()` and then calls `close()` (or cancels the scope around `run()`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from zonefs.common.errors import Refused, StoreFailing
from zonefs.common.keys import is_within

log = logging.getLogger(__name__)

Upload = Callable[[str, threading.Event], Awaitable[None]]
Progress = Callable[[int, int], None]

#: Longest wait before retrying a failed upload while `drain()` is running, in seconds.
DRAIN_RETRY_CAP = 2.0
#: Internal errors (500) in a row for one path, each while the store answered another request
#: (`StoreFailing.others_answered`), after which the path is held: reported as refused, no
#: longer waited for by a drain, and still retried on its timer.
HELD_AFTER = 5
#: A burst of creates lasts while the last create is less than this old, in seconds.
BURST_QUIET = 0.5
#: Longest a due upload waits for a burst of creates to pause, in seconds past its due time.
BURST_MAX_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class WriteBackStats:
    """A snapshot of the queue's counters."""

    queued: int  # paths waiting for their due time (a path rewritten mid-upload included)
    in_flight: int  # attempts running, cancelled ones included until they end
    uploaded: int  # successful upload calls since start
    retries: int  # failed attempts since start (each one is retried)
    last_error: str | None  # "<path>: <error>" of the latest failed attempt
    refused: int  # paths the store refused for good, waiting for a change (see refused())
    # How long the oldest path in the queue (queued, running or refused) has been pending.
    oldest_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A path whose latest attempt the store refused for good."""

    path: str
    answer: str  # the store's answer: "KeyTooLongError: Your key is too long"
    since: float  # time.time() of the refusal


@dataclass(eq=False, slots=True)
class _Entry:
    path: str
    due: float | None = None  # set while queued; None while its attempt runs
    seq: int = 0  # identifies the current heap item; older items for this path are stale
    failures: int = 0  # consecutive failed attempts; sets the backoff
    last_failure: tuple[int, Exception] | None = None  # (attempt number, error), for flush()
    removed: bool = False  # cancel()ed: whatever its attempt does, it is not queued again
    refused: Refused | None = None  # set while refused: neither queued nor running
    refused_at: float = 0.0  # time.time() of that refusal
    warned: str | None = None  # the answer last logged as a warning, so each is logged once
    # Internal errors (500) in a row for this path while the store answered other requests.
    internal_streak: int = 0
    urgent: bool = False  # asked for now (delay=0, flush): not held by a burst of creates
    since: float = 0.0  # trio.current_time() when it was first queued (its change is pending)


@dataclass(eq=False, slots=True)
class _Attempt:
    entry: _Entry
    number: int  # global and increasing: tells flush() which attempts started during its wait
    cancel: threading.Event = field(default_factory=threading.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False
    error: Exception | None = None

    def abort(self) -> None:
        self.cancel.set()
        self.scope.cancel()


class WriteBack:
    """Delay queue of paths to upload; see the module docstring for the contract."""

    def __init__(
        self,
        upload: Upload,
        *,
        delay: float,
        max_uploads: int = 8,
        max_retry_delay: float = 300.0,
    ) -> None:
        if delay < 0 or max_uploads < 1 or max_retry_delay < 0:
            raise ValueError("delay and max_retry_delay must be >= 0, max_uploads >= 1")
        self.delay = delay
        self.max_uploads = max_uploads
        self.max_retry_delay = max_retry_delay
        self._upload = upload
        self._entries: dict[str, _Entry] = {}  # every queued or in-flight path not cancel()ed
        self._running: dict[str, _Attempt] = {}  # path -> its one running attempt
        self._heap: list[tuple[float, int, str]] = []  # (due, seq, path), stale items skipped
        self._seq = itertools.count(1)
        self._attempts = 0
        self._changed = trio.Event()  # set and replaced on every state change
        self._draining = 0
        self._completed = 0  # paths that left the queue by a successful upload
        self._uploaded = 0
        self._retries = 0
        self._last_error: str | None = None
        self._scope: trio.CancelScope | None = None
        self._last_create = -math.inf  # trio time of the latest note_create()
        self._urgent: dict[str, _Entry] = {}  # queued entries marked urgent, oldest first

    # -- queries -----------------------------------------------------------------------------

    @property
    def stats(self) -> WriteBackStats:
        return WriteBackStats(
            queued=sum(1 for e in self._entries.values() if e.due is not None),
            in_flight=len(self._running),
            uploaded=self._uploaded,
            retries=self._retries,
            last_error=self._last_error,
            refused=sum(1 for e in self._entries.values() if e.refused is not None),
            oldest_seconds=max((trio.current_time() - e.since for e in self._entries.values()),
                               default=0.0),
        )

    def stats_dict(self) -> dict[str, int | str | None]:
        """`stats` as a plain dict, for status output."""
        s = self.stats
        return {
            "queued": s.queued,
            "in_flight": s.in_flight,
            "uploaded": s.uploaded,
            "retries": s.retries,
            "last_error": s.last_error,
            "refused": s.refused,
            "oldest_pending_seconds": round(s.oldest_seconds, 1),
        }

    def refused(self) -> list[Refusal]:
        """The paths the store refused for good, by path: they wait for a change."""
        return sorted((Refusal(e.path, e.refused.answer, e.refused_at)
                       for e in self._entries.values() if e.refused is not None),
                      key=lambda r: r.path)

    def is_refused(self, path: str) -> bool:
        entry = self._entries.get(path)
        return entry is not None and entry.refused is not None

    def failing(self) -> list[str]:
        """"<path>: <error>" of each pending path whose latest attempt failed."""
        return [f"{e.path}: {type(e.last_failure[1]).__name__}: {e.last_failure[1]}"
                for e in self._entries.values() if e.failures and e.last_failure]

    def pending_paths(self) -> set[str]:
        """Paths queued or being uploaded."""
        return set(self._entries) | set(self._running)

    def in_flight_paths(self) -> set[str]:
        """Paths with an upload attempt running."""
        return set(self._running)

    def is_pending(self, path: str) -> bool:
        return path in self._entries or path in self._running

    # -- requests ----------------------------------------------------------------------------

    def schedule(self, path: str, *, delay: float | None = None,
                 at_most: float | None = None, keep_due: bool = False) -> None:
        """Queue `path` to upload after `delay` (default `self.delay`; 0 while draining), or
        after `at_most` when that is sooner.

        Rescheduling moves the due time to the new value, so rapid rewrites coalesce into one
        upload; an upload of `path` in flight is cancelled, as its bytes are out of date.
        With `keep_due`, a path already waiting keeps its due time: a change that comes often
        (a directory's times, at each entry made in it) does not put its upload off forever.
        """
        queued = self._entries.get(path)
        if keep_due and queued is not None and queued.due is not None and not self._draining:
            return
        urgent = delay == 0
        if delay is None:
            delay = 0.0 if self._draining else self.delay
        if at_most is not None:
            delay = min(delay, at_most)
        entry = self._entries.get(path)
        if entry is None:
            entry = self._entries[path] = _Entry(path, since=trio.current_time())
        else:
            entry.failures = 0  # new bytes: the backoff starts over
            entry.internal_streak = 0
            if entry.refused is not None:
                log.debug("write-back: %r changed; trying it again after its refusal", path)
                entry.refused = None
        attempt = self._running.get(path)
        if attempt is not None and not attempt.cancel.is_set():
            log.debug("write-back: %r changed during its upload; cancelling it", path)
            attempt.abort()
        if urgent:
            self._mark_urgent(entry)
        self._arm(entry, trio.current_time() + delay)

    def note_create(self) -> None:
        """A file was created: due uploads wait while creates keep coming (see "Bursts")."""
        self._last_create = trio.current_time()

    async def cancel(self, path: str) -> None:
        """Forget `path`; return once no upload of it runs any more."""
        entry = self._entries.pop(path, None)
        if entry is not None:
            entry.removed = True
            entry.due = None
        attempt = self._running.get(path)
        if attempt is not None:
            attempt.entry.removed = True
            attempt.abort()
            await attempt.done.wait()
        self._notify()

    async def flush(self, path: str) -> None:
        """Upload `path` now and wait until it is no longer pending.

        Returns at once if `path` is not pending. An attempt in flight is waited for. If an
        attempt made during the wait fails, its exception is raised; the path stays queued.
        A path the store refused (and that was not scheduled again) raises its refusal.
        """
        running = self._running.get(path)
        if running is None and path not in self._entries:
            return
        first = running.number if running is not None else self._attempts + 1
        while True:
            entry = self._entries.get(path)
            if entry is not None and entry.last_failure is not None:
                number, error = entry.last_failure
                if number >= first:
                    raise error
            in_flight = path in self._running
            if entry is None and not in_flight:
                return
            if entry is not None and entry.refused is not None and not in_flight:
                raise entry.refused
            if entry is not None and not in_flight and entry.due is not None:
                now = trio.current_time()
                if not entry.urgent or entry.due > now:
                    self._mark_urgent(entry)
                    self._arm(entry, min(entry.due, now))
            await self._changed.wait()

    async def drain(
        self, progress: Progress | None = None, timeout: float | None = None
    ) -> int:
        """Upload everything now; return once nothing is queued or in flight but the paths
        the store refused (see `refused()`: the caller reports them).

        `progress(done, total)` is called at the start and after each path is uploaded, never
        with total 0 (`total` grows if paths are scheduled meanwhile, and counts no refused
        path). Failed paths keep being retried, at most `DRAIN_RETRY_CAP` seconds apart.
        Returns the number of paths uploaded; raises `trio.TooSlowError` after `timeout`
        seconds, leaving what is left queued.
        """
        with trio.fail_after(math.inf if timeout is None else timeout):
            return await self._drain(progress)

    def close(self) -> None:
        """Make `run()` return (pending paths stay queued); a no-op when it isn't running."""
        if self._scope is not None:
            self._scope.cancel()

    # -- the scheduler -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start due uploads until `close()` or cancellation; uploads run in its own nursery."""
        if self._scope is not None:
            raise RuntimeError("WriteBack.run() is already running")
        self._scope = trio.CancelScope()
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    task_status.started()
                    while True:
                        wake_at = self._start_due(nursery)
                        with trio.move_on_at(wake_at):
                            await self._changed.wait()
        finally:
            self._scope = None
            if self._entries:
                log.info("write-back: stopped with %d paths pending", len(self._entries))

    def _start_due(self, nursery: trio.Nursery) -> float:
        """Start every due upload a slot is free for; return when to look again."""
        now = trio.current_time()
        for path, entry in list(self._urgent.items()):
            if self._entries.get(path) is not entry or entry.due is None or path in self._running:
                del self._urgent[path]  # started, cancelled, or re-queued once its attempt ends
                entry.urgent = False
            elif entry.due <= now and not self._nested_running(path):
                # (One due later, a retry's backoff, starts from the heap.)
                if len(self._running) >= self.max_uploads:
                    return math.inf  # a finishing upload notifies
                self._start(nursery, entry)
        burst_ends = self._last_create + BURST_QUIET
        heap = self._heap
        nested: list[tuple[float, int, str]] = []  # due, but waiting for a nested upload
        try:
            while heap:
                due, seq, path = heap[0]
                entry = self._entries.get(path)
                if (entry is None or entry.seq != seq or entry.due is None
                        or path in self._running):
                    # Stale, or its path is still uploading: _finish() re-queues it when
                    # that ends.
                    heapq.heappop(heap)
                    continue
                if due > now:
                    return due
                if (now < burst_ends and now < due + BURST_MAX_WAIT and not entry.urgent
                        and not self._draining):
                    return min(burst_ends, due + BURST_MAX_WAIT)
                if len(self._running) >= self.max_uploads:
                    return math.inf  # a finishing upload notifies
                heapq.heappop(heap)
                if self._nested_running(path):
                    nested.append((due, seq, path))  # its turn comes when that one ends
                else:
                    self._start(nursery, entry)
            return math.inf
        finally:
            for item in nested:
                heapq.heappush(heap, item)

    def _nested_running(self, path: str) -> bool:
        """Whether an upload of a path above or below `path` is running. Such uploads never
        run at once: a store that makes directories of the keys below them (SeaweedFS) may
        drop a directory marker put while a key below it is being put, without an error
        (measured: 2 markers of 400, each among 16 parallel PUTs)."""
        if not path:
            return False
        return any(is_within(path, other) or is_within(other, path)
                   for other in self._running if other and other != path)

    def _start(self, nursery: trio.Nursery, entry: _Entry) -> None:
        """Start an attempt for the queued `entry`; its heap item becomes stale."""
        entry.due = None
        if entry.urgent:
            entry.urgent = False
            self._urgent.pop(entry.path, None)
        self._attempts += 1
        attempt = _Attempt(entry, self._attempts)
        self._running[entry.path] = attempt
        nursery.start_soon(self._attempt, attempt, name=f"upload {entry.path!r}")

    def _mark_urgent(self, entry: _Entry) -> None:
        entry.urgent = True
        self._urgent.pop(entry.path, None)
        self._urgent[entry.path] = entry

    async def _attempt(self, attempt: _Attempt) -> None:
        path = attempt.entry.path
        log.debug("write-back: uploading %r (attempt %d)", path, attempt.entry.failures + 1)
        try:
            with attempt.scope:
                if not attempt.cancel.is_set():  # superseded before it even started
                    await self._upload(path, attempt.cancel)
                    attempt.ok = True
        except Exception as exc:  # any failure is retried; Cancelled is not an Exception
            attempt.error = exc
        finally:
            self._finish(attempt)

    def _finish(self, attempt: _Attempt) -> None:
        # Synchronous, so that it also runs to the end while run() is being cancelled.
        entry = attempt.entry
        path = entry.path
        if self._running.get(path) is attempt:
            del self._running[path]
        now = trio.current_time()
        if attempt.ok:
            self._uploaded += 1
            if not entry.removed and entry.due is None:
                entry.failures = 0
                del self._entries[path]
                self._completed += 1
                log.debug("write-back: uploaded %r", path)
        elif isinstance(attempt.error, Refused) and not attempt.cancel.is_set():
            self._refused(entry, attempt, attempt.error)
        elif attempt.error is not None and not attempt.cancel.is_set():
            self._failed(entry, attempt, attempt.error, now)
        elif not entry.removed and entry.due is None:
            entry.due = now  # run() is being cancelled: keep it, due as soon as uploads resume
        current = self._entries.get(path)
        if current is not None and current.due is not None:
            self._push(current)
        attempt.done.set()
        self._notify()

    def _failed(self, entry: _Entry, attempt: _Attempt, error: Exception, now: float) -> None:
        if isinstance(error, StoreFailing) and error.internal and error.others_answered:
            entry.internal_streak += 1
        else:
            entry.internal_streak = 0
        entry.failures += 1
        entry.last_failure = (attempt.number, error)
        self._retries += 1
        self._last_error = f"{entry.path}: {type(error).__name__}: {error}"
        wait = self._backoff(entry.failures)
        if not entry.removed:
            entry.due = now + wait
        n = entry.failures
        level = logging.DEBUG if n == 1 else logging.INFO if n == 2 else logging.WARNING
        log.log(
            level,
            "write-back: upload of %r failed (attempt %d), retrying in %.1fs: %s: %s",
            entry.path, n, wait, type(error).__name__, error,
            exc_info=error if n == 3 else None,  # one traceback per path, not one per retry
        )
        if entry.refused is None and entry.internal_streak >= HELD_AFTER:
            self._hold(entry, error)

    def _hold(self, entry: _Entry, error: Exception) -> None:
        """The store fails this path's upload with an internal error every time, while it
        answers other requests (SeaweedFS answers some long names so): the path is reported as
        refused and a drain no longer waits for it, but it stays on its retry timer."""
        entry.refused = Refused(f"{entry.path}: {error}", code="InternalError",
                                store_message=f"the store failed this upload {entry.failures} "
                                "times in a row while it answered other requests; retried "
                                "every few minutes")
        entry.refused_at = time.time()
        entry.warned = entry.refused.answer
        log.warning("write-back: the store keeps failing %r (%s) while it answers other "
                    "requests; zonefs sync no longer waits for it, and it is retried every few "
                    "minutes, when it changes, and at the next mount", entry.path, error)

    def _refused(self, entry: _Entry, attempt: _Attempt, error: Refused) -> None:
        """The store will never take this attempt's request: no timer, the path waits for
        `schedule()` (a change) or `cancel()`; its bytes and journal row stay where they are."""
        entry.failures = 0
        entry.last_failure = (attempt.number, error)
        self._last_error = f"{entry.path}: {type(error).__name__}: {error}"
        if entry.removed or entry.due is not None:
            return  # cancelled, or rescheduled meanwhile: the change is tried again anyway
        entry.refused, entry.refused_at = error, time.time()
        level = logging.WARNING if entry.warned != error.answer else logging.DEBUG
        entry.warned = error.answer
        log.log(level, "write-back: the store refused %r (%s); it stays in the cache and the "
                "journal, and is tried again when it changes or at the next mount",
                entry.path, error.answer)

    def _backoff(self, failures: int) -> float:
        wait = min(self.max_retry_delay, 2.0 ** min(failures - 1, 60)) * random.uniform(0.5, 1.0)
        return min(wait, DRAIN_RETRY_CAP) if self._draining else wait

    # -- internals ---------------------------------------------------------------------------

    async def _drain(self, progress: Progress | None) -> int:
        self._draining += 1
        start = self._completed
        started_at = trio.current_time()
        last: tuple[int, int] | None = None
        try:
            now = trio.current_time()
            for entry in list(self._entries.values()):
                if entry.due is not None and entry.due > now:
                    self._arm(entry, now)
            while True:
                done = self._completed - start
                state = (done, done + self._pending_count())
                if progress is not None and state != last and state[1]:
                    last = state
                    progress(*state)
                if not self._running and all(
                        e.refused is not None for e in self._entries.values()):
                    break
                await self._changed.wait()
        finally:
            self._draining -= 1
        log.info(
            "write-back: drained %d uploads in %.1fs",
            done, trio.current_time() - started_at,
        )
        return done

    def _pending_count(self) -> int:
        """Paths a drain waits for: queued or in flight, and not refused."""
        return (sum(1 for e in self._entries.values() if e.refused is None)
                + sum(1 for p in self._running if p not in self._entries))

    def _arm(self, entry: _Entry, due: float) -> None:
        entry.due = due
        self._push(entry)
        self._notify()

    def _push(self, entry: _Entry) -> None:
        assert entry.due is not None
        entry.seq = next(self._seq)
        heapq.heappush(self._heap, (entry.due, entry.seq, entry.path))
        if len(self._heap) > 2 * len(self._entries) + 64:
            # Rescheduling leaves stale items behind; rebuild before they outnumber live ones.
            self._heap = [(e.due, e.seq, e.path) for e in self._entries.values()
                          if e.due is not None]
            heapq.heapify(self._heap)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
