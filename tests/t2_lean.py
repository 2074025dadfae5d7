"""The lean request path (remote/lean.py over remote/signed.py), against the tests' S3 endpoint.

Every lean read must give exactly what the boto3 path gives on the same objects: each test
runs the same calls through two remotes of one zone, one with the lean path and one with it
switched off, and compares values and errors. A moto server that checks signatures shows that
the requests signed here are accepted (odd keys, temporary credentials) and that wrong keys
fail cleanly; small local HTTP servers play a failing, redirecting or non-S3 store.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from conftest import s3_test_client

from zonefs.config import MountOptions, ZoneConfig, parse_mount_options
from zonefs.errors import AccessDenied, NotFound, PreconditionFailed, RemoteError, ZonefsError
from zonefs.remote import ListPage, open_remote
from zonefs.remote.s3 import LEAN_ENV, S3Remote
from zonefs.remote.signed import (
    Credentials,
    SignedTransport,
    Target,
    canonical_query,
)
from zonefs.zones import parse_zone

MiB = 1 << 20

#: Keys that need care in a URL, a canonical request or a listing answer.
ODD_KEYS = [
    "plain.txt",
    "with space/a b.txt",
    "plus+sign+",
    "per%cent%20x",
    "tilde~/~x",
    "unicodé/ünï ☃.txt",
    "deep/a/b/c/d/e/f/g/h.txt",
    "punct !$&'()*,;=:@[].txt",
    "query?x=1#frag",
    "back\\slash",
]


def lean_remote(zone: ZoneConfig, **kwargs: Any) -> S3Remote:
    remote = open_remote(zone, **kwargs)
    assert isinstance(remote, S3Remote)
    return remote


@pytest.fixture
def pair(s3_zone: ZoneConfig) -> Iterator[tuple[S3Remote, S3Remote]]:
    """(lean, boto3-only) remotes of one zone."""
    lean = lean_remote(s3_zone)
    boto = lean_remote(s3_zone, lean_requests=False)
    yield lean, boto
    lean.close()


def assert_lean_used(remote: S3Remote) -> None:
    """The lean path is set up, sent requests, and handed none to boto3."""
    reads = remote._lean_reads()
    assert reads is not None, "the lean path is off"
    assert reads.transport.opened >= 1
    assert remote.lean_fallbacks == {}, remote.lean_fallbacks


async def outcome(call: Callable[[], Awaitable[Any]]) -> Any:
    """The value of `call()`, or its zonefs error as (type, message, transient)."""
    try:
        return await call()
    except ZonefsError as exc:
        return (type(exc), str(exc), getattr(exc, "transient", False))


async def same(lean: S3Remote, boto: S3Remote, method: str, *args: Any, **kwargs: Any) -> Any:
    """`method(*args)` on both remotes gives the same value or the same error; returns it."""
    got = await outcome(lambda: getattr(lean, method)(*args, **kwargs))
    want = await outcome(lambda: getattr(boto, method)(*args, **kwargs))
    assert got == want, f"{method}{args}: lean {got!r} != boto3 {want!r}"
    return got


async def same_download(lean: S3Remote, boto: S3Remote, tmp_path: Path, key: str,
                        **kwargs: Any) -> Any:
    """A whole GET into a file on both: same info (or error) and same bytes."""
    a, b = tmp_path / "lean.out", tmp_path / "boto.out"
    got = await outcome(lambda: lean.download(key, str(a), **kwargs))
    want = await outcome(lambda: boto.download(key, str(b), **kwargs))
    assert got == want, f"download {key!r}: lean {got!r} != boto3 {want!r}"
    if not isinstance(got, tuple):
        assert a.read_bytes() == b.read_bytes()
    return got


# -- values: the same as boto3's --------------------------------------------------------------


async def test_head_and_gets_of_odd_keys_match_boto3(
    pair: tuple[S3Remote, S3Remote], tmp_path: Path
) -> None:
    lean, boto = pair
    for n, key in enumerate(ODD_KEYS):
        body = f"body of {key}".encode() * (n + 1)
        meta = {"mode": "33188", "uid": "1000", "gid": "100", "mtime": "1.250000000",
                "zonefs-sha256": "ab" * 32}
        await boto.put_bytes(key, body, meta, "text/x-zonefs" if n % 2 else None)
        info = await same(lean, boto, "head", key)
        assert info.size == len(body) and info.metadata == meta and info.version_id
        assert await same(lean, boto, "get_range", key, 0, 5) == body[:5]
        assert await same(lean, boto, "get_range", key, 3, 10_000) == body[3:]
        assert await same(lean, boto, "get_range", key, len(body), 5) == b""
        assert await same(lean, boto, "get_range", key, len(body) + 100, 5) == b""
        got = await same_download(lean, boto, tmp_path, key)
        assert got.size == len(body) and got.metadata == meta
    await boto.put_bytes("empty", b"", {})
    assert await same(lean, boto, "get_range", "empty", 0, 10) == b""
    assert (await same_download(lean, boto, tmp_path, "empty")).size == 0
    assert_lean_used(lean)


async def test_listing_pages_with_delimiter_match_boto3(pair: tuple[S3Remote, S3Remote]) -> None:
    lean, boto = pair
    keys = ["l/a.txt", "l/b/1", "l/b/2", "l/c d/", "l/c d/x", "l/e+f", "l/g%h/i", "l/j~k",
            "l/ünï", "l/m/n/o", "l/p.txt", "l/q/", "l/r"] + [f"l/{k}" for k in ODD_KEYS]
    for key in keys:
        await boto.put_bytes(key, key.encode(), {})
    await boto.delete("l/r")  # a delete marker: not listed
    for delimiter in ("/", None):
        for max_keys in (2, 3, 1000):
            token = None
            pages: list[ListPage] = []
            while True:
                page = await same(lean, boto, "list", "l/", delimiter, token, max_keys)
                assert len(page.objects) + len(page.prefixes) <= max_keys
                pages.append(page)
                token = page.next_token
                if token is None:
                    break
                assert len(pages) < 50
            listed = [o.key for p in pages for o in p.objects]
            prefixes = [x for p in pages for x in p.prefixes]
            if delimiter:
                assert "l/b/" in prefixes and "l/c d/" in prefixes and "l/m/" in prefixes
                assert "l/a.txt" in listed and "l/b/1" not in listed
                if max_keys == 2:
                    assert any(p.prefixes for p in pages[1:])  # prefixes on later pages too
            else:
                assert sorted(listed) == sorted(k for k in keys if k != "l/r") and not prefixes
    await same(lean, boto, "list", "nothing/", "/", None, 10)
    assert_lean_used(lean)


async def test_prefix_zone_listing_and_root_marker(
    s3_endpoint: str, bucket: str, s3_client: Any
) -> None:
    s3_client.put_object(Bucket=bucket, Key="z o/", Body=b"")  # the zone root's marker
    for key in ("z o/in.txt", "z o/sub dir/x", "z o+/not-in", "outside"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    zone = ZoneConfig.parse(f"s3://{bucket}/z o", endpoint_url=s3_endpoint)
    lean, boto = lean_remote(zone), lean_remote(zone, lean_requests=False)
    page = await same(lean, boto, "list", "", "/", None, 100)
    assert [o.key for o in page.objects] == ["in.txt"] and page.prefixes == ["sub dir/"]
    assert (await same(lean, boto, "head", "sub dir/x")).size == 1
    assert_lean_used(lean)


async def test_versions_and_if_match_match_boto3(
    pair: tuple[S3Remote, S3Remote], tmp_path: Path
) -> None:
    lean, boto = pair
    v1 = await boto.put_bytes("v k+1", b"one", {"n": "1"})
    v2 = await boto.put_bytes("v k+1", b"two!", {"n": "2"})
    old = await same(lean, boto, "head", "v k+1", v1.version_id)
    assert (old.size, old.metadata, old.version_id) == (3, {"n": "1"}, v1.version_id)
    assert (await same(lean, boto, "head", "v k+1")).version_id == v2.version_id
    assert await same(lean, boto, "get_range", "v k+1", 0, 10, v1.version_id) == b"one"
    got = await same_download(lean, boto, tmp_path, "v k+1", version_id=v1.version_id)
    assert got.version_id == v1.version_id
    # If-Match, as reads of an opened version use it: the current ETag reads, an old one fails.
    assert await same(lean, boto, "get_range", "v k+1", 0, 10, None, v2.etag) == b"two!"
    failed = await same(lean, boto, "get_range", "v k+1", 0, 10, None, v1.etag)
    assert failed[0] is PreconditionFailed
    failed = await same_download(lean, boto, tmp_path, "v k+1", if_match=v1.etag)
    assert failed[0] is PreconditionFailed
    assert (await same_download(lean, boto, tmp_path, "v k+1", if_match=v2.etag)).size == 4
    assert_lean_used(lean)


async def test_missing_keys_and_delete_markers_match_boto3(
    pair: tuple[S3Remote, S3Remote], tmp_path: Path
) -> None:
    lean, boto = pair
    for key in ("never was", "deep/never/was+"):
        assert (await same(lean, boto, "head", key))[0] is NotFound
        assert (await same(lean, boto, "get_range", key, 0, 10))[0] is NotFound
        assert (await same_download(lean, boto, tmp_path, key))[0] is NotFound
    await boto.put_bytes("gone", b"x", {})
    await boto.delete("gone")
    assert (await same(lean, boto, "head", "gone"))[0] is NotFound
    assert (await same(lean, boto, "get_range", "gone", 0, 1))[0] is NotFound
    marker = [v async for page in boto.iter_versions("gone", None) for v in page.versions][0]
    assert marker.is_delete_marker
    assert (await same(lean, boto, "head", "gone", marker.version_id))[0] is NotFound
    assert lean._lean_reads() is not None


async def test_missing_bucket_matches_boto3(s3_endpoint: str, tmp_path: Path) -> None:
    zone = ZoneConfig.parse("s3://zonefs-no-such-bucket-lean", endpoint_url=s3_endpoint)
    lean, boto = lean_remote(zone), lean_remote(zone, lean_requests=False)
    assert (await same(lean, boto, "head", "k"))[0] is NotFound  # a HEAD answer has no code
    listed = await same(lean, boto, "list", "", "/", None, 10)
    assert "does not exist" in listed[1]
    await same(lean, boto, "get_range", "k", 0, 10)
    await same_download(lean, boto, tmp_path, "k")


async def test_large_objects_take_boto3s_path(
    pair: tuple[S3Remote, S3Remote], tmp_path: Path
) -> None:
    lean, boto = pair
    data = os.urandom(9 * MiB)
    (tmp_path / "big").write_bytes(data)
    await boto.upload("big", str(tmp_path / "big"), {"k": "v"})
    got = await same_download(lean, boto, tmp_path, "big")
    assert got.size == len(data) and (tmp_path / "lean.out").read_bytes() == data
    assert await same(lean, boto, "get_range", "big", MiB, 9 * MiB) == data[MiB:]
    assert await same(lean, boto, "get_range", "big", 5, 8 * MiB) == data[5:5 + 8 * MiB]
    assert lean.lean_fallbacks == {}  # by design, not as answers it did not understand


# -- signatures a verifying store accepts --------------------------------------------------------


def test_signature_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same request signed here and by botocore's own S3 SigV4 signer."""
    for token in (None, "IQoJb3JpZ2luX2VjEPT//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token="):
        creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
        for netloc, base in (("127.0.0.1:9000", "/bkt/"), ("bkt.s3.example.org", "/")):
            target = Target.from_urls(f"http://{netloc}{base}probe", "probe",
                                      f"http://{netloc}{base.rstrip('/') or '/'}", "eu-west-3")
            transport = SignedTransport(target, lambda creds=creds: creds)
            for key in ODD_KEYS:
                for method, params in (("HEAD", []), ("GET", [("versionId", "3/L4kq+tJl")])):
                    path = target.object_path("pre fix/" + key)
                    query = canonical_query(params)
                    mine = transport.sign(method, path, query, creds, now=1796183588.0)
                    theirs = botocore_signature(method, f"http://{netloc}{path}", query, creds,
                                                "eu-west-3", mine["X-Amz-Date"], monkeypatch)
                    assert mine["Authorization"] == theirs, key
            query = canonical_query([("list-type", "2"), ("prefix", "a b+c/ü"),
                                     ("delimiter", "/"), ("continuation-token", "x/y+z=="),
                                     ("max-keys", "1000"), ("encoding-type", "url")])
            mine = transport.sign("GET", target.bucket_path, query, creds, now=1796183588.0)
            theirs = botocore_signature("GET", f"http://{netloc}{target.bucket_path}", query,
                                        creds, "eu-west-3", mine["X-Amz-Date"], monkeypatch)
            assert mine["Authorization"] == theirs


