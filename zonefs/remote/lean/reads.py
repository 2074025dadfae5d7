"""The hottest S3 reads on the lean path: HEAD, ListObjectsV2 and GETs of small bodies, sent
by `transport.SignedTransport`, their answers turned into the `ObjectInfo` and `ListPage`
values that `S3Remote`'s boto3 path builds from the same answers.

`LeanRemote` (lean/remote.py) tries these first and turns what they raise into zonefs errors:
`answers.StoreAnswer` (an error answer understood here), `transport.Unreachable` (every
attempt failed in transport) and `transport.NotUnderstood` (anything else: the same request
then goes to the boto3 remote).

Invariants:
- Callers pass full keys (zone prefix included); listings give zone keys, without the zone
  root's own marker, as `S3Remote._list` does.
- Values are botocore's (see answers.py): user metadata with lowercase names and no
  `x-amz-meta-`, LastModified as a timestamp (the Date header, else now, when there is
  none), listing keys URL-decoded when, and only when, the answer says EncodingType=url.
- `report_progress()` runs after each piece of a body arrives, so io_timeout bounds a slow
  read and an abandoned one stops at its next piece.
- No more than `body_limit` bytes of a body are read here: a longer whole object is left
  (NotUnderstood before its first byte is read) to boto3's streaming.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from zonefs.remote.base import ListPage, ObjectInfo, bare_etag, report_progress, version_or_none
from zonefs.remote.lean.answers import (
    error_of,
    http_date,
    iso_time,
    local_name,
    parse_xml,
)
from zonefs.remote.lean.transport import (
    NotUnderstood,
    Unreachable,
    read_chunks,
    transport_errors,
)

if TYPE_CHECKING:
    from zonefs.remote.lean.transport import SignedTransport

MiB = 1 << 20
#: The largest listing answer read (1,000 keys of 1 KiB each are about 1.3 MB).
_LISTING_LIMIT = 64 * MiB
_META = "x-amz-meta-"


def object_info(key: str, headers: http.client.HTTPMessage) -> ObjectInfo:
    """The `ObjectInfo` of a HEAD or GET answer's headers (`key`: the zone key)."""
    meta: dict[str, str] = {}
    size = 0
    etag = version = content_type = modified = date = None
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(_META):
            field = lower[len(_META):]
            meta[field] = f"{meta[field]}, {value}" if field in meta else value
        elif lower == "content-length":
            try:
                size = int(value)
            except ValueError:
                raise NotUnderstood("header", "a Content-Length that is not a number") from None
        elif lower == "etag":
            etag = value
        elif lower == "last-modified":
            modified = value
        elif lower == "date":
            date = value
        elif lower == "x-amz-version-id":
            version = value
        elif lower == "content-type":
            content_type = value
    if modified is not None:
        mtime = http_date(modified)
    else:
        try:
            mtime = http_date(date) if date is not None else time.time()
        except NotUnderstood:
            mtime = time.time()
    return ObjectInfo(key=key, size=size, etag=bare_etag(etag), mtime=mtime,
                      version_id=version_or_none(version), metadata=meta,
                      content_type=content_type)


def parse_listing(body: bytes, prefix: str) -> ListPage:
    """A ListObjectsV2 answer as a `ListPage` of zone keys (`prefix`: the zone prefix).

    >>> page = parse_listing(b'<ListBucketResult><IsTruncated>true</IsTruncated>'
    ...     b'<NextContinuationToken>t1</NextContinuationToken><EncodingType>url'
    ...     b'</EncodingType><Contents><Key>z/a+b%2Bc</Key><Size>3</Size><ETag>"e"</ETag>'
    ...     b'<LastModified>2026-12-02T03:53:08.000Z</LastModified></Contents>'
    ...     b'<CommonPrefixes><Prefix>z/d%25/</Prefix></CommonPrefixes></ListBucketResult>',
    ...     "z/")
    >>> page.objects[0].key, page.objects[0].size, page.prefixes, page.next_token
    ('a b+c', 3, ['d%/'], 't1')
    """
    root = parse_xml(body, "the listing")
    if local_name(root) != "ListBucketResult":
        raise NotUnderstood("xml", f"a listing answer of <{local_name(root)}>")
    entries: list[tuple[str, str, str, str]] = []
    raw_prefixes: list[str] = []
    truncated = encoded = False
    token = None
    for child in root:
        tag = local_name(child)
        if tag == "Contents":
            key = size = etag = modified = None
            for field in child:
                name = local_name(field)
                if name == "Key":
                    key = field.text or ""
                elif name == "Size":
                    size = field.text or ""
                elif name == "ETag":
                    etag = field.text or ""
                elif name == "LastModified":
                    modified = field.text or ""
            if key is None or modified is None:
                raise NotUnderstood("xml", "a listed object without Key or LastModified")
            entries.append((key, size or "0", etag or "", modified))
        elif tag == "CommonPrefixes":
            for field in child:
                if local_name(field) == "Prefix":
                    raw_prefixes.append(field.text or "")
        elif tag == "IsTruncated":
            truncated = child.text == "true"
        elif tag == "NextContinuationToken":
            token = child.text or ""
        elif tag == "EncodingType":
            encoded = child.text == "url"
    objects = []
    for key, size, etag, modified in entries:
        if encoded:
            key = unquote_plus(key)
        if key == prefix:
            continue  # the zone root's own marker is not an entry
        try:
            length = int(size)
        except ValueError:
            raise NotUnderstood("xml", "a listed Size that is not a number") from None
        objects.append(ObjectInfo(key=key[len(prefix):], size=length, etag=bare_etag(etag),
                                  mtime=iso_time(modified)))
    prefixes = [(unquote_plus(p) if encoded else p)[len(prefix):] for p in raw_prefixes]
    return ListPage(objects=objects, prefixes=prefixes, next_token=token if truncated else None)


