# SPDX-License-Identifier: Apache-2.0
"""A private pcscd with the vpcd driver, for tests and benchmarks (simulation.md §5 option 2).

pcscd binds the compiled-in /run/pcscd/pcscd.comm, so a private instance runs in its own mount
namespace with a private directory bind-mounted over /run/pcscd; clients find it through
``PCSCLITE_CSOCK_NAME``. It needs root (CAP_SYS_ADMIN) for ``unshare -m``; the host's pcscd,
if any, is left alone. libpcsclite reads ``PCSCLITE_CSOCK_NAME`` once per process, so set it
(``environ()``) before the first PC/SC call.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
#: differs from Debian's 0x8C7B so a private pcscd never collides with the system one
DEFAULT_CHANNEL = 0x9C7B
READER_NAMES = ("Virtual PCD 00 00", "Virtual PCD 00 01")


class PcscdError(RuntimeError):
    pass


class PrivatePcscd:
    def __init__(self, workdir: Path, channel_id: int = DEFAULT_CHANNEL) -> None:
        self.workdir = Path(workdir)
        self.channel_id = channel_id
        self.run_dir = self.workdir / "run"
        self.conf_dir = self.workdir / "conf"
        self.log_path = self.workdir / "pcscd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "pcscd.comm"

    @property
    def vpcd_port(self) -> int:
        return self.channel_id

    def environ(self) -> dict[str, str]:
        return {"PCSCLITE_CSOCK_NAME": str(self.socket_path)}

    @staticmethod
    def usable() -> str | None:
        """None when a private pcscd can run here, else the reason it cannot."""
        if not VPCD_DRIVER.exists():
            return f"{VPCD_DRIVER} missing (apt-get install vsmartcard-vpcd)"
        if shutil.which("pcscd") is None and not Path("/usr/sbin/pcscd").exists():
            return "pcscd missing (apt-get install pcscd)"
        if os.geteuid() != 0:
            return "a private pcscd needs root (unshare -m); run the tests as root or with sudo"
        return None

    def start(self, timeout: float = 10.0) -> None:
        reason = self.usable()
        if reason:
            raise PcscdError(reason)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        Path("/run/pcscd").mkdir(parents=True, exist_ok=True)  # the bind-mount target
        (self.conf_dir / "vpcd").write_text(
            'FRIENDLYNAME "Virtual PCD"\n'
            f"DEVICENAME   /dev/null:0x{self.channel_id:04X}\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            f"CHANNELID    0x{self.channel_id:04X}\n"
        )
        for stale in (self.socket_path, self.run_dir / "pcscd.pid"):
            stale.unlink(missing_ok=True)
        pcscd = shutil.which("pcscd") or "/usr/sbin/pcscd"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                "unshare", "-m", "--propagation", "private", "sh", "-c",
                f"mount --bind '{self.run_dir}' /run/pcscd && exec '{pcscd}' -f -c '{self.conf_dir}'",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.proc.poll() is not None:
                raise PcscdError(f"pcscd exited at start; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise PcscdError(f"pcscd did not come up in {timeout} s; see {self.log_path}")
            time.sleep(0.02)

    def _accepting(self) -> bool:
        # The socket file appears before pcscd listens on it; only a connect proves it is up.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                return False
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to clients."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
