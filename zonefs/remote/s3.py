"""`S3Remote`: a zone in an S3-compatible bucket, through one shared boto3 client.

It owns the client configuration (timeouts, retries, checksum behaviour for non-AWS stores)
and the mapping between zone keys and bucket keys; its multipart uploads and copies are in
`remote/s3_multipart.py`, the table that turns the store's errors into
`zonefs.common.errors` in `remote/s3_errors.py`. Every request here is a plain boto3 call; the
lean request path (`remote/lean/`) is a separate `Remote` that wraps this one.

Invariants:
- Zone keys go out with `zone.prefix` prepended and come back with it stripped; the zone's own
  root marker (the key equal to the prefix) is never reported as an object.
- A HEAD of a key with a `.` or `..` segment that the store refuses outright (SeaweedFS
  answers 400 Bad Request, as it refuses to store such keys) answers NotFound: no object can
  be there, and a lookup of one never fails what asked (such keys are hidden as odd keys).
- Every botocore error is translated by `translate_error`; nothing else escapes, and no
  message carries a credential.
- Reads and lookups use `read_client`, whose timeouts fit within `io_timeout`; uploads, copies
  and deletes use `client` (60 s reads, 3 attempts), as they are retried, not abandoned.
- The client is created once and shared by every worker thread (botocore clients are
  thread-safe; the session is only used while constructing).
"""

from __future__ import annotations

import base64
import binascii
import configparser
import email.utils
import functools
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ProfileNotFound

from zonefs.common.errors import (
    BucketMissing,
    ConfigError,
    NotFound,
    Refused,
    RemoteError,
)
from zonefs.remote.base import (
    VERSIONING_ENABLED,
    VERSIONING_SUSPENDED,
    VERSIONING_UNSUPPORTED,
    VERSIONING_UNVERSIONED,
    ListPage,
    ObjectInfo,
    Remote,
    VersionInfo,
    VersionPage,
    bare_etag,
    report_progress,
    version_or_none,
)
from zonefs.remote.s3_errors import translate_error
from zonefs.remote.s3_multipart import Cancelled, FileWindow, S3Multipart

if TYPE_CHECKING:
    from zonefs.common.config import ZoneConfig
    from zonefs.remote.base import MultipartLog

MiB = 1 << 20
GiB = 1 << 30
#: (connect, read) timeouts of uploads, copies and deletes (`client`'s).
WRITE_TIMEOUTS = (5.0, 60.0)


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


@functools.cache
def _checksum_options() -> dict[str, str]:
    """Client options that keep boto3 >= 1.36 from sending CRC32 (aws-chunked over https) on
    every PUT, which many S3-compatible stores reject or store verbatim (zone-buckets.md
    §4.3). Older versions never send it, and refuse the options (TypeError): none then."""
    options = {"request_checksum_calculation": "when_required",
               "response_checksum_validation": "when_required"}
    try:
        Config(**options)
    except TypeError:
        return {}
    return options


