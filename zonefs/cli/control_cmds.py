"""The commands that ask a running mount over its control socket and print its answer:
`zonefs sync`, `zonefs umount` (with upload progress and the changes the store refused) and
`zonefs status`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from zonefs.common.config import format_size
from zonefs.mount import control


class _Progress:
    """Upload progress: a redrawn line on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, p: dict[str, Any]) -> None:
        if p["total"] < 0:
            print(f"{chr(13) if self.tty else ''}still retrying: {p['error']}", file=sys.stderr)
            return
        sent, seconds = p.get("bytes", 0), p.get("seconds", 0.0)
        rate = f", {format_size(sent / seconds)}/s" if seconds > 0.5 else ""
        text = f"{p['done']}/{p['total']} files, {format_size(sent)} uploaded{rate}"
        if self.tty:
            width = 24
            filled = width * p["done"] // max(1, p["total"])
            bar = "#" * filled + "-" * (width - filled)
            print(f"\r[{bar}] {text}\033[K", end="", file=sys.stderr, flush=True)
        elif time.monotonic() - self.last > 1 or p["done"] == p["total"]:
            print(f"uploading: {text}", file=sys.stderr)
            self.last = time.monotonic()

    def end(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _print_refused(refused: list[dict[str, Any]]) -> None:
    """One line per change the store refused for good, with its answer."""
    for r in refused:
        print(f"zonefs: {r['path']}: refused by the store: {r['answer']}", file=sys.stderr)


def cmd_sync(args: argparse.Namespace) -> int:
    progress = _Progress()
    answer = control.request(args.mountpoint, "sync", on_progress=progress)
    progress.end()
    refused = answer.get("refused", [])
    if refused:
        _print_refused(refused)
        print(f"zonefs: {answer['files']} change(s), {format_size(answer['bytes'])} uploaded "
              f"in {answer['seconds']} s; {len(refused)} change(s) the store refused stay in "
              "the cache, and are tried again when they change or at the next mount",
              file=sys.stderr)
        return 1
    print(f"zonefs: {answer['files']} change(s), {format_size(answer['bytes'])} uploaded "
          f"in {answer['seconds']} s; everything is in the bucket")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.abspath(args.mountpoint)
    progress = _Progress()
    try:
        if args.lazy:
            answer = control.request(mountpoint, "unmount", lazy=True)
            print(f"zonefs: unmounted {mountpoint}; {answer['pending']} change(s) not yet "
                  "in the bucket stay journaled and are applied at the next mount of this zone")
            return 0
        answer = control.request(mountpoint, "unmount", on_progress=progress)
    except control.Unreachable:
        if not control.is_mounted(mountpoint):
            print(f"zonefs: {mountpoint} is not mounted", file=sys.stderr)
            return 1
        # The daemon is gone (killed): what it journaled is uploaded at the next mount. Its
        # mount answers nothing any more, so a file still open on it must not keep it there.
        for lazy in ([], ["-z"]):
            subprocess.run(["fusermount3", "-u", *lazy, mountpoint], check=False,
                           capture_output=True)
            if not control.is_mounted(mountpoint):
                break
        if control.is_mounted(mountpoint):
            print(f"zonefs: could not unmount {mountpoint}", file=sys.stderr)
            return 1
        print(f"zonefs: unmounted {mountpoint} (its daemon was not running; pending uploads "
              "resume at the next mount)")
        return 0
    except control.ControlError as exc:
        if not exc.answer.get("refused"):
            raise
        progress.end()
        _print_refused(exc.answer["refused"])
        print(f"zonefs: {exc}", file=sys.stderr)
        return 1
    progress.end()
    print(f"zonefs: uploaded {answer['files']} change(s), {format_size(answer['bytes'])}; "
          f"unmounted {mountpoint}")
    return 0


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.0%} ({part} of {whole} opens)" if whole else "-"


def _answering(store: dict[str, Any]) -> str:
    if store.get("answering", True):
        return "yes"
    return (f"no: the store has not answered since {store['since']} ({store['seconds']:.0f} s);"
            " reads and lookups are answered from the cache meanwhile")


def cmd_status(args: argparse.Namespace) -> int:
    status = control.request(args.mountpoint, "status")["status"]
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    wb = status["writeback"]
    cache = status["cache"]
    rows = [
        ("zone", status["zone"]),
        ("mount point", status["mountpoint"]),
        ("answering", _answering(status.get("store", {}))),
        ("dirty files", f"{status['dirty_files']} ({format_size(status['dirty_bytes'])})"),
        ("pending", f"{status.get('pending_dirs', 0)} directories to create or change, "
                    f"{status.get('pending_deletes', 0)} deletes"),
        ("uploads", f"{wb.get('in_flight', 0)} in flight, {wb.get('queued', 0)} queued, "
                    f"{wb.get('uploaded', 0)} done, {wb.get('retries', 0)} retries"),
        ("last error", wb.get("last_error") or "-"),
        ("cache", f"{cache['blobs']} blobs, {format_size(cache['cached_bytes'])} in "
                  f"{status['cache_dir']}; {cache.get('corrupt', 0)} found corrupt and dropped"),
        ("hit ratio", _ratio(cache["hits"], cache["hits"] + cache["misses"])),
        ("transferred", f"{format_size(status['downloaded_bytes'])} downloaded, "
                        f"{format_size(status['uploaded_bytes'])} uploaded, "
                        f"{format_size(cache.get('saved_bytes', 0))} served from the cache"),
        ("requests", ", ".join(f"{k} {v}" for k, v in sorted(status["requests"].items()))),
    ]
    changes = status.get("changes") or {}
    if changes.get("running"):
        rows.append(("other mounts", f"{changes['other_mounts']} seen in the change log; "
                                      f"{changes['records_read']} of their records read, "
                                      f"{changes['records_written']} written here, "
                                      f"{changes['resyncs']} resyncs"))
    else:
        rows.append(("other mounts", "not watched (changes=off, or at=): their changes "
                                     "show within metadata_ttl"))
    if status.get("capabilities"):
        rows.append(("store", status["capabilities"]["summary"].removeprefix("store probe ")))
    for r in status.get("refused", []):
        rows.append(("refused", f"{r['path']}: {r['answer']} (kept in the cache; tried again "
                                "when it changes or at the next mount)"))
    odd = status.get("odd_keys", [])
    if odd:
        shown = "; ".join(f"{o['key']!r} {o['what']}" for o in odd[:3])
        rows.append(("odd keys", f"{len(odd)}: {shown}" + (" …" if len(odd) > 3 else "")))
    for name, value in rows:
        print(f"{name:12} {value}")
    return 0
