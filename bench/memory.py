#!/usr/bin/env python3
"""Peak memory of the zonefs daemon against its cap (`-o max_memory`).

Usage (from the repository root, with the project's venv):

    .venv/bin/python bench/memory.py [--server seaweedfs|moto] [--caps default,256M,160M]
                                     [--big-mib 256] [--readers 4] [--keys 100000]

For each cap, a fresh zonefs mount (empty cache dir, page cache dropped) runs, at once,
`--readers` `cat`s of as many different objects of `--big-mib` MiB and an `ls -f` of a
directory of `--keys` keys, and the daemon's peak RSS over that step (VmHWM) is compared with
the cap. Each `cat`'s bytes are checked (SHA-256) and the listing counted. The table goes to
stdout and to bench/results/memory-latest.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import create_bucket, delete_bucket, log, publish, s3_client  # noqa: E402
from endpoints import moto_server, seaweedfs_server  # noqa: E402
from meter import Meter  # noqa: E402
from seed import put_many  # noqa: E402
from systems import Zonefs, daemon_pid  # noqa: E402
from zonefs.common.config import parse_size  # noqa: E402
from zonefs.core.memory import default_max_memory  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        log("page cache not dropped (not root)")


def run(args: argparse.Namespace) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="zonefs-memory-"))
    exe = str(ROOT / ".venv" / "bin" / "zonefs")
    rows = []
    with ExitStack() as stack:
        server = moto_server if args.server == "moto" else seaweedfs_server
        endpoint = stack.enter_context(server(workdir))
        s3 = s3_client(endpoint)
        create_bucket(s3, "memory")
        stack.callback(delete_bucket, s3, "memory")
        digests = []
        for i in range(args.readers):
            body = os.urandom(args.big_mib * MIB)
            digests.append(hashlib.sha256(body).hexdigest())
            s3.put_object(Bucket="memory", Key=f"big/{i}.bin", Body=body)
        log(f"seeding {args.keys} keys")
        put_many(endpoint, "memory", (f"many/k{i:06d}" for i in range(args.keys)))
        for cap in args.caps.split(","):
            options = "" if cap == "default" else f"max_memory={cap}"
            system = Zonefs(endpoint, workdir, exe, options=options)
            name = cap.replace("/", "_")
            with system.mounted("memory", workdir / f"mnt-{name}",
                                workdir / f"cache-{name}") as mount:
                pid = daemon_pid(mount)
                status = subprocess.run([exe, "status", "--json", str(mount.path)],
                                        capture_output=True, check=True, text=True)
                limit = _limit(status.stdout)
                drop_page_cache()
                meter = Meter(pid)
                meter.start()
                started = time.monotonic()
                cats = [subprocess.Popen(["sha256sum", str(mount.path / "big" / f"{i}.bin")],
                                         stdout=subprocess.PIPE, text=True)
                        for i in range(args.readers)]
                listed = len(os.listdir(mount.path / "many"))
                for i, cat in enumerate(cats):
                    out, _ = cat.communicate(timeout=600)
                    if out.split()[0] != digests[i]:
                        raise RuntimeError(f"wrong bytes read from big/{i}.bin")
                took = time.monotonic() - started
                usage = meter.lap()
                if listed != args.keys:
                    raise RuntimeError(f"listed {listed} keys, not {args.keys}")
                peak = usage.peak_rss_mib if usage else float("nan")
                cap_mib = _cap_mib(cap)
                rows.append(f"| {cap} ({cap_mib:.0f} MiB) | {limit} | {peak:.0f} | "
                            f"{peak / cap_mib:.2f} | {took:.2f} |")
                log(rows[-1])
    lines = [
        f"Peak RSS of the zonefs daemon during {args.readers} `cat`s of {args.big_mib} MiB "
        f"objects at once and an `ls -f` of {args.keys:,} keys, cold, on {endpoint.kind} "
        f"({endpoint.description}):",
        "",
        "| max_memory | buffer budget (MiB) | peak RSS (MiB) | peak / cap | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def _limit(status_json: str) -> str:
    memory = json.loads(status_json).get("memory") or {}
    return f"{memory.get('limit', 0) / MIB:.0f}"


def _cap_mib(cap: str) -> float:
    """The cap `-o max_memory=cap` sets ("default": the daemon's default here), in MiB."""
    return (default_max_memory() if cap == "default" else parse_size(cap)) / MIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    parser.add_argument("--caps", default="default,256M,160M")
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    publish(run(args), "memory-latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
