"""The zonefs exception tree and its errno table.

Every component raises these; nothing below `fuse_ops` raises `FUSEError` or `OSError` for a
filesystem-level condition. `fuse_ops` turns a `ZonefsError` into `FUSEError(exc.errno)` in one
place, and the remote backends turn store errors into these in one place each.
"""

from __future__ import annotations

import errno


class ZonefsError(Exception):
    """Base of every zonefs error; `errno` is what a FUSE caller sees."""

    errno: int = errno.EIO


class NotFound(ZonefsError):
    errno = errno.ENOENT


class Exists(ZonefsError):
    errno = errno.EEXIST


class NotEmpty(ZonefsError):
    errno = errno.ENOTEMPTY


class IsADirectory(ZonefsError):
    errno = errno.EISDIR


class NotADirectory(ZonefsError):
    errno = errno.ENOTDIR


class ReadOnly(ZonefsError):
    errno = errno.EROFS


class AccessDenied(ZonefsError):
    errno = errno.EACCES


class NotPermitted(ZonefsError):
    errno = errno.EPERM


class NameTooLong(ZonefsError):
    errno = errno.ENAMETOOLONG


class InvalidArgument(ZonefsError):
    errno = errno.EINVAL


class NotSupported(ZonefsError):
    errno = errno.ENOTSUP


class NoSpace(ZonefsError):
    errno = errno.ENOSPC


class RemoteError(ZonefsError):
    """The store failed a request. `transient` errors (timeouts, 5xx, throttling) may be retried."""

    errno = errno.EIO

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class BucketMissing(RemoteError):
    errno = errno.ENOENT


class PreconditionFailed(RemoteError):
    """A conditional write lost: the object changed since the version the write started from."""

    errno = errno.EIO


class StoreUnsupported(RemoteError):
    """The store does not implement a request or a header zonefs sent (NotImplemented, 501):
    what the capability probe looks for, and never worth a retry."""

    errno = errno.ENOTSUP


class StoreFailing(RemoteError):
    """The store answered with a server error or a throttle (5xx, SlowDown): transient, and
    retried. `code` is its error code (the HTTP status when the answer had no body), so that
    an internal error the store gives one request every time can be told from a busy store."""

    def __init__(self, message: str, *, code: str, status: str = "") -> None:
        super().__init__(message, transient=True)
        self.code, self.status = code, status
        #: Set by whoever asked the store something else right after: it answered that.
        self.others_answered = False

    @property
    def internal(self) -> bool:
        """An internal error (500), not a throttle or an unavailable store."""
        return self.code == "InternalError" or self.status == "500"


class Refused(RemoteError):
    """The store refused this request for good: a 4xx answer that is not a throttle, a
    timeout or a precondition (KeyTooLongError, InvalidArgument, EntityTooLarge, AccessDenied
    on that key ...). Sending the same request again gets the same answer, so the write-back
    queue does not retry it on a timer. `code` and `store_message` are the store's answer."""

    errno = errno.EIO

    def __init__(self, message: str, *, code: str, store_message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.store_message = store_message

    @property
    def answer(self) -> str:
        """The store's answer in one line: "KeyTooLongError: Your key is too long"."""
        return f"{self.code}: {self.store_message}" if self.store_message else self.code


class AccessRefused(AccessDenied, Refused):
    """AccessDenied on this object while the credentials themselves are accepted (a policy
    that denies the key): a refusal, whose errno stays EACCES."""


class ChecksumMismatch(RemoteError):
    """The store computed another checksum of the bytes than the one sent with them
    (BadDigest): the bytes were damaged on the way, and the store kept nothing."""

    errno = errno.EIO


class ConfigError(ZonefsError):
    """Bad user input (options, URLs, zone definitions): reported as one line, exit code 2."""

    errno = errno.EINVAL


class MountError(ZonefsError):
    """The mount cannot start (mount point, /dev/fuse, store unreachable): one line, exit code 1."""

    errno = errno.EIO
