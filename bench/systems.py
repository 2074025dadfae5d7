"""The filesystems under test and how to mount and unmount each of them.

A `System` knows how to mount a bucket of an `Endpoint` at a directory with a given cache
directory (and, for a system whose disk cache is optional, whether to turn it on).
`System.mounted()` is a context manager that always unmounts, however the body ends: first the
system's own way, then `fusermount3 -u` with retries, then a lazy unmount as the last resort;
and it stops the mount process it started (rclone and s3fs run in the foreground under our
control, so that no daemon is left behind).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from endpoints import Endpoint

MOUNT_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 120.0


class MountError(RuntimeError):
    """A mount did not come up, or did not go away."""


def fusermount() -> str:
    """The fusermount binary to use (fuse3's first)."""
    for name in ("fusermount3", "fusermount"):
        path = shutil.which(name)
        if path:
            return path
    raise MountError("neither fusermount3 nor fusermount is installed")


def _unescape_mount_field(text: str) -> str:
    r"""Undo the octal escapes of /proc/self/mounts.

    >>> _unescape_mount_field(r"/tmp/a\040b")
    '/tmp/a b'
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 3 < len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def mount_table() -> set[str]:
    """Mount points currently in this process's mount namespace."""
    points: set[str] = set()
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2:
                points.add(_unescape_mount_field(fields[1]))
    return points


def is_mounted(path: Path) -> bool:
    """True while `path` is in the mount table (even when the mount no longer answers)."""
    return str(path.resolve()) in mount_table()


def wait_mounted(path: Path, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until `path` is a mount that answers stat(); raise MountError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        if os.path.ismount(path):
            return
        if proc is not None and proc.poll() is not None:
            raise MountError(f"mount process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise MountError(f"{path} was not mounted within {timeout:.0f} s")
        time.sleep(0.05)


def log_tail(path: Path, limit: int = 1500) -> str:
    """The end of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


@dataclass
class Mount:
    """One live mount: where it is, and the process serving it if we started one."""

    system: System
    path: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, str] = field(default_factory=dict)


class System:
    """A filesystem under test. Subclasses fill in `binary`, `_start` and maybe `_stop`."""

    name = "?"

    def __init__(self, endpoint: Endpoint, workdir: Path) -> None:
        self.endpoint = endpoint
        self.workdir = workdir

    # --- what subclasses provide -------------------------------------------------------------

    def binary(self) -> str | None:
        """Path of the executable, or None when it is not installed."""
        raise NotImplementedError

    def version(self) -> str:
        """One line naming the version."""
        return "unknown"

    def _start(
        self,
        bucket: str,
        path: Path,
        cache_dir: Path,
        log: Path,
        disk_cache: bool,
        cache_cap_mib: int | None,
    ) -> Mount:
        """Start the mount and return once it answers.

        `disk_cache` asks a system whose disk cache is off by default to keep one in
        `cache_dir`; systems that always cache there ignore it. `cache_cap_mib` caps the
        cache at that many MiB, each system with its own option (None: its default).
        """
        raise NotImplementedError

    def _stop(self, mount: Mount) -> None:
        """The system's own unmount; the generic fallbacks follow if it leaves the mount."""
        _run_quiet([fusermount(), "-u", str(mount.path)], mount.log)

    def sync(self, mount: Mount) -> None:
        """Ask the system to upload everything pending, if it has a way to; default: nothing."""

    def request_counts(self, mount: Mount) -> dict[str, int] | None:
        """Requests the mount has sent to the store so far, by kind; None if it does not say."""
        return None

    # --- shared machinery --------------------------------------------------------------------

    def missing(self) -> str | None:
        """Why this system cannot run here, or None."""
        if self.binary() is None:
            return f"{self.name}: binary not found"
        return None

    @contextlib.contextmanager
    def mounted(
        self,
        bucket: str,
        path: Path,
        cache_dir: Path,
        disk_cache: bool = False,
        cache_cap_mib: int | None = None,
    ) -> Iterator[Mount]:
        """Mount `bucket` at `path` (created empty) with a cache dir; always unmount after.

        `disk_cache=True` turns on the disk cache of a system that has none by default (s3fs);
        `cache_cap_mib` caps the cache (s3fs: turns it on, uncapped; see `S3fs._start`).
        """
        path.mkdir(parents=True, exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"{path.name}.log"
        mount: Mount | None = None
        try:
            mount = self._start(bucket, path, cache_dir, log, disk_cache, cache_cap_mib)
            yield mount
        finally:
            self.unmount(mount if mount is not None else Mount(self, path, log))

    def unmount(self, mount: Mount) -> None:
        """Take the mount down by every means needed; raise MountError if it stays."""
        if is_mounted(mount.path):
            try:
                self._stop(mount)
            except Exception as exc:  # the fallbacks below still run
                _append_log(mount.log, f"own unmount failed: {exc}")
        deadline = time.monotonic() + 15
        while is_mounted(mount.path) and time.monotonic() < deadline:
            _run_quiet([fusermount(), "-u", str(mount.path)], mount.log)
            if is_mounted(mount.path):
                time.sleep(0.5)
        if is_mounted(mount.path):
            _run_quiet([fusermount(), "-u", "-z", str(mount.path)], mount.log)
        if mount.proc is not None:
            _stop_process(mount.proc, UNMOUNT_TIMEOUT)
        if is_mounted(mount.path):
            raise MountError(f"could not unmount {mount.path}")


def _append_log(log: Path, text: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(text.rstrip() + "\n")


def _run_quiet(cmd: list[str], log: Path, timeout: float = UNMOUNT_TIMEOUT) -> int:
    """Run a command with its output appended to `log`; return its exit status."""
    with open(log, "ab") as out:
        try:
            return subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            _append_log(log, f"timed out after {timeout:.0f} s: {' '.join(cmd)}")
            return -1


def _stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for a mount process to exit after its unmount; terminate, then kill, if it won't."""
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text and out.returncode == 0 else "unknown"


class Zonefs(System):
    """zonefs: `zonefs mount` returns once the mount answers; `zonefs umount` drains first."""

    name = "zonefs"

    def __init__(self, endpoint: Endpoint, workdir: Path, executable: str | None,
                 options: str = "") -> None:
        super().__init__(endpoint, workdir)
        self.executable = executable
        self.options = options  # `-o` options beyond the defaults (bench/shared.py's)

    def binary(self) -> str | None:
        if self.executable and os.access(self.executable, os.X_OK):
            return self.executable
        return None

    def version(self) -> str:
        exe = self.binary()
        return _first_line([exe, "--version"]) if exe else "unknown"

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.endpoint.env()}

    def _start(
        self,
        bucket: str,
        path: Path,
        cache_dir: Path,
        log: Path,
        disk_cache: bool,
        cache_cap_mib: int | None,
    ) -> Mount:
        exe = self.binary()
        assert exe is not None
        cmd = [
            exe,
            "mount",
            f"s3://{bucket}",
            str(path),
            "--endpoint-url",
            self.endpoint.url,
            "-o",
            f"cache_dir={cache_dir}",
        ]
        if cache_cap_mib is not None:
            cmd += ["-o", f"cache_size={cache_cap_mib}M"]
        if self.options:
            cmd += ["-o", self.options]
        mount = Mount(self, path, log)
        with open(log, "ab") as out:
            try:
                proc = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    timeout=MOUNT_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                limit = f"{MOUNT_TIMEOUT:.0f} s"
                raise MountError(f"zonefs mount did not return within {limit}") from exc
        if proc.returncode != 0:
            raise MountError(f"zonefs mount exited with {proc.returncode}: {log_tail(log, 400)}")
        wait_mounted(path, MOUNT_TIMEOUT)
        return mount

    def _stop(self, mount: Mount) -> None:
        exe = self.binary()
        assert exe is not None
        _run_quiet([exe, "umount", str(mount.path)], mount.log)

    def sync(self, mount: Mount) -> None:
        exe = self.binary()
        assert exe is not None
        status = _run_quiet([exe, "sync", str(mount.path)], mount.log)
        if status != 0:
            raise MountError(f"zonefs sync exited with {status}: {log_tail(mount.log, 400)}")

    def request_counts(self, mount: Mount) -> dict[str, int] | None:
        """The daemon's request counters, from `zonefs status --json`."""
        exe = self.binary()
        assert exe is not None
        try:
            out = subprocess.run(
                [exe, "status", "--json", str(mount.path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._env(),
                timeout=60,
                check=False,
            )
            if out.returncode != 0:
                return None
            counts = json.loads(out.stdout)["requests"]
            return {str(kind): int(n) for kind, n in counts.items()}
        except (subprocess.TimeoutExpired, ValueError, KeyError, TypeError, AttributeError):
            return None


class Rclone(System):
    """rclone mount with `--vfs-cache-mode writes`, configured through environment variables."""

    name = "rclone"
    remote = "BENCH"
    cache_mode = "writes"

    def binary(self) -> str | None:
        return shutil.which("rclone")

    def version(self) -> str:
        return _first_line(["rclone", "version"])

    def _env(self) -> dict[str, str]:
        prefix = f"RCLONE_CONFIG_{self.remote}_"
        env = dict(os.environ)
        # rclone's AWS SDK applies AWS_CA_BUNDLE even to plain-http endpoints and then fails
        # ("LoadCustomCABundleError ... transport unsupported type"), so hide it on http.
        if self.endpoint.url.startswith("http://"):
            env.pop("AWS_CA_BUNDLE", None)
        return {
            **env,
            prefix + "TYPE": "s3",
            prefix + "PROVIDER": "Other",
            prefix + "ENDPOINT": self.endpoint.url,
            prefix + "ACCESS_KEY_ID": self.endpoint.access_key,
            prefix + "SECRET_ACCESS_KEY": self.endpoint.secret_key,
            prefix + "REGION": self.endpoint.region,
            prefix + "FORCE_PATH_STYLE": "true",
        }

    def _start(
        self,
        bucket: str,
        path: Path,
        cache_dir: Path,
        log: Path,
        disk_cache: bool,
        cache_cap_mib: int | None,
    ) -> Mount:
        exe = self.binary()
        assert exe is not None
        config = self.workdir / "rclone.conf"  # empty: the remote lives in the environment
        config.touch()
        cmd = [
            exe,
            "mount",
            f"{self.remote.lower()}:{bucket}",
            str(path),
            "--config",
            str(config),
            "--vfs-cache-mode",
            self.cache_mode,
            "--cache-dir",
            str(cache_dir),
        ]
        if cache_cap_mib is not None:
            # Checked every --vfs-cache-poll-interval (1 min); files open are never evicted.
            cmd += ["--vfs-cache-max-size", f"{cache_cap_mib}M"]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
        mount = Mount(self, path, log, proc)
        try:
            wait_mounted(path, MOUNT_TIMEOUT, proc)
        except MountError as exc:
            self.unmount(mount)
            raise MountError(f"{self.name}: {exc}: {log_tail(log, 400)}") from exc
        return mount


class RcloneFull(Rclone):
    """rclone mount with `--vfs-cache-mode full`: reads are cached on disk too, in its cache dir."""

    name = "rclone-full"
    cache_mode = "full"


class S3fs(System):
    """s3fs-fuse with its defaults, path-style requests, credentials in a 0600 passwd file."""

    name = "s3fs"

    def binary(self) -> str | None:
        return shutil.which("s3fs")

    def version(self) -> str:
        return _first_line(["s3fs", "--version"])

    def _passwd_file(self) -> Path:
        path = self.workdir / "s3fs.passwd"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.endpoint.access_key}:{self.endpoint.secret_key}\n")
        os.chmod(path, 0o600)
        return path

    def _start(
        self,
        bucket: str,
        path: Path,
        cache_dir: Path,
        log: Path,
        disk_cache: bool,
        cache_cap_mib: int | None,
    ) -> Mount:
        exe = self.binary()
        assert exe is not None
        # s3fs keeps no disk cache by default (use_cache is off), so cache_dir stays unused and
        # each new s3fs process starts cold, unless the workload asks for a disk cache.
        cmd = [
            exe,
            bucket,
            str(path),
            "-f",
            "-o",
            f"url={self.endpoint.url}",
            "-o",
            "use_path_request_style",
            "-o",
            f"endpoint={self.endpoint.region}",
            "-o",
            f"passwd_file={self._passwd_file()}",
        ]
        if disk_cache or cache_cap_mib is not None:
            cmd += ["-o", f"use_cache={cache_dir}"]
        # s3fs has no cap on its cache's size, only a floor on the cache disk's free space
        # (ensure_diskfree), which cannot stand for a cap on a disk that the S3 server and
        # others write to: set to leave `cache_cap_mib` free, s3fs 1.90 refused to mount when
        # the free space moved, or failed the write with EIO when the server's own writes took
        # the free space below it. So with a cap asked, s3fs gets its disk cache, uncapped.
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        mount = Mount(self, path, log, proc)
        try:
            wait_mounted(path, MOUNT_TIMEOUT, proc)
        except MountError as exc:
            self.unmount(mount)
            raise MountError(f"s3fs: {exc}: {log_tail(log, 400)}") from exc
        return mount


def daemon_pid(mount: Mount) -> int | None:
    """PID of the process serving a mount: the one we started, or zonefs' background daemon
    (found by its command line: `... mount ... MOUNTPOINT --foreground`)."""
    if mount.proc is not None:
        return mount.proc.pid
    target = str(mount.path.resolve()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if target in args and b"--foreground" in args and b"mount" in args:
            return int(entry.name)
    return None


SYSTEM_NAMES = ("zonefs", "rclone", "rclone-full", "s3fs")


def make_system(name: str, endpoint: Endpoint, workdir: Path, zonefs_exe: str | None) -> System:
    """The `System` called `name` (one of `SYSTEM_NAMES`)."""
    if name == "zonefs":
        return Zonefs(endpoint, workdir, zonefs_exe)
    if name == "rclone":
        return Rclone(endpoint, workdir)
    if name == "rclone-full":
        return RcloneFull(endpoint, workdir)
    if name == "s3fs":
        return S3fs(endpoint, workdir)
    raise ValueError(f"unknown system {name!r} (known: {', '.join(SYSTEM_NAMES)})")
