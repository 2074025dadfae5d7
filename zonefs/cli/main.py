"""The `zonefs` command: argparse subcommands that build a config and run or talk to a mount.

Every user error ends as one line on stderr and a non-zero exit (2 for bad input, 1 for a
failure), never a traceback. Credentials never appear in argv: they come from the standard AWS
chain (environment, shared files, profiles), which the background daemon inherits.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import time
from typing import Any

from zonefs import __version__
from zonefs.common import zones
from zonefs.common.config import (
    MountOptions,
    ZoneConfig,
    format_size,
    format_utc,
    parse_mount_options,
    parse_time,
)
from zonefs.common.errors import ConfigError, ZonefsError
from zonefs.mount import control

log = logging.getLogger("zonefs")

#: How long `zonefs mount` waits for the daemon to answer: the store check (8 s) and the store
#: probe (15 s, when nothing is cached) give up sooner.
MOUNT_TIMEOUT = 30.0


class _JournalFormatter(logging.Formatter):
    """Lines for journald: `<priority>` first (sd-daemon(3)), no time (the journal adds it)."""

    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                 logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        priority = self._PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{record.name}: " + super().format(record).replace("\n", " | ")


def _to_journal() -> bool:
    """Whether stderr is connected to the journal (systemd sets JOURNAL_STREAM to its
    device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        info = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{info.st_dev}:{info.st_ino}"


def _setup_logging(level: str, log_file: str | None = None) -> None:
    handler: logging.Handler
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
    else:
        handler = logging.StreamHandler(sys.stderr)
    if not log_file and _to_journal():
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore logs request details, headers included, at DEBUG: keep it quiet always.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- mount ----------------------------------------------------------------------------------------


def _zone_and_options(args: argparse.Namespace) -> tuple[ZoneConfig, MountOptions]:
    """The zone and options of `zonefs mount`: a URL, or a zone named in a zones file (given
    as the first argument, or by ZONEFS_ZONE with the mount point alone). Options on the
    command line override the zone's. Fills in `args.zone` and `args.mountpoint`."""
    env_zone = os.environ.get(zones.ZONE_ENV)
    if args.mountpoint is None and env_zone and args.zone and not _looks_like_zone(args.zone):
        args.zone, args.mountpoint = env_zone, args.zone  # ZONEFS_ZONE=x zonefs mount /mnt/x
    args.zone = args.zone or env_zone
    if not args.zone:
        raise ConfigError("name a zone: zonefs mount ZONE MOUNTPOINT (a URL or a name from "
                          f"the zones file), or set {zones.ZONE_ENV}")
    base_options: list[str] = []
    if "://" in args.zone:
        zone = ZoneConfig.parse(args.zone, endpoint_url=args.endpoint_url, region=args.region,
                                profile=args.profile)
    else:
        named = zones.find_zone(args.zone)
        zone, base_options = named.zone, named.options
        overrides = {name: getattr(args, name) for name in ("endpoint_url", "region", "profile")
                     if getattr(args, name)}
        if overrides:
            zone = dataclasses.replace(zone, **overrides)
        args.mountpoint = args.mountpoint or named.mountpoint
    if args.mountpoint is None:
        raise ConfigError(f"give a mount point: zonefs mount {args.zone} MOUNTPOINT")
    if args.ca_bundle:
        if not os.path.isfile(args.ca_bundle):
            raise ConfigError(f"--ca-bundle {args.ca_bundle}: no such file")
        zone = dataclasses.replace(zone, ca_bundle=os.path.abspath(args.ca_bundle))
    return zone, parse_mount_options(base_options + (args.options or []))


def _looks_like_zone(text: str) -> bool:
    """A URL or a zone name, as opposed to a mount point path (which has a '/' or exists)."""
    return "://" in text or ("/" not in text and not os.path.isdir(text))


def cmd_zones(args: argparse.Namespace) -> int:
    named = zones.load_zones()
    if not named:
        print(f"zonefs: no zones defined (looked in {' and '.join(zones.zone_files())})",
              file=sys.stderr)
        return 1
    checks = _check_zones(list(named.values())) if args.check else {}
    rows = []
    for name in sorted(named):
        z = named[name]
        row = {"name": name, "zone": z.zone.label, "mountpoint": z.mountpoint,
               "options": ",".join(z.options), "file": z.source}
        if args.check:
            row["check"] = checks[name]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:16} {row['zone']}  ->  {row['mountpoint'] or '(no mountpoint)'}")
        if row["options"]:
            print(f"{'':16} options: {row['options']}")
        if args.check:
            print(f"{'':16} {row['check']}")
    return 0 if not args.check or all(c.startswith("ok") for c in checks.values()) else 1


