"""Pure mapping between mount paths and zone keys, name rules, and the metadata header codec.

Paths inside zonefs are relative and '/'-separated, with '' for the mount root: `a/b.txt`.
A file at path P is the zone key P; a directory at P has the marker key `P/` (DESIGN.md §3).
Nothing here does I/O.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

NAME_MAX = 255
#: The reserved virtual directory at the mount root; never stored in the bucket.
RESERVED = ".zonefs"
DIR_CONTENT_TYPE = "application/x-directory"
#: The user-metadata headers holding an object's content hashes (hex), set on every upload.
SHA256_KEY = "zonefs-sha256"
SHA1_KEY = "zonefs-sha1"


def join(parent: str, name: str) -> str:
    """
    >>> join("", "a"), join("a", "b")
    ('a', 'a/b')
    """
    return f"{parent}/{name}" if parent else name


def split(path: str) -> tuple[str, str]:
    """
    >>> split("a/b/c"), split("a")
    (('a/b', 'c'), ('', 'a'))
    """
    parent, _, name = path.rpartition("/")
    return parent, name


def parents(path: str) -> list[str]:
    """Every ancestor directory of `path`, nearest first, ending with the root ''.

    >>> parents("a/b/c")
    ['a/b', 'a', '']
    """
    out = []
    while path:
        path = split(path)[0]
        out.append(path)
    return out


def dir_key(path: str) -> str:
    """The marker key of directory `path`; '' for the root.

    >>> dir_key("a/b"), dir_key("")
    ('a/b/', '')
    """
    return f"{path}/" if path else ""


def is_within(path: str, top: str) -> bool:
    """True when `path` is `top` or below it.

    >>> is_within("a/b", "a"), is_within("ab", "a"), is_within("x", "")
    (True, False, True)
    """
    return not top or path == top or path.startswith(top + "/")


def rebase(path: str, old: str, new: str) -> str:
    """Move `path` from below `old` to below `new`.

    >>> rebase("a/b/c", "a/b", "x")
    'x/c'
    """
    return new + path[len(old):] if path != old else new


def is_valid_name(name: str) -> bool:
    """Whether a key segment can be shown as a directory entry.

    >>> [is_valid_name(n) for n in ("a", "", ".", "..", "x" * 256, "a\\x00b")]
    [True, False, False, False, False, False]
    """
    if name in ("", ".", "..") or "\0" in name or "/" in name:
        return False
    try:
        return len(name.encode("utf-8")) <= NAME_MAX
    except UnicodeEncodeError:  # lone surrogates from undecodable keys
        return False


@dataclass(frozen=True, slots=True)
class PosixMeta:
    """The POSIX attributes zonefs keeps in object metadata. `mode` includes the type bits;
    `rdev` is the device number of a character or block device (0 for anything else).

    Times are nanoseconds since the epoch. ctime changes with every change of the file
    (data, mode, owner, times, name); atime is what `utimensat` set (reads do not move it:
    the mount is noatime).
    """

    mode: int
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    rdev: int = 0

    @classmethod
    def at(cls, mode: int, uid: int, gid: int, time_ns: int, rdev: int = 0) -> PosixMeta:
        """Attributes whose three times are `time_ns` (what nothing says otherwise of)."""
        return cls(mode, uid, gid, time_ns, time_ns, time_ns, rdev)

    @classmethod
    def new(cls, mode: int, uid: int, gid: int, rdev: int = 0) -> PosixMeta:
        """The attributes of a file created now: all three times are now."""
        return cls.at(mode, uid, gid, time.time_ns(), rdev)

    def modified_now(self) -> PosixMeta:
        """The same attributes with mtime and ctime set to now: the file's data changed."""
        now = time.time_ns()
        return replace(self, mtime_ns=now, ctime_ns=now)

    def changed_now(self) -> PosixMeta:
        """The same attributes with ctime set to now: its mode, owner, times or name changed."""
        return replace(self, ctime_ns=time.time_ns())

    def set_to(self, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
               mtime_ns: int | None = None, atime_ns: int | None = None,
               ctime_ns: int | None = None) -> PosixMeta:
        """chmod, chown or utimensat: the attributes given (of `mode`, its permission bits)
        change, and ctime is now unless given."""
        return PosixMeta(
            (self.mode & ~0o7777) | (mode & 0o7777) if mode is not None else self.mode,
            self.uid if uid is None else uid,
            self.gid if gid is None else gid,
            self.mtime_ns if mtime_ns is None else mtime_ns,
            time.time_ns() if ctime_ns is None else ctime_ns,
            self.atime_ns if atime_ns is None else atime_ns,
            self.rdev,
        )

    def same_but_ctime(self, other: PosixMeta) -> bool:
        """Whether `other` differs from these attributes in nothing but ctime."""
        return replace(other, ctime_ns=self.ctime_ns) == self


