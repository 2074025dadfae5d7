"""The kernel's read-ahead window for one mount (`-o read_ahead=SIZE`).

The kernel asks a FUSE file system for file data in requests no larger than the mount's
read-ahead window, which starts at 128 KiB. Each request is one round trip through the kernel,
pyfuse3 and the trio loop, so a sequential read of a large file (`cp` or `cat` of a big object)
costs eight times as many round trips at 128 KiB as at 1 MiB, the largest request the kernel
sends. The window is a property of the mount's backing device in sysfs
(`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`), which only root may change; an unprivileged mount
keeps the kernel's window.

The device number is read from /proc/self/mountinfo, not from a `stat` of the mount point: that
`stat` would be a FUSE request to this very process, which is not serving requests yet.
"""

from __future__ import annotations

import logging
import os

from zonefs.mount.control import unescape_mount_field

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
SYSFS_BDI = "/sys/class/bdi"


def mount_device(mountpoint: str, mountinfo: str = MOUNTINFO) -> str | None:
    """`MAJOR:MINOR` of the FUSE mount at `mountpoint` (the last one, if stacked), or None."""
    found = None
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 5 or "-" not in fields:
                    continue
                fstype = fields[fields.index("-") + 1]
                if unescape_mount_field(fields[4]) == mountpoint and fstype.startswith("fuse"):
                    found = fields[2]
    except OSError:
        return None
    return found


def set_read_ahead(mountpoint: str, size: int, *, sysfs: str = SYSFS_BDI,
                   mountinfo: str = MOUNTINFO) -> bool:
    """Set the mount's read-ahead window to `size` bytes (0: leave the kernel's). True if set."""
    if size <= 0:
        return False
    device = mount_device(mountpoint, mountinfo)
    if device is None:
        log.debug("read-ahead: no mount of %s in %s; the kernel's window stays", mountpoint,
                  mountinfo)
        return False
    path = os.path.join(sysfs, device, "read_ahead_kb")
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(str(max(1, size >> 10)))
    except OSError as exc:  # not root, or a kernel without per-mount read-ahead
        log.debug("read-ahead: cannot set %s (%s); the kernel's window stays", path,
                  exc.strerror)
        return False
    log.debug("read-ahead of %s set to %d KiB", mountpoint, size >> 10)
    return True