def _check_zones(named: list[zones.NamedZone]) -> dict[str, str]:
    """For each zone: can it be reached, and what does the store say of versioning."""
    import trio

    from zonefs.remote import open_remote
    from zonefs.remote.probe import probe

    async def check(z: zones.NamedZone) -> str:
        try:
            remote = open_remote(z.zone)
            overrides = dict(parse_mount_options(z.options).store_overrides)
            with trio.fail_after(10):
                await remote.check()
            found = await probe(remote, overrides=overrides)
            return f"ok: reachable; {found.with_overrides(overrides).summary()}"
        except trio.TooSlowError:
            return "FAILED: no answer within 10 s"
        except ZonefsError as exc:
            return f"FAILED: {exc}"

    async def run_all() -> dict[str, str]:
        out: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            for z in named:
                async def one(z: zones.NamedZone = z) -> None:
                    out[z.name] = await check(z)
                nursery.start_soon(one)
        return out

    return trio.run(run_all)


def cmd_mount(args: argparse.Namespace) -> int:
    zone, opts = _zone_and_options(args)
    if getattr(args, "reprobe", False):
        opts = dataclasses.replace(opts, reprobe=True)
    if args.foreground:
        return _run_foreground(args, zone, opts)
    return _run_background(args, zone, opts)


def _run_foreground(args: argparse.Namespace, zone: ZoneConfig, opts: MountOptions) -> int:
    import trio

    from zonefs.mount.daemon import Daemon, preflight

    ready_fd: int | None = args.ready_fd
    _setup_logging(args.log_level, args.log_file)

    def on_ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"READY\n")
            os.close(ready_fd)

    try:
        preflight(args.mountpoint, opts)
        trio.run(Daemon(zone, opts, args.mountpoint).serve, on_ready)
    except ZonefsError as exc:
        log.error("%s", exc)
        code = 2 if isinstance(exc, ConfigError) else 1
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"ERROR {code} {exc}\n".encode())
        elif not args.log_file:
            pass  # already on stderr through logging
        return code
    except KeyboardInterrupt:
        if args.command in ("sync", "umount"):
            # The daemon only stops waiting for this client: its uploads go on.
            print(f"\nzonefs: interrupted; {args.mountpoint} stays mounted and goes on "
                  "uploading in the background", file=sys.stderr)
        return 130
    return 0


