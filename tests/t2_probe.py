"""The store probe (zonefs.remote.probe): what it finds on moto and on the embedded local zone,
what it answers for stores that behave worse, that it leaves nothing behind and never hangs a
mount, its cache and overrides, and the checksums uploads send when it found them verified.

Stores other than moto and the local zone are played by LocalRemote subclasses that answer
the way those stores do (zone-buckets.md §3.2); boto3 itself is never mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.exceptions import ClientError
from conftest import KNOWN_STORES, s3_server
from vfs_harness import Env, Store, drain, write_file

from zonefs.common.config import MountOptions, ZoneConfig, parse_mount_options
from zonefs.common.errors import (
    ChecksumMismatch,
    ConfigError,
    NameTooLong,
    NotFound,
    PreconditionFailed,
    RemoteError,
    StoreUnsupported,
)
from zonefs.remote import LocalRemote, ObjectInfo, Remote, open_remote
from zonefs.remote.probe import (
    CACHE_FILE,
    PROBE_PREFIX,
    Capabilities,
    load_or_probe,
    probe,
)
from zonefs.remote.s3 import translate_error

SUMMARY_START = "store probe ("


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bucket_keys_under(client: Any, bucket: str, prefix: str) -> list[str]:
    """Every version and delete marker under `prefix`, as ListObjectVersions shows them."""
    out = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
        out += [v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    return out


async def local_leftovers(remote: Remote) -> list[str]:
    page = await remote.list_versions(PROBE_PREFIX, None)
    return [v.key for v in page.versions]


# -- what the real stores answer ---------------------------------------------------------------


def assert_known_store(caps: Capabilities) -> None:
    """The probe's write answers are those of the session's server, where it is known."""
    expected = KNOWN_STORES.get(s3_server())
    if expected is not None:
        assert {name: getattr(caps, name) for name in expected} == expected
    caps.validate()
    if s3_server() == "moto":
        assert any("wrong SHA-256 was accepted" in n for n in caps.notes), caps.notes


async def test_probe_of_a_versioned_bucket(s3_zone: ZoneConfig, s3_client: Any,
                                           bucket: str) -> None:
    remote = open_remote(s3_zone)
    caps = await probe(remote)
    assert caps.versioning == "enabled" and caps.keeps_versions
    assert caps.delete_markers == "removable"
    assert_known_store(caps)
    assert (caps.source, caps.complete) == ("probed", True)
    # Every version and delete marker it made is gone, by version id.
    assert bucket_keys_under(s3_client, bucket, ".zonefs/") == []
    line = caps.summary()
    assert line.startswith(SUMMARY_START) and "\n" not in line
    assert "versioning enabled (history under .zonefs/versions" in line
    if caps.conditional_writes == "enforced":
        assert "conditional writes enforced" in line
    assert ("checksums verified by the store" in line) == caps.checksums
    assert ("checksums not verified by the store (zonefs verifies sha256 itself)"
            in line) == (not caps.checksums)


async def test_probe_of_an_unversioned_bucket_in_a_prefix(
    s3_endpoint: str, s3_client: Any, request: pytest.FixtureRequest
) -> None:
    name = f"zonefs-probe-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=name)
    request.addfinalizer(lambda: _remove_bucket(s3_client, name))
    s3_client.put_object(Bucket=name, Key="elsewhere/keep", Body=b"not the zone's")
    remote = open_remote(ZoneConfig.parse(f"s3://{name}/the/zone", endpoint_url=s3_endpoint))
    caps = await probe(remote)
    assert (caps.versioning, caps.delete_markers) == ("unversioned", "none")
    assert not caps.keeps_versions
    assert_known_store(caps)
    assert "versioning off (no history; deletes are permanent)" in caps.summary()
    # The probe wrote inside the zone prefix only, and removed all of it.
    assert bucket_keys_under(s3_client, name, "") == ["elsewhere/keep"]


def _remove_bucket(client: Any, name: str) -> None:
    for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
    client.delete_bucket(Bucket=name)


async def test_local_zone(local_zone: ZoneConfig) -> None:
    remote = open_remote(local_zone)
    caps = await probe(remote)
    assert caps == Capabilities(versioning="enabled", conditional_writes="enforced",
                                checksums=True, dir_markers="kept", delete_markers="removable",
                                source="probed")
    assert await local_leftovers(remote) == []
    assert "checksums verified by the store" in caps.summary()


async def test_local_zone_suspended(local_zone: ZoneConfig) -> None:
    remote = LocalRemote(local_zone)
    remote.set_versioning("suspended")
    caps = await probe(remote)
    # A DELETE replaces the null version with a null marker: removing it brings nothing back.
    assert (caps.versioning, caps.delete_markers) == ("suspended", "permanent")
    assert caps.keeps_versions
    assert await local_leftovers(remote) == []


# -- stores that behave worse, played by the local zone ----------------------------------------


class IgnoresConditions(LocalRemote):
    """Accepts If-None-Match and If-Match and writes anyway (mountx#19, chimera#471)."""

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                   content_type: str | None, **kw: Any) -> ObjectInfo:
        kw.pop("if_match", None)
        kw.pop("if_none_match", None)
        return super()._put_bytes(key, data, metadata, content_type, **kw)


