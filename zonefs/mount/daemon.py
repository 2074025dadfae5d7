"""Wiring of a running mount: one trio nursery that holds the FUSE loop, the write-back queue,
background fetches and the control server, plus signals, readiness and the final drain. The
daemon owns the mount's life (mounted, draining, unmounted); the control server
(`control_server`) answers requests and asks the daemon to drain or unmount.

Order of life:
1. `preflight` checks what can be checked without the network (mount point, /dev/fuse).
2. `serve` opens the remote and checks it within a deadline, opens the cache dir (0700), the
   journal and the blob store, re-queues files the journal still holds as dirty, mounts, and
   only then reports ready (to the parent `zonefs mount` and to systemd's NOTIFY_SOCKET).
3. On `zonefs umount`, SIGTERM or SIGINT, every pending upload is drained before the unmount.
   An unmount from outside (`fusermount3 -u`) drains after the fact; anything not uploaded stays
   in the journal for the next mount. A drain never waits for changes the store refused for
   good (`WriteBack.refused`): `zonefs sync` names them and fails, `zonefs umount` names them
   and leaves the mount up (unless --lazy), and a signal unmounts and keeps them journaled.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from zonefs.cache.blobs import BlobStore
from zonefs.cache.journal import Journal
from zonefs.common.config import MountOptions, ZoneConfig, format_size
from zonefs.common.errors import MountError
from zonefs.core.memory import (
    MIN_BUFFERS,
    MemoryBudget,
    buffer_budget,
    default_max_memory,
    least_max_memory,
    resident_bytes,
    tune_allocator,
)
from zonefs.core.vfs import Vfs
from zonefs.mount import control, metrics
from zonefs.mount.control_server import ControlServer
from zonefs.mount.fuse_ops import ZonefsOperations
from zonefs.mount.readahead import set_read_ahead
from zonefs.pending.leftovers import MultipartJournal
from zonefs.remote import open_remote
from zonefs.remote.probe import Capabilities, load_or_probe

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 8.0
STATUS_INTERVAL = 2.0  # seconds between STATUS= updates to systemd


def preflight(mountpoint: str, opts: MountOptions) -> None:
    """Fail early, with one clear line, on what would make the mount fail or hang."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: load the fuse module or install fuse3")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is not accessible to this user")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise MountError("fusermount3 is missing: install the fuse3 package")
    _detach_dead_mount(mountpoint)
    if not os.path.isdir(mountpoint):
        if os.path.exists(mountpoint):
            raise MountError(f"mount point {mountpoint} is not a directory")
        raise MountError(f"mount point {mountpoint} does not exist")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    try:
        if any(True for _ in os.scandir(mountpoint)):
            raise MountError(f"mount point {mountpoint} is not empty")
    except PermissionError as exc:
        raise MountError(f"mount point {mountpoint} is not readable") from exc
    if os.path.exists(control.socket_path(mountpoint)):
        try:
            control.request(mountpoint, "ping", timeout=2)
        except control.ControlError:
            pass
        else:
            raise MountError(f"a zonefs daemon already serves {mountpoint}")


def _detach_dead_mount(mountpoint: str) -> None:
    """A zonefs mount left at `mountpoint` by a daemon that died ("Transport endpoint is not
    connected") is detached, so that a restart (systemd's Restart=on-failure) can mount again.
    Its journal keeps what it had not uploaded; the new daemon uploads it."""
    path = os.path.abspath(mountpoint)
    if path not in control.zonefs_mounts():
        return
    try:
        control.request(path, "ping", timeout=2)
        return  # alive: preflight reports the mount as busy
    except control.ControlError:
        pass
    log.warning("%s: detaching the mount of a zonefs daemon that is gone", path)
    subprocess.run(["fusermount3", "-u", "-z", path], check=False, capture_output=True)