def _run_background(args: argparse.Namespace, zone: ZoneConfig, opts: MountOptions) -> int:
    cache_dir = opts.cache_dir_for(zone)
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    log_file = args.log_file or os.path.join(cache_dir, "zonefs.log")
    read_fd, write_fd = os.pipe()
    argv = [sys.executable, "-m", "zonefs", "--log-level", args.log_level, "mount", args.zone,
            os.path.abspath(args.mountpoint), "--foreground", "--ready-fd", str(write_fd),
            "--log-file", log_file]
    for name in ("endpoint_url", "region", "profile", "ca_bundle"):
        value = getattr(args, name)
        if value:
            argv += [f"--{name.replace('_', '-')}", value]
    for spec in args.options or []:
        argv += ["-o", spec]
    if getattr(args, "reprobe", False):
        argv.append("--reprobe")
    with open(os.devnull, "rb") as devnull:
        out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        child = subprocess.Popen(argv, stdin=devnull, stdout=out, stderr=out,
                                 pass_fds=(write_fd,), start_new_session=True)
        os.close(out)
    os.close(write_fd)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    message = b""
    while b"\n" not in message:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            child.kill()
            print(f"zonefs: the mount did not come up within {MOUNT_TIMEOUT:.0f} s; see {log_file}",
                  file=sys.stderr)
            return 1
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if ready:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            message += chunk
    os.close(read_fd)
    line = message.decode(errors="replace").strip()
    if line == "READY":
        print(f"zonefs: {zone.label} mounted on {os.path.abspath(args.mountpoint)}")
        return 0
    if line.startswith("ERROR "):
        _, code, text = line.split(" ", 2)
        print(f"zonefs: {text}", file=sys.stderr)
        child.wait(timeout=10)
        return int(code)
    child.wait(timeout=10)
    print(f"zonefs: the mount daemon exited early; see {log_file}", file=sys.stderr)
    return 1


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.0%} ({part} of {whole} opens)" if whole else "-"


# -- talking to a mount -----------------------------------------------------------------------


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


# -- content identity -------------------------------------------------------------------------


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


# -- history ----------------------------------------------------------------------------------


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


# -- demo -------------------------------------------------------------------------------------

DEMO_FILES = {
    "README.txt": "This is an embedded zonefs zone: a versioned object store in a directory.\n"
                  "Every file you write here becomes an object; try cp, mv, rm, mkdir.\n",
    "examples/hello.txt": "hello from zonefs\n",
    "examples/data.csv": "name,value\nalpha,1\nbeta,2\n",
}


def cmd_demo(args: argparse.Namespace) -> int:
    import trio

    from zonefs.common.keys import DIR_CONTENT_TYPE
    from zonefs.remote import open_remote

    zone_dir = os.path.abspath(args.dir)
    mountpoint = os.path.abspath(args.mountpoint)
    zone = ZoneConfig.parse(f"file://{zone_dir}")
    if not os.path.exists(zone_dir):
        remote = open_remote(zone, create=True)

        async def seed() -> None:
            await remote.put_bytes("examples/", b"", {}, DIR_CONTENT_TYPE)
            for key, text in DEMO_FILES.items():
                await remote.put_bytes(key, text.encode(), {}, "text/plain")

        trio.run(seed)
    os.makedirs(mountpoint, exist_ok=True)
    if os.path.ismount(mountpoint):
        print(f"zonefs: {mountpoint} is already mounted")
    else:
        ns = argparse.Namespace(zone=zone.url, mountpoint=mountpoint, endpoint_url=None,
                                region=None, profile=None, ca_bundle=None,
                                options=args.options,
                                foreground=False, log_level=args.log_level, log_file=None,
                                ready_fd=None)
        code = cmd_mount(ns)
        if code:
            return code
    rel = os.path.relpath(mountpoint)
    if rel.startswith(".."):
        rel = mountpoint
    if sys.argv[0].endswith("__main__.py"):
        exe = f"{sys.executable} -m zonefs"
    else:
        exe = os.path.relpath(sys.argv[0]) if os.sep in sys.argv[0] else "zonefs"
    print(f"""
The demo zone {zone_dir} is mounted at {rel}. Things to try:
  ls -l {rel} {rel}/examples
  echo 'my first object' > {rel}/notes.txt && cat {rel}/notes.txt
  cp -r /etc/apt {rel}/ && ls -lR {rel}/apt | head
  mv {rel}/notes.txt {rel}/examples/ && rm -r {rel}/apt
  echo 'second version' > {rel}/examples/notes.txt && {exe} sync {rel}
  ls -l {rel}/.zonefs/versions/examples/notes.txt/   # every version, readable
  ls {rel}/.zonefs/at/-1m/                         # the zone a minute ago
  {exe} versions {rel}/examples/notes.txt
  {exe} status {rel}        # what is cached, pending, requested
  {exe} sync {rel}          # wait until every change is stored in the zone
Unmount (uploads everything pending first):
  {exe} umount {rel}""")
    return 0


