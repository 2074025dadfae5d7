"""`mount.zonefs`: the helper mount(8) runs for `mount -t zonefs` and fstab lines.

    # /etc/fstab
    example  /mnt/zone  zonefs  _netdev,nofail  0 0

mount(8) calls `mount.zonefs SPEC DIR [-sfnv] [-o OPTIONS] [-t zonefs]`; SPEC is a zone name
from zones.toml or a zone URL. The helper mounts in the background like `zonefs mount` and
returns once the mount answers, so systemd's mount units (made from fstab by
systemd-fstab-generator) and `mount -a` see it ready. Options mount(8) adds (`rw`, `_netdev`,
`nofail`, …) are accepted by `zonefs mount` and ignored.
"""

from __future__ import annotations

import argparse
import sys

from zonefs.cli import main as cli


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mount.zonefs", add_help=True)
    parser.add_argument("spec", help="a zone name from zones.toml, or s3://… / file:///…")
    parser.add_argument("dir", help="the mount point")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-t", dest="type", default="zonefs")
    parser.add_argument("-s", action="store_true", help="sloppy: ignored")
    parser.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    parser.add_argument("-n", action="store_true", help="no mtab: ignored")
    parser.add_argument("-v", dest="verbose", action="store_true")
    parser.add_argument("-N", dest="namespace", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.namespace:
        print("mount.zonefs: mounting in another namespace (-N) is not supported",
              file=sys.stderr)
        return 1
    if args.fake:
        return 0
    command = ["mount", args.spec, args.dir]
    for spec in args.options:
        command += ["-o", spec]
    if args.verbose:
        print(f"mount.zonefs: zonefs {' '.join(command)}", file=sys.stderr)
    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
