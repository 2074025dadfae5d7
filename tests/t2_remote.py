"""The Remote contract, held by both backends: moto's S3 server and the embedded local zone.

Each contract test runs once per backend through the `remote` fixture; S3-only and local-only
behaviour (prefix zones, error mapping of a real endpoint, version history on disk) follows.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from botocore.exceptions import ClientError
from conftest import s3_test_client

from zonefs.common.config import ZoneConfig
from zonefs.common.errors import (
    AccessDenied,
    AccessRefused,
    BucketMissing,
    NotFound,
    PreconditionFailed,
    Refused,
    RemoteError,
    StoreFailing,
)
from zonefs.remote import ListPage, LocalRemote, Remote, open_remote
from zonefs.remote import local as local_module
from zonefs.remote.s3 import S3Remote, translate_error

MiB = 1 << 20


@pytest.fixture(params=["s3", "local"])
def remote(request: pytest.FixtureRequest) -> Remote:
    zone = request.getfixturevalue("s3_zone" if request.param == "s3" else "local_zone")
    return open_remote(zone)


def boto3_remote(remote: Remote) -> S3Remote | None:
    """The boto3 remote behind `remote` (itself, or the one the lean path wraps); None for
    a local zone."""
    inner = getattr(remote, "boto", remote)
    return inner if isinstance(inner, S3Remote) else None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class CancelAfter(threading.Event):
    """An Event that sets itself on its `n`-th check: a cancel that lands mid-upload."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self._left = n
        self._mutex = threading.Lock()

    def is_set(self) -> bool:
        with self._mutex:
            self._left -= 1
            if self._left <= 0:
                self.set()
        return super().is_set()


async def list_all(
    remote: Remote, prefix: str, delimiter: str | None, max_keys: int
) -> list[ListPage]:
    pages, token = [], None
    while True:
        page = await remote.list(prefix, delimiter, token, max_keys)
        pages.append(page)
        token = page.next_token
        if token is None:
            return pages
        assert len(pages) < 50, "paging does not end"


# -- the contract, on both backends -----------------------------------------------------------


async def test_put_head_get_range(remote: Remote) -> None:
    body = b"hello world"
    put = await remote.put_bytes("a/b.txt", body, {"Mode": "33188", "zonefs-sha256": "ab"},
                                 "text/plain")
    assert (put.key, put.size, put.etag) == ("a/b.txt", 11, md5(body))
    assert put.version_id  # both stores are versioned
    head = await remote.head("a/b.txt")
    assert (head.size, head.etag, head.version_id) == (11, md5(body), put.version_id)
    assert head.metadata == {"mode": "33188", "zonefs-sha256": "ab"}  # names come back lowercase
    assert head.content_type == "text/plain"
    assert abs(head.mtime - time.time()) < 120

    assert await remote.get_range("a/b.txt", 0, 5) == b"hello"
    assert await remote.get_range("a/b.txt", 6, 100) == b"world"  # fewer at the end
    assert await remote.get_range("a/b.txt", 11, 5) == b""  # starts at the end
    assert await remote.get_range("a/b.txt", 1000, 5) == b""  # starts past the end
    await remote.put_bytes("empty", b"", {})
    assert await remote.get_range("empty", 0, 10) == b""
    with pytest.raises(NotFound):
        await remote.head("a/nope")
    with pytest.raises(NotFound):
        await remote.get_range("a/nope", 0, 1)


