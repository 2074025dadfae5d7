"""The `zonefs` command: parse the arguments, run the subcommand, and turn every error into one
line on stderr and an exit code (2 for bad input, 1 for a failure), never a traceback. It also
runs the mount daemon in the foreground (`zonefs mount -f`, and the background child that
`zonefs mount` starts). Credentials never appear in argv: they come from the standard AWS
chain (environment, shared files, profiles), which the background daemon inherits.

Each subcommand lives in its own module: `parser` (the arguments), `background` (the zone and
options of a mount, its background start), `zones_cmd`, `control_cmds` (sync, umount, status),
`file_cmds` (info, cat, versions, restore, undelete), `demo`; `logs` sets up logging.

A subcommand's module is imported only when it runs: `zonefs umount`, `sync` and `status`
load the control client and little else, so that they answer in about the time Python takes
to start (an idle unmount itself takes the daemon milliseconds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zonefs.cli.logs import setup_logging
from zonefs.cli.parser import build_parser
from zonefs.common.errors import ConfigError, ZonefsError
from zonefs.mount import control

if TYPE_CHECKING:
    from zonefs.common.config import MountOptions, ZoneConfig

log = logging.getLogger("zonefs")


def __getattr__(name: str) -> Any:
    if name == "restored_message":  # re-exported, without importing file_cmds for every command
        from zonefs.cli.file_cmds import restored_message

        return restored_message
    raise AttributeError(name)


def cmd_mount(args: argparse.Namespace) -> int:
    from zonefs.cli.background import run_background, zone_and_options

    zone, opts = zone_and_options(args)
    if getattr(args, "reprobe", False):
        opts = dataclasses.replace(opts, reprobe=True)
    if args.foreground:
        return _run_foreground(args, zone, opts)
    return run_background(args, zone, opts)


def _run_foreground(args: argparse.Namespace, zone: ZoneConfig, opts: MountOptions) -> int:
    import trio

    from zonefs.mount.daemon import Daemon, preflight

    ready_fd: int | None = args.ready_fd
    setup_logging(args.log_level, args.log_file)

    def on_ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"READY\n")
            os.close(ready_fd)

    try:
        preflight(args.mountpoint, opts)
        try:
            trio.run(Daemon(zone, opts, args.mountpoint).serve, on_ready)
        except BaseExceptionGroup as group:
            # A mount error raised inside the daemon's nursery (the mount point, the metrics
            # address) arrives wrapped: it is told as itself, in one line.
            raise _only_error(group) from None
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
    finally:
        # The mount is gone, its journal and cache closed. What is left is the interpreter's
        # exit, whose last garbage collection walks every object loaded (botocore's service
        # models: 0.1-0.4 s here) and frees nothing that matters to anyone: skip it, so that
        # the daemon ends as soon as its mount does (`fusermount3 -u`, `systemctl stop`).
        gc.freeze()
    return 0


def _only_error(group: BaseExceptionGroup) -> BaseException:
    """The ZonefsError a group of exceptions holds when it holds nothing else; else the group.

    >>> _only_error(ExceptionGroup("x", [ExceptionGroup("y", [ZonefsError("no")])]))
    ZonefsError('no')
    """
    errors, rest = group.split(ZonefsError)
    if errors is None or rest is not None:
        return group
    leaf: BaseException = errors
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


#: Each subcommand and what runs it ("module:function", imported when it runs).
COMMANDS: dict[str, str] = {
    "mount": "zonefs.cli.main:cmd_mount",
    "umount": "zonefs.cli.control_cmds:cmd_umount",
    "sync": "zonefs.cli.control_cmds:cmd_sync",
    "zones": "zonefs.cli.zones_cmd:cmd_zones",
    "status": "zonefs.cli.control_cmds:cmd_status",
    "info": "zonefs.cli.file_cmds:cmd_info",
    "versions": "zonefs.cli.file_cmds:cmd_versions",
    "restore": "zonefs.cli.file_cmds:cmd_restore",
    "undelete": "zonefs.cli.file_cmds:cmd_undelete",
    "cat": "zonefs.cli.file_cmds:cmd_cat",
    "demo": "zonefs.cli.demo:cmd_demo",
}


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs subcommand `name`."""
    module, _, function = COMMANDS[name].partition(":")
    run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), function)
    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "mount" or not getattr(args, "foreground", False):
        setup_logging("WARNING" if args.log_level == "INFO" else args.log_level)
    try:
        return int(command(args.command)(args))
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
