"""`zonefs zones`: the zones of the zones files, and with `--check` whether each answers and
what its store can do (the probe, with the zone's overrides).
"""

from __future__ import annotations

import argparse
import json
import sys

from zonefs.common import zones
from zonefs.common.config import parse_mount_options
from zonefs.common.errors import ZonefsError


def cmd_zones(args: argparse.Namespace) -> int:
    named = zones.load_zones()
    if not named:
        print(f"zonefs: no zones defined (looked in {' and '.join(zones.zone_files())})",
              file=sys.stderr)
        return 1
    checks = _check_zones(list(named.values())) if args.check else {}
    rows = []
    for name in sorted(named):
        z = named[name]
        row = {"name": name, "zone": z.zone.label, "mountpoint": z.mountpoint,
               "options": ",".join(z.options), "file": z.source}
        if args.check:
            row["check"] = checks[name]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:16} {row['zone']}  ->  {row['mountpoint'] or '(no mountpoint)'}")
        if row["options"]:
            print(f"{'':16} options: {row['options']}")
        if args.check:
            print(f"{'':16} {row['check']}")
    return 0 if not args.check or all(c.startswith("ok") for c in checks.values()) else 1


def _check_zones(named: list[zones.NamedZone]) -> dict[str, str]:
    """For each zone: can it be reached, and what does the store say of versioning."""
    import trio

    from zonefs.remote import open_remote
    from zonefs.remote.probe import probe

    async def check(z: zones.NamedZone) -> str:
        try:
            remote = open_remote(z.zone)
            overrides = dict(parse_mount_options(z.options).store_overrides)
            with trio.fail_after(10):
                await remote.check()
            found = await probe(remote, overrides=overrides)
            return f"ok: reachable; {found.with_overrides(overrides).summary()}"
        except trio.TooSlowError:
            return "FAILED: no answer within 10 s"
        except ZonefsError as exc:
            return f"FAILED: {exc}"

    async def run_all() -> dict[str, str]:
        out: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            for z in named:
                async def one(z: zones.NamedZone = z) -> None:
                    out[z.name] = await check(z)
                nursery.start_soon(one)
        return out

    return trio.run(run_all)
