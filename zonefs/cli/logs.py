"""Where the `zonefs` command logs: stderr (journald's format when systemd reads it) or the
mount's log file, at one level; botocore and friends stay quiet, whatever the level, because at
DEBUG they log request headers.
"""

from __future__ import annotations

import logging
import os
import sys


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


def setup_logging(level: str, log_file: str | None = None) -> None:
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
