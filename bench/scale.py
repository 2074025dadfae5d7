"""The rows W10–W13: readers and writers at once, `git status` in a checkout, and a file larger
than the mount's cache.

- W10: `par_readers` (4) `cat`s of as many different objects of `big_size` at once, on a fresh
  mount with an empty cache dir, page cache dropped; each object's SHA-256 is then checked
  through the mount, untimed. boto3: as many `download_fileobj` at once, in threads.
- W11: `par_readers` `cp -r` of W2's local tree at once into as many new directories: until
  every `cp` returns, and until the bucket lists all the files; every object is then read back
  with boto3 and compared, untimed.
- W12: a git checkout of `git_files` files is copied into the mount (untimed, until it is all
  in the bucket), the mount is remounted with the same cache dir, `git status` runs once to warm
  (untimed), and after `git_ttl_wait` seconds idle `git status` is timed; both must report a
  clean tree. For a system that counts its requests (zonefs), those the timed one sent.
- W13: with the mount's cache capped below the file's size (`huge_cache_mib`), a `cp` of a local
  file of `huge_size` into a fresh mount until a HEAD shows it (then its SHA-256 is checked in
  the bucket), and a `cat` of an object of `huge_size` on another fresh mount, cold (then its
  SHA-256 is checked through the mount). boto3: `upload_file` and `download_fileobj`.

Each step raises WorkloadError on a wrong answer, as in workloads.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from boto3.s3.transfer import TransferConfig

from common import (
    MIB,
    BufferSink,
    PageCache,
    Params,
    WorkloadError,
    check_object,
    log,
    measured,
    sync_quietly,
    timed,
    timed_together,
    wait_durable,
)
from workloads import LocalFile, SourceTree, w5_write

if TYPE_CHECKING:
    from systems import Mount, System

PAR_PREFIX = "par"
HUGE_KEY = "huge/blob.bin"
GIT = "/usr/bin/git"
# git reads no configuration but the repository's, and trusts a checkout whatever its owner.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_AUTHOR_DATE": "1700000000 +0000",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_DATE": "1700000000 +0000",
}
CLEAN = b"nothing to commit, working tree clean"

SCALE_GROUPS = frozenset({"par-read", "par-cp", "git", "huge"})


@dataclass(frozen=True)
class Blob:
    """An object the seeding puts in every bucket, and what reading it must give."""

    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class GitCheckout:
    """W12's local checkout: its directory and the size of each file (`.git`'s included)."""

    path: Path
    sizes: dict[str, int]  # path relative to the checkout → size


@dataclass(frozen=True)
class ScaleInputs:
    """What W10–W13 read, copy and compare with (None for a group not selected)."""

    par_objects: tuple[Blob, ...] = ()
    git: GitCheckout | None = None
    huge_src: LocalFile | None = None  # the local file W13a writes, seeded as HUGE_KEY for W13b
    huge_object: Blob | None = None


# --- inputs and seeding ------------------------------------------------------------------------


def make_random_file(path: Path, size: int) -> LocalFile:
    """A local file of `size` random bytes, written in 8 MiB chunks."""
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as f:
        while left:
            chunk = os.urandom(min(8 * MIB, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return LocalFile(path, size, digest.hexdigest())


def git(repo: Path, *args: str) -> bytes:
    """Run a git command in `repo`; its stdout."""
    _, out = timed([GIT, "-C", str(repo), *args], 600.0, env=GIT_ENV)
    return out


def make_git_checkout(root: Path, params: Params) -> GitCheckout:
    """A committed checkout of `git_files` small files (fixed seed) in 20 × 10 directories.

    The objects are packed (`git repack -a -d`, then `git prune-packed`) so that `.git` adds a
    few dozen files, not one per object; the branch stays a file under `.git/refs/heads`, so that
    no directory git needs is empty (an empty directory does not survive a remount on every
    system).
    """
    path = root / "git-src"
    rng = random.Random(12)
    leaves = 200
    for i in range(params.git_files):
        leaf = i % leaves
        file = path / f"pkg{leaf // 10:02d}" / f"mod{leaf % 10}" / f"file{i:05d}.py"
        file.parent.mkdir(parents=True, exist_ok=True)
        size = int(rng.lognormvariate(7.0, 1.0)) % 8192 + 50
        file.write_bytes(rng.randbytes(size))
    git(path, "init", "-q", "--template=", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "the checkout W12 runs `git status` in")
    git(path, "repack", "-a", "-d", "-q")
    git(path, "prune-packed", "-q")
    if CLEAN not in git(path, "status"):
        raise WorkloadError("the local git checkout is not clean")
    sizes: dict[str, int] = {}
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = Path(dirpath) / name
            sizes[full.relative_to(path).as_posix()] = full.stat().st_size
    return GitCheckout(path, sizes)


def make_scale_inputs(workdir: Path, params: Params) -> ScaleInputs:
    """The local inputs of the selected groups among W10–W13 (the objects are seeded apart)."""
    groups = set(params.groups)
    checkout = make_git_checkout(workdir, params) if "git" in groups else None
    huge_src = huge_object = None
    if "huge" in groups:
        huge_src = make_random_file(workdir / "huge-src.bin", params.huge_size)
        huge_object = Blob(HUGE_KEY, huge_src.size, huge_src.sha256)
    return ScaleInputs(git=checkout, huge_src=huge_src, huge_object=huge_object)


def seed_scale_objects(
    s3: Any, buckets: list[str], inputs: ScaleInputs, params: Params
) -> ScaleInputs:
    """Put W10's objects and W13b's into every bucket (boto3's managed uploads); returns the
    inputs with W10's objects described."""
    groups = set(params.groups)
    blobs: list[Blob] = []
    if "par-read" in groups:
        for i in range(params.par_readers):
            body = os.urandom(params.big_size)
            blob = Blob(f"{PAR_PREFIX}/obj{i}.bin", len(body), hashlib.sha256(body).hexdigest())
            for bucket in buckets:
                s3.upload_fileobj(io.BytesIO(body), bucket, blob.key, Config=TransferConfig())
            blobs.append(blob)
            del body
    if inputs.huge_src is not None and inputs.huge_object is not None:
        for bucket in buckets:
            s3.upload_file(str(inputs.huge_src.path), bucket, HUGE_KEY, Config=TransferConfig())
    return dataclasses.replace(inputs, par_objects=tuple(blobs))


# --- the steps ---------------------------------------------------------------------------------


def verify_through_mount(mount: Mount, blobs: list[Blob], params: Params) -> None:
    """Check the SHA-256 of each object as read through the mount (untimed), all at once."""
    cmds = [["sha256sum", "--", str(mount.path / b.key)] for b in blobs]
    _, outs = timed_together(cmds, params.timeout)
    for blob, out in zip(blobs, outs, strict=True):
        digest = out.decode(errors="replace").split(maxsplit=1)[0] if out.strip() else ""
        if digest != blob.sha256:
            raise WorkloadError(f"{blob.key} read back with SHA-256 {digest[:16]}…, not as put")


def cat_together(mount: Mount, blobs: list[Blob], params: Params) -> float:
    """`cat` of each object to /dev/null, all at once; seconds until the last is done."""
    script = 'cat -- "$1" > /dev/null'
    cmds = [["sh", "-c", script, "sh", str(mount.path / b.key)] for b in blobs]
    seconds, _ = timed_together(cmds, params.timeout)
    return seconds


def run_par_read(
    system: System,
    tag: str,
    bucket: str,
    inputs: ScaleInputs,
    workdir: Path,
    params: Params,
    page_cache: PageCache,
    record: Callable[..., None],
) -> None:
    """W10: the objects read at once on a fresh mount with an empty cache dir."""
    blobs = list(inputs.par_objects)
    with system.mounted(bucket, workdir / f"{tag}-mnt10", workdir / f"{tag}-cache10") as mount:
        page_cache.drop()
        record("par_read", *measured(mount, cat_together, mount, blobs, params))
        verify_through_mount(mount, blobs, params)


def w11_par_cp(
    system: System,
    mount: Mount,
    s3: Any,
    bucket: str,
    dest: str,
    src: SourceTree,
    params: Params,
) -> tuple[float, float]:
    """`cp -r` of the tree into `par_readers` directories at once: (seconds until every `cp`
    returns, seconds until the bucket lists every file at its size)."""
    (mount.path / dest).mkdir()
    dirs = [f"{dest}/d{i}" for i in range(params.par_readers)]
    start = time.perf_counter()
    close, _ = timed_together(
        [["cp", "-r", str(src.path), str(mount.path / d)] for d in dirs], params.timeout
    )
    sync_quietly(system, mount, params)
    expected = {f"{d}/{name}": params.cp_size for d in dirs for name in src.names}
    return close, wait_durable(s3, bucket, dest + "/", expected, start, params)


def check_objects(s3: Any, bucket: str, expected: dict[str, bytes]) -> None:
    """GET every key (16 at a time) and compare its bytes."""

    def get(key: str) -> bool:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read() == expected[key]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        wrong = [k for k, ok in zip(expected, pool.map(get, expected), strict=True) if not ok]
    if wrong:
        raise WorkloadError(f"{len(wrong)} objects differ from the files copied, e.g. {wrong[0]}")


def run_par_cp(
    system: System,
    tag: str,
    run: int,
    bucket: str,
    s3: Any,
    src: SourceTree,
    workdir: Path,
    params: Params,
    record: Callable[..., None],
) -> None:
    """W11 on a fresh mount; the objects are then compared with the local files, untimed."""
    dest = f"pcp-run{run}"
    with system.mounted(bucket, workdir / f"{tag}-mnt11", workdir / f"{tag}-cache11") as mount:
        (close, durable), usage = measured(
            mount, w11_par_cp, system, mount, s3, bucket, dest, src, params
        )
        record("par_cp_close", close)
        record("par_cp_durable", durable, usage)
    local = {name: (src.path / name).read_bytes() for name in src.names}
    check_objects(
        s3,
        bucket,
        {f"{dest}/d{i}/{n}": data for i in range(params.par_readers) for n, data in local.items()},
    )


def git_status(repo: Path, params: Params) -> float:
    """`git status` in the checkout; it must report a clean tree."""
    seconds, out = timed([GIT, "-C", str(repo), "status"], params.timeout, env=GIT_ENV)
    if CLEAN not in out:
        first = out.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise WorkloadError(f"git status did not report a clean tree: {first[0]}")
    return seconds


def run_git(
    system: System,
    tag: str,
    run: int,
    bucket: str,
    s3: Any,
    checkout: GitCheckout,
    workdir: Path,
    params: Params,
    record: Callable[..., None],
) -> None:
    """W12: copy the checkout in and wait until it is in the bucket, remount (same cache dir),
    warm with one `git status`, wait `git_ttl_wait` s, time `git status`."""
    dest = f"git-run{run}"
    path, cache = workdir / f"{tag}-mnt12", workdir / f"{tag}-cache12"
    # A system that is slow to copy 4,000 files gets three times the step's limit for it.
    slow = dataclasses.replace(params, timeout=3 * params.timeout)
    with system.mounted(bucket, path, cache) as mount:
        start = time.perf_counter()
        timed(["cp", "-r", str(checkout.path), str(mount.path / dest)], slow.timeout)
        expected = {f"{dest}/{rel}": size for rel, size in checkout.sizes.items()}
        wait_durable(s3, bucket, dest + "/", expected, start, slow)
    with system.mounted(bucket, path, cache) as mount:
        repo = mount.path / dest
        git_status(repo, slow)  # untimed: reads what the remount does not know yet
        time.sleep(params.git_ttl_wait)
        before = system.request_counts(mount)
        record("git_status", *measured(mount, git_status, repo, params))
        after = system.request_counts(mount)
        if before is not None and after is not None:
            sent = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
            record("git_requests", float(sum(sent.values())))
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(sent.items())) or "none"
            log(f"    {system.name}: the timed `git status` sent {kinds}")