async def test_upload_download_small(remote: Remote, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(data)
    dest.write_bytes(b"old content that must be replaced" * 10_000)
    up = await remote.upload("f.bin", str(src), {"mtime": "1.000000000"}, "application/x-test")
    assert (up.size, up.etag) == (len(data), md5(data))
    got = await remote.download("f.bin", str(dest))
    assert dest.read_bytes() == data
    assert (got.size, got.etag, got.version_id) == (len(data), up.etag, up.version_id)
    assert got.metadata == {"mtime": "1.000000000"}
    assert got.content_type == "application/x-test"


async def test_upload_multipart(remote: Remote, tmp_path: Path) -> None:
    data = os.urandom(40 * MiB)
    src, dest = tmp_path / "big", tmp_path / "big.out"
    src.write_bytes(data)
    up = await remote.upload("big", str(src), {"k": "v"})
    assert up.size == len(data) and up.version_id
    if boto3_remote(remote) is not None:
        assert up.etag.endswith("-3")  # three 16 MiB parts: it really went multipart
    got = await remote.download("big", str(dest))
    assert got.size == len(data) and got.etag == up.etag and got.metadata == {"k": "v"}
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert await remote.get_range("big", 20 * MiB, 10) == data[20 * MiB: 20 * MiB + 10]


def leftovers(remote: Remote, request: pytest.FixtureRequest) -> list[str]:
    """Unfinished multipart uploads (S3) or uncommitted bodies (local) left by an upload."""
    if boto3_remote(remote) is not None:
        client = request.getfixturevalue("s3_client")
        uploads = client.list_multipart_uploads(Bucket=remote.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]
    assert isinstance(remote, LocalRemote)
    return os.listdir(os.path.join(remote.root, "data", "tmp"))


@pytest.mark.parametrize("size", [100_000, 40 * MiB], ids=["small", "multipart"])
@pytest.mark.parametrize("when", ["before", "during"])
async def test_cancelled_upload_leaves_nothing(
    remote: Remote, tmp_path: Path, request: pytest.FixtureRequest, size: int, when: str
) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    cancel = threading.Event() if when == "before" else CancelAfter(20 if size > MiB else 2)
    if when == "before":
        cancel.set()
    started = time.monotonic()
    with pytest.raises(RemoteError, match="cancelled"):
        await remote.upload("c.bin", str(src), {}, cancel=cancel)
    assert time.monotonic() - started < 5
    with pytest.raises(NotFound):
        await remote.head("c.bin")
    assert leftovers(remote, request) == []
    # The store is still fine for the next upload of the same key.
    info = await remote.upload("c.bin", str(src), {})
    assert info.size == size


async def test_listing_with_delimiter_and_paging(
    remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "_BATCH", 2)  # make the local store page its SQL too
    for key in ["a.txt", "b/1", "b/2", "b/3/x", "c/", "c/x/y", "d.txt", "e", "f/"]:
        await remote.put_bytes(key, key.encode(), {})
    await remote.delete("e")

    pages = await list_all(remote, "", "/", max_keys=2)
    assert all(len(p.objects) + len(p.prefixes) <= 2 for p in pages)
    assert len(pages) == 3  # a.txt b/ | c/ d.txt | f/
    assert [o.key for p in pages for o in p.objects] == ["a.txt", "d.txt"]
    assert [x for p in pages for x in p.prefixes] == ["b/", "c/", "f/"]
    obj = pages[0].objects[0]
    assert (obj.size, obj.etag, obj.metadata) == (5, md5(b"a.txt"), None)

    (page,) = await list_all(remote, "b/", "/", max_keys=1000)
    assert [o.key for o in page.objects] == ["b/1", "b/2"] and page.prefixes == ["b/3/"]
    (page,) = await list_all(remote, "c/", "/", max_keys=1000)
    assert [o.key for o in page.objects] == ["c/"] and page.prefixes == ["c/x/"]

    flat = await list_all(remote, "", None, max_keys=3)
    assert [o.key for p in flat for o in p.objects] == [
        "a.txt", "b/1", "b/2", "b/3/x", "c/", "c/x/y", "d.txt", "f/"]
    assert all(not p.prefixes for p in flat)
    (page,) = await list_all(remote, "zzz", "/", max_keys=10)
    assert page.objects == [] and page.prefixes == []


async def test_copy_keeps_or_replaces_metadata(remote: Remote) -> None:
    original = await remote.put_bytes("src", b"payload", {"mode": "33188"}, "text/plain")
    kept = await remote.copy("src", "dst1")
    assert (kept.key, kept.size, kept.etag) == ("dst1", 7, md5(b"payload"))
    head = await remote.head("dst1")
    assert head.metadata == {"mode": "33188"} and head.content_type == "text/plain"
    # Ceph RGW Pacific answers a copy without the new version's id: then nothing to compare.
    assert kept.version_id in (head.version_id, None)

    replaced = await remote.copy("src", "dst2", {"mode": "33261", "uid": "7"}, "text/x-new")
    assert replaced.size == 7
    head = await remote.head("dst2")
    assert head.metadata == {"mode": "33261", "uid": "7"} and head.content_type == "text/x-new"
    assert await remote.get_range("dst2", 0, 100) == b"payload"
    # In place, as chmod does on a versioned store: a new version with the new metadata.
    again = await remote.copy("src", "src", {"mode": "33152"}, "text/plain")
    head = await remote.head("src")
    assert head.metadata == {"mode": "33152"} and again.version_id in (head.version_id, None)
    assert head.version_id != original.version_id
    old = await remote.head("src", original.version_id)
    assert old.metadata == {"mode": "33188"}
    with pytest.raises(NotFound):
        await remote.copy("missing", "dst3")


async def test_delete_then_head_is_not_found(remote: Remote) -> None:
    await remote.put_bytes("gone", b"x", {})
    await remote.delete("gone")
    with pytest.raises(NotFound):
        await remote.head("gone")
    with pytest.raises(NotFound):
        await remote.get_range("gone", 0, 1)
    (page,) = await list_all(remote, "", "/", 100)
    assert page.objects == []
    await remote.delete("gone")  # again, and a key that never existed: both fine
    await remote.delete("never-was")


async def test_head_many_answers_each_key_once(remote: Remote) -> None:
    present = [f"many/{n:03d}" for n in range(40)]
    for key in present:
        await remote.put_bytes(key, key.encode(), {"mode": "33152"})
    asked = present + ["many/missing-1", "many/missing-2"]
    answers: dict[str, list[object]] = {}
    before = remote.requests.counts.get("head", 0)
    await remote.head_many(asked, lambda k, a: answers.setdefault(k, []).append(a), workers=4)
    assert sorted(answers) == sorted(asked)
    assert all(len(got) == 1 for got in answers.values()), "one answer per key"
    for key in present:
        (info,) = answers[key]
        assert not isinstance(info, Exception) and info.size == len(key)
        assert info.metadata is not None and info.metadata.get("mode") == "33152"
    assert all(isinstance(answers[k][0], NotFound) for k in asked[-2:])
    assert remote.requests.counts["head"] - before == len(asked)


async def test_head_many_gives_up_on_a_store_gone_quiet(local_zone: ZoneConfig) -> None:
    # A HEAD that never answers must not hold the caller (a listing's prefetch) past
    # io_timeout: the keys left get no answer, and their readers ask for themselves.
    release = threading.Event()

    class Stalling(LocalRemote):
        def _head(self, key: str, version_id: str | None = None) -> Any:
            if key == "stuck":
                release.wait(10)
            return super()._head(key, version_id)

    remote = Stalling(local_zone, io_timeout=0.5)
    await remote.put_bytes("fine", b"x", {})
    answers: dict[str, object] = {}
    start = time.monotonic()
    try:
        await remote.head_many(["stuck", "fine"], answers.__setitem__, workers=2)
    finally:
        release.set()
    assert time.monotonic() - start < 5
    assert list(answers) == ["fine"]


async def test_versions_and_if_match(remote: Remote, tmp_path: Path) -> None:
    v1 = await remote.put_bytes("v", b"one", {"n": "1"})
    v2 = await remote.put_bytes("v", b"two!", {"n": "2"})
    assert v1.version_id != v2.version_id
    assert await remote.get_range("v", 0, 10, version_id=v1.version_id) == b"one"
    old = await remote.head("v", version_id=v1.version_id)
    assert (old.size, old.metadata) == (3, {"n": "1"})
    assert await remote.get_range("v", 0, 10, if_match=v2.etag) == b"two!"
    with pytest.raises(PreconditionFailed):
        await remote.get_range("v", 0, 10, if_match=v1.etag)
    with pytest.raises(PreconditionFailed):
        await remote.download("v", str(tmp_path / "out"), if_match=v1.etag)
    got = await remote.download("v", str(tmp_path / "out"), version_id=v1.version_id)
    assert (tmp_path / "out").read_bytes() == b"one" and got.version_id == v1.version_id


async def test_check_passes(remote: Remote) -> None:
    await remote.check()
    assert remote.requests.counts["check"] == 1
    assert remote.description and remote.object_uri("a b").endswith("/a b")


# -- S3 only ---------------------------------------------------------------------------------


async def test_prefix_zone(s3_endpoint: str, bucket: str, s3_client: Any) -> None:
    s3_client.put_object(Bucket=bucket, Key="outside.txt", Body=b"no")
    s3_client.put_object(Bucket=bucket, Key="pre/fixed", Body=b"no")  # shares the text only
    s3_client.put_object(Bucket=bucket, Key="pre/fix/", Body=b"")  # the zone root's marker
    s3_client.put_object(Bucket=bucket, Key="pre/fix/in.txt", Body=b"yes")
    remote = open_remote(ZoneConfig.parse(f"s3://{bucket}/pre/fix", endpoint_url=s3_endpoint))
    (page,) = await list_all(remote, "", "/", 100)
    assert [o.key for o in page.objects] == ["in.txt"] and page.prefixes == []
    await remote.put_bytes("sub/new.txt", b"new", {"mode": "33188"})
    body = s3_client.get_object(Bucket=bucket, Key="pre/fix/sub/new.txt")
    assert body["Body"].read() == b"new" and body["Metadata"] == {"mode": "33188"}
    (page,) = await list_all(remote, "", "/", 100)
    assert page.prefixes == ["sub/"]
    assert remote.object_uri("sub/new.txt") == f"s3://{bucket}/pre/fix/sub/new.txt"
    await remote.copy("in.txt", "in2.txt")
    assert s3_client.get_object(Bucket=bucket, Key="pre/fix/in2.txt")["Body"].read() == b"yes"
    await remote.delete("in.txt")
    with pytest.raises(NotFound):
        await remote.head("in.txt")
    with pytest.raises(NotFound):
        await remote.head("../outside.txt")


async def test_multipart_copy(s3_zone: ZoneConfig, s3_client: Any, tmp_path: Path) -> None:
    remote = open_remote(s3_zone)
    boto = boto3_remote(remote)
    assert boto is not None
    boto.COPY_MULTIPART_THRESHOLD = boto.COPY_PART_SIZE = 5 * MiB  # the smallest part
    data = os.urandom(12 * MiB)
    (tmp_path / "src").write_bytes(data)
    await remote.upload("src", str(tmp_path / "src"), {"mode": "33188"}, "text/plain")
    info = await remote.copy("src", "dst")
    assert info.size == len(data) and info.etag.endswith("-3")
    got = s3_client.get_object(Bucket=s3_zone.bucket, Key="dst")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"mode": "33188"} and got["ContentType"] == "text/plain"
    assert s3_client.list_multipart_uploads(Bucket=s3_zone.bucket).get("Uploads", []) == []


