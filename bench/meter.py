"""CPU seconds and peak resident memory of the process serving a mount, over one step.

`Meter.start` reads the process's CPU time (user + system, all its threads, from
/proc/PID/stat) and resets its peak RSS (`5` written to /proc/PID/clear_refs, which needs
the right to write there: root, or the process's own user); `Meter.lap` reads both. Where the
peak cannot be reset, the peak over the process's life is reported instead.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """What the process used from `Meter.start` to a lap."""

    cpu_seconds: float
    peak_rss_mib: float


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rpartition(")")[2].split()
    # After the command's closing parenthesis: state is field 3, utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set size) of a process, in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no VmHWM for PID {pid}")


class Meter:
    """One step's CPU seconds and peak RSS of process `pid`; see the module docstring."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._cpu0 = 0.0

    def start(self) -> None:
        if self.pid is None:
            return
        with (contextlib.suppress(OSError),
              open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as f):
            f.write("5")  # resets VmHWM to the current RSS
        self._cpu0 = cpu_seconds(self.pid)

    def lap(self) -> Usage | None:
        """What the process used since `start`; None when it is not known (no PID, gone)."""
        if self.pid is None:
            return None
        try:
            return Usage(cpu_seconds(self.pid) - self._cpu0, peak_rss_mib(self.pid))
        except OSError:
            return None
