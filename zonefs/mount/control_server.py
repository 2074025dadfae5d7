"""The control server of a running mount: it listens on the mount's control socket (0600, in
a 0700 directory, named by `control.socket_path`) and answers the `zonefs` command's requests
(`control` holds the protocol and the client): status, sync, unmount, info, find, versions,
restore, undelete.

Invariants:
- Nothing that happens on a control connection leaves `handle_client`: an error there would
  end `serve_listeners`, and with it the daemon and the mount.
- A client that goes away cancels only its own request: uploads go on, a drain it waited for
  is no longer waited for, and an unmount it asked for is not carried out.
- The server changes no state of the mount itself: it asks the daemon (`MountLife`) to drain
  or to unmount, and the core (`Vfs`) for everything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from zonefs.common.errors import ZonefsError

if TYPE_CHECKING:
    from zonefs.core.vfs import Vfs
    from zonefs.mount.fuse_ops import ZonefsOperations
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)


class MountLife(Protocol):
    """What the control server needs of the running mount (the daemon owns all of it)."""

    mountpoint: str
    cache_dir: str
    control_path: str
    vfs: Vfs | None
    ops: ZonefsOperations
    capabilities: Capabilities

    async def drain(self, why: str, progress: Callable[[int, int], None] | None = None, *,
                    final: bool = False) -> int:
        """Upload everything that can be; the number of changes uploaded."""
        ...

    async def unmount(self, *, lazy: bool) -> None:
        """Unmount (`lazy`: pending uploads stay journaled) and return once unmounted."""
        ...

    def answered(self) -> None:
        """The client that asked for the unmount has its answer (or is gone)."""
        ...


class ControlServer:
    """Answers the control requests of one mount."""

    def __init__(self, mount: MountLife) -> None:
        self.mount = mount

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        path = self.mount.control_path
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        await trio.serve_listeners(self.handle_client, [listener])

    async def handle_client(self, stream: trio.SocketStream) -> None:
        """Serve one control connection. Nothing that happens on it ever leaves this handler:
        an error here would end `serve_listeners` and with it the daemon and the mount.

        A client that goes away (Ctrl-C on `zonefs sync`, `timeout 12 zonefs umount`) cancels
        only its own request: uploads go on, a drain it waited for is simply no longer
        waited for, and an unmount it asked for is not carried out."""
        try:
            async with stream:
                await self._serve_request(stream)
        except Exception as exc:
            if _client_gone(exc):
                log.debug("control client went away: %s", exc)
            else:
                log.error("control request failed", exc_info=exc)

    async def _serve_request(self, stream: trio.SocketStream) -> None:
        buf = b""
        while b"\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buf += chunk
        line = buf.split(b"\n", 1)[0]  # one request per connection; the rest is ignored
        try:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            await _send(stream, {"ok": False, "error": f"bad request: {exc}"})
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_when_closed, stream, nursery.cancel_scope)
            try:
                await self._answer(stream, message.get("cmd"), message)
            except ZonefsError as exc:
                await _send(stream, {"ok": False, "error": str(exc)})
            except Exception as exc:
                if _client_gone(exc):
                    raise
                log.error("control request %r failed", message.get("cmd"), exc_info=exc)
                await _send(stream, {"ok": False, "error": f"internal error: {exc}"})
            nursery.cancel_scope.cancel()

    async def _answer(self, stream: trio.SocketStream, cmd: str | None,
                      message: dict[str, Any]) -> None:
        mount = self.mount
        vfs = mount.vfs
        assert vfs is not None
        if cmd == "info":
            info = await mount.ops.content.info(str(message.get("path", "")))
            await _send(stream, {"ok": True, "info": info})
        elif cmd == "find":
            path = await mount.ops.content.find_sha1(str(message.get("sha1", "")))
            await _send(stream, {"ok": True, "path": path})
        elif cmd == "ping":
            await _send(stream, {"ok": True})
        elif cmd == "versions":
            versions = await vfs.version_list(str(message.get("path", "")))
            await _send(stream, {"ok": True, "versions": versions})
        elif cmd == "restore":
            when = message.get("at")
            path = str(message.get("path", ""))
            result = await vfs.restore(path, version_id=message.get("version"),
                                            when=None if when is None else float(when))
            await mount.ops.changed_elsewhere([path], [])  # the kernel did not see it
            await _send(stream, {"ok": True, **result})
        elif cmd == "undelete":
            path = str(message.get("path", ""))
            how = await vfs.undelete(path)
            await mount.ops.changed_elsewhere([path], [])  # the kernel did not see it
            await _send(stream, {"ok": True, "how": how})
        elif cmd == "status":
            status = vfs.status()
            status.update(mountpoint=mount.mountpoint, cache_dir=mount.cache_dir, pid=os.getpid(),
                          capabilities=mount.capabilities.to_dict())
            await _send(stream, {"ok": True, "status": status})
        elif cmd == "unmount" and message.get("lazy"):
            pending = vfs.pending_count
            log.info("unmount without upload: %d pending change(s) stay in the journal", pending)
            await mount.unmount(lazy=True)
            try:
                await _send(stream, {"ok": True, "files": 0, "bytes": 0, "pending": pending})
            finally:
                mount.answered()
        elif cmd == "unmount" and vfs.open_for_write():
            # fusermount3 -u refuses a busy mount; detaching would lose what is being written.
            await _send(stream, {"ok": False, "error": f"{mount.mountpoint} is busy: "
                                 f"{vfs.open_for_write()} file(s) open for writing"})
        elif cmd in ("sync", "unmount"):
            before = vfs.uploaded_bytes
            started = time.monotonic()
            send_channel, receive_channel = trio.open_memory_channel[tuple[int, int]](64)

            def progress(done: int, total: int) -> None:
                with contextlib.suppress(trio.WouldBlock):
                    send_channel.send_nowait((done, total))

            async def forward() -> None:
                async for done, total in receive_channel:
                    assert vfs is not None
                    await _send(stream, {"progress": {
                        "done": done, "total": total,
                        "bytes": vfs.uploaded_bytes - before,
                        "pending_bytes": vfs.dirty_bytes,
                        "seconds": round(time.monotonic() - started, 3)}})

            retry_scope = trio.CancelScope()

            async def report_retries() -> None:
                # A drain waits for uploads that keep failing: say why, instead of going quiet.
                with retry_scope:
                    while True:
                        await trio.sleep(5)
                        failing = vfs.ledger.failing() if vfs else []
                        if failing:
                            text = failing[0] + (f" (+{len(failing) - 1} more)"
                                                 if len(failing) > 1 else "")
                            await _send(stream, {"progress": {"done": -1, "total": -1,
                                                              "error": text}})

            async with trio.open_nursery() as inner:
                inner.start_soon(forward)
                inner.start_soon(report_retries)
                files = await mount.drain(cmd, progress)
                await send_channel.aclose()
                retry_scope.cancel()
            answer = {"ok": True, "files": files, "bytes": vfs.uploaded_bytes - before,
                      "seconds": round(time.monotonic() - started, 3),
                      "refused": vfs.refused()}
            if cmd == "unmount" and answer["refused"]:
                # Unmounting would leave these changes in the cache alone, where nothing
                # shows them: the mount stays, so that they can be renamed or rewritten.
                answer.update(ok=False, error=(
                    f"{mount.mountpoint} stays mounted: {len(answer['refused'])} change(s) the "
                    f"store refused are only in the cache ({mount.cache_dir}); rename or "
                    "remove them, or unmount with --lazy to keep them journaled for the "
                    "next mount"))
                await _send(stream, answer)
                return
            if cmd == "unmount":
                await mount.unmount(lazy=False)
            try:
                await _send(stream, answer)
            finally:
                if cmd == "unmount":
                    mount.answered()
        else:
            await _send(stream, {"ok": False, "error": f"unknown command {cmd!r}"})


async def _send(stream: trio.SocketStream, message: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(message).encode() + b"\n")


async def _cancel_when_closed(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Cancel `scope` once the client closes its end: a client sends one request and then
    only reads, so an end of stream (or an error) means it is gone and no one waits for the
    answer any more."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


def _client_gone(exc: BaseException) -> bool:
    """Whether `exc` (possibly an ExceptionGroup from a request's own tasks) says only that
    the control client's connection is gone."""
    gone = (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError,
            ConnectionResetError)
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, gone)
