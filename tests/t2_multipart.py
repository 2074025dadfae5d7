"""Multipart uploads zonefs created and never finished are aborted at the next mount, whether
the journal recorded their upload id or only the intent made before CreateMultipartUpload.

Against the S3 endpoint (moto unless ZONEFS_TEST_S3_ENDPOINT names another): the remote lists
the unfinished uploads of exactly one key and tells whether one holds parts; it announces every
upload before creating it; and `Ledger.abort_leftover_uploads`, run in a core built the
way the daemon builds one (tests/vfs_harness.py), aborts an upload created for a journaled
intent, as if the process had died before recording its id, and leaves alone every upload that
is not provably its own: another key's, one initiated far from the intent's time, one holding
parts. An intent whose search fails stays in the journal.

Times in these tests are relative to the `Initiated` time the store itself reports (moto
reports one fixed time for every upload), so they hold whatever the store's clock says.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import socket
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import empty_bucket
from vfs_harness import Env, Store

from zonefs.common.config import ZoneConfig
from zonefs.common.errors import AccessDenied, BucketMissing, RemoteError
from zonefs.pending.leftovers import INTENT_WINDOW
from zonefs.remote import open_remote
from zonefs.remote.s3 import S3Remote

if TYPE_CHECKING:
    from zonefs.remote.base import Remote

MiB = 1 << 20
NS = 1_000_000_000


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: a store that cannot be reached."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uploads_of(client: Any, bucket: str, key: str | None = None) -> dict[str, dict[str, Any]]:
    """The bucket's unfinished multipart uploads (of `key`, when given), by upload id."""
    listed = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return {u["UploadId"]: u for u in listed if key is None or u["Key"] == key}


