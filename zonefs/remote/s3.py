"""`S3Remote`: a zone in an S3-compatible bucket, through one shared boto3 client.

This is the only module of zonefs that imports boto3 or botocore. It owns the client
configuration (timeouts, retries, checksum behaviour for non-AWS stores), the mapping between
zone keys and bucket keys, large uploads and copies (multipart, parallel parts), the one
table that turns the store's errors into `zonefs.common.errors`, and the set-up of the lean path.

The lean path (`remote/lean.py` and `remote/lean_writes.py` over `remote/signed.py`) makes
the hottest requests without botocore's per-request cost: HEAD, ListObjectsV2 and GETs of up
to `LEAN_BODY_LIMIT` bytes, and the single-part writes (PutObject of files up to
`MULTIPART_THRESHOLD` and of bytes, CopyObject up to `COPY_MULTIPART_THRESHOLD`, DeleteObject
with or without a version id); multipart uploads and copies stay on boto3. It is set up from
this module's own boto3 client: a dry run of a HEAD, a listing and two PUTs (without and with
a checksum), stopped just before sending, shows the URL, addressing style and signing region
boto3 would use, and whether it would sign a PUT's body or send UNSIGNED-PAYLOAD; the
credentials are the session's (refreshed as botocore refreshes them), the TLS verification the
clients', the timeouts the read client's for reads and the write client's for writes.
`lean_requests=False` or `ZONEFS_LEAN_REQUESTS=off` turns it off.

Invariants:
- Zone keys go out with `zone.prefix` prepended and come back with it stripped; the zone's own
  root marker (the key equal to the prefix) is never reported as an object.
- A HEAD of a key with a `.` or `..` segment that the store refuses outright (SeaweedFS
  answers 400 Bad Request, as it refuses to store such keys) answers NotFound: no object can
  be there, and a lookup of one never fails what asked (such keys are hidden as odd keys).
- Every botocore error is translated by `translate_error`, and every error answer of the lean
  path by the same table (`answer_error`); nothing else escapes, and no message carries a
  credential (messages are built here from error codes, never from the request).
- A lean request gives the same value or error as the boto3 call it replaces; a request it
  cannot send as boto3 would (metadata boto3 refuses or encodes its own way), or an answer it
  does not understand, makes that boto3 call instead (each kind logged once, at DEBUG, and
  counted in `lean_fallbacks`); after a redirect the lean path ends for the remote. A lean
  upload honours its cancel as boto3's does (no more of the body is sent), and the payload
  hash is the caller's `payload_sha256` when given.
- A multipart upload or copy that fails or is cancelled is aborted, so no unfinished upload is
  left in the bucket. `multipart_log` hears of each upload before CreateMultipartUpload is
  sent (`intend`), of its id before its first part is sent, and of its end once it is
  completed or aborted, so that the next mount can abort what a killed process left, whether
  or not its id was recorded. An intent is settled by the id only when the create was answered
  at its first attempt: after a botocore retry an earlier attempt may have created an upload
  whose answer was lost.
- Reads and lookups use `_read_client`, whose timeouts fit within `io_timeout`; uploads, copies
  and deletes use `_client` (60 s reads, 3 attempts), as they are retried, not abandoned (the
  lean writes use the same timeouts and attempts, on connections of their own).
- The client is created once and shared by every worker thread (botocore clients are
  thread-safe; the session is only used while constructing).
"""

from __future__ import annotations

import base64
import binascii
import configparser
import email.utils
import errno
import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    SSLError,
)
from botocore.httpsession import get_cert_path
from botocore.utils import get_environ_proxies

from zonefs import __version__
from zonefs.common.errors import (
    AccessDenied,
    AccessRefused,
    BucketMissing,
    ChecksumMismatch,
    ConfigError,
    NoSpace,
    NotFound,
    PreconditionFailed,
    Refused,
    RemoteError,
    StoreFailing,
    StoreUnsupported,
    ZonefsError,
)
from zonefs.remote.base import (
    VERSIONING_ENABLED,
    VERSIONING_SUSPENDED,
    VERSIONING_UNSUPPORTED,
    VERSIONING_UNVERSIONED,
    ListPage,
    MultipartUpload,
    ObjectInfo,
    Remote,
    VersionInfo,
    VersionPage,
    report_progress,
)
from zonefs.remote.lean import LeanReads, StoreAnswer, bare_etag, version_or_none
from zonefs.remote.lean_writes import BytesBody, Cancelled, FileBody, LeanWrites, WriteAnswer
from zonefs.remote.signed import (
    UNSIGNED_PAYLOAD,
    Credentials,
    NotUnderstood,
    SignedTransport,
    Target,
    Unreachable,
)

if TYPE_CHECKING:
    from zonefs.common.config import ZoneConfig

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
_MAX_PARTS = 10_000

#: The environment switch of the lean request path: "off" (or 0, no, false) sends every
#: request through boto3, like the mount option `lean_requests=off`.
LEAN_ENV = "ZONEFS_LEAN_REQUESTS"
#: Bodies up to this size (small objects whole, ranges of large ones) come by the lean path.
LEAN_BODY_LIMIT = 8 * MiB
#: The key of the dry-run requests that show where boto3 sends a bucket's requests.
_DRY_RUN_KEY = "zonefs-lean-path-target"
#: (connect, read) timeouts of uploads, copies and deletes: `_client`'s, and the lean writes'.
_WRITE_TIMEOUTS = (5.0, 60.0)

