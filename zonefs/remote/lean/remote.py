"""`LeanRemote`: the lean request path as a `Remote` that wraps the boto3 `S3Remote`.

It sends the hottest requests itself (`reads.py` and `writes.py` over `transport.py`): HEAD,
ListObjectsV2, GETs of up to `LEAN_BODY_LIMIT` bytes, single-part PutObject (files up to the
boto3 remote's `MULTIPART_THRESHOLD`, and bytes), CopyObject up to its
`COPY_MULTIPART_THRESHOLD`, and DeleteObject with or without a version id. Everything else,
and every request it cannot send as boto3 would or whose answer it does not understand, goes
to the wrapped remote through one method, `_by_boto3`. `open_remote` is the one place that
wraps; without it (`lean_requests=off`, `ZONEFS_LEAN_REQUESTS=off`) the boto3 remote serves
alone.

It is set up at its first request, in a worker thread (it resolves credentials), from the
boto3 remote's public parts only: the credentials of `session.get_credentials()` (refreshed as
botocore refreshes them), the URL and addressing style of the boto3 client's own presigned
URLs of a HEAD and a listing (made locally: no request is sent), its region
(`client.meta.region_name`), whether it signs PUT bodies (its public config), the TLS
verification the clients use, and the timeouts and attempts of `read_client` (reads) and
`client` (writes).

Invariants:
- A lean request gives the same value or error as the boto3 call it replaces (errors through
  the same table, `s3_errors.answer_error`); each kind of request it hands to boto3 is logged
  once, at DEBUG, and counted in `lean_fallbacks`; after a redirect the lean path ends for
  this remote. A lean upload honours its cancel as boto3's does (nothing more of the body is
  sent), and the payload hash is the caller's `payload_sha256` when given.
- A whole-object GET of a key known to be larger than `LEAN_BODY_LIMIT` (seen so by a HEAD, a
  listing or an earlier GET of this remote) is sent by boto3 only, never first here.
- Nothing here reads a private attribute of boto3 or botocore.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from botocore.httpsession import get_cert_path
from botocore.utils import get_environ_proxies

from zonefs import __version__
from zonefs.common.errors import NotFound, RemoteError
from zonefs.remote.base import ListPage, ObjectInfo, Remote
from zonefs.remote.lean.answers import StoreAnswer
from zonefs.remote.lean.reads import LeanReads
from zonefs.remote.lean.transport import (
    Credentials,
    NotUnderstood,
    SignedTransport,
    Target,
    Unreachable,
)
from zonefs.remote.lean.writes import BytesBody, Cancelled, FileBody, LeanWrites, WriteAnswer
from zonefs.remote.s3_errors import answer_error, translate_error

if TYPE_CHECKING:
    from zonefs.remote.base import MultipartLog, MultipartUpload, VersionPage
    from zonefs.remote.s3 import S3Remote

log = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1 << 20
#: The environment switch of the lean request path: "off" (or 0, no, false) leaves every
#: request to boto3, like the mount option `lean_requests=off`.
LEAN_ENV = "ZONEFS_LEAN_REQUESTS"
#: Bodies up to this size (small objects whole, ranges of large ones) come by the lean path.
LEAN_BODY_LIMIT = 8 * MiB
#: How many keys known to be larger than LEAN_BODY_LIMIT are remembered (the oldest go first).
_LARGE_KEYS = 4096
#: The key named in the presigned URLs that show where the boto3 client sends requests.
_PROBE_KEY = "zonefs-lean-path-target"


def lean_requests_allowed() -> bool:
    """False when the environment switch turns the lean path off (ZONEFS_LEAN_REQUESTS=off)."""
    return os.environ.get(LEAN_ENV, "").strip().lower() not in ("0", "off", "no", "false")


class _Lean:
    """The lean path once set up: its reads, and its writes (None where only reads work)."""

    def __init__(self, reads: LeanReads, writes: LeanWrites | None) -> None:
        self.reads, self.writes = reads, writes

    def close(self) -> None:
        self.reads.transport.close()
        if self.writes is not None:
            self.writes.transport.close()


class LeanRemote(Remote):
    """The boto3 remote `boto`, with its hottest requests sent by the lean path."""

    def __init__(self, boto: S3Remote) -> None:
        self.boto = boto  # first: `multipart_log` is the boto3 remote's
        super().__init__(max_requests=int(boto.limiter.total_tokens),
                         io_timeout=boto.io_timeout, multipart_log=boto.multipart_log)
        self.zone, self.bucket, self.prefix = boto.zone, boto.bucket, boto.prefix
        self.description = boto.description
        # Set up at the first request that wants it: None until then, False where it cannot
        # work (or after a redirect).
        self._lean: _Lean | None | bool = None
        self._lock = threading.Lock()
        self._large: OrderedDict[str, None] = OrderedDict()  # zone keys, under _lock
        #: Requests handed to boto3, by kind of answer the lean path did not understand.
        self.lean_fallbacks: Counter[str] = Counter()

    @property
    def multipart_log(self) -> MultipartLog | None:
        """The boto3 remote's: only it makes multipart uploads."""
        return self.boto.multipart_log

    @multipart_log.setter
    def multipart_log(self, value: MultipartLog | None) -> None:
        self.boto.multipart_log = value

    def close(self) -> None:
        """Close the lean path's idle connections (boto3's close with its clients)."""
        lean = self._lean
        if isinstance(lean, _Lean):
            lean.close()

    def object_uri(self, key: str) -> str:
        return self.boto.object_uri(key)

    def object_key(self, key: str) -> str:
        return self.boto.object_key(key)

    # -- the one way to boto3 -----------------------------------------------------------------

    def _by_boto3(self, method: str, *args: Any, why: NotUnderstood | None = None,
                  **kwargs: Any) -> Any:
        """The boto3 remote's `method(*args, **kwargs)`: for requests the lean path does not
        make, and (`why`) those whose request or answer it did not understand."""
        if why is not None:
            self._fell_back(method, why)
        return getattr(self.boto, method)(*args, **kwargs)

    def _fell_back(self, method: str, exc: NotUnderstood) -> None:
        """Note a request handed to boto3; the first of each kind is logged (DEBUG). After a
        redirect (the bucket is in another region, or elsewhere) every lean request would be
        one more round trip before boto3's, so the lean path ends for this remote."""
        ended = None
        with self._lock:
            self.lean_fallbacks[exc.kind] += 1
            first = self.lean_fallbacks[exc.kind] == 1
            if exc.kind == "redirect" and isinstance(self._lean, _Lean):
                ended, self._lean = self._lean, False
        if first:
            log.debug("lean %s of %s not understood (%s); boto3 makes such requests%s",
                      method.strip("_"), self.description, exc,
                      ", from now on" if ended is not None else "")
        if ended is not None:
            ended.close()

    # -- set-up ---------------------------------------------------------------------------------

    def _ready(self) -> _Lean | None:
        """The lean path, set up on first use; None when it cannot work here."""
        lean = self._lean
        if lean is None:
            with self._lock:
                if self._lean is None:
                    self._lean = self._start() or False
                lean = self._lean
        return lean if isinstance(lean, _Lean) else None

    def _reads(self) -> LeanReads | None:
        lean = self._ready()
        return lean.reads if lean is not None else None

    def _writes(self) -> LeanWrites | None:
        lean = self._ready()
        return lean.writes if lean is not None else None

    def _start(self) -> _Lean | None:
        """A lean path that sends what the boto3 clients would send, or None (logged at
        DEBUG) where it cannot: no credentials, a proxy, no SigV4, an odd endpoint."""
        client = self.boto.client
        try:
            creds = self.boto.session.get_credentials()
            if creds is None:
                raise NotUnderstood("setup", "no credentials (boto3 reports that itself)")
            target = self._target()
            proxies = get_environ_proxies(f"{target.scheme}://{target.host_header}/")
            if proxies.get(target.scheme) or (client.meta.config.proxies or {}):
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

        verify = self._verify_setting()

        def transport(of: Any) -> SignedTransport:
            config = of.meta.config
            return SignedTransport(
                target, credentials, verify=verify, connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                max_attempts=int((config.retries or {}).get("max_attempts", 3)),
                max_idle=int(self.limiter.total_tokens) * 2, user_agent=f"zonefs/{__version__}",
            )

        reads = LeanReads(transport(self.boto.read_client), self.prefix,
                          body_limit=LEAN_BODY_LIMIT, chunk=MiB)
        # Writes get the write client's timeouts, and connections of their own.
        writes = LeanWrites(transport(client), self.bucket,
                            unsigned_payload=self._unsigned_payload(target))
        log.debug("lean requests on for %s: %s://%s, region %s", self.description,
                  target.scheme, target.host_header, target.region)
        return _Lean(reads, writes)

    def _target(self) -> Target:
        """Where the boto3 client sends this bucket's requests, and the region it signs them
        for: the URLs of its own presigned HEAD and listing (made locally, not sent), so the
        endpoint and addressing style are boto3's, whatever configured them, and the client's
        region. NotUnderstood when the client does not sign requests with SigV4."""
        client = self.boto.client
        if client.meta.config.signature_version not in (None, "s3v4", "v4"):
            raise NotUnderstood("setup", "the client does not sign with SigV4")
        region = client.meta.region_name
        if not region:
            raise NotUnderstood("setup", "the client has no region")
        head = client.generate_presigned_url(
            "head_object", Params={"Bucket": self.bucket, "Key": _PROBE_KEY}, ExpiresIn=60)
        listing = client.generate_presigned_url(
            "list_objects_v2", Params={"Bucket": self.bucket}, ExpiresIn=60)
        return Target.from_urls(head, _PROBE_KEY, listing, region)

    def _unsigned_payload(self, target: Target) -> tuple[bool, bool]:
        """Whether the boto3 client sends UNSIGNED-PAYLOAD for a PUT without and with a
        checksum header: as the client's s3 `payload_signing_enabled` says when set; else
        never over http, and over https only with a checksum (botocore's S3 rule for a
        streamed body)."""
        setting = (self.boto.client.meta.config.s3 or {}).get("payload_signing_enabled")
        if isinstance(setting, str):
            setting = setting.strip().lower() == "true"
        if setting is not None:
            return (not setting, not setting)
        return (False, target.scheme == "https")

    def _verify_setting(self) -> bool | str:
        """TLS verification as botocore resolves it for the clients: the zone's ca_bundle,
        else the profile's or AWS_CA_BUNDLE, else REQUESTS_CA_BUNDLE, else its default bundle."""
        verify: Any = (self.zone.ca_bundle
                       or self.boto.botocore_session.get_config_variable("ca_bundle")
                       or os.environ.get("REQUESTS_CA_BUNDLE") or True)
        return get_cert_path(verify) if verify is True else verify

    # -- lean calls ---------------------------------------------------------------------------

    def _lean_call(self, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` of the lean path, its errors as zonefs errors (NotUnderstood
        passes)."""
        try:
            return fn(*args, **kwargs)
        except StoreAnswer as answer:
            raise answer_error(answer.code, str(answer.status), self.object_uri(key),
                               self.bucket, self.boto.endpoint,
                               delete_marker=answer.delete_marker,
                               message=answer.message) from None
        except Unreachable as exc:
            raise RemoteError(f"cannot reach {self.boto.endpoint}: {exc.reason}",
                              transient=True) from None
        except Cancelled:
            raise RemoteError(f"upload of {self.object_uri(key)} cancelled") from None
        except OSError as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self.boto.endpoint) from None

    def _seen(self, key: str, size: int) -> None:
        """Remember whether `key` is larger than the lean path's body limit."""
        with self._lock:
            if size > LEAN_BODY_LIMIT:
                self._large[key] = None
                self._large.move_to_end(key)
                if len(self._large) > _LARGE_KEYS:
                    self._large.popitem(last=False)
            else:
                self._large.pop(key, None)

    def _known_large(self, key: str) -> bool:
        with self._lock:
            return key in self._large

    @staticmethod
    def _written(key: str, answer: WriteAnswer, size: int, metadata: Mapping[str, str],
                 content_type: str | None) -> ObjectInfo:
        """The `ObjectInfo` of a lean write: what the boto3 remote makes of its answer."""
        return ObjectInfo(key=key, size=size, etag=answer.etag, mtime=answer.mtime,
                          version_id=answer.version_id,
                          metadata={k.lower(): v for k, v in metadata.items()},
                          content_type=content_type)

    # -- Remote: reads --------------------------------------------------------------------------

    def _check(self) -> None:
        self._by_boto3("_check")

    def _head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        reads, why = self._reads(), None
        if reads is not None:
            try:
                info = self._lean_call(key, reads.head, key, self.boto.object_key(key),
                                       version_id)
            except NotUnderstood as exc:
                why = exc
            else:
                self._seen(key, info.size)
                return info
        info = self._by_boto3("_head", key, version_id, why=why)
        self._seen(key, info.size)
        return info

    def _list(self, prefix: str, delimiter: str | None, token: str | None,
              max_keys: int) -> ListPage:
        reads, why = self._reads(), None
        page: ListPage
        if reads is not None:
            try:
                page = self._lean_call(prefix, reads.list, self.boto.object_key(prefix),
                                       delimiter, token, max_keys)
            except NotUnderstood as exc:
                why = exc
        if reads is None or why is not None:
            page = self._by_boto3("_list", prefix, delimiter, token, max_keys, why=why)
        for info in page.objects:
            self._seen(info.key, info.size)
        return page

    def _get_range(self, key: str, start: int, length: int, version_id: str | None = None,
                   if_match: str | None = None) -> bytes:
        reads, why = self._reads() if 0 < length <= LEAN_BODY_LIMIT else None, None
        if reads is not None:
            try:
                return self._lean_call(key, reads.get_range, self.boto.object_key(key), start,
                                       length, version_id, if_match)
            except NotUnderstood as exc:
                why = exc
        return self._by_boto3(
            "_get_range", key, start, length, version_id, if_match, why=why)

    def _download(self, key: str, dest: str, version_id: str | None = None,
                  if_match: str | None = None) -> ObjectInfo:
        reads, why = None if self._known_large(key) else self._reads(), None
        if reads is not None:
            try:
                return self._lean_call(key, reads.download, key, self.boto.object_key(key),
                                       dest, version_id, if_match)
            except NotUnderstood as exc:
                if exc.kind == "large body":  # larger objects take boto3's path by design
                    self._seen(key, LEAN_BODY_LIMIT + 1)
                else:
                    why = exc
        info = self._by_boto3("_download", key, dest, version_id, if_match, why=why)
        self._seen(key, info.size)
        return info

    def _head_checksum(self, key: str) -> str | None:
        return self._by_boto3("_head_checksum", key)

    def _bucket_versioning(self) -> str:
        return self._by_boto3("_bucket_versioning")

    def _list_versions(self, prefix: str, delimiter: str | None,
                       marker: tuple[str, str] | None, max_keys: int) -> VersionPage:
        return self._by_boto3(
            "_list_versions", prefix, delimiter, marker, max_keys)

    def _list_multipart_uploads(self, key: str) -> list[MultipartUpload]:
        return self._by_boto3("_list_multipart_uploads", key)

    def _multipart_has_parts(self, key: str, upload_id: str) -> bool:
        return bool(self._by_boto3("_multipart_has_parts", key, upload_id))

    # -- Remote: writes -------------------------------------------------------------------------

    def _upload(
        self, key: str, src: str, metadata: Mapping[str, str], content_type: str | None,
        cancel: threading.Event | None = None, *, if_match: str | None = None,
        if_none_match: bool = False, checksum_sha256: str | None = None,
        payload_sha256: str | None = None,
    ) -> ObjectInfo:
        conditions = {"if_match": if_match, "if_none_match": if_none_match,
                      "checksum_sha256": checksum_sha256, "payload_sha256": payload_sha256}
        writes, why = self._writes(), None
        if writes is not None:
            try:
                info = self._lean_call(key, self._lean_upload, writes, key, src, metadata,
                                       content_type, cancel, conditions)
            except NotUnderstood as exc:
                why = exc
            else:
                if info is not None:
                    return info
        return self._by_boto3(
            "_upload", key, src, metadata, content_type, cancel, why=why, **conditions)

    def _lean_upload(
        self, writes: LeanWrites, key: str, src: str, metadata: Mapping[str, str],
        content_type: str | None, cancel: threading.Event | None, conditions: dict[str, Any],
    ) -> ObjectInfo | None:
        """A single-part upload of the file `src`; None when it is for a multipart upload."""

        def stopped() -> bool:
            return cancel is not None and cancel.is_set()

        with open(src, "rb") as f:
            size = f.seek(0, 2)
            if size > self.boto.MULTIPART_THRESHOLD:
                return None
            if stopped():
                raise Cancelled
            body = FileBody(f, size, stopped, conditions["payload_sha256"])
            answer = writes.put(
                self.boto.object_key(key), body, _lower(metadata), content_type,
                if_match=conditions["if_match"], if_none_match=conditions["if_none_match"],
                checksum_b64=_checksum_b64(conditions["checksum_sha256"]))
        self._seen(key, body.length)
        return self._written(key, answer, body.length, metadata, content_type)

    def _put_bytes(
        self, key: str, data: bytes, metadata: Mapping[str, str], content_type: str | None,
        *, if_match: str | None = None, if_none_match: bool = False,
        checksum_sha256: str | None = None,
    ) -> ObjectInfo:
        writes, why = self._writes(), None
        if writes is not None:
            try:
                answer = self._lean_call(
                    key, writes.put, self.boto.object_key(key), BytesBody(data),
                    _lower(metadata), content_type, if_match=if_match,
                    if_none_match=if_none_match, checksum_b64=_checksum_b64(checksum_sha256))
            except NotUnderstood as exc:
                why = exc
            else:
                self._seen(key, len(data))
                return self._written(key, answer, len(data), metadata, content_type)
        return self._by_boto3(
            "_put_bytes", key, data, metadata, content_type, why=why, if_match=if_match,
            if_none_match=if_none_match, checksum_sha256=checksum_sha256)

    def _copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None,
              content_type: str | None = None,
              src_version_id: str | None = None) -> ObjectInfo:
        writes, why = self._writes(), None
        if writes is not None:
            # Size decides single or multipart (the boto3 remote's, which HEADs the source
            # again: over 5 GiB, or after an answer not understood); metadata for the result.
            src = self._head(src_key, src_version_id)
            if src.size <= self.boto.COPY_MULTIPART_THRESHOLD:
                new_meta = dict(src.metadata or {}) if metadata is None else _lower(metadata)
                new_type = content_type or src.content_type
                replace = None if metadata is None else (new_meta, new_type)
                try:
                    answer = self._lean_call(
                        dst_key, writes.copy, self.boto.object_key(dst_key),
                        self.boto.object_key(src_key), src_version_id, replace)
                except NotUnderstood as exc:
                    why = exc
                else:
                    self._seen(dst_key, src.size)
                    return self._written(dst_key, answer, src.size, new_meta, new_type)
        return self._by_boto3(
            "_copy", src_key, dst_key, metadata, content_type, src_version_id, why=why)

    def _delete(self, key: str) -> None:
        writes, why = self._writes(), None
        if writes is not None:
            try:
                self._lean_call(key, writes.delete, self.boto.object_key(key))
                return
            except NotUnderstood as exc:
                why = exc
            except NotFound:
                return  # deleting a missing key is not an error
        self._by_boto3("_delete", key, why=why)

    def _delete_version(self, key: str, version_id: str) -> None:
        writes, why = self._writes(), None
        if writes is not None:
            try:
                self._lean_call(key, writes.delete, self.boto.object_key(key), version_id)
                return
            except NotUnderstood as exc:
                why = exc
        self._by_boto3("_delete_version", key, version_id, why=why)

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        self._by_boto3("_abort_multipart", key, upload_id)


def _lower(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in metadata.items()}


def _checksum_b64(checksum_sha256: str | None) -> str | None:
    """A SHA-256 (hex) as the store wants it: base64 of the raw digest."""
    if not checksum_sha256:
        return None
    return base64.b64encode(bytes.fromhex(checksum_sha256)).decode()
