"""What a store can do, found out once per zone: `Capabilities`, the probe, and its cache.

S3-compatible stores differ in what they implement and in how they fail when they do not
(../DESIGN.md §1; README "Stores and the probe"). zonefs asks each store once (`probe`),
remembers the answers per zone in the cache dir (`load_or_probe`, `capabilities.json`), and
lets mount options override every answer. The rest of zonefs reads only `Capabilities`; it
never asks a store what it is.

Invariants:
- The probe writes only under the zone key `.zonefs/probe/<uuid4>/` and afterwards removes
  every version and delete marker it made there, by version id, so a versioned bucket keeps
  nothing of it. It writes nothing at all when the mount is read-only.
- It never fails and never hangs a mount: each request has its own time limit and the whole
  probe a deadline; a step that fails, in any way, gives that step's conservative answer
  (`CONSERVATIVE`), and a probe cut short is used for this mount only, never cached.
- Only a complete probe is written to the cache, and a cached record is only reused for the
  zone it was made for. Overrides are applied on top, never cached.

This module is part of the remote layer: it calls the backends' blocking methods itself, in
threads it may abandon, because a request to a hung store must not hold the mount past the
deadline (the public async methods wait for their thread).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import trio

from zonefs.common.config import STORE_OVERRIDES
from zonefs.common.errors import NotFound, PreconditionFailed, StoreUnsupported, ZonefsError

if TYPE_CHECKING:
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)

#: Values of `Capabilities.versioning`.
VERSIONING_STATES = STORE_OVERRIDES["versioning"]
#: Values of `Capabilities.conditional_writes`.
CONDITIONAL_WRITES = STORE_OVERRIDES["conditional_writes"]
#: Values of `Capabilities.dir_markers` and `Capabilities.delete_markers`.
DIR_MARKERS = STORE_OVERRIDES["dir_markers"]
BACKSLASH_KEYS = STORE_OVERRIDES["backslash_keys"]
#: The name lengths (bytes of one path segment) the probe tries, longest first: POSIX's 255,
#: and what a versioned SeaweedFS bucket takes (255 less its `.versions` suffix).
NAME_LENGTHS = (255, 246)
DELETE_MARKERS = ("removable", "permanent", "none")

#: Where the probe writes (a zone key; nothing else in zonefs writes under `.zonefs/`).
PROBE_PREFIX = ".zonefs/probe/"
#: The cache file, in the zone's cache dir.
CACHE_FILE = "capabilities.json"
CACHE_FORMAT = 3  # 2: backslash_keys; 3: max_name_bytes
#: Seconds: one request, the probe's steps, and the clean-up after them (15 s in all).
STEP_TIMEOUT = 5.0
PROBE_TIMEOUT = 10.0
CLEANUP_TIMEOUT = 5.0

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


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The answers of a store's probe (or of the zone's overrides).

    The defaults are what zonefs assumes before any probe (a unit test's Vfs, for one): a
    versioned store that enforces conditions and keeps marker metadata, like the embedded
    local zone; checksums are never sent unless a probe saw them verified.
    """

    # enabled: every PUT makes a version, DELETE a delete marker; suspended: new writes make
    # the "null" version, older versions are kept; unversioned: never enabled; unsupported:
    # the store has no versioning at all (R2 answers NotImplemented).
    versioning: str = "enabled"
    # enforced: If-None-Match: * and If-Match: <etag> PUTs are refused with 412 when they
    # should be; ignored: accepted and not enforced; not-implemented: refused (501/400);
    # always-412: If-Match refused even with the right ETag (Ceph RGW Pacific, versioned).
    conditional_writes: str = "enforced"
    # The store rejects a wrong ChecksumSHA256 on a single-part PUT and reports a right one.
    checksums: bool = False
    # kept: a `dir/` marker keeps its x-amz-meta-* headers; dropped: it loses them (SeaweedFS).
    dir_markers: str = "kept"
    # removable: removing a delete marker by version id brings the object back (undelete);
    # permanent: a DELETE cannot be undone that way; none: no versioning, no markers.
    delete_markers: str = "removable"
    # kept: a key with a backslash is stored as written; rewritten: the store changes it
    # (SeaweedFS stores `a\b` as `a/b`), so names with a backslash are refused (EINVAL).
    backslash_keys: str = "kept"
    # The longest name (one path segment, in bytes) the store takes: longer names are refused
    # at create time with ENAMETOOLONG (a versioned SeaweedFS bucket takes 246).
    max_name_bytes: int = 255
    # Where the answers come from: "default", "probed" or "cached" (plus `overridden`).
    source: str = "default"
    # False when steps were skipped or cut short: their answers are conservative guesses.
    complete: bool = True
    # Answers set by mount options instead of the probe.
    overridden: tuple[str, ...] = ()
    # What the probe saw beyond the answers (a step that failed, and why).
    notes: tuple[str, ...] = ()
    probed_at: float | None = field(default=None, compare=False)

    @property
    def keeps_versions(self) -> bool:
        """Whether older versions can exist in the bucket (so history is worth listing)."""
        return self.versioning in ("enabled", "suspended")

    # -- what the answers mean for zonefs -------------------------------------------------------

    def summary(self) -> str:
        """The one log line: what the store does and what zonefs does about it."""
        parts = [_VERSIONING_TEXT.get(self.versioning, f"versioning {self.versioning}")]
        if self.keeps_versions:
            parts[0] += _DELETE_TEXT.get(self.delete_markers, "")
        parts.append(_CONDITIONAL_TEXT.get(self.conditional_writes,
                                           f"conditional writes {self.conditional_writes}"))
        if self.checksums:
            parts.append("checksums verified by the store (single-part uploads send their "
                         "SHA-256)")
        elif "checksums" in self.overridden:
            parts.append("checksums not sent (zonefs verifies sha256 itself)")
        else:
            parts.append("checksums not verified by the store (zonefs verifies sha256 itself)")
        parts.append("dir markers kept" if self.dir_markers == "kept" else
                     "dir markers lose their metadata (directories show the mount's defaults)")
        parts.append("backslashes kept in keys" if self.backslash_keys == "kept" else
                     "keys with a backslash rewritten by the store (such names refused)")
        if self.max_name_bytes < 255:
            parts.append(f"names up to {self.max_name_bytes} bytes (longer ones refused)")
        how = self.source
        if not self.complete:
            how += ", incomplete: guessed answers are the safe ones"
        if self.overridden:
            how += ", set by -o: " + " ".join(self.overridden)
        return f"store probe ({how}): " + ", ".join(parts)

    # -- overrides and the cache ----------------------------------------------------------------

    def with_overrides(self, overrides: Mapping[str, str]) -> Capabilities:
        """These answers with mount options' values (`STORE_OVERRIDES` names and values) in
        place of the probed ones."""
        if not overrides:
            return self
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            if name not in STORE_OVERRIDES or value not in STORE_OVERRIDES[name]:
                raise ValueError(f"not a store override: {name}={value}")
            if name == "checksums":
                changes[name] = value == "on"
            elif name == "max_name_bytes":
                changes[name] = int(value)
            else:
                changes[name] = value
        versioning = changes.get("versioning", self.versioning)
        if versioning in ("unversioned", "unsupported"):
            changes["delete_markers"] = "none"
        elif self.delete_markers == "none":
            # Said to be versioned where the probe saw no versioning: markers as on S3.
            changes["delete_markers"] = "removable" if versioning == "enabled" else "permanent"
        overridden = tuple(sorted({*self.overridden, *overrides}))
        return replace(self, overridden=overridden, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The answers as plain JSON values, with the summary line (for `zonefs status`)."""
        out = asdict(self)
        out["overridden"] = list(self.overridden)
        out["notes"] = list(self.notes)
        out["summary"] = self.summary()
        return out

    def to_json(self, zone: str) -> str:
        """The cache record of these answers for `zone` (a Remote's description)."""
        answers = {name: getattr(self, name) for name in _ANSWERS}
        return json.dumps({"format": CACHE_FORMAT, "zone": zone, "probed_at": self.probed_at,
                           "capabilities": answers, "notes": list(self.notes)}, indent=1)

    @classmethod
    def from_json(cls, text: str, zone: str | None = None) -> Capabilities:
        """Answers from a cache record; ValueError when it is damaged, of another format or
        (with `zone`) of another zone."""
        try:
            record = json.loads(text)
            if record.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {record.get('format')!r}, not {CACHE_FORMAT}")
            if zone is not None and record.get("zone") != zone:
                raise ValueError(f"made for {record.get('zone')!r}")
            answers = record["capabilities"]
            values = {name: answers[name] for name in _ANSWERS}
            probed_at = record.get("probed_at")
            notes = tuple(str(n) for n in record.get("notes") or ())
        except (AttributeError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a capabilities record ({exc})") from None
        caps = cls(**values, source="cached", notes=notes,
                   probed_at=probed_at if isinstance(probed_at, int | float) else None)
        caps.validate()
        return caps

    def validate(self) -> None:
        """ValueError unless every answer is one of its known values."""
        allowed = {"versioning": VERSIONING_STATES, "conditional_writes": CONDITIONAL_WRITES,
                   "checksums": (True, False), "dir_markers": DIR_MARKERS,
                   "delete_markers": DELETE_MARKERS, "backslash_keys": BACKSLASH_KEYS,
                   "max_name_bytes": range(1, 256)}
        for name, values in allowed.items():
            value = getattr(self, name)
            if name == "max_name_bytes" and (type(value) is not int or value not in values):
                raise ValueError(f"{name}={value!r} is not a number of bytes from 1 to 255")
            if name == "max_name_bytes":
                continue
            if value not in values or (name == "checksums") != isinstance(value, bool):
                raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, values))}")