async def test_missing_bucket(s3_endpoint: str) -> None:
    zone = ZoneConfig.parse("s3://zonefs-no-such-bucket-here", endpoint_url=s3_endpoint)
    with pytest.raises(BucketMissing, match="'zonefs-no-such-bucket-here' does not exist at"):
        await open_remote(zone).check()


async def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    # Credentials present, so botocore never looks further (no metadata-service lookups).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = f"http://127.0.0.1:{closed_port()}"  # nothing listens there
    remote = open_remote(ZoneConfig.parse("s3://some-bucket", endpoint_url=endpoint))
    started = time.monotonic()
    with pytest.raises(RemoteError, match=f"cannot reach {endpoint}: ") as info:
        await remote.check()
    assert time.monotonic() - started < 10
    assert "\n" not in str(info.value) and info.value.transient


async def test_wrong_credentials(
    authenticating_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = authenticating_endpoint
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAZONEFSWRONGKEY00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "zonefs-wrong-secret-value")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    remote = open_remote(ZoneConfig.parse("s3://any-bucket", endpoint_url=endpoint))
    with pytest.raises(AccessDenied, match="access denied to bucket 'any-bucket'") as info:
        await remote.check()
    assert "zonefs-wrong-secret-value" not in str(info.value)
    assert "AKIAZONEFSWRONGKEY00" not in str(info.value)
    with pytest.raises(AccessDenied):
        await remote.list("")