def run_huge_write(
    system: System,
    tag: str,
    run: int,
    bucket: str,
    s3: Any,
    inputs: ScaleInputs,
    workdir: Path,
    params: Params,
    record: Callable[..., None],
) -> None:
    """W13a: the write until durable, on a fresh mount whose cache is capped at
    `huge_cache_mib`."""
    assert inputs.huge_src is not None
    with system.mounted(
        bucket,
        workdir / f"{tag}-mnt13",
        workdir / f"{tag}-cache13",
        cache_cap_mib=params.huge_cache_mib,
    ) as mount:
        key = f"huge/run{run}.bin"
        (_, durable), usage = measured(
            mount, w5_write, system, mount, s3, bucket, key, inputs.huge_src, params
        )
        record("huge_write", durable, usage)


def run_huge_read(
    system: System,
    tag: str,
    bucket: str,
    inputs: ScaleInputs,
    workdir: Path,
    params: Params,
    page_cache: PageCache,
    record: Callable[..., None],
) -> None:
    """W13b: the cold read, on a fresh mount whose empty cache is capped at `huge_cache_mib`."""
    assert inputs.huge_object is not None
    with system.mounted(
        bucket,
        workdir / f"{tag}-mnt14",
        workdir / f"{tag}-cache14",
        cache_cap_mib=params.huge_cache_mib,
    ) as mount:
        page_cache.drop()
        blobs = [inputs.huge_object]
        record("huge_read", *measured(mount, cat_together, mount, blobs, params))
        verify_through_mount(mount, blobs, params)


