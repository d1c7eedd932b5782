# SPDX-License-Identifier: Apache-2.0
"""`cardd sip2 ...`: talk to the library system's SIP2 server the way the kiosk does.

For technicians setting up a gate: ``status`` logs in (93) and asks the server's status (99),
``patron ID`` looks a patron up (63 or 23) and shows what the kiosk would see. Settings come from
``[kiosk.sip2]`` in the configuration; options override them, so a server can be tried before
the configuration is written. ``test-server`` runs cardd's own test ACS (demo patrons) on
loopback, for trying a kiosk without a library system.

The SIP2 password is never an option (it would show in ``ps`` and shell history): it comes from
the configuration, ``--password-file``, or ``$CARDD_SIP2_PASSWORD``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardd.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from cardd.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sip2",
        help="check the library system's SIP2 server: login, status, a patron lookup",
        description="Talk to the SIP2 server as the kiosk does. Settings come from [kiosk.sip2]; "
        "options override them. The password comes from the configuration, --password-file or "
        "$CARDD_SIP2_PASSWORD, never from the command line.",
    )
    p.add_argument("--host", help="SIP2 server name or address")
    p.add_argument("--port", type=int, help="SIP2 server port (default 6001)")
    p.add_argument("--user", help="login user (93 CN)")
    p.add_argument("--password-file", type=Path, help="file holding the login password (93 CO)")
    p.add_argument("--institution", help="institution id (AO)")
    p.add_argument("--location", help="location code (93 CP)")
    p.add_argument("--request", choices=["63", "23"], help="patron request message (default 63)")
    p.add_argument("--encoding", help="character set, e.g. utf-8, cp850, cp950 (default utf-8)")
    p.add_argument("--timeout", type=float, help="seconds per request (default 3)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca-file", type=Path, help="CA certificates (PEM) for --tls")
    s = p.add_subparsers(dest="sip2_command", metavar="SIP2COMMAND", required=True)
    q = s.add_parser("status", help="log in and show the server's status (98)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = s.add_parser("patron", help="look a patron up as the kiosk would")
    q.add_argument("patron_id", metavar="ID", help="patron identifier (card number / barcode)")
    q.add_argument(
        "--end-session", action="store_true", help="send 35 (end patron session) afterwards"
    )
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q = s.add_parser("test-server", help="run cardd's test SIP2 server (demo patrons) on loopback")
    q.add_argument("--listen-port", type=int, default=6001, help="port to listen on (default 6001)")
    q.add_argument("--patrons", type=Path, help="patron table (JSON), default: three demo patrons")
    q.add_argument("--account", default="kiosk:secret", help="USER:PASSWORD it accepts (test only)")
    q.add_argument("--crlf", action="store_true", help="end replies with CRLF, like Koha")
    q.add_argument("--delay", type=float, default=0.0, help="seconds before every reply")


def run(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    if args.sip2_command == "test-server":
        return asyncio.run(_test_server(args))
    sip2 = resolve_config(config, args)
    if args.sip2_command == "status":
        return asyncio.run(_status(sip2, args.json))
    return asyncio.run(_patron(sip2, args.patron_id, args.json, args.end_session))


def resolve_config(config: Config, args: argparse.Namespace) -> Any:
    """[kiosk.sip2] with the command line's overrides applied."""
    from cardd.kiosk.sip2.config import Sip2Config

    base: Sip2Config | None = config.kiosk.sip2
    if base is None:
        if not args.host:
            where = config.source or "the configuration"
            raise UsageError(f"{where} has no [kiosk.sip2] table; name a server with --host")
        base = Sip2Config(host=args.host)
    changes: dict[str, Any] = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "user": args.user,
            "institution": args.institution,
            "location": args.location,
            "patron_request": args.request,
            "encoding": args.encoding,
            "timeout": args.timeout,
            "tls_ca_file": args.ca_file,
        }.items()
        if value is not None
    }
    if args.tls or args.ca_file:
        changes["tls"] = True
    if args.password_file:
        try:
            changes["password"] = args.password_file.read_text(encoding="utf-8").strip("\r\n")
        except OSError as e:
            raise ConfigError(f"--password-file {args.password_file}: {e.strerror or e}") from None
    elif os.environ.get("CARDD_SIP2_PASSWORD"):
        changes["password"] = os.environ["CARDD_SIP2_PASSWORD"]
    if args.encoding:
        import codecs

        try:
            codecs.lookup(args.encoding)
        except LookupError:
            raise UsageError(
                f"--encoding {args.encoding!r} is not known (e.g. utf-8, cp850, cp950)"
            ) from None
    if changes.get("port") is not None and not 1 <= changes["port"] <= 65535:
        raise UsageError(f"--port {changes['port']} is not 1–65535")
    if changes.get("timeout") is not None and not 0 < changes["timeout"] <= 120:
        raise UsageError("--timeout must be more than 0 and at most 120 seconds")
    # a one-shot command needs no keep-alive
    return dataclasses.replace(base, keepalive_interval=0, **changes)


