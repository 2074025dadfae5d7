"""The log check: a test fails when zonefs logged, during it, a WARNING or worse, or a traceback,
that the test did not declare.

Two sources are read:
- daemon logs: every log file of a `Mount` the test started (tests/mounts.py registers each in
  `DAEMON_LOGS`) and every `zonefs.log` below the test's tmp_path (daemons a test starts by
  hand), read once the test's fixtures have unmounted everything;
- records of the `zonefs` loggers emitted in the test process (the t3 core run by
  tests/vfs_harness.py, and whatever the test calls in-process), from t3 on, at the loggers'
  own levels (WARNING unless the test lowers one).

A log file is cut into entries: a line `<date> <time> LEVEL logger: message` starts one, and the
lines up to the next such line (a traceback, stray stderr output) belong to it. An entry is an
offence when its level is WARNING or above, when it holds a traceback, or when it is a Python
warning printed to stderr. A declaration is a regular expression searched (`re.search`) in the
whole entry: `@pytest.mark.expect_log(r"regex", ...)` on the test, its class or its module.
A declaration allows, it does not require: a test asserts what it needs to see itself.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: The first line of a record as `zonefs mount` writes its log (zonefs.cli.main).
RECORD_RE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
#: A line of the `warnings` module printed to stderr (`file.py:12: DeprecationWarning: …`).
PY_WARNING_RE = re.compile(r"^\S+:\d+: \w*Warning: ")
TRACEBACK = "Traceback (most recent call last):"
OFFENDING_LEVELS = {"WARNING", "ERROR", "CRITICAL"}
#: The log file name of a background daemon (cache_dir/zonefs.log).
DAEMON_LOG_NAME = "zonefs.log"
#: How many entries, and lines of one entry, the failure message shows.
SHOWN_ENTRIES = 20
SHOWN_LINES = 12


@dataclass
class Entry:
    """One record of a log (its first line and the lines that follow it), and where it is."""

    source: str
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def offends(self) -> bool:
        m = RECORD_RE.match(self.lines[0])
        if m and m.group(1) in OFFENDING_LEVELS:
            return True
        return any(line.startswith(TRACEBACK) or PY_WARNING_RE.match(line)
                   for line in self.lines)


def entries_of(source: str, text: str) -> Iterator[Entry]:
    """The entries of a log file's text (see the module docstring)."""
    current: Entry | None = None
    for line in text.splitlines():
        if current is None or RECORD_RE.match(line) or PY_WARNING_RE.match(line):
            if current is not None:
                yield current
            current = Entry(source, [line])
        else:
            current.lines.append(line)
    if current is not None:
        yield current


def _mount_points() -> set[str]:
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        return {fields[1] for fields in (line.split() for line in f) if len(fields) > 1}


def daemon_logs(registered: Iterable[Path], tmp_path: Path | None) -> list[Path]:
    """The registered log files and every zonefs.log below `tmp_path` (never walking into a
    mount point: one still mounted may hang), each once."""
    found = {os.path.realpath(p): Path(p) for p in registered if os.path.isfile(p)}
    if tmp_path is not None and tmp_path.is_dir():
        mounts = _mount_points()
        for root, dirs, files in os.walk(tmp_path):
            dirs[:] = [d for d in dirs if os.path.join(root, d) not in mounts]
            if DAEMON_LOG_NAME in files:
                path = os.path.join(root, DAEMON_LOG_NAME)
                found.setdefault(os.path.realpath(path), Path(path))
    return sorted(found.values())


class _Collector(logging.Handler):
    """Keeps the offending records of the test process's `zonefs` loggers."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[Entry] = []
        # The daemon's own format (zonefs.cli.main), so that both read alike.
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.exc_info:
            self.entries.append(Entry("in the test process", self.format(record).splitlines()))


@contextmanager
def in_process_records() -> Iterator[list[Entry]]:
    """While open, collect the offending records of the `zonefs` loggers in this process."""
    collector = _Collector()
    logger = logging.getLogger("zonefs")
    logger.addHandler(collector)
    try:
        yield collector.entries
    finally:
        logger.removeHandler(collector)


def undeclared(entries: Iterable[Entry], patterns: Iterable[str]) -> list[Entry]:
    """The offending entries that no declared pattern matches."""
    compiled = [re.compile(p) for p in patterns]
    return [e for e in entries
            if e.offends() and not any(p.search(e.text) for p in compiled)]


def report(entries: list[Entry]) -> str:
    """The failure message: each undeclared entry, with where it was logged."""
    out = [f"zonefs logged {len(entries)} undeclared warning(s) or traceback(s); declare the "
           "expected ones with @pytest.mark.expect_log(r\"regex\", ...):"]
    for e in entries[:SHOWN_ENTRIES]:
        shown = e.lines[:SHOWN_LINES]
        more = len(e.lines) - len(shown)
        out.append(f"  [{e.source}]")
        out += [f"    {line}" for line in shown]
        if more:
            out.append(f"    … {more} more line(s)")
    if len(entries) > SHOWN_ENTRIES:
        out.append(f"  … and {len(entries) - SHOWN_ENTRIES} more")
    return "\n".join(out)
