"""The lean request path (remote/lean/), against the tests' S3 endpoint.

Every lean read must give exactly what the boto3 path gives on the same objects: each test
runs the same calls through two remotes of one zone, one with the lean path and one with it
switched off, and compares values and errors. A moto server that checks signatures shows that
the requests signed here are accepted (odd keys, temporary credentials) and that wrong keys
fail cleanly; small local HTTP servers play a failing, redirecting or non-S3 store.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import http.server
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import pytest
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from conftest import (
    QUIRK_CUT_PUT_STORED,
    empty_bucket,
    on_own_moto,
    s3_test_client,
    seaweedfs_quirk,
)

from zonefs.common.config import MountOptions, ZoneConfig, parse_mount_options
from zonefs.common.errors import (
    AccessDenied,
    AccessRefused,
    NotFound,
    PreconditionFailed,
    Refused,
    RemoteError,
    StoreFailing,
    ZonefsError,
)
from zonefs.common.zones import parse_zone
from zonefs.remote import ListPage, ObjectInfo, Remote, open_remote
from zonefs.remote.lean.remote import LEAN_ENV, LeanRemote
from zonefs.remote.lean.transport import (
    Credentials,
    HandSigner,
    Target,
    canonical_query,
)
from zonefs.remote.probe import probe
from zonefs.remote.s3 import S3Remote

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


#: (lean, boto3-only) remotes.
Pair = tuple[LeanRemote, S3Remote]


@pytest.fixture(autouse=True)
def lean_path_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """This file tests the lean path itself: on, even in a run that turns it off elsewhere."""
    monkeypatch.delenv(LEAN_ENV, raising=False)


def lean_remote(zone: ZoneConfig, **kwargs: Any) -> Any:
    """The lean remote of `zone` (the plain boto3 one with `lean_requests=False`)."""
    remote = open_remote(zone, **kwargs)
    assert isinstance(remote, LeanRemote if kwargs.get("lean_requests", True) else S3Remote)
    return remote


@pytest.fixture
def pair(s3_zone: ZoneConfig) -> Iterator[Pair]:
    """(lean, boto3-only) remotes of one zone."""
    lean = lean_remote(s3_zone)
    boto = lean_remote(s3_zone, lean_requests=False)
    yield lean, boto
    lean.close()


def assert_lean_used(remote: LeanRemote) -> None:
    """The lean path is set up, sent requests, and handed none to boto3."""
    reads = remote._reads()
    assert reads is not None, "the lean path is off"
    assert reads.transport.opened >= 1
    assert remote.lean_fallbacks == {}, remote.lean_fallbacks


async def outcome(call: Callable[[], Awaitable[Any]]) -> Any:
    """The value of `call()`, or its zonefs error as (type, message, transient)."""
    try:
        return await call()
    except ZonefsError as exc:
        return (type(exc), str(exc), getattr(exc, "transient", False))


async def same(lean: Remote, boto: Remote, method: str, *args: Any, **kwargs: Any) -> Any:
    """`method(*args)` on both remotes gives the same value or the same error; returns it."""
    got = await outcome(lambda: getattr(lean, method)(*args, **kwargs))
    want = await outcome(lambda: getattr(boto, method)(*args, **kwargs))
    assert got == want, f"{method}{args}: lean {got!r} != boto3 {want!r}"
    return got


async def same_download(lean: Remote, boto: Remote, tmp_path: Path, key: str,
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
    pair: Pair, tmp_path: Path
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


async def test_listing_pages_with_delimiter_match_boto3(pair: Pair) -> None:
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
                expected = sorted(k for k in keys if k != "l/r")
                assert not prefixes and len(listed) == len(expected)  # every key, once
                if on_own_moto():
                    assert sorted(listed) == expected
                else:  # some stores rewrite odd names (SeaweedFS: `back\\slash`, `a//b`)
                    assert set(expected) - {f"l/{k}" for k in ODD_KEYS} <= set(listed)
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
    pair: Pair, tmp_path: Path
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
    pair: Pair, tmp_path: Path
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
    assert lean._reads() is not None


async def test_missing_bucket_matches_boto3(s3_endpoint: str, tmp_path: Path) -> None:
    zone = ZoneConfig.parse("s3://zonefs-no-such-bucket-lean", endpoint_url=s3_endpoint)
    lean, boto = lean_remote(zone), lean_remote(zone, lean_requests=False)
    assert (await same(lean, boto, "head", "k"))[0] is NotFound  # a HEAD answer has no code
    listed = await same(lean, boto, "list", "", "/", None, 10)
    assert "does not exist" in listed[1]
    await same(lean, boto, "get_range", "k", 0, 10)
    await same_download(lean, boto, tmp_path, "k")


async def test_large_objects_take_boto3s_path(
    pair: Pair, tmp_path: Path
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


async def test_a_download_known_to_be_large_never_starts_on_the_lean_path(
    fake_store: type[FakeStore], tmp_path: Path
) -> None:
    """A whole GET of an object seen (by a HEAD, a listing or a GET) to be larger than the
    lean limit goes to boto3 at once, instead of a lean GET stopped at its headers first."""
    big = os.urandom(9 * MiB)
    fake_store.answers = [(200, dict(HEAD_OK[1]), big)]  # HEADs and GETs alike
    remote = lean_remote(fake_zone(fake_store))

    def agents() -> list[str]:
        sent = [str(header(r, "user-agent")).split("/")[0] for r in fake_store.requests]
        fake_store.requests.clear()
        return sent

    # Not known yet: the lean GET stops at its headers, and boto3 sends it.
    assert (await remote.download("a", str(tmp_path / "a"))).size == len(big)
    assert (tmp_path / "a").read_bytes() == big and agents() == ["zonefs", "Boto3"]
    # Known now, by that GET: boto3 alone.
    assert (await remote.download("a", str(tmp_path / "a"))).size == len(big)
    assert agents() == ["Boto3"]
    # Known by a HEAD.
    assert (await remote.head("b")).size == len(big)
    assert (await remote.download("b", str(tmp_path / "b"))).size == len(big)
    assert agents() == ["zonefs", "Boto3"]
    assert remote.lean_fallbacks == {}  # by design, not as answers it did not understand


# -- signatures a verifying store accepts --------------------------------------------------------


def test_signature_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same request signed here and by botocore's own S3 SigV4 signer."""
    for token in (None, "IQoJb3JpZ2luX2VjEPT//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token="):
        creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
        for netloc, base in (("127.0.0.1:9000", "/bkt/"), ("bkt.s3.example.org", "/")):
            target = Target.from_urls(f"http://{netloc}{base}probe", "probe",
                                      f"http://{netloc}{base.rstrip('/') or '/'}", "eu-west-3")
            signer = HandSigner(target)
            for key in ODD_KEYS:
                for method, params in (("HEAD", []), ("GET", [("versionId", "3/L4kq+tJl")])):
                    path = target.object_path("pre fix/" + key)
                    query = canonical_query(params)
                    mine = signer.sign(method, path, query, creds, now=1796183588.0)
                    theirs = botocore_signature(method, f"http://{netloc}{path}", query, creds,
                                                "eu-west-3", mine["X-Amz-Date"], monkeypatch)
                    assert mine["Authorization"] == theirs, key
            query = canonical_query([("list-type", "2"), ("prefix", "a b+c/ü"),
                                     ("delimiter", "/"), ("continuation-token", "x/y+z=="),
                                     ("max-keys", "1000"), ("encoding-type", "url")])
            mine = signer.sign("GET", target.bucket_path, query, creds, now=1796183588.0)
            theirs = botocore_signature("GET", f"http://{netloc}{target.bucket_path}", query,
                                        creds, "eu-west-3", mine["X-Amz-Date"], monkeypatch)
            assert mine["Authorization"] == theirs