_ANSWERS = ("versioning", "conditional_writes", "checksums", "dir_markers", "delete_markers",
            "backslash_keys", "max_name_bytes")
assert set(_ANSWERS) <= {f.name for f in fields(Capabilities)}

_VERSIONING_TEXT = {
    "enabled": "versioning enabled (history under .zonefs/versions",
    "suspended": "versioning suspended (older versions under .zonefs/versions",
    "unversioned": "versioning off (no history; deletes are permanent)",
    "unsupported": "no versioning (no history; deletes are permanent)",
}
_DELETE_TEXT = {
    "removable": ", deletes undone with zonefs undelete)",
    "permanent": "; delete markers cannot be removed, so deletes are permanent)",
    "none": ")",
}
#: What zonefs does where the store does not enforce conditions (uploads.PendingFiles): no
#: condition header is sent; the object's ETag is compared just before the PUT.
_COMPARED = ("none sent: the ETag is compared just before each PUT, and a change keeps a "
             ".conflict copy; a writer landing in between is not detected")
_CONDITIONAL_TEXT = {
    "enforced": "conditional writes enforced (conflicts kept as .conflict copies)",
    "ignored": f"conditional writes ignored by the store ({_COMPARED})",
    "not-implemented": f"conditional writes not implemented ({_COMPARED})",
    "always-412": f"If-Match refused even when it holds ({_COMPARED})",
}