class LeanReads:
    """HEAD, ListObjectsV2 and small GETs of one bucket over a `SignedTransport`."""

    def __init__(self, transport: SignedTransport, prefix: str, *, body_limit: int = 8 * MiB,
                 chunk: int = MiB) -> None:
        self.transport = transport
        self.prefix = prefix
        self.body_limit = body_limit
        self.chunk = chunk

    @staticmethod
    def _version(version_id: str | None) -> Sequence[tuple[str, str]]:
        return (("versionId", version_id),) if version_id else ()

    def head(self, key: str, full_key: str, version_id: str | None = None) -> ObjectInfo:
        t = self.transport
        with t.request("HEAD", t.target.object_path(full_key), self._version(version_id)) as r:
            if r.status == 200:
                return object_info(key, r.headers)
            error = error_of(r)  # raised once the answer is done with: the connection stays
        raise error

    def list(self, full_prefix: str, delimiter: str | None, token: str | None,
             max_keys: int) -> ListPage:
        params = [("list-type", "2"), ("prefix", full_prefix), ("max-keys", str(max_keys)),
                  ("encoding-type", "url")]
        if delimiter:
            params.append(("delimiter", delimiter))
        if token:
            params.append(("continuation-token", token))
        t = self.transport
        with t.request("GET", t.target.bucket_path, params) as r:
            if r.status != 200:
                error = error_of(r)
            elif r.length is not None and r.length > _LISTING_LIMIT:
                raise NotUnderstood("large body", "a listing answer over 64 MiB")
            else:
                pieces = []
                for piece in read_chunks(r, self.chunk):
                    pieces.append(piece)
                    report_progress()
                return parse_listing(b"".join(pieces), self.prefix)
        raise error

    def get_range(self, full_key: str, start: int, length: int, version_id: str | None,
                  if_match: str | None) -> bytes:
        """Bytes [start, start+length) (the caller checked 0 < length <= body_limit)."""
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        if if_match:
            headers["If-Match"] = f'"{bare_etag(if_match)}"'
        t = self.transport
        with t.request("GET", t.target.object_path(full_key), self._version(version_id),
                       headers) as r:
            if r.status == 416:
                return b""  # the range starts at or past the end of the object
            if r.status in (200, 206):
                # Sliced here when a store ignored the Range header (200 with no range).
                whole = r.status == 200 and r.getheader("content-range") is None
                return self._read_range(r, start, length, whole)
            error = error_of(r)  # raised once the answer is done with: the connection stays
        raise error

    def _read_range(self, r: http.client.HTTPResponse, start: int, length: int,
                    whole: bool) -> bytes:
        want = start + length if whole else length
        if want > self.body_limit:
            raise NotUnderstood("large body", "a whole object in answer to a range")
        if not whole:
            return self._read_into(r, length)
        pieces, got = [], 0
        for piece in read_chunks(r, min(self.chunk, want)):
            pieces.append(piece)
            got += len(piece)
            report_progress()
            if got >= want:
                break  # the rest of an object sent whole is not needed
        return b"".join(pieces)[start:start + length]

    def _read_into(self, r: http.client.HTTPResponse, length: int) -> bytes:
        """The body of a range answer, at most `length` bytes, received into one buffer.
        Pieces joined afterwards came from the allocator's heap, which kept them: the daemon
        peaked 12 MiB higher with four cold readers under `max_memory=160M`, and a copy of the
        buffer into bytes 17 MiB more: it is answered as it is (`Remote.get_range`)."""
        buffer = bytearray(length)
        view, got = memoryview(buffer), 0
        with transport_errors(), view:
            while got < length:
                n = r.readinto(view[got:got + self.chunk])
                if not n:
                    break
                got += n
                report_progress()
        if r.length:  # http.client's readinto ends quietly when the connection does
            raise Unreachable("the answer was cut short")
        return buffer if got == length else bytes(buffer[:got])  # type: ignore[return-value]

    def download(self, key: str, full_key: str, dest: str, version_id: str | None,
                 if_match: str | None) -> ObjectInfo:
        """The whole object into the file `dest`; OSError for local file trouble."""
        headers = {"If-Match": f'"{bare_etag(if_match)}"'} if if_match else None
        t = self.transport
        with t.request("GET", t.target.object_path(full_key), self._version(version_id),
                       headers) as r:
            if r.status == 200:
                if r.length is None or r.length > self.body_limit:
                    raise NotUnderstood("large body", "an object over the lean path's limit")
                info = object_info(key, r.headers)
                with open(dest, "wb") as f:
                    for piece in read_chunks(r, self.chunk):  # streamed: never whole in memory
                        report_progress()  # before the write: an abandoned call stops here
                        f.write(piece)
                return info
            error = error_of(r)
        raise error
