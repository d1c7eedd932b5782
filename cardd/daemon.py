# SPDX-License-Identifier: Apache-2.0
"""`cardd serve`: the reader layer and the localhost API in one asyncio process."""

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


def build_backends() -> list:  # type: ignore[type-arg]
    from cardd.readers.pcsc import PcscBackend

    return [PcscBackend()]


async def serve(
    config: Config,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    from cardd.api.app import create_app
    from cardd.rfid.station import RfidStation
    from cardd.rfid.taps import publish_taps

    bus = EventBus()
    manager = ReaderManager(build_backends(), bus, config.readers)
    station = RfidStation(config)
    await manager.start()
    # Listen only once the reader layer has had its first look (or 2 s passed with pcscd down:
    # then cardd serves degraded and recovers when pcscd comes), so the first /v1/readers is
    # never an empty list of a machine that has readers.
    await manager.wait_until(lambda: all(v == "up" for v in manager.backend_states().values()), 2.0)
    taps = asyncio.create_task(publish_taps(manager, bus))
    app = create_app(config, manager, bus, station)
    # No access log: request lines can carry nothing secret today, but they add up on kiosks
    # that run for months; failures are logged where they are handled.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.api.host, config.api.port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        taps.cancel()
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
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        logger.info("cardd stopping")
        taps.cancel()
        await runner.cleanup()
        await manager.stop()
        station.close()
