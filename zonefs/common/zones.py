"""Named zones: `zones.toml` files that define a zone once, to mount it by name.

Files, later ones winning per zone name (a zone is taken whole from one file):
`/etc/zonefs/zones.toml`, then `$XDG_CONFIG_HOME/zonefs/zones.toml` (default
`~/.config/zonefs/zones.toml`); `ZONEFS_ZONES_FILE` names one file instead of both.

    [example]
    bucket = "my-bucket"              # or url = "s3://my-bucket/some/dir", or "file:///srv/zone"
    prefix = "some/dir"
    endpoint_url = "https://s3.example.org"
    region = "us-east-1"
    credentials_file = "/etc/zonefs/example.credentials"   # or profile = "name"
    mountpoint = "/mnt/example"
    cache_size = "20G"                # any mount option: cache_dir, metadata_ttl, ro, ...
    versioning = "enabled"            # probe overrides: versioning, conditional_writes, ...

Everything here is pure parsing: a `NamedZone` gives the `ZoneConfig` and the mount option
strings; nothing touches the network. Errors are one-line `ConfigError`s naming the file and
the zone. No credential is ever read here: a credentials file is only checked to exist and be
readable, and a world-readable one draws a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat as st
import tomllib
from dataclasses import dataclass, field
from typing import Any

from zonefs.common.config import ZoneConfig
from zonefs.common.errors import ConfigError

log = logging.getLogger(__name__)

ZONE_ENV = "ZONEFS_ZONE"
FILE_ENV = "ZONEFS_ZONES_FILE"
SYSTEM_FILE = "/etc/zonefs/zones.toml"

#: Keys that say where the zone is and how to reach it.
_WHERE = {"url", "bucket", "prefix", "local_dir", "endpoint_url", "region", "profile",
          "credentials_file", "addressing_style", "ca_bundle", "mountpoint"}
#: Keys passed on as mount options (`-o name=value`; true for a flag, false to leave it off).
_OPTIONS = {"ro", "allow_other", "uid", "gid", "umask", "cache_dir", "cache_size",
            "writeback_delay", "metadata_ttl", "io_timeout", "max_requests", "kachery_mirror",
            "lean_requests", "read_ahead", "exclusive_creates", "metrics", "changes",
            "change_poll", "max_memory",
            # answers of the store probe, overriding it
            "versioning", "conditional_writes", "checksums", "dir_markers", "backslash_keys",
            "max_name_bytes"}


@dataclass(frozen=True, slots=True)
class NamedZone:
    """One zone of a zones file."""

    name: str
    source: str  # the file it comes from
    zone: ZoneConfig
    mountpoint: str | None = None
    options: list[str] = field(default_factory=list)  # mount option strings, `-o` style


def user_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "zonefs", "zones.toml")


def zone_files() -> list[str]:
    """The zones files consulted, in order (later ones win)."""
    only = os.environ.get(FILE_ENV)
    if only:
        return [only]
    return [SYSTEM_FILE, user_file()]


def load_zones(files: list[str] | None = None) -> dict[str, NamedZone]:
    """Every zone of the zones files that exist; a file that exists must parse."""
    zones: dict[str, NamedZone] = {}
    explicit = files is not None or bool(os.environ.get(FILE_ENV))
    for path in files if files is not None else zone_files():
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            if explicit:
                raise ConfigError(f"zones file {path} does not exist") from None
            continue
        except PermissionError:
            raise ConfigError(f"zones file {path} is not readable") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        for name, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {name!r} must be a table ([{name}]) of zone settings")
            zones[name] = parse_zone(name, table, path)
    return zones


def find_zone(name: str) -> NamedZone:
    zones = load_zones()
    if name not in zones:
        where = " or ".join(zone_files())
        known = ", ".join(sorted(zones)) or "none"
        raise ConfigError(f"no zone named {name!r} in {where} (zones defined: {known})")
    return zones[name]


def parse_zone(name: str, table: dict[str, Any], source: str) -> NamedZone:
    """One `[name]` table → a NamedZone, with a clear message for each mistake."""
    what = f"{source}: zone {name!r}"
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{what}: a zone name has no '/' and does not start with '.'")
    unknown = sorted(set(table) - _WHERE - _OPTIONS)
    if unknown:
        raise ConfigError(f"{what}: unknown key {unknown[0]!r} (known: "
                          f"{', '.join(sorted(_WHERE | _OPTIONS))})")
    text = {k: v for k, v in table.items() if k in _WHERE}
    for key, value in text.items():
        if not isinstance(value, str):
            raise ConfigError(f"{what}: {key} must be a string, not {value!r}")
    url = text.get("url")
    if url is None:
        if "bucket" in text:
            url = f"s3://{text['bucket']}/{text.get('prefix', '').strip('/')}".rstrip("/")
        elif "local_dir" in text:
            url = f"file://{text['local_dir']}"
        else:
            raise ConfigError(f"{what}: needs a bucket (or url = \"s3://BUCKET/PREFIX\", or "
                              "local_dir)")
    elif "bucket" in text or "local_dir" in text:
        raise ConfigError(f"{what}: give either url or bucket/local_dir, not both")
    try:
        zone = ZoneConfig.parse(url, endpoint_url=text.get("endpoint_url"),
                                region=text.get("region"), profile=text.get("profile"))
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    changes: dict[str, Any] = {}
    if "addressing_style" in text:
        if text["addressing_style"] not in ("path", "virtual", "auto"):
            raise ConfigError(f"{what}: addressing_style is path, virtual or auto")
        changes["addressing_style"] = (None if text["addressing_style"] == "auto"
                                       else text["addressing_style"])
    if "ca_bundle" in text:
        ca = os.path.expandvars(text["ca_bundle"])
        if not os.path.isfile(ca):
            raise ConfigError(f"{what}: ca_bundle {ca}: no such file")
        changes["ca_bundle"] = ca
    if "credentials_file" in text:
        if zone.scheme != "s3":
            raise ConfigError(f"{what}: credentials_file is for s3:// zones")
        changes["credentials_file"] = check_credentials_file(
            os.path.expandvars(text["credentials_file"]), what)
    if changes:
        zone = dataclasses.replace(zone, **changes)
    options = []
    for key in sorted(set(table) & _OPTIONS):
        value = table[key]
        if isinstance(value, bool):
            # Flags: `true` names the option, `false` leaves it off; checksums and
            # lean_requests take on/off.
            if key in ("checksums", "lean_requests"):
                options.append(f"{key}={'on' if value else 'off'}")
            elif value:
                options.append(key)
        elif isinstance(value, int | float | str):
            options.append(f"{key}={value}")
        else:
            raise ConfigError(f"{what}: {key} must be a string, number or boolean")
    mountpoint = text.get("mountpoint")
    if mountpoint is not None and not os.path.isabs(mountpoint):
        raise ConfigError(f"{what}: mountpoint must be an absolute path")
    return NamedZone(name, source, zone, mountpoint, options)


def check_credentials_file(path: str, what: str) -> str:
    """The path of a readable credentials file; warns when others may read it."""
    try:
        info = os.stat(path)
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise ConfigError(f"{what}: credentials_file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{what}: credentials_file {path} is not readable by this user "
                          f"(uid {os.getuid()})") from None
    if info.st_mode & (st.S_IROTH | st.S_IWOTH):
        log.warning("%s: credentials_file %s is readable by every user: chmod 600 it", what,
                    path)
    return os.path.abspath(path)
