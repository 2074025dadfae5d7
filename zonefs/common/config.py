"""Zone and mount configuration: frozen dataclasses, parsed and validated with clear messages.

A *zone* says where the objects are (an S3 bucket and prefix at an endpoint, or a local
directory); *mount options* say how this machine presents them. Parsing raises `ConfigError`
with a one-line message; nothing here touches the network or the filesystem beyond reading
environment defaults.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import time
from dataclasses import dataclass, field, replace
from urllib.parse import unquote, urlsplit

from zonefs.common.errors import ConfigError

#: The least `-o max_memory` takes (core/memory.py).
MIN_MAX_MEMORY = 128 << 20

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

#: Store capabilities a mount option sets in place of the probe's answer, and their values
#: (docs/stores.md, "Stores and the probe"; `remote.probe.Capabilities` holds the answers).
STORE_OVERRIDES: dict[str, tuple[str, ...]] = {
    "versioning": ("enabled", "suspended", "unversioned", "unsupported"),
    "conditional_writes": ("enforced", "ignored", "not-implemented", "always-412"),
    "checksums": ("on", "off"),
    "dir_markers": ("kept", "dropped"),
    "backslash_keys": ("kept", "rewritten"),
    # The longest name (one path segment) the store takes, in bytes: 1 to 255.
    "max_name_bytes": tuple(str(n) for n in range(1, 256)),
}
_BUCKET_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,254}$")


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """Where a zone's objects live. `prefix` is '' or ends with '/'."""

    url: str
    scheme: str  # "s3" or "file"
    bucket: str = ""
    prefix: str = ""
    local_dir: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str | None = None  # "path", "virtual" or None for botocore's choice
    ca_bundle: str | None = None
    # An AWS shared-credentials file (the `profile` section, else [default]); read only by
    # the S3 remote, so the keys never pass through argv or the environment of children.
    credentials_file: str | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
    ) -> ZoneConfig:
        """Parse `s3://BUCKET[/PREFIX]` or `file:///DIR`.

        >>> ZoneConfig.parse("s3://bkt/some/dir").prefix
        'some/dir/'
        >>> ZoneConfig.parse("file:///tmp/z").local_dir
        '/tmp/z'
        """
        parts = urlsplit(url)
        if parts.scheme == "s3":
            bucket = parts.netloc
            if not _BUCKET_RE.match(bucket):
                raise ConfigError(f"not a valid bucket name in {url!r}")
            prefix = unquote(parts.path).strip("/")
            if "//" in prefix:
                raise ConfigError(f"the prefix in {url!r} has an empty path segment")
            if endpoint_url is not None and not re.match(r"^https?://[^/]+", endpoint_url):
                raise ConfigError(
                    f"--endpoint-url must start with http:// or https://: {endpoint_url!r}"
                )
            return cls(
                url=url,
                scheme="s3",
                bucket=bucket,
                prefix=prefix + "/" if prefix else "",
                endpoint_url=endpoint_url,
                region=region,
                profile=profile,
                addressing_style="path" if endpoint_url else None,
            )
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ConfigError(f"file zones are local: use file:///DIR, not {url!r}")
            path = unquote(parts.path)
            if not path.startswith("/"):
                raise ConfigError(f"file zones need an absolute path: {url!r}")
            return cls(url=url, scheme="file", local_dir=os.path.normpath(path))
        raise ConfigError(f"a zone is s3://BUCKET[/PREFIX] or file:///DIR, not {url!r}")

    @property
    def zone_id(self) -> str:
        """A short stable name for this zone, used to name its cache directory.

        Built from the normalised parts, so `s3://b/p` and `s3://b/p/` share one journal.
        """
        where = self.local_dir if self.scheme == "file" else f"{self.bucket}/{self.prefix}"
        ident = f"{self.scheme}|{where}|{(self.endpoint_url or '').rstrip('/')}"
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """How logs and `status` name the zone (no credentials: there are none in a zone URL)."""
        if self.scheme == "file":
            return f"file://{self.local_dir}"
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


def default_cache_root() -> str:
    """/var/cache/zonefs for root, else $XDG_CACHE_HOME/zonefs (default ~/.cache/zonefs)."""
    if os.geteuid() == 0:
        return "/var/cache/zonefs"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "zonefs")


