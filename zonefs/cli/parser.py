"""The arguments of the `zonefs` command and of each subcommand (`args.command` names the
subcommand; `zonefs.cli.main` runs it).
"""

from __future__ import annotations

import argparse

from zonefs import __version__

#: `zones.ZONE_ENV`, named here so that parsing (every command) does not load the zones files'
#: reader and the config module: `zonefs umount` and `sync` need neither.
ZONE_ENV = "ZONEFS_ZONE"


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
                        f"(default: ${ZONE_ENV})")
    p.add_argument("mountpoint", nargs="?", help="default: the zone's mountpoint")
    p.add_argument("--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:9000")
    p.add_argument("--region")
    p.add_argument("--profile", help="AWS profile for credentials")
    p.add_argument("--ca-bundle", help="CA certificates (PEM) for an https endpoint")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS",
                   help="ro, allow_other, uid=, gid=, umask=, cache_dir=, cache_size=, "
                        "writeback_delay=, metadata_ttl=, io_timeout=, read_ahead=, at=, "
                        "kachery_mirror; "
                        "the store probe's answers: "
                        "versioning=, conditional_writes=, checksums=on|off, dir_markers=, "
                        "backslash_keys=, max_name_bytes=")
    p.add_argument("-f", "--foreground", action="store_true", help="stay attached")
    p.add_argument("--reprobe", action="store_true",
                   help="probe what the store can do again, instead of using the cached answers")
    p.add_argument("--log-file", help=argparse.SUPPRESS)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    for name, text in (("umount", "upload everything pending, then unmount"),
                       ("sync", "upload everything pending and wait")):
        p = sub.add_parser(name, help=text)
        p.add_argument("mountpoint")
        if name == "umount":
            p.add_argument("--lazy", action="store_true",
                           help="unmount now; pending uploads stay journaled for the next mount")

    p = sub.add_parser("zones", help="list the zones of the zones files")
    p.add_argument("--check", action="store_true",
                   help="also check that each can be reached and what its store supports")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("status", help="show a mount's state")
    p.add_argument("mountpoint")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="content identity of a file in a mount, as JSON")
    p.add_argument("path")

    p = sub.add_parser("versions", help="list every version of a file in a mount")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("restore", help="make an older version of a file current again")
    p.add_argument("path")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", dest="version", metavar="ID", help="a version id")
    which.add_argument("--at", metavar="TIME",
                       help="the version current at TIME (2026-11-20T12:00:00Z, -2h, ...)")

    p = sub.add_parser("undelete", help="bring a deleted file back")
    p.add_argument("path")

    p = sub.add_parser("cat", help="print the file with this content URI from a mounted zone")
    p.add_argument("uri", help="sha1://<sha1>[?label=...]")

    p = sub.add_parser("demo", help="create and mount an embedded demo zone")
    p.add_argument("--dir", default="demo-zone", help="zone directory (default ./demo-zone)")
    p.add_argument("--mountpoint", default="zone", help="mount point (default ./zone)")
    p.add_argument("-o", dest="options", action="append", metavar="OPTIONS")
    return parser
