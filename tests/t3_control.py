"""The control server on a running core (t3): no error on a control connection ever ends the
daemon.

A `zonefs sync` or `umount` client can vanish at any moment (Ctrl-C, `timeout`, kill -9):
its request is then cancelled, and the handler returns, whatever the request was doing. The
real-mount side of this is `t5_outage::test_ctrl_c_on_a_control_command_leaves_the_mount`.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio
from vfs_harness import Env, OutageRemote, write_file

from zonefs.mount.control_server import ControlServer, _client_gone
from zonefs.mount.daemon import Daemon
from zonefs.remote import open_remote


def test_a_vanished_client_is_told_from_other_errors() -> None:
    gone = trio.BrokenResourceError("peer closed")
    assert _client_gone(gone)
    assert _client_gone(ExceptionGroup("request tasks", [gone, BrokenPipeError()]))
    assert _client_gone(BaseExceptionGroup("nested", [ExceptionGroup("inner", [gone])]))
    assert not _client_gone(ExceptionGroup("request tasks", [gone, ValueError("bug")]))
    assert not _client_gone(KeyError("cmd"))


@pytest.mark.parametrize("cmd", ["sync", "unmount", "status"])
async def test_a_client_that_vanishes_mid_request_ends_only_its_request(
        env: Env, tmp_path: Path, cmd: str) -> None:
    """The client sends its request and closes the connection while the daemon works on it
    (a drain that cannot end: the store is down; or an answer written to a closed socket).
    The handler returns without raising, and the core goes on: the pending file is still
    pending, and uploads once the store is back."""
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=0.05) as vfs:
        daemon = Daemon(env.zone, env.options(), str(tmp_path / "mnt"))
        daemon.vfs = vfs
        remote.down = True
        await write_file(vfs, "f", b"pending while the store is down")
        ours, client = socket.socketpair()  # the daemon's end, the `zonefs` command's end
        client.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        done = trio.Event()

        async def serve() -> None:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
            await ControlServer(daemon).handle_client(stream)  # must never raise
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await trio.sleep(0.3)  # the request is being worked on (or answered)
            client.shutdown(socket.SHUT_RDWR)
            client.close()
            with trio.fail_after(10):
                await done.wait()
        assert vfs.pending_count == 1
        remote.down = False
        with trio.fail_after(30):
            await vfs.ledger.writeback.drain()
        assert await env.store.read("f") == b"pending while the store is down"
