#!/usr/bin/env python3
"""Benchmark zonefs against rclone mount and s3fs-fuse on one loopback S3 endpoint.

Usage (from the repository root; `make bench` does this with the project's venv):

    .venv/bin/python bench/run.py [--systems zonefs,rclone,rclone-full,s3fs] [--runs 3]
                                  [--endpoint http://127.0.0.1:PORT]

rclone runs twice: `rclone` with `--vfs-cache-mode writes`, `rclone-full` with
`--vfs-cache-mode full`.

Without `--endpoint` a moto server is started on 127.0.0.1 at a free port. Each system gets its
own versioned bucket; each run mounts it at a temporary directory and measures:

- W1 `ls -l` of 1,000 objects of 1 KiB (seeded with boto3 under `ls1000/`): cold (fresh mount,
  fresh cache dir), then warm (the same command again on the same mount);
- W2 `cp -r` of a local directory of 300 files of 4 KiB into the mount: the time until `cp`
  returns (close), and the time until the bucket lists all 300 objects at their full size
  (durable; for zonefs after `zonefs sync`);
- W3 `cat` of those 300 files after an unmount and a new mount with a fresh cache dir (cold);
- W4 the disk cache, with one 32 MiB object of random bytes (put with boto3 under `w4/`):
  W4a `cat` of it on a fresh mount with an empty cache dir (cold), W4b the same `cat` again on
  that mount (warm), W4c the same `cat` after an unmount and a new mount with the same cache
  dir, W4d `ls -l` of the 1,000 objects after another such remount. s3fs gets
  `-o use_cache=DIR` in W4 only (it keeps no disk cache by default). As root, the page cache
  is dropped before W4a, W4c and W4d (not before W4b: a warm read may use it).

Every command is checked (entry count, byte count and content hash, object sizes), so a fast
wrong answer counts as an error. A system that fails gets "error" in its cells and the others
still run. The table (median of the runs, and zonefs' ratio to the best peer) is printed and
written to bench/results/latest.md, with the raw samples in latest.json and the mount logs in
bench/results/logs/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from endpoints import Endpoint, external, moto_server
from systems import SYSTEM_NAMES, Mount, System, make_system, mount_table

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ALL_SYSTEMS = SYSTEM_NAMES

LS_PREFIX = "ls1000"
BIG_KEY = "w4/blob.bin"
MIB = 1024 * 1024
# moto reads the whole object for every ranged GET, so bigger objects mostly time moto.
MOTO_BIG_MIB_LIMIT = 32
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass(frozen=True)
class Workload:
    """One row of the table."""

    key: str
    title: str


@dataclass(frozen=True)
class Params:
    """Sizes and limits of one benchmark invocation."""

    ls_count: int = 1000
    ls_size: int = 1024
    cp_count: int = 300
    cp_size: int = 4096
    big_size: int = 32 * MIB
    timeout: float = 300.0

    def workloads(self) -> list[Workload]:
        """The rows of the table, in order."""
        n, m, kib = self.ls_count, self.cp_count, self.cp_size // 1024
        big = f"{self.big_size / MIB:g} MiB"
        return [
            Workload("ls_cold", f"W1 `ls -l` of {n:,} objects, cold"),
            Workload("ls_warm", f"W1 `ls -l` of {n:,} objects, warm"),
            Workload("cp_close", f"W2 `cp -r` of {m} × {kib} KiB, close"),
            Workload("cp_durable", f"W2 `cp -r` of {m} × {kib} KiB, durable"),
            Workload("cat_cold", f"W3 `cat` of the {m} files, cold (new mount)"),
            Workload("big_cold", f"W4a `cat` of a {big} object, cold (new mount, empty cache)"),
            Workload("big_warm", f"W4b `cat` of the {big} object again, warm (same mount)"),
            Workload("big_remount", f"W4c `cat` of the {big} object, remount, same cache dir"),
            Workload("ls_remount", f"W4d `ls -l` of {n:,} objects, remount, same cache dir"),
        ]


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
    """The object W4 reads: where it is and what reading it must give."""

    key: str
    size: int
    sha256: str


def make_big_object(params: Params) -> tuple[BigObject, bytes]:
    """Random bytes for W4's object, and their description."""
    body = os.urandom(params.big_size)
    return BigObject(BIG_KEY, len(body), hashlib.sha256(body).hexdigest()), body