# --- boto3 -------------------------------------------------------------------------------------


def download_together(s3: Any, bucket: str, blobs: list[Blob]) -> float:
    """boto3's managed downloads of the objects, one thread each, into memory; checks the
    bytes after the clock stops."""
    sinks = [BufferSink(b.size) for b in blobs]

    def fetch(i: int) -> None:
        s3.download_fileobj(bucket, blobs[i].key, sinks[i], Config=TransferConfig())

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(blobs)) as pool:
        list(pool.map(fetch, range(len(blobs))))
    seconds = time.perf_counter() - start
    for blob, sink in zip(blobs, sinks, strict=True):
        if sink.count != blob.size or sink.sha256() != blob.sha256:
            raise WorkloadError(f"boto3: {blob.key} read {sink.count} bytes, not the ones put")
    return seconds


def run_boto3_scale(
    run: int,
    s3: Any,
    bucket: str,
    inputs: ScaleInputs,
    params: Params,
    record: Callable[..., None],
    group: str,
) -> None:
    """Direct boto3 for W10 (`par-read`) or a row of W13 (`huge-write`, `huge-read`); W11 and
    W12 are about a file system."""
    if group == "par-read":
        record("par_read", download_together(s3, bucket, list(inputs.par_objects)))
    elif group == "huge-write":
        assert inputs.huge_src is not None
        key = f"huge/run{run}.bin"
        start = time.perf_counter()
        s3.upload_file(str(inputs.huge_src.path), bucket, key, Config=TransferConfig())
        record("huge_write", time.perf_counter() - start)
        check_object(s3, bucket, key, inputs.huge_src.size, inputs.huge_src.sha256)
    elif group == "huge-read":
        assert inputs.huge_object is not None
        record("huge_read", download_together(s3, bucket, [inputs.huge_object]))


def scale_keys(groups: set[str]) -> dict[str, list[str]]:
    """The steps of W10–W13 in the selected groups, each with the rows it records (W13's two
    rows are two steps, so that a failed write leaves the read to run)."""
    steps = {  # step → (its group, its rows)
        "par-read": ("par-read", ["par_read"]),
        "par-cp": ("par-cp", ["par_cp_close", "par_cp_durable"]),
        "git": ("git", ["git_status"]),
        "huge-write": ("huge", ["huge_write"]),
        "huge-read": ("huge", ["huge_read"]),
    }
    return {step: keys for step, (group, keys) in steps.items() if group in groups}
