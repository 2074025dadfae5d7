"""What one upload came to (`upload.Uploader.send`), for the ledger to settle (`settle`).

Plain values: `Landed`, `KeptAsConflict`, or `NOTHING` to send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zonefs.cache.blobs import Digest
    from zonefs.remote.base import ObjectInfo


@dataclass(frozen=True, slots=True)
class Landed:
    """The change is in the store as `info`; `digest` of the bytes sent (None for a copy or a
    directory marker)."""

    info: ObjectInfo
    digest: Digest | None


@dataclass(frozen=True, slots=True)
class KeptAsConflict:
    """Another writer replaced the object: the local bytes are stored as `name` (`info`)."""

    name: str
    info: ObjectInfo
    digest: Digest


class _NothingToDo:
    def __repr__(self) -> str:
        return "NOTHING"


#: The outcome of a job with nothing to send (an unchanged local copy).
NOTHING = _NothingToDo()

Outcome = Landed | KeptAsConflict | _NothingToDo
