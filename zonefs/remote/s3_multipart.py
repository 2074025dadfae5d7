"""Large uploads and copies to S3 as multipart uploads with parallel parts, and the look-ups
that find and abort the ones a killed process left: `S3Multipart`, a part of `S3Remote`
(remote/s3.py) that uses its boto3 clients, bucket and key mapping.

Invariants:
- A multipart upload or copy that fails or is cancelled is aborted, so no unfinished upload is
  left in the bucket. `multipart_log` hears of each upload before CreateMultipartUpload is
  sent (`intend`), of its id before its first part is sent, and of its end once it is
  completed or aborted, so that the next mount can abort what a killed process left, whether
  or not its id was recorded. An intent is settled by the id only when the create was answered
  at its first attempt: after a botocore retry an earlier attempt may have created an upload
  whose answer was lost.
- A cancel stops every part at its next read (`Cancelled` passes botocore's retries).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from zonefs.common.errors import ZonefsError
from zonefs.remote.base import MultipartUpload, report_progress
from zonefs.remote.s3_errors import translate_error

if TYPE_CHECKING:
    from zonefs.remote.base import MultipartLog, ObjectInfo

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
_MAX_PARTS = 10_000


class Cancelled(BaseException):
    """Raised inside a request body's read() to stop an upload.

    A BaseException on purpose: botocore wraps any Exception raised while sending into a
    retryable HTTPClientError (so a cancel would be retried with backoff), while a
    BaseException passes straight through, and urllib3 discards the half-used connection.
    """


class FileWindow:
    """Bytes [start, start+length) of an open file as a seekable body that honours `stopped`."""

    def __init__(self, f: IO[bytes], start: int, length: int, stopped: Callable[[], bool]):
        self._f, self._start, self._len, self._stopped = f, start, length, stopped
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        if self._stopped():
            raise Cancelled
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


def part_size(size: int, minimum: int) -> int:
    """`minimum`, or bigger (whole MiB) when that is needed to stay within 10,000 parts."""
    need = -(-size // _MAX_PARTS)
    return max(minimum, -(-need // MiB) * MiB)



class S3Multipart:
    """The multipart uploads and copies of `S3Remote`, which provides the clients, the bucket,
    the part sizes and `_full`, `object_uri`, `_translated` and `_put_args`."""

    bucket: str
    multipart_log: MultipartLog | None
    PART_SIZE: int
    PART_THREADS: int
    COPY_PART_SIZE: int
    client: Any
    read_client: Any
    endpoint: str
    _full: Callable[[str], str]
    object_uri: Callable[[str], str]
    _translated: Callable[..., Any]
    _put_args: Callable[..., dict[str, Any]]

    def _multipart_upload(
        self, key: str, src: str, size: int, put_args: dict[str, Any],
        cancelled: Callable[[], bool], complete_args: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        part = part_size(size, self.PART_SIZE)
        ranges = [(n + 1, off, min(part, size - off)) for n, off in enumerate(range(0, size, part))]

        def send(
            failed: Callable[[], bool], upload_id: str, number: int, offset: int, length: int
        ) -> dict[str, Any]:
            if failed():
                raise Cancelled
            # One file object per part: parts are read concurrently at different offsets.
            with open(src, "rb") as f:
                resp = self.client.upload_part(
                    Bucket=self.bucket, Key=self._full(key), UploadId=upload_id,
                    PartNumber=number, Body=FileWindow(f, offset, length, failed),
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
            created = self.client.create_multipart_upload(
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
                raise Cancelled
            parts = [f.result() for f in futures]
            resp: dict[str, Any] = self.client.complete_multipart_upload(
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
            head = self.read_client.head_object(Bucket=self.bucket, Key=full, **args)
        except (ClientError, BotoCoreError) as exc:
            log.debug("no ETag for %s after its multipart upload: %s", full, exc)
            return ""
        return str(head.get("ETag", ""))

    def _abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id)
        except ClientError as exc:
            if _upload_gone(exc):
                return  # completed or aborted already: nothing left in the bucket
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self.endpoint) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self.endpoint) from exc

    def _list_multipart_uploads(self, key: str) -> list[MultipartUpload]:
        full = self._full(key)
        args: dict[str, Any] = {"Prefix": full}
        found: list[MultipartUpload] = []
        with self._translated(key, "multipart upload listing"):
            while True:
                resp = self.read_client.list_multipart_uploads(Bucket=self.bucket, **args)
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
            resp = self.read_client.list_parts(
                Bucket=self.bucket, Key=self._full(key), UploadId=upload_id, MaxParts=1)
        except ClientError as exc:
            if _upload_gone(exc):
                return False
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self.endpoint) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, self.object_uri(key), self.bucket,
                                  self.endpoint) from exc
        return bool(resp.get("Parts"))

    def _multipart_copy(
        self, src: ObjectInfo, dst_key: str, metadata: dict[str, str], content_type: str | None
    ) -> dict[str, Any]:
        part = min(part_size(src.size, self.COPY_PART_SIZE), 5 * GiB)
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
                raise Cancelled
            resp = self.client.upload_part_copy(
                Bucket=self.bucket, Key=self._full(dst_key), UploadId=upload_id,
                PartNumber=number, CopySource=source,
                CopySourceRange=f"bytes={offset}-{offset + length - 1}",
            )
            return {"ETag": resp["CopyPartResult"]["ETag"], "PartNumber": number}

        return self._run_multipart(
            dst_key, self._put_args(metadata, content_type), ranges, send, lambda: False
        )


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
    real = [e for e in errors if not isinstance(e, Cancelled)]
    return (real or errors)[0]
