"""The one table that turns an S3 store's answers into `zonefs.common.errors`: error codes and
statuses (`answer_error`, used by the boto3 remote and by the lean path alike, so both raise
the same errors) and botocore's exceptions (`translate_error`).

Invariants:
- Every error leaves as a `ZonefsError`; no message carries a credential (messages are built
  here from error codes and the store's own one-line message, never from the request).
- Transient errors (5xx, throttling, a failed connection) are marked `transient`; a 4xx this
  table does not name, other than those of `_NOT_REFUSALS`, is a `Refused`: the same request
  gets the same answer.
"""

from __future__ import annotations

import errno
import re

from botocore.exceptions import (
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    SSLError,
)

from zonefs.common.errors import (
    AccessDenied,
    AccessRefused,
    BucketMissing,
    ChecksumMismatch,
    NoSpace,
    NotFound,
    PreconditionFailed,
    Refused,
    RemoteError,
    StoreFailing,
    StoreUnsupported,
    ZonefsError,
)

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


def one_line(text: str, limit: int = 200) -> str:
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
        return "TLS error: " + one_line(text, 120)
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
    message = one_line(message)
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
    if isinstance(exc, OSError):
        # Local file trouble while streaming to or from the cache: not the store's fault.
        cls_local = NoSpace if exc.errno == errno.ENOSPC else RemoteError
        return cls_local(f"{target}: local file error: {exc.strerror or exc}")
    return RemoteError(f"{target}: {type(exc).__name__}: {one_line(str(exc))}")