class S3Remote(S3Multipart, Remote):
    """A zone `s3://bucket/prefix/` at an S3-compatible endpoint."""

    #: Files up to this size go in one PUT; larger ones as a multipart upload.
    MULTIPART_THRESHOLD = 16 * MiB
    PART_SIZE = 16 * MiB
    PART_THREADS = 6
    #: CopyObject is limited to 5 GiB; larger sources are copied with UploadPartCopy.
    COPY_MULTIPART_THRESHOLD = 5 * GiB
    COPY_PART_SIZE = 512 * MiB

    def __init__(self, zone: ZoneConfig, *, max_requests: int = 16,
                 io_timeout: float | None = None,
                 multipart_log: MultipartLog | None = None) -> None:
        super().__init__(max_requests=max_requests, io_timeout=io_timeout,
                         multipart_log=multipart_log)
        self.zone = zone
        self.bucket = zone.bucket
        self.prefix = zone.prefix
        self.description = zone.label
        #: The botocore session under `session`: its public config resolves what the clients
        #: were made with (the profile's ca_bundle).
        self.botocore_session = botocore.session.Session()
        try:
            if zone.credentials_file:
                self.session = boto3.session.Session(**_read_credentials(zone),
                                                     botocore_session=self.botocore_session)
            else:
                self.session = boto3.session.Session(profile_name=zone.profile,
                                                     botocore_session=self.botocore_session)
        except ProfileNotFound:
            raise ConfigError(f"AWS profile {zone.profile!r} not found") from None
        self.client = self._make_client(
            connect_timeout=WRITE_TIMEOUTS[0],
            read_timeout=WRITE_TIMEOUTS[1],
            retries={"mode": "standard", "max_attempts": 3},
            # Every worker thread and every parallel part may hold a connection at once.
            max_pool_connections=max_requests * 2 + self.PART_THREADS,
        )
        self.read_client = self.client
        #: (connect, read) timeouts of `read_client`.
        self.read_timeouts = (5.0, 60.0)
        if io_timeout is not None:
            # Reads and lookups get their own client whose timeouts fit in io_timeout: the
            # Remote abandons a read that takes longer, and its thread (which holds a limiter
            # slot) should then end soon, not after the data client's 60 s per attempt.
            self.read_timeouts = (min(5.0, io_timeout), min(60.0, io_timeout))
            self.read_client = self._make_client(
                connect_timeout=self.read_timeouts[0],
                read_timeout=self.read_timeouts[1],
                retries={"mode": "standard", "max_attempts": 3},
                max_pool_connections=max_requests * 2,
            )
        self.endpoint: str = zone.endpoint_url or self.client.meta.endpoint_url
        self._check_client: Any = None
        # Clients made after this constructor (the check's) are made one at a time: a boto3
        # session is not safe for concurrent client creation.
        self._client_lock = threading.Lock()

    def _make_client(self, **options: Any) -> Any:
        region = self.zone.region or ("us-east-1" if self.zone.endpoint_url else None)
        options.update(_checksum_options())
        if self.zone.addressing_style:
            options["s3"] = {"addressing_style": self.zone.addressing_style}
        config = Config(region_name=region, **options)
        return self.session.client(
            "s3", endpoint_url=self.zone.endpoint_url, config=config,
            verify=self.zone.ca_bundle or None,
        )

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
        except Cancelled:
            what = f"{action or 'request'} of {self.object_uri(key)}"
            raise RemoteError(f"{what} cancelled") from None
        except (ClientError, BotoCoreError, OSError) as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket, self.endpoint) from exc

    def _info(
        self, key: str, resp: Mapping[str, Any], size: int | None = None,
        metadata: Mapping[str, str] | None = None, content_type: str | None = None,
    ) -> ObjectInfo:
        meta = resp.get("Metadata") if metadata is None else metadata
        return ObjectInfo(
            key=key,
            size=resp.get("ContentLength", 0) if size is None else size,
            etag=bare_etag(resp.get("ETag")),
            mtime=_mtime(resp),
            version_id=_version(resp),
            metadata=None if meta is None else {k.lower(): v for k, v in meta.items()},
            content_type=resp.get("ContentType") if content_type is None else content_type,
        )

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
            args["IfMatch"] = f'"{bare_etag(if_match)}"'
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
            err = translate_error(exc, f"bucket {self.bucket!r}", self.bucket, self.endpoint)
            if isinstance(err, NotFound):
                err = BucketMissing(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
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
        with self._translated(key):
            args = {"VersionId": version_id} if version_id else {}
            resp = self.read_client.head_object(Bucket=self.bucket, Key=self._full(key),
                                                 **args)
        return self._info(key, resp)

    def _list(
        self, prefix: str, delimiter: str | None, token: str | None, max_keys: int
    ) -> ListPage:
        args: dict[str, Any] = {"Prefix": self._full(prefix), "MaxKeys": max_keys}
        if delimiter:
            args["Delimiter"] = delimiter
        if token:
            args["ContinuationToken"] = token
        with self._translated(prefix):
            resp = self.read_client.list_objects_v2(Bucket=self.bucket, **args)
        objects = [
            ObjectInfo(
                key=self._zone_key(o["Key"]), size=o.get("Size", 0), etag=bare_etag(o.get("ETag")),
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
            args["IfMatch"] = f'"{bare_etag(if_match)}"'
        return args

    def _get_range(
        self, key: str, start: int, length: int, version_id: str | None = None,
        if_match: str | None = None,
    ) -> bytes:
        if length <= 0:
            return b""
        args = self._get_args(version_id, if_match)
        with self._translated(key):
            try:
                resp = self.read_client.get_object(
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
        args = self._get_args(version_id, if_match)
        with self._translated(key):
            resp = self.read_client.get_object(Bucket=self.bucket, Key=self._full(key), **args)
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
        payload_sha256: str | None = None,  # botocore hashes the body itself
    ) -> ObjectInfo:
        put_args = self._put_args(metadata, content_type)
        conditions = self._condition_args(if_match, if_none_match)

        def stopped() -> bool:
            return cancel is not None and cancel.is_set()

        with self._translated(key, "upload"), open(src, "rb") as f:
            size = f.seek(0, 2)
            if stopped():
                raise Cancelled
            if size > self.MULTIPART_THRESHOLD:
                # S3 evaluates conditions at CompleteMultipartUpload. A SHA-256 of a multipart
                # object is a hash of part hashes, not the file's (zone-buckets.md §4.1): none.
                resp = self._multipart_upload(key, f.name, size, put_args, stopped, conditions)
            else:
                checksum = self._checksum_args(checksum_sha256)
                resp = self.client.put_object(
                    Bucket=self.bucket, Key=self._full(key),
                    Body=FileWindow(f, 0, size, stopped), ContentLength=size, **put_args,
                    **conditions, **checksum,
                )
        return self._info(key, resp, size, put_args["Metadata"], content_type)

    def _put_bytes(
        self, key: str, data: bytes, metadata: Mapping[str, str], content_type: str | None,
        *, if_match: str | None = None, if_none_match: bool = False,
        checksum_sha256: str | None = None,
    ) -> ObjectInfo:
        put_args = self._put_args(metadata, content_type)
        checksum = self._checksum_args(checksum_sha256)
        with self._translated(key):
            resp = self.client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, **put_args,
                **self._condition_args(if_match, if_none_match), **checksum,
            )
        return self._info(key, resp, len(data), put_args["Metadata"], content_type)

    def _head_checksum(self, key: str) -> str | None:
        with self._translated(key):
            resp = self.read_client.head_object(Bucket=self.bucket, Key=self._full(key),
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
                args: dict[str, Any] = {"MetadataDirective": "COPY"}
                if metadata is not None:
                    args = {"MetadataDirective": "REPLACE", **self._put_args(new_meta, new_type)}
                source = {"Bucket": self.bucket, "Key": self._full(src_key)}
                if src_version_id:
                    source["VersionId"] = src_version_id
                resp = self.client.copy_object(
                    Bucket=self.bucket, Key=self._full(dst_key), CopySource=source, **args,
                )
                resp = {**resp.get("CopyObjectResult", {}), **resp}
        return self._info(dst_key, resp, src.size, new_meta, new_type)

    def _delete(self, key: str) -> None:
        try:
            with self._translated(key):
                self.client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except NotFound:
            pass  # deleting a missing key is not an error

    def _bucket_versioning(self) -> str:
        try:
            resp = self.client.get_bucket_versioning(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if exc.response.get("Error", {}).get("Code") == "NotImplemented" or status == 501:
                return VERSIONING_UNSUPPORTED  # Cloudflare R2, MinIO's legacy FS mode
            raise translate_error(exc, f"bucket {self.bucket!r}", self.bucket,
                                  self.endpoint) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, f"bucket {self.bucket!r}", self.bucket,
                                  self.endpoint) from exc
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
            resp = self.read_client.list_object_versions(Bucket=self.bucket, **args)
        entries = [
            VersionInfo(
                key=self._zone_key(v["Key"]), size=v.get("Size", 0), etag=bare_etag(v.get("ETag")),
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
        with self._translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._full(key),
                                       VersionId=version_id)


def _has_dot_segment(key: str) -> bool:
    """
    >>> _has_dot_segment("../x"), _has_dot_segment("a/./b"), _has_dot_segment("a..b/.c")
    (True, True, False)
    """
    return any(seg in (".", "..") for seg in key.split("/"))
