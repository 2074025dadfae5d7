"""Exclusive creates across machines: `open(O_CREAT|O_EXCL)` and `mkdir` reach the store before
they return, as a conditional create (`If-None-Match: *`), so that of several mounts racing for
one name exactly one wins and the others get EEXIST (lock files, `mkdir` locks).

Every other create keeps write-back: only these two promise the caller that the name was not
there. The store must enforce the condition (the probe's `conditional_writes=enforced`); where
it does not, or while it cannot be reached, the create stays pending like any other and is
exclusive on this machine only (`enforced` says which).

Owner of nothing but the decision: the object a create makes is the caller's to record (the
pending ledger's row for a file, the listing cache for a directory).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zonefs.common.errors import Exists, PreconditionFailed, RemoteError

if TYPE_CHECKING:
    from zonefs.cache.dircache import DirCache
    from zonefs.common.config import MountOptions
    from zonefs.pending.ledger import Ledger
    from zonefs.remote.base import ObjectInfo, Remote
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)


class ExclusiveCreates:
    """Conditional creates of new names in the store; see the module docstring."""

    def __init__(self, remote: Remote, ledger: Ledger, cache: DirCache,
                 capabilities: Capabilities, opts: MountOptions) -> None:
        self.remote, self.ledger, self.cache = remote, ledger, cache
        #: The store refuses a conditional create of a name that exists (412), and the mount
        #: asks for it (`exclusive_creates=store`, the default): a create here is exclusive
        #: across every mount of the zone, not only this one.
        self.enforced = (capabilities.conditional_writes == "enforced"
                         and opts.exclusive_creates == "store")
        self.made = 0  # conditional creates that took their name in the store

    def to_dict(self) -> dict[str, Any]:
        """What `zonefs status` shows: where O_EXCL and mkdir are exclusive."""
        return {"across_mounts": self.enforced, "made": self.made}

    async def create(self, key: str, path: str, data: bytes, metadata: Mapping[str, str],
                     content_type: str | None = None) -> ObjectInfo | None:
        """Put `data` at `key` (the zone key of `path`) only if nothing is there. Returns what
        was put; None when the create is to stay pending (the store does not enforce the
        condition, or cannot be reached now). Raises Exists when another client has the name.
        """
        if not self.enforced or self.remote.health.not_answering(key) is not None:
            return None
        if self.ledger.has_delete(key):
            # Removed here, still in the store: the delete goes first, else the condition
            # would find the object this mount already took away (`rm lock; mkdir lock`).
            try:
                await self.ledger.flush([key])
            except RemoteError as exc:
                log.debug("exclusive create of %r stays pending: %s", path, exc)
                return None
        try:
            info = await self.remote.put_bytes(key, data, metadata, content_type,
                                               if_none_match=True)
        except PreconditionFailed:
            # Another mount (or tool) made it meanwhile: show it from now on.
            self.cache.invalidate(path)
            raise Exists(path) from None
        except RemoteError as exc:
            if not exc.transient:
                raise
            log.debug("exclusive create of %r stays pending (the store does not answer): %s",
                      path, exc)
            return None
        self.made += 1
        return info