# Error code (or HTTP status as a string) → (zonefs error class, transient). HEAD answers have
# no body, so their only "code" is the status; both forms are listed.
_ERRORS: dict[str, tuple[type[ZonefsError], bool]] = {
    **dict.fromkeys(("NoSuchKey", "NotFound", "NoSuchVersion", "404"), (NotFound, False)),
    "NoSuchBucket": (BucketMissing, False),
    **dict.fromkeys(
        ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
         "InvalidToken", "AllAccessDisabled", "403"),
        (AccessDenied, False),
    ),
    **dict.fromkeys(
        ("PreconditionFailed", "ConditionalRequestConflict", "ConcurrentModification", "412"),
        (PreconditionFailed, False),
    ),
    # A store without a request or header (R2's unknown headers, JASMIN's If-None-Match).
    **dict.fromkeys(("NotImplemented", "501"), (StoreUnsupported, False)),
    "BadDigest": (ChecksumMismatch, False),
    **dict.fromkeys(
        ("SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable", "Throttling",
         "ThrottlingException", "TooManyRequests", "OperationAborted", "408", "429", "500",
         "502", "503", "504"),
        (RemoteError, True),
    ),
}
# 4xx answers that say nothing for good about the request itself: the credentials or the
# clock (which can be renewed or fixed while the mount runs), or a body damaged on the way.
# Every other 4xx the table above does not name is a refusal (`Refused`): the same request
# gets the same answer (KeyTooLongError, InvalidArgument, EntityTooLarge, MetadataTooLarge…).
_NOT_REFUSALS = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "TokenRefreshRequired", "AllAccessDisabled", "RequestTimeTooSkewed", "IncompleteBody",
    "XAmzContentSHA256Mismatch", "InvalidRange", "403", "409", "416",
})
# Exceptions that mean "the connection failed or timed out": worth retrying later.
_TRANSPORT = (ConnectionError, HTTPClientError, IncompleteReadError)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    """A short human reason for a transport error: 'Connection refused', 'connect timed out'."""
    if isinstance(exc, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(exc, ReadTimeoutError):
        return "no answer in time (read timeout)"
    inner = getattr(exc, "kwargs", {}).get("error") or exc
    text = str(inner)
    m = re.search(r"\[Errno -?\d+\] ([^'\"\)\]]+)", text)
    if m:
        return m.group(1).strip()
    if isinstance(exc, SSLError):
        return "TLS error: " + _one_line(text, 120)
    return type(inner).__name__


def answer_error(
    code: str, status: str, target: str, bucket: str, endpoint: str, *,
    delete_marker: bool = False, message: str = "",
) -> ZonefsError:
    """The zonefs error for an error answer of the store: its error code (the HTTP status
    when the answer had no body), status and `x-amz-delete-marker` header. Shared by the
    boto3 path (`translate_error`) and the lean one, so both raise the same errors."""
    if delete_marker:
        # A delete marker (HEAD/GET by its version id answers 405 on AWS): nothing to read.
        return NotFound(f"{target}: deleted (delete marker)")
    cls, transient = _ERRORS.get(code) or _ERRORS.get(status) or (RemoteError, False)
    label = code or status
    message = _one_line(message)
    if cls is NotFound:
        return NotFound(f"{target}: no such object")
    if cls is BucketMissing:
        return BucketMissing(f"bucket {bucket!r} does not exist at {endpoint}")
    if cls is AccessDenied and code == "AccessDenied":
        # Said in a body with the credentials accepted: a policy denies this request.
        return AccessRefused(f"access denied to {target}: check the credentials ({label})",
                             code=label, store_message=message)
    if cls is AccessDenied:
        return AccessDenied(f"access denied to {target}: check the credentials ({label})")
    if cls is PreconditionFailed:
        return PreconditionFailed(f"{target} changed on the store ({label})")
    if cls is StoreUnsupported:
        return StoreUnsupported(f"{target}: the store does not implement this request "
                                f"({label})")
    if cls is ChecksumMismatch:
        return ChecksumMismatch(f"{target}: the store got other bytes than were sent "
                                f"({label})")
    if transient:
        return StoreFailing(f"{target}: the store is busy or failing ({label})", code=label,
                            status=str(status))
    text = f"{target}: {label} {message}".rstrip()
    if status.startswith("4") and len(status) == 3 and code not in _NOT_REFUSALS \
            and status not in _NOT_REFUSALS:
        return Refused(text, code=label, store_message=message)
    return RemoteError(text)


def translate_error(exc: BaseException, target: str, bucket: str, endpoint: str) -> ZonefsError:
    """The one botocore → zonefs error table. `target` names what was asked for (a URI)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        headers = meta.get("HTTPHeaders", {})
        return answer_error(
            str(err.get("Code") or ""), str(meta.get("HTTPStatusCode") or ""), target, bucket,
            endpoint, delete_marker=headers.get("x-amz-delete-marker") == "true",
            message=str(err.get("Message") or ""),
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDenied(
            "no usable AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
            " or name a profile from ~/.aws/credentials"
        )
    if isinstance(exc, _TRANSPORT):
        return RemoteError(f"cannot reach {endpoint}: {_reason(exc)}", transient=True)
    if isinstance(exc, Unreachable):
        return RemoteError(f"cannot reach {endpoint}: {exc.reason}", transient=True)
    if isinstance(exc, OSError):
        # Local file trouble while streaming to or from the cache: not the store's fault.
        cls_local = NoSpace if exc.errno == errno.ENOSPC else RemoteError
        return cls_local(f"{target}: local file error: {exc.strerror or exc}")
    return RemoteError(f"{target}: {type(exc).__name__}: {_one_line(str(exc))}")


def _text(value: bytes | str) -> str:
    """A header value of a botocore request, as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def lean_requests_allowed() -> bool:
    """False when the environment switch turns the lean path off (ZONEFS_LEAN_REQUESTS=off)."""
    return os.environ.get(LEAN_ENV, "").strip().lower() not in ("0", "off", "no", "false")


class _DryRun(Exception):
    """Raised by the hook that sees a request just before it would be sent: it is not sent."""


class _Cancelled(BaseException):
    """Raised inside a request body's read() to stop an upload.

    A BaseException on purpose: botocore wraps any Exception raised while sending into a
    retryable HTTPClientError (so a cancel would be retried with backoff), while a
    BaseException passes straight through, and urllib3 discards the half-used connection.
    """


class _FileWindow:
    """Bytes [start, start+length) of an open file as a seekable body that honours `stopped`."""

    def __init__(self, f: IO[bytes], start: int, length: int, stopped: Callable[[], bool]):
        self._f, self._start, self._len, self._stopped = f, start, length, stopped
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        if self._stopped():
            raise _Cancelled
        left = self._len - self._pos
        n = left if n is None or n < 0 else min(n, left)
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self._len)[whence]
        self._pos = min(max(0, base + offset), self._len)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _etag(value: str | None) -> str:
    return bare_etag(value)


def _version(resp: Mapping[str, Any]) -> str | None:
    """The version id of a boto3 answer, None on a store without versioning."""
    return version_or_none(resp.get("VersionId"))


