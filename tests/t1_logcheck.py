"""The log check of the suite itself (tests/logcheck.py): what counts as an offence in a daemon
log, and what a declaration allows."""

from __future__ import annotations

import logging
from pathlib import Path

import logcheck

LOG = """\
2026-01-02 03:04:05,678 INFO zonefs.mount.daemon: mounted
2026-01-02 03:04:05,679 WARNING zonefs.pending.ledger: conflict: 'a' was changed in the bucket
2026-01-02 03:04:05,680 ERROR zonefs.pending.writeback: upload of 'b' failed
Traceback (most recent call last):
  File "x.py", line 1, in <module>
RuntimeError: boom
2026-01-02 03:04:05,681 DEBUG zonefs.core.view: list ''
/usr/lib/python3/x.py:12: DeprecationWarning: old
  warnings.warn("old")
2026-01-02 03:04:05,682 INFO zonefs.mount.daemon: unmounted
"""


def test_a_log_is_cut_into_records_with_their_tracebacks() -> None:
    entries = list(logcheck.entries_of("zonefs.log", LOG))
    assert [len(e.lines) for e in entries] == [1, 1, 4, 1, 2, 1]
    assert [e.offends() for e in entries] == [False, True, True, False, True, False]


def test_stray_lines_before_the_first_record_count_when_they_hold_a_traceback() -> None:
    text = "Traceback (most recent call last):\n  File \"x\"\nOSError: no\n" + LOG
    [first, *_] = logcheck.entries_of("zonefs.log", text)
    assert first.offends() and first.lines[-1] == "OSError: no"


def test_a_declaration_allows_the_records_it_matches_traceback_included() -> None:
    entries = list(logcheck.entries_of("zonefs.log", LOG))
    left = logcheck.undeclared(entries, [r"conflict: 'a'", r"RuntimeError: boom"])
    assert [e.lines[0] for e in left] == ["/usr/lib/python3/x.py:12: DeprecationWarning: old"]
    assert logcheck.undeclared(entries, [r"conflict", r"upload of", r"Warning"]) == []
    message = logcheck.report(left)
    assert "DeprecationWarning: old" in message and "[zonefs.log]" in message


def test_records_of_the_test_process_read_like_the_daemon_log() -> None:
    log = logging.getLogger("zonefs.core.view")
    with logcheck.in_process_records() as records:
        log.warning("key %r hidden", "a/")
        try:
            raise ValueError("inner")
        except ValueError:
            log.exception("with a traceback")
    assert len(records) == 2 and all(e.offends() for e in records)
    assert "key 'a/' hidden" in records[0].text and "ValueError: inner" in records[1].text
    log.warning("after the check: not collected")
    assert len(records) == 2


def test_daemon_logs_are_found_below_the_test_dir_and_registered(tmp_path: Path) -> None:
    (tmp_path / "cache" / "sub").mkdir(parents=True)
    below = tmp_path / "cache" / "zonefs.log"
    below.write_text("")
    elsewhere = tmp_path / "sub-elsewhere.log"
    elsewhere.write_text("")
    found = logcheck.daemon_logs([elsewhere, below, tmp_path / "missing.log"], tmp_path)
    assert found == sorted([below, elsewhere])