class RejectsConditions(LocalRemote):
    """Answers NotImplemented to conditional headers (JASMIN, icechunk#743)."""

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                   content_type: str | None, **kw: Any) -> ObjectInfo:
        if kw.get("if_match") or kw.get("if_none_match"):
            raise StoreUnsupported(f"{key}: NotImplemented")
        return super()._put_bytes(key, data, metadata, content_type, **kw)


class Always412(LocalRemote):
    """Refuses every If-Match, even with the right ETag (Ceph RGW Pacific, versioned)."""

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                   content_type: str | None, **kw: Any) -> ObjectInfo:
        if kw.get("if_match"):
            raise PreconditionFailed(f"{key}: 412")
        return super()._put_bytes(key, data, metadata, content_type, **kw)


class NoChecksumsDropsMarkerMetadata(LocalRemote):
    """Stores any checksum unchecked (moto) and drops the headers of `dir/` keys (SeaweedFS)."""

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                   content_type: str | None, **kw: Any) -> ObjectInfo:
        kw.pop("checksum_sha256", None)
        return super()._put_bytes(key, data, {} if key.endswith("/") else metadata,
                                  content_type, **kw)


@pytest.mark.parametrize(("cls", "answer"), [
    (IgnoresConditions, "ignored"),
    (RejectsConditions, "not-implemented"),
    (Always412, "always-412"),
])
async def test_conditional_write_answers(local_zone: ZoneConfig, cls: type[LocalRemote],
                                         answer: str) -> None:
    remote = cls(local_zone)
    caps = await probe(remote)
    assert caps.conditional_writes == answer
    assert caps.complete  # an answer found, not a guess
    assert caps.versioning == "enabled" and caps.checksums is True
    assert await local_leftovers(remote) == []


def test_conditional_summaries_say_what_zonefs_does() -> None:
    """Where the store does not enforce conditions, zonefs sends none and compares the ETag
    just before each PUT: the summary says so (not "last writer wins")."""
    for answer in ("ignored", "not-implemented", "always-412"):
        line = Capabilities(conditional_writes=answer).summary()
        assert "none sent: the ETag is compared just before each PUT" in line, answer
        assert "last" not in line, answer
    assert "If-Match refused even when it holds" in Capabilities(
        conditional_writes="always-412").summary()


class RewritesBackslashes(LocalRemote):
    """Stores `a\\b` as `a/b` (SeaweedFS 4.48): a HEAD of either name finds it."""

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                   content_type: str | None, **kw: Any) -> ObjectInfo:
        return super()._put_bytes(key.replace("\\", "/"), data, metadata, content_type, **kw)

    def _head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        return super()._head(key.replace("\\", "/"), version_id)


