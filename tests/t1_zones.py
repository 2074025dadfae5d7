"""Zones files (pure): parsing, validation messages, precedence, credentials file checks."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from zonefs.common import zones
from zonefs.common.config import parse_mount_options
from zonefs.common.errors import ConfigError


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_a_zone_table_becomes_a_zone_and_options(tmp_path: Path) -> None:
    f = write(tmp_path / "zones.toml", """
[example]
bucket = "my-bucket"
prefix = "/some/dir/"
endpoint_url = "http://127.0.0.1:9000"
region = "eu-west-1"
mountpoint = "/mnt/example"
cache_size = "2G"
metadata_ttl = 10
kachery_mirror = true
ro = false

[local]
url = "file:///srv/zone"
""")
    found = zones.load_zones([f])
    ex = found["example"]
    assert ex.zone.bucket == "my-bucket" and ex.zone.prefix == "some/dir/"
    assert ex.zone.endpoint_url == "http://127.0.0.1:9000" and ex.zone.region == "eu-west-1"
    assert ex.zone.addressing_style == "path"
    assert ex.mountpoint == "/mnt/example"
    opts = parse_mount_options(ex.options)
    assert opts.cache_size == 2 << 30 and opts.metadata_ttl == 10 and opts.kachery_mirror
    assert not opts.read_only
    assert found["local"].zone.local_dir == "/srv/zone"


def test_probe_answers_in_a_zone_table_are_overrides(tmp_path: Path) -> None:
    f = write(tmp_path / "zones.toml", """
[weed]
bucket = "bk"
dir_markers = "dropped"
backslash_keys = "rewritten"
""")
    opts = parse_mount_options(zones.load_zones([f])["weed"].options)
    assert dict(opts.store_overrides) == {"dir_markers": "dropped",
                                          "backslash_keys": "rewritten"}


@pytest.mark.parametrize(("table", "message"), [
    ('bucket = "bk"\nendpoint = "x"', "unknown key 'endpoint'"),
    ('region = "x"', "needs a bucket"),
    ('url = "s3://b"\nbucket = "bk"', "either url or bucket"),
    ('bucket = "not valid!"', "not a valid bucket name"),
    ('bucket = "bk"\nmountpoint = "rel/dir"', "mountpoint must be an absolute path"),
    ('bucket = "bk"\nregion = 3', "region must be a string"),
    ('bucket = "bk"\ncredentials_file = "/nonexistent/creds"', "does not exist"),
    ('bucket = "bk"\nca_bundle = "/nonexistent/ca.pem"', "no such file"),
    ('bucket = "bk"\ncache_size = [1]', "cache_size must be"),
])
def test_mistakes_get_one_clear_line(tmp_path: Path, table: str, message: str) -> None:
    f = write(tmp_path / "zones.toml", f"[z]\n{table}\n")
    with pytest.raises(ConfigError) as err:
        zones.load_zones([f])
    assert message in str(err.value) and "zone 'z'" in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    f = write(tmp_path / "zones.toml", "[z\nbucket=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        zones.load_zones([f])
    with pytest.raises(ConfigError, match="does not exist"):
        zones.load_zones([str(tmp_path / "missing.toml")])


def test_user_file_wins_over_system_file(tmp_path: Path) -> None:
    system = write(tmp_path / "etc.toml", '[a]\nbucket = "sys"\n[b]\nbucket = "only-sys"\n')
    user = write(tmp_path / "user.toml", '[a]\nbucket = "mine"\n')
    found = zones.load_zones([system, user])
    assert found["a"].zone.bucket == "mine" and found["b"].zone.bucket == "only-sys"


def test_default_files_follow_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zones.FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert zones.zone_files() == ["/etc/zonefs/zones.toml",
                                  str(tmp_path / "zonefs" / "zones.toml")]
    write(tmp_path / "zonefs" / "zones.toml", '[mine]\nbucket = "bk"\n')
    assert zones.find_zone("mine").zone.bucket == "bk"
    with pytest.raises(ConfigError, match="no zone named 'other'.*zones defined: mine"):
        zones.find_zone("other")


def test_credentials_file_unreadable_or_world_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = AKIAEXAMPLE\n"
                     "aws_secret_access_key = very-secret-value\n")
    creds.chmod(0o644)
    f = write(tmp_path / "zones.toml", f'[z]\nbucket = "bk"\ncredentials_file = "{creds}"\n')
    with caplog.at_level(logging.WARNING):
        z = zones.load_zones([f])["z"]
    assert z.zone.credentials_file == str(creds)
    assert "readable by every user" in caplog.text
    assert "very-secret-value" not in caplog.text and "very-secret-value" not in repr(z)
    creds.chmod(0o600)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        zones.load_zones([f])
    assert "readable by every user" not in caplog.text
    if os.geteuid() != 0:  # root reads everything
        creds.chmod(0)
        with pytest.raises(ConfigError, match="not readable"):
            zones.load_zones([f])


def test_credentials_file_may_name_systemd_credentials_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "example").write_text("[default]\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    f = write(tmp_path / "zones.toml",
              '[z]\nbucket = "bk"\ncredentials_file = "${CREDENTIALS_DIRECTORY}/example"\n')
    assert zones.load_zones([f])["z"].zone.credentials_file == str(tmp_path / "example")