def botocore_signature(method: str, url: str, query: str, creds: Credentials, region: str,
                       amz_date: str, monkeypatch: pytest.MonkeyPatch,
                       headers: dict[str, str] | None = None, body: bytes | None = None,
                       context: dict[str, Any] | None = None) -> str:
    """The Authorization header botocore's S3 signer gives the request at `amz_date`."""
    when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: when)
    request = AWSRequest(method=method, url=f"{url}?{query}" if query else url,
                         headers=headers, data=body)
    request.context.update(context or {})
    signer = S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token),
                         "s3", region)
    signer.add_auth(request)
    return str(request.headers["Authorization"])


def test_write_signature_is_botocores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PUT with a body, metadata, conditions and a checksum (signed headers and payload
    hash), and one with UNSIGNED-PAYLOAD, signed here and by botocore."""
    body = b"the body"
    signed = {"x-amz-meta-mode": "33188", "x-amz-meta-odd": " two  spaces ", "if-match": '"e"',
              "content-type": "text/plain; charset=utf-8", "if-none-match": "*",
              "x-amz-checksum-sha256": "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
              "x-amz-sdk-checksum-algorithm": "SHA256",
              "x-amz-copy-source": "bkt/a%20b?versionId=v+1/=",
              "x-amz-metadata-directive": "REPLACE"}
    for token in (None, "IQoJb3JpZ2luX2VjEPT//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token="):
        creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
        target = Target.from_urls("http://127.0.0.1:9000/bkt/probe", "probe",
                                  "http://127.0.0.1:9000/bkt", "eu-west-3")
        signer = HandSigner(target)
        for key in ODD_KEYS:
            path = target.object_path(key)
            for payload, context in (
                    (hashlib.sha256(body).hexdigest(), None),
                    ("UNSIGNED-PAYLOAD",
                     {"client_config": Config(s3={"payload_signing_enabled": False})})):
                mine = signer.sign("PUT", path, "", creds, now=1796183588.0,
                                      payload=payload, signed=signed)
                theirs = botocore_signature("PUT", f"http://127.0.0.1:9000{path}", "", creds,
                                            "eu-west-3", mine["X-Amz-Date"], monkeypatch,
                                            headers=dict(signed), body=body, context=context)
                assert mine["Authorization"] == theirs, key
            mine = signer.sign("DELETE", path, "versionId=v%2B1", creds, now=1796183588.0)
            theirs = botocore_signature("DELETE", f"http://127.0.0.1:9000{path}",
                                        "versionId=v%2B1", creds, "eu-west-3",
                                        mine["X-Amz-Date"], monkeypatch)
            assert mine["Authorization"] == theirs, key


@pytest.fixture
def verifying_moto(
    start_moto: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server that checks every signature, and an IAM user's keys that may do all."""
    if not on_own_moto():
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
    assert (await with_token.put_bytes("temp key", b"v", {"m": "1"}, "text/x")).size == 1
    assert (await with_token.copy("temp key", "temp copy", {"m": "2"})).metadata == {"m": "2"}
    await with_token.delete("temp key")
    assert_lean_writes_used(with_token)


