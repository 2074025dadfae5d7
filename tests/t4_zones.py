"""Real mounts (t4) of zones named in a zones file: by name, by ZONEFS_ZONE, with the zone's
own options (kachery_mirror = true) and credentials file; `zonefs zones --check`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import on_own_moto
from mounts import Mount, S3Store, fuse_unavailable_reason, zonefs_cli

pytestmark = pytest.mark.skipif(
    fuse_unavailable_reason() is not None, reason=str(fuse_unavailable_reason())
)

SECRET = "zonefs-test-secret-value-4242"


def zones_file(tmp_path: Path, body: str) -> dict[str, str | None]:
    path = tmp_path / "zones.toml"
    path.write_text(body)
    return {"ZONEFS_ZONES_FILE": str(path)}


def test_mount_a_named_zone_with_its_own_options_and_credentials(
    s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    # moto takes any keys: a distinctive secret to look for; another server, its own keys.
    key_id, secret = ("testing", SECRET) if on_own_moto() else (
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    creds = tmp_path / "example.credentials"
    creds.write_text(f"[default]\naws_access_key_id = {key_id}\n"
                     f"aws_secret_access_key = {secret}\n")
    creds.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    env = zones_file(tmp_path, f"""
[example]
bucket = "{bucket}"
prefix = "team"
endpoint_url = "{s3_endpoint}"
credentials_file = "{creds}"
mountpoint = "{mountpoint}"
kachery_mirror = true
writeback_delay = "0.2"
""")
    # Only the credentials file may supply keys.
    env |= {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    m = Mount("s3", "example", mountpoint, tmp_path / "cache", S3Store(s3_client, bucket),
              env=env)
    try:
        m.start()
        body = b"named zone, mirrored\n"
        (mountpoint / "a.txt").write_bytes(body)
        m.sync()
        sha1 = hashlib.sha1(body).hexdigest()
        assert m.store.must_get("team/a.txt").body == body
        mirror = f"team/sha1/{sha1[:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
        assert m.store.must_get(mirror).body == body  # kachery_mirror = true from the zone
        cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        assert secret not in m.daemon_log()
        assert secret.encode() not in Path(f"/proc/{m.pid}/environ").read_bytes()
    finally:
        m.cleanup()


def test_zonefs_zone_env_and_zones_listing(
    s3_endpoint: str, bucket: str, s3_client: Any, tmp_path: Path
) -> None:
    env = zones_file(tmp_path, f"""
[good]
url = "s3://{bucket}"
endpoint_url = "{s3_endpoint}"
mountpoint = "{tmp_path / 'unused'}"

[missing]
bucket = "no-such-bucket-{os.getpid()}"
endpoint_url = "{s3_endpoint}"
""")
    m = Mount("s3", "", tmp_path / "mnt", tmp_path / "cache", S3Store(s3_client, bucket),
              env=env | {"ZONEFS_ZONE": "good"})
    # `ZONEFS_ZONE=good zonefs mount MOUNTPOINT`: the one argument is the mount point.
    m.mount_args = lambda options=None, cache_dir=None: [  # type: ignore[method-assign]
        "mount", str(m.path), "-o", f"cache_dir={cache_dir or m.cache_dir},writeback_delay=0.2"]
    try:
        m.start()
        (m.path / "x.txt").write_bytes(b"x")
        m.sync()
        assert m.store.must_get("x.txt").body == b"x"
    finally:
        m.cleanup()

    listed = zonefs_cli("zones", env=env).stdout
    assert "good" in listed and "missing" in listed and str(tmp_path / "unused") in listed
    checked = zonefs_cli("zones", "--check", env=env, check=False)
    assert checked.returncode == 1
    lines = checked.stdout
    assert "ok: reachable; store probe (probed): versioning enabled" in lines, lines
    # What the probe says of conditional writes (enforced on moto and SeaweedFS; Ceph RGW
    # Pacific refuses every If-Match in a versioned bucket).
    assert "conditional writes enforced" in lines or "If-Match refused even when" in lines
    assert "FAILED" in lines and "does not exist" in lines


def test_unknown_zone_name_is_a_clear_error(tmp_path: Path) -> None:
    env = zones_file(tmp_path, '[only]\nbucket = "bk"\n')
    (tmp_path / "mnt").mkdir()
    proc = zonefs_cli("mount", "nope", str(tmp_path / "mnt"), env=env, check=False)
    assert proc.returncode == 2
    assert "no zone named 'nope'" in proc.stderr and "zones defined: only" in proc.stderr
    proc = zonefs_cli("mount", "only", env=env, check=False)
    assert proc.returncode == 2 and "give a mount point" in proc.stderr