# -- argument parsing -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zonefs", description="Mount an S3 zone as a directory.")
    parser.add_argument("--version", action="version", version=f"zonefs {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--debug", action="store_const", const="DEBUG", dest="log_level",
                        help="log every request by kind and key (never credentials or data)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("mount", help="mount a zone")
    p.add_argument("zone", nargs="?",
                   help="s3://BUCKET[/PREFIX], file:///DIR, or a zone name from zones.toml "
                        f"(default: ${zones.ZONE_ENV})")
    p.add_argument("mountpoint", nargs="?", help="default: the zone's mountpoint")
    p.add_argument("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:9000")
    p.add_argument("--region")
    p.add_argument("--profile", help="AWS profile for credentials")
    p.add_argument("--ca-bundle", help="CA certificates (PEM) for an https endpoint")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS",
                   help="ro, allow_other, uid=, gid=, umask=, cache_dir=, cache_size=, "
                        "writeback_delay=, metadata_ttl=, io_timeout=, at=, kachery_mirror; "
                        "the store probe's answers: "
                        "versioning=, conditional_writes=, checksums=on|off, dir_markers=, "
                        "backslash_keys=, max_name_bytes=")
    p.add_argument("-f", "--foreground", action="store_true", help="stay attached")
    p.add_argument("--reprobe", action="store_true",
                   help="probe what the store can do again, instead of using the cached answers")
    p.add_argument("--log-file", help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_mount)

    for name, func, text in (("umount", cmd_umount, "upload everything pending, then unmount"),
                             ("sync", cmd_sync, "upload everything pending and wait")):
        p = sub.add_parser(name, help=text)
        p.add_argument("mountpoint")
        p.set_defaults(func=func)
        if name == "umount":
            p.add_argument("--lazy", action="store_true",
                           help="unmount now; pending uploads stay journaled for the next mount")

    p = sub.add_parser("zones", help="list the zones of the zones files")
    p.add_argument("--check", action="store_true",
                   help="also check that each can be reached and what its store supports")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_zones)

    p = sub.add_parser("status", help="show a mount's state")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("info", help="content identity of a file in a mount, as JSON")
    p.add_argument("path")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("versions", help="list every version of a file in a mount")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("restore", help="make an older version of a file current again")
    p.add_argument("path")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", dest="version", metavar="ID", help="a version id")
    which.add_argument("--at", metavar="TIME",
                       help="the version current at TIME (2026-11-20T12:00:00Z, -2h, ...)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("undelete", help="bring a deleted file back")
    p.add_argument("path")
    p.set_defaults(func=cmd_undelete)

    p = sub.add_parser("cat", help="print the file with this content URI from a mounted zone")
    p.add_argument("uri", help="sha1://<sha1>[?label=...]")
    p.set_defaults(func=cmd_cat)

    p = sub.add_parser("demo", help="create and mount an embedded demo zone")
    p.add_argument("--dir", default="demo-zone", help="zone directory (default ./demo-zone)")
    p.add_argument("--mountpoint", default="zone", help="mount point (default ./zone)")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "mount" or not getattr(args, "foreground", False):
        _setup_logging("WARNING" if args.log_level == "INFO" else args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"zonefs: {exc}", file=sys.stderr)
        return 2
    except (ZonefsError, control.ControlError) as exc:
        print(f"zonefs: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command in ("sync", "umount"):
            # The daemon only stops waiting for this client: its uploads go on.
            print(f"\nzonefs: interrupted; {args.mountpoint} stays mounted and goes on "
                  "uploading in the background", file=sys.stderr)
        return 130
