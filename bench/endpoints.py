"""S3 endpoints for the benchmark: a loopback moto server started here, or one given by URL.

Every endpoint is on loopback: `check_loopback` refuses any other host, and the servers started
here bind to 127.0.0.1 only. An endpoint is a context manager that yields an `Endpoint`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
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
    endpoint = Endpoint(url, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, kind="moto")
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
    )
