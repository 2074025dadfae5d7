#!/usr/bin/env python3
"""Many mounts, one zone: how soon a change made through one zonefs mount shows on the others,
and what the change log costs when nothing changes.

Usage (from the repository root, with the project's venv):

    .venv/bin/python bench/shared.py [--server seaweedfs|moto] [--changes 50] [--mounts 3]
                                     [--idle 30] [--options metadata_ttl=60]

`--mounts` zonefs mounts of one versioned bucket (each with its own cache dir, as machines
would have them) run on their default options plus `--options` (by default `metadata_ttl=60`,
so that nothing but the change log can make a change show within seconds). Through the first
one, `--changes` files are created, then each is rewritten (new, longer bytes), renamed and
deleted. For each change, every other mount is polled (every 5 ms, with `ls` of the directory
and a read of the file, as a user would) until it shows the change, and the time from the
writer's call returning to what the reader sees is recorded: p50, p95 and the maximum per kind
are printed. The writer's close is the start, so the upload's own delay counts.

Then the mounts sit idle for `--idle` seconds, and each one's change-log requests over that
time (from `zonefs status --json`) give the idle request rate per mount.

The table goes to stdout and to bench/results/shared-latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import create_bucket, delete_bucket, log, publish, s3_client  # noqa: E402
from endpoints import moto_server, seaweedfs_server  # noqa: E402
from systems import Mount, Zonefs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.005
GIVE_UP = 120.0


def seen_after(check: Callable[[], bool]) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > GIVE_UP:
            raise RuntimeError("a change did not show within 120 s")
        time.sleep(POLL)
    return time.monotonic() - start


def shows(path: Path, body: bytes | None) -> Callable[[], bool]:
    """Whether `path` is listed and reads `body` (None: is gone from both)."""
    def check() -> bool:
        try:
            listed = path.name in os.listdir(path.parent)
            got: bytes | None = path.read_bytes()
        except FileNotFoundError:
            listed, got = False, None
        return got == body and listed == (body is not None)
    return check


def status(system: Zonefs, mount: Mount) -> dict[str, object]:
    exe = system.binary()
    assert exe is not None
    out = subprocess.run([exe, "status", "--json", str(mount.path)], capture_output=True,
                         check=True, timeout=60)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def change_requests(system: Zonefs, mount: Mount) -> int:
    counts = status(system, mount)["requests"]
    assert isinstance(counts, dict)
    return sum(int(n) for kind, n in counts.items() if str(kind).startswith("changes-"))


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))]


def run(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="zonefs-shared-"))
    exe = str(ROOT / ".venv" / "bin" / "zonefs")
    with ExitStack() as stack:
        server = moto_server if args.server == "moto" else seaweedfs_server
        endpoint = stack.enter_context(server(workdir))
        s3 = s3_client(endpoint)
        create_bucket(s3, "shared")
        stack.callback(delete_bucket, s3, "shared")
        system = Zonefs(endpoint, workdir, exe, options=args.options)
        mounts = [stack.enter_context(system.mounted("shared", workdir / f"mnt{i}",
                                                     workdir / f"cache{i}"))
                  for i in range(args.mounts)]
        writer, readers = mounts[0], mounts[1:]
        times: dict[str, list[float]] = {}

        def change(kind: str, act: Callable[[], object],
                   *expect: tuple[str, bytes | None]) -> None:
            for reader in readers:  # the old state, in the readers' caches
                for name, _ in expect:
                    shows(reader.path / name, None)()
            act()
            started = time.monotonic()
            for reader in readers:
                for name, body in expect:
                    seen_after(shows(reader.path / name, body))
                    times.setdefault(kind, []).append(time.monotonic() - started)

        for i in range(args.changes):
            f = writer.path / f"f{i}"
            change("create", lambda f=f: f.write_bytes(b"one"), (f.name, b"one"))
        for i in range(args.changes):
            f = writer.path / f"f{i}"
            change("rewrite", lambda f=f: f.write_bytes(b"two, longer"),
                   (f.name, b"two, longer"))
        for i in range(args.changes):
            f, g = writer.path / f"f{i}", writer.path / f"g{i}"
            change("rename", lambda f=f, g=g: f.rename(g), (f.name, None),
                   (g.name, b"two, longer"))
        for i in range(args.changes):
            g = writer.path / f"g{i}"
            change("delete", g.unlink, (g.name, None))

        log(f"idle for {args.idle:.0f} s")
        before = [change_requests(system, m) for m in mounts]
        time.sleep(args.idle)
        after = [change_requests(system, m) for m in mounts]
        # `zonefs status` itself makes no requests; what the change log made while idle:
        rates = [(a - b) / args.idle for a, b in zip(after, before, strict=True)]

    lines = [
        f"Many mounts, one zone: {args.mounts} zonefs mounts of one bucket on {endpoint.kind} "
        f"({endpoint.description}), options `{args.options or 'defaults'}`, {args.changes} "
        f"changes of each kind made through one mount and awaited on the "
        f"{len(readers)} others (seconds from the writer's call returning until `ls` and a "
        "read show it).",
        "",
        "| change | samples | p50 | p95 | max |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for kind, values in times.items():
        lines.append(f"| {kind} | {len(values)} | {statistics.median(values):.2f} | "
                     f"{percentile(values, 95):.2f} | {max(values):.2f} |")
    everything = [v for values in times.values() for v in values]
    lines.append(f"| all | {len(everything)} | {statistics.median(everything):.2f} | "
                 f"{percentile(everything, 95):.2f} | {max(everything):.2f} |")
    lines += ["", "Idle change-log requests per second, per mount (over "
              f"{args.idle:.0f} s): " + ", ".join(f"{r:.2f}" for r in rates)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--mounts", type=int, default=3)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--options", default="metadata_ttl=60")
    args = parser.parse_args()
    publish(run(args), "shared-latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
