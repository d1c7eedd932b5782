# SPDX-License-Identifier: Apache-2.0
"""sd_notify(3) without a dependency: READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

systemd hands a ``Type=notify`` service the address of a datagram socket in ``$NOTIFY_SOCKET``
(a path, or ``@name`` for an abstract socket) and, with ``WatchdogSec=``, the watchdog interval
in ``$WATCHDOG_USEC`` (plus ``$WATCHDOG_PID``, the process the interval is meant for). The
protocol is one datagram of ``KEY=value`` lines per notification; that is all there is to it, so
cardd speaks it itself rather than pulling in ``systemd-python`` (a C build) or ``sdnotify``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so ``cardd serve`` in a terminal
behaves as before. A notification that cannot be sent is logged once and otherwise ignored: the
service manager's bookkeeping must never take the card daemon down. Sends never block: they are
made from the asyncio loop, and a full socket queue drops the datagram (systemd reads them
promptly; a lost STATUS is replaced by the next one, a lost ping by the next ping).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address in ``$NOTIFY_SOCKET``: a path, or ``\\0name`` for ``@name``.

    None when unset, empty, or a kind cardd does not speak (``vsock:``, systemd ≥ 253 for VMs):
    relative paths are refused too, as sd_notify does.
    """
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL byte instead of a file; the name is not
        # NUL-terminated, so its length is exactly the rest of the string.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds when the watchdog is meant for this process, else None.

    Follows sd_watchdog_enabled(3): ``$WATCHDOG_PID``, if set, must be our pid (the variables are
    inherited by children, which must not ping on their parent's behalf); a missing, zero or
    malformed interval means no watchdog.
    """
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    wpid = environ.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return value / 1_000_000


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value field: a status text must not smuggle one in.
    return " ".join(text.split())


class Notifier:
    """Notifications to the service manager; a no-op when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = notify_address(env.get("NOTIFY_SOCKET"))
        #: seconds between two watchdog deadlines (ping at half of it), or None
        self.watchdog_interval = watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields as one datagram. True when it left this process."""
        if self.address is None:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, socket.MSG_DONTWAIT, self.address)
        except OSError as e:
            if not self._failed:  # once: a gone manager must not flood the log every ping
                logger.warning("cannot notify the service manager (%s): %s", self.address, e)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1"]
        if status:
            fields.append("STATUS=" + _one_line(status))
        return self.send(*fields)

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        fields = ["STOPPING=1"]
        if status:
            fields.append("STATUS=" + _one_line(status))
        return self.send(*fields)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
