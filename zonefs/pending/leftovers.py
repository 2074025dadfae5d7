"""Multipart uploads a process that died left in the bucket: recorded while they run, found
and aborted at the next mount.

`MultipartJournal` is the remote's `multipart_log`: it journals an intent before each
CreateMultipartUpload, the upload id once the store answered (replacing the intent), and the
end of each upload. `abort_leftover_uploads` runs at mount, before any upload of the mount
starts: it aborts every recorded upload, and for each intent never settled by an id, the
store's unfinished uploads of exactly that key that it may have created.

Invariants:
- An intent is durable before the create request is sent, and an id before the first part:
  no crash leaves an upload of this cache dir's that the next writable mount cannot find.
- An upload holding parts is never aborted by an intent (parts go only to recorded ids).
- What cannot be aborted or looked for now stays recorded for the next mount; the mount goes on.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

import trio

from zonefs.common.errors import ZonefsError

if TYPE_CHECKING:
    from zonefs.cache.journal import Journal, MultipartIntent
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)


#: How far apart an intent's local time and an upload's initiation time (by the store's clock)
#: may be for that upload to count as the one the intent may have created: room for clock skew
#: between this machine and the store, and for botocore's retries of the create. Another
#: client's upload of the very same key, initiated within it and holding no part yet, would be
#: aborted too: the accepted risk (docs/semantics.md, "Known limitations").
INTENT_WINDOW = 15 * 60.0


class MultipartJournal:
    """The remote's `multipart_log`: records multipart uploads in progress in the journal.

    Called from the worker thread that runs an upload (or a large copy); every call hops to the
    trio thread, where all journal calls are made, so the journal is never used from two
    threads at once."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def intend(self, key: str) -> int:
        # Raises when the trio loop is gone: the upload then fails before anything is created.
        intent: int = trio.from_thread.run_sync(self._journal.add_multipart_intent, key,
                                                time.time_ns())
        return intent

    def started(self, key: str, upload_id: str, intent: int, *, sole: bool) -> None:
        # Raises when the trio loop is gone: the upload then fails (and is aborted) with only
        # its intent on record, which the next mount settles.
        trio.from_thread.run_sync(functools.partial(
            self._journal.add_multipart, key, upload_id, replaces=intent if sole else None))

    def refused(self, intent: int) -> None:
        try:
            trio.from_thread.run_sync(self._journal.drop_multipart_intents, [intent])
        except Exception as exc:  # the intent stays: the next mount looks and finds nothing
            log.debug("multipart intent %d: refusal not recorded: %s", intent, exc)

    def ended(self, key: str, upload_id: str) -> None:
        try:
            trio.from_thread.run_sync(self._journal.drop_multipart, key, upload_id)
        except Exception as exc:  # the row stays: the next mount aborts an upload that is gone
            log.debug("multipart upload %s of %r: end not recorded: %s", upload_id, key, exc)


async def abort_leftover_uploads(remote: Remote, journal: Journal) -> int:
    """Abort the multipart uploads a process that died left in the bucket (at mount, before
    `Ledger.requeue`, so that no upload of this mount is under way): their files are
    still dirty, so they are uploaded again whole. First those recorded by id; then, for each
    key with intents never settled by an id, its uploads that may be theirs
    (`_abort_unrecorded`).
    One that cannot be aborted or looked for now stays recorded for the next mount.
    Returns how many uploads were aborted."""
    aborted = 0
    for key, upload_id in journal.multipart_uploads():
        try:
            await remote.abort_multipart(key, upload_id)
        except ZonefsError as exc:
            log.warning("could not abort the unfinished multipart upload of %r left by an "
                        "earlier mount (tried again at the next mount): %s", key, exc)
            continue
        journal.drop_multipart(key, upload_id)
        aborted += 1
    intents: dict[str, list[MultipartIntent]] = {}
    for intent in journal.multipart_intents():
        intents.setdefault(intent.key, []).append(intent)
    for key, group in intents.items():
        try:
            aborted += await _abort_unrecorded(remote, key, [i.time_ns / 1e9 for i in group])
        except ZonefsError as exc:
            log.warning("could not look for an unfinished multipart upload of %r whose "
                        "id an earlier mount never recorded (tried again at the next "
                        "mount): %s", key, exc)
            continue
        journal.drop_multipart_intents(i.id for i in group)
    if aborted:
        log.info("aborted %d unfinished multipart upload(s) left by an earlier mount",
                 aborted)
    return aborted

async def _abort_unrecorded(remote: Remote, key: str, times: list[float]) -> int:
    """Abort the unfinished uploads of exactly `key` that intents made at `times` (local
    seconds since the epoch) may have created: initiated within INTENT_WINDOW of one of
    them, and holding no part. Returns how many were aborted; raises on the first failure
    (the intents then stay)."""
    aborted = 0
    for up in await remote.list_multipart_uploads(key):
        if up.key != key or up.initiated is None:
            continue  # another key, or no time to match: not provably ours
        if not any(abs(up.initiated - t) <= INTENT_WINDOW for t in times):
            continue
        # Parts go only to an upload whose id is in the journal: one with parts is
        # another writer's.
        if await remote.multipart_has_parts(key, up.upload_id):
            continue
        await remote.abort_multipart(key, up.upload_id)
        log.info("aborted the multipart upload %s of %r, created by an earlier mount that "
                 "did not live to record it", up.upload_id, key)
        aborted += 1
    return aborted