def create_upload(client: Any, bucket: str, key: str, *, part: bool = False) -> tuple[str, float]:
    """An unfinished multipart upload of `key` made directly with boto3 (what a process leaves
    when it dies right after CreateMultipartUpload answered), with one part if `part`.
    Returns its id and the time the store says it was initiated."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    if part:
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1,
                           Body=b"a part another writer sent")
    initiated = uploads_of(client, bucket, key)[upload_id]["Initiated"].timestamp()
    return upload_id, initiated


def s3_env(zone: ZoneConfig, tmp_path: Path, client: Any = None, bucket: str = "") -> Env:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    return Env("s3", zone, cache, Store("s3", open_remote(zone), client, bucket))


def small_parts(remote: Remote) -> Remote:
    """`remote` with 5 MiB multipart thresholds and parts (S3's smallest), for quick tests:
    set on the boto3 remote (itself, or the one the lean path wraps), which makes them."""
    boto = getattr(remote, "boto", remote)
    assert isinstance(boto, S3Remote)
    boto.MULTIPART_THRESHOLD = boto.PART_SIZE = 5 * MiB
    boto.COPY_MULTIPART_THRESHOLD = boto.COPY_PART_SIZE = 5 * MiB
    return remote


class AnswerLosingProxy:
    """An HTTP forwarder on loopback in front of the S3 endpoint that sends the first
    CreateMultipartUpload on to the store, reads the store's answer, and closes the connection
    instead of passing it on: the store created an upload whose id the client never got, and
    botocore tries again. Everything else goes through unchanged."""

    def __init__(self, endpoint: str) -> None:
        target = urllib.parse.urlsplit(endpoint)
        assert target.hostname and target.port
        self.lost: list[str] = []  # paths of the requests whose answer was dropped
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                query = urllib.parse.urlsplit(self.path).query
                if self.command == "POST" and query == "uploads" and not proxy.lost:
                    proxy.lost.append(self.path)
                    self.close_connection = True  # the answer is lost on the way back
                    return
                self.send_response_only(resp.status, resp.reason)
                for name, value in resp.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def losing_proxy(s3_endpoint: str) -> Iterator[AnswerLosingProxy]:
    proxy = AnswerLosingProxy(s3_endpoint)
    yield proxy
    proxy.stop()


# -- the remote: listing one key's uploads, telling whether one holds parts ------------------


async def test_remote_lists_the_unfinished_uploads_of_exactly_one_key(
    s3_endpoint: str, s3_client: Any, bucket: str
) -> None:
    remote = open_remote(ZoneConfig.parse(f"s3://{bucket}/pre", endpoint_url=s3_endpoint))
    mine, initiated = create_upload(s3_client, bucket, "pre/big.bin")
    create_upload(s3_client, bucket, "pre/big.bin.tmp")  # a longer key with the same start
    create_upload(s3_client, bucket, "big.bin")  # the same name outside the zone's prefix
    with_part, _ = create_upload(s3_client, bucket, "pre/big.bin", part=True)
    listed = await remote.list_multipart_uploads("big.bin")
    assert {u.upload_id for u in listed} == {mine, with_part}
    assert {u.key for u in listed} == {"big.bin"}  # zone keys
    assert next(u for u in listed if u.upload_id == mine).initiated == initiated
    assert not await remote.multipart_has_parts("big.bin", mine)
    assert await remote.multipart_has_parts("big.bin", with_part)
    await remote.abort_multipart("big.bin", mine)
    assert not await remote.multipart_has_parts("big.bin", mine)  # gone: none
    assert [u.upload_id for u in await remote.list_multipart_uploads("big.bin")] == [with_part]
    assert await remote.list_multipart_uploads("nothing-here") == []


async def test_local_zone_lists_no_multipart_uploads(local_zone: ZoneConfig) -> None:
    remote = open_remote(local_zone)
    assert await remote.list_multipart_uploads("any") == []
    assert not await remote.multipart_has_parts("any", "id")


# -- the remote: every create announced before it is sent --------------------------------------


class RecordingLog:
    """A `multipart_log` that remembers what it heard: (what, key, upload id, intent)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, int]] = []
        self.sole: dict[str, bool] = {}

    def intend(self, key: str) -> int:
        self.events.append(("intend", key, "", len(self.events) + 1))
        return len(self.events)

    def started(self, key: str, upload_id: str, intent: int, *, sole: bool) -> None:
        self.events.append(("started", key, upload_id, intent))
        self.sole[upload_id] = sole

    def refused(self, intent: int) -> None:
        self.events.append(("refused", "", "", intent))

    def ended(self, key: str, upload_id: str) -> None:
        self.events.append(("ended", key, upload_id, 0))


async def test_a_multipart_copy_is_announced_before_it_is_created(
    s3_zone: ZoneConfig, s3_client: Any, tmp_path: Path
) -> None:
    remote = small_parts(open_remote(s3_zone))
    src = tmp_path / "src"
    src.write_bytes(os.urandom(12 * MiB))
    await remote.upload("src", str(src), {})
    heard = remote.multipart_log = RecordingLog()
    info = await remote.copy("src", "dst")  # a rename's copy of a large file
    assert info.etag.endswith("-3")
    [intend, started, ended] = heard.events
    assert intend == ("intend", "dst", "", 1)
    assert started[:2] == ("started", "dst") and started[3] == 1 and heard.sole[started[2]]
    assert ended == ("ended", "dst", started[2], 0)
    assert uploads_of(s3_client, s3_zone.bucket) == {}