@dataclass(frozen=True, slots=True)
class MountOptions:
    """How a zone is presented. Times are seconds, sizes bytes."""

    read_only: bool = False
    allow_other: bool = False
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    umask: int = 0o022
    cache_dir: str = ""  # "" means default_cache_root()/<zone_id>
    cache_size: int = 10 << 30
    writeback_delay: float = 2.0
    metadata_ttl: float = 5.0
    # Longest wait for the store's answer to a read or a lookup (HEAD, LIST, GET) before it
    # fails with EIO; a download in progress waits this long for each next piece. Uploads are
    # not bounded by it: they retry until they land.
    io_timeout: float = 30.0
    max_requests: int = 16
    # The kernel's read-ahead window for the mount, the largest read request it sends (root
    # only; see mount/readahead.py). 0 leaves the kernel's own (128 KiB).
    read_ahead: int = 1 << 20
    fsname: str = "zonefs"
    kachery_mirror: bool = False  # also copy each upload to sha1/ab/cd/ef/<sha1>
    at: float | None = None  # show the zone as it was at this time (seconds since the epoch)
    # Store capabilities set by -o instead of the probe: sorted (name, value) pairs.
    store_overrides: tuple[tuple[str, str], ...] = ()
    reprobe: bool = False  # probe the store again instead of using the cached answers
    # Hot S3 requests (HEAD, listings, small GETs; single-part PUTs, copies, DELETEs) signed and
    # sent by zonefs itself rather than through boto3 (remote/lean/);
    # off: every request through boto3.
    lean_requests: bool = True
    # Where `open(O_CREAT|O_EXCL)` and `mkdir` are exclusive: "store" (across every mount of
    # the zone: a conditional create before they return, where the store enforces it) or
    # "local" (on this mount only: they stay pending like any create; no round trip).
    exclusive_creates: str = "store"
    # Where to serve Prometheus metrics (`/metrics`): (address, port); None: nowhere.
    metrics: tuple[str, int] | None = None
    # The change log (core/changelog.py): announce this mount's writes to the other mounts of
    # the zone, and list theirs every `change_poll` seconds.
    changes: bool = True
    change_poll: float = 1.0
    # The daemon's memory cap in bytes (core/memory.py); 0: the default (512 MiB, or a
    # quarter of the machine's memory if less).
    max_memory: int = 0

    @property
    def file_mode(self) -> int:
        """Permission bits for objects without zonefs metadata."""
        return 0o666 & ~self.umask

    @property
    def dir_mode(self) -> int:
        return 0o777 & ~self.umask

    def cache_dir_for(self, zone: ZoneConfig) -> str:
        return self.cache_dir or os.path.join(default_cache_root(), zone.zone_id)


def parse_size(text: str) -> int:
    """'10G' → bytes.

    >>> parse_size("512M")
    536870912
    """
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M or 10G)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def format_size(n: float) -> str:
    """Bytes for people.

    >>> format_size(512), format_size(1536), format_size(3 << 30)
    ('512 B', '1.5 KiB', '3.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_utc(seconds: float) -> str:
    """A time as ISO 8601 UTC to the millisecond.

    >>> format_utc(1795176000.25)
    '2026-11-20T12:00:00.250Z'
    """
    ms = int(round(seconds * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _parse_seconds(name: str, text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not m:
        raise ConfigError(f"{name}= takes seconds (e.g. 2, 0.5, 500ms), not {text!r}")
    value = float(m.group(1))
    return value / 1000 if m.group(2) == "ms" else value * 60 if m.group(2) == "m" else value


_RELATIVE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float | None = None) -> float:
    """A point in time → seconds since the epoch: ISO 8601 (UTC unless it names an offset),
    a date alone (midnight UTC), or a time relative to `now` such as -2h, -30m, -1d, -1w.

    >>> parse_time("2026-11-20T12:00:00Z")
    1795176000.0
    >>> parse_time("2026-11-20") == parse_time("2026-11-20T00:00:00+00:00")
    True
    >>> parse_time("-2h", now=10000.0)
    2800.0
    """
    text = text.strip()
    m = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhdw])", text)
    if m:
        base = time.time() if now is None else now
        return base - float(m.group(1)) * _RELATIVE_UNITS[m.group(2)]
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"not a time: {text!r} (use e.g. 2026-11-20T12:00:00Z, 2026-11-20 or -2h)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` of `metrics=` (an IPv6 address in brackets).

    >>> _parse_address("127.0.0.1:9101"), _parse_address("[::1]:9101")
    (('127.0.0.1', 9101), ('::1', 9101))
    """
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"metrics= takes HOST:PORT such as 127.0.0.1:9101, not {text!r}")
    return host, int(port)