async def test_backslash_keys(local_zone: ZoneConfig, tmp_path: Path) -> None:
    kept = await probe(open_remote(local_zone))
    assert kept.backslash_keys == "kept" and "backslashes kept in keys" in kept.summary()
    remote = RewritesBackslashes(local_zone)
    caps = await load_or_probe(remote, str(tmp_path), reprobe=True)
    assert caps.backslash_keys == "rewritten" and caps.complete
    assert any("backslash_keys: a key written as 'back\\\\slash' was listed as 'back/slash'"
               in n for n in caps.notes), caps.notes
    assert "keys with a backslash rewritten by the store (such names refused)" in caps.summary()
    assert await local_leftovers(remote) == []
    # Cached, and overridable like every answer.
    assert json.loads((tmp_path / CACHE_FILE).read_text())["capabilities"][
        "backslash_keys"] == "rewritten"
    again = await load_or_probe(remote, str(tmp_path), overrides={"backslash_keys": "kept"})
    assert (again.source, again.backslash_keys, again.overridden) == (
        "cached", "kept", ("backslash_keys",))
    assert dict(parse_mount_options(["backslash_keys=rewritten"]).store_overrides) == {
        "backslash_keys": "rewritten"}
    with pytest.raises(ConfigError, match=r"backslash_keys= takes kept\|rewritten"):
        parse_mount_options(["backslash_keys=maybe"])


class TakesShortNamesOnly(LocalRemote):
    """Answers a name over 246 bytes with a 500, as a versioned SeaweedFS bucket does (its
    `.versions` directory would pass the filer's 255-byte limit)."""

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str],
                   content_type: str | None, **kw: Any) -> ObjectInfo:
        if len(key.rsplit("/", 1)[-1].encode()) > 246:
            raise RemoteError(f"{key}: InternalError: We encountered an internal error",
                              transient=True)
        return super()._put_bytes(key, data, metadata, content_type, **kw)


async def test_max_name_bytes(local_zone: ZoneConfig, tmp_path: Path) -> None:
    full = await probe(open_remote(local_zone))
    assert full.max_name_bytes == 255 and "names up to" not in full.summary()
    remote = TakesShortNamesOnly(local_zone)
    caps = await load_or_probe(remote, str(tmp_path), reprobe=True)
    assert caps.max_name_bytes == 246 and caps.complete
    assert "names up to 246 bytes (longer ones refused)" in caps.summary()
    assert any("a name of 255 bytes" in n for n in caps.notes), caps.notes
    assert await local_leftovers(remote) == []
    assert json.loads((tmp_path / CACHE_FILE).read_text())["capabilities"][
        "max_name_bytes"] == 246
    again = await load_or_probe(remote, str(tmp_path), overrides={"max_name_bytes": "200"})
    assert (again.source, again.max_name_bytes) == ("cached", 200)
    assert dict(parse_mount_options(["max_name_bytes=100"]).store_overrides) == {
        "max_name_bytes": "100"}
    with pytest.raises(ConfigError, match="max_name_bytes= takes a number of bytes from 1 to"):
        parse_mount_options(["max_name_bytes=256"])


async def test_names_longer_than_the_store_takes_are_refused_at_create(env: Env) -> None:
    """ENAMETOOLONG before anything is written, for every way of making a name; names the
    store takes work as ever."""
    caps = replace(await env.capabilities(), max_name_bytes=246)
    async with env.vfs(capabilities=caps) as vfs:
        long, fits = "n" * 247, "n" * 246
        await write_file(vfs, fits, b"fits")
        for make in (lambda: vfs.create(long, 0o644, 0, 0),
                     lambda: vfs.mkdir(long, 0o755, 0, 0),
                     lambda: vfs.symlink(long, "target", 0, 0),
                     lambda: vfs.rename(fits, long)):
            with pytest.raises(NameTooLong):
                await make()
        await drain(vfs)
        assert await env.store.keys() == {fits}


async def test_a_cache_of_the_format_before_backslash_keys_is_probed_again(
    local_zone: ZoneConfig, tmp_path: Path
) -> None:
    remote = open_remote(local_zone)
    record = json.loads(Capabilities().to_json(remote.description))
    record["format"] = 1
    del record["capabilities"]["backslash_keys"]
    (tmp_path / CACHE_FILE).write_text(json.dumps(record))
    caps = await load_or_probe(remote, str(tmp_path))
    assert caps.source == "probed" and caps.backslash_keys == "kept"