def _fuse_options(opts: MountOptions, zone: ZoneConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options.add(f"fsname={opts.fsname}")
    options.add("subtype=zonefs")
    if opts.allow_other:
        options.add("allow_other")
    if opts.read_only:
        options.add("ro")
    return options


def _lock_cache_dir(cache_dir: str) -> int:
    """Hold the cache dir for this process: two daemons on one journal would lose data."""
    fd = os.open(os.path.join(cache_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise MountError(f"the cache dir {cache_dir} is in use by another zonefs mount; "
                         "give this one its own with -o cache_dir=DIR") from None
    return fd


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state, when started by it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)


class Daemon:
    """One mounted zone. `serve()` runs until unmounted."""

    def __init__(self, zone: ZoneConfig, opts: MountOptions, mountpoint: str) -> None:
        self.zone, self.opts = zone, opts
        self.mountpoint = os.path.abspath(mountpoint)
        self.cache_dir = opts.cache_dir_for(zone)
        # Resolved before mounting: once mounted, a stat of the mount point waits for our loop.
        self.control_path = control.socket_path(self.mountpoint)
        self._stop = trio.Event()
        self._closed = trio.Event()
        self._answered = trio.Event()  # a `zonefs umount` got its final answer
        self._unmount_requested = False
        self._lazy = False  # `zonefs umount --lazy`: pending uploads wait for the next mount
        self.vfs: Vfs | None = None
        self.ops: ZonefsOperations
        self.capabilities = Capabilities()  # the store probe's answers, once known

    def _buffer_budget(self) -> MemoryBudget:
        """What buffers may hold under `-o max_memory`, given what the daemon takes now."""
        cap = self.opts.max_memory or default_max_memory()
        resident = resident_bytes()
        budget = buffer_budget(cap, resident)
        if budget < MIN_BUFFERS:
            raise MountError(
                f"max_memory={cap >> 20}M is too small: the daemon takes {resident >> 20} MiB "
                f"before any buffer, listings keep a quarter, and reads need "
                f"{MIN_BUFFERS >> 20} MiB (max_memory={least_max_memory(resident) >> 20}M "
                "at least)")
        log.debug("buffers may hold %d MiB (max_memory=%d MiB, %d MiB resident)",
                  budget >> 20, cap >> 20, resident >> 20)
        return MemoryBudget(budget, cap=cap)

    async def serve(self, on_ready: Callable[[], None], *, debug_fuse: bool = False) -> None:
        tune_allocator()  # before the first thread (remote.check runs in one)
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        os.chmod(self.cache_dir, 0o700)
        lock_fd = _lock_cache_dir(self.cache_dir)
        journal = Journal(os.path.join(self.cache_dir, "journal.sqlite"))
        blobs = BlobStore(self.cache_dir, capacity=self.opts.cache_size)
        metrics_server: Any = None
        try:
            # A file:///DIR zone is created when DIR is missing or empty. Every multipart
            # upload the remote starts is journaled first (see pending.leftovers).
            remote = open_remote(self.zone, max_requests=self.opts.max_requests, create=True,
                                 io_timeout=self.opts.io_timeout,
                                 lean_requests=self.opts.lean_requests,
                                 multipart_log=MultipartJournal(journal))
            try:
                with trio.fail_after(CHECK_TIMEOUT):
                    await remote.check()
            except trio.TooSlowError:
                raise MountError(
                    f"{self.zone.label} did not answer within {CHECK_TIMEOUT:.0f} s"
                ) from None
            # After the lock: one daemon at a time reads and writes capabilities.json. Bounded
            # (probe.PROBE_TIMEOUT plus its clean-up) and never fails: a slow or odd store
            # gets the safe answers.
            caps = self.capabilities = await load_or_probe(
                remote, self.cache_dir, overrides=dict(self.opts.store_overrides),
                reprobe=self.opts.reprobe, read_only=self.opts.read_only)
            log.info("%s", caps.summary())
            async with trio.open_nursery() as nursery:
                def spawn(fn: Callable[[], Awaitable[Any]]) -> None:
                    nursery.start_soon(fn)

                vfs = self.vfs = Vfs(remote, journal, blobs, self.opts, caps, spawn=spawn,
                                     memory=self._buffer_budget())
                ops = self.ops = ZonefsOperations(vfs, self.opts)
                if self.opts.changes and self.opts.at is None:
                    # Before anything is written or answered: every write is announced, and
                    # the mount starts from the records in the store.
                    vfs.changes.on_changed = ops.changed_elsewhere
                    await nursery.start(vfs.changes.run)
                await nursery.start(vfs.ledger.run_writeback)
                await nursery.start(remote.health.watch, remote.check_answers)
                nursery.start_soon(vfs.keep_journal_synced)
                # Renames a crash cut short finish first: they move pending rows to new names.
                if resumed := await vfs.recover():
                    log.info("%d rename(s) from an earlier mount finished", resumed)
                pending = vfs.requeue_dirty()
                if pending:
                    log.info("%d change(s) from an earlier mount are queued for upload", pending)
                if self.opts.metrics is not None:
                    host, port = self.opts.metrics
                    try:
                        metrics_server = metrics.serve(host, port, vfs.metrics)
                    except OSError as exc:
                        raise MountError(f"cannot serve metrics at {host}:{port}: "
                                         f"{exc.strerror or exc}") from None
                options = _fuse_options(self.opts, self.zone)
                if debug_fuse:
                    options.add("debug")
                try:
                    pyfuse3.init(ops, self.mountpoint, options)
                except RuntimeError as exc:
                    raise MountError(f"cannot mount at {self.mountpoint}: {exc}") from exc
                try:
                    await nursery.start(ControlServer(self).run)
                    nursery.start_soon(self._signals)
                    nursery.start_soon(self._tune_kernel, ops)
                    if os.environ.get("NOTIFY_SOCKET"):
                        nursery.start_soon(self._report_backlog)
                    log.info("mounted %s at %s", self.zone.label, self.mountpoint)
                    on_ready()
                    _sd_notify("READY=1\nSTATUS=mounted")
                    await pyfuse3.main()
                    _sd_notify("STOPPING=1")
                    if not self._lazy:
                        await self.drain("unmount", final=True)
                        await vfs.changes.close()
                finally:
                    with trio.CancelScope(shield=True):
                        await ops.stop_notifying()
                    pyfuse3.close(unmount=control.is_mounted(self.mountpoint))
                    self._closed.set()
                log.info("unmounted %s", self.mountpoint)
                if self._unmount_requested:
                    with trio.move_on_after(2):
                        await self._answered.wait()  # let `zonefs umount` read its answer
                nursery.cancel_scope.cancel()
        finally:
            if metrics_server is not None:
                # In a thread: a scrape in progress asks this (trio) thread for its snapshot.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(metrics_server.shutdown)
                metrics_server.server_close()
            # First: lazy commits made durable, and the staging files of uploads they cover
            # removed (which touches their blobs' stamps), before the stamps are saved.
            journal.sync()
            try:
                blobs.close()
            except OSError as exc:  # only costs a re-hash of cached blobs at the next mount
                log.warning("could not save the cache's blob stamps: %s", exc)
            journal.close()
            os.close(lock_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.control_path)

    async def drain(self, why: str, progress: Callable[[int, int], None] | None = None, *,
                     final: bool = False) -> int:
        """Upload everything that can be; `final` (the mount goes away) logs each change the
        store refused, which stays in the journal."""
        assert self.vfs is not None
        pending = self.vfs.ledger.queued_count()
        if pending:
            log.info("%s: uploading %d pending change(s)", why, pending)
        done = await self.vfs.ledger.drain(progress)
        refused = self.vfs.refused()
        if pending and not refused:
            log.info("%s: all uploads done", why)
        for r in refused if final else ():
            log.warning("%s: %r is not in the bucket: the store refused it (%s); its bytes "
                        "stay in the journal in %s for the next mount",
                        why, r["path"], r["answer"], self.cache_dir)
        return done

    async def _report_backlog(self) -> None:
        """Keep systemd's STATUS= line (`systemctl status`) saying what waits for upload."""
        last = ""
        while not self._closed.is_set():
            await trio.sleep(STATUS_INTERVAL)
            if self.vfs is None:
                continue
            status = self.vfs.status()
            wb = status["writeback"]
            refused = status["refused"]
            if status["pending"]:
                text = (f"{status['pending']} change(s), {format_size(status['dirty_bytes'])} "
                        f"waiting for upload; {wb.get('in_flight', 0)} uploading")
                if refused:
                    first = refused[0]
                    text += (f"; {len(refused)} refused by the store, kept in the cache "
                             f"({first['path']}: {first['answer']})")
                elif wb.get("last_error"):
                    text += f"; last error: {wb['last_error']}"
            else:
                text = "mounted; everything uploaded"
            if text != last:
                _sd_notify(f"STATUS={text}")
                last = text

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: draining uploads, then unmounting", signal.Signals(signum).name)
                assert self.vfs is not None
                _sd_notify(f"STOPPING=1\nSTATUS=uploading {self.vfs.pending_count} "
                           "pending change(s), then unmounting")
                # Refused changes are not waited for: the drain after the unmount logs them.
                await self.drain(signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async def _tune_kernel(self, ops: ZonefsOperations) -> None:
        """Once the kernel's FUSE_INIT is answered (and its limits applied), widen the mount's
        read-ahead window: the kernel would cap it again at INIT."""
        await ops.initialized.wait()
        set_read_ahead(self.mountpoint, self.opts.read_ahead)

    async def unmount(self, *, lazy: bool) -> None:
        """End the mount for `zonefs umount` and return once it is unmounted; `answered` follows
        once the client has its answer. `lazy`: no new upload starts (one in flight is cut off
        and retried), and pending uploads stay journaled for the next mount."""
        assert self.vfs is not None
        self._unmount_requested = True
        if lazy:
            self._lazy = True
            self.vfs.ledger.stop_uploads()
        pyfuse3.terminate()
        await self._closed.wait()

    def answered(self) -> None:
        """The `zonefs umount` that asked for the unmount has its answer (or is gone)."""
        self._answered.set()
