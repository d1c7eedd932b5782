# SPDX-License-Identifier: Apache-2.0
"""Session fixtures: a private pcscd with the vpcd driver, and virtual readers for the tests.

libpcsclite reads PCSCLITE_CSOCK_NAME once per process, so the socket path is fixed here at
import time, before anything touches PC/SC.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardd.sim.pcscd import PrivatePcscd

_PCSC_DIR = Path(tempfile.mkdtemp(prefix="cardd-test-pcscd-"))


def _free_channel() -> int:
    """A vpcd channel whose two ports are free, so parallel sessions (and benchmarks) never share one."""
    import random
    import socket

    for _ in range(200):
        channel = random.randrange(0xA000, 0xEFFF)
        try:
            for port in (channel, channel + 1):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return channel
    raise RuntimeError("no free port pair for vpcd")


_PCSCD = PrivatePcscd(_PCSC_DIR, channel_id=_free_channel())
os.environ.update(_PCSCD.environ())
# The tests' own state: never the developer's token file or ledger.
os.environ.setdefault("CARDD_STATE_DIR", str(_PCSC_DIR / "state"))
os.environ.pop("CARDD_CONFIG", None)

from tests.helpers import READER0, READER1, wait_card  # noqa: E402


@pytest.fixture(scope="session")
def pcscd() -> Iterator[PrivatePcscd]:
    reason = PrivatePcscd.usable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"PC/SC tests cannot run: {reason}")
        pytest.skip(reason)
    if not _PCSCD.running:
        _PCSCD.start()
    yield _PCSCD
    _PCSCD.stop()


def pytest_sessionfinish(session, exitstatus):
    _PCSCD.stop()
    shutil.rmtree(_PCSC_DIR, ignore_errors=True)


@pytest.fixture
def vreaders(pcscd: PrivatePcscd):
    """The two vpcd slots; every card still inserted is removed after the test."""
    from cardd.sim.vpcd import VirtualReaders

    if not pcscd.running:  # a test before this one killed it and did not bring it back
        pcscd.start()
    readers = VirtualReaders(port=pcscd.vpcd_port)
    yield readers
    readers.remove_all()
    # Let pcscd notice the removals before the next test looks at reader state.
    for name in (READER0, READER1):
        try:
            wait_card(name, present=False, timeout=3)
        except Exception:
            pass
