"""What a store can do, found out once per zone: `Capabilities`, the probe, and its cache.

S3-compatible stores differ in what they implement and in how they fail when they do not
(../DESIGN.md §1; docs/stores.md, "Stores and the probe"). zonefs asks each store once
(`probe`), remembers the answers per zone in the cache dir (`load_or_probe`,
`capabilities.json`), and lets mount options override every answer. The rest of zonefs reads
only `Capabilities`; it never asks a store what it is. The steps of a probe, each finding out
one answer, are in `probe_steps`.

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
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import trio

from zonefs.common.config import STORE_OVERRIDES
from zonefs.remote.probe_steps import CONSERVATIVE, NAME_LENGTHS, PROBE_PREFIX, ProbeRun

if TYPE_CHECKING:
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)

#: The names callers use, some of them from `probe_steps`.
__all__ = [
    "BACKSLASH_KEYS", "CACHE_FILE", "CONDITIONAL_WRITES", "CONSERVATIVE", "DELETE_MARKERS",
    "DIR_MARKERS", "NAME_LENGTHS", "PROBE_PREFIX", "VERSIONING_STATES", "Capabilities",
    "load_or_probe", "probe", "read_cache", "write_cache",
]

#: Values of `Capabilities.versioning`.
VERSIONING_STATES = STORE_OVERRIDES["versioning"]
#: Values of `Capabilities.conditional_writes`.
CONDITIONAL_WRITES = STORE_OVERRIDES["conditional_writes"]
#: Values of `Capabilities.dir_markers` and `Capabilities.delete_markers`.
DIR_MARKERS = STORE_OVERRIDES["dir_markers"]
BACKSLASH_KEYS = STORE_OVERRIDES["backslash_keys"]
DELETE_MARKERS = ("removable", "permanent", "none")

#: The cache file, in the zone's cache dir.
CACHE_FILE = "capabilities.json"
CACHE_FORMAT = 3  # 2: backslash_keys; 3: max_name_bytes
#: Seconds: one request, the probe's steps, and the clean-up after them (15 s in all).
STEP_TIMEOUT = 5.0
PROBE_TIMEOUT = 10.0
CLEANUP_TIMEOUT = 5.0


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
        if self.conditional_writes != "enforced":
            parts.append("O_EXCL and mkdir exclusive on each mount only (not across machines)")
        elif self.dir_markers != "kept":
            parts.append("O_EXCL exclusive across mounts, mkdir on each mount only")
        else:
            parts.append("O_EXCL and mkdir exclusive across mounts")
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
#: What zonefs does where the store does not enforce conditions (pending.upload.Uploader): no
#: condition header is sent; the object's ETag is compared just before the PUT.
_COMPARED = ("none sent: the ETag is compared just before each PUT, and a change keeps a "
             ".conflict copy; a writer landing in between is not detected")
_CONDITIONAL_TEXT = {
    "enforced": "conditional writes enforced (conflicts kept as .conflict copies)",
    "ignored": f"conditional writes ignored by the store ({_COMPARED})",
    "not-implemented": f"conditional writes not implemented ({_COMPARED})",
    "always-412": f"If-Match refused even when it holds ({_COMPARED})",
}


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
    run = ProbeRun(remote, step_timeout)
    started = time.monotonic()
    overrides = overrides or {}
    wanted = [name for name in _ANSWERS if name not in overrides]
    if not writes:
        wanted = [name for name in wanted if name == "versioning"]
    with trio.move_on_after(timeout) as deadline:
        if "versioning" in wanted:
            await run.step("versioning", lambda: run.versioning(VERSIONING_STATES))
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

