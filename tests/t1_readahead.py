"""The mount's read-ahead window (`mount/readahead.py`): which device is ours, and what is
written to sysfs, against a mountinfo and a sysfs tree made for the test."""

from __future__ import annotations

from pathlib import Path

from zonefs.mount.readahead import mount_device, set_read_ahead

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
41 22 0:40 / /mnt/my\\040zone rw,nosuid,nodev,relatime shared:30 - fuse.zonefs zonefs rw,user_id=0
42 22 0:41 / /mnt/other rw,nosuid,nodev,relatime shared:31 - fuse.zonefs zonefs rw,user_id=0
43 22 0:42 / /mnt/plain rw,relatime shared:32 - tmpfs tmpfs rw
44 41 0:45 / /mnt/my\\040zone rw,nosuid,nodev,relatime shared:33 - fuse.zonefs zonefs rw,user_id=0
"""


def tree(tmp_path: Path) -> tuple[str, Path]:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    sysfs = tmp_path / "bdi"
    for dev in ("0:40", "0:41", "0:45"):
        (sysfs / dev).mkdir(parents=True)
        (sysfs / dev / "read_ahead_kb").write_text("128\n")
    return str(info), sysfs


def test_the_device_is_the_last_fuse_mount_at_the_path(tmp_path: Path) -> None:
    info, _ = tree(tmp_path)
    assert mount_device("/mnt/my zone", info) == "0:45"  # escaped space; the one on top
    assert mount_device("/mnt/other", info) == "0:41"
    assert mount_device("/mnt/plain", info) is None  # not a FUSE mount
    assert mount_device("/mnt/none", info) is None
    assert mount_device("/mnt/other", str(tmp_path / "missing")) is None


def test_the_window_is_written_in_kib_and_0_leaves_it(tmp_path: Path) -> None:
    info, sysfs = tree(tmp_path)
    assert set_read_ahead("/mnt/other", 1 << 20, sysfs=str(sysfs), mountinfo=info)
    assert (sysfs / "0:41" / "read_ahead_kb").read_text() == "1024"
    assert not set_read_ahead("/mnt/my zone", 0, sysfs=str(sysfs), mountinfo=info)
    assert (sysfs / "0:45" / "read_ahead_kb").read_text() == "128\n"


def test_a_window_that_cannot_be_set_is_no_error(tmp_path: Path) -> None:
    info, sysfs = tree(tmp_path)
    (sysfs / "0:41" / "read_ahead_kb").unlink()
    (sysfs / "0:41" / "read_ahead_kb").mkdir()  # unwritable as a file, like sysfs for a user
    assert not set_read_ahead("/mnt/other", 1 << 20, sysfs=str(sysfs), mountinfo=info)
    assert not set_read_ahead("/mnt/none", 1 << 20, sysfs=str(sysfs), mountinfo=info)
