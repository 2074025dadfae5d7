"""S3 writes on the lean path: single-part PutObject, CopyObject (one request, up to 5 GiB) and
DeleteObject, sent by `transport.SignedTransport`, their answers turned into what `S3Remote`'s
boto3 path makes of the same answers (`WriteAnswer`: the ETag, version id and time of the new
object or version).

`LeanRemote` (lean/remote.py) tries these first, as it does the reads of `reads.py`, and turns
what they raise into zonefs errors by the same table: `answers.StoreAnswer` (403, 404, 412,
500/502/503/504 once retried, and BadDigest or a conditional-write conflict),
`transport.Unreachable` (transport), `Cancelled` (the upload's cancel was set), OSError
(reading the local file), and `transport.NotUnderstood` for anything else: a request this path
cannot send exactly as botocore would (a header value that is not printable ASCII, which
botocore refuses or encodes its own way), or an answer it does not know (a redirect, any other
status, a copy answer that is not a CopyObjectResult). The boto3 remote then makes it.

Invariants:
- The headers are botocore's for the same call: `x-amz-meta-<name>` per metadata entry (names
  as given: the callers lowercase them), Content-Type, `If-Match: "<etag>"`, `If-None-Match: *`,
  `x-amz-checksum-sha256` with `x-amz-sdk-checksum-algorithm: SHA256`, `x-amz-copy-source`
  (bucket and key percent-encoded as botocore encodes them, `?versionId=` unencoded) with
  `x-amz-metadata-directive`; all of them are signed.
- The payload hash is UNSIGNED-PAYLOAD only where the boto3 client would send that (see
  `LeanRemote._unsigned_payload`); otherwise the body's SHA-256: the caller's when it knows
  it (a store refuses the request if it is wrong, and boto3 makes it then), else computed
  before the body is sent (SigV4 puts it in the headers).
- A body is read from its start at each attempt. `stopped()` is checked before each piece and
  `Cancelled` raised once it is true, so that nothing more is sent; `report_progress()` runs
  after each piece is sent. Files up to `INLINE_LIMIT` are read whole, once, before sending.
- An answer's values are botocore's: ETags without quotes, a "null" or missing version id as
  None, the time of a PUT from its Date header (else now), of a copy from its LastModified.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.client
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, NamedTuple
from urllib.parse import quote

from zonefs.remote.base import bare_etag, report_progress, version_or_none
from zonefs.remote.lean.answers import (
    error_of,
    iso_time,
    local_name,
    parse_xml,
)
from zonefs.remote.lean.transport import UNSIGNED_PAYLOAD, NotUnderstood, read_chunks

if TYPE_CHECKING:
    from zonefs.remote.lean.transport import SignedTransport

MiB = 1 << 20
#: Files up to this size are read into memory whole, once (hashed there if need be); larger
#: ones are streamed from the file in `CHUNK`s (and read once more first for their hash).
INLINE_LIMIT = MiB
CHUNK = MiB
#: The largest CopyObject answer read (a CopyObjectResult is some 200 bytes).
_COPY_ANSWER_LIMIT = 64 << 10
#: Error answers of writes that are understood besides the reads' (see answers.error_of).
_WRITE_ERRORS = frozenset({(400, "BadDigest"), (409, "ConditionalRequestConflict"),
                           (409, "ConcurrentModification")})
#: A header name as HTTP allows it (a token), lowercase.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")


class Cancelled(Exception):
    """The upload's cancel was set: its body stopped, and the request with it."""


class WriteAnswer(NamedTuple):
    """What the store said of the object (or version) a write made."""

    etag: str
    version_id: str | None
    mtime: float


class BytesBody:
    """A body held in memory (`_put_bytes`: directory markers, symlinks, small files)."""

    def __init__(self, data: bytes, sha256: str | None = None) -> None:
        self._data = data
        self.length = len(data)
        self._sha256 = sha256

    def chunks(self) -> Iterator[bytes]:
        yield self._data
        report_progress()

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self._data).hexdigest()
        return self._sha256


def _never() -> bool:
    return False


class FileBody:
    """The first `size` bytes of an open file (`_upload`), honouring `stopped()`.

    A file up to INLINE_LIMIT is read here, at once: its bytes are sent as they were then. A
    larger one is read again at each attempt; if it changes meanwhile, its SHA-256 no longer
    matches the payload hash and the store refuses the request (boto3 then sends it)."""

    def __init__(self, f: IO[bytes], size: int, stopped: Callable[[], bool] = _never,
                 sha256: str | None = None) -> None:
        self._f, self._stopped, self._sha256 = f, stopped, sha256
        self._data: bytes | None = None
        if size <= INLINE_LIMIT:
            f.seek(0)
            self._data = f.read(size)
            size = len(self._data)  # a file cut short meanwhile is sent as it is now
        self.length = size

    def _pieces(self) -> Iterator[bytes]:
        """The file from its start, checking `stopped()` before each piece (not after the
        last: a body sent whole may be stored, whatever is raised after it)."""
        if self._data is not None:
            if self._stopped():
                raise Cancelled
            yield self._data
            return
        self._f.seek(0)
        left = self.length
        while left > 0:
            if self._stopped():
                raise Cancelled
            piece = self._f.read(min(CHUNK, left))
            if not piece:
                raise OSError(f"the file ended {left} bytes early")
            left -= len(piece)
            yield piece

    def chunks(self) -> Iterator[bytes]:
        for piece in self._pieces():
            yield piece
            report_progress()  # the piece was sent

    def sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            for piece in self._pieces():
                digest.update(piece)
            self._sha256 = digest.hexdigest()
        return self._sha256


