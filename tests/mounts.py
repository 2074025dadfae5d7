"""Helpers for the real-mount layer (t4): run `zonefs` as a subprocess and look at the store.

A `Mount` drives one mount point through the command line exactly as a user would
(`zonefs mount`, `sync`, `status`, `umount`) and gives tests a `Store`: direct access to the
objects behind the mount (boto3 for S3, the zone's own `LocalRemote` for `file://` zones), so a
test can check what any other S3 tool would see.

Safety rules, because a FUSE mount that hangs takes the test process with it:
- every subprocess has a timeout;
- a watchdog kills the mount's own daemon (by the PID it reported) if a test runs far too long,
  which makes the kernel fail the blocked calls instead of waiting forever;
- cleanup always unmounts (`zonefs umount`, then `fusermount3 -u -z`) and kills only the daemon
  this `Mount` started.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from zonefs.common.errors import NotFound
from zonefs.remote.local import LocalRemote

if TYPE_CHECKING:
    from zonefs.common.config import ZoneConfig

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Options every test mount gets: uploads follow closes quickly, remote changes show within 1 s.
#: Where the mounts write their change records (zonefs.core.changelog.PREFIX), in the zone.
CHANGE_LOG = ".zonefs/changes/"


def _in_change_log(key: str) -> bool:
    """Whether the bucket key `key` is a change record of a zone at the bucket's root or at
    a prefix of it."""
    return f"/{CHANGE_LOG}" in f"/{key}"

DEFAULT_OPTIONS = {"writeback_delay": "0.2", "metadata_ttl": "1"}
METADATA_TTL = 1.0

#: A command of the zonefs CLI should answer well within this (drains of small files included).
CLI_TIMEOUT = 60.0
#: After this long the watchdog kills the daemon of a mount that is still up (a hung test).
WATCHDOG_SECONDS = 150.0
#: The log file of every daemon a `Mount` started during the current test, for the log check
#: (tests/logcheck.py; the conftest empties it before each test).
DAEMON_LOGS: list[Path] = []


# -- FUSE availability ------------------------------------------------------------------------


def fuse_unavailable_reason() -> str | None:
    """Why real mounts cannot run here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE support here; CI installs fuse3)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse is not accessible to this user ({exc.strerror})"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is missing (install the fuse3 package)"
    return None


_FUSE_REASON = fuse_unavailable_reason()

#: Put on every test that needs a real mount (t4 modules set it as `pytestmark`).
needs_fuse = pytest.mark.skipif(_FUSE_REASON is not None, reason=_FUSE_REASON or "")


# -- running commands -------------------------------------------------------------------------


def subprocess_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment for `python -m zonefs`: ours (AWS_* from the fixtures) with `extra`
    applied (None removes a variable), plus the repo on the import path, so the CLI and its
    daemon import this checkout whatever the cwd."""
    env = dict(os.environ)
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


#: Set to DEBUG (or another level) to change the log level of every daemon the tests mount.
LOG_LEVEL_ENV = "ZONEFS_TEST_LOG_LEVEL"


def zonefs_cli(
    *args: str,
    timeout: float = CLI_TIMEOUT,
    env: dict[str, str | None] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `zonefs ARGS…` with the current interpreter; raise with its output on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "zonefs", *args],
        capture_output=True, text=True, timeout=timeout, env=subprocess_env(env),
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"zonefs {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def run(
    *argv: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    check: bool = True,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run an ordinary tool (cp, tar, git …) the way a user would; raise with its stderr."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv], cwd=cwd, capture_output=True, timeout=timeout,
        input=input, stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(os.fspath, argv))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\n"
            f"stderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def sh(script: str, cwd: str | os.PathLike[str] | None = None,
       timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    """Run a shell snippet (for redirections such as `>>`)."""
    return run("/bin/sh", "-ec", script, cwd=cwd, timeout=timeout)


def mounted_paths() -> set[str]:
    """Mount points in the mount table (read without touching any mount)."""
    out = set()
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1:
                out.add(fields[1].replace("\\040", " ").replace("\\011", "\t")
                        .replace("\\012", "\n").replace("\\134", "\\"))
    return out


def is_mounted(path: str | os.PathLike[str]) -> bool:
    return os.path.abspath(path) in mounted_paths()


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (used to find a daemon left behind)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(entry))
    return pids


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- the store behind a mount -----------------------------------------------------------------


@dataclass
class StoredObject:
    """One object as another S3 tool sees it."""

    key: str
    body: bytes
    metadata: dict[str, str]
    content_type: str | None
    last_modified: float  # seconds since the epoch


class Store:
    """Direct access to a zone's objects, bypassing zonefs' mount entirely."""

    def get(self, key: str) -> StoredObject | None:
        """The object at `key`, or None when there is none (or only a delete marker)."""
        raise NotImplementedError

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None,
            content_type: str | None = None) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def versions(self, key: str) -> int:
        """How many versions (not delete markers) `key` has: each upload makes one."""
        raise NotImplementedError

    def put_many(self, items: dict[str, bytes]) -> None:
        for key, body in items.items():
            self.put(key, body)

    def purge(self) -> None:
        """Remove every object and version fast (tests that made thousands call this)."""

    def keys(self, prefix: str = "") -> list[str]:
        """Every live key under `prefix`, sorted (no delimiter), but the mounts' change log
        (`.zonefs/changes/`, which S3 tools are told to ignore)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def must_get(self, key: str) -> StoredObject:
        obj = self.get(key)
        assert obj is not None, f"no object {key!r} in the store; keys: {self.keys()}"
        return obj


