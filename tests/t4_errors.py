"""Bad input at mount time (t4): one clear line on stderr, a non-zero exit within 10 seconds,
no traceback, nothing left mounted, no daemon left running, and no credential printed or logged.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import on_own_moto
from mounts import (
    LocalStore,
    Mount,
    S3Store,
    is_mounted,
    needs_fuse,
    processes_mentioning,
    wait_for,
    zonefs_cli,
)

if TYPE_CHECKING:
    from zonefs.common.config import ZoneConfig

pytestmark = needs_fuse

#: Credentials for endpoints that do not exist or reject everything: never real ones.
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAZONEFSTESTKEY000",
    "AWS_SECRET_ACCESS_KEY": "zonefs-test-secret-do-not-print",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # loopback only: never ask a metadata service
}
FAILURE_DEADLINE = 10.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def try_mount(
    zone_url: str, mnt: Path, cache: Path, *, endpoint: str | None = None,
    options: str | None = None, env: dict[str, str] | None = None,
) -> tuple[Any, float]:
    """Run `zonefs mount` expecting it to fail; return (completed process, seconds taken)."""
    args = ["mount", zone_url, str(mnt), "-o", f"cache_dir={cache}" + (
        f",{options}" if options else "")]
    if endpoint:
        args += ["--endpoint-url", endpoint]
    started = time.monotonic()
    proc = zonefs_cli(*args, env=env, check=False, timeout=FAILURE_DEADLINE + 20)
    return proc, time.monotonic() - started


def assert_clean_failure(proc: Any, elapsed: float, mnt: Path, *, code: int | None = None,
                         mentions: tuple[str, ...] = ()) -> str:
    """The contract for bad input; returns the one stderr line."""
    stderr = proc.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, f"exit 0 for bad input; stdout={proc.stdout!r}"
    if code is not None:
        assert proc.returncode == code, (proc.returncode, stderr)
    assert elapsed < FAILURE_DEADLINE, f"took {elapsed:.1f} s: {stderr}"
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("zonefs: "), line
    for word in mentions:
        assert word in line, f"{word!r} not in {line!r}"
    assert not is_mounted(mnt), f"{mnt} is mounted after a failed mount"
    # The background daemon must be gone too (allow it a moment to finish exiting).
    assert wait_for(lambda: not processes_mentioning(str(mnt)), 5), processes_mentioning(str(mnt))
    return line


def no_secret_anywhere(secret: str, *texts: str, files: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert secret not in text
    for path in files:
        if path.exists():
            assert secret not in path.read_text(errors="replace"), f"secret in {path}"


# -- the endpoint and the bucket ---------------------------------------------------------------


@pytest.mark.expect_log(
    r"ERROR zonefs: cannot reach http://127\.0\.0\.1:\d+: Connection refused",
)
def test_endpoint_unreachable(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    endpoint = f"http://127.0.0.1:{closed_port()}"
    proc, elapsed = try_mount("s3://some-bucket", mnt, tmp_path / "cache", endpoint=endpoint,
                              env=FAKE_ENV)
    assert_clean_failure(proc, elapsed, mnt, mentions=("127.0.0.1",))
    no_secret_anywhere(FAKE_ENV["AWS_SECRET_ACCESS_KEY"], proc.stderr, proc.stdout,
                       files=(tmp_path / "cache" / "zonefs.log",))


@pytest.mark.expect_log("ERROR zonefs: bucket 'zonefs-no-such-bucket-t4' does not exist")
def test_bucket_missing(s3_endpoint: str, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc, elapsed = try_mount("s3://zonefs-no-such-bucket-t4", mnt, tmp_path / "cache",
                              endpoint=s3_endpoint)
    assert_clean_failure(proc, elapsed, mnt, mentions=("zonefs-no-such-bucket-t4",))


@pytest.mark.expect_log("ERROR zonefs: access denied to bucket 'any-bucket': check the credentials")
def test_wrong_credentials(authenticating_endpoint: str, tmp_path: Path) -> None:
    endpoint = authenticating_endpoint
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc, elapsed = try_mount("s3://any-bucket", mnt, tmp_path / "cache", endpoint=endpoint,
                              env=FAKE_ENV)
    line = assert_clean_failure(proc, elapsed, mnt)
    assert "denied" in line.lower() or "credential" in line.lower(), line
    no_secret_anywhere(FAKE_ENV["AWS_SECRET_ACCESS_KEY"], proc.stderr, proc.stdout,
                       files=(tmp_path / "cache" / "zonefs.log",))


def test_secret_key_is_never_logged_even_with_debug(
    s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    if not on_own_moto():
        pytest.skip("needs an endpoint that accepts any credentials (the tests' own moto)")
    secret = "zonefs-distinctive-secret-4a7c1e"
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    env = {**FAKE_ENV, "AWS_SECRET_ACCESS_KEY": secret}
    proc = zonefs_cli("--debug", "mount", f"s3://{bucket}", str(mnt), "--endpoint-url",
                      s3_endpoint, "-o", f"cache_dir={cache},writeback_delay=0", env=env)
    m = Mount("s3", f"s3://{bucket}", mnt, cache, S3Store(s3_client, bucket))
    try:
        m.pid = int(m.status()["pid"])
        m.started_pids.append(m.pid)
        (mnt / "f.txt").write_bytes(b"some bytes")
        assert (mnt / "f.txt").read_bytes() == b"some bytes"
        os.listdir(mnt)
        m.sync()
        out = m.umount()
    finally:
        m.cleanup()
    assert m.store.must_get("f.txt").body == b"some bytes"
    no_secret_anywhere(secret, proc.stdout, proc.stderr, out, files=(cache / "zonefs.log",))
    assert "DEBUG" in (cache / "zonefs.log").read_text()  # the log really was verbose


# -- the mount point ---------------------------------------------------------------------------


@pytest.mark.expect_log(r"ERROR zonefs: mount point \S+/no-such-dir does not exist")
def test_mount_point_missing(local_zone: ZoneConfig, tmp_path: Path) -> None:
    mnt = tmp_path / "no-such-dir"
    proc, elapsed = try_mount(local_zone.url, mnt, tmp_path / "cache")
    assert_clean_failure(proc, elapsed, mnt, mentions=(str(mnt),))
    assert not mnt.exists()


@pytest.mark.expect_log(r"ERROR zonefs: mount point \S+/mnt is not empty")
def test_mount_point_not_empty(local_zone: ZoneConfig, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "precious.txt").write_bytes(b"do not hide me")
    proc, elapsed = try_mount(local_zone.url, mnt, tmp_path / "cache")
    assert_clean_failure(proc, elapsed, mnt, mentions=("not empty",))
    assert (mnt / "precious.txt").read_bytes() == b"do not hide me"


@pytest.mark.expect_log(r"ERROR zonefs: \S+/mnt is already a mount point")
def test_mount_point_already_mounted(local_zone: ZoneConfig, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    first = Mount("local", local_zone.url, mnt, tmp_path / "cache",
                  LocalStore(local_zone, tmp_path / "scratch"))
    try:
        first.start()
        (mnt / "a.txt").write_bytes(b"first mount")
        proc, elapsed = try_mount(local_zone.url, mnt, tmp_path / "cache2")
        # The first mount must be untouched, so check the rest by hand (it is still mounted).
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode != 0 and elapsed < FAILURE_DEADLINE
        assert len(lines) == 1 and lines[0].startswith("zonefs: "), proc.stderr
        assert "Traceback" not in proc.stderr
        mount_lines = [line for line in Path("/proc/self/mounts").read_text().splitlines()
                       if line.split()[1] == str(mnt)]
        assert len(mount_lines) == 1, mount_lines
        assert (mnt / "a.txt").read_bytes() == b"first mount"
        assert processes_mentioning(str(mnt)) == [first.pid]
        first.umount()
        assert first.store.must_get("a.txt").body == b"first mount"
    finally:
        first.cleanup()


@pytest.mark.expect_log(
    r"ERROR zonefs: no zone at \S+/not-a-zone: the directory is not empty and holds no zone",
)
def test_local_zone_dir_that_is_not_a_zone(tmp_path: Path) -> None:
    zone_dir = tmp_path / "not-a-zone"
    zone_dir.mkdir()
    (zone_dir / "notes.txt").write_bytes(b"someone's files")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc, elapsed = try_mount(f"file://{zone_dir}", mnt, tmp_path / "cache")
    assert_clean_failure(proc, elapsed, mnt, mentions=(str(zone_dir),))
    assert os.listdir(zone_dir) == ["notes.txt"]  # nothing added to it


@pytest.mark.expect_log(r"ERROR zonefs: the cache dir \S+ is in use by another zonefs mount")
def test_cache_dir_in_use_by_another_mount(local_zone: ZoneConfig, tmp_path: Path) -> None:
    first = Mount("local", local_zone.url, tmp_path / "mnt1", tmp_path / "cache",
                  LocalStore(local_zone, tmp_path / "scratch"))
    try:
        first.start()
        mnt2 = tmp_path / "mnt2"
        mnt2.mkdir()
        proc, elapsed = try_mount(local_zone.url, mnt2, tmp_path / "cache")
        assert_clean_failure(proc, elapsed, mnt2, mentions=("cache",))
        assert is_mounted(first.path)
        first.umount()
    finally:
        first.cleanup()


# -- the command line ------------------------------------------------------------------------


@pytest.mark.expect_log(r"ERROR zonefs: cannot serve metrics at 127\.0\.0\.1:\d+: .*")
def test_metrics_port_in_use(local_zone: ZoneConfig, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, elapsed = try_mount(local_zone.url, mnt, tmp_path / "cache",
                                  options=f"metrics=127.0.0.1:{port}")
    assert_clean_failure(proc, elapsed, mnt, code=1, mentions=("metrics", str(port)))


@pytest.mark.parametrize("value", ["9101", "127.0.0.1:", "127.0.0.1:99999", "host:port"])
def test_bad_metrics_address(value: str, local_zone: ZoneConfig, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc, elapsed = try_mount(local_zone.url, mnt, tmp_path / "cache", options=f"metrics={value}")
    assert_clean_failure(proc, elapsed, mnt, code=2, mentions=("metrics=",))


@pytest.mark.parametrize(("option", "mentions"), [
    ("max_memory=100M", "max_memory="), ("change_poll=0.1", "change_poll="),
    ("change_poll=60", "change_poll="), ("changes=maybe", "changes="),
])
def test_bad_sharing_and_memory_options(option: str, mentions: str, local_zone: ZoneConfig,
                                        tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc, elapsed = try_mount(local_zone.url, mnt, tmp_path / "cache", options=option)
    assert_clean_failure(proc, elapsed, mnt, code=2, mentions=(mentions,))


def test_unknown_mount_option(local_zone: ZoneConfig, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc, elapsed = try_mount(local_zone.url, mnt, tmp_path / "cache", options="frobnicate=1")
    assert_clean_failure(proc, elapsed, mnt, code=2, mentions=("frobnicate",))


@pytest.mark.parametrize("url", ["ftp://host/dir", "s3://", "s3://b/a//c", "file://host/dir",
                                 "not-a-url"])
def test_bad_zone_url(url: str, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc, elapsed = try_mount(url, mnt, tmp_path / "cache")
    assert_clean_failure(proc, elapsed, mnt, code=2)


@pytest.mark.expect_log("ERROR zonefs: AWS profile 'zonefs-no-such-profile' not found")
def test_missing_profile(s3_endpoint: str, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = ["mount", "s3://some-bucket", str(mnt), "--endpoint-url", s3_endpoint,
            "--profile", "zonefs-no-such-profile", "-o", f"cache_dir={tmp_path / 'cache'}"]
    env: dict[str, str | None] = {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
    }
    started = time.monotonic()
    proc = zonefs_cli(*args, env=env, check=False, timeout=30)
    assert_clean_failure(proc, time.monotonic() - started, mnt,
                         mentions=("zonefs-no-such-profile",))


@pytest.mark.parametrize("command", ["umount", "sync", "status"])
def test_commands_on_a_directory_that_is_not_mounted(command: str, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = zonefs_cli(command, str(tmp_path), check=False, timeout=30)
    assert_clean_failure(proc, time.monotonic() - started, tmp_path, mentions=(str(tmp_path),))
