"""How `zonefs mount` finds its zone and options, and starts the daemon in the background: a
child `python -m zonefs mount --foreground` that writes READY (or `ERROR code text`) on a
pipe once the mount answers, or gives up after `MOUNT_TIMEOUT`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import select
import subprocess
import sys
import time

from zonefs.common import zones
from zonefs.common.config import MountOptions, ZoneConfig, parse_mount_options
from zonefs.common.errors import ConfigError

#: How long `zonefs mount` waits for the daemon to answer: the store check (8 s) and the store
#: probe (15 s, when nothing is cached) give up sooner.
MOUNT_TIMEOUT = 30.0


def zone_and_options(args: argparse.Namespace) -> tuple[ZoneConfig, MountOptions]:
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


def run_background(args: argparse.Namespace, zone: ZoneConfig, opts: MountOptions) -> int:
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