async def test_a_refused_create_settles_its_intent_and_an_unanswered_one_does_not(
    s3_endpoint: str, s3_zone: ZoneConfig, s3_client: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(6 * MiB))
    # The store answers "no such bucket" at once: nothing was created.
    missing_bucket = f"zonefs-no-such-bucket-{os.urandom(4).hex()}"
    missing = small_parts(open_remote(ZoneConfig.parse(f"s3://{missing_bucket}",
                                                       endpoint_url=s3_endpoint)))
    heard = missing.multipart_log = RecordingLog()
    try:
        await missing.upload("big.bin", str(src), {})
    except BucketMissing:
        pass
    else:
        # The store made the bucket on the write (SeaweedFS does): refused credentials are
        # the refusal to show there.
        empty_bucket(s3_client, missing_bucket)
        s3_client.delete_bucket(Bucket=missing_bucket)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAZONEFSBOGUSKEY00")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "zonefs-bogus-secret")
        refused = small_parts(open_remote(s3_zone))
        heard = refused.multipart_log = RecordingLog()
        try:
            await refused.upload("big.bin", str(src), {})
        except AccessDenied:
            pass
        else:
            pytest.skip("the store creates missing buckets and accepts any credentials: "
                        "no refusal to show")
        monkeypatch.undo()
    assert heard.events == [("intend", "big.bin", "", 1), ("refused", "", "", 1)]
    # No answer at all (nothing listens): the store may have created it, the intent stays.
    unanswered = small_parts(open_remote(ZoneConfig.parse(
        f"s3://{s3_zone.bucket}", endpoint_url=f"http://127.0.0.1:{closed_port()}")))
    heard = unanswered.multipart_log = RecordingLog()
    with pytest.raises(RemoteError, match="cannot reach"):
        await unanswered.upload("big.bin", str(src), {})
    assert heard.events == [("intend", "big.bin", "", 1)]


# -- at mount: leftovers aborted, by id or by intent ---------------------------------------------