def _parse_id(name: str, text: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{name}= takes a numeric id, not {text!r}")
    return int(text)


# Mount-style options that mount(8) and fstab pass along and zonefs accepts without effect.
_IGNORED = {"rw", "defaults", "auto", "noauto", "user", "nouser", "_netdev", "nofail", "dev",
            "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
            # The kernel always checks permissions on a zonefs mount (pyfuse3's default).
            "default_permissions"}


def parse_mount_options(specs: list[str], base: MountOptions | None = None) -> MountOptions:
    """Apply `-o a,b=c` strings to `base`.

    >>> parse_mount_options(["ro,uid=1000,cache_size=1G"]).cache_size
    1073741824
    >>> parse_mount_options(["io_timeout=500ms"]).io_timeout, MountOptions().io_timeout
    (0.5, 30.0)
    >>> parse_mount_options(["lean_requests=off"]).lean_requests, MountOptions().lean_requests
    (False, True)
    """
    opts = base or MountOptions()
    changes: dict[str, object] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, _, value = item.partition("=")
            if name == "ro":
                changes["read_only"] = True
            elif name == "rw":
                changes["read_only"] = False
            elif name == "allow_other":
                changes["allow_other"] = True
            elif name == "kachery_mirror":
                changes["kachery_mirror"] = True
            elif name == "at":
                changes["at"] = parse_time(value)
            elif name in STORE_OVERRIDES:
                if value not in STORE_OVERRIDES[name]:
                    takes = ("a number of bytes from 1 to 255" if name == "max_name_bytes"
                             else "|".join(STORE_OVERRIDES[name]))
                    raise ConfigError(f"{name}= takes {takes}, not {value!r}")
                store = dict(opts.store_overrides)
                store.update(changes.get("store_overrides", ()))  # type: ignore[arg-type]
                store[name] = value
                changes["store_overrides"] = tuple(sorted(store.items()))
            elif name == "reprobe":
                changes["reprobe"] = True
            elif name == "lean_requests":
                if value not in ("on", "off"):
                    raise ConfigError(f"lean_requests= takes on|off, not {value!r}")
                changes["lean_requests"] = value == "on"
            elif name == "metrics":
                changes["metrics"] = _parse_address(value)
            elif name == "changes":
                if value not in ("on", "off"):
                    raise ConfigError(f"changes= takes on|off, not {value!r}")
                changes["changes"] = value == "on"
            elif name == "change_poll":
                seconds = _parse_seconds(name, value)
                if not 0.2 <= seconds <= 10:
                    raise ConfigError("change_poll= takes a time from 0.2 to 10 s")
                changes[name] = seconds
            elif name == "exclusive_creates":
                if value not in ("store", "local"):
                    raise ConfigError(f"exclusive_creates= takes store|local, not {value!r}")
                changes["exclusive_creates"] = value
            elif name in ("uid", "gid"):
                changes[name] = _parse_id(name, value)
            elif name == "umask":
                if not re.fullmatch(r"[0-7]{1,4}", value):
                    raise ConfigError(f"umask= takes an octal mask such as 022, not {value!r}")
                changes["umask"] = int(value, 8)
            elif name == "cache_dir":
                if not value:
                    raise ConfigError("cache_dir= needs a directory")
                changes["cache_dir"] = os.path.abspath(value)
            elif name == "cache_size":
                changes["cache_size"] = parse_size(value)
            elif name == "read_ahead":
                changes["read_ahead"] = parse_size(value)
            elif name == "max_memory":
                size = parse_size(value)
                if size < MIN_MAX_MEMORY:
                    raise ConfigError("max_memory= takes a size of at least 128M")
                changes["max_memory"] = size
            elif name in ("writeback_delay", "metadata_ttl"):
                changes[name] = _parse_seconds(name, value)
            elif name == "io_timeout":
                seconds = _parse_seconds(name, value)
                if seconds <= 0:
                    raise ConfigError("io_timeout= takes a time above 0 (a read must give up "
                                      "some time)")
                changes[name] = seconds
            elif name == "max_requests":
                changes["max_requests"] = max(1, _parse_id(name, value))
            elif name in _IGNORED:
                continue
            else:
                raise ConfigError(f"unknown mount option {name!r}")
    if changes.get("at", opts.at) is not None:
        changes["read_only"] = True  # the zone as it was then: read-only, whatever else was asked
    return replace(opts, **changes)  # type: ignore[arg-type]
