"""The stores a zone can live in, behind one `Remote` interface, and `open_remote` to pick one.

Importing this package does not import boto3: `S3Remote` is imported only when an `s3://`
zone is opened, so local zones (the demo) start fast and work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zonefs.common.errors import ConfigError
from zonefs.remote.base import ListPage, ObjectInfo, Remote, VersionInfo, VersionPage
from zonefs.remote.local import LocalRemote

if TYPE_CHECKING:
    from zonefs.common.config import ZoneConfig
    from zonefs.remote.base import MultipartLog

__all__ = ["ListPage", "LocalRemote", "ObjectInfo", "Remote", "VersionInfo", "VersionPage",
           "open_remote"]


def open_remote(zone: ZoneConfig, *, max_requests: int = 16, create: bool = False,
                io_timeout: float | None = None, lean_requests: bool = True,
                multipart_log: MultipartLog | None = None) -> Remote:
    """The `Remote` for `zone`; at most `max_requests` requests run at once, and reads and
    lookups give up after `io_timeout` seconds without an answer (None: no such bound).

    `create` makes a missing local zone; it has no effect on S3 zones (buckets are made with
    the store's own tools). An S3 zone's remote is the boto3 one wrapped by the lean
    request path (`remote/lean/`), unless `lean_requests` is False or the environment turns
    it off; local zones have no such path. `multipart_log` hears of every multipart upload
    the remote starts (see `Remote.multipart_log`).
    """
    if zone.scheme == "file":
        return LocalRemote(zone, max_requests=max_requests, create=create, io_timeout=io_timeout,
                           multipart_log=multipart_log)
    if zone.scheme == "s3":
        from zonefs.remote.s3 import S3Remote

        remote = S3Remote(zone, max_requests=max_requests, io_timeout=io_timeout,
                          multipart_log=multipart_log)
        if not lean_requests:
            return remote
        from zonefs.remote.lean.remote import LeanRemote, lean_requests_allowed

        return LeanRemote(remote) if lean_requests_allowed() else remote
    raise ConfigError(f"unknown zone scheme {zone.scheme!r} in {zone.url!r}")
