"""`zonefs demo`: create an embedded zone with a few example files, mount it in the
background, and print things to try.
"""

from __future__ import annotations

import argparse
import os
import sys

from zonefs.cli.background import run_background, zone_and_options
from zonefs.common.config import ZoneConfig

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
        demo_zone, opts = zone_and_options(ns)
        code = run_background(ns, demo_zone, opts)
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
