"""Fast seeding of many small objects: PUTs signed here (SigV4) over keep-alive connections.

boto3 spends about 2 ms of CPU per request on two cores, so 100,000 PUTs through it take
minutes of client CPU alone. Seeding is not what the benchmark measures, so this module signs
each PUT itself (a few HMACs) and sends it with `http.client` from a few threads, one
connection each. Only path-style, plain-http loopback endpoints are supported (what the
benchmark starts).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import http.client
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from endpoints import Endpoint

SERVICE = "s3"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class Signer:
    """SigV4 for PUT requests with a known payload hash, path-style."""

    def __init__(self, endpoint: Endpoint) -> None:
        parts = urlsplit(endpoint.url)
        if parts.scheme != "http":
            raise ValueError("the fast seeder speaks plain http only")
        self.host = parts.netloc
        self.endpoint = endpoint
        self._keys: dict[str, bytes] = {}

    def _signing_key(self, date: str) -> bytes:
        key = self._keys.get(date)
        if key is None:
            k = _hmac(("AWS4" + self.endpoint.secret_key).encode(), date)
            k = _hmac(k, self.endpoint.region)
            k = _hmac(k, SERVICE)
            key = self._keys[date] = _hmac(k, "aws4_request")
        return key

    def put_headers(self, path: str, body: bytes) -> dict[str, str]:
        """Headers of a signed `PUT path` carrying `body` (path already URL-quoted)."""
        payload = hashlib.sha256(body).hexdigest()
        amzdate = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        date = amzdate[:8]
        signed = "host;x-amz-content-sha256;x-amz-date"
        canonical = (
            f"PUT\n{path}\n\nhost:{self.host}\nx-amz-content-sha256:{payload}\n"
            f"x-amz-date:{amzdate}\n\n{signed}\n{payload}"
        )
        scope = f"{date}/{self.endpoint.region}/{SERVICE}/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{amzdate}\n{scope}\n"
            + hashlib.sha256(canonical.encode()).hexdigest()
        )
        signature = hmac.new(self._signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        return {
            "Host": self.host,
            "x-amz-content-sha256": payload,
            "x-amz-date": amzdate,
            "Content-Length": str(len(body)),
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={self.endpoint.access_key}/{scope}, "
                f"SignedHeaders={signed}, Signature={signature}"
            ),
        }


def put_many(
    endpoint: Endpoint, bucket: str, keys: Iterable[str], body: bytes = b"", threads: int = 8
) -> int:
    """PUT `body` at every key of `bucket`; return how many were put. Raises on any failure."""
    signer = Signer(endpoint)
    local = threading.local()

    def connection() -> http.client.HTTPConnection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(signer.host, timeout=60)
        return conn

    def put(key: str) -> None:
        path = "/" + quote(bucket, safe="") + "/" + quote(key, safe="/-_.~")
        for attempt in range(5):
            conn = connection()
            try:
                conn.request("PUT", path, body=body, headers=signer.put_headers(path, body))
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200:
                    return
                if resp.status < 500 or attempt == 4:
                    raise RuntimeError(f"PUT {key}: HTTP {resp.status}: {data[:200]!r}")
            except (OSError, http.client.HTTPException):
                conn.close()
                local.conn = None
                if attempt == 4:
                    raise
            time.sleep(0.1 * (attempt + 1))

    count = 0
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(put, keys):
            count += 1
    return count
