"""The control channel between a running mount and the `zonefs` command.

Each mount listens on a Unix socket (0600, in a 0700 directory) whose name is derived from the
mount point, so `zonefs sync|status|umount MOUNTPOINT` finds its daemon without any registry.
The protocol is JSON lines: the client sends one request `{"cmd": ...}`; the daemon answers with
zero or more `{"progress": ...}` lines and one final line holding `ok` (and `error` when false).
This module holds the socket naming and the blocking client; the server is `control_server`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any


def zonefs_mounts() -> list[str]:
    """Mount points of the zonefs mounts in this mount namespace, from the mount table."""
    return [mp for mp, fstype in _mount_table() if fstype == "fuse.zonefs"]


def is_mounted(mountpoint: str) -> bool:
    """Whether `mountpoint` is in the mount table, without touching it (a stat of a mount
    whose daemon is not answering would hang)."""
    target = os.path.abspath(mountpoint)
    return any(mp == target for mp, _ in _mount_table())


def _mount_table() -> list[tuple[str, str]]:
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        rows = [line.split() for line in f]
    return [(unescape_mount_field(r[1]), r[2]) for r in rows if len(r) > 2]


def unescape_mount_field(field: str) -> str:
    """A path field of /proc/mounts or /proc/self/mountinfo as it is: both escape space, tab,
    newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def runtime_dir() -> str:
    """Where control sockets live: $XDG_RUNTIME_DIR/zonefs, /run/zonefs for root, else /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return os.path.join(base, "zonefs")
    if os.geteuid() == 0:
        return "/run/zonefs"
    return f"/tmp/zonefs-{os.getuid()}"


def socket_path(mountpoint: str) -> str:
    """The control socket of the mount at `mountpoint` (any spelling of the same directory)."""
    real = os.path.realpath(mountpoint)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return os.path.join(runtime_dir(), f"{digest}.sock")


class ControlError(Exception):
    """The daemon could not be reached or answered with an error; `answer` is the daemon's
    whole answer when it gave one (an unmount refused for refused changes lists them)."""

    def __init__(self, message: str, answer: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.answer = answer or {}


class Unreachable(ControlError):
    """No daemon answers at the mount point (none was started, or it died)."""


def request(
    mountpoint: str,
    cmd: str,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = None,
    **args: Any,
) -> dict[str, Any]:
    """Send `cmd` (with `args`) to the mount's daemon; return its final answer."""
    path = socket_path(mountpoint)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise Unreachable(f"no zonefs mount answers at {mountpoint}") from exc
    sock.settimeout(timeout)
    with sock:
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        for message in _lines(sock):
            if "progress" in message:
                if on_progress is not None:
                    on_progress(message["progress"])
                continue
            if not message.get("ok"):
                raise ControlError(message.get("error", "the mount refused the request"),
                                   message)
            return message
    raise ControlError(f"the zonefs mount at {mountpoint} closed the connection")


def _lines(sock: socket.socket) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
