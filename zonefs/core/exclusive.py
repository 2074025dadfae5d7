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
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zonefs.common.errors import Exists, NotFound, PreconditionFailed, RemoteError

if TYPE_CHECKING:
    from zonefs.cache.dircache import DirCache
    from zonefs.common.config import MountOptions
    from zonefs.pending.ledger import Ledger
    from zonefs.remote.base import ObjectInfo, Remote
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)


#: The metadata header (`x-amz-meta-zonefs-create`) that names one conditional create: after
#: an answer that was lost, or a 412 that may be the store's own mistake, the object at the key
#: is looked at, and it is this create's if it carries the token.
TOKEN_KEY = "zonefs-create"


@dataclass(frozen=True, slots=True)
class Taken:
    """What a conditional create came to: `info`, the object it put (the name is this mount's
    in the store); or None: the create stays pending, and `may_exist` says whether an object
    of this create may be at the key all the same (its answer was lost)."""

    info: ObjectInfo | None
    may_exist: bool = False


def _ours(found: ObjectInfo, token: str) -> bool:
    """Whether the object `found` was put by the conditional create of `token`."""
    return (found.metadata or {}).get(TOKEN_KEY) == token


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
        #: mkdir too: only where a marker keeps its headers, so that the token tells this
        #: mount's marker from another's. Where it does not (SeaweedFS), an emptied directory
        #: lingers in the store and answers 412 like another mount's mkdir (and concurrent
        #: conditional PUTs of a marker may both succeed there): mkdir is exclusive on this
        #: mount only.
        self.dirs_enforced = self.enforced and capabilities.dir_markers == "kept"
        self.made = 0  # conditional creates that took their name in the store

    def to_dict(self) -> dict[str, Any]:
        """What `zonefs status` shows: where O_EXCL and mkdir are exclusive."""
        return {"across_mounts": self.enforced, "mkdir_across_mounts": self.dirs_enforced,
                "made": self.made}

    async def create(self, key: str, path: str, data: bytes, metadata: Mapping[str, str],
                     content_type: str | None = None) -> Taken:
        """Put `data` at `key` (the zone key of `path`) only if nothing is there. Raises
        Exists when another client has the name; see `Taken` for the rest."""
        enforced = self.dirs_enforced if key.endswith("/") else self.enforced
        if not enforced or self.remote.health.not_answering(key) is not None:
            return Taken(None)
        removed_here = self.ledger.has_delete(key)
        if removed_here:
            # Removed here, still in the store: the delete goes first, else the condition
            # would find the object this mount already took away (`rm lock; mkdir lock`).
            try:
                await self.ledger.flush([key])
            except RemoteError as exc:
                log.debug("exclusive create of %r stays pending: %s", path, exc)
                return Taken(None)
        token = uuid.uuid4().hex
        try:
            info = await self.remote.put_bytes(key, data, {**metadata, TOKEN_KEY: token},
                                               content_type, if_none_match=True)
        except PreconditionFailed:
            # Another client's, unless a retry of this very PUT found the first attempt's
            # object, or the store answered 412 for nothing there (SeaweedFS, where a
            # directory of that name was emptied): look.
            try:
                found = await self._look(key)
            except RemoteError:
                self.cache.invalidate(path)
                raise Exists(path) from None  # cannot tell: the name is not claimed
            if removed_here and found is not None and not _ours(found, token):
                # This mount removed the name a moment ago and the store still shows it: a
                # directory the store keeps once emptied (SeaweedFS answers its `dir/` with
                # 200 and 412). The create stays pending, exclusive on this mount.
                log.debug("exclusive create of %r stays pending: the store still shows the "
                          "name this mount removed", path)
                return Taken(None)
            return self._taken_or_exists(path, found, token)
        except RemoteError as exc:
            if not exc.transient:
                raise
            log.debug("exclusive create of %r: %s; looking whether it landed", path, exc)
            try:
                found = await self._look(key)
            except RemoteError:
                return Taken(None, may_exist=True)  # pending; it may have landed all the same
            return self._taken_or_exists(path, found, token)
        return self._took(info)

    async def _look(self, key: str) -> ObjectInfo | None:
        try:
            return await self.remote.head(key)
        except NotFound:
            return None

    def _taken_or_exists(self, path: str, found: ObjectInfo | None, token: str) -> Taken:
        if found is None:
            return Taken(None)  # a 412 with nothing there: the create stays pending
        if _ours(found, token):
            return self._took(found)
        # Another mount (or tool) made it: show it from now on.
        self.cache.invalidate(path)
        raise Exists(path)

    def _took(self, info: ObjectInfo) -> Taken:
        self.made += 1
        return Taken(info)