class S3Store(Store):
    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def get(self, key: str) -> StoredObject | None:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return StoredObject(key, resp["Body"].read(), dict(resp.get("Metadata", {})),
                            resp.get("ContentType"), resp["LastModified"].timestamp())

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None,
            content_type: str | None = None) -> None:
        extra: dict[str, Any] = {"Metadata": metadata or {}}
        if content_type:
            extra["ContentType"] = content_type
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def versions(self, key: str) -> int:
        count = 0
        for page in self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=key
        ):
            count += sum(1 for v in page.get("Versions", []) if v["Key"] == key)
        return count

    def put_many(self, items: dict[str, bytes]) -> None:
        # boto3 clients are thread-safe; a few threads hide the per-request latency.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: self.put(*kv), items.items()))

    def purge(self) -> None:
        batch: list[dict[str, str]] = []
        for page in self.client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket
        ):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                batch.append({"Key": v["Key"], "VersionId": v["VersionId"]})
        for start in range(0, len(batch), 1000):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": batch[start:start + 1000]})

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            out += [obj["Key"] for obj in page.get("Contents", [])]
        return sorted(k for k in out if not _in_change_log(k))


class LocalStore(Store):
    """The embedded zone, read with its own blocking methods (the daemon has it open too; the
    zone's SQLite database in WAL mode allows that)."""

    def __init__(self, zone: ZoneConfig, scratch: Path) -> None:
        self.remote = LocalRemote(zone)
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> StoredObject | None:
        try:
            head = self.remote._head(key)
        except NotFound:
            return None
        fd, tmp = tempfile.mkstemp(dir=self.scratch)
        os.close(fd)
        try:
            info = self.remote._download(key, tmp, head.version_id)
            body = Path(tmp).read_bytes()
        finally:
            os.unlink(tmp)
        return StoredObject(key, body, dict(info.metadata or {}), info.content_type, info.mtime)

    def put(self, key: str, body: bytes, metadata: dict[str, str] | None = None,
            content_type: str | None = None) -> None:
        self.remote._put_bytes(key, body, metadata or {}, content_type)

    def delete(self, key: str) -> None:
        self.remote._delete(key)

    def versions(self, key: str) -> int:
        page = self.remote._list_versions(key, None, None, 1000)
        return sum(1 for v in page.versions if v.key == key and not v.is_delete_marker)

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        token: str | None = None
        while True:
            page = self.remote._list(prefix, None, token, 1000)
            out += [obj.key for obj in page.objects]
            token = page.next_token
            if not token:
                return sorted(k for k in out if not _in_change_log(k))

    def close(self) -> None:
        self.remote.close()


# -- a mount ----------------------------------------------------------------------------------


