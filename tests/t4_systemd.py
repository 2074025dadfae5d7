"""Running at boot (t4): the systemd unit, the daemon as the unit starts it (Type=notify,
journald logs, SIGTERM), `mount.zonefs` called the way mount(8) calls it, `make install`,
progress of `zonefs sync`, and a restart over the mount of a daemon that died."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mounts import (
    REPO_ROOT,
    Mount,
    S3Store,
    fuse_unavailable_reason,
    is_mounted,
    subprocess_env,
    wait_for,
    zonefs_cli,
)

UNIT = REPO_ROOT / "systemd" / "zonefs@.service"
needs_fuse = pytest.mark.skipif(fuse_unavailable_reason() is not None,
                                reason=str(fuse_unavailable_reason()))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is missing (Debian package systemd)")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "zonefs@example.service"
    zonefs = Path(sys.executable).parent / "zonefs"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/zonefs", str(zonefs)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "zonefs@" not in proc.stderr, proc.stderr  # no warning about our unit
    text = UNIT.read_text()
    for line in ("Type=notify", "After=network-online.target", "Wants=network-online.target",
                 "Restart=on-failure", "LoadCredential=%i:/etc/zonefs/credentials/%i",
                 "NoNewPrivileges=yes", "DeviceAllow=/dev/fuse rw", "TimeoutStopSec=30min"):
        assert line in text
    assert "SECRET" not in text.upper() and "aws_" not in text  # credentials never here


@needs_fuse
def test_daemon_as_the_unit_starts_it(
    s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    """READY=1 once the mount answers, STATUS= with the backlog, STOPPING=1 on SIGTERM, then a
    drained, clean unmount; log lines carry journald priorities."""
    zones = tmp_path / "zones.toml"
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    zones.write_text(f'[boot]\nurl = "s3://{bucket}"\nendpoint_url = "{s3_endpoint}"\n'
                     f'mountpoint = "{mountpoint}"\nwriteback_delay = 60\n'
                     f'cache_dir = "{tmp_path / "cache"}"\n')
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(30)
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as err:
        info = os.fstat(err.fileno())
        env = subprocess_env({"NOTIFY_SOCKET": str(notify), "ZONEFS_ZONE": "boot",
                              "ZONEFS_ZONES_FILE": str(zones),
                              "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        daemon = subprocess.Popen([sys.executable, "-m", "zonefs", "mount", "--foreground"],
                                  env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    messages: list[str] = []
    try:
        messages.append(sock.recv(4096).decode())
        assert "READY=1" in messages[0]
        assert is_mounted(mountpoint)
        (mountpoint / "queued.txt").write_bytes(b"uploaded by the drain at stop")
        while "waiting for upload" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        assert "STATUS=1 change(s)" in messages[-1]
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
        sock.settimeout(0.5)
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sock.close()
        if is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    stopping = [n for n, m in enumerate(messages) if "STOPPING=1" in m]
    assert stopping and stopping[0] > 0, messages
    assert not is_mounted(mountpoint)
    body = s3_client.get_object(Bucket=bucket, Key="queued.txt")["Body"].read()
    assert body == b"uploaded by the drain at stop"
    lines = stderr_path.read_text().splitlines()
    assert any(line.startswith("<6>zonefs.mount.daemon: mounted") for line in lines), lines
    assert all(line.startswith("<") for line in lines if line), lines


@needs_fuse
def test_mount_helper_called_like_mount8(
    s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    zones = tmp_path / "zones.toml"
    zones.write_text(f'[fstab]\nurl = "s3://{bucket}"\nendpoint_url = "{s3_endpoint}"\n')
    m = Mount("s3", "fstab", tmp_path / "mnt", tmp_path / "cache", S3Store(s3_client, bucket),
              env={"ZONEFS_ZONES_FILE": str(zones)})
    m.path.mkdir()
    env = subprocess_env({"ZONEFS_ZONES_FILE": str(zones)})
    helper = [sys.executable, "-m", "zonefs.cli.mount_helper"]
    # `mount -f` (fake) does nothing; then the real call, with what fstab and mount(8) pass.
    fake = subprocess.run([*helper, "fstab", str(m.path), "-f", "-o", "rw"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert fake.returncode == 0 and not is_mounted(m.path)
    proc = subprocess.run(
        [*helper, "fstab", str(m.path), "-n", "-o",
         f"rw,_netdev,nofail,noatime,cache_dir={m.cache_dir}", "-t", "zonefs"],
        env=env, capture_output=True, text=True, timeout=60)
    try:
        assert proc.returncode == 0, proc.stderr
        assert is_mounted(m.path)
        m.pid = int(m.status()["pid"])
        m.started_pids.append(m.pid)
        (m.path / "f.txt").write_bytes(b"via fstab")
        m.sync()
        assert m.store.must_get("f.txt").body == b"via fstab"
    finally:
        m.cleanup()
    bad = subprocess.run([*helper, "nosuchzone", str(m.path), "-o", "rw"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "no zone named 'nosuchzone'" in bad.stderr


@needs_fuse
@pytest.mark.mount_options(writeback_delay="60")
@pytest.mark.expect_log(
    r"WARNING zonefs.mount.daemon: \S+/mnt: detaching the mount of a zonefs daemon that is gone",
)
def test_sync_shows_progress_and_a_dead_mount_is_replaced(mount: Mount) -> None:
    for n in range(3):
        (mount.path / f"p{n}.bin").write_bytes(os.urandom(100_000))
    proc = zonefs_cli("sync", str(mount.path))  # not a TTY: plain lines
    assert "uploading: 3/3 files" in proc.stderr and "\r" not in proc.stderr
    assert "uploaded" in proc.stderr
    # The daemon dies; a new mount (as systemd's restart does) detaches the dead one.
    assert mount.pid is not None
    os.kill(mount.pid, signal.SIGKILL)
    assert wait_for(lambda: not Path(f"/proc/{mount.pid}").exists()
                    or "Z" in Path(f"/proc/{mount.pid}/stat").read_text().split(") ")[1][:1],
                    10)
    mount.pid = None
    mount.start()
    assert sorted(os.listdir(mount.path)) == ["p0.bin", "p1.bin", "p2.bin"]
    assert "detaching the mount of a zonefs daemon that is gone" in mount.daemon_log()


def test_make_install_stages_commands_unit_and_config(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    proc = subprocess.run(["make", "-s", "install", f"DESTDIR={stage}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(stage / "usr/local/bin/zonefs") == "/opt/zonefs/bin/zonefs"
    assert os.readlink(stage / "sbin/mount.zonefs") == "/opt/zonefs/bin/mount.zonefs"
    unit = (stage / "etc/systemd/system/zonefs@.service").read_text()
    assert "ExecStart=/usr/local/bin/zonefs mount --foreground" in unit
    assert (stage / "etc/zonefs/credentials").stat().st_mode & 0o777 == 0o700
    version = subprocess.run([str(stage / "opt/zonefs/bin/zonefs"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("zonefs ")
    helper = subprocess.run([str(stage / "opt/zonefs/bin/mount.zonefs"), "--help"],
                            capture_output=True, text=True, timeout=60)
    assert helper.returncode == 0 and "mount.zonefs" in helper.stdout