def botocore_signature(method: str, url: str, query: str, creds: Credentials, region: str,
                       amz_date: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Authorization header botocore's S3 signer gives the request at `amz_date`."""
    when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    request = AWSRequest(method=method, url=f"{url}?{query}" if query else url)
    signer = S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token),
                         "s3", region)
    signer.add_auth(request)
    return str(request.headers["Authorization"])


@pytest.fixture
def verifying_moto(
    start_moto: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that checks every signature, and an IAM user's keys that may do all."""
    if os.environ.get("ZONEFS_TEST_S3_ENDPOINT"):
        pytest.skip("needs the tests' own moto (it creates IAM users)")
    use_keys(monkeypatch, {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    # The first few requests go unauthenticated: enough to create the user and its key.
    server = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="4")
    iam = boto3.session.Session().client("iam", endpoint_url=server.url, region_name="us-east-1")
    iam.create_user(UserName="zonefs")
    iam.put_user_policy(UserName="zonefs", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="zonefs")["AccessKey"]
    yield server.url, {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                       "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def use_keys(monkeypatch: pytest.MonkeyPatch, keys: dict[str, str]) -> None:
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for name, value in keys.items():
        monkeypatch.setenv(name, value)


async def test_a_verifying_store_accepts_the_signatures(
    verifying_moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url, keys = verifying_moto
    use_keys(monkeypatch, keys)
    client = s3_test_client(url)
    client.create_bucket(Bucket="signed")
    for key in ODD_KEYS:
        client.put_object(Bucket="signed", Key="p/" + key, Body=key.encode(),
                          Metadata={"mode": "33188"})
    zone = ZoneConfig.parse("s3://signed/p", endpoint_url=url)
    lean, boto = lean_remote(zone), lean_remote(zone, lean_requests=False)
    for key in ODD_KEYS:
        assert (await same(lean, boto, "head", key)).metadata == {"mode": "33188"}
        assert await same(lean, boto, "get_range", key, 0, 100) == key.encode()
        await same_download(lean, boto, tmp_path, key)
    page = await same(lean, boto, "list", "", None, None, 1000)
    assert sorted(o.key for o in page.objects) == sorted(ODD_KEYS)
    assert_lean_used(lean)

    # Temporary credentials: the session token is signed and sent.
    sts = boto3.session.Session().client("sts", endpoint_url=url, region_name="us-east-1")
    iam = boto3.session.Session().client("iam", endpoint_url=url, region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="reader", AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName="reader", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    temp = sts.assume_role(RoleArn=role["Role"]["Arn"],
                           RoleSessionName="zonefs-test")["Credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", temp["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", temp["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", temp["SessionToken"])
    with_token = lean_remote(zone)
    assert (await with_token.head(ODD_KEYS[1])).size == len(ODD_KEYS[1].encode())
    assert (await with_token.list("", "/")).prefixes
    assert_lean_used(with_token)


@pytest.mark.parametrize("wrong", ["secret", "key id"])
async def test_wrong_credentials_are_access_denied_without_the_secret(
    verifying_moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, wrong: str,
) -> None:
    url, keys = verifying_moto
    use_keys(monkeypatch, keys)
    s3_test_client(url).create_bucket(Bucket="denied")
    s3_test_client(url).put_object(Bucket="denied", Key="k", Body=b"v")
    secret = "zonefs-wrong-secret-value"
    if wrong == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAZONEFSWRONGKEY00")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    zone = ZoneConfig.parse("s3://denied", endpoint_url=url)
    lean, boto = lean_remote(zone), lean_remote(zone, lean_requests=False)
    for method, args in (("head", ("k",)), ("list", ("", "/", None, 10)),
                         ("get_range", ("k", 0, 10))):
        err = await same(lean, boto, method, *args)
        assert err[0] is AccessDenied and secret not in err[1], err
        assert "AKIAZONEFSWRONGKEY00" not in err[1] and keys["AWS_SECRET_ACCESS_KEY"] not in err[1]
    err = await same_download(lean, boto, tmp_path, "k")
    assert err[0] is AccessDenied and secret not in err[1]
    # A refused signature is retried by boto3 (a store may canonicalise unlike S3); a refused
    # key id is plainly denied.
    assert set(lean.lean_fallbacks) <= {"signature refused"}


# -- stores that fail, stall or answer otherwise ------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_endpoint_is_a_quick_transient_error(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    zone = ZoneConfig.parse("s3://some-bucket", endpoint_url=endpoint)
    lean, boto = lean_remote(zone, io_timeout=5), lean_remote(zone, lean_requests=False)
    started = time.monotonic()
    err = await same(lean, boto, "head", "k")
    assert err == (RemoteError, f"cannot reach {endpoint}: Connection refused", True)
    err = await outcome(lambda: lean.list(""))
    assert err[0] is RemoteError and err[2] and "cannot reach" in err[1]
    assert time.monotonic() - started < 15  # three attempts each, with backoff below 3 s
    assert lean._lean_reads() is not None and lean.lean_fallbacks == {}


async def test_a_stopped_store_fails_fast_and_a_restarted_one_works(
    start_moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_moto()
    client = s3_test_client(server.url)
    client.create_bucket(Bucket="stop")
    client.put_object(Bucket="stop", Key="k", Body=b"bytes")
    zone = ZoneConfig.parse("s3://stop", endpoint_url=server.url)
    remote = lean_remote(zone, io_timeout=5)
    assert (await remote.head("k")).size == 5  # a kept-alive connection in the pool
    server.stop()
    started = time.monotonic()
    for call in (lambda: remote.head("k"), lambda: remote.get_range("k", 0, 2),
                 lambda: remote.list("")):
        err = await outcome(call)
        assert err[0] is RemoteError and err[2] and "cannot reach" in err[1], err
    assert time.monotonic() - started < 15
    assert remote.lean_fallbacks == {}


class FakeStore(http.server.BaseHTTPRequestHandler):
    """A store on loopback whose answers a test scripts (class attributes, per server)."""

    protocol_version = "HTTP/1.1"
    answers: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[str] = []
    reset_first = 0  # close this many connections without an answer first

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        cls = type(self)
        cls.seen.append(f"{self.command} {self.path}")
        if cls.reset_first > 0:
            cls.reset_first -= 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        status, headers, body = cls.answers[min(len(cls.seen), len(cls.answers)) - 1]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeStore]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    handler = type("Store", (FakeStore,), {"answers": [], "seen": [], "reset_first": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler
    server.shutdown()
    server.server_close()
    thread.join()


HEAD_OK = (200, {"ETag": '"e1"', "Last-Modified": "Wed, 02 Dec 2026 03:53:08 GMT",
                 "x-amz-version-id": "v1", "X-Amz-Meta-Mode": "33188",
                 "Content-Type": "text/plain"}, b"")


def fake_zone(store: type[FakeStore]) -> ZoneConfig:
    return ZoneConfig.parse("s3://fake", endpoint_url=store.url)  # type: ignore[attr-defined]


async def test_5xx_answers_are_retried_then_transient(fake_store: type[FakeStore]) -> None:
    fake_store.answers = [(503, {}, b"<Error><Code>SlowDown</Code></Error>")] * 3
    remote = lean_remote(fake_zone(fake_store), io_timeout=10)
    err = await outcome(lambda: remote.get_range("k", 0, 4))
    assert err == (RemoteError, "s3://fake/k: the store is busy or failing (SlowDown)", True)
    assert len(fake_store.seen) == 3 and remote.lean_fallbacks == {}
    # Two failures, then an answer: the third attempt gives it.
    fake_store.seen.clear()
    fake_store.answers = [(500, {}, b""), (502, {}, b""), HEAD_OK]
    info = await remote.head("k")
    assert (info.etag, info.version_id, info.metadata, info.content_type) == (
        "e1", "v1", {"mode": "33188"}, "text/plain")
    assert info.mtime == 1796183588.0 and len(fake_store.seen) == 3


async def test_a_reset_connection_is_tried_again(fake_store: type[FakeStore]) -> None:
    fake_store.answers = [HEAD_OK]
    fake_store.reset_first = 1
    remote = lean_remote(fake_zone(fake_store))
    assert (await remote.head("k")).etag == "e1"
    assert len(fake_store.seen) == 2 and remote.lean_fallbacks == {}


async def test_connections_are_kept_alive(fake_store: type[FakeStore]) -> None:
    """One connection for a run of answers, errors included (moto closes each one; this
    store keeps them open as S3 does)."""
    missing = (404, {"Content-Type": "application/xml"},
               b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>")
    fake_store.answers = [HEAD_OK, missing, (404, {}, b""), HEAD_OK] * 10
    remote = lean_remote(fake_zone(fake_store))
    for _ in range(10):
        assert (await remote.head("k")).etag == "e1"
        with pytest.raises(NotFound):
            await remote.get_range("missing", 0, 1)
        with pytest.raises(NotFound):
            await remote.head("missing")
        assert (await remote.get_range("k", 0, 1)) == b""  # HEAD_OK has no body
    reads = remote._lean_reads()
    assert reads is not None and reads.transport.opened == 1
    assert len(fake_store.seen) == 40


LISTING = (200, {"Content-Type": "application/xml"}, (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>fake</Name>'
    b"<Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter>"
    b"<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated><Contents>"
    b"<Key>a+b%2Bc%C3%BC</Key><LastModified>2026-12-02T03:53:08.123Z</LastModified>"
    b"<ETag>&quot;e1&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass>"
    b"</Contents><CommonPrefixes><Prefix>d%20e/</Prefix></CommonPrefixes>"
    b"</ListBucketResult>"))


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ((301, {"Location": "http://127.0.0.1:1/elsewhere"}, b""), "redirect"),
        ((307, {"Location": "http://127.0.0.1:1/elsewhere"}, b""), "redirect"),
        ((200, {}, b"this is not XML"), "xml"),
        ((200, {}, b"<SomethingElse/>"), "xml"),
        ((400, {"x-amz-bucket-region": "eu-west-3"}, b""), "redirect"),
        ((400, {}, b"<Error><Code>AuthorizationHeaderMalformed</Code></Error>"), "redirect"),
        ((400, {}, b"<Error><Code>InvalidArgument</Code></Error>"), "status"),
        ((501, {}, b"<Error><Code>NotImplemented</Code></Error>"), "status"),
        ((403, {}, b"<Error><Code>SignatureDoesNotMatch</Code></Error>"), "signature refused"),
    ],
)
async def test_answers_not_understood_go_to_boto3(
    fake_store: type[FakeStore], answer: tuple[int, dict[str, str], bytes], kind: str
) -> None:
    """A lean listing that gets an answer it does not understand is made again by boto3,
    whose answer (here a plain listing) is the result, logged once by kind."""
    fake_store.answers = [answer, LISTING]
    remote = lean_remote(fake_zone(fake_store), io_timeout=10)
    page = await remote.list("")
    assert remote.lean_fallbacks == {kind: 1} and len(fake_store.seen) == 2
    assert [(o.key, o.size, o.etag) for o in page.objects] == [("a b+cü", 12, "e1")]
    assert page.prefixes == ["d e/"] and page.next_token is None
    fake_store.answers = [LISTING]
    fake_store.seen.clear()
    assert await lean_remote(fake_zone(fake_store), lean_requests=False).list("") == page
    if kind == "redirect":  # the bucket is elsewhere: the lean path ends for this remote
        assert remote._lean_reads() is None
    fake_store.seen.clear()
    assert await lean_remote(fake_zone(fake_store)).list("") == page  # the listing itself


# -- the switch ------------------------------------------------------------------------------


async def test_the_switch_turns_the_lean_path_off(
    s3_zone: ZoneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert lean_remote(s3_zone)._lean_reads() is not None
    off = lean_remote(s3_zone, lean_requests=False)
    assert off._lean_reads() is None
    await off.put_bytes("k", b"v", {})
    assert (await off.head("k")).size == 1 and (await off.list("")).objects
    monkeypatch.setenv(LEAN_ENV, "off")
    assert lean_remote(s3_zone)._lean_reads() is None
    monkeypatch.setenv(LEAN_ENV, "on")
    assert lean_remote(s3_zone)._lean_reads() is not None
    assert parse_mount_options(["lean_requests=off"]).lean_requests is False
    assert MountOptions().lean_requests is True
    with pytest.raises(Exception, match="lean_requests= takes on|off"):
        parse_mount_options(["lean_requests=maybe"])
    named = parse_zone("z", {"url": "s3://bkt", "lean_requests": False}, "zones.toml")
    assert named.options == ["lean_requests=off"]
