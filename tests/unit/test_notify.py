# SPDX-License-Identifier: Apache-2.0
"""cardd.notify: the sd_notify protocol over real unix datagram sockets (path and abstract)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from cardd.notify import Notifier, notify_address, watchdog_interval
from cardd.supervision import ping_watchdog


@pytest.fixture
def path_socket(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    s.bind(str(path))
    s.settimeout(2)
    yield str(path), s
    s.close()


@pytest.fixture
def abstract_socket():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"cardd-test-{uuid.uuid4().hex}"
    s.bind("\0" + name)
    s.settimeout(2)
    yield "@" + name, s
    s.close()


def test_ready_with_status_is_one_datagram_on_a_path_socket(path_socket):
    path, sock = path_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("listening on http://127.0.0.1:7420, 2 readers, pcscd up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening on http://127.0.0.1:7420, 2 readers, pcscd up"
    n.close()


def test_abstract_socket(abstract_socket):
    name, sock = abstract_socket
    n = Notifier({"NOTIFY_SOCKET": name})
    assert n.watchdog() and n.stopping("stopping") and n.status("x")
    assert [sock.recv(4096) for _ in range(3)] == [b"WATCHDOG=1", b"STOPPING=1\nSTATUS=stopping", b"STATUS=x"]


def test_a_status_cannot_inject_fields(path_socket):
    path, sock = path_socket
    Notifier({"NOTIFY_SOCKET": path}).status("reader\nREADY=1 evil\r\n")
    assert sock.recv(4096) == b"STATUS=reader READY=1 evil"


def test_without_notify_socket_everything_is_a_no_op():
    n = Notifier({})
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog() is False


@pytest.mark.parametrize("value", [None, "", "relative/path", "vsock:2:1234"])
def test_unsupported_addresses_are_ignored(value):
    assert notify_address(value) is None


def test_a_vanished_manager_is_logged_once_and_never_raises(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert [n.watchdog() for _ in range(5)] == [False] * 5
    assert len([r for r in caplog.records if "cannot notify" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "20000000"}, 20.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert watchdog_interval(env) == expected


async def test_pings_only_while_healthy(path_socket):
    path, sock = path_socket
    sock.setblocking(False)
    n = Notifier({"NOTIFY_SOCKET": path})
    healthy = False
    task = asyncio.create_task(ping_watchdog(n, 0.02, lambda: healthy))
    await asyncio.sleep(0.2)  # ~20 periods
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    healthy = True
    for _ in range(200):
        await asyncio.sleep(0.01)
        try:
            assert sock.recv(4096) == b"WATCHDOG=1"
            break
        except BlockingIOError:
            continue
    else:
        pytest.fail("no ping once healthy")
    task.cancel()
    n.close()
