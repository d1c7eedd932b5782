# SPDX-License-Identifier: Apache-2.0
"""``GET /v1/metrics`` (Prometheus text 0.0.4) and ``GET /v1/diag/events`` (recent events).

Both are for local programs holding the token file (a Prometheus scraper through a node
exporter's textfile or a local agent, `cardd diag --bundle`), never for web pages: a request that
carries an ``Origin`` or browser fetch metadata is refused with 403 ``local_only`` even when the
origin is allowlisted, because reader activity and error rates are the station's business, not a
site's. The security middleware has already checked the token for callers without an Origin.

Scrape-time values (readers, subscribers, CRL ages, ledger counts) are collected here from the
app's parts; the ledger query is cached for :data:`LEDGER_CACHE_SECONDS` and runs in a thread,
so scraping every few seconds costs nothing and never blocks the loop or a card operation.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from typing import Any

from aiohttp import web

from cardd import metrics
from cardd.api.errors import json_error
from cardd.api.routedoc import Reply, describe
from cardd.api.security import CALLER_KEY

LEDGER_CACHE_SECONDS = 5.0
RECENT_EVENTS = 200
_BROWSER_HEADERS = ("Origin", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")

PARTS_KEY = web.AppKey("metrics_parts", dict)

describe(
    "metrics",
    "GET",
    "/v1/metrics",
    "Prometheus metrics (local programs with the token only)",
    description="Text exposition format 0.0.4. Refused (403 local_only) for any request with an "
    "Origin or browser fetch metadata, even from an allowlisted origin.",
    responses={200: Reply("The metrics", {"type": "string"}, content_type="text/plain")},
    errors={403: "local_only: web pages may not read metrics"},
    tags=("status",),
)
describe(
    "diag.events",
    "GET",
    "/v1/diag/events",
    "The last events (for `cardd diag --bundle`)",
    description=f"Up to {RECENT_EVENTS} recent events, redacted. Local programs with the token only.",
    responses={
        200: Reply(
            "Recent events",
            {
                "type": "object",
                "properties": {"events": {"type": "array", "items": {"type": "object"}}},
                "required": ["events"],
            },
        )
    },
    errors={403: "local_only: web pages may not read this"},
    tags=("status",),
)


def _local_only(request: web.Request) -> web.Response | None:
    caller = request.get(CALLER_KEY)
    if any(h in request.headers for h in _BROWSER_HEADERS) or caller is None or not caller.local:
        return json_error(
            403, "local_only", "This is for local programs with cardd's token, not for web pages."
        )
    return None


# -- collectors ------------------------------------------------------------------------------


def _collect_readers(app: web.Application) -> None:
    from cardd.api.app import MANAGER_KEY

    manager = app[MANAGER_KEY]
    readers: dict[tuple[str, ...], float] = {}
    present: dict[tuple[str, ...], float] = {}
    for r in manager.readers():
        key: tuple[str, ...] = (r.backend, r.kind.value)
        readers[key] = readers.get(key, 0) + 1
        present[key] = present.get(key, 0) + r.card_present
    metrics.READERS.set_all(dict(readers))
    metrics.CARDS_PRESENT.set_all(dict(present))
    metrics.BACKEND_UP.set_all(
        {(name,): float(state == "up") for name, state in manager.backend_states().items()}
    )


def _collect_crls(app: web.Application) -> None:
    from cardd.api.moica import MOICA_KEY

    service = app.get(MOICA_KEY)
    # Only a revocation checker that already exists: building one here would start CRL downloads
    # on a station that never verifies a citizen certificate.
    revocation = getattr(service, "_revocation", None)
    store = getattr(revocation, "crls", None)
    ages: dict[tuple[str, ...], float] = {}
    nexts: dict[tuple[str, ...], float] = {}
    if store is not None:
        now = dt.datetime.now(dt.UTC)
        for kid, idx in list(getattr(store, "_indexes", {}).items()):
            issuer = kid.hex()[:16]  # at most one series per configured CA (MOICA G2, G3)
            ages[(issuer,)] = (now - idx.info.this_update).total_seconds()
            nexts[(issuer,)] = (idx.info.next_update - now).total_seconds()
    metrics.CRL_AGE.set_all(ages)
    metrics.CRL_NEXT_UPDATE.set_all(nexts)


class _LedgerCounts:
    """Ledger counts by state, at most one query per :data:`LEDGER_CACHE_SECONDS`."""

    def __init__(self) -> None:
        self.at = -LEDGER_CACHE_SECONDS
        self._lock = asyncio.Lock()

    async def refresh(self, station: Any) -> None:
        if station is None or time.monotonic() - self.at < LEDGER_CACHE_SECONDS:
            return
        async with self._lock:
            if time.monotonic() - self.at < LEDGER_CACHE_SECONDS:
                return
            self.at = time.monotonic()
            # Only a ledger this station uses (opened already, or student cards configured):
            # a kiosk without one must not get a ledger file because it was scraped.
            if getattr(station, "_ledger", None) is None and station.config.rfid.key_file is None:
                return
            try:
                counts = await asyncio.to_thread(lambda: station.ledger.counts())
            except Exception as e:  # noqa: BLE001 - a scrape reports what it can
                import logging

                logging.getLogger(__name__).warning(
                    "ledger counts unavailable: %s", getattr(e, "code", type(e).__name__)
                )
                return
            metrics.LEDGER_NUMBERS.set_all({(state,): float(n) for state, n in counts.items()})


# -- routes -------------------------------------------------------------------------------


async def metrics_route(request: web.Request) -> web.Response:
    refused = _local_only(request)
    if refused is not None:
        return refused
    from cardd.api.rfid import STATION_KEY

    parts = request.app[PARTS_KEY]
    await parts["ledger"].refresh(request.app.get(STATION_KEY))
    body = metrics.REGISTRY.expose()
    return web.Response(body=body.encode(), headers={"Content-Type": metrics.CONTENT_TYPE})


async def recent_events(request: web.Request) -> web.Response:
    refused = _local_only(request)
    if refused is not None:
        return refused
    from cardd.log import redact_value

    events = list(request.app[PARTS_KEY]["recent"])
    return web.json_response({"events": [redact_value("event", e) for e in events]})


async def _keep_recent(app: web.Application) -> None:
    from cardd.api.app import BUS_KEY

    recent = app[PARTS_KEY]["recent"]
    with app[BUS_KEY].subscribe(maxsize=256) as sub:
        async for event in sub:
            recent.append(event.to_dict())


def add_routes(app: web.Application, route: Any) -> None:
    """Register the routes and the scrape-time collectors (removed when the app is cleaned up)."""
    app[PARTS_KEY] = {
        "ledger": _LedgerCounts(),
        "recent": collections.deque(maxlen=RECENT_EVENTS),
    }
    collectors = [
        metrics.REGISTRY.add_collector(lambda: _collect_readers(app)),
        metrics.REGISTRY.add_collector(lambda: _collect_crls(app)),
    ]
    # No scope: any scope would let an allowlisted page in; the handlers refuse every page.
    app.router.add_get("/v1/metrics", metrics_route, name=route("metrics"))
    app.router.add_get("/v1/diag/events", recent_events, name=route("diag.events"))

    async def start(app: web.Application) -> None:
        app[PARTS_KEY]["task"] = asyncio.create_task(_keep_recent(app), name="cardd-recent-events")

    async def cleanup(app: web.Application) -> None:
        for c in collectors:
            metrics.REGISTRY.remove_collector(c)
        task = app[PARTS_KEY].get("task")
        if task is not None:
            task.cancel()

    app.on_startup.append(start)
    app.on_cleanup.append(cleanup)