def _format_ns(ns: int) -> str:
    sec, nsec = divmod(ns, 1_000_000_000)
    return f"{sec}.{nsec:09d}"


def encode_meta(meta: PosixMeta, **extra: str) -> dict[str, str]:
    """Object metadata (names without `x-amz-meta-`) in the s3fs-compatible form: decimal
    mode, uid and gid, the three times in decimal seconds, and `rdev` for a device only.

    >>> encode_meta(PosixMeta(0o100644, 0, 0, 1_500_000_000_000_000_001, 1_500_000_000, 7))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'mode': '33188', 'uid': '0', 'gid': '0', 'mtime': '1500000000.000000001',
     'ctime': '1.500000000', 'atime': '0.000000007'}
    """
    out = {
        "mode": str(meta.mode),
        "uid": str(meta.uid),
        "gid": str(meta.gid),
        "mtime": _format_ns(meta.mtime_ns),
        "ctime": _format_ns(meta.ctime_ns),
        "atime": _format_ns(meta.atime_ns),
    }
    if stat.S_ISCHR(meta.mode) or stat.S_ISBLK(meta.mode):
        out["rdev"] = str(meta.rdev)
    out.update(extra)
    return out


#: The range of a time in nanoseconds the kernel is told (a signed 64-bit count): a header
#: beyond it, which any writer of the bucket could set, is taken as absent.
_NS_RANGE = range(-(1 << 63), 1 << 63)
#: A device number FUSE carries (32 bits): a larger `rdev` header is taken as 0.
_RDEV_MAX = (1 << 32) - 1


def _parse_time_ns(text: str) -> int | None:
    sec, dot, frac = text.strip().partition(".")
    if not sec.lstrip("-").isdigit() or (dot and not frac.isdigit()) or len(sec) > 20:
        return None
    # rclone writes a float with fewer or more digits; keep nanoseconds exactly where given.
    ns = int(sec) * 1_000_000_000 + int((frac + "000000000")[:9] if dot else 0)
    return ns if ns in _NS_RANGE else None


def _parse_mode(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit():
        return None
    # s3fs writes decimal; some tools write leading-0 octal.
    return int(text, 8) if text.startswith("0") and len(text) > 1 else int(text)


def decode_meta(
    metadata: Mapping[str, str] | None,
    *,
    is_dir: bool,
    default_mode: int,
    default_uid: int,
    default_gid: int,
    fallback_mtime: float,
) -> PosixMeta:
    """POSIX attributes from object metadata, with mount defaults where it says nothing.

    >>> decode_meta({"mode": "0100600", "mtime": "12.5"}, is_dir=False, default_mode=0o644,
    ...             default_uid=1, default_gid=2, fallback_mtime=0.0)
    ... # doctest: +NORMALIZE_WHITESPACE
    PosixMeta(mode=33152, uid=1, gid=2, mtime_ns=12500000000, ctime_ns=12500000000,
              atime_ns=12500000000, rdev=0)
    """
    md = metadata or {}
    want_type = stat.S_IFDIR if is_dir else stat.S_IFREG
    mode = _parse_mode(md.get("mode", "")) if "mode" in md else None
    if mode is None:
        mode = want_type | (default_mode & 0o7777)
    elif stat.S_IFMT(mode) == 0:
        mode |= want_type
    elif is_dir and not stat.S_ISDIR(mode):
        mode = stat.S_IFDIR | (mode & 0o7777)
    elif not is_dir and stat.S_ISDIR(mode):
        mode = stat.S_IFREG | (mode & 0o7777)
    uid = md.get("uid", "")
    gid = md.get("gid", "")
    mtime_ns = _parse_time_ns(md["mtime"]) if "mtime" in md else None
    if mtime_ns is None:
        mtime_ns = int(fallback_mtime * 1_000_000_000)
    # An object another tool wrote without ctime or atime: both are its mtime.
    ctime_ns = _parse_time_ns(md["ctime"]) if "ctime" in md else None
    atime_ns = _parse_time_ns(md["atime"]) if "atime" in md else None
    rdev = md.get("rdev", "").strip()
    is_device = stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
    return PosixMeta(
        mode=mode,
        uid=int(uid) if uid.isdigit() else default_uid,
        gid=int(gid) if gid.isdigit() else default_gid,
        mtime_ns=mtime_ns,
        ctime_ns=mtime_ns if ctime_ns is None else ctime_ns,
        atime_ns=mtime_ns if atime_ns is None else atime_ns,
        rdev=int(rdev) if is_device and rdev.isdigit() and int(rdev) <= _RDEV_MAX else 0,
    )