def _mtime(resp: Mapping[str, Any]) -> float:
    """LastModified when the answer has one, else the server's Date header, else now."""
    if resp.get("LastModified") is not None:
        return resp["LastModified"].timestamp()
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()


def _read_credentials(zone: ZoneConfig) -> dict[str, str]:
    """Keys from the zone's credentials file (AWS shared-credentials format), for a Session.
    Messages name the file and section, never a value."""
    assert zone.credentials_file
    section = zone.profile or "default"
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(zone.credentials_file, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read credentials_file {zone.credentials_file}: "
                          f"{type(exc).__name__}") from None
    if not parser.has_section(section):
        raise ConfigError(f"credentials_file {zone.credentials_file} has no [{section}] section")
    values = parser[section]
    keys = {"aws_access_key_id": values.get("aws_access_key_id"),
            "aws_secret_access_key": values.get("aws_secret_access_key"),
            "aws_session_token": values.get("aws_session_token")}
    if not keys["aws_access_key_id"] or not keys["aws_secret_access_key"]:
        raise ConfigError(f"credentials_file {zone.credentials_file} [{section}] needs "
                          "aws_access_key_id and aws_secret_access_key")
    return {k: v for k, v in keys.items() if v}


def _part_size(size: int, minimum: int) -> int:
    """`minimum`, or bigger (whole MiB) when that is needed to stay within 10,000 parts."""
    need = -(-size // _MAX_PARTS)
    return max(minimum, -(-need // MiB) * MiB)


class S3Remote(Remote):
    """A zone `s3://bucket/prefix/` at an S3-compatible endpoint."""

    #: Files up to this size go in one PUT; larger ones as a multipart upload.
    MULTIPART_THRESHOLD = 16 * MiB
    PART_SIZE = 16 * MiB
    PART_THREADS = 6
    #: CopyObject is limited to 5 GiB; larger sources are copied with UploadPartCopy.
    COPY_MULTIPART_THRESHOLD = 5 * GiB
    COPY_PART_SIZE = 512 * MiB

    def __init__(self, zone: ZoneConfig, *, max_requests: int = 16,
                 io_timeout: float | None = None, lean_requests: bool = True) -> None:
        super().__init__(max_requests=max_requests, io_timeout=io_timeout)
        self.zone = zone
        self.bucket = zone.bucket
        self.prefix = zone.prefix
        self.description = zone.label
        try:
            if zone.credentials_file:
                self._session = boto3.session.Session(**_read_credentials(zone))
            else:
                self._session = boto3.session.Session(profile_name=zone.profile)
        except ProfileNotFound:
            raise ConfigError(f"AWS profile {zone.profile!r} not found") from None
        self._client = self._make_client(
            connect_timeout=_WRITE_TIMEOUTS[0],
            read_timeout=_WRITE_TIMEOUTS[1],
            retries={"mode": "standard", "max_attempts": 3},
            # Every worker thread and every parallel part may hold a connection at once.
            max_pool_connections=max_requests * 2 + self.PART_THREADS,
        )
        self._read_client = self._client
        self._read_timeouts = (5.0, 60.0)  # (connect, read) of the reads' client
        if io_timeout is not None:
            # Reads and lookups get their own client whose timeouts fit in io_timeout: the
            # Remote abandons a read that takes longer, and its thread (which holds a limiter
            # slot) should then end soon, not after the data client's 60 s per attempt.
            self._read_timeouts = (min(5.0, io_timeout), min(60.0, io_timeout))
            self._read_client = self._make_client(
                connect_timeout=self._read_timeouts[0],
                read_timeout=self._read_timeouts[1],
                retries={"mode": "standard", "max_attempts": 3},
                max_pool_connections=max_requests * 2,
            )
        self._endpoint: str = zone.endpoint_url or self._client.meta.endpoint_url
        self._check_client: Any = None
        # Clients made after this constructor (the check's, the lean path's dry run) are made
        # one at a time: a boto3 session is not safe for concurrent client creation.
        self._client_lock = threading.Lock()
        self._max_requests = max_requests
        # The lean path (remote/lean.py, remote/lean_writes.py): set up at the first request
        # that wants it, in a worker thread, since it resolves credentials. None until then,
        # False where it cannot work. Its writes are None where only its reads can work.
        self._lean_wanted = lean_requests and lean_requests_allowed()
        self._lean: LeanReads | None | bool = None if self._lean_wanted else False
        self._lean_w: LeanWrites | None = None
        self._lean_lock = threading.Lock()
        #: Requests the lean path handed to boto3, by kind of answer it did not understand.
        self.lean_fallbacks: Counter[str] = Counter()

    def _make_client(self, **options: Any) -> Any:
        region = self.zone.region or ("us-east-1" if self.zone.endpoint_url else None)
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
            # boto3 >= 1.36 otherwise sends CRC32 (aws-chunked over https) on every PUT, which
            # many S3-compatible stores reject or store verbatim (zone-buckets.md §4.3). Older
            # versions never send it and do not know the options.
            options.update(request_checksum_calculation="when_required",
                           response_checksum_validation="when_required")
        if self.zone.addressing_style:
            options["s3"] = {"addressing_style": self.zone.addressing_style}
        config = Config(region_name=region, **options)
        return self._session.client(
            "s3", endpoint_url=self.zone.endpoint_url, config=config,
            verify=self.zone.ca_bundle or None,
        )

    def close(self) -> None:
        """Close the lean path's idle connections (boto3's close with their client)."""
        if isinstance(self._lean, LeanReads):
            self._lean.transport.close()
        if self._lean_w is not None:
            self._lean_w.transport.close()

    # -- the lean path ------------------------------------------------------------------------

    def _lean_reads(self) -> LeanReads | None:
        """The lean path, set up on first use; None when it is off or cannot work here."""
        lean = self._lean
        if lean is None:
            with self._lean_lock:
                if self._lean is None:
                    started = self._start_lean()
                    if started is None:
                        self._lean = False
                    else:
                        self._lean, self._lean_w = started
                lean = self._lean
        return lean if isinstance(lean, LeanReads) else None

    def _lean_writes(self) -> LeanWrites | None:
        """The lean path's writes, set up on first use; None when they are off."""
        return self._lean_w if self._lean_reads() is not None else None

    def _start_lean(self) -> tuple[LeanReads, LeanWrites | None] | None:
        """A lean path that sends what the boto3 clients would send, or None (logged at
        DEBUG) where it cannot: no credentials, a proxy, no SigV4, an odd endpoint. Its
        writes are None (the reads work) where boto3 hashes PUT bodies in a way not seen."""
        try:
            creds = self._session.get_credentials()
            if creds is None:
                raise NotUnderstood("setup", "no credentials (boto3 reports that itself)")
            target, unsigned = self._lean_target()
            proxies = get_environ_proxies(f"{target.scheme}://{target.host_header}/")
            if proxies.get(target.scheme):
                raise NotUnderstood("setup", "a proxy is configured for the endpoint")
        except NotUnderstood as exc:
            log.debug("lean requests off for %s: %s", self.description, exc)
            return None
        except (BotoCoreError, ClientError, ValueError) as exc:
            log.debug("lean requests off for %s: %s", self.description, type(exc).__name__)
            return None

        def credentials() -> Credentials | None:
            try:
                frozen = creds.get_frozen_credentials()  # refreshes ones about to expire
            except Exception:  # a failed refresh: boto3 reports it, translated, instead
                return None
            if not frozen.access_key or not frozen.secret_key:
                return None
            return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)

        def transport(timeouts: tuple[float, float]) -> SignedTransport:
            return SignedTransport(
                target, credentials, verify=verify, connect_timeout=timeouts[0],
                read_timeout=timeouts[1], max_attempts=3, max_idle=self._max_requests * 2,
                user_agent=f"zonefs/{__version__}",
            )

        verify = self._verify_setting()
        reads = LeanReads(transport(self._read_timeouts), self.prefix,
                          body_limit=LEAN_BODY_LIMIT, chunk=MiB)
        # Writes get the write client's timeouts, and connections of their own.
        writes = None
        if unsigned is not None:
            writes = LeanWrites(transport(_WRITE_TIMEOUTS), self.bucket,
                                unsigned_payload=unsigned)
        log.debug("lean requests on for %s: %s://%s, region %s%s", self.description,
                  target.scheme, target.host_header, target.region,
                  "" if writes else " (reads only: PUT payloads hashed in an unknown way)")
        return reads, writes

    def _lean_target(self) -> tuple[Target, tuple[bool, bool] | None]:
        """Where the boto3 client sends this bucket's requests and how it signs them, seen by
        building a HEAD, a listing and two PUTs (without and with a checksum) with it and
        stopping each just before it is sent: the endpoint, addressing style and region are
        then boto3's own, whatever configured them. NotUnderstood when they are not SigV4
        header-signed S3 requests.

        Also whether those PUTs' payload hash is UNSIGNED-PAYLOAD (botocore decides by the
        scheme, the checksum header and its `payload_signing_enabled` setting), or None when
        they are neither that nor a SHA-256 (a streaming signature): no lean writes then."""
        with self._client_lock:
            client = self._make_client(connect_timeout=1, read_timeout=1,
                                       retries={"mode": "standard", "max_attempts": 1})
        seen: list[tuple[str, str, str, str]] = []  # method, URL, Authorization, payload hash

        def capture(request: Any, **_: Any) -> None:
            headers = request.headers
            seen.append((request.method, request.url,
                         *(_text(headers.get(name, b""))
                           for name in ("Authorization", "X-Amz-Content-SHA256"))))
            raise _DryRun

        empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
        client.meta.events.register("before-send.s3", capture)
        try:
            for call in (lambda: client.head_object(Bucket=self.bucket, Key=_DRY_RUN_KEY),
                         lambda: client.list_objects_v2(Bucket=self.bucket, MaxKeys=1),
                         lambda: client.put_object(Bucket=self.bucket, Key=_DRY_RUN_KEY,
                                                   Body=b""),
                         lambda: client.put_object(Bucket=self.bucket, Key=_DRY_RUN_KEY,
                                                   Body=b"", ChecksumAlgorithm="SHA256",
                                                   ChecksumSHA256=empty)):
                with suppress(_DryRun):
                    call()
        finally:
            client.close()
        if [request[0] for request in seen] != ["HEAD", "GET", "PUT", "PUT"]:
            raise NotUnderstood("setup", "the dry run did not reach the transport")
        (_, head_url, auth, _), (_, list_url, _, _) = seen[:2]
        m = re.match(r"AWS4-HMAC-SHA256 Credential=[^/]*/\d{8}/([^/]+)/s3/aws4_request,", auth)
        if m is None:
            raise NotUnderstood("setup", "the client does not sign with SigV4 headers")
        target = Target.from_urls(head_url, _DRY_RUN_KEY, list_url, m.group(1))
        unsigned: tuple[bool, bool] | None = None
        puts = seen[2:]
        if all(url == head_url and (payload == UNSIGNED_PAYLOAD
                                    or re.fullmatch("[0-9a-f]{64}", payload))
               for _, url, _, payload in puts):
            unsigned = (puts[0][3] == UNSIGNED_PAYLOAD, puts[1][3] == UNSIGNED_PAYLOAD)
        return target, unsigned

    def _verify_setting(self) -> bool | str:
        """TLS verification as botocore resolves it for the clients: the zone's ca_bundle,
        else the profile's or AWS_CA_BUNDLE, else REQUESTS_CA_BUNDLE, else its default bundle."""
        verify: Any = self.zone.ca_bundle or self._session._session.get_config_variable(
            "ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE") or True
        return get_cert_path(verify) if verify is True else verify

    def _lean_call(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` of the lean path, its errors as zonefs errors (NotUnderstood
        passes, and a cancel becomes `_Cancelled`)."""
        try:
            return fn(*args, **kwargs)
        except StoreAnswer as answer:
            raise answer_error(answer.code, str(answer.status), self.object_uri(key),
                               self.bucket, self._endpoint, delete_marker=answer.delete_marker,
                               message=answer.message) from None
        except (Unreachable, OSError) as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self._endpoint) from None
        except Cancelled:
            raise _Cancelled from None  # the caller's `_translated` says what was cancelled

    def _fell_back(self, what: str, exc: NotUnderstood) -> None:
        """Note a request handed to boto3; the first of each kind is logged (DEBUG). After a
        redirect (the bucket is in another region, or elsewhere) every lean request would be
        one more round trip before boto3's, so the lean path ends for this remote."""
        lean, writes = None, None
        with self._lean_lock:
            self.lean_fallbacks[exc.kind] += 1
            first = self.lean_fallbacks[exc.kind] == 1
            if exc.kind == "redirect" and isinstance(self._lean, LeanReads):
                lean, self._lean = self._lean, False
                writes, self._lean_w = self._lean_w, None
        if first:
            log.debug("lean %s of %s not understood (%s); boto3 makes such requests%s", what,
                      self.description, exc, ", from now on" if lean is not None else "")
        if lean is not None:
            lean.transport.close()
        if writes is not None:
            writes.transport.close()

    # -- helpers ------------------------------------------------------------------------------

    def object_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _full(self, key: str) -> str:
        return self.prefix + key

    def object_key(self, key: str) -> str:
        return self._full(key)

    def _zone_key(self, full_key: str) -> str:
        return full_key[len(self.prefix):]

    @contextmanager
    def _translated(self, key: str, action: str = "") -> Iterator[None]:
        try:
            yield
        except _Cancelled:
            what = f"{action or 'request'} of {self.object_uri(key)}"
            raise RemoteError(f"{what} cancelled") from None
        except (ClientError, BotoCoreError, OSError) as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket, self._endpoint) from exc

    def _info(
        self, key: str, resp: Mapping[str, Any], size: int | None = None,
        metadata: Mapping[str, str] | None = None, content_type: str | None = None,
    ) -> ObjectInfo:
        meta = resp.get("Metadata") if metadata is None else metadata
        return ObjectInfo(
            key=key,
            size=resp.get("ContentLength", 0) if size is None else size,
            etag=_etag(resp.get("ETag")),
            mtime=_mtime(resp),
            version_id=_version(resp),
            metadata=None if meta is None else {k.lower(): v for k, v in meta.items()},
            content_type=resp.get("ContentType") if content_type is None else content_type,
        )

    @staticmethod
    def _written(key: str, answer: WriteAnswer, size: int, metadata: Mapping[str, str],
                 content_type: str | None) -> ObjectInfo:
        """The `ObjectInfo` of a lean write: what `_info` makes of boto3's answer to it."""
        return ObjectInfo(key=key, size=size, etag=answer.etag, mtime=answer.mtime,
                          version_id=answer.version_id,
                          metadata={k.lower(): v for k, v in metadata.items()},
                          content_type=content_type)

    @staticmethod
    def _put_args(metadata: Mapping[str, str], content_type: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": {k.lower(): v for k, v in metadata.items()}}
        if content_type:
            args["ContentType"] = content_type
        return args

    @staticmethod
    def _condition_args(if_match: str | None, if_none_match: bool) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if if_match:
            args["IfMatch"] = f'"{_etag(if_match)}"'
        if if_none_match:
            args["IfNoneMatch"] = "*"
        return args

    @staticmethod
    def _checksum_args(checksum_sha256: str | None) -> dict[str, Any]:
        if not checksum_sha256:
            return {}
        # Both, so botocore sends our value up front (no aws-chunked trailer) and computes none
        # itself (zone-buckets.md §4.3); S3 wants base64 of the raw digest.
        return {"ChecksumAlgorithm": "SHA256",
                "ChecksumSHA256": base64.b64encode(bytes.fromhex(checksum_sha256)).decode()}

    # -- Remote -------------------------------------------------------------------------------

    def _check(self) -> None:
        with self._client_lock:
            if self._check_client is None:
                # A separate impatient client: an unreachable endpoint must fail within seconds,
                # not after the data client's retries and 60 s read timeout.
                self._check_client = self._make_client(
                    connect_timeout=3, read_timeout=5,
                    retries={"mode": "standard", "max_attempts": 1},
                )
        try:
            self._check_client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            err = translate_error(exc, f"bucket {self.bucket!r}", self.bucket, self._endpoint)
            if isinstance(err, NotFound):
                err = BucketMissing(f"bucket {self.bucket!r} does not exist at {self._endpoint}")
            raise err from exc

    def _head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        try:
            return self._head_once(key, version_id)
        except RemoteError as exc:
            # Only an unclassified, permanent refusal (a bare 400: not a 403, 404, 5xx or
            # timeout).
            if (type(exc) not in (RemoteError, Refused) or exc.transient
                    or not _has_dot_segment(key)):
                raise
            raise NotFound(f"{self.object_uri(key)}: no such object (the store refuses to "
                           f"look up a key with a '.' or '..' segment)") from None

    def _head_once(self, key: str, version_id: str | None) -> ObjectInfo:
        lean = self._lean_reads()
        if lean is not None:
            try:
                info: ObjectInfo = self._lean_call(key, lean.head, key, self._full(key),
                                                   version_id)
                return info
            except NotUnderstood as exc:
                self._fell_back("HEAD", exc)
        with self._translated(key):
            args = {"VersionId": version_id} if version_id else {}
            resp = self._read_client.head_object(Bucket=self.bucket, Key=self._full(key),
                                                 **args)
        return self._info(key, resp)

    def _list(
        self, prefix: str, delimiter: str | None, token: str | None, max_keys: int
    ) -> ListPage:
        lean = self._lean_reads()
        if lean is not None:
            try:
                page: ListPage = self._lean_call(prefix, lean.list, self._full(prefix),
                                                 delimiter, token, max_keys)
                return page
            except NotUnderstood as exc:
                self._fell_back("listing", exc)
        args: dict[str, Any] = {"Prefix": self._full(prefix), "MaxKeys": max_keys}
        if delimiter:
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = token
        with self._translated(prefix):
            resp = self._read_client.list_objects_v2(Bucket=self.bucket, **args)
        objects = [
            ObjectInfo(
                key=self._zone_key(o["Key"]), size=o.get("Size", 0), etag=_etag(o.get("ETag")),
                mtime=o["LastModified"].timestamp(),
            )
            for o in resp.get("Contents", [])
            if o["Key"] != self.prefix  # the zone root's own marker is not an entry
        ]
        prefixes = [self._zone_key(p["Prefix"]) for p in resp.get("CommonPrefixes", [])]
        next_token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        return ListPage(objects=objects, prefixes=prefixes, next_token=next_token)

    def _get_args(self, version_id: str | None, if_match: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if version_id:
            args["VersionId"] = version_id
        if if_match:
            args["IfMatch"] = f'"{_etag(if_match)}"'
        return args

    def _get_range(
        self, key: str, start: int, length: int, version_id: str | None = None,
        if_match: str | None = None,
    ) -> bytes:
        if length <= 0:
            return b""
        lean = self._lean_reads() if length <= LEAN_BODY_LIMIT else None
        if lean is not None:
            try:
                data: bytes = self._lean_call(key, lean.get_range, self._full(key), start,
                                              length, version_id, if_match)
                return data
            except NotUnderstood as exc:
                self._fell_back("ranged GET", exc)
        args = self._get_args(version_id, if_match)
        with self._translated(key):
            try:
                resp = self._read_client.get_object(
                    Bucket=self.bucket, Key=self._full(key),
                    Range=f"bytes={start}-{start + length - 1}", **args,
                )
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if exc.response.get("Error", {}).get("Code") == "InvalidRange" or status == 416:
                    return b""  # the range starts at or past the end of the object
                raise
            body = resp["Body"]  # StreamingBody's own `with` yields the raw stream: close it here
            pieces = []
            try:
                # In pieces, each reported: a slow but flowing answer is not a stalled one.
                for chunk in body.iter_chunks(MiB):
                    pieces.append(chunk)
                    report_progress()
            finally:
                body.close()
            data = b"".join(pieces)
        if resp.get("ContentRange") is None and resp["ResponseMetadata"]["HTTPStatusCode"] == 200:
            data = data[start:start + length]  # a store that ignored the Range header
        return data

    def _download(
        self, key: str, dest: str, version_id: str | None = None, if_match: str | None = None
    ) -> ObjectInfo:
        lean = self._lean_reads()
        if lean is not None:
            try:
                info: ObjectInfo = self._lean_call(key, lean.download, key, self._full(key),
                                                   dest, version_id, if_match)
                return info
            except NotUnderstood as exc:
                if exc.kind != "large body":  # larger objects take boto3's path by design
                    self._fell_back("GET", exc)
        args = self._get_args(version_id, if_match)
        with self._translated(key):
            resp = self._read_client.get_object(Bucket=self.bucket, Key=self._full(key), **args)
            body = resp["Body"]
            try:
                with open(dest, "wb") as f:
                    for chunk in body.iter_chunks(MiB):  # streamed: never whole in memory
                        report_progress()  # before the write: an abandoned call stops here
                        f.write(chunk)
            finally:
                body.close()
        return self._info(key, resp)

    def _upload(
        self,
        key: str,
        src: str,
        metadata: Mapping[str, str],
        content_type: str | None,
        cancel: threading.Event | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        checksum_sha256: str | None = None,
        payload_sha256: str | None = None,
    ) -> ObjectInfo:
        put_args = self._put_args(metadata, content_type)
        conditions = self._condition_args(if_match, if_none_match)

        def stopped() -> bool:
            return cancel is not None and cancel.is_set()

        with self._translated(key, "upload"), open(src, "rb") as f:
            size = f.seek(0, 2)
            if stopped():
                raise _Cancelled
            if size > self.MULTIPART_THRESHOLD:
                # S3 evaluates conditions at CompleteMultipartUpload. A SHA-256 of a multipart
                # object is a hash of part hashes, not the file's (zone-buckets.md §4.1): none.
                resp = self._multipart_upload(key, f.name, size, put_args, stopped, conditions)
            else:
                checksum = self._checksum_args(checksum_sha256)
                lean = self._lean_writes()
                if lean is not None:
                    try:
                        body = FileBody(f, size, stopped, payload_sha256)
                        answer: WriteAnswer = self._lean_call(
                            key, lean.put, self._full(key), body, put_args["Metadata"],
                            content_type, if_match=if_match, if_none_match=if_none_match,
                            checksum_b64=checksum.get("ChecksumSHA256"))
                        return self._written(key, answer, body.length, put_args["Metadata"],
                                             content_type)
                    except NotUnderstood as exc:
                        self._fell_back("PUT", exc)
                resp = self._client.put_object(
                    Bucket=self.bucket, Key=self._full(key),
                    Body=_FileWindow(f, 0, size, stopped), ContentLength=size, **put_args,
                    **conditions, **checksum,
                )
        return self._info(key, resp, size, put_args["Metadata"], content_type)

    def _multipart_upload(
        self, key: str, src: str, size: int, put_args: dict[str, Any],
        cancelled: Callable[[], bool], complete_args: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        part = _part_size(size, self.PART_SIZE)
        ranges = [(n + 1, off, min(part, size - off)) for n, off in enumerate(range(0, size, part))]

        def send(
            failed: Callable[[], bool], upload_id: str, number: int, offset: int, length: int
        ) -> dict[str, Any]:
            if failed():
                raise _Cancelled
            # One file object per part: parts are read concurrently at different offsets.
            with open(src, "rb") as f:
                resp = self._client.upload_part(
                    Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
                    PartNumber=number, Body=_FileWindow(f, offset, length, failed),
                    ContentLength=length,
                )
            return {"ETag": resp["ETag"], "PartNumber": number}

        return self._run_multipart(key, put_args, ranges, send, cancelled, complete_args)

    def _run_multipart(
        self,
        key: str,
        create_args: dict[str, Any],
        ranges: list[tuple[int, int, int]],
        send: Callable[..., dict[str, Any]],
        cancelled: Callable[[], bool],
        complete_args: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create, send every (number, offset, length) part in parallel, complete (with
        `complete_args`: the write's conditions); or abort.

        `multipart_log` hears of the intent before CreateMultipartUpload is sent, of the upload
        id before the first part is sent, and of its end once it is completed or aborted; an
        upload whose abort failed is not reported ended, so that its owner aborts it later (at
        the next mount)."""
        full = self._full(key)
        journal = self.multipart_log
        # Durable before the request goes out: a crash after the store created the upload but
        # before its id is recorded leaves the intent, by which the next mount finds it.
        intent = journal.intend(key) if journal is not None else 0
        try:
            created = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full, **create_args)
        except ClientError as exc:
            if journal is not None and _refused_at_first_attempt(exc):
                journal.refused(intent)
            raise
        upload_id = created["UploadId"]
        failure = threading.Event()

        def failed() -> bool:
            return failure.is_set() or cancelled()

        try:
            if journal is not None:
                journal.started(key, upload_id, intent, sole=_attempts(created) == 1)
            workers = max(1, min(self.PART_THREADS, len(ranges)))
            with ThreadPoolExecutor(workers, thread_name_prefix="zonefs-part") as pool:
                futures = [pool.submit(send, failed, upload_id, *r) for r in ranges]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                if any(f.exception() for f in done):
                    failure.set()  # the other parts stop at their next read
                    wait(futures)
                    raise _first_error(futures)
            if cancelled():
                raise _Cancelled
            parts = [f.result() for f in futures]
            resp: dict[str, Any] = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id,
                MultipartUpload={"Parts": parts}, **(complete_args or {}),
            )
        except BaseException:
            try:
                self._abort_multipart(key, upload_id)
            except ZonefsError as exc:
                log.warning("could not abort the multipart upload of %s (the next mount "
                            "tries again): %s", self.object_uri(key), exc)
            else:
                if journal is not None:
                    journal.ended(key, upload_id)
            raise
        if journal is not None:
            journal.ended(key, upload_id)
        if not (resp.get("ETag") or "").strip('"'):
            resp = {**resp, "ETag": self._etag_after_complete(full, resp.get("VersionId"))}
        return resp

    def _etag_after_complete(self, full: str, version_id: str | None) -> str:
        """The ETag of an object a CompleteMultipartUpload just made, for a store that
        answered it without one (Ceph RGW Pacific): a HEAD of that version. Empty when the
        HEAD fails too (the upload itself did land)."""
        args = {"VersionId": version_id} if version_id else {}
        try:
            head = self._read_client.head_object(Bucket=self.bucket, Key=full, **args)
        except (ClientError, BotoCoreError) as exc:
            log.debug("no ETag for %s after its multipart upload: %s", full, exc)
            return ""
        return str(head.get("ETag", ""))

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
        except ClientError as exc:
            if _upload_gone(exc):
                return  # completed or aborted already: nothing left in the bucket
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self._endpoint) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self._endpoint) from exc

    def _list_multipart_uploads(self, key: str) -> list[MultipartUpload]:
        full = self._full(key)
        args: dict[str, Any] = {"Prefix": full}
        found: list[MultipartUpload] = []
        with self._translated(key, "multipart upload listing"):
            while True:
                resp = self._read_client.list_multipart_uploads(Bucket=self.bucket, **args)
                report_progress()
                for up in resp.get("Uploads", []):
                    if up.get("Key") != full:
                        continue  # the prefix matches longer keys too
                    initiated = up.get("Initiated")
                    found.append(MultipartUpload(
                        key, up["UploadId"],
                        None if initiated is None else initiated.timestamp()))
                next_key = resp.get("NextKeyMarker") or ""
                next_id = resp.get("NextUploadIdMarker") or ""
                # Uploads are listed by key: once past `full`, none of its are left.
                if (not resp.get("IsTruncated") or not next_key or next_key > full
                        or (next_key, next_id) == (args.get("KeyMarker"),
                                                   args.get("UploadIdMarker", ""))):
                    return found
                args["KeyMarker"] = next_key
                if next_id:
                    args["UploadIdMarker"] = next_id
                else:
                    args.pop("UploadIdMarker", None)

    def _multipart_has_parts(self, key: str, upload_id: str) -> bool:
        try:
            resp = self._read_client.list_parts(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id, MaxParts=1)
        except ClientError as exc:
            if _upload_gone(exc):
                return False
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self._endpoint) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self._endpoint) from exc
        return bool(resp.get("Parts"))

    def _put_bytes(
        self, key: str, data: bytes, metadata: Mapping[str, str], content_type: str | None,
        *, if_match: str | None = None, if_none_match: bool = False,
        checksum_sha256: str | None = None,
    ) -> ObjectInfo:
        put_args = self._put_args(metadata, content_type)
        checksum = self._checksum_args(checksum_sha256)
        lean = self._lean_writes()
        if lean is not None:
            try:
                answer: WriteAnswer = self._lean_call(
                    key, lean.put, self._full(key), BytesBody(data), put_args["Metadata"],
                    content_type, if_match=if_match, if_none_match=if_none_match,
                    checksum_b64=checksum.get("ChecksumSHA256"))
                return self._written(key, answer, len(data), put_args["Metadata"],
                                     content_type)
            except NotUnderstood as exc:
                self._fell_back("PUT", exc)
        with self._translated(key):
            resp = self._client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, **put_args,
                **self._condition_args(if_match, if_none_match), **checksum,
            )
        return self._info(key, resp, len(data), put_args["Metadata"], content_type)

    def _head_checksum(self, key: str) -> str | None:
        with self._translated(key):
            resp = self._read_client.head_object(Bucket=self.bucket, Key=self._full(key),
                                                 ChecksumMode="ENABLED")
        value = resp.get("ChecksumSHA256")
        # A "-N" suffix or a COMPOSITE type is a hash of part hashes: not the body's SHA-256.
        if not value or "-" in value or resp.get("ChecksumType") not in (None, "FULL_OBJECT"):
            return None
        try:
            return base64.b64decode(value, validate=True).hex()
        except (binascii.Error, ValueError):
            return None

    def _copy(
        self,
        src_key: str,
        dst_key: str,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        src_version_id: str | None = None,
    ) -> ObjectInfo:
        # Size decides single or multipart; metadata for the result.
        src = self._head(src_key, src_version_id)
        new_meta = dict(src.metadata or {}) if metadata is None else {
            k.lower(): v for k, v in metadata.items()}
        new_type = content_type or src.content_type
        with self._translated(dst_key, "copy"):
            if src.size > self.COPY_MULTIPART_THRESHOLD:
                resp = self._multipart_copy(src, dst_key, new_meta, new_type)
            else:
                lean = self._lean_writes()
                if lean is not None:
                    try:
                        answer: WriteAnswer = self._lean_call(
                            dst_key, lean.copy, self._full(dst_key), self._full(src_key),
                            src_version_id, None if metadata is None else (new_meta, new_type))
                        return self._written(dst_key, answer, src.size, new_meta, new_type)
                    except NotUnderstood as exc:
                        self._fell_back("copy", exc)
                args: dict[str, Any] = {"MetadataDirective": "COPY"}
                if metadata is not None:
                    args = {"MetadataDirective": "REPLACE", **self._put_args(new_meta, new_type)}
                source = {"Bucket": self.bucket, "Key": self._full(src_key)}
                if src_version_id:
                    source["VersionId"] = src_version_id
                resp = self._client.copy_object(
                    Bucket=self.bucket, Key=self._full(dst_key), CopySource=source, **args,
                )
                resp = {**resp.get("CopyObjectResult", {}), **resp}
        return self._info(dst_key, resp, src.size, new_meta, new_type)

    def _multipart_copy(
        self, src: ObjectInfo, dst_key: str, metadata: dict[str, str], content_type: str | None
    ) -> dict[str, Any]:
        part = min(_part_size(src.size, self.COPY_PART_SIZE), 5 * GiB)
        ranges = [
            (n + 1, off, min(part, src.size - off))
            for n, off in enumerate(range(0, src.size, part))
        ]
        # Pin the source version so that every part comes from the same bytes.
        source = {"Bucket": self.bucket, "Key": self._full(src.key)}
        if src.version_id:
            source["VersionId"] = src.version_id

        def send(
            failed: Callable[[], bool], upload_id: str, number: int, offset: int, length: int
        ) -> dict[str, Any]:
            if failed():
                raise _Cancelled
            resp = self._client.upload_part_copy(
                Bucket=self.bucket, Key=self._full(dst_key), UploadId=upload_id,
                PartNumber=number, CopySource=source,
                CopySourceRange=f"bytes={offset}-{offset + length - 1}",
            )
            return {"ETag": resp["CopyPartResult"]["ETag"], "PartNumber": number}

        return self._run_multipart(
            dst_key, self._put_args(metadata, content_type), ranges, send, lambda: False
        )

    def _delete(self, key: str) -> None:
        try:
            lean = self._lean_writes()
            if lean is not None:
                try:
                    self._lean_call(key, lean.delete, self._full(key))
                    return
                except NotUnderstood as exc:
                    self._fell_back("DELETE", exc)
            with self._translated(key):
                self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except NotFound:
            pass  # deleting a missing key is not an error

    def _bucket_versioning(self) -> str:
        try:
            resp = self._client.get_bucket_versioning(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if exc.response.get("Error", {}).get("Code") == "NotImplemented" or status == 501:
                return VERSIONING_UNSUPPORTED  # Cloudflare R2, MinIO's legacy FS mode
            raise translate_error(exc, f"bucket {self.bucket!r}", self.bucket,
                                  self._endpoint) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, f"bucket {self.bucket!r}", self.bucket,
                                  self._endpoint) from exc
        status = resp.get("Status")
        if status == "Enabled":
            return VERSIONING_ENABLED
        if status == "Suspended":
            return VERSIONING_SUSPENDED
        return VERSIONING_UNVERSIONED

    def _list_versions(
        self, prefix: str, delimiter: str | None, marker: tuple[str, str] | None,
        max_keys: int,
    ) -> VersionPage:
        args: dict[str, Any] = {"Prefix": self._full(prefix), "MaxKeys": max_keys}
        if delimiter:
            args["Delimiter"] = delimiter
        if marker:
            args["KeyMarker"] = self._full(marker[0])
            if marker[1]:  # an empty VersionIdMarker is rejected
                args["VersionIdMarker"] = marker[1]
        with self._translated(prefix, "version listing"):
            resp = self._read_client.list_object_versions(Bucket=self.bucket, **args)
        entries = [
            VersionInfo(
                key=self._zone_key(v["Key"]), size=v.get("Size", 0), etag=_etag(v.get("ETag")),
                mtime=v["LastModified"].timestamp(), version_id=v.get("VersionId") or "null",
                is_latest=bool(v.get("IsLatest")), is_delete_marker=is_marker,
            )
            for listed, is_marker in ((resp.get("Versions", []), False),
                                      (resp.get("DeleteMarkers", []), True))
            for v in listed
            if v["Key"] != self.prefix
        ]
        # boto3 parses versions and delete markers into two lists; S3 sent them interleaved
        # by key, newest first. Within a key the time puts them back in order.
        entries.sort(key=lambda v: (v.key, -v.mtime, not v.is_latest))
        prefixes = [self._zone_key(p["Prefix"]) for p in resp.get("CommonPrefixes", [])]
        next_marker = None
        if resp.get("IsTruncated") and resp.get("NextKeyMarker"):
            next_marker = (self._zone_key(resp["NextKeyMarker"]),
                           resp.get("NextVersionIdMarker") or "")
        return VersionPage(entries, prefixes, next_marker)

    def _delete_version(self, key: str, version_id: str) -> None:
        lean = self._lean_writes()
        if lean is not None:
            try:
                self._lean_call(key, lean.delete, self._full(key), version_id)
                return
            except NotUnderstood as exc:
                self._fell_back("DELETE", exc)
        with self._translated(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key),
                                       VersionId=version_id)


def _has_dot_segment(key: str) -> bool:
    """
    >>> _has_dot_segment("../x"), _has_dot_segment("a/./b"), _has_dot_segment("a..b/.c")
    (True, True, False)
    """
    return any(seg in (".", "..") for seg in key.split("/"))


def _attempts(resp: Mapping[str, Any]) -> int:
    """How many attempts botocore made for the request that got `resp` (1 without a retry)."""
    return 1 + int(resp.get("ResponseMetadata", {}).get("RetryAttempts") or 0)


def _refused_at_first_attempt(exc: ClientError) -> bool:
    """The store answered the first and only attempt with a client error (4xx): it created
    nothing. A 5xx, or any answer after a retry, leaves that open."""
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 400 <= status < 500 and _attempts(exc.response) == 1


def _upload_gone(exc: ClientError) -> bool:
    """The multipart upload named in the request no longer exists (completed or aborted)."""
    code = exc.response.get("Error", {}).get("Code")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code == "NoSuchUpload" or status == 404


def _first_error(futures: list[Future[Any]]) -> BaseException:
    """The error that made a multipart transfer fail, preferring a real one to a cancel."""
    errors = [e for f in futures if (e := f.exception()) is not None]
    real = [e for e in errors if not isinstance(e, _Cancelled)]
    return (real or errors)[0]
