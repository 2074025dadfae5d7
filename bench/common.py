"""What the benchmark's steps share: the rows and sizes, running and timing a command, the
page cache, the S3 client and the bucket checks, and the per-step daemon meter.

Every step checks its answer and raises `WorkloadError` on a wrong one, so that a fast wrong
answer counts as an error, not a result.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
from botocore.config import Config

from meter import Meter, Usage
from systems import Mount, System, daemon_pid

if TYPE_CHECKING:
    from endpoints import Endpoint

MIB = 1024 * 1024
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass(frozen=True)
class Workload:
    """One row of the table: a key, a title, its unit, and the group that measures it."""

    key: str
    title: str
    group: str
    unit: str = "s"


GROUPS = (
    "ls", "cp", "big", "write", "rand", "untar", "find", "list",
    "par-read", "par-cp", "git", "huge",
)


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
    par_readers: int = 4  # W10's readers and objects (each of big_size), W11's `cp -r`s
    git_files: int = 4000
    # W12 waits this long between the warm `git status` and the timed one: past zonefs'
    # default metadata_ttl (5 s), so that its attributes have expired.
    git_ttl_wait: float = 6.0
    huge_size: int = 1024 * MIB
    huge_cache_mib: int = 512  # W13's cache cap, smaller than the file
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
        huge = f"{self.huge_size / MIB:g} MiB"
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
            Workload(
                "par_read",
                f"W10 {self.par_readers} `cat`s of {self.par_readers} different {big} objects at "
                "once, cold",
                "par-read",
            ),
            Workload(
                "par_cp_close",
                f"W11 {self.par_readers} `cp -r` of {m} × {kib} KiB at once, close",
                "par-cp",
            ),
            Workload(
                "par_cp_durable",
                f"W11 {self.par_readers} `cp -r` of {m} × {kib} KiB at once, durable",
                "par-cp",
            ),
            Workload(
                "git_status",
                f"W12 `git status` of a {self.git_files:,}-file checkout, after "
                f"{self.git_ttl_wait:g} s idle",
                "git",
            ),
            Workload(
                "git_requests",
                "W12 requests zonefs sent during that `git status`",
                "git",
                "requests",
            ),
            Workload(
                "huge_write",
                f"W13a write of {huge} (`cp`), cache cap {self.huge_cache_mib} MiB, durable",
                "huge",
            ),
            Workload(
                "huge_read",
                f"W13b `cat` of a {huge} object, cache cap {self.huge_cache_mib} MiB, cold",
                "huge",
            ),
        ]
        return [w for w in rows if w.group in self.groups]


class WorkloadError(RuntimeError):
    """A benchmark step failed or gave a wrong answer."""


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


#: Where reports go (bench/results/).
RESULTS = Path(__file__).resolve().parent / "results"


def publish(report: str, name: str) -> None:
    """Print a markdown report and keep it as bench/results/`name`."""
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(report)


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


def command_env() -> dict[str, str]:
    """Environment of the timed commands: C locale, so output and glob order are stable."""
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


def timed(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[float, bytes]:
    """Run `cmd`, return (seconds, stdout); raise WorkloadError on failure or timeout.

    `env` adds to `command_env()`.
    """
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env={**command_env(), **(env or {})},
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WorkloadError(f"`{cmd[0]}` timed out after {timeout:.0f} s") from exc
    seconds = time.perf_counter() - start
    check_exit(cmd, proc.returncode, proc.stderr)
    return seconds, proc.stdout


def check_exit(cmd: list[str], status: int, stderr: bytes) -> None:
    """Raise WorkloadError naming the command and its first error lines if it failed."""
    if status != 0:
        err = stderr.decode(errors="replace").strip().splitlines()
        detail = "; ".join(err[:3]) if err else "no message"
        raise WorkloadError(f"`{' '.join(cmd[:2])} …` exited {status}: {detail}")


def timed_together(cmds: list[list[str]], timeout: float) -> tuple[float, list[bytes]]:
    """Start every command at once; return (seconds until the last exits, their stdouts).

    Raises WorkloadError if any fails or they are not all done within `timeout` (then the
    ones still running are killed).
    """
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=command_env(),
        )
        for cmd in cmds
    ]
    outputs: list[tuple[bytes, bytes]] = []
    try:
        for proc in procs:
            left = max(0.1, start + timeout - time.perf_counter())
            outputs.append(proc.communicate(timeout=left))
    except subprocess.TimeoutExpired as exc:
        what = f"`{cmds[0][0]}` ×{len(cmds)}"
        raise WorkloadError(f"{what} timed out after {timeout:.0f} s") from exc
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.perf_counter() - start
    for cmd, proc, (_, err) in zip(cmds, procs, outputs, strict=True):
        check_exit(cmd, proc.returncode, err)
    return seconds, [out for out, _ in outputs]


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
            "dropped before W4a, W4c, W4d, W6, W8, W9, W10 and W13b (`sync -f` of the work "
            f"dir, then `echo 3 > {DROP_CACHES}`); kept for W4b"
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


T = TypeVar("T")


def measured(mount: Mount, fn: Callable[..., T], *args: Any) -> tuple[T, Usage | None]:
    """`fn(*args)`, and the CPU seconds and peak RSS of the process serving `mount` meanwhile."""
    meter = Meter(daemon_pid(mount))
    meter.start()
    value = fn(*args)
    return value, meter.lap()


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


class BufferSink(CountingSink):
    """A CountingSink that keeps the bytes, in a buffer of the object's size, to be checked
    after the timed download."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._buffer = bytearray(size)

    def write(self, data: Any) -> int:
        end = self._pos + len(data)
        if end > len(self._buffer):
            raise OSError(f"{end} bytes written, more than the {len(self._buffer)} expected")
        self._buffer[self._pos : end] = data
        return super().write(data)

    def sha256(self) -> str:
        return hashlib.sha256(self._buffer).hexdigest()