async def test_a_verifying_store_accepts_the_write_signatures(
    verifying_moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url, keys = verifying_moto
    use_keys(monkeypatch, keys)
    client = s3_test_client(url)
    client.create_bucket(Bucket="written")
    client.put_bucket_versioning(Bucket="written",
                                 VersioningConfiguration={"Status": "Enabled"})
    lean = lean_remote(ZoneConfig.parse("s3://written/p", endpoint_url=url))
    src = tmp_path / "src"
    for n, key in enumerate(ODD_KEYS):
        meta, ctype = METADATA[n % len(METADATA)], CONTENT_TYPES[n % len(CONTENT_TYPES)]
        data = key.encode() * (30_000 if n % 3 == 0 else 1)  # some wait for 100 Continue
        first = await lean.put_bytes(key, data, meta, ctype, if_none_match=True,
                                     checksum_sha256=hashlib.sha256(data).hexdigest())
        src.write_bytes(data[::-1])
        digest = hashlib.sha256(data[::-1]).hexdigest()
        await lean.upload(key, str(src), meta, ctype, if_match=first.etag,
                          checksum_sha256=digest, payload_sha256=digest)
        assert (await lean.copy(key, key + ".copy", {"n": "1"}, "text/x")).size == len(data)
        await lean.copy(key, key + ".kept")
        old = await lean.copy_version(key, str(first.version_id), key + ".old")
        await lean.delete(key + ".copy")
        await lean.delete_version(key + ".old", str(old.version_id))
        body = client.get_object(Bucket="written", Key="p/" + key)["Body"].read()
        assert body == data[::-1]
    assert_lean_writes_used(lean)


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
                         ("get_range", ("k", 0, 10)), ("put_bytes", ("k", b"w", {})),
                         ("copy", ("k", "k2")), ("delete", ("k",))):
        err = await same(lean, boto, method, *args)
        assert err[0] is AccessDenied and secret not in err[1], err
        assert "AKIAZONEFSWRONGKEY00" not in err[1] and keys["AWS_SECRET_ACCESS_KEY"] not in err[1]
    err = await same_download(lean, boto, tmp_path, "k")
    assert err[0] is AccessDenied and secret not in err[1]
    # A refused signature is retried by boto3 (a store may canonicalise unlike S3); a refused
    # key id is plainly denied.
    assert set(lean.lean_fallbacks) <= {"signature refused"}


