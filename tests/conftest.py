"""Shared fixtures for the layered suite (t1 … t5).

S3: one endpoint per session, moto's server started as a subprocess on 127.0.0.1, or the
endpoint named by ZONEFS_TEST_S3_ENDPOINT (then credentials come from the usual AWS variables),
so the same tests run against SeaweedFS, MiniStack or Ceph RGW. Each test gets its own bucket
with versioning Enabled. Local zones live in the test's tmp_path.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from zonefs.config import ZoneConfig
from zonefs.remote import open_remote
from zonefs.remote.local import LocalRemote

# -- S3 endpoint ------------------------------------------------------------------------------

S3_ENDPOINT_ENV = "ZONEFS_TEST_S3_ENDPOINT"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """moto's S3 server as a subprocess on loopback; stopped by its own PID."""

    def __init__(self, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        self._log_path = log_path
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=0.5):
                    return
            except urllib.error.HTTPError:
                return  # it answered, even if with an error status
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server did not start:\n{self._log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def s3_test_client(endpoint: str, **session_args: Any) -> Any:
    """A plain boto3 client for tests to look at the bucket directly."""
    return boto3.session.Session(**session_args).client(
        "s3",
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the session's S3 endpoint (moto unless ZONEFS_TEST_S3_ENDPOINT is set)."""
    external = os.environ.get(S3_ENDPOINT_ENV)
    if external:
        yield external
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # loopback only, even by accident
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def start_moto(tmp_path: Path) -> Iterator[Callable[..., MotoServer]]:
    """Start an extra moto server with extra environment (e.g. authentication on)."""
    servers: list[MotoServer] = []

    def start(**env: str) -> MotoServer:
        servers.append(MotoServer(tmp_path / f"moto-{len(servers)}.log", env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    return s3_test_client(s3_endpoint)


def empty_bucket(client: Any, bucket: str) -> None:
    """Remove every version, delete marker and unfinished upload (one request each: portable)."""
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
    for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


@pytest.fixture
def bucket(s3_client: Any) -> Iterator[str]:
    """A fresh bucket with versioning Enabled, emptied and removed afterwards."""
    name = f"zonefs-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    s3_client.put_bucket_versioning(
        Bucket=name, VersioningConfiguration={"Status": "Enabled"}
    )
    yield name
    try:
        empty_bucket(s3_client, name)
        s3_client.delete_bucket(Bucket=name)
    except Exception as exc:  # cleanup must not hide the test's own result
        print(f"could not remove test bucket {name}: {exc}")


@pytest.fixture
def s3_zone(s3_endpoint: str, bucket: str) -> ZoneConfig:
    return ZoneConfig.parse(f"s3://{bucket}", endpoint_url=s3_endpoint)


# -- local zone -------------------------------------------------------------------------------


@pytest.fixture
def local_zone(tmp_path: Path) -> ZoneConfig:
    """An initialised embedded zone in the test's tmp directory."""
    zone = ZoneConfig.parse(f"file://{tmp_path}/zone")
    LocalRemote(zone, create=True).close()
    return zone


# -- real mounts (t4) ---------------------------------------------------------------------------
# Everything below serves the real-mount layer; tests/mounts.py holds the helpers.

from mounts import LocalStore, Mount, S3Store, fuse_unavailable_reason  # noqa: E402
from vfs_harness import Env, Store, unversioned_bucket  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mount_options(**options): extra -o options for the `mount` fixture "
        "(e.g. writeback_delay='60', ro='')",
    )
    config.addinivalue_line(
        "markers",
        "unversioned_on_moto: the `mount` fixture's S3 bucket has no versioning when the "
        "endpoint is the tests' own moto (see `mount` for why)",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so that fixtures can tell a failed test."""
    report = yield
    setattr(item, f"zonefs_report_{report.when}", report)
    return report


def _test_failed(node: pytest.Item) -> bool:
    report = getattr(node, "zonefs_report_call", None)
    return report is None or report.failed or hasattr(report, "wasxfail")


def _unversioned_bucket(request: pytest.FixtureRequest, client: Any) -> str:
    """A fresh bucket without versioning, removed at teardown."""
    name = f"zonefs-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)

    def remove() -> None:
        try:
            empty_bucket(client, name)
            client.delete_bucket(Bucket=name)
        except Exception as exc:  # cleanup must not hide the test's own result
            print(f"could not remove test bucket {name}: {exc}")

    request.addfinalizer(remove)
    return name


@pytest.fixture(params=["s3", "local"])
def mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mount]:
    """A started zonefs mount of a fresh zone (an S3 bucket on the test endpoint, or an embedded
    local zone), with a short write-back delay and metadata TTL; always unmounted afterwards.

    `@pytest.mark.mount_options(name="value")` adds mount options (`ro=""` for a flag).

    `@pytest.mark.unversioned_on_moto`: moto 5.2.5's delimited ListObjectsV2 in a versioned
    bucket reports a CommonPrefix for a prefix whose keys are all delete markers (AWS does not),
    so a removed or moved directory lingers as an empty "ghost" directory and `rm -r` fails with
    ENOTEMPTY. Tests of removals then use a bucket without versioning on moto, so they test
    zonefs rather than that gap; against ZONEFS_TEST_S3_ENDPOINT the bucket stays versioned.
    """
    reason = fuse_unavailable_reason()
    if reason:
        pytest.skip(reason)
    marker = request.node.get_closest_marker("mount_options")
    options = dict(marker.kwargs) if marker else {}
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        client = request.getfixturevalue("s3_client")
        if (request.node.get_closest_marker("unversioned_on_moto")
                and not os.environ.get(S3_ENDPOINT_ENV)):
            bucket = _unversioned_bucket(request, client)
        else:
            bucket = request.getfixturevalue("bucket")
        store: Any = S3Store(client, bucket)
        zone_url, endpoint_url = f"s3://{bucket}", endpoint
    else:
        zone = request.getfixturevalue("local_zone")
        store = LocalStore(zone, tmp_path / "store-scratch")
        zone_url, endpoint_url = zone.url, None
    m = Mount(request.param, zone_url, tmp_path / "mnt", tmp_path / "cache", store,
              endpoint_url=endpoint_url, options=options)
    try:
        m.start()
        yield m
    finally:
        # After a failure, do not wait for a drain that may be what went wrong.
        m.cleanup(drain=not _test_failed(request.node))


@pytest.fixture(params=["local", "s3"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """A zone to run the `vfs` core on (t3). `@pytest.mark.unversioned_on_moto` (see `mount`):
    moto lists a prefix whose keys are all delete markers as a CommonPrefix (AWS does not), so
    tests that remove or move directories use an unversioned bucket on the tests' own moto."""
    with ExitStack() as stack:
        if request.param == "s3":
            client = request.getfixturevalue("s3_client")
            if (request.node.get_closest_marker("unversioned_on_moto")
                    and not os.environ.get("ZONEFS_TEST_S3_ENDPOINT")):
                bucket = stack.enter_context(unversioned_bucket(client))
                zone = ZoneConfig.parse(f"s3://{bucket}",
                                        endpoint_url=request.getfixturevalue("s3_endpoint"))
            else:
                bucket = request.getfixturevalue("bucket")
                zone = request.getfixturevalue("s3_zone")
            store = Store("s3", open_remote(zone), client, bucket)
        else:
            zone = request.getfixturevalue("local_zone")
            store = Store("local", open_remote(zone))
        closer = getattr(store.remote, "close", None)
        if closer is not None:
            stack.callback(closer)
        cache = tmp_path / "cache"
        cache.mkdir(mode=0o700)
        yield Env(request.param, zone, cache, store)