# -- the probe ----------------------------------------------------------------------------------


class _Step(Exception):
    """A probe step found something that decides its answer early."""

    def __init__(self, answer: Any, note: str | None = None) -> None:
        super().__init__(answer)
        self.answer, self.note = answer, note


class _Probe:
    """One run of the probe against one remote; see `probe`."""

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

    async def versioning(self) -> str:
        state = str(await self.call("versioning", self.remote._bucket_versioning))
        if state not in VERSIONING_STATES:
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


async def probe(
    remote: Remote,
    *,
    overrides: Mapping[str, str] | None = None,
    writes: bool = True,
    timeout: float = PROBE_TIMEOUT,
    step_timeout: float = STEP_TIMEOUT,
) -> Capabilities:
    """Find out what `remote`'s store can do (zone-buckets.md §6.5).

    Answers named in `overrides` (mount options) are not probed, and the result is then
    incomplete; a versioning override decides whether delete markers are tried. Without
    `writes` (a read-only mount) only versioning is asked. Takes at most `timeout` seconds,
    plus `CLEANUP_TIMEOUT` to remove what it wrote; never raises for anything the store does.
    """
    run = _Probe(remote, step_timeout)
    started = time.monotonic()
    overrides = overrides or {}
    wanted = [name for name in _ANSWERS if name not in overrides]
    if not writes:
        wanted = [name for name in wanted if name == "versioning"]
    with trio.move_on_after(timeout) as deadline:
        if "versioning" in wanted:
            await run.step("versioning", run.versioning)
        versioning = overrides.get("versioning") or run.answers.get(
            "versioning", CONSERVATIVE["versioning"])
        if writes:
            # The write steps use keys of their own: run side by side, the probe costs the
            # latency of its longest step (some 10 requests), not of all 30.
            async with trio.open_nursery() as nursery:
                if "delete_markers" in wanted:
                    nursery.start_soon(run.step, "delete_markers",
                                       lambda: run.delete_markers(versioning))
                for name in ("conditional_writes", "checksums", "dir_markers",
                             "backslash_keys", "max_name_bytes"):
                    if name in wanted:
                        nursery.start_soon(run.step, name, getattr(run, name))
    if deadline.cancelled_caught:
        run.notes.append(f"the probe did not finish within {timeout:g} s")
    if run.wrote:
        with trio.move_on_after(CLEANUP_TIMEOUT) as cleanup_deadline:
            try:
                await run.cleanup()
            except Exception as exc:  # trio.TooSlowError and store errors included
                run.notes.append(f"clean-up: {type(exc).__name__}: {exc}")
        if cleanup_deadline.cancelled_caught:
            run.notes.append(f"clean-up did not finish within {CLEANUP_TIMEOUT:g} s")
        if any(n.startswith("clean-up") for n in run.notes):
            log.warning("store probe: could not remove everything under %s", run.base)
    answers = dict(run.answers)
    for name in _ANSWERS:
        if name not in answers:
            answers[name] = CONSERVATIVE[name]
    versioning = answers["versioning"]
    if versioning not in ("enabled", "suspended"):
        answers["delete_markers"] = "none"
    complete = not deadline.cancelled_caught and all(name in run.answers for name in _ANSWERS)
    caps = Capabilities(**answers, source="probed", complete=complete, notes=tuple(run.notes),
                        probed_at=time.time())
    log.debug("store probe took %.2f s: %s", time.monotonic() - started, caps)
    return caps