@dataclass
class Mount:
    """One zonefs mount driven through the CLI. Use `start()`, then the file system at `path`."""

    kind: str  # "s3" or "local"
    zone_url: str
    path: Path
    cache_dir: Path
    store: Store
    endpoint_url: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    #: Changes to the environment of `zonefs mount` (None removes a variable).
    env: dict[str, str | None] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    pid: int | None = None
    started_pids: list[int] = field(default_factory=list)
    _watchdog: threading.Timer | None = None

    @property
    def log_path(self) -> Path:
        return self.cache_dir / "zonefs.log"

    def mount_args(self, options: dict[str, str] | None = None,
                   cache_dir: Path | None = None) -> list[str]:
        opts = {**DEFAULT_OPTIONS, **self.options, **(options or {})}
        spec = ",".join([f"cache_dir={cache_dir or self.cache_dir}"]
                        + [k if v == "" else f"{k}={v}" for k, v in opts.items()])
        args = ["mount", self.zone_url, str(self.path), "-o", spec, *self.extra_args]
        if self.endpoint_url:
            args += ["--endpoint-url", self.endpoint_url]
        # The daemon's log (cache_dir/zonefs.log) at DEBUG names every request and errno.
        level = os.environ.get(LOG_LEVEL_ENV)
        return ["--log-level", level, *args] if level else args

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        DAEMON_LOGS.append(self.log_path)
        started = time.monotonic()
        zonefs_cli(*self.mount_args(), env=self.env)
        assert time.monotonic() - started < 30
        assert is_mounted(self.path), f"{self.path} is not in /proc/mounts after zonefs mount"
        self.pid = int(self.status()["pid"])
        self.started_pids.append(self.pid)
        self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        self._disarm_watchdog()
        pid = self.pid
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, lambda: _kill_daemon(pid))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _disarm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def status(self) -> dict[str, Any]:
        return dict(json.loads(zonefs_cli("status", str(self.path), "--json").stdout))

    def sync(self, timeout: float = CLI_TIMEOUT) -> str:
        """`zonefs sync`: returns its stdout once everything pending is in the bucket.

        A sync that does not return within `timeout` fails the test with a clear message (the
        daemon's last log lines say why) instead of hanging it.
        """
        try:
            return zonefs_cli("sync", str(self.path), timeout=timeout).stdout
        except subprocess.TimeoutExpired:
            tail = "\n".join(self.daemon_log().splitlines()[-3:])
            raise AssertionError(
                f"zonefs sync did not return within {timeout:.0f} s; daemon log ends:\n{tail}"
            ) from None

    def umount(self) -> str:
        """`zonefs umount`: drain, unmount, and wait for the daemon to exit."""
        out = zonefs_cli("umount", str(self.path)).stdout
        assert not is_mounted(self.path), f"{self.path} still mounted after zonefs umount"
        self._wait_daemon_exit()
        self._disarm_watchdog()
        return out

    def remount(self, *, cache_dir: Path | None = None,
                options: dict[str, str] | None = None) -> None:
        """Unmount (draining) and mount again, optionally with another cache dir or options."""
        self.umount()
        if cache_dir is not None:
            self.cache_dir = cache_dir
        if options is not None:
            self.options = {**self.options, **options}
        self.start()

    def _wait_daemon_exit(self, timeout: float = 10.0) -> None:
        pid = self.pid
        if pid is None:
            return
        if not wait_for(lambda: not alive(pid), timeout):
            _kill_daemon(pid)
        self.pid = None

    def cleanup(self, *, drain: bool = True) -> None:
        """Always leaves the mount point unmounted and our daemons gone.

        `drain=False` (after a failed test) skips `zonefs umount`, whose drain may be exactly
        what hangs: the daemon is killed and the mount detached lazily instead.
        """
        self._disarm_watchdog()
        if not drain and self.pid is not None:
            _kill_daemon(self.pid)
        if drain and is_mounted(self.path):
            with contextlib.suppress(Exception):
                zonefs_cli("umount", str(self.path), timeout=20, check=False)
        if is_mounted(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False,
                           capture_output=True, timeout=10)
        for pid in self.started_pids:
            if not wait_for(lambda p=pid: not alive(p), 5):
                _kill_daemon(pid)
        self.store.close()

    def daemon_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _kill_daemon(pid: int | None) -> None:
    """SIGKILL a daemon we started, after checking the PID still belongs to a zonefs process."""
    if pid is None:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"zonefs" not in f.read():
                return
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.ENOENT):
            raise


def kill_and_detach(mount: Mount) -> None:
    """kill -9 of our daemon, then what an admin does: `zonefs umount` of the dead mount."""
    pid = mount.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid), 10)
    out = zonefs_cli("umount", str(mount.path))
    assert "its daemon was not running" in out.stdout, out.stdout
    assert not is_mounted(mount.path)
    mount.pid = None


@contextlib.contextmanager
def second_mount(mount: Mount, tmp_path: Path, name: str = "2") -> Iterator[Mount]:
    """Another mount of `mount`'s zone, with its own mount point and cache dir (another
    machine's, as far as zonefs can tell)."""
    other = Mount(mount.kind, mount.zone_url, tmp_path / f"mnt-{name}",
                  tmp_path / f"cache-{name}", mount.store, endpoint_url=mount.endpoint_url,
                  options=dict(mount.options))
    try:
        other.start()
        yield other
    finally:
        other.cleanup()
