"""`StreamHasher` alone: the digest of a local file taken as it is written, which the upload
uses instead of reading the file again. Each test writes a real file the way the core does
(the bytes on disk first, then `wrote`) and compares with hashlib over the file's bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from zonefs.cache.streamhash import INLINE_UP_TO, MAX_AHEAD, StreamHasher

PIECE = 128 << 10


def data_of(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def expected(data: bytes) -> tuple[str, str, int]:
    return hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), len(data)


class File:
    """A local file written through pwrite, each write told to the hasher."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")
        self.hasher = StreamHasher(str(path))
        self.fd = os.open(path, os.O_WRONLY)

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)
        self.hasher.wrote(offset, len(data))

    def result(self) -> tuple[str, str, int] | None:
        os.close(self.fd)
        digest = self.hasher.result(os.path.getsize(self.path))
        return None if digest is None else (digest.sha256, digest.sha1, digest.size)


def test_a_file_written_from_start_to_end_is_hashed_as_written(tmp_path: Path) -> None:
    for size in (0, 1, INLINE_UP_TO, 3 * INLINE_UP_TO + 12345):
        data = data_of(size)
        f = File(tmp_path / f"f{size}")
        for start in range(0, size, PIECE):
            f.write(start, data[start:start + PIECE])
        assert f.result() == expected(data), size


def test_writes_arriving_slightly_out_of_order_still_give_the_digest(tmp_path: Path) -> None:
    """The kernel hands several writes over at once; they may be served in another order."""
    data = data_of(3 * INLINE_UP_TO)
    starts = list(range(0, len(data), PIECE))
    order = []
    for i in range(0, len(starts), 4):  # each group of four backwards
        order.extend(reversed(starts[i:i + 4]))
    f = File(tmp_path / "f")
    for start in order:
        f.write(start, data[start:start + PIECE])
    assert f.result() == expected(data)


def test_a_write_over_hashed_bytes_turns_the_hasher_off(tmp_path: Path) -> None:
    data = bytearray(data_of(3 * INLINE_UP_TO))
    f = File(tmp_path / "f")
    for start in range(0, len(data), PIECE):
        f.write(start, bytes(data[start:start + PIECE]))
    f.write(10, b"changed")
    assert f.result() is None


def test_a_truncation_a_gap_or_another_size_give_no_digest(tmp_path: Path) -> None:
    data = data_of(2 * INLINE_UP_TO)
    f = File(tmp_path / "trunc")
    f.write(0, data)
    os.truncate(f.path, 10)
    f.hasher.abandon()
    assert f.result() is None

    g = File(tmp_path / "gap")
    g.write(0, data[:PIECE])
    g.write(2 * PIECE, data[2 * PIECE:3 * PIECE])  # the piece between never written
    assert g.result() is None

    h = File(tmp_path / "size")
    h.write(0, data)
    os.close(h.fd)
    assert h.hasher.result(len(data) + 1) is None


def test_too_many_writes_past_a_gap_turn_the_hasher_off(tmp_path: Path) -> None:
    f = File(tmp_path / "f")
    for i in range(MAX_AHEAD + 1):
        f.write(1 + i, b"x")  # every write past the first byte, never written
    f.write(0, b"x")
    assert f.hasher.broken and f.result() is None


def test_a_file_gone_before_it_was_hashed_gives_no_digest(tmp_path: Path) -> None:
    f = File(tmp_path / "f")
    f.write(0, data_of(PIECE))
    os.close(f.fd)
    os.unlink(f.path)
    assert f.hasher.result(PIECE) is None