async def test_a_key_the_policy_denies_is_refused_for_good(
    verifying_moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AccessDenied on one key, the credentials being good, is a refusal (`AccessRefused`):
    the write-back queue waits for a change instead of retrying it on a timer."""
    url, keys = verifying_moto
    use_keys(monkeypatch, keys)
    iam = boto3.session.Session().client("iam", endpoint_url=url, region_name="us-east-1")
    iam.put_user_policy(UserName="zonefs", PolicyName="no-denied", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Deny", "Action": "s3:PutObject",
                        "Resource": "arn:aws:s3:::policed/denied/*"}]}))
    s3_test_client(url).create_bucket(Bucket="policed")
    zone = ZoneConfig.parse("s3://policed", endpoint_url=url)
    lean, boto = lean_remote(zone), lean_remote(zone, lean_requests=False)
    err = await same(lean, boto, "put_bytes", "denied/x", b"v", {})
    assert err[0] is AccessRefused and not err[2], err
    with pytest.raises(Refused) as info:
        await lean.put_bytes("denied/x", b"v", {})
    assert info.value.code == "AccessDenied" and info.value.errno == errno.EACCES
    await same(lean, boto, "put_bytes", "allowed/x", b"v", {})


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
    assert lean._reads() is not None and lean.lean_fallbacks == {}


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
    """A store on loopback whose answers a test scripts (class attributes, per server).

    `requests` records every request's method, path, headers and the body bytes received
    (fewer than its Content-Length when the client stopped sending)."""

    protocol_version = "HTTP/1.1"
    answers: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[str] = []
    requests: list[tuple[str, str, dict[str, str], bytes]] = []
    reset_first = 0  # close this many connections without an answer first
    refuse_expect: tuple[int, dict[str, str], bytes] | None = None  # answer instead of 100
    verify_payload = False  # refuse a body whose SHA-256 is not its x-amz-content-sha256

    def log_message(self, *args: Any) -> None:
        pass

    def handle_expect_100(self) -> bool:
        refusal = type(self).refuse_expect
        if refusal is None:
            return bool(super().handle_expect_100())
        type(self).requests.append((self.command, self.path, dict(self.headers), b""))
        self._send(*refusal)
        self.close_connection = True
        return False

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self) -> None:
        cls = type(self)
        cls.seen.append(f"{self.command} {self.path}")
        body = b""
        if self.headers.get("Content-Length"):
            body = self.rfile.read(int(self.headers["Content-Length"]))
        cls.requests.append((self.command, self.path, dict(self.headers), body))
        if len(body) < int(self.headers.get("Content-Length") or 0):
            self.close_connection = True  # the client stopped sending: no one to answer
            return
        if cls.verify_payload and body and self.headers.get("X-Amz-Content-SHA256") not in (
                hashlib.sha256(body).hexdigest(), "UNSIGNED-PAYLOAD"):
            self._send(400, {}, b"<Error><Code>XAmzContentSHA256Mismatch</Code></Error>")
            return
        if cls.reset_first > 0:
            cls.reset_first -= 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(*cls.answers[min(len(cls.seen), len(cls.answers)) - 1])

    do_GET = do_HEAD = do_PUT = do_DELETE = _answer


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeStore]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    handler = type("Store", (FakeStore,), {"answers": [], "seen": [], "requests": [],
                                           "reset_first": 0, "refuse_expect": None,
                                           "verify_payload": False})
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
    assert err == (StoreFailing, "s3://fake/k: the store is busy or failing (SlowDown)", True)
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
    reads = remote._reads()
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
        assert remote._reads() is None
    fake_store.seen.clear()
    assert await lean_remote(fake_zone(fake_store)).list("") == page  # the listing itself


# -- writes: the same as boto3's ---------------------------------------------------------------


@pytest.fixture
def twins(s3_endpoint: str, bucket: str, s3_client: Any) -> Iterator[Pair]:
    """(lean, boto3-only) remotes of two zones, each in its own fresh versioned bucket: the
    same writes meet the same state in both, and leave what can be compared key by key."""
    other = f"zonefs-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=other)
    s3_client.put_bucket_versioning(Bucket=other,
                                    VersioningConfiguration={"Status": "Enabled"})
    lean = lean_remote(ZoneConfig.parse(f"s3://{bucket}", endpoint_url=s3_endpoint))
    boto = lean_remote(ZoneConfig.parse(f"s3://{other}", endpoint_url=s3_endpoint),
                       lean_requests=False)
    yield lean, boto
    lean.close()
    empty_bucket(s3_client, other)
    s3_client.delete_bucket(Bucket=other)


def comparable(value: Any, remote: Any) -> Any:
    """`value` without what differs between two buckets by nature: version ids (whether there
    is one stays), times (compared apart), and the bucket's name in messages."""
    if isinstance(value, ObjectInfo):
        return dataclasses.replace(value, version_id=bool(value.version_id), mtime=0.0)
    if isinstance(value, tuple):
        return (value[0], value[1].replace(remote.bucket, "BUCKET"), value[2])
    return value


async def same_write(lean: Remote, boto: Remote, method: str, *args: Any,
                     **kwargs: Any) -> tuple[Any, Any]:
    """`method(*args)` on both twins gives the same value or error (but version ids and
    times); each object it wrote has the version id and time the write gave. Returns both."""
    got = await outcome(lambda: getattr(lean, method)(*args, **kwargs))
    want = await outcome(lambda: getattr(boto, method)(*args, **kwargs))
    assert comparable(got, lean) == comparable(want, boto), (
        f"{method}{args}: lean {got!r} != boto3 {want!r}")
    if isinstance(got, ObjectInfo):
        assert abs(got.mtime - want.mtime) < 5 and abs(got.mtime - time.time()) < 300
        for remote, info in ((lean, got), (boto, want)):
            head = await remote.head(info.key)
            # Ceph RGW answers a copy without the new version's id.
            assert info.version_id in (head.version_id, None) and head.etag == info.etag
            assert abs(head.mtime - info.mtime) < 2
    return got, want


async def same_state(lean: Remote, boto: Remote, key: str, tmp_path: Path) -> Any:
    """What the twins' `key` reads as (headers and bytes) is the same."""
    got = await outcome(lambda: lean.head(key))
    want = await outcome(lambda: boto.head(key))
    assert comparable(got, lean) == comparable(want, boto), f"{key!r}: {got!r} != {want!r}"
    if isinstance(got, ObjectInfo):
        a, b = tmp_path / "lean.state", tmp_path / "boto.state"
        await lean.download(key, str(a))
        await boto.download(key, str(b))
        assert a.read_bytes() == b.read_bytes()
    return got


def assert_lean_writes_used(remote: LeanRemote) -> None:
    writes = remote._writes()
    assert writes is not None, "the lean writes are off"
    assert writes.transport.opened >= 1
    assert remote.lean_fallbacks == {}, remote.lean_fallbacks


#: Metadata that boto3 sends as it is: names lowercased by zonefs, values byte for byte.
METADATA: list[dict[str, str]] = [
    {},
    {"mode": "33188", "uid": "1000", "gid": "100", "mtime": "1.250000000",
     "zonefs-sha256": "ab" * 32, "zonefs-sha1": "cd" * 20},
    {"odd": " two  spaces inside, and around ", "empty": "",
     "punct": "a=b; c,d \"q\" (x) <y> @:/?#[]!$&'*+%20~`^|{}", "encoded": "=?utf-8?b?w7w=?="},
    {"Mixed-Case": "V", "dash-and_underscore.dot": "1"},
]
CONTENT_TYPES = [None, "text/plain; charset=utf-8", "application/x-directory",
                 "application/octet-stream"]


async def test_puts_match_boto3(twins: Pair, tmp_path: Path) -> None:
    lean, boto = twins
    src = tmp_path / "src"
    for n, key in enumerate(ODD_KEYS):
        meta, ctype = METADATA[n % len(METADATA)], CONTENT_TYPES[n % len(CONTENT_TYPES)]
        body = f"bytes of {key}".encode() * (n + 1)
        got, _ = await same_write(lean, boto, "put_bytes", key, body, meta, ctype)
        assert got.metadata == {k.lower(): v for k, v in meta.items()}
        assert got.content_type == ctype and got.size == len(body)
        await same_state(lean, boto, key, tmp_path)
        src.write_bytes(body * 3)
        await same_write(lean, boto, "upload", key, str(src), meta, ctype)
        await same_state(lean, boto, key, tmp_path)
    # Empty; in the socket buffer; just over it, and larger (both wait for 100 Continue);
    # streamed from the file. With the caller's SHA-256 of the body and without.
    for size in (0, 1, 64 << 10, (64 << 10) + 1, 300_000, 3 * MiB):
        data = os.urandom(size)
        src.write_bytes(data)
        for payload in (None, hashlib.sha256(data).hexdigest()):
            got, _ = await same_write(lean, boto, "upload", f"size/{size}", str(src),
                                      {"n": str(size)}, payload_sha256=payload)
            assert got.size == size
            await same_state(lean, boto, f"size/{size}", tmp_path)
        await same_write(lean, boto, "put_bytes", f"bytes/{size}", data, {}, "x/y")
        await same_state(lean, boto, f"bytes/{size}", tmp_path)
    assert_lean_writes_used(lean)


@pytest.mark.parametrize(("meta", "ctype"), [
    ({"name": "ünïcödé"}, None),  # boto3 refuses it (ParamValidationError)
    ({"ü": "v"}, None),
    ({"tab": "a\tb"}, None),  # sent as it is by boto3; a store may trim or refuse
    ({"cr": "a\r\nb"}, None),  # refused by http.client inside boto3
    ({"a b": "v"}, None),  # not a header name
    ({"": "v"}, None),
    ({}, "text/plain; name=ü"),  # boto3 sends such a content type its own way
])
async def test_what_boto3_refuses_or_sends_its_own_way_goes_to_boto3(
    twins: Pair, tmp_path: Path, meta: dict[str, str],
    ctype: str | None,
) -> None:
    lean, boto = twins
    await same_write(lean, boto, "put_bytes", "odd", b"x", meta, ctype)
    await same_state(lean, boto, "odd", tmp_path)
    (tmp_path / "src").write_bytes(b"y")
    await same_write(lean, boto, "upload", "odd", str(tmp_path / "src"), meta, ctype)
    await same_write(lean, boto, "put_bytes", "plain", b"x", {})
    await same_write(lean, boto, "copy", "plain", "odd copy", meta, ctype)
    await same_state(lean, boto, "odd copy", tmp_path)
    assert set(lean.lean_fallbacks) == {"header value"}


async def test_conditional_puts_match_boto3(
    twins: Pair, tmp_path: Path
) -> None:
    lean, boto = twins
    if (await probe(boto)).conditional_writes != "enforced":
        pytest.skip("the store does not enforce conditional writes (its probe says so)")
    src = tmp_path / "src"
    for size in (10, 300_000):  # at once, and after 100 Continue
        data = os.urandom(size)
        src.write_bytes(data)
        for via, body in (("put_bytes", data), ("upload", str(src))):
            key = f"c/{via}/{size}"
            missing, _ = await same_write(lean, boto, via, key, body, {}, if_match="0" * 32)
            assert isinstance(missing, tuple)  # NotFound on AWS, 412 on some stores
            first, _ = await same_write(lean, boto, via, key, body, {"n": "1"},
                                        if_none_match=True)
            assert first.etag
            again, _ = await same_write(lean, boto, via, key, body, {}, if_none_match=True)
            assert again[0] is PreconditionFailed
            wrong, _ = await same_write(lean, boto, via, key, body, {}, if_match="0" * 32)
            assert wrong[0] is PreconditionFailed
            right, _ = await same_write(lean, boto, via, key, body, {"n": "2"},
                                        if_match=first.etag)
            assert right.version_id != first.version_id
            assert (await same_state(lean, boto, key, tmp_path)).metadata == {"n": "2"}
    assert_lean_writes_used(lean)


async def test_checksums_are_sent_as_botocore_sends_them(
    twins: Pair, tmp_path: Path
) -> None:
    lean, boto = twins
    data = b"checked bytes\n"
    right, wrong = hashlib.sha256(data).hexdigest(), hashlib.sha256(b"other").hexdigest()
    (tmp_path / "src").write_bytes(data)
    await same_write(lean, boto, "put_bytes", "sum", data, {}, checksum_sha256=right)
    assert await lean.head_checksum("sum") == await boto.head_checksum("sum")
    await same_write(lean, boto, "upload", "sum2", str(tmp_path / "src"), {},
                     checksum_sha256=right)
    assert await lean.head_checksum("sum2") == await boto.head_checksum("sum2")
    # Refused (ChecksumMismatch) where the store verifies, stored where it does not.
    await same_write(lean, boto, "put_bytes", "bad", data, {}, checksum_sha256=wrong)
    await same_write(lean, boto, "upload", "bad2", str(tmp_path / "src"), {},
                     checksum_sha256=wrong, payload_sha256=right)
    assert_lean_writes_used(lean)


async def test_copies_match_boto3(twins: Pair, tmp_path: Path) -> None:
    lean, boto = twins
    for src, dst in (("c/src", "c/dst"), (ODD_KEYS[5], ODD_KEYS[7]),
                     (ODD_KEYS[3], ODD_KEYS[8]), (ODD_KEYS[9], ODD_KEYS[1])):
        first, first_boto = await same_write(lean, boto, "put_bytes", src, b"one",
                                             {"n": "1"}, "text/plain")
        await same_write(lean, boto, "put_bytes", src, b"two!", {"n": "2"}, "text/x-two")
        kept, _ = await same_write(lean, boto, "copy", src, dst)
        assert (kept.size, kept.metadata, kept.content_type) == (4, {"n": "2"}, "text/x-two")
        await same_state(lean, boto, dst, tmp_path)
        new, _ = await same_write(lean, boto, "copy", src, dst, {"N": "3", "mode": "1"},
                                  "text/x-new")
        assert (new.metadata, new.content_type) == ({"n": "3", "mode": "1"}, "text/x-new")
        await same_state(lean, boto, dst, tmp_path)
        await same_write(lean, boto, "copy", src, dst, {"n": "4"})  # the type is the source's
        await same_state(lean, boto, dst, tmp_path)
        # A version (the twins' version ids differ: each its own).
        got = await lean.copy_version(src, str(first.version_id), dst)
        want = await boto.copy_version(src, str(first_boto.version_id), dst)
        assert comparable(got, lean) == comparable(want, boto)
        assert (got.size, got.metadata, got.etag) == (3, {"n": "1"}, first.etag)
        assert (await same_state(lean, boto, dst, tmp_path)).content_type == "text/plain"
        # Onto itself with new metadata (a chmod of a clean file).
        await same_write(lean, boto, "copy", dst, dst, {"mode": "33261"})
        await same_state(lean, boto, dst, tmp_path)
    missing, _ = await same_write(lean, boto, "copy", "c/never", "c/dst")
    assert missing[0] is NotFound
    assert_lean_writes_used(lean)


async def test_deletes_match_boto3(twins: Pair, tmp_path: Path) -> None:
    lean, boto = twins
    for key in ("d/k", ODD_KEYS[5], ODD_KEYS[8]):
        await same_write(lean, boto, "put_bytes", key, b"x", {})
        assert await same_write(lean, boto, "delete", key) == (None, None)
        assert (await same_state(lean, boto, key, tmp_path))[0] is NotFound
        # Removing the delete marker brings the object back; removing a version, for good.
        markers = []
        for remote in (lean, boto):
            versions = [v async for page in remote.iter_versions(key, None)
                        for v in page.versions if v.key == key]
            assert [v.is_delete_marker for v in versions] == [True, False]
            markers.append(versions)
        await lean.delete_version(key, markers[0][0].version_id)
        await boto.delete_version(key, markers[1][0].version_id)
        assert (await same_state(lean, boto, key, tmp_path)).size == 1
        await lean.delete_version(key, markers[0][1].version_id)
        await boto.delete_version(key, markers[1][1].version_id)
        assert (await same_state(lean, boto, key, tmp_path))[0] is NotFound
    assert await same_write(lean, boto, "delete", "never/was") == (None, None)  # fine
    await same_write(lean, boto, "delete_version", "never/was", "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrH")
    assert_lean_writes_used(lean)


class CancelAfter(threading.Event):
    """An Event that sets itself on its `n`-th check: a cancel that lands mid-upload."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self._left, self._mutex = n, threading.Lock()

    def is_set(self) -> bool:
        with self._mutex:
            self._left -= 1
            if self._left <= 0:
                self.set()
        return super().is_set()


@pytest.mark.parametrize(("size", "checks"), [(100_000, 2), (3 * MiB, 4)],
                         ids=["inline", "streamed"])
@seaweedfs_quirk(QUIRK_CUT_PUT_STORED)
async def test_a_cancel_stops_a_lean_upload(
    pair: Pair, tmp_path: Path, size: int, checks: int
) -> None:
    """A cancel seen at the start, before the body, or (streamed) between its pieces."""
    lean, _ = pair
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    for cancel in [CancelAfter(n) for n in range(1, checks + 1)]:
        with pytest.raises(RemoteError, match="upload of .* cancelled"):
            await lean.upload("c.bin", str(src), {}, cancel=cancel,
                              payload_sha256=hashlib.sha256(src.read_bytes()).hexdigest())
        with pytest.raises(NotFound):
            await lean.head("c.bin")
    assert (await lean.upload("c.bin", str(src), {})).size == size
    assert_lean_writes_used(lean)


async def test_a_cancel_stops_sending_the_body(
    fake_store: type[FakeStore], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(5 * MiB))
    fake_store.answers = [PUT_OK]
    remote = lean_remote(fake_zone(fake_store))
    with pytest.raises(RemoteError, match="cancelled"):
        # Checked at the start, while hashing (5 pieces), then before each piece sent.
        await remote.upload("k", str(src), {}, cancel=CancelAfter(1 + 5 + 2))
    deadline = time.monotonic() + 10
    while not fake_store.requests and time.monotonic() < deadline:
        await trio.sleep(0.01)  # the store sees the connection end
    method, _, headers, body = fake_store.requests[-1]
    assert method == "PUT" and headers["Content-Length"] == str(5 * MiB)
    assert 0 < len(body) < 5 * MiB
    assert remote.lean_fallbacks == {}


PUT_OK = (200, {"ETag": '"e2"', "x-amz-version-id": "v2"}, b"")


def header(request: tuple[str, str, dict[str, str], bytes], name: str) -> str | None:
    """A header of a request the fake store recorded, by its name in any case."""
    return next((v for k, v in request[2].items() if k.lower() == name), None)


async def test_writes_are_retried_on_5xx(fake_store: type[FakeStore], tmp_path: Path) -> None:
    slow = (503, {}, b"<Error><Code>SlowDown</Code></Error>")
    data = os.urandom(200_000)
    (tmp_path / "src").write_bytes(data)
    fake_store.answers = [slow, (500, {}, b""), PUT_OK]
    remote = lean_remote(fake_zone(fake_store))
    info = await remote.upload("k", str(tmp_path / "src"), {"mode": "1"})
    assert (info.etag, info.version_id, info.size) == ("e2", "v2", len(data))
    assert info.mtime == int(info.mtime) and abs(info.mtime - time.time()) < 5  # its Date
    sent = fake_store.requests
    assert [r[0] for r in sent] == ["PUT"] * 3 and all(r[3] == data for r in sent)
    assert {header(r, "x-amz-content-sha256") for r in sent} == {hashlib.sha256(data).hexdigest()}
    assert {header(r, "x-amz-meta-mode") for r in sent} == {"1"}
    # Three failures: a transient error, as boto3's.
    fake_store.requests.clear()
    fake_store.seen.clear()
    fake_store.answers = [slow]
    for call in (lambda: remote.put_bytes("k", b"v", {}), lambda: remote.delete("k")):
        err = await outcome(call)
        assert err == (StoreFailing, "s3://fake/k: the store is busy or failing (SlowDown)", True)
    assert len(fake_store.requests) == 6
    # A DELETE answered after a failure.
    fake_store.answers = [(500, {}, b""), (204, {}, b"")]
    fake_store.seen.clear()
    await remote.delete("k")
    assert len(fake_store.seen) == 2 and remote.lean_fallbacks == {}


async def test_a_conditional_put_refused_after_a_retry_is_a_conflict(
    fake_store: type[FakeStore]
) -> None:
    """The first attempt may have landed (its answer was a 500): the 412 that follows is
    PreconditionFailed all the same, and the uploads layer tells its own upload by its hash."""
    refused = (412, {}, b"<Error><Code>PreconditionFailed</Code></Error>")
    fake_store.answers = [(500, {}, b""), refused]
    remote = lean_remote(fake_zone(fake_store))
    err = await outcome(lambda: remote.put_bytes("k", b"v", {}, if_match="e1"))
    assert err == (PreconditionFailed, "s3://fake/k changed on the store (PreconditionFailed)",
                   False)
    assert [header(r, "if-match") for r in fake_store.requests] == ['"e1"', '"e1"']


async def test_a_store_answering_before_the_body_is_not_sent_it(
    fake_store: type[FakeStore], tmp_path: Path
) -> None:
    """A large body waits for 100 Continue; a store that refuses at once (a failed
    condition) gets no body, and its answer is the result, not a transport failure."""
    (tmp_path / "src").write_bytes(os.urandom(2 * MiB))
    fake_store.refuse_expect = (412, {}, b"<Error><Code>PreconditionFailed</Code></Error>")
    remote = lean_remote(fake_zone(fake_store))
    started = time.monotonic()
    with pytest.raises(PreconditionFailed):
        await remote.upload("k", str(tmp_path / "src"), {}, if_match="e1")
    assert time.monotonic() - started < 2
    assert [(r[0], r[3]) for r in fake_store.requests] == [("PUT", b"")]
    fake_store.answers = [PUT_OK]
    assert (await remote.put_bytes("k", b"small", {})).etag == "e2"  # a new connection
    writes = remote._writes()
    assert writes is not None and writes.transport.opened == 2 and remote.lean_fallbacks == {}


async def test_a_refused_connection_fails_a_write_at_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    zone = ZoneConfig.parse("s3://some-bucket", endpoint_url=endpoint)
    lean, boto = lean_remote(zone), lean_remote(zone, lean_requests=False)
    (tmp_path / "src").write_bytes(b"x")
    for method, args in (("put_bytes", ("k", b"v", {})),
                         ("upload", ("k", str(tmp_path / "src"), {})), ("delete", ("k",))):
        started = time.monotonic()
        err = await outcome(lambda m=method, a=args: getattr(lean, m)(*a))
        assert time.monotonic() - started < 1  # the write-back queue retries, not this
        assert err == (RemoteError, f"cannot reach {endpoint}: Connection refused", True)
        assert await outcome(lambda m=method, a=args: getattr(boto, m)(*a)) == err
    assert lean.lean_fallbacks == {}


async def test_the_payload_hash_is_the_callers_or_computed(
    fake_store: type[FakeStore], tmp_path: Path
) -> None:
    fake_store.verify_payload = True
    fake_store.answers = [PUT_OK]
    src = tmp_path / "src"
    remote = lean_remote(fake_zone(fake_store))
    for size in (4096, 3 * MiB):  # read whole, and streamed
        data = os.urandom(size)
        src.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        fake_store.requests.clear()
        await remote.upload("k", str(src), {}, payload_sha256=digest)
        await remote.upload("k", str(src), {})
        assert [header(r, "x-amz-content-sha256") for r in fake_store.requests] == [digest, digest]
        assert remote.lean_fallbacks == {}
    # A wrong one is refused by the store; boto3 then sends the bytes with their own hash.
    fake_store.requests.clear()
    info = await remote.upload("k", str(src), {}, payload_sha256="0" * 64)
    assert info.etag == "e2" and remote.lean_fallbacks == {"status": 1}
    assert [header(r, "x-amz-content-sha256") for r in fake_store.requests] == [
        "0" * 64, hashlib.sha256(src.read_bytes()).hexdigest()]


async def test_unsigned_payload_only_where_botocore_sends_it(
    fake_store: type[FakeStore], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_store.answers = [PUT_OK]
    signed = lean_remote(fake_zone(fake_store))
    writes = signed._writes()
    assert writes is not None and writes.unsigned_payload == (False, False)  # http
    config = tmp_path / "config"
    config.write_text("[default]\ns3 =\n    payload_signing_enabled = false\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    unsigned, boto = lean_remote(fake_zone(fake_store)), lean_remote(fake_zone(fake_store),
                                                                     lean_requests=False)
    writes = unsigned._writes()
    assert writes is not None and writes.unsigned_payload == (True, True)
    for remote in (unsigned, boto):
        await remote.put_bytes("k", b"v", {}, checksum_sha256=hashlib.sha256(b"v").hexdigest())
        await remote.put_bytes("k", b"v", {})
    assert [header(r, "x-amz-content-sha256") for r in fake_store.requests] == [
        "UNSIGNED-PAYLOAD"] * 4
    assert unsigned.lean_fallbacks == {}


#: Headers that differ between any two requests, or between boto3's and the lean path's by
#: design (boto3's own bookkeeping, Expect on small bodies, the connection's encoding).
_OWN_HEADERS = {"authorization", "x-amz-date", "user-agent", "amz-sdk-invocation-id",
                "amz-sdk-request", "expect", "accept-encoding", "content-length"}


def sent_headers(request: tuple[str, str, dict[str, str], bytes]) -> tuple[Any, ...]:
    method, path, headers, body = request
    kept = {k.lower(): v for k, v in headers.items() if k.lower() not in _OWN_HEADERS}
    signed = next(part for part in headers["Authorization"].split(", ")
                  if part.startswith("SignedHeaders="))
    names = set(signed.removeprefix("SignedHeaders=").split(";")) - {"content-length"}
    return method, path, kept, names, body


COPY_OK = (200, {"x-amz-version-id": "v3", "Content-Type": "application/xml"}, (
    b'<?xml version="1.0" encoding="UTF-8"?><CopyObjectResult xmlns="http://s3.amazonaws.com/'
    b'doc/2006-03-01/"><LastModified>2026-12-02T03:53:09.123Z</LastModified>'
    b"<ETag>&quot;e3&quot;</ETag></CopyObjectResult>"))


async def test_requests_carry_what_boto3s_carry(
    fake_store: type[FakeStore], tmp_path: Path
) -> None:
    """Each write's method, path, headers (and which are signed) and body, as boto3 sends
    them, for every argument zonefs passes."""
    data = b"body bytes"
    (tmp_path / "src").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any], Any]] = [
        ("put_bytes", ("a b+c%/ü ☃", data, {"mode": "33188", "Up": " x  y "}, "text/x"),
         {"if_match": '"e1"', "checksum_sha256": digest}, PUT_OK),
        ("put_bytes", ("d/", b"", {}, "application/x-directory"), {"if_none_match": True},
         PUT_OK),
        ("upload", ("k~1", str(tmp_path / "src"), {"mtime": "1.5"}),
         {"checksum_sha256": digest, "payload_sha256": digest, "if_none_match": True}, PUT_OK),
        ("copy", ("src a+b", "dst ü"), {}, COPY_OK),
        ("copy", ("src a+b", "dst ü", {"n": "1"}, "text/y"), {}, COPY_OK),
        ("copy_version", ("src a+b", "v+1/=", "dst"), {}, COPY_OK),
        ("delete", ("gone +%",), {}, (204, {}, b"")),
        ("delete_version", ("gone +%", "v+1/="), {}, (204, {}, b"")),
    ]
    lean = lean_remote(fake_zone(fake_store))
    boto = lean_remote(fake_zone(fake_store), lean_requests=False)
    for method, args, kwargs, answer in calls:
        results = []
        for remote in (lean, boto):
            fake_store.answers = [HEAD_OK, answer] if "copy" in method else [answer]
            fake_store.seen.clear()
            fake_store.requests.clear()
            results.append(comparable(await getattr(remote, method)(*args, **kwargs), remote))
            results.append(sent_headers(fake_store.requests[-1]))
            agent = str(header(fake_store.requests[-1], "user-agent"))
            assert agent.startswith("zonefs/" if remote is lean else "Boto3/"), agent
        assert results[0] == results[2], method
        assert results[1] == results[3], method
    assert lean.lean_fallbacks == {}


async def test_a_copy_answer_with_an_error_goes_to_boto3(fake_store: type[FakeStore]) -> None:
    """S3 may answer a copy with 200 and an <Error> body: boto3 knows that answer."""
    error = (200, {}, b"<Error><Code>InternalError</Code><Message>no</Message></Error>")
    fake_store.answers = [HEAD_OK, error, COPY_OK]
    remote = lean_remote(fake_zone(fake_store))
    info = await remote.copy("a", "b")
    assert (info.etag, info.version_id, info.mtime) == ("e3", "v3", 1796183589.123)
    assert remote.lean_fallbacks == {"xml": 1}


# -- the switch ------------------------------------------------------------------------------


async def test_the_switch_turns_the_lean_path_off(
    s3_zone: ZoneConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert lean_remote(s3_zone)._reads() is not None
    assert lean_remote(s3_zone)._writes() is not None
    off = open_remote(s3_zone, lean_requests=False)
    assert type(off) is S3Remote  # not wrapped: plain boto3
    await off.put_bytes("k", b"v", {})
    assert (await off.head("k")).size == 1 and (await off.list("")).objects
    monkeypatch.setenv(LEAN_ENV, "off")
    assert type(open_remote(s3_zone)) is S3Remote
    monkeypatch.setenv(LEAN_ENV, "on")
    assert lean_remote(s3_zone)._reads() is not None
    assert parse_mount_options(["lean_requests=off"]).lean_requests is False
    assert MountOptions().lean_requests is True
    with pytest.raises(Exception, match="lean_requests= takes on|off"):
        parse_mount_options(["lean_requests=maybe"])
    named = parse_zone("z", {"url": "s3://bkt", "lean_requests": False}, "zones.toml")
    assert named.options == ["lean_requests=off"]