async def _status(sip2: Any, as_json: bool) -> int:
    from cardd.kiosk.sip2.client import Sip2Client

    t0 = time.perf_counter()
    async with Sip2Client(sip2) as client:
        acs = client.acs_status
        ms = (time.perf_counter() - t0) * 1000
    assert acs is not None
    if as_json:
        print(
            json.dumps(
                {
                    "server": sip2.address,
                    "tls": sip2.tls,
                    "online": acs.online,
                    "offlineOk": acs.offline_ok,
                    "institution": acs.institution,
                    "libraryName": acs.library_name,
                    "protocolVersion": acs.protocol_version,
                    "timeoutSeconds": acs.timeout,
                    "retries": acs.retries,
                    "supportedMessages": acs.supported_messages,
                    "screenMessages": list(acs.screen_messages),
                    "loginAndStatusMs": round(ms, 1),
                },
                ensure_ascii=False,
            )
        )
        return 0

    def yes(value: bool | None) -> str:
        return {True: "yes", False: "no", None: "not said"}[value]

    print(
        f"SIP2 server {sip2.address}{' (TLS)' if sip2.tls else ''}: "
        f"{'online' if acs.online else 'says it is OFFLINE'} (login and status in {ms:.1f} ms)"
    )
    rows = [
        ("institution", acs.institution or "-"),
        ("library", acs.library_name or "-"),
        ("version", acs.protocol_version),
        ("timeout", f"{acs.timeout:g} s" if acs.timeout is not None else "not said"),
        ("retries", str(acs.retries) if acs.retries is not None else "not said"),
        ("offline ok", yes(acs.offline_ok)),
        (
            "supports",
            f"63 {yes(acs.supports('63'))}, 23 {yes(acs.supports('23'))}, "
            f"35 {yes(acs.supports('35'))}",
        ),
    ]
    rows += [("message", line) for line in acs.screen_messages]
    for name, value in rows:
        print(f"  {name:<12} {value}")
    if acs.supports(sip2.patron_request) is False:
        print(
            f"  warning: the server says it does not support {sip2.patron_request}; "
            f'set patron_request = "{"23" if sip2.patron_request == "63" else "63"}"'
        )
    return 0


async def _patron(sip2: Any, patron_id: str, as_json: bool, end_session: bool) -> int:
    from cardd.kiosk.sip2.client import Sip2Client

    async with Sip2Client(sip2) as client:
        t0 = time.perf_counter()
        status = await client.patron_status(patron_id)
        ms = (time.perf_counter() - t0) * 1000
        ended = await client.end_patron_session(patron_id) if end_session else None
    if as_json:
        print(
            json.dumps(
                {
                    "valid": status.valid,
                    "flags": sorted(status.flags),
                    "personalName": status.personal_name,
                    "screenMessage": status.screen_message,
                    "unknownShape": status.unknown_shape,
                    "sessionEnded": ended,
                    "ms": round(ms, 1),
                },
                ensure_ascii=False,
            )
        )
        return 0
    print(f"patron {patron_id} ({sip2.patron_request} in {ms:.1f} ms)")
    valid = {True: "yes", False: "NO", None: "not said (no BL field)"}[status.valid]
    print(f"  valid        {valid}{' (unknown-patron shape)' if status.unknown_shape else ''}")
    print(f"  name         {status.personal_name or '-'}")
    print(f"  flags        {', '.join(sorted(status.flags)) or '-'}")
    for line in status.screen_message.splitlines() or ["-"]:
        print(f"  screen       {line}")
    if ended is not None:
        print(f"  session end  {'yes' if ended else 'no'}")
    return 0


async def _test_server(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from cardd.sim.sip2_server import Sip2TestServer, demo_patrons, load_patrons

    user, sep, password = args.account.partition(":")
    if not sep or not user:
        raise UsageError("--account must be USER:PASSWORD")
    try:
        patrons = load_patrons(args.patrons) if args.patrons else demo_patrons()
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"--patrons {args.patrons}: {e}") from None
    server = Sip2TestServer(patrons, accounts={user: password}, port=args.listen_port)
    if args.crlf:
        server.faults.terminator = b"\r\n"
    if args.delay > 0:
        server.faults.delay, server.faults.delay_replies = args.delay, -1
    try:
        port = await server.start()
    except OSError as e:
        raise UsageError(
            f"cannot listen on 127.0.0.1:{args.listen_port}: {e.strerror or e}"
        ) from None
    print(
        f"cardd SIP2 test server on 127.0.0.1:{port}, {len(patrons)} patrons, account {user} "
        "(test material only; Ctrl-C to stop)",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0
