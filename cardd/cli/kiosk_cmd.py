# SPDX-License-Identifier: Apache-2.0
"""`cardd kiosk`: the daemon with the kiosk loop, and the kiosk's audit log and offline queue.

``cardd kiosk`` is ``cardd serve`` with ``[kiosk] enabled = true`` forced (a decision: one
daemon, one reader layer and one API either way; a kiosk PC's unit runs ``cardd kiosk``, a desk
PC that also watches a gate can set ``enabled`` in its configuration and keep ``cardd serve``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `cardd --help` must not import the configuration machinery
    from cardd.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "kiosk",
        help="run the daemon as an entrance kiosk (tap → decision → gate), or show its log",
        description="Without a subcommand: run the daemon with the kiosk loop (like `cardd "
        "serve` with [kiosk] enabled = true); the kiosk page is at http://127.0.0.1:PORT/kiosk.",
    )
    p.add_argument("--port", type=int, help="API port (default from the configuration: 7420)")
    ks = p.add_subparsers(dest="kiosk_command", metavar="SUBCOMMAND")
    q = ks.add_parser("log", help="the latest decisions from the kiosk's audit log (masked)")
    q.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q = ks.add_parser("queue", help="offline decisions waiting to be reported, and reported ones")
    q.add_argument("--json", action="store_true", help="machine-readable output")


def run(config: Config, args: argparse.Namespace) -> int:
    if args.kiosk_command == "log":
        return _log(config, args.n, args.json)
    if args.kiosk_command == "queue":
        return _queue(config, args.json)
    return _serve(config, args)


def _serve(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    from cardd import __version__
    from cardd.daemon import serve
    from cardd.log import setup_logging

    config = dataclasses.replace(config, kiosk=dataclasses.replace(config.kiosk, enabled=True))
    if args.port is not None:
        config = dataclasses.replace(config, api=dataclasses.replace(config.api, port=args.port))
    setup_logging(
        "debug" if args.verbose > 1 else config.log.level,
        traffic=args.traffic or config.log.traffic,
    )

    def ready(url: str) -> None:
        page = f"{url}/kiosk" if config.kiosk.page else "off"
        print(
            f"cardd {__version__} kiosk serving on {url}, page {page} (Ctrl-C to stop)", flush=True
        )

    asyncio.run(serve(config, on_ready=ready))
    return 0


def _store(config: Config):  # type: ignore[no-untyped-def]
    from cardd.kiosk.offline import KioskStore

    return KioskStore(config.state_dir)


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _log(config: Config, n: int, as_json: bool) -> int:
    store = _store(config)
    try:
        rows = list(reversed(store.recent(max(1, n))))
    finally:
        store.close()
    for r in rows:
        if as_json:
            print(json.dumps(dataclasses.asdict(r), ensure_ascii=False))
        else:
            flag = " offline" if r.offline else ""
            print(
                f"{_when(r.at)}  {r.decision:<6} {r.reason:<22} {r.kind:<15} {r.masked}"
                f"{flag}{'  ' + r.reader if r.reader else ''}"
            )
    return 0


def _queue(config: Config, as_json: bool) -> int:
    store = _store(config)
    try:
        waiting = store.unreported(1000)
        reported = store.reported(20)
    finally:
        store.close()
    if as_json:
        print(
            json.dumps(
                {
                    "waiting": [
                        {
                            "at": e.at,
                            "masked": e.masked,
                            "kind": e.kind,
                            "decision": e.decision,
                            "reason": e.reason,
                        }
                        for e in waiting
                    ],
                    "reported": [{k: v for k, v in r.items() if k != "patron"} for r in reported],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    print(f"{len(waiting)} offline decision(s) waiting to be reported")
    for e in waiting:
        print(f"  {_when(e.at)}  {e.decision:<6} {e.reason:<18} {e.masked}")
    if reported:
        print("latest reported:")
        for r in reported:
            print(
                f"  {_when(r['at'])}  {r['decision']:<6} {r['reason']:<18} {r['masked']}"
                f"  → online: {r['verdict']} ({r['verdictReason']})"
            )
    return 0
