"""The commands about one file of a mount, asked of the mount that holds it: its content
identity (`zonefs info`, `zonefs cat sha1://…`) and its history (`zonefs versions`,
`zonefs restore`, `zonefs undelete`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from typing import Any

from zonefs.common.config import format_size, format_utc, parse_time
from zonefs.common.errors import ConfigError, ZonefsError
from zonefs.mount import control


def _mount_of(path: str) -> tuple[str, str]:
    """The zonefs mount holding `path`, and `path` relative to it."""
    real = os.path.realpath(path)
    best = ""
    for mountpoint in control.zonefs_mounts():
        if (real == mountpoint or real.startswith(mountpoint.rstrip("/") + "/")) and len(
                mountpoint) > len(best):
            best = mountpoint
    if not best:
        raise ConfigError(f"{path} is not in a zonefs mount")
    return best, os.path.relpath(real, best) if real != best else ""


def cmd_info(args: argparse.Namespace) -> int:
    mountpoint, rel = _mount_of(args.path)
    if not os.path.exists(args.path):
        raise ZonefsError(f"{args.path}: no such file")
    info = control.request(mountpoint, "info", path=rel)["info"]
    print(json.dumps(info, indent=2))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    mountpoint, rel = _mount_of(args.path)
    versions = control.request(mountpoint, "versions", path=rel, timeout=120)["versions"]
    if args.json:
        print(json.dumps(versions, indent=2))
        return 0
    print(f"{'time (UTC)':24}  {'version id':36}  {'size':>10}  {'sha256':16}  state")
    for v in versions:
        state = "deleted" if v["deleted"] else ""
        if v["current"]:
            state = "current, deleted" if v["deleted"] else "current"
        sha = (v["sha256"] or "-")[:16]
        size = "-" if v["deleted"] else format_size(v["size"])
        vid = v["version_id"] or "null"
        print(f"{format_utc(v['time']):24}  {vid:36}  {size:>10}  {sha:16}  {state}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    mountpoint, rel = _mount_of(args.path)
    at = None if args.at is None else parse_time(args.at)
    done = control.request(mountpoint, "restore", path=rel, version=args.version, at=at,
                           timeout=600)
    print(restored_message(args.path, done))
    return 0


def restored_message(path: str, done: dict[str, Any]) -> str:
    """What `zonefs restore` says. Some stores answer a copy without the new version's id
    (Ceph RGW): then it goes unsaid.

    >>> done = {"restored": "v1", "from_time": 0.0, "new_version": "v3", "size": 3}
    >>> restored_message("f", done)
    'zonefs: f: version v1 of 1970-01-01T00:00:00.000Z is current again (new version v3, 3 B)'
    >>> restored_message("f", done | {"new_version": None})
    'zonefs: f: version v1 of 1970-01-01T00:00:00.000Z is current again (3 B)'
    """
    new = f"new version {done['new_version']}, " if done.get("new_version") else ""
    return (f"zonefs: {path}: version {done['restored']} of {format_utc(done['from_time'])} "
            f"is current again ({new}{format_size(done['size'])})")


def cmd_undelete(args: argparse.Namespace) -> int:
    mountpoint, rel = _mount_of(args.path)
    done = control.request(mountpoint, "undelete", path=rel, timeout=600)
    print(f"zonefs: {args.path} is back ({done['how']})")
    return 0

_SHA1_URI = re.compile(r"^sha1://([0-9a-f]{40})(?:[?/].*)?$")


def cmd_cat(args: argparse.Namespace) -> int:
    match = _SHA1_URI.match(args.uri)
    if not match:
        raise ConfigError(f"not a content URI: {args.uri!r} (expected sha1://<40 hex digits>)")
    sha1 = match.group(1)
    for mountpoint in control.zonefs_mounts():
        try:
            found = control.request(mountpoint, "find", sha1=sha1, timeout=30).get("path")
        except control.ControlError:
            continue  # another user's mount, or one whose daemon is gone
        if found:
            return _cat_verified(os.path.join(mountpoint, found), sha1)
    raise ZonefsError(f"no mounted zone knows sha1 {sha1}")


def _cat_verified(path: str, sha1: str) -> int:
    digest = hashlib.sha1()
    out = sys.stdout.buffer
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    out.flush()
    if digest.hexdigest() != sha1:
        raise ZonefsError(f"{path} changed while it was read: its bytes no longer have sha1 {sha1}")
    return 0
