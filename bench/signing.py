"""What signing costs per request on the lean path: the hand-written SigV4 signer against
botocore's own public `botocore.auth.S3SigV4Auth`, on the same kept-alive connections.

Starts a loopback S3 server (SeaweedFS by default, or moto; see endpoints.py), puts one small
object, then sends N signed HEADs and N signed 1 KiB GETs through one `SignedTransport` per
signer, in alternating rounds (so that drift of the machine or the server touches both alike),
and prints the median milliseconds per request of each, with the signing alone (no network,
the same requests) measured apart, which is where the two differ.

    .venv/bin/python bench/signing.py [--server seaweedfs|moto] [-n 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3  # noqa: E402
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402

from endpoints import Endpoint, moto_server, seaweedfs_server  # noqa: E402
from zonefs.remote.lean.transport import (  # noqa: E402
    EMPTY_SHA256,
    Credentials,
    HandSigner,
    SignedTransport,
    Signer,
    Target,
)

BUCKET = "signing-bench"
KEY = "some/dir/object.bin"


class _S3Auth(S3SigV4Auth):
    """botocore's S3 SigV4 signer, told the payload hash (the transport sends the body)."""

    def payload(self, request: AWSRequest) -> str:
        return str(request.context["zonefs_payload"])


class BotocoreSigner:
    """SigV4 for S3 by botocore's own public `S3SigV4Auth`: the same headers as zonefs's
    `HandSigner` gives, for the same request."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._base = f"{target.scheme}://{target.host_header}"

    def sign(self, method: str, path: str, query: str, creds: Credentials, *,
             payload: str = EMPTY_SHA256,
             signed: Mapping[str, str] | None = None) -> dict[str, str]:
        url = f"{self._base}{path}?{query}" if query else self._base + path
        request = AWSRequest(method=method, url=url,
                             headers={"Host": self.target.host_header, **(signed or {})})
        request.context["zonefs_payload"] = payload
        _S3Auth(creds, "s3", self.target.region).add_auth(request)
        return {name: value for name, value in request.headers.items()
                if (lower := name.lower()) == "host" or lower == "authorization"
                or lower.startswith("x-amz-") and lower not in (signed or {})}


def _transport(endpoint: Endpoint, signer: Callable[[Target], Signer]) -> SignedTransport:
    target = Target.from_urls(f"{endpoint.url}/{BUCKET}/probe", "probe",
                              f"{endpoint.url}/{BUCKET}", endpoint.region)
    creds = Credentials(endpoint.access_key, endpoint.secret_key, None)
    return SignedTransport(target, lambda: creds, signer=signer(target))


def _requests(t: SignedTransport, n: int) -> float:
    """Seconds per request of n/2 HEADs and n/2 ranged GETs of 1 KiB."""
    path = t.target.object_path(KEY)
    started = time.perf_counter()
    for i in range(n):
        if i % 2:
            with t.request("HEAD", path) as r:
                r.read()
        else:
            with t.request("GET", path, headers={"Range": "bytes=0-1023"}) as r:
                r.read()
    return (time.perf_counter() - started) / n


def _signing(t: SignedTransport, signer: Signer, n: int) -> float:
    """Seconds per signature of the same requests, without sending them."""
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
    path = t.target.object_path(KEY)
    started = time.perf_counter()
    for _ in range(n):
        signer.sign("HEAD", path, "", creds)
    return (time.perf_counter() - started) / n


def run(endpoint: Endpoint, n: int, rounds: int) -> dict[str, dict[str, float]]:
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint.url, region_name=endpoint.region,
        aws_access_key_id=endpoint.access_key, aws_secret_access_key=endpoint.secret_key)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key=KEY, Body=b"x" * 4096)
    signers: dict[str, Callable[[Target], Signer]] = {"hand-written": HandSigner,
                                                      "botocore": BotocoreSigner}
    transports = {name: _transport(endpoint, make) for name, make in signers.items()}
    for t in transports.values():
        _requests(t, 50)  # warm up: connections open, caches filled
    per_request: dict[str, list[float]] = {name: [] for name in signers}
    per_signature: dict[str, list[float]] = {name: [] for name in signers}
    for _ in range(rounds):
        for name, t in transports.items():
            per_request[name].append(_requests(t, n))
            per_signature[name].append(_signing(t, signers[name](t.target), n * 5))
    for name, t in transports.items():
        # SeaweedFS keeps one connection alive; moto closes each after its answer.
        print(f"  {name}: {t.opened} connection(s) opened")
        t.close()
    return {name: {"request_ms": statistics.median(per_request[name]) * 1e3,
                   "sign_ms": statistics.median(per_signature[name]) * 1e3}
            for name in signers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    parser.add_argument("-n", type=int, default=2000, help="requests per signer and round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    server: Any = seaweedfs_server if args.server == "seaweedfs" else moto_server
    with tempfile.TemporaryDirectory(prefix="zonefs-signing-") as tmp, \
            server(Path(tmp)) as endpoint:
        results = run(endpoint, args.n, args.rounds)
    print(f"{args.server}, {args.n} requests (HEAD and 1 KiB GET) x {args.rounds} rounds, "
          "on the kept-alive pool; medians:")
    for name, r in results.items():
        print(f"  {name:13} {r['request_ms']:.3f} ms per request, "
              f"{r['sign_ms']:.4f} ms per signature")
    hand, boto = results["hand-written"], results["botocore"]
    print(f"  botocore costs {boto['request_ms'] - hand['request_ms']:+.3f} ms per request "
          f"({boto['sign_ms'] - hand['sign_ms']:+.4f} ms per signature)")


if __name__ == "__main__":
    main()
