# SPDX-License-Identifier: Apache-2.0
"""`cardd serve`: the reader layer and the localhost API in one asyncio process.

Under systemd (``Type=notify``, see ``systemd/cardd.service``) it reports READY=1, STATUS= and
watchdog pings through :mod:`cardd.supervision`. SIGTERM/SIGINT stop it gracefully: STOPPING=1,
no new connections or requests, card operations in flight get up to :data:`DRAIN_SECONDS` to
finish (a burn that is writing completes and commits), then whatever still runs is cancelled
(the manager's cancel event; a burn cancelled before its commit leaves a pending number, the
ledger's crash-safe state, settled by the next burn on that card or `cardd ledger resolve`),
and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from cardd.config import Config
from cardd.events import EventBus
from cardd.readers.manager import ReaderManager

logger = logging.getLogger(__name__)

#: seconds a stopping daemon lets card operations in flight finish (the unit's TimeoutStopSec=
#: is larger: the HTTP shutdown and the reader threads need a few more seconds)
DRAIN_SECONDS = 10.0


def build_backends(config: Config | None = None) -> list:  # type: ignore[type-arg]
    """PC/SC always; with ``config``, the serial readers it configures (``[[serial.devices]]``)
    and the nfcpy readers (``[nfc] devices``).

    Commands other than ``serve`` pass no config: serial ports are opened exclusively, so only
    the daemon should hold them.
    """
    from cardd.readers.pcsc import PcscBackend

    backends: list = [PcscBackend()]  # type: ignore[type-arg]
    if config is not None and config.serial.devices:
        from cardd.readers.serial import SerialBackend

        backends.append(SerialBackend(config.serial.devices))
    if config is not None and config.nfc.devices:
        # nfcpy readers ([nfc] devices): the same rule, a USB reader has one owner. Without
        # devices nfcpy (and libusb) is never imported.
        from cardd.readers.nfc import NfcBackend

        backends.append(NfcBackend(config.nfc))
    return backends


async def serve(
    config: Config,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    from cardd.notify import Notifier
    from cardd.reload import LiveConfig, Reloader
    from cardd.rfid.station import RfidStation
    from cardd.rfid.taps import publish_taps
    from cardd.supervision import (
        ServiceStatus,
        backends_alive,
        drain_operations,
        install_test_hang_hook,
        ping_watchdog,
    )

    # -- configuration reload (cardd.reload, H8): every part reads the configuration through
    # a live view, so SIGHUP can swap in what may change without a restart.
    live = LiveConfig(config)
    config = live.view
    # --

    bus = EventBus()
    backends = build_backends(config)
    manager = ReaderManager(backends, bus, config.readers)
    station = RfidStation(config)
    notifier = Notifier()
    status = ServiceStatus(manager, notifier)
    status.refresh()  # "starting, ..." while the readers are looked at
    await manager.start()
    # The API stack (aiohttp's web side, the MOICA and RFID handlers) is most of cardd's start-up
    # time: import it while the watcher thread is already asking pcscd for its readers.
    from cardd.api.app import create_app

    # Listen only once the reader layer has had its first look (or 2 s passed with pcscd down:
    # then cardd serves degraded and recovers when pcscd comes), so the first /v1/readers is
    # never an empty list of a machine that has readers.
    await manager.wait_until(lambda: all(v == "up" for v in manager.backend_states().values()), 2.0)
    taps = asyncio.create_task(publish_taps(manager, bus))
    kiosk = None
    if config.kiosk.enabled:  # `cardd kiosk`, or [kiosk] enabled = true (cardd.kiosk.loop)
        from cardd.kiosk.loop import KioskService

        kiosk = KioskService(config, manager, bus, station)
        await kiosk.start()
    app = create_app(config, manager, bus, station)
    # No access log: request lines can carry nothing secret today, but they add up on kiosks
    # that run for months; failures are logged where they are handled.
    # GuardedAppRunner: web.AppRunner plus a deadline for request headers (slowloris) and
    # JSON error answers with security headers for requests aiohttp cannot parse.
    from cardd.api.limits import GuardedAppRunner

    runner = GuardedAppRunner(app, read_timeout=config.api.read_timeout, access_log=None,
                              shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.api.host, config.api.port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        taps.cancel()
        if kiosk is not None:
            await kiosk.stop()
        await manager.stop()
        await runner.cleanup()
        from cardd.errors import ConfigError

        raise ConfigError(
            f"cannot listen on {config.api.host}:{config.api.port}: {e.strerror} "
            "(is another cardd running?)"
        ) from None
    url = f"http://{config.api.host}:{config.api.port}"
    logger.info("cardd listening on %s", url)
    if on_ready:
        on_ready(url)
    status.url = url
    supervisors = [status.follow(bus)]
    ready_text = status.text()
    notifier.ready(ready_text)
    status.mark_sent(ready_text)
    if notifier.watchdog_interval:
        supervisors.append(asyncio.create_task(
            ping_watchdog(notifier, notifier.watchdog_interval, lambda: backends_alive(backends))
        ))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    install_test_hang_hook(loop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    # -- SIGHUP: reload the configuration (cardd.reload); pid file for `cardd reload`
    from cardd.api.moica import MOICA_KEY

    reloader = Reloader(live, station=station, moica=app[MOICA_KEY], notifier=notifier,
                        on_status=status.refresh)
    status.add_part(reloader.status_part)
    reloader.install(loop)
    # --
    try:
        await stop.wait()
    finally:
        logger.info("cardd stopping")
        reloader.close()  # no reload while stopping; the pid file goes
        status.stopping = True
        notifier.stopping("stopping")
        for task in supervisors:
            task.cancel()
        # No new connections, and kept-alive ones take no new request; then the operations
        # already running get their bounded time before the HTTP shutdown cancels the rest.
        await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()
        still_busy = await drain_operations(manager, DRAIN_SECONDS)
        if still_busy:
            logger.warning("stopping: cancelling the operations on %s", ", ".join(still_busy))
        taps.cancel()
        if kiosk is not None:
            await kiosk.stop()  # the gate relay off, the kiosk store closed
        await runner.cleanup()
        await manager.stop()
        station.close()
        notifier.close()
