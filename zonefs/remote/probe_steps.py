"""The probe's steps: one run (`ProbeRun`) against one remote, each step finding out one answer
of `probe.Capabilities` with a few requests under the run's own prefix, and the clean-up of
everything the run wrote. `probe.probe` decides which steps run, side by side and within its
deadline, and makes the answers `Capabilities`.

Invariants:
- Every request is abandoned after the step time limit, and counted as "probe" (`zonefs
  status`), apart from the requests the filesystem makes.
- A step never raises: whatever goes wrong gives no answer (the probe then uses the step's
  `CONSERVATIVE` one) and a note; a step that finds something decisive early answers with it.
- Writes go only under `PROBE_PREFIX<uuid4>/`; the clean-up removes every version and marker
  there by version id, and a failed removal is noted, never raised.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import stat
import uuid
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import trio

from zonefs.common.errors import NotFound, PreconditionFailed, StoreUnsupported, ZonefsError

if TYPE_CHECKING:
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)

#: Where the probe writes (a zone key; nothing else in zonefs writes under `.zonefs/`).
PROBE_PREFIX = ".zonefs/probe/"
#: The name lengths (bytes of one path segment) the probe tries, longest first: POSIX's 255,
#: and what a versioned SeaweedFS bucket takes (255 less its `.versions` suffix).
NAME_LENGTHS = (255, 246)

#: What each answer is when its step could not find out: the answer that makes zonefs rely on
#: nothing it has not seen work (no condition headers, no checksums, no marker metadata, no
#: undelete, no history, no name with a backslash).
CONSERVATIVE: dict[str, Any] = {
    "versioning": "unsupported",
    "conditional_writes": "not-implemented",
    "checksums": False,
    "dir_markers": "dropped",
    "delete_markers": "permanent",  # "none" when versioning is off
    "backslash_keys": "rewritten",
    # Not known: no name is refused up front (the store refuses what it cannot take).
    "max_name_bytes": 255,
}

_MODE_DIR = str(stat.S_IFDIR | 0o755)
_BACKSLASH_NAME = "back\\slash"


class _Step(Exception):
    """A probe step found something that decides its answer early."""

    def __init__(self, answer: Any, note: str | None = None) -> None:
        super().__init__(answer)
        self.answer, self.note = answer, note


class ProbeRun:
    """One run of the probe against one remote; see `probe.probe`."""

    def __init__(self, remote: Remote, step_timeout: float) -> None:
        self.remote = remote
        self.step_timeout = step_timeout
        self.base = f"{PROBE_PREFIX}{uuid.uuid4()}/"
        self.answers: dict[str, Any] = {}
        self.notes: list[str] = []
        self.wrote = False  # a PUT was sent: there may be something to clean up

    async def call(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One request, abandoned after `step_timeout`. Counted as "probe" in the Remote's
        counter (`zonefs status`), apart from the requests the filesystem makes."""
        self.remote.requests.add("probe")
        self.wrote = self.wrote or kind == "put"
        with trio.fail_after(self.step_timeout):
            return await trio.to_thread.run_sync(
                functools.partial(fn, *args, **kwargs), abandon_on_cancel=True,
                limiter=self.remote.limiter,
            )

    async def put(self, name: str, data: bytes, **kwargs: Any) -> Any:
        return await self.call("put", self.remote._put_bytes, self.base + name, data, {}, None,
                               **kwargs)

    async def step(self, name: str, fn: Callable[[], Any]) -> None:
        """Run one step; whatever goes wrong gives its conservative answer and a note."""
        try:
            self.answers[name] = await fn()
        except _Step as found:
            self.answers[name] = found.answer
            if found.note:
                self.notes.append(f"{name}: {found.note}")
        except trio.TooSlowError:
            self.notes.append(f"{name}: no answer within {self.step_timeout:g} s")
        except ZonefsError as exc:
            self.notes.append(f"{name}: {type(exc).__name__}: {exc}")
        except Exception as exc:  # a surprise from a store must not stop the mount
            log.debug("store probe step %s failed", name, exc_info=True)
            self.notes.append(f"{name}: unexpected {type(exc).__name__}: {exc}")

    # -- the steps -----------------------------------------------------------------------------

    async def versioning(self, known: Collection[str]) -> str:
        """The bucket's versioning state, one of `known`."""
        state = str(await self.call("versioning", self.remote._bucket_versioning))
        if state not in known:
            raise _Step("unsupported", f"unknown answer {state!r}")
        return state

    async def delete_markers(self, versioning: str) -> str:
        """PUT twice, DELETE, find the marker, remove it: is the object back?"""
        if versioning not in ("enabled", "suspended"):
            return "none"
        key = self.base + "versioned"
        first = await self.put("versioned", b"first")
        second = await self.put("versioned", b"second")
        if versioning == "enabled" and (not first.version_id or
                                        first.version_id == second.version_id):
            self.notes.append("versioning: enabled, but two PUTs did not make two versions")
        await self.call("delete", self.remote._delete, key)
        try:
            await self.call("head", self.remote._head, key, None)
            raise _Step("permanent", "the object was still there after a DELETE")
        except NotFound:
            pass
        page = await self.call("list_versions", self.remote._list_versions, key, None, None,
                               100)
        markers = [v for v in page.versions
                   if v.key == key and v.is_delete_marker and v.is_latest]
        if not markers:
            raise _Step("permanent", "a DELETE left no delete marker")
        await self.call("delete", self.remote._delete_version, key, markers[0].version_id)
        try:
            await self.call("head", self.remote._head, key, None)
        except NotFound:
            raise _Step("permanent", "removing the delete marker did not bring the object "
                        "back") from None
        return "removable"

    async def conditional_writes(self) -> str:
        """If-None-Match: * on a new key and again; If-Match with a wrong ETag, the right one,
        and on a missing key (zone-buckets.md §6.5 steps 2 and 3)."""
        try:
            created = await self.put("conditional", b"one", if_none_match=True)
        except StoreUnsupported as exc:
            raise _Step("not-implemented", str(exc)) from None
        except PreconditionFailed:
            raise _Step("not-implemented", "If-None-Match: * refused on a new key") from None
        outcome = "enforced"
        try:
            await self.put("conditional", b"two", if_none_match=True)
            outcome = "ignored"
            self.notes.append("conditional_writes: If-None-Match: * did not stop an overwrite")
        except PreconditionFailed:
            pass
        current = await self.call("head", self.remote._head, self.base + "conditional", None)
        try:
            await self.put("conditional", b"three", if_match="0" * 32)
            outcome = "ignored"
            self.notes.append("conditional_writes: If-Match with a wrong ETag was accepted")
            current = await self.call("head", self.remote._head, self.base + "conditional",
                                      None)
        except StoreUnsupported as exc:
            raise _Step("not-implemented", f"If-Match: {exc}") from None
        except PreconditionFailed:
            pass
        try:
            await self.put("conditional", b"four", if_match=current.etag)
        except PreconditionFailed:
            raise _Step("always-412", "If-Match with the current ETag was refused") from None
        try:
            await self.put("conditional-missing", b"five", if_match=created.etag)
            outcome = "ignored"
            self.notes.append("conditional_writes: If-Match on a missing key wrote it")
        except (NotFound, PreconditionFailed):
            pass  # 404 as AWS, 412 as Ceph
        return outcome

    async def checksums(self) -> bool:
        """A wrong ChecksumSHA256 must be refused; a right one must come back from HEAD."""
        body = b"zonefs checksum probe\n"
        right = hashlib.sha256(body).hexdigest()
        wrong = hashlib.sha256(b"something else").hexdigest()
        try:
            await self.put("checksum-wrong", body, checksum_sha256=wrong)
        except StoreUnsupported as exc:
            raise _Step(False, str(exc)) from None
        except ZonefsError:
            pass  # refused: BadDigest on S3, ChecksumMismatch on the local zone
        else:
            raise _Step(False, "a wrong SHA-256 was accepted (the store does not verify)")
        await self.put("checksum-right", body, checksum_sha256=right)
        echoed = await self.call("head", self.remote._head_checksum, self.base + "checksum-right")
        if echoed != right:
            raise _Step(False, "HEAD did not report the SHA-256 sent"
                        if echoed is None else "HEAD reported another SHA-256")
        return True

    async def dir_markers(self) -> str:
        """A `dir/` marker with a mode header: does HEAD give the header back?"""
        key = self.base + "dir/"
        await self.call("put", self.remote._put_bytes, key, b"", {"mode": _MODE_DIR},
                        "application/x-directory")
        try:
            info = await self.call("head", self.remote._head, key, None)
        except NotFound:
            raise _Step("dropped", "a dir/ marker could not be read back") from None
        return "kept" if (info.metadata or {}).get("mode") == _MODE_DIR else "dropped"

    async def backslash_keys(self) -> str:
        """A key with a backslash: is it listed back as it was written? (SeaweedFS lists
        `a\\b` as `a/b`, and a HEAD of either name finds it, so only a listing tells.)"""
        prefix = self.base + "names/"
        await self.put("names/" + _BACKSLASH_NAME, b"")
        page = await self.call("list", self.remote._list, prefix, None, None, 100)
        listed = [o.key[len(prefix):] for o in page.objects]
        if listed == [_BACKSLASH_NAME]:
            return "kept"
        raise _Step("rewritten", f"a key written as {_BACKSLASH_NAME!r} was listed as "
                    f"{', '.join(map(repr, listed)) or 'nothing'}")

    async def max_name_bytes(self) -> int:
        """The longest of NAME_LENGTHS the store takes as a name. A store that refuses a long
        name may do so with a 500 on every attempt (SeaweedFS, versioned): write-back would
        retry it for ever, so such names are better refused at create time."""
        for length in NAME_LENGTHS:
            try:
                await self.put(f"long-{length}/" + "n" * length, b"")
            except ZonefsError as exc:
                self.notes.append(f"max_name_bytes: a name of {length} bytes: "
                                  f"{type(exc).__name__}: {exc}")
                continue
            return length
        raise _Step(CONSERVATIVE["max_name_bytes"], "no name length tried was taken")

    # -- clean-up ------------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Remove every version and marker under the probe's prefix, then check."""
        try:
            marker: tuple[str, str] | None = None
            while True:
                page = await self.call("list_versions", self.remote._list_versions, self.base,
                                       None, marker, 1000)
                async with trio.open_nursery() as nursery:
                    for v in page.versions:
                        nursery.start_soon(self.remove, self.remote._delete_version, v.key,
                                           v.version_id)
                if page.next_marker is None or page.next_marker == marker:
                    break
                marker = page.next_marker
        except (ZonefsError, trio.TooSlowError) as exc:
            # A store without version listings (R2): plain deletes are permanent there.
            log.debug("store probe clean-up by version failed: %s", exc)
        left = await self.call("list", self.remote._list, self.base, None, None, 1000)
        async with trio.open_nursery() as nursery:
            for obj in left.objects:
                nursery.start_soon(self.remove, self.remote._delete, obj.key)
        if left.objects:  # normal where versions cannot be listed; else a marker may stay
            log.debug("store probe clean-up: %d key(s) needed a plain DELETE", len(left.objects))

    async def remove(self, fn: Callable[..., None], *args: str) -> None:
        """One DELETE of the clean-up; a failure is noted, and the others go on."""
        try:
            await self.call("delete", fn, *args)
        except Exception as exc:  # trio.TooSlowError and store errors included
            self.notes.append(f"clean-up: {args[0]}: {type(exc).__name__}: {exc}")