# -- the cache ----------------------------------------------------------------------------------


def read_cache(path: str, zone: str) -> Capabilities | None:
    """The cached answers for `zone`, or None (missing, damaged, or another zone's)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read %s (%s): probing the store again", path, exc.strerror)
        return None
    try:
        return Capabilities.from_json(text, zone)
    except ValueError as exc:
        log.info("%s: %s; probing the store again", path, exc)
        return None


def write_cache(path: str, caps: Capabilities, zone: str) -> None:
    """Save the answers (0600, atomically); a failure only costs a probe at the next mount."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(caps.to_json(zone) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot save the store probe to %s: %s", path, exc.strerror or exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


async def load_or_probe(
    remote: Remote,
    cache_dir: str,
    *,
    overrides: Mapping[str, str] | None = None,
    reprobe: bool = False,
    read_only: bool = False,
    timeout: float = PROBE_TIMEOUT,
) -> Capabilities:
    """The capabilities a mount uses: cached ones (unless `reprobe`), else a new probe of what
    the overrides leave open (cached when complete), with the overrides applied on top."""
    overrides = dict(overrides or {})
    path = os.path.join(cache_dir, CACHE_FILE)
    caps = None if reprobe else read_cache(path, remote.description)
    if caps is None:
        caps = await probe(remote, overrides=overrides, writes=not read_only,
                           timeout=timeout)
        if caps.complete:
            write_cache(path, caps, remote.description)
        for note in caps.notes:
            log.info("store probe: %s", note)
    return caps.with_overrides(overrides)