async def test_checksums_unverified_and_marker_metadata_dropped(local_zone: ZoneConfig) -> None:
    remote = NoChecksumsDropsMarkerMetadata(local_zone)
    caps = await probe(remote)
    assert (caps.checksums, caps.dir_markers) == (False, "dropped")
    assert "dir markers lose their metadata" in caps.summary()
    assert await local_leftovers(remote) == []


class BrokenVersioningApi(LocalRemote):
    def _bucket_versioning(self) -> str:
        raise ValueError("a surprise nobody planned for")


async def test_a_surprise_gives_the_safe_answer_and_the_probe_goes_on(
    local_zone: ZoneConfig,
) -> None:
    caps = await probe(BrokenVersioningApi(local_zone))
    assert (caps.versioning, caps.delete_markers) == ("unsupported", "none")
    assert any("unexpected ValueError" in n for n in caps.notes)
    assert caps.conditional_writes == "enforced" and caps.checksums is True


class HangingPuts(LocalRemote):
    """PUTs never answer (until released): a store that accepts connections, then stalls."""

    def __init__(self, zone: ZoneConfig) -> None:
        super().__init__(zone)
        self.release = threading.Event()

    def _put_bytes(self, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(30)
        raise RemoteError("released")


async def test_a_hanging_store_gets_safe_answers_in_time(
    local_zone: ZoneConfig, tmp_path: Path
) -> None:
    remote = HangingPuts(local_zone)
    try:
        started = time.monotonic()
        caps = await load_or_probe(remote, str(tmp_path), timeout=1.5)
        assert time.monotonic() - started < 5
    finally:
        remote.release.set()
    assert caps.versioning == "enabled"  # asked before the first PUT hung
    assert (caps.conditional_writes, caps.checksums, caps.dir_markers) == (
        "not-implemented", False, "dropped")
    assert caps.delete_markers == "permanent"
    assert not caps.complete and "incomplete" in caps.summary()
    assert not (tmp_path / CACHE_FILE).exists()  # a guess is never cached


async def test_read_only_mount_writes_nothing(local_zone: ZoneConfig, tmp_path: Path) -> None:
    remote = open_remote(local_zone)
    caps = await load_or_probe(remote, str(tmp_path), read_only=True)
    assert remote.requests.counts == {"probe": 1}  # GetBucketVersioning only
    assert caps.versioning == "enabled" and not caps.complete
    assert not (tmp_path / CACHE_FILE).exists()


# -- cache and overrides ---------------------------------------------------------------------


async def test_cache_reused_without_requests_and_reprobe(
    s3_zone: ZoneConfig, tmp_path: Path
) -> None:
    remote = open_remote(s3_zone)
    first = await load_or_probe(remote, str(tmp_path))
    cache = tmp_path / CACHE_FILE
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    record = json.loads(cache.read_text())
    assert record["zone"] == remote.description
    assert record["capabilities"]["versioning"] == "enabled"
    assert first.source == "probed" and remote.requests.counts["probe"] > 10

    remote.requests.counts.clear()
    again = await load_or_probe(remote, str(tmp_path))
    assert remote.requests.counts == {}  # not one request
    assert again.source == "cached"
    assert again.summary().startswith("store probe (cached): ")
    assert (again.versioning, again.conditional_writes, again.checksums, again.dir_markers,
            again.delete_markers) == (first.versioning, first.conditional_writes,
                                      first.checksums, first.dir_markers, first.delete_markers)

    redone = await load_or_probe(remote, str(tmp_path), reprobe=True)
    assert redone.source == "probed" and remote.requests.counts["probe"] > 10


async def test_cache_of_another_zone_or_damaged_is_not_used(
    local_zone: ZoneConfig, tmp_path: Path
) -> None:
    remote = open_remote(local_zone)
    cache = tmp_path / CACHE_FILE
    cache.write_text(Capabilities(versioning="unsupported").to_json("s3://some/other/zone"))
    caps = await load_or_probe(remote, str(tmp_path))
    assert caps.source == "probed" and caps.versioning == "enabled"
    assert json.loads(cache.read_text())["zone"] == remote.description
    cache.write_text("{not json")
    assert (await load_or_probe(remote, str(tmp_path))).source == "probed"
    record = json.loads(cache.read_text())
    record["capabilities"]["conditional_writes"] = "maybe"
    cache.write_text(json.dumps(record))
    assert (await load_or_probe(remote, str(tmp_path))).source == "probed"


def test_overrides_parsed() -> None:
    opts = parse_mount_options(["versioning=unsupported,checksums=on",
                                "dir_markers=dropped,conditional_writes=always-412,checksums=off"])
    assert dict(opts.store_overrides) == {
        "versioning": "unsupported", "checksums": "off", "dir_markers": "dropped",
        "conditional_writes": "always-412"}
    assert parse_mount_options(["reprobe"]).reprobe
    assert MountOptions().store_overrides == () and not MountOptions().reprobe
    with pytest.raises(ConfigError, match=r"conditional_writes= takes enforced\|ignored"):
        parse_mount_options(["conditional_writes=sometimes"])
    with pytest.raises(ConfigError, match="checksums= takes on|off"):
        parse_mount_options(["checksums=yes"])


async def test_overrides_replace_answers_and_skip_their_steps(
    local_zone: ZoneConfig, tmp_path: Path
) -> None:
    remote = open_remote(local_zone)
    overrides = {"versioning": "unversioned", "conditional_writes": "ignored",
                 "checksums": "off", "dir_markers": "dropped", "backslash_keys": "rewritten",
                 "max_name_bytes": "255"}
    caps = await load_or_probe(remote, str(tmp_path), overrides=overrides)
    assert remote.requests.counts == {}  # nothing left to ask: unversioned means no markers
    assert (caps.versioning, caps.conditional_writes, caps.checksums, caps.dir_markers,
            caps.delete_markers, caps.backslash_keys) == (
        "unversioned", "ignored", False, "dropped", "none", "rewritten")
    assert caps.overridden == ("backslash_keys", "checksums", "conditional_writes",
                               "dir_markers", "max_name_bytes", "versioning")
    assert caps.summary().endswith("dir markers lose their metadata (directories show the "
                                   "mount's defaults), keys with a backslash rewritten by the "
                                   "store (such names refused)")
    assert ("set by -o: backslash_keys checksums conditional_writes dir_markers max_name_bytes "
            "versioning" in caps.summary())
    assert not (tmp_path / CACHE_FILE).exists()  # a partial probe is not cached

    # On top of a cached probe, an override wins and the others stay.
    await load_or_probe(remote, str(tmp_path))
    cached = await load_or_probe(remote, str(tmp_path), overrides={"checksums": "off"})
    assert (cached.source, cached.checksums, cached.conditional_writes) == (
        "cached", False, "enforced")
    assert cached.overridden == ("checksums",)


# -- the remote layer's conditions and checksums -----------------------------------------------


async def test_conditional_puts_on_both_stores(s3_zone: ZoneConfig, local_zone: ZoneConfig,
                                               tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"from a file")
    for remote in (open_remote(s3_zone), open_remote(local_zone)):
        if (await probe(remote)).conditional_writes != "enforced":
            continue  # what zonefs does there instead: t3 (the ETag compared before the PUT)
        first = await remote.put_bytes("k", b"1", {}, if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await remote.put_bytes("k", b"2", {}, if_none_match=True)
        with pytest.raises(PreconditionFailed):
            await remote.upload("k", str(src), {}, if_match="0" * 32)
        second = await remote.upload("k", str(src), {}, if_match=first.etag)
        # No object to match: S3 and moto say 404, SeaweedFS 412; both refuse the write.
        with pytest.raises((NotFound, PreconditionFailed)):
            await remote.put_bytes("missing", b"3", {}, if_match=first.etag)
        assert (await remote.head("k")).etag == second.etag
        assert await remote.get_range("k", 0, 100) == b"from a file"
        await remote.delete("k")  # a current delete marker counts as no object
        await remote.put_bytes("k", b"4", {}, if_none_match=True)


async def test_local_zone_verifies_checksums(local_zone: ZoneConfig, tmp_path: Path) -> None:
    remote = open_remote(local_zone)
    src = tmp_path / "src"
    src.write_bytes(b"payload")
    with pytest.raises(ChecksumMismatch):
        await remote.upload("f", str(src), {}, checksum_sha256=sha256(b"other"))
    with pytest.raises(NotFound):
        await remote.head("f")  # nothing was kept
    assert (await remote.list_versions("f", None)).versions == []
    await remote.upload("f", str(src), {}, checksum_sha256=sha256(b"payload"))
    assert await remote.head_checksum("f") == sha256(b"payload")


async def test_store_reports_the_checksums_it_was_given(s3_zone: ZoneConfig) -> None:
    remote = open_remote(s3_zone)
    # moto keeps a checksum without verifying it; other stores keep those they verify.
    if s3_server() != "moto" and not (await probe(remote)).checksums:
        pytest.skip("the store keeps no SHA-256 checksums (the probe found them unverified)")
    await remote.put_bytes("c", b"payload", {}, checksum_sha256=sha256(b"payload"))
    assert await remote.head_checksum("c") == sha256(b"payload")
    await remote.put_bytes("plain", b"payload", {})
    assert await remote.head_checksum("plain") is None


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NotImplemented", 501, StoreUnsupported),
    ("", 501, StoreUnsupported),
    ("BadDigest", 400, ChecksumMismatch),
])
def test_error_table_for_the_probe(code: str, status: int, expected: type) -> None:
    exc = ClientError({"Error": {"Code": code, "Message": "m"},
                       "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}},
                      "PutObject")
    err = translate_error(exc, "s3://b/k", "b", "http://127.0.0.1:1")
    assert type(err) is expected and not err.transient


# -- uploads send checksums where the store verifies them --------------------------------------


class DamagesFirstUpload(LocalRemote):
    """The first upload's bytes are damaged on the way to the store (one byte flipped)."""

    damaged = 0

    def _upload(self, key: str, src: str, metadata: Mapping[str, str],
                content_type: str | None, cancel: threading.Event | None = None,
                **kwargs: Any) -> Any:
        if not self.damaged:
            self.damaged += 1
            data = bytearray(Path(src).read_bytes())
            data[0] ^= 0xFF
            bad = src + ".damaged"
            Path(bad).write_bytes(bytes(data))
            try:
                return super()._upload(key, bad, metadata, content_type, cancel, **kwargs)
            finally:
                os.unlink(bad)
        return super()._upload(key, src, metadata, content_type, cancel, **kwargs)


@pytest.mark.parametrize("checksums", [True, False], ids=["verified", "not-verified"])
async def test_uploads_send_checksums_when_the_store_verifies(
    local_zone: ZoneConfig, tmp_path: Path, checksums: bool
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    env = Env("local", local_zone, cache, Store("local", open_remote(local_zone)))
    data = b"precious bytes\n" * 1000
    async with env.vfs(remote=DamagesFirstUpload(local_zone),
                       capabilities=Capabilities(checksums=checksums)) as vfs:
        await write_file(vfs, "f.txt", data)
        await drain(vfs)
    stored = await env.store.read("f.txt")
    versions = (await env.store.remote.list_versions("f.txt", None)).versions
    if checksums:
        # The store refused the damaged bytes; the retry stored the right ones, once.
        assert stored == data and len(versions) == 1
        assert vfs.ledger.writeback.stats_dict()["retries"] == 1
    else:
        assert stored != data  # what the checksum protects against: damage goes unnoticed
    env.store.remote.close()  # type: ignore[attr-defined]


async def test_probe_is_quick(s3_zone: ZoneConfig) -> None:
    """A mount pays for the probe once per zone: it must stay a fraction of a second's work."""
    remote = open_remote(s3_zone)
    with trio.fail_after(10):
        await probe(remote)
    assert sum(remote.requests.counts.values()) < 50