async def test_mount_aborts_an_upload_whose_id_was_never_recorded_and_nothing_else(
    s3_zone: ZoneConfig, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    env = s3_env(s3_zone, tmp_path, s3_client, bucket)
    # As if the process died after CreateMultipartUpload answered, before the id was recorded.
    leaked, initiated = create_upload(s3_client, bucket, "big.bin")
    # This machine's clock 10 minutes behind the store's: still within the window.
    skewed, skewed_at = create_upload(s3_client, bucket, "skewed.bin")
    # Not provably ours: another key (one sharing the start of the name, one not), an upload
    # of the key initiated long before its intent, and one holding parts (another writer's:
    # zonefs sends parts only to uploads it recorded).
    prefix_sharing, _ = create_upload(s3_client, bucket, "big.bin.tmp")
    other, _ = create_upload(s3_client, bucket, "other.bin")
    late, late_at = create_upload(s3_client, bucket, "late.bin")
    busy, busy_at = create_upload(s3_client, bucket, "busy.bin", part=True)
    # An upload recorded by id, as before intents existed.
    recorded, _ = create_upload(s3_client, bucket, "recorded.bin")
    async with env.vfs(requeue=False) as core:
        journal = core.journal
        journal.add_multipart_intent("big.bin", int(initiated * NS))
        journal.add_multipart_intent("skewed.bin", int((skewed_at - 600) * NS))
        journal.add_multipart_intent("late.bin", int((late_at + 2 * 3600) * NS))
        journal.add_multipart_intent("busy.bin", int(busy_at * NS))
        journal.add_multipart("recorded.bin", recorded)
        assert await core.ledger.abort_leftover_uploads() == 3
        left = uploads_of(s3_client, bucket)
        assert set(left) == {prefix_sharing, other, late, busy}
        assert not uploads_of(s3_client, bucket, "big.bin")  # none for the key afterwards
        assert leaked not in left and skewed not in left and recorded not in left
        # Every search succeeded: nothing stays for the next mount.
        assert journal.multipart_intents() == [] and journal.multipart_uploads() == []
        assert await core.ledger.abort_leftover_uploads() == 0
        assert set(uploads_of(s3_client, bucket)) == {prefix_sharing, other, late, busy}


def test_the_window_allows_for_clock_skew_of_minutes_not_hours() -> None:
    assert 10 * 60 < INTENT_WINDOW <= 30 * 60


async def test_an_intent_whose_search_fails_stays_for_the_next_mount(
    s3_zone: ZoneConfig, s3_client: Any, bucket: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    leaked, initiated = create_upload(s3_client, bucket, "big.bin")
    env = s3_env(s3_zone, tmp_path, s3_client, bucket)
    unreachable = open_remote(ZoneConfig.parse(
        f"s3://{bucket}", endpoint_url=f"http://127.0.0.1:{closed_port()}"), io_timeout=5)
    async with env.vfs(remote=unreachable, requeue=False) as core:
        intent = core.journal.add_multipart_intent("big.bin", int(initiated * NS))
        with caplog.at_level(logging.WARNING):
            assert await core.ledger.abort_leftover_uploads() == 0  # never fails the mount
        assert "could not look for an unfinished multipart upload of 'big.bin'" in caplog.text
        assert [i.id for i in core.journal.multipart_intents()] == [intent]
    assert leaked in uploads_of(s3_client, bucket)
    # The store is reachable again: the next mount (its recovery) finds and aborts it.
    async with env.vfs() as core:
        assert core.journal.multipart_intents() == []
    assert uploads_of(s3_client, bucket, "big.bin") == {}


def test_the_multipart_log_given_to_open_remote_is_the_one_it_tells(
    s3_zone: ZoneConfig, local_zone: ZoneConfig
) -> None:
    """The daemon hands the journal's log to `open_remote`: every remote it makes (boto3,
    the lean wrapper around it, the local zone) keeps that one."""
    for zone, lean in ((s3_zone, True), (s3_zone, False), (local_zone, False)):
        log = RecordingLog()
        assert open_remote(zone, lean_requests=lean, multipart_log=log).multipart_log is log


async def test_uploads_through_a_core_leave_nothing_in_the_journal(
    s3_zone: ZoneConfig, s3_client: Any, bucket: str, tmp_path: Path
) -> None:
    """The real `multipart_log` (the journal, reached from the upload's worker threads): a
    completed upload and a completed copy settle their intents and rows."""
    env = s3_env(s3_zone, tmp_path, s3_client, bucket)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(12 * MiB))
    remote = small_parts(open_remote(s3_zone))
    async with env.vfs(remote=remote) as core:
        assert remote.multipart_log is not None  # the journal's, as the daemon gives it
        await remote.upload("big.bin", str(src), {})
        await remote.copy("big.bin", "moved.bin")
        assert core.journal.multipart_intents() == []
        assert core.journal.multipart_uploads() == []
    assert uploads_of(s3_client, bucket) == {}


async def test_a_create_answered_after_a_retry_keeps_its_intent_for_the_next_mount(
    s3_endpoint: str, s3_client: Any, bucket: str, tmp_path: Path,
    losing_proxy: AnswerLosingProxy,
) -> None:
    """The store created an upload whose answer was lost; botocore's retry created a second,
    which zonefs recorded, sent and completed. The intent stays, and the next mount aborts the
    first upload (no part, initiated around the intent's time)."""
    zone = ZoneConfig.parse(f"s3://{bucket}", endpoint_url=losing_proxy.url)
    env = s3_env(ZoneConfig.parse(f"s3://{bucket}", endpoint_url=s3_endpoint), tmp_path,
                 s3_client, bucket)
    src = tmp_path / "src"
    body = os.urandom(12 * MiB)
    src.write_bytes(body)
    remote = small_parts(open_remote(zone))
    async with env.vfs(remote=remote) as core:
        info = await remote.upload("big.bin", str(src), {})
        assert info.etag.endswith("-3") and len(losing_proxy.lost) == 1
        [intent] = core.journal.multipart_intents()
        assert intent.key == "big.bin" and core.journal.multipart_uploads() == []
    [orphan] = uploads_of(s3_client, bucket, "big.bin").values()  # the first attempt's
    initiated = orphan["Initiated"].timestamp()
    if abs(initiated - intent.time_ns / NS) > INTENT_WINDOW:
        # A store whose Initiated is not its clock (moto reports one fixed time): put the
        # intent where a store with a true clock would have put the upload.
        db = sqlite3.connect(env.cache_dir / "journal.sqlite")
        with db:
            db.execute("UPDATE multipart_intents SET time_ns = ? WHERE id = ?",
                       (int(initiated * NS), intent.id))
        db.close()
    async with env.vfs() as core:  # the next mount: its recovery looks for the upload
        assert core.journal.multipart_intents() == []
    assert uploads_of(s3_client, bucket) == {}
    assert s3_client.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == body