async def test_no_credentials(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask a metadata service
    remote = open_remote(ZoneConfig.parse("s3://any-bucket", endpoint_url=s3_endpoint))
    with pytest.raises(AccessDenied, match="no usable AWS credentials"):
        await remote.check()


@pytest.mark.parametrize(
    ("code", "status", "expected", "transient"),
    [
        ("NoSuchKey", 404, NotFound, False),
        ("404", 404, NotFound, False),
        ("NoSuchBucket", 404, BucketMissing, False),
        ("SignatureDoesNotMatch", 403, AccessDenied, False),
        ("PreconditionFailed", 412, PreconditionFailed, False),
        ("SlowDown", 503, StoreFailing, True),
        ("InternalError", 500, StoreFailing, True),
        ("WeirdNewCode", 500, StoreFailing, True),
        # A 4xx that is no throttle, timeout, precondition or credentials trouble: refused
        # for good, whatever its code (the write-back queue does not retry it on a timer).
        ("WeirdNewCode", 400, Refused, False),
        ("KeyTooLongError", 400, Refused, False),
        ("InvalidArgument", 400, Refused, False),
        ("EntityTooLarge", 400, Refused, False),
        ("MetadataTooLarge", 400, Refused, False),
        ("400", 400, Refused, False),
        ("AccessDenied", 403, AccessRefused, False),
        ("403", 403, AccessDenied, False),
        ("InvalidAccessKeyId", 403, AccessDenied, False),
        ("RequestTimeTooSkewed", 403, AccessDenied, False),
        ("IncompleteBody", 400, RemoteError, False),
        ("RequestTimeout", 400, StoreFailing, True),
        ("TooManyRequests", 429, StoreFailing, True),
        ("OperationAborted", 409, StoreFailing, True),
        ("409", 409, RemoteError, False),
    ],
)
def test_error_table(code: str, status: int, expected: type, transient: bool) -> None:
    exc = ClientError(
        {"Error": {"Code": code, "Message": "multi\nline"},
         "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}},
        "GetObject",
    )
    err = translate_error(exc, "s3://b/k", "b", "http://127.0.0.1:1")
    assert type(err) is expected and "\n" not in str(err)
    assert getattr(err, "transient", False) == transient
    if isinstance(err, StoreFailing):  # only a 500 is an internal error, not a throttle
        assert err.internal == (status == 500)
    if expected in (RemoteError, Refused) and not transient:
        assert code in str(err) and "s3://b/k" in str(err)
    if issubclass(expected, Refused):
        assert isinstance(err, Refused) and err.code == code
        assert err.answer == f"{code}: multi line"


# -- local zone only --------------------------------------------------------------------------


async def test_local_versions_kept(
    local_zone: ZoneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_module, "_BATCH", 2)  # list_versions pages its SQL too
    remote = LocalRemote(local_zone)
    one = await remote.put_bytes("doc", b"1", {})
    two = await remote.put_bytes("doc", b"22", {})
    await remote.put_bytes("doc2", b"other key", {})
    await remote.delete("doc")
    versions = [v async for page in remote.iter_versions("doc", None) for v in page.versions]
    assert [v.key for v in versions] == ["doc", "doc", "doc", "doc2"]
    marker, newer, older = versions[:3]
    assert marker.is_delete_marker and marker.is_latest and marker.size == 0
    assert (newer.version_id, newer.size, newer.is_latest) == (two.version_id, 2, False)
    assert (older.version_id, older.is_delete_marker) == (one.version_id, False)
    assert versions[3].is_latest and not versions[3].is_delete_marker
    assert await remote.get_range("doc", 0, 10, version_id=one.version_id) == b"1"
    with pytest.raises(NotFound):
        await remote.head("doc", version_id=marker.version_id)


async def test_local_zone_refuses_keys_s3_would_refuse(
    local_zone: ZoneConfig, tmp_path: Path
) -> None:
    """Like S3, the local zone takes keys of at most 1024 bytes: a longer one is refused for
    good (KeyTooLongError) by every write, and nothing is stored."""
    remote = LocalRemote(local_zone)
    longest = "d/" + "€" * 340 + "xyz"  # 2 + 1020 + 3 bytes: one byte too many
    assert len(longest.encode()) == local_module.MAX_KEY_BYTES + 1
    src = tmp_path / "src"
    src.write_bytes(b"body")
    await remote.put_bytes("short", b"v", {})
    for call in (lambda: remote.put_bytes(longest, b"v", {}),
                 lambda: remote.upload(longest, str(src), {}, None),
                 lambda: remote.copy("short", longest),
                 lambda: remote.delete(longest)):
        with pytest.raises(Refused) as info:
            await call()
        assert info.value.code == "KeyTooLongError" and not info.value.transient
        assert "1025 bytes" in info.value.answer and "\n" not in str(info.value)
    assert [o.key for o in (await remote.list("", None, None, 100)).objects] == ["short"]
    stored = [f for d, _, files in os.walk(os.path.join(local_zone.local_dir, "data"))
              for f in files]
    assert len(stored) == 1, stored  # the body of "short" alone
    await remote.put_bytes(longest[:-1], b"v", {})  # 1024 bytes: taken
    assert (await remote.head(longest[:-1])).size == 1


async def test_local_reopen_and_permissions(local_zone: ZoneConfig, tmp_path: Path) -> None:
    remote = LocalRemote(local_zone)
    info = await remote.put_bytes("kept/file", b"survives", {"mode": "33188"})
    remote.close()
    again = open_remote(local_zone)
    await again.check()
    head = await again.head("kept/file")
    assert (head.etag, head.version_id, head.metadata) == (info.etag, info.version_id,
                                                           {"mode": "33188"})
    assert await again.get_range("kept/file", 0, 100) == b"survives"
    assert again.object_uri("kept/file") == f"file://{local_zone.local_dir}/kept/file"
    for path, _dirs, files in os.walk(local_zone.local_dir):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode)
            assert mode == 0o600, os.path.join(path, name)


async def test_local_missing_zone(tmp_path: Path) -> None:
    zone = ZoneConfig.parse(f"file://{tmp_path}/nothing")
    with pytest.raises(BucketMissing, match="no zone at"):
        open_remote(zone)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(BucketMissing, match="no zone at"):
        LocalRemote(zone)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file").write_text("not a zone")
    with pytest.raises(BucketMissing, match="not empty"):
        open_remote(ZoneConfig.parse(f"file://{tmp_path}/other"), create=True)
    assert os.listdir(tmp_path / "other") == ["file"]  # nothing added to a foreign directory
    remote = open_remote(zone, create=True)
    await remote.check()
    os.rename(tmp_path / "nothing", tmp_path / "moved")
    with pytest.raises(BucketMissing):
        await remote.check()


def test_importing_remote_does_not_import_boto3() -> None:
    code = "import sys, zonefs.remote; sys.exit('boto3' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# -- version history (both backends) -----------------------------------------------------------


async def all_versions(remote: Remote, prefix: str, delimiter: str | None = None,
                       max_keys: int = 1000) -> tuple[list[Any], list[str]]:
    versions: list[Any] = []
    prefixes: list[str] = []
    marker = None
    for _ in range(100):
        page = await remote.list_versions(prefix, delimiter, marker, max_keys)
        versions += page.versions
        prefixes += page.prefixes
        marker = page.next_marker
        if marker is None:
            return versions, prefixes
    raise AssertionError("version paging does not end")


async def test_versions_listed_newest_first_and_paged(remote: Remote) -> None:
    assert await remote.bucket_versioning() == "enabled"
    written = [await remote.put_bytes("v/doc", b"x" * n, {}) for n in (1, 2, 3)]
    await remote.put_bytes("v/sub/inner", b"i", {})
    await remote.put_bytes("v/doc2", b"other", {})
    await remote.delete("v/doc")
    for max_keys in (1000, 2):
        versions, prefixes = await all_versions(remote, "v/", "/", max_keys)
        # MiniStack repeats a common prefix on every page of a small MaxKeys; the history
        # keeps its subdirectories as a set, so only which prefixes come back matters here.
        assert set(prefixes) == {"v/sub/"}
        doc = [v for v in versions if v.key == "v/doc"]
        assert [v.is_delete_marker for v in doc] == [True, False, False, False]
        assert [v.size for v in doc[1:]] == [3, 2, 1]
        assert [v.version_id for v in doc[1:]] == [w.version_id for w in reversed(written)]
        assert doc[0].is_latest and not any(v.is_latest for v in doc[1:])
        assert [v.key for v in versions if v.key != "v/doc"] == ["v/doc2"]


async def test_delete_marker_removal_undeletes(remote: Remote) -> None:
    first = await remote.put_bytes("u", b"first", {})
    await remote.delete("u")
    with pytest.raises(NotFound):
        await remote.head("u")
    versions, _ = await all_versions(remote, "u")
    marker = versions[0]
    assert marker.is_delete_marker
    await remote.delete_version("u", marker.version_id)
    assert (await remote.head("u")).version_id == first.version_id


async def test_copy_version_makes_it_current_again(remote: Remote) -> None:
    old = await remote.put_bytes("r", b"old bytes", {"mode": "33188"})
    await remote.put_bytes("r", b"new", {})
    copied = await remote.copy_version("r", old.version_id or "null", "r")
    assert copied.version_id != old.version_id  # None where the store does not say (Ceph RGW)
    assert await remote.get_range("r", 0, 100) == b"old bytes"
    assert (await remote.head("r")).metadata == {"mode": "33188"}
    versions, _ = await all_versions(remote, "r")
    assert len(versions) == 3  # nothing overwritten


async def test_unversioned_bucket_says_so(s3_client: Any, s3_endpoint: str) -> None:
    name = f"zonefs-test-unv-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    s3_client.create_bucket(Bucket=name)
    try:
        remote = open_remote(ZoneConfig.parse(f"s3://{name}", endpoint_url=s3_endpoint))
        assert await remote.bucket_versioning() == "unversioned"
        await remote.put_bytes("k", b"1", {})
        await remote.put_bytes("k", b"2", {})
        versions, _ = await all_versions(remote, "k")
        assert [(v.version_id, v.size) for v in versions] == [("null", 1)]
    finally:
        for v in s3_client.list_object_versions(Bucket=name).get("Versions", []):
            s3_client.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
        s3_client.delete_bucket(Bucket=name)


async def test_local_suspended_zone_keeps_older_versions(local_zone: ZoneConfig) -> None:
    """S3's suspended semantics (moto drops older versions here, so the local zone holds it)."""
    remote = LocalRemote(local_zone)
    kept = await remote.put_bytes("s", b"enabled-era", {})
    remote.set_versioning("suspended")
    assert await remote.bucket_versioning() == "suspended"
    await remote.put_bytes("s", b"null one", {})
    await remote.put_bytes("s", b"null two", {})  # replaces the null version
    versions, _ = await all_versions(remote, "s")
    assert [(v.version_id, v.size) for v in versions] == [("null", 8), (kept.version_id, 11)]
    await remote.delete("s")  # the marker replaces the null version
    versions, _ = await all_versions(remote, "s")
    assert [(v.version_id, v.is_delete_marker) for v in versions] == [
        ("null", True), (kept.version_id, False)]
    await remote.delete_version("s", "null")
    assert await remote.get_range("s", 0, 100) == b"enabled-era"


def test_local_zone_format_1_is_migrated(local_zone: ZoneConfig) -> None:
    """Zones written by the first format (version ids unique across keys) open and keep data."""
    import sqlite3

    remote = LocalRemote(local_zone)
    remote._put_bytes("a", b"kept", {}, None)
    remote.close()
    db = sqlite3.connect(os.path.join(local_zone.local_dir, "zone.sqlite"))
    db.executescript(
        "ALTER TABLE versions RENAME TO v2; DROP INDEX versions_id; DROP INDEX versions_latest;"
        " DROP INDEX versions_key; DROP INDEX versions_blob;"
        " CREATE TABLE versions (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,"
        " version_id TEXT NOT NULL UNIQUE, is_latest INTEGER NOT NULL,"
        " is_delete_marker INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,"
        " mtime REAL NOT NULL, metadata TEXT, content_type TEXT, blob TEXT);"
        " INSERT INTO versions SELECT * FROM v2; DROP TABLE v2;"
        " UPDATE meta SET value = '1' WHERE name = 'format';")
    db.close()
    remote = LocalRemote(local_zone)
    remote.set_versioning("suspended")
    remote._put_bytes("b", b"null", {}, None)
    remote._put_bytes("c", b"null too", {}, None)  # a second "null" id: format 2 allows it
    assert remote._get_range("a", 0, 10) == b"kept"
    assert remote._get_range("c", 0, 10) == b"null too"


# -- outages: bounded reads, multipart uploads on record --------------------------------------


class RecordingLog:
    """A `multipart_log` that remembers what it heard, in order (called from worker threads).
    Events are (what, key, upload id or "", intent); `sole` is kept by upload id."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, int]] = []
        self.sole: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._next = 0

    def intend(self, key: str) -> int:
        with self._lock:
            self._next += 1
            self.events.append(("intend", key, "", self._next))
            return self._next

    def started(self, key: str, upload_id: str, intent: int, *, sole: bool) -> None:
        with self._lock:
            self.events.append(("started", key, upload_id, intent))
            self.sole[upload_id] = sole

    def refused(self, intent: int) -> None:
        with self._lock:
            self.events.append(("refused", "", "", intent))

    def ended(self, key: str, upload_id: str) -> None:
        with self._lock:
            self.events.append(("ended", key, upload_id, 0))


def small_parts(remote: Remote) -> Remote:
    """`remote` with 5 MiB multipart thresholds and parts (S3's smallest), for quick tests."""
    boto = boto3_remote(remote)
    assert boto is not None
    boto.MULTIPART_THRESHOLD = boto.PART_SIZE = 5 * MiB
    return remote


async def test_multipart_log_hears_every_upload_begin_and_end(
    s3_zone: ZoneConfig, s3_client: Any, tmp_path: Path
) -> None:
    remote = small_parts(open_remote(s3_zone))
    heard = remote.multipart_log = RecordingLog()
    src = tmp_path / "src"
    src.write_bytes(os.urandom(12 * MiB))
    info = await remote.upload("big.bin", str(src), {})
    assert info.etag.endswith("-3")
    [intend, start, end] = heard.events
    assert intend == ("intend", "big.bin", "", 1)  # before the create, so before any id
    assert (start[0], start[1], start[3]) == ("started", "big.bin", 1)
    assert end[:3] == ("ended", "big.bin", start[2]) and start[2]
    assert heard.sole[start[2]]  # answered at the first attempt: the intent is settled
    # A cancelled upload is aborted, and its end is reported too.
    heard.events.clear()
    with pytest.raises(RemoteError, match="cancelled"):
        await remote.upload("cut.bin", str(src), {}, cancel=CancelAfter(4))
    assert [e[0] for e in heard.events] == ["intend", "started", "ended"]
    assert heard.events[1][2] == heard.events[2][2]
    assert s3_client.list_multipart_uploads(Bucket=s3_zone.bucket).get("Uploads", []) == []
    # Small files go in one PUT: nothing to report.
    heard.events.clear()
    (tmp_path / "small").write_bytes(b"x" * 1000)
    await remote.upload("small", str(tmp_path / "small"), {})
    assert heard.events == []


async def test_abort_multipart_removes_an_unfinished_upload(
    s3_zone: ZoneConfig, s3_client: Any
) -> None:
    remote = open_remote(s3_zone)
    upload_id = s3_client.create_multipart_upload(Bucket=s3_zone.bucket, Key="left")["UploadId"]
    s3_client.upload_part(Bucket=s3_zone.bucket, Key="left", UploadId=upload_id, PartNumber=1,
                          Body=b"a part a dead process sent")
    await remote.abort_multipart("left", upload_id)
    assert s3_client.list_multipart_uploads(Bucket=s3_zone.bucket).get("Uploads", []) == []
    await remote.abort_multipart("left", upload_id)  # gone already: fine


async def test_local_zone_has_no_multipart_to_abort(local_zone: ZoneConfig) -> None:
    await open_remote(local_zone).abort_multipart("any", "id")


async def test_stalled_store_fails_reads_within_io_timeout_then_at_once(
    s3_endpoint: str, start_moto: Any, tmp_path: Path
) -> None:
    """A store that accepts connections but never answers (SIGSTOP: what a hung server or a
    black-holed route looks like): the first read fails with a transient RemoteError naming
    io_timeout, instead of waiting for botocore's retries of 60 s reads. From then on the
    store is taken for not answering: every read and lookup fails at once, without a request,
    as for a refused connection, until the background check hears from the store again."""
    server = start_moto()
    client = s3_test_client(server.url)
    client.create_bucket(Bucket="stall")
    client.put_object(Bucket="stall", Key="obj", Body=b"bytes of obj")
    zone = ZoneConfig.parse("s3://stall", endpoint_url=server.url)
    remote = open_remote(zone, io_timeout=1.0)
    assert (await remote.head("obj")).size == 12  # a connection in the pool, before the stall
    assert remote.health.to_dict() == {"answering": True}
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RemoteError, match=r"did not answer within 1 s") as err:
            await remote.head("obj")
        assert err.value.transient
        # Generous: the point is that it did not wait for botocore (3 attempts of up to 60 s).
        assert time.monotonic() - started < 30
        state = remote.health.to_dict()
        assert state["answering"] is False and state["since"]
        sent = sum(remote.requests.counts.values())
        calls = {
            "head": lambda: remote.head("obj"),
            "list": lambda: remote.list(""),
            "get_range": lambda: remote.get_range("obj", 0, 5),
            "download": lambda: remote.download("obj", str(tmp_path / "dl")),
        }
        for name, call in calls.items():
            with pytest.raises(RemoteError, match=r"has not answered since") as err:
                await call()
            assert err.value.transient, name
        assert sum(remote.requests.counts.values()) == sent  # none of them asked the store
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    # The store is back: the background check notices, and reads work again (abandoned
    # threads end on their own).
    async with trio.open_nursery() as nursery:
        await nursery.start(remote.health.watch, remote.check_answers)
        with trio.fail_after(30):
            while not remote.health.to_dict()["answering"]:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert (await remote.head("obj")).size == 12
    assert await remote.get_range("obj", 0, 5) == b"bytes"


async def test_an_answer_of_the_store_ends_its_stall(local_zone: ZoneConfig) -> None:
    """Any answer of the store, an error of its own included (a missing key), means it
    answers again; a transient failure does not."""
    remote = open_remote(local_zone, io_timeout=5.0)
    remote.health.timed_out(5.0)
    with pytest.raises(RemoteError, match="has not answered since"):
        await remote.head("missing")
    remote.health.observe(RemoteError("connection refused", transient=True))
    assert remote.health.to_dict()["answering"] is False
    await remote.put_bytes("k", b"v", {}, None)  # writes are never held back
    assert remote.health.to_dict() == {"answering": True}
    remote.health.timed_out(5.0)
    remote.health.observe(NotFound("k2"))
    assert remote.health.to_dict() == {"answering": True}
