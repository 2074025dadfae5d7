"""What a store can do, found out once per zone: `Capabilities`.

S3-compatible stores differ in what they implement and in how they fail when they do not
(../DESIGN.md §1; README "Stores"). zonefs asks each store once, remembers the answers per zone
in the cache dir, and lets the zone's config override every answer. The rest of zonefs reads
only `Capabilities`; it never asks a store what it is.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Values of `Capabilities.versioning`.
VERSIONING_STATES = ("enabled", "suspended", "unversioned", "unsupported")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The answers of a store's probe (or of the zone's overrides)."""

    # enabled: every PUT makes a version, DELETE a delete marker; suspended: new writes make
    # the "null" version, older versions are kept; unversioned: never enabled; unsupported:
    # the store has no versioning at all (R2 answers NotImplemented).
    versioning: str = "enabled"

    @property
    def keeps_versions(self) -> bool:
        """Whether older versions can exist in the bucket (so history is worth listing)."""
        return self.versioning in ("enabled", "suspended")
