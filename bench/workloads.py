"""The rows W1–W9: their local inputs, the objects they are seeded with, and each timed step.

Each step checks what it got (entry counts, sizes, SHA-256 of the bytes) and raises
`WorkloadError` on a wrong answer.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import random
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig

from common import (
    MIB,
    PageCache,
    Params,
    WorkloadError,
    check_object,
    create_bucket,
    measured,
    sync_quietly,
    timed,
    wait_durable,
)
from meter import peak_rss_mib
from seed import put_many
from systems import Mount, System, daemon_pid

if TYPE_CHECKING:
    from endpoints import Endpoint

LS_PREFIX = "ls1000"


BIG_KEY = "w4/blob.bin"


FIND_PREFIX = "find10k"


LIST_PREFIX = "list100k"


def seed_ls_objects(s3: Any, bucket: str, params: Params) -> None:
    """Put `ls_count` objects of `ls_size` bytes under ls1000/, concurrently."""
    body = os.urandom(params.ls_size)

    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"{LS_PREFIX}/obj{i:05d}.dat", Body=body)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(params.ls_count)))


@dataclass(frozen=True)
class BigObject:
    """The object W4 and W6 read: where it is and what reading it must give."""

    key: str
    size: int
    sha256: str
    # W6's reads: (offset, the bytes there), at 4 KiB-aligned random offsets (fixed seed)
    samples: tuple[tuple[int, bytes], ...] = ()


def make_big_object(params: Params) -> tuple[BigObject, bytes]:
    """Random bytes for W4's object, and their description."""
    body = os.urandom(params.big_size)
    rng = random.Random(7)
    slots = max(1, params.big_size // params.rand_size)
    offsets = [rng.randrange(slots) * params.rand_size for _ in range(params.rand_count)]
    samples = tuple((off, body[off : off + params.rand_size]) for off in offsets)
    digest = hashlib.sha256(body).hexdigest()
    return BigObject(BIG_KEY, len(body), digest, samples), body


def seed_big_object(s3: Any, bucket: str, big: BigObject, body: bytes) -> None:
    """Put W4's object into the bucket (boto3's managed upload: parts in parallel)."""
    s3.upload_fileobj(io.BytesIO(body), bucket, big.key, Config=TransferConfig())


def seed_corpus(endpoint: Endpoint, s3: Any, bucket: str, params: Params) -> None:
    """The read-only corpus every system mounts: W8's tree and W9's flat directory."""
    create_bucket(s3, bucket)
    if "find" in params.groups:
        dirs = 100
        per_dir = max(1, params.find_count // dirs)
        keys = [f"{FIND_PREFIX}/d{d:03d}/f{i:05d}" for d in range(dirs) for i in range(per_dir)]
        put_many(endpoint, bucket, keys, b"x")
    if "list" in params.groups:
        put_many(endpoint, bucket, (f"{LIST_PREFIX}/k{i:06d}" for i in range(params.list_count)))


def corpus_counts(params: Params) -> tuple[int, int]:
    """How many files W8's `find` and W9's `ls -f` must see."""
    return 100 * max(1, params.find_count // 100), params.list_count


@dataclass(frozen=True)
class SourceTree:
    """The local directory copied in by W2, and what reading it back must give."""

    path: Path
    names: list[str]
    concat_sha256: str


def make_source_tree(root: Path, params: Params) -> SourceTree:
    path = root / "src"
    path.mkdir()
    names = [f"f{i:04d}.bin" for i in range(params.cp_count)]
    digest = hashlib.sha256()
    for name in names:  # in C-locale glob order, the order `cat dir/*` reads them
        data = os.urandom(params.cp_size)
        (path / name).write_bytes(data)
        digest.update(data)
    return SourceTree(path, names, digest.hexdigest())


@dataclass(frozen=True)
class LocalFile:
    """W5's local file: a path, its size and its SHA-256."""

    path: Path
    size: int
    sha256: str


def make_write_file(root: Path, params: Params) -> LocalFile:
    """A local file of random bytes for W5, written in 8 MiB chunks."""
    path = root / "write-src.bin"
    digest = hashlib.sha256()
    left = params.write_size
    with open(path, "wb") as f:
        while left:
            chunk = os.urandom(min(8 * MIB, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return LocalFile(path, params.write_size, digest.hexdigest())


@dataclass(frozen=True)
class Tarball:
    """W7's archive: a source-tree-like layout of small files, and the sizes it unpacks to."""

    path: Path
    sizes: dict[str, int]  # relative path → size


def make_tarball(root: Path, params: Params) -> Tarball:
    """An uncompressed tar of `untar_files` files in 10 × 5 directories, 100 B – 16 KiB each."""
    rng = random.Random(11)
    path = root / "tree.tar"
    sizes: dict[str, int] = {}
    per_dir = max(1, params.untar_files // 50)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for top in range(10):
            for sub in range(5):
                for i in range(per_dir):
                    name = f"tree/pkg{top:02d}/mod{sub}/file{i:04d}.c"
                    size = int(rng.lognormvariate(8.0, 1.0)) % 16384 + 100
                    info = tarfile.TarInfo(name)
                    info.size = size
                    info.mtime = 1_700_000_000
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(os.urandom(size)))
                    sizes[name] = size
    return Tarball(path, sizes)


def w1_ls(mount: Mount, params: Params) -> float:
    """`ls -l` of the seeded directory; checks that every entry is there."""
    seconds, out = timed(["ls", "-l", str(mount.path / LS_PREFIX)], params.timeout)
    entries = [
        line
        for line in out.decode(errors="replace").splitlines()
        if line and not line.startswith("total ")
    ]
    if len(entries) != params.ls_count:
        raise WorkloadError(f"ls -l listed {len(entries)} entries, expected {params.ls_count}")
    return seconds


def w2_cp(
    system: System,
    mount: Mount,
    s3: Any,
    bucket: str,
    dest: str,
    src: SourceTree,
    params: Params,
) -> tuple[float, float]:
    """`cp -r` into the mount; returns (seconds to close, seconds until durable)."""
    start = time.perf_counter()
    close, _ = timed(["cp", "-r", str(src.path), str(mount.path / dest)], params.timeout)
    sync_quietly(system, mount, params)
    expected = {f"{dest}/{name}": params.cp_size for name in src.names}
    return close, wait_durable(s3, bucket, dest + "/", expected, start, params)


def w3_cat(mount: Mount, dest: str, src: SourceTree, params: Params) -> float:
    """`cat` of every copied file through a fresh mount; checks the bytes."""
    script = 'cat -- "$1"/*'
    seconds, out = timed(["sh", "-c", script, "sh", str(mount.path / dest)], params.timeout)
    expected_len = params.cp_count * params.cp_size
    if len(out) != expected_len:
        raise WorkloadError(f"read {len(out)} bytes, expected {expected_len}")
    if hashlib.sha256(out).hexdigest() != src.concat_sha256:
        raise WorkloadError("the bytes read back differ from the bytes copied in")
    return seconds


def w4_cat(mount: Mount, big: BigObject, params: Params) -> float:
    """`cat` of W4's object to /dev/null; `w4_verify` checks the bytes, untimed."""
    script = 'cat -- "$1" > /dev/null'
    seconds, _ = timed(["sh", "-c", script, "sh", str(mount.path / big.key)], params.timeout)
    return seconds


def w4_verify(mount: Mount, big: BigObject, params: Params) -> None:
    """Check the SHA-256 of W4's object as read through the mount."""
    _, out = timed(["sha256sum", "--", str(mount.path / big.key)], params.timeout)
    digest = out.decode(errors="replace").split(maxsplit=1)[0] if out.strip() else ""
    if digest != big.sha256:
        raise WorkloadError(f"{big.key} read back with SHA-256 {digest[:16]}…, not the one put")


def run_w4(
    system: System,
    tag: str,
    bucket: str,
    big: BigObject,
    workdir: Path,
    params: Params,
    page_cache: PageCache,
    record: Callable[..., None],
) -> None:
    """W4: cold, warm, and remounted reads of the big object, then `ls -l` after a remount.

    The three mounts share one mount point and one cache dir (empty at the first mount). s3fs
    gets `-o use_cache=` here, so that it has a disk cache to be warm from.
    """
    path = workdir / f"{tag}-mnt4"
    cache = workdir / f"{tag}-cache4"
    with system.mounted(bucket, path, cache, disk_cache=True) as mount:
        page_cache.drop()
        record("big_cold", *measured(mount, w4_cat, mount, big, params))
        # The page cache may serve this one.
        record("big_warm", *measured(mount, w4_cat, mount, big, params))
        w4_verify(mount, big, params)
        w1_ls(mount, params)  # untimed: the listing a remount may remember
    with system.mounted(bucket, path, cache, disk_cache=True) as mount:
        page_cache.drop()
        record("big_remount", *measured(mount, w4_cat, mount, big, params))
        w4_verify(mount, big, params)
    with system.mounted(bucket, path, cache, disk_cache=True) as mount:
        page_cache.drop()
        record("ls_remount", *measured(mount, w1_ls, mount, params))


def w6_random_reads(path: Path, big: BigObject) -> float:
    """`pread` of every sample of the big object, in order; checks each block's bytes."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset, want in big.samples:
            got = os.pread(fd, len(want), offset)
            if got != want:
                raise WorkloadError(f"wrong bytes at offset {offset} of {big.key}")
    finally:
        os.close(fd)
    return time.perf_counter() - start


def w5_write(
    system: System,
    mount: Mount,
    s3: Any,
    bucket: str,
    key: str,
    src: LocalFile,
    params: Params,
) -> tuple[float, float]:
    """`cp` of the local file into the mount: (seconds to close, seconds until durable).

    Durable: a HEAD of the key answers with the full size (with `--own-sync`, after the
    system's sync). The content is then checked with a GET, untimed.
    """
    (mount.path / key).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    close, _ = timed(["cp", str(src.path), str(mount.path / key)], params.timeout)
    sync_quietly(system, mount, params)
    deadline = start + params.timeout
    while True:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            if int(head["ContentLength"]) == src.size:
                break
        except Exception:  # not there yet
            pass
        if time.perf_counter() > deadline:
            raise WorkloadError(f"{key} not durable after {params.timeout:.0f} s")
        time.sleep(0.05)
    durable = time.perf_counter() - start
    check_object(s3, bucket, key, src.size, src.sha256)
    return close, durable


def w5_rename(
    system: System, mount: Mount, s3: Any, bucket: str, old: str, new: str, params: Params
) -> float:
    """`mv` inside the mount, until the bucket lists the new key at its size and not the old."""
    size = (mount.path / old).stat().st_size
    start = time.perf_counter()
    timed(["mv", str(mount.path / old), str(mount.path / new)], params.timeout)
    sync_quietly(system, mount, params)
    prefix = os.path.commonprefix([old, new]).rpartition("/")[0]
    prefix = prefix + "/" if prefix else ""
    return wait_durable(s3, bucket, prefix, {new: size}, start, params, absent=(old,))


def w7_untar(
    system: System,
    mount: Mount,
    s3: Any,
    bucket: str,
    dest: str,
    tarball: Tarball,
    params: Params,
) -> tuple[float, float]:
    """`tar -x` into a new directory of the mount: (seconds to close, seconds until durable)."""
    (mount.path / dest).mkdir()
    start = time.perf_counter()
    cmd = ["tar", "-x", "--no-same-owner", "-f", str(tarball.path), "-C", str(mount.path / dest)]
    close, _ = timed(cmd, params.timeout)
    sync_quietly(system, mount, params)
    expected = {f"{dest}/{name}": size for name, size in tarball.sizes.items()}
    return close, wait_durable(s3, bucket, dest + "/", expected, start, params)


def w8_find(mount: Mount, expected: int, params: Params) -> float:
    """`find -type f` over the corpus tree; checks the count."""
    seconds, out = timed(["find", str(mount.path / FIND_PREFIX), "-type", "f"], params.timeout)
    count = len(out.splitlines())
    if count != expected:
        raise WorkloadError(f"find listed {count} files, expected {expected}")
    return seconds


def w9_list(mount: Mount, expected: int, params: Params) -> tuple[float, float]:
    """`ls -f` of the flat corpus directory: (seconds, peak RSS of the mount process in MiB)."""
    pid = daemon_pid(mount)
    if pid is None:
        raise WorkloadError("could not find the mount process")
    # Three times the step limit: a system that asks for each key's headers needs long here.
    seconds, out = timed(["ls", "-f", str(mount.path / LIST_PREFIX)], 3 * params.timeout)
    names = [n for n in out.splitlines() if n not in (b".", b"..")]
    if len(names) != expected:
        raise WorkloadError(f"ls -f listed {len(names)} names, expected {expected}")
    return seconds, peak_rss_mib(pid)


W4_KEYS = ["big_cold", "big_warm", "big_remount", "ls_remount"]
