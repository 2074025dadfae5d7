"""Many HEADs at once, for the headers of a listing's entries (`Remote.head_many`).

`ls -l` of a directory of unknown files needs one HEAD per file. Sent one request per worker
thread hop (`Remote.head`), each costs the loop's thread a thread hand-off, a limiter slot, a
cancel scope and a wake-up, which on a cold `ls -l` of 1,000 files was most of the loop's time.
Here a few worker threads each take keys from one shared queue and send HEAD after HEAD over
their own kept-alive connection, and the answers reach the loop in batches: one wake-up for
whatever arrived meanwhile.

Invariants:
- Each worker holds one slot of the remote's limiter while it runs, so `max_requests` still
  bounds the requests in flight.
- Every key gets exactly one answer (what its HEAD returned, or the exception it raised), on
  the loop's thread, unless the caller gives up first: no answer came for `io_timeout`, or it
  was cancelled. Then the workers stop after their current request; their threads are not
  waited for (a store that does not answer must not hold the caller).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

log = logging.getLogger(__name__)

Info = TypeVar("Info")


async def head_many(head: Callable[[str], Info], keys: Sequence[str],
                    on_answer: Callable[[str, Info | Exception], None], *, workers: int,
                    limiter: trio.CapacityLimiter, io_timeout: float | None) -> None:
    """`head(key)` (blocking) for each of `keys`, `workers` at a time, calling
    `on_answer(key, answer)` (what it returned or raised) on the loop's thread as answers
    arrive. Returns once all are answered, or when no answer came for `io_timeout` (the keys
    left get none)."""
    if not keys:
        return
    todo = collections.deque(keys)
    stop = threading.Event()
    lock = threading.Lock()
    arrived: list[tuple[str, Info | Exception]] = []
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[list[tuple[str, Info | Exception]]](math.inf)

    def hand_over() -> None:  # on the loop's thread: whatever arrived, as one batch
        nonlocal arrived
        with lock:
            batch, arrived = arrived, []
        if batch:
            send.send_nowait(batch)

    def work() -> None:  # in a worker thread
        while not stop.is_set():
            try:
                key = todo.popleft()
            except IndexError:
                return
            answer: Info | Exception
            try:
                answer = head(key)
            except Exception as exc:  # every key gets its answer, an error too
                answer = exc
            with lock:
                arrived.append((key, answer))
                first = len(arrived) == 1
            if first:
                try:
                    token.run_sync_soon(hand_over)
                except trio.RunFinishedError:
                    return

    async def worker() -> None:
        await trio.to_thread.run_sync(work, limiter=limiter, abandon_on_cancel=True)

    timeout = io_timeout if io_timeout is not None else math.inf
    left = len(keys)
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(min(workers, len(keys))):
                nursery.start_soon(worker)
            while left:
                with trio.move_on_after(timeout) as waited:
                    batch = await receive.receive()
                if waited.cancelled_caught:
                    log.debug("HEADs of %d key(s) given up: no answer for %g s", left, timeout)
                    nursery.cancel_scope.cancel()
                    break
                for key, answer in batch:
                    left -= 1
                    on_answer(key, answer)
    finally:
        stop.set()
