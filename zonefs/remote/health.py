"""Whether the store answers: what lets a mount fail fast while its store is stalled.

A store that refuses connections fails every request at once, and the mount answers from what
it knows (cached listings, attributes, blobs, pending files). A store that accepts connections
and never answers (a frozen server, a black-holed route) would instead make every lookup wait
the full `io_timeout`, several times per command. `StoreHealth` turns the second case into the
first: after one read or lookup went unanswered for `io_timeout`, the store is *not answering*;
reads and lookups then fail at once, as for a refused connection, while `watch` asks the store
in the background (one cheap request at a time, on a thread of its own) until it answers again.

Owner: the `Remote` it belongs to. Only the remote reports what happened to its requests
(`timed_out`, `answered`); everyone else only reads (`not_answering`, `to_dict`).

Invariants:
- `since` is set exactly while the store is taken for not answering; the first timeout sets
  it, any answer of the store (a success, or an error the store itself gave) clears it.
- While it is set, nothing waits for the store in the foreground: `not_answering` says why
  each read or lookup fails at once (the `Remote` raises that as a transient RemoteError).
- The transition each way is logged once (a warning, then an info line); fast failures are
  debug lines only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from zonefs.common.errors import ZonefsError

log = logging.getLogger(__name__)

#: Seconds between two background checks of a store that did not answer.
RECHECK_INTERVAL = 1.0


class StoreHealth:
    """Whether the store answers; see the module docstring."""

    def __init__(self, describe: Callable[[], str] = lambda: "the store") -> None:
        self._describe = describe  # the zone's description, known once the remote is set up
        #: Wall-clock time (for `status`) when the store was first found not answering.
        self.since: float | None = None
        self._since_monotonic = 0.0
        self._timeout = 0.0
        self._stalled = trio.Event()  # set while the store is taken for not answering

    # -- reported by the remote ----------------------------------------------------------------

    def timed_out(self, timeout: float) -> None:
        """A read or lookup went unanswered for `timeout` seconds (io_timeout)."""
        if self.since is not None:
            return
        self.since = time.time()
        self._since_monotonic = time.monotonic()
        self._timeout = timeout
        self._stalled.set()
        log.warning("%s did not answer within %g s (io_timeout): until it answers again, "
                    "the mount answers from its cache and fails at once what needs the store",
                    self._describe(), timeout)

    def answered(self) -> None:
        """The store answered a request (successfully or with an error of its own)."""
        if self.since is None:
            return
        waited = time.monotonic() - self._since_monotonic
        self.since = None
        self._stalled = trio.Event()
        log.info("%s answers again, after %.0f s", self._describe(), waited)

    def observe(self, error: ZonefsError) -> None:
        """A request failed with `error`: an error the store gave (not found, refused, a
        precondition) is an answer; a transient one (timeout, connection, 5xx) is not."""
        if not getattr(error, "transient", False):
            self.answered()

    # -- read by everyone ----------------------------------------------------------------------

    def not_answering(self, what: str) -> str | None:
        """Why a read or lookup of `what` fails at once while the store is not answering (the
        message of its transient error), or None when it may be asked."""
        if self.since is None:
            return None
        stamp = datetime.fromtimestamp(self.since, UTC).strftime("%H:%M:%S UTC")
        return f"{what}: the store has not answered since {stamp} (io_timeout {self._timeout:g} s)"

    def to_dict(self) -> dict[str, Any]:
        """What `zonefs status` shows."""
        if self.since is None:
            return {"answering": True}
        return {"answering": False,
                "since": datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - self._since_monotonic, 1)}

    # -- the background check ------------------------------------------------------------------

    async def watch(self, check: Callable[[], Awaitable[ZonefsError | None]], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run for the life of the mount: while the store is taken for not answering, call
        `check` (bounded by io_timeout) every RECHECK_INTERVAL seconds until it answers. `check`
        gives the error the store's check failed with, None when it succeeded."""
        task_status.started()
        while True:
            await self._stalled.wait()
            while self.since is not None:
                with trio.move_on_after(max(self._timeout, RECHECK_INTERVAL)):
                    failed = await check()
                    if failed is None:
                        self.answered()
                    else:
                        self.observe(failed)
                        log.debug("store check: %s", failed)
                if self.since is not None:
                    await trio.sleep(RECHECK_INTERVAL)
