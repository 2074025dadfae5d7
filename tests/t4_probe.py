"""The store probe in a real mount: what `zonefs status` and the daemon's log tell a user, the
cache file next to the journal, `--reprobe`, and `-o` overrides."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import KNOWN_STORES, s3_server
from mounts import Mount, needs_fuse, zonefs_cli

pytestmark = needs_fuse


def test_status_shows_the_store_probe(mount: Mount) -> None:
    caps = mount.status()["capabilities"]
    # The test stores (a versioned bucket, the embedded zone) keep versions; the embedded
    # zone enforces conditional writes, checks checksums and keeps the headers of dir/
    # markers; the S3 servers the tests start answer as KNOWN_STORES says.
    assert (caps["versioning"], caps["delete_markers"]) == ("enabled", "removable")
    expected = ({"conditional_writes": "enforced", "checksums": True, "dir_markers": "kept"}
                if mount.kind == "local" else KNOWN_STORES.get(s3_server()))
    if expected is not None:
        assert {name: caps[name] for name in expected} == expected
    assert (caps["source"], caps["complete"], caps["overridden"]) == ("probed", True, [])
    # Its requests are counted apart from the file system's.
    status = mount.status()
    assert status["requests"]["probe"] > 10 and "put" not in status["requests"]
    assert caps["summary"] in mount.daemon_log()
    human = zonefs_cli("status", str(mount.path)).stdout
    assert "store        (probed): versioning enabled (history under .zonefs/versions" in human

    # The probe's scratch keys are gone from the store, and never showed in the mount.
    assert mount.store.keys(".zonefs/") == []
    assert os.listdir(mount.path) == []
    cache = mount.cache_dir / "capabilities.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text())["capabilities"]["versioning"] == "enabled"

    # The next mount reuses the answers without asking; --reprobe asks again.
    mount.remount()
    again = mount.status()
    assert again["capabilities"]["source"] == "cached"
    assert "probe" not in again["requests"]
    mount.extra_args = ["--reprobe"]
    mount.remount()
    assert mount.status()["capabilities"]["source"] == "probed"


@pytest.mark.mount_options(checksums="off", conditional_writes="not-implemented")
def test_overrides_show_in_status(mount: Mount) -> None:
    caps = mount.status()["capabilities"]
    assert (caps["checksums"], caps["conditional_writes"]) == (False, "not-implemented")
    assert caps["overridden"] == ["checksums", "conditional_writes"]
    assert caps["versioning"] == "enabled"  # probed: not overridden
    assert "set by -o: checksums conditional_writes" in caps["summary"]
    assert "conditional writes not implemented (none sent" in caps["summary"]