def seed_big_object(s3: Any, bucket: str, big: BigObject, body: bytes) -> None:
    """Put W4's object into the bucket with one PUT."""
    s3.put_object(Bucket=bucket, Key=big.key, Body=body)


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
    """Drops the kernel's page cache between W4 steps, when the harness may (as root)."""

    def __init__(self, sync_dir: Path) -> None:
        self.sync_dir = sync_dir
        self.enabled = False
        self.note = "not dropped (not running as root): W4a, W4c and W4d may read from memory"

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
                "W4a, W4c and W4d may read from memory"
            )
            return
        self.note = (
            "dropped before W4a, W4c and W4d (`sync -f` of the work dir, then "
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
    try:
        system.sync(mount)
    except Exception as exc:  # durability is still measured by polling the bucket
        log(f"    {system.name}: sync failed ({exc}); polling the bucket anyway")
    expected = {f"{dest}/{name}": params.cp_size for name in src.names}
    deadline = start + params.timeout
    found: dict[str, int] = {}
    while True:
        found = list_sizes(s3, bucket, dest + "/")
        if all(found.get(key) == size for key, size in expected.items()):
            return close, time.perf_counter() - start
        if time.perf_counter() > deadline:
            good = sum(found.get(key) == size for key, size in expected.items())
            raise WorkloadError(
                f"only {good} of {len(expected)} objects durable after {params.timeout:.0f} s"
            )
        time.sleep(0.05)


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
    record: Callable[[str, float], None],
) -> None:
    """W4: cold, warm, and remounted reads of the big object, then `ls -l` after a remount.

    The three mounts share one mount point and one cache dir (empty at the first mount). s3fs
    gets `-o use_cache=` here, so that it has a disk cache to be warm from.
    """
    path = workdir / f"{tag}-mnt4"
    cache = workdir / f"{tag}-cache4"
    with system.mounted(bucket, path, cache, disk_cache=True) as mount:
        page_cache.drop()
        record("big_cold", w4_cat(mount, big, params))
        record("big_warm", w4_cat(mount, big, params))  # the page cache may serve this one
        w4_verify(mount, big, params)
        w1_ls(mount, params)  # untimed: the listing a remount may remember
    with system.mounted(bucket, path, cache, disk_cache=True) as mount:
        page_cache.drop()
        record("big_remount", w4_cat(mount, big, params))
        w4_verify(mount, big, params)
    with system.mounted(bucket, path, cache, disk_cache=True) as mount:
        page_cache.drop()
        record("ls_remount", w1_ls(mount, params))


W4_KEYS = ["big_cold", "big_warm", "big_remount", "ls_remount"]


@contextlib.contextmanager
def recorded(
    results: Results, system: str, keys: list[str], summary: list[str]
) -> Iterator[Callable[[str, float], None]]:
    """Record values as they come; on an exception, the keys not yet recorded become errors."""
    done: set[str] = set()

    def record(key: str, value: float) -> None:
        results.add(key, system, value)
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


def run_system(
    system: System,
    run: int,
    bucket: str,
    s3: Any,
    src: SourceTree,
    big: BigObject,
    workdir: Path,
    params: Params,
    page_cache: PageCache,
    results: Results,
) -> None:
    """One run of every workload on one system."""
    tag = f"{system.name}-r{run}"
    dest = f"cp-run{run}"
    summary: list[str] = []
    durable = False
    with (
        recorded(
            results, system.name, ["ls_cold", "ls_warm", "cp_close", "cp_durable"], summary
        ) as record,
        system.mounted(bucket, workdir / f"{tag}-mnt1", workdir / f"{tag}-cache1") as mount,
    ):
        record("ls_cold", w1_ls(mount, params))
        record("ls_warm", w1_ls(mount, params))
        close, durable_s = w2_cp(system, mount, s3, bucket, dest, src, params)
        record("cp_close", close)
        record("cp_durable", durable_s)
        durable = True
    with recorded(results, system.name, ["cat_cold"], summary) as record:
        if not durable:
            raise WorkloadError("nothing to read: W2 failed")
        with system.mounted(bucket, workdir / f"{tag}-mnt2", workdir / f"{tag}-cache2") as mount:
            record("cat_cold", w3_cat(mount, dest, src, params))
    with recorded(results, system.name, W4_KEYS, summary) as record:
        run_w4(system, tag, bucket, big, workdir, params, page_cache, record)
    log(f"  {system.name}: " + ", ".join(summary))


# --- report ------------------------------------------------------------------------------------


def ratio_cell(results: Results, key: str, systems: list[str]) -> str:
    """zonefs' median over the best (lowest) median of every other system, or "n/a"."""
    if "zonefs" not in systems:
        return "n/a"
    mine = results.median(key, "zonefs")
    peers = [m for s in systems if s != "zonefs" if (m := results.median(key, s)) is not None]
    if mine is None or not peers or min(peers) <= 0:
        return "n/a"
    return f"{mine / min(peers):.2f}"


