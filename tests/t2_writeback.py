"""WriteBack with a fake upload coroutine (the injected seam) on trio's autojump MockClock."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from zonefs.common.errors import Refused, RemoteError, StoreFailing
from zonefs.pending.writeback import (
    BURST_MAX_WAIT,
    BURST_QUIET,
    DRAIN_RETRY_CAP,
    HELD_AFTER,
    WriteBack,
)


@dataclass
class Call:
    path: str
    start: float
    cancel: threading.Event
    end: float | None = None
    outcome: str = "running"  # then "ok", "failed" or "cancelled"


class FakeUpload:
    """Records every call; each takes `duration` seconds and fails `failures[path]` times."""

    def __init__(
        self,
        duration: float = 0.0,
        failures: dict[str, int] | None = None,
        cleanup: float = 0.0,
        refusals: dict[str, int] | None = None,
        internal: dict[str, int] | None = None,
    ) -> None:
        self.duration = duration
        self.failures = dict(failures or {})
        self.refusals = dict(refusals or {})  # path -> how many attempts the store refuses
        self.internal = dict(internal or {})  # path -> how many attempts get a 500
        self.others_answered = True  # whether the store answers other requests meanwhile
        self.cleanup = cleanup  # shielded seconds spent tidying up after a cancellation
        self.calls: list[Call] = []
        self.active: Counter[str] = Counter()
        self.max_active = 0
        self.max_active_per_path = 0

    async def __call__(self, path: str, cancel: threading.Event) -> None:
        call = Call(path, trio.current_time(), cancel)
        self.calls.append(call)
        self.active[path] += 1
        self.max_active = max(self.max_active, sum(self.active.values()))
        self.max_active_per_path = max(self.max_active_per_path, self.active[path])
        try:
            await trio.sleep(self.duration)
            if self.refusals.get(path, 0) > 0:
                self.refusals[path] -= 1
                call.outcome = "refused"
                raise Refused(f"{path}: KeyTooLongError Your key is too long",
                              code="KeyTooLongError", store_message="Your key is too long")
            if self.internal.get(path, 0) > 0:
                self.internal[path] -= 1
                call.outcome = "failed"
                err = StoreFailing(f"{path}: the store is busy or failing (InternalError)",
                                   code="InternalError")
                err.others_answered = self.others_answered
                raise err
            if self.failures.get(path, 0) > 0:
                self.failures[path] -= 1
                call.outcome = "failed"
                raise RemoteError(f"injected failure for {path}", transient=True)
            call.outcome = "ok"
        except trio.Cancelled:
            call.outcome = "cancelled"
            if self.cleanup:
                with trio.CancelScope(shield=True):
                    await trio.sleep(self.cleanup)
            raise
        finally:
            call.end = trio.current_time()
            self.active[path] -= 1

    def of(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]


@asynccontextmanager
async def running(wb: WriteBack) -> AsyncIterator[WriteBack]:
    async with trio.open_nursery() as nursery:
        await nursery.start(wb.run)
        yield wb
        wb.close()


def now() -> float:
    return trio.current_time()


async def test_delay_is_respected(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload()
    async with running(WriteBack(up, delay=5)) as wb:
        t0 = now()
        wb.schedule("a")
        assert wb.pending_paths() == {"a"}
        assert wb.stats.queued == 1
        await trio.sleep(4.9)
        assert up.calls == []
        await trio.sleep(1)
        assert [(c.path, c.start - t0, c.outcome) for c in up.calls] == [("a", 5.0, "ok")]
        assert wb.pending_paths() == set()
        assert not wb.is_pending("a")
        s = wb.stats
        assert (s.queued, s.in_flight, s.uploaded, s.retries, s.last_error) == (0, 0, 1, 0, None)


async def test_explicit_delay_and_schedule_before_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload()
    wb = WriteBack(up, delay=100)
    t0 = now()
    wb.schedule("early", delay=2)  # e.g. dirty paths re-queued from the journal at startup
    async with running(wb):
        await trio.sleep(10)
    assert [(c.path, c.start - t0) for c in up.calls] == [("early", 2.0)]


async def test_rapid_rewrites_coalesce(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload()
    async with running(WriteBack(up, delay=5)) as wb:
        t0 = now()
        for _ in range(3):
            wb.schedule("a")
            await trio.sleep(1)
        await trio.sleep(30)
    # Due 5 s after the last of the three schedules (t0 + 2).
    assert [(c.path, c.start - t0) for c in up.calls] == [("a", 7.0)]


async def test_rewrite_during_upload_cancels_and_reuploads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload(duration=10)
    async with running(WriteBack(up, delay=1)) as wb:
        t0 = now()
        wb.schedule("a")
        await trio.sleep(2)
        [first] = up.calls
        assert first.outcome == "running"
        assert wb.stats.in_flight == 1
        wb.schedule("a")
        assert first.cancel.is_set()  # threads see it at once
        await trio.sleep(0.5)
        assert first.outcome == "cancelled"  # the coroutine got Cancelled
        assert wb.pending_paths() == {"a"}
        await trio.sleep(20)
    first, second = up.calls
    assert second.start - t0 == pytest.approx(3.0)  # the new delay, counted from the rewrite
    assert second.outcome == "ok"
    assert not second.cancel.is_set()
    assert up.max_active_per_path == 1
    assert wb.stats.uploaded == 1
    assert wb.stats.retries == 0  # a cancellation is not a failure
    assert wb.pending_paths() == set()


async def test_same_path_never_uploads_twice_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The cancelled attempt takes 5 s to stop; the rewrite is due at once but must wait.
    up = FakeUpload(duration=10, cleanup=5)
    async with running(WriteBack(up, delay=0)) as wb:
        wb.schedule("a")
        await trio.sleep(1)
        wb.schedule("a", delay=0)
        await trio.sleep(30)
    first, second = up.calls
    assert first.outcome == "cancelled"
    assert first.end is not None
    assert second.start >= first.end
    assert second.outcome == "ok"
    assert up.max_active_per_path == 1


async def test_error_after_cancel_event_counts_as_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Like an upload in a worker thread: it notices the event and fails with its own error.
    calls: list[float] = []

    async def threadlike_upload(path: str, cancel: threading.Event) -> None:
        calls.append(now())
        with trio.CancelScope(shield=True):
            for _ in range(50):
                if cancel.is_set():
                    raise RemoteError("upload cancelled")
                await trio.sleep(0.1)

    async with running(WriteBack(threadlike_upload, delay=1)) as wb:
        wb.schedule("a")
        await trio.sleep(2)
        wb.schedule("a")
        await trio.sleep(20)
        assert len(calls) == 2
        assert wb.stats.retries == 0
        assert wb.stats.last_error is None
        assert wb.stats.uploaded == 1


async def test_cancel_waits_for_in_flight_upload(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(duration=10, cleanup=3)
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("a")
        await trio.sleep(2)
        t = now()
        await wb.cancel("a")
        assert now() - t == pytest.approx(3.0)  # returned only after the upload stopped
        [call] = up.calls
        assert call.outcome == "cancelled"
        assert call.end is not None
        assert call.cancel.is_set()
        assert wb.pending_paths() == set()
        await trio.sleep(60)
    assert len(up.calls) == 1  # never re-queued
    assert wb.stats.uploaded == 0


async def test_cancel_of_queued_or_unknown_path(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload()
    async with running(WriteBack(up, delay=5)) as wb:
        wb.schedule("a")
        wb.schedule("b")
        t = now()
        await wb.cancel("a")
        await wb.cancel("nothing")
        assert now() == t
        assert wb.pending_paths() == {"b"}
        await trio.sleep(10)
    assert [c.path for c in up.calls] == ["b"]


async def test_flush_skips_the_delay(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(duration=0.5)
    async with running(WriteBack(up, delay=100)) as wb:
        wb.schedule("a")
        wb.schedule("b")
        t = now()
        await wb.flush("a")
        assert now() - t == pytest.approx(0.5)
        assert [(c.path, c.outcome) for c in up.calls] == [("a", "ok")]
        assert wb.pending_paths() == {"b"}  # flush touches only its own path
        t = now()
        await wb.flush("unknown")
        assert now() == t


async def test_flush_waits_for_in_flight_attempt(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(duration=5)
    async with running(WriteBack(up, delay=1)) as wb:
        t0 = now()
        wb.schedule("a")
        await trio.sleep(2)
        await wb.flush("a")
        assert now() - t0 == pytest.approx(6.0)
        assert len(up.calls) == 1
        assert wb.pending_paths() == set()


async def test_flush_raises_on_failure_and_keeps_path_queued(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    up = FakeUpload(failures={"a": 1})
    async with running(WriteBack(up, delay=100)) as wb:
        wb.schedule("a")
        with pytest.raises(RemoteError, match="injected failure"):
            await wb.flush("a")
        assert wb.pending_paths() == {"a"}
        assert wb.stats.retries == 1
        assert wb.stats.last_error is not None
        assert wb.stats.last_error.startswith("a: RemoteError")
        # The next fsync tries again at once and succeeds.
        t = now()
        await wb.flush("a")
        assert now() - t < 1
        assert [c.outcome for c in up.calls] == ["failed", "ok"]
        assert wb.pending_paths() == set()


async def test_flush_of_in_flight_attempt_that_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload(duration=3, failures={"a": 1})
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("a")
        await trio.sleep(2)
        with pytest.raises(RemoteError):
            await wb.flush("a")
        assert wb.is_pending("a")
        await trio.sleep(30)
        assert not wb.is_pending("a")


async def test_retries_with_backoff_then_success(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zonefs.pending.writeback")
    up = FakeUpload(failures={"a": 3})
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("a")
        await trio.sleep(60)
        assert [c.outcome for c in up.calls] == ["failed", "failed", "failed", "ok"]
        gaps = [b.start - a.start for a, b in zip(up.calls, up.calls[1:], strict=False)]
        for n, gap in enumerate(gaps, start=1):
            base = 2.0 ** (n - 1)
            assert 0.5 * base - 1e-6 <= gap <= base + 1e-6, (n, gap)
        s = wb.stats
        assert (s.uploaded, s.retries, s.queued, s.in_flight) == (1, 3, 0, 0)
        assert wb.pending_paths() == set()
    levels = [r.levelno for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert levels == [logging.DEBUG, logging.INFO, logging.WARNING]


async def test_backoff_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(failures={"a": 8})
    async with running(WriteBack(up, delay=0, max_retry_delay=5)) as wb:
        wb.schedule("a")
        await trio.sleep(100)
        assert wb.stats.uploaded == 1
    gaps = [b.start - a.start for a, b in zip(up.calls, up.calls[1:], strict=False)]
    assert len(gaps) == 8
    assert max(gaps) <= 5 + 1e-6
    assert max(gaps) >= 2.5  # it did grow to the cap's range


async def test_drain_with_progress(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(duration=1)
    progress: list[tuple[int, int]] = []
    async with running(WriteBack(up, delay=100, max_uploads=2)) as wb:
        for i in range(5):
            wb.schedule(f"f{i}")
        t = now()
        done = await wb.drain(lambda d, n: progress.append((d, n)))
        assert done == 5
        assert now() - t == pytest.approx(3.0)  # 5 uploads of 1 s, 2 at a time, no delay
        assert wb.pending_paths() == set()
        assert sorted(c.path for c in up.calls) == [f"f{i}" for i in range(5)]
    assert progress[0] == (0, 5)
    assert progress[-1] == (5, 5)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert all(total == 5 for _, total in progress)


async def test_drain_of_empty_queue(autojump_clock: trio.testing.MockClock) -> None:
    progress: list[tuple[int, int]] = []
    async with running(WriteBack(FakeUpload(), delay=5)) as wb:
        assert await wb.drain(lambda d, n: progress.append((d, n))) == 0
    assert progress == []


async def test_drain_retries_failures_sooner(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(failures={"a": 8})
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("a")
        while len(up.calls) < 5:
            await trio.sleep(0.01)
        await trio.sleep(0.01)  # the fifth failure is in: the next wait is 8-16 s
        assert [c.outcome for c in up.calls] == ["failed"] * 5
        t = now()
        assert await wb.drain() == 1
        assert now() - t <= 3 * DRAIN_RETRY_CAP + 0.1
        assert [c.outcome for c in up.calls] == ["failed"] * 8 + ["ok"]
        gaps = [b.start - a.start for a, b in zip(up.calls[5:], up.calls[6:], strict=False)]
        assert all(gap <= DRAIN_RETRY_CAP + 1e-6 for gap in gaps), gaps


async def test_drain_timeout(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(failures={"a": 10**6})
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("a")
        wb.schedule("b")
        t = now()
        with pytest.raises(trio.TooSlowError):
            await wb.drain(timeout=10)
        assert now() - t == pytest.approx(10.0)
        assert wb.pending_paths() == {"a"}  # still queued for retry, not dropped
        assert wb.stats.retries >= 5
        # Outside the drain the backoff is no longer capped.
        n = len(up.calls)
        await trio.sleep(3 * DRAIN_RETRY_CAP)
        assert len(up.calls) <= n + 1


async def test_max_uploads_is_respected(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(duration=1)
    async with running(WriteBack(up, delay=0, max_uploads=3)) as wb:
        for i in range(10):
            wb.schedule(f"f{i}")
        await trio.sleep(0.5)
        assert wb.stats.in_flight == 3
        assert wb.stats.queued == 7
        await trio.sleep(10)
        assert wb.stats.uploaded == 10
    assert up.max_active == 3
    assert sorted(c.path for c in up.calls) == sorted(f"f{i}" for i in range(10))


async def test_distinct_paths_upload_concurrently(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(duration=5)
    async with running(WriteBack(up, delay=1)) as wb:
        t0 = now()
        wb.schedule("a")
        wb.schedule("b")
        await trio.sleep(3)
        assert wb.stats.in_flight == 2
        await trio.sleep(10)
    assert sorted((c.path, c.start - t0, c.end - t0) for c in up.calls if c.end is not None) == [
        ("a", 1.0, 6.0),
        ("b", 1.0, 6.0),
    ]
    assert up.max_active == 2


async def test_a_directory_and_what_is_below_it_never_upload_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """A directory's marker and the files below it wait for each other (a store may drop a
    marker put while a key below it is put), in the order they came due; unrelated paths and
    names that only share a prefix (`d2`) still go alongside."""
    up = FakeUpload(duration=1)
    async with running(WriteBack(up, delay=1)) as wb:
        t0 = now()
        for path in ("d", "d/a", "d/s", "d/s/b", "d2", "e/f"):
            wb.schedule(path)
        await trio.sleep(2.5)
        wb.schedule("d", delay=0)  # its times change while files below it upload
        await wb.drain()
    spans = {c.path: (c.start - t0, c.end - t0) for c in up.calls if c.end is not None}
    first_d, second_d = up.of("d")
    assert (first_d.start - t0, first_d.end - t0) == (1.0, 2.0)  # due first: the rest wait
    assert second_d.start - t0 >= 3.0  # after the files below it that were running
    assert spans["d2"] == spans["e/f"] == (1.0, 2.0)
    assert {spans["d/a"][0], spans["d/s"][0]} == {2.0}  # the files and the subdirectory
    assert spans["d/s/b"][0] >= spans["d/s"][1]
    for a in up.calls:
        for b in up.calls:
            if a is not b and a.end is not None and b.end is not None and (
                    b.path.startswith(a.path + "/")):
                assert a.end <= b.start or b.end <= a.start, (a, b)
    assert Counter(c.path for c in up.calls) == {"d": 2, "d/a": 1, "d/s": 1, "d/s/b": 1,
                                                 "d2": 1, "e/f": 1}


async def test_close_keeps_interrupted_upload_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload(duration=10)
    wb = WriteBack(up, delay=1)
    async with running(wb):
        wb.schedule("a")
        await trio.sleep(2)
    # run() returned with the upload interrupted: the path must still be pending...
    assert [c.outcome for c in up.calls] == ["cancelled"]
    assert wb.pending_paths() == {"a"}
    # ...and goes out at once when the queue runs again.
    t = now()
    async with running(wb):
        await wb.flush("a")
    assert now() - t == pytest.approx(10.0)
    assert [c.outcome for c in up.calls] == ["cancelled", "ok"]


async def test_run_twice_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    wb = WriteBack(FakeUpload(), delay=1)
    async with running(wb):
        with pytest.raises(RuntimeError):
            await wb.run()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        WriteBack(FakeUpload(), delay=-1)
    with pytest.raises(ValueError):
        WriteBack(FakeUpload(), delay=1, max_uploads=0)


async def test_refused_upload_is_not_retried_on_a_timer(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zonefs.pending.writeback")
    up = FakeUpload(refusals={"long": 5})
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("long")
        wb.schedule("ok")
        await trio.sleep(3600)
        assert [c.outcome for c in up.of("long")] == ["refused"]  # once, not on a timer
        assert [c.outcome for c in up.of("ok")] == ["ok"]
        # Still pending (its bytes and journal row are the caller's to keep), but refused.
        assert wb.is_pending("long") and wb.is_refused("long")
        assert [(r.path, r.answer) for r in wb.refused()] == [
            ("long", "KeyTooLongError: Your key is too long")]
        s = wb.stats
        assert (s.queued, s.in_flight, s.refused, s.retries) == (0, 0, 1, 0)
        assert wb.failing() == []
        with pytest.raises(Refused):
            await wb.flush("long")
        assert len(up.of("long")) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'long'" in warnings[0].getMessage()
    assert "KeyTooLongError: Your key is too long" in warnings[0].getMessage()


async def test_drain_returns_with_refused_paths(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(duration=1, refusals={"long": 1})
    progress: list[tuple[int, int]] = []
    async with running(WriteBack(up, delay=100)) as wb:
        for path in ("a", "long", "b"):
            wb.schedule(path)
        t = now()
        with trio.fail_after(10):
            done = await wb.drain(lambda d, n: progress.append((d, n)))
        assert done == 2 and now() - t == pytest.approx(1.0)
        assert progress[-1] == (2, 2)  # the refused path is no longer counted as to do
        assert [r.path for r in wb.refused()] == ["long"]
        assert wb.pending_paths() == {"long"}
        # Nothing else pending: a second drain returns at once.
        t = now()
        assert await wb.drain() == 0 and now() == t


async def test_a_change_retries_a_refused_path(autojump_clock: trio.testing.MockClock) -> None:
    up = FakeUpload(refusals={"long": 1})
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("long")
        await trio.sleep(100)
        assert wb.is_refused("long")
        wb.schedule("long")  # written again, renamed, or re-queued at the next mount
        assert not wb.is_refused("long") and wb.stats.refused == 0
        await trio.sleep(2)
        assert [c.outcome for c in up.of("long")] == ["refused", "ok"]
        assert not wb.is_pending("long") and wb.refused() == []


async def test_refused_again_after_a_change_is_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zonefs.pending.writeback")
    up = FakeUpload(refusals={"long": 3})
    async with running(WriteBack(up, delay=1)) as wb:
        for _ in range(3):
            wb.schedule("long")
            await trio.sleep(10)
        assert [c.outcome for c in up.of("long")] == ["refused"] * 3
        assert wb.is_refused("long")
        await wb.cancel("long")  # removed: nothing is left to refuse
        assert wb.refused() == [] and not wb.is_pending("long")
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1


async def test_a_path_the_store_keeps_failing_is_held(
    autojump_clock: trio.testing.MockClock
) -> None:
    """An internal error (500) for one path on every attempt, while the store answers other
    requests (SeaweedFS and some long names): after HELD_AFTER attempts it is reported as
    refused and a drain no longer waits for it, but it is still retried on its timer."""
    up = FakeUpload(internal={"odd": 10_000})
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("odd")
        wb.schedule("ok")
        with trio.fail_after(600):
            await wb.drain()
        assert [c.outcome for c in up.of("ok")] == ["ok"]
        assert wb.is_refused("odd") and len(up.of("odd")) == HELD_AFTER
        assert wb.refused()[0].answer.startswith("InternalError: the store failed this upload")
        await trio.sleep(3600)
        tried = len(up.of("odd"))
        assert tried > HELD_AFTER  # still retried, every few minutes
        up.internal["odd"] = 0
        await trio.sleep(600)
        assert not wb.is_pending("odd") and wb.refused() == []


async def test_a_store_failing_as_a_whole_is_waited_for(
    autojump_clock: trio.testing.MockClock
) -> None:
    """Internal errors while the store answers nothing else are an ailing store, not one
    request it cannot take: nothing is held, and a drain waits for the uploads to land."""
    up = FakeUpload(internal={"a": 12, "b": 12})
    up.others_answered = False
    async with running(WriteBack(up, delay=1)) as wb:
        wb.schedule("a")
        wb.schedule("b")
        await trio.sleep(600)
        assert wb.refused() == [] and len(up.of("a")) > HELD_AFTER
        with trio.fail_after(3600):
            await wb.drain()
        assert not wb.is_pending("a") and not wb.is_pending("b")


async def creating(wb: WriteBack, seconds: float, every: float = 0.1) -> None:
    """A burst of creates: one every `every` seconds for `seconds`."""
    end = now() + seconds
    while now() < end:
        wb.note_create()
        await trio.sleep(every)


async def test_a_burst_of_creates_holds_due_uploads_until_it_pauses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload()
    async with running(WriteBack(up, delay=2)) as wb:
        t0 = now()
        wb.schedule("a")
        await creating(wb, 4)  # `a` is due at 2 s, the burst goes on until 4 s
        assert up.calls == []
        await trio.sleep(BURST_QUIET + 0.1)
        assert [c.path for c in up.calls] == ["a"]
        assert up.calls[0].start - t0 == pytest.approx(4 + BURST_QUIET, abs=0.11)


async def test_a_long_burst_holds_an_upload_at_most_burst_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload()
    async with running(WriteBack(up, delay=2)) as wb:
        t0 = now()
        wb.schedule("a")
        await creating(wb, 2 + BURST_MAX_WAIT + 5)
        assert [c.path for c in up.calls] == ["a"]
        assert up.calls[0].start - t0 == pytest.approx(2 + BURST_MAX_WAIT, abs=0.11)


async def test_a_burst_never_holds_fsync_a_full_cache_or_a_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload(duration=0.2)
    async with running(WriteBack(up, delay=2)) as wb, trio.open_nursery() as nursery:
        nursery.start_soon(creating, wb, 20)
        await trio.sleep(0.05)
        wb.schedule("fsynced")
        t = now()
        await wb.flush("fsynced")  # fsync
        assert now() - t == pytest.approx(0.2)
        wb.schedule("room", delay=0)  # the cache is full: upload now
        await trio.sleep(0.3)
        assert [c.path for c in up.calls] == ["fsynced", "room"]
        wb.schedule("x")
        wb.schedule("y")
        t = now()
        assert await wb.drain() == 2  # `zonefs sync`, unmount
        assert now() - t == pytest.approx(0.2)
        nursery.cancel_scope.cancel()


async def test_an_upload_due_after_the_burst_is_not_delayed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpload()
    async with running(WriteBack(up, delay=5)) as wb:
        t0 = now()
        wb.schedule("a")
        await creating(wb, 1)
        await trio.sleep(6)
        assert [(c.path, c.start - t0) for c in up.calls] == [("a", 5.0)]