def _check_value(value: str, what: str) -> str:
    """`value` when it can go in a header byte for byte as botocore sends it; NotUnderstood
    otherwise (botocore refuses non-ASCII metadata, and other stores or proxies may treat
    control characters their own way)."""
    if not (value.isascii() and value.isprintable()):
        raise NotUnderstood("header value", f"{what} is not printable ASCII")
    return value


def object_headers(metadata: Mapping[str, str], content_type: str | None) -> dict[str, str]:
    """The signed headers carrying an object's metadata and content type.

    >>> object_headers({"mode": "33188"}, "text/plain")
    {'x-amz-meta-mode': '33188', 'content-type': 'text/plain'}
    """
    headers = {}
    for name, value in metadata.items():
        if _TOKEN.fullmatch(name) is None:
            raise NotUnderstood("header value", "a metadata name that is not an HTTP token")
        headers["x-amz-meta-" + name] = _check_value(value, "a metadata value")
    if content_type:
        headers["content-type"] = _check_value(content_type, "the content type")
    return headers


def copy_source(bucket: str, key: str, version_id: str | None) -> str:
    """The x-amz-copy-source header as botocore writes it.

    >>> copy_source("b", "a b/c+d~ü!", "v+1/=")
    'b/a%20b/c%2Bd~%C3%BC%21?versionId=v+1/='
    """
    source = quote(f"{bucket}/{key}", safe="/~")
    if version_id:
        source += "?versionId=" + _check_value(version_id, "the version id")
    return source


def _date_time(resp: http.client.HTTPResponse) -> float:
    """The answer's Date, else now (as s3.py reads a boto3 answer without LastModified)."""
    date = resp.getheader("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError, IndexError):
            pass
    return time.time()


class LeanWrites:
    """Single-part PUTs, copies and DELETEs of one bucket over a `SignedTransport`.

    `unsigned_payload`: whether the boto3 client sends UNSIGNED-PAYLOAD for a PUT without and
    with a checksum header (in that order), as its dry run showed."""

    def __init__(self, transport: SignedTransport, bucket: str, *,
                 unsigned_payload: tuple[bool, bool] = (False, False)) -> None:
        self.transport = transport
        self.bucket = bucket
        self.unsigned_payload = unsigned_payload

    def put(
        self, full_key: str, body: BytesBody | FileBody, metadata: Mapping[str, str],
        content_type: str | None, *, if_match: str | None = None, if_none_match: bool = False,
        checksum_b64: str | None = None,
    ) -> WriteAnswer:
        """PutObject of `body` (the checksum as botocore sends ChecksumSHA256: base64)."""
        signed = object_headers(metadata, content_type)
        if if_match:
            signed["if-match"] = _check_value(f'"{bare_etag(if_match)}"', "the ETag")
        if if_none_match:
            signed["if-none-match"] = "*"
        if checksum_b64:
            signed["x-amz-checksum-sha256"] = _check_value(checksum_b64, "the checksum")
            signed["x-amz-sdk-checksum-algorithm"] = "SHA256"
        unsigned = self.unsigned_payload[bool(checksum_b64)]
        payload = UNSIGNED_PAYLOAD if unsigned else body.sha256()
        t = self.transport
        with t.request("PUT", t.target.object_path(full_key), signed=signed,
                       body=body if body.length else None, payload=payload) as r:
            if r.status == 200:
                return WriteAnswer(bare_etag(r.getheader("etag")),
                                   version_or_none(r.getheader("x-amz-version-id")),
                                   _date_time(r))
            error = error_of(r, _WRITE_ERRORS)  # raised once the answer is done with
        raise error

    def copy(self, full_key: str, full_src: str, src_version_id: str | None,
             replace: tuple[Mapping[str, str], str | None] | None) -> WriteAnswer:
        """CopyObject of `full_src` (that version of it) to `full_key`; `replace`: the new
        (metadata, content type), None to keep the source's."""
        signed = {"x-amz-copy-source": copy_source(self.bucket, full_src, src_version_id)}
        if replace is None:
            signed["x-amz-metadata-directive"] = "COPY"
        else:
            signed["x-amz-metadata-directive"] = "REPLACE"
            signed.update(object_headers(*replace))
        t = self.transport
        with t.request("PUT", t.target.object_path(full_key), signed=signed) as r:
            if r.status == 200:
                if r.length is not None and r.length > _COPY_ANSWER_LIMIT:
                    raise NotUnderstood("xml", "a copy answer over 64 KiB")
                body = b"".join(read_chunks(r, _COPY_ANSWER_LIMIT))
                return self._copied(r, body)
            error = error_of(r, _WRITE_ERRORS)
        raise error

    @staticmethod
    def _copied(r: http.client.HTTPResponse, body: bytes) -> WriteAnswer:
        root = parse_xml(body, "the copy answer")
        if local_name(root) != "CopyObjectResult":
            # S3 may answer 200 and then an <Error> (botocore retries that as a 500).
            raise NotUnderstood("xml", f"a copy answer of <{local_name(root)}>")
        etag = modified = None
        for child in root:
            name = local_name(child)
            if name == "ETag":
                etag = child.text or ""
            elif name == "LastModified":
                modified = child.text or ""
        mtime = _date_time(r)
        if modified:
            # The copy is made: a time not understood comes from the Date header instead.
            with contextlib.suppress(NotUnderstood):
                mtime = iso_time(modified)
        return WriteAnswer(bare_etag(etag), version_or_none(r.getheader("x-amz-version-id")),
                           mtime)

    def delete(self, full_key: str, version_id: str | None = None) -> None:
        """DeleteObject (of that version, when given: for good)."""
        params = (("versionId", version_id),) if version_id else ()
        t = self.transport
        with t.request("DELETE", t.target.object_path(full_key), params) as r:
            if r.status in (200, 204):
                return
            error = error_of(r, _WRITE_ERRORS)
        raise error