def render(results: Results, params: Params, systems: list[str], header: list[str]) -> str:
    lines = ["# zonefs benchmark", "", *[f"- {h}" for h in header], ""]
    cols = ["workload", *[f"{s} (s)" for s in systems], "zonefs / best peer"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("| " + " | ".join(["---"] + ["---:"] * (len(cols) - 1)) + " |")
    for w in params.workloads():
        row = [
            w.title,
            *[results.cell(w.key, s) for s in systems],
            ratio_cell(results, w.key, systems),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if results.errors:
        lines += ["", "Errors (first message per cell):", ""]
        for w in params.workloads():
            for system, messages in results.errors.get(w.key, {}).items():
                lines.append(f"- {system}, {w.key}: {messages[0]}")
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    uname = platform.uname()
    return (
        f"machine: {uname.system} {uname.release} {uname.machine}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}"
    )


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
        "--endpoint",
        metavar="URL",
        help="use this running S3 endpoint (loopback only; credentials from "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) instead of starting moto",
    )
    parser.add_argument(
        "--zonefs",
        metavar="PATH",
        default=str(REPO / ".venv" / "bin" / "zonefs"),
        help="the zonefs executable (default: the project's .venv)",
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
        default=MOTO_BIG_MIB_LIMIT,
        help=f"size of the object W4 reads, in MiB (default and limit on moto: "
        f"{MOTO_BIG_MIB_LIMIT})",
    )
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
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.big_mib < 1:
        parser.error("--big-mib must be at least 1")
    if args.big_mib > MOTO_BIG_MIB_LIMIT and not args.endpoint:
        parser.error(
            f"--big-mib above {MOTO_BIG_MIB_LIMIT} needs --endpoint: moto's ranged GETs "
            "cost time in proportion to the whole object"
        )
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if reason := preflight():
        log(f"cannot benchmark: {reason}")
        return 1
    params = Params(
        ls_count=args.ls_count,
        cp_count=args.files,
        big_size=args.big_mib * MIB,
        timeout=args.timeout,
    )
    # SIGTERM unwinds like Ctrl-C, so that every `finally` unmounts what it mounted.
    signal.signal(signal.SIGTERM, on_sigterm)

    workdir = Path(tempfile.mkdtemp(prefix="zonefs-bench-"))
    results = Results()
    try:
        endpoint_cm = external(args.endpoint) if args.endpoint else moto_server(workdir)
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

    endpoint_desc = (
        f"moto {package_version('moto')} server on loopback"
        if endpoint.kind == "moto"
        else f"external endpoint {endpoint.url}"
    )
    log(f"endpoint: {endpoint_desc} ({endpoint.url})")
    s3 = s3_client(endpoint)
    run_id = uuid.uuid4().hex[:8]
    buckets = {name: f"bench-{name}-{run_id}" for name in names}
    big, big_body = make_big_object(params)
    for bucket in buckets.values():
        create_bucket(s3, bucket)
        seed_ls_objects(s3, bucket, params)
        seed_big_object(s3, bucket, big, big_body)
    del big_body
    log(
        f"seeded {params.ls_count} objects and one of {params.big_size / MIB:g} MiB "
        f"in {len(buckets)} versioned buckets"
    )
    src = make_source_tree(workdir, params)
    page_cache = PageCache(workdir)
    page_cache.probe()
    log(f"page cache: {page_cache.note}")

    try:
        for run in range(1, args.runs + 1):
            log(f"run {run}/{args.runs}")
            shift = (run - 1) % len(systems)  # rotate the order between runs
            for system in systems[shift:] + systems[:shift]:
                run_system(
                    system,
                    run,
                    buckets[system.name],
                    s3,
                    src,
                    big,
                    workdir,
                    params,
                    page_cache,
                    results,
                )
    finally:
        if args.endpoint and not args.keep:
            for bucket in buckets.values():
                delete_bucket(s3, bucket)

    header = [
        f"date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        machine_line(),
        f"endpoint: {endpoint_desc}",
        "versions: "
        + "; ".join(f"{s.name}: {s.version()}" for s in systems)
        + f"; boto3 {package_version('boto3')}",
        f"runs: {args.runs} (cells are medians, in seconds; ratio < 1 means zonefs is faster "
        "than the fastest other system)",
        f"page cache: {page_cache.note}",
    ]
    if "s3fs" in names:
        header.append("W4: s3fs with `-o use_cache=DIR` (it has no disk cache by default)")
    if skipped:
        header.append("skipped: " + "; ".join(skipped))
    report = render(results, params, names, header)
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
