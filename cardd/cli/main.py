# SPDX-License-Identifier: Apache-2.0
"""The `cardd` command. The only place where errors become exit codes and messages for people.

Subcommands import their modules lazily so that `cardd --help` stays fast on slow kiosk PCs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cardd import __version__

#: exit status per error code; anything else that is a CardError exits 1
EXIT_CODES = {
    "usage_error": 2,
    "invalid_input": 2,
    "config_invalid": 3,
    "pcsc_unavailable": 4,
    "backend_unavailable": 4,
    "no_reader": 5,
    "no_card": 6,
    "card_removed": 7,
    "reader_busy": 8,
    "timeout": 9,
    "apdu_failed": 10,
}


def exit_code(error: Exception) -> int:
    """The exit status of an error: its own code's, else the nearest parent class's."""
    for cls in type(error).__mro__:
        code = getattr(cls, "code", None)
        if code in EXIT_CODES:
            return EXIT_CODES[code]
    return 1


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="configuration file (default: search the usual places)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardd",
        description="Card-reader service for libraries and schools: citizen certificate cards, "
        "EasyCard/iPass and student cards.",
    )
    parser.add_argument("--version", action="version", version=f"cardd {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("--traffic", action="store_true", help="log APDUs (secrets redacted); support sessions only")
    _add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="run the daemon: readers, events and the localhost API")
    p.add_argument("--port", type=int, help="API port (default from the configuration: 7420)")

    p = sub.add_parser("readers", help="list readers, cards, ATRs and card types")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("watch", help="show reader and card events live (like pcsc_scan)")
    p.add_argument("-t", "--time", type=float, metavar="SECS", help="stop after SECS seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser(
        "apdu",
        help="send APDUs to a card",
        description="Send APDUs (hex) to the card in a reader. APDU=SW asserts the status word "
        "(x is a wildcard nibble, e.g. 90xx); the command fails at the first mismatch.",
    )
    p.add_argument("apdus", nargs="+", metavar="APDU[=SW]")
    p.add_argument("-r", "--reader", help="reader name, part of a name, or its number from `cardd readers`")
    p.add_argument("--no-chain", action="store_true", help="do not follow 61xx / 6Cxx automatically")

    p = sub.add_parser("diag", help="check pcscd, readers, drivers, configuration and permissions")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--bundle", metavar="PATH",
                   help="write a redacted support archive (tar.gz) for a support ticket")

    p = sub.add_parser("reload", help="make the running daemon re-read its configuration (SIGHUP)")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")

    from cardd.cli.batch_cmd import add_parser as add_batch
    from cardd.cli.moica_cmd import add_parsers as add_moica
    from cardd.cli.rfid_cmd import add_parsers as add_rfid
    from cardd.cli.sim_cmd import add_parser as add_sim

    add_rfid(sub)
    add_moica(sub)
    add_batch(sub)
    add_sim(sub)
    from cardd.cli.kiosk_cmd import add_parser as add_kiosk

    add_kiosk(sub)
    from cardd.cli.token_cmd import add_parser as add_token

    add_token(sub)
    from cardd.cli.demo_cmd import add_parser as add_demo

    add_demo(sub)
    from cardd.cli.sip2_cmd import add_parser as add_sip2

    add_sip2(sub)
    return parser


def _setup_logging(args: argparse.Namespace, default: str = "warning") -> None:
    from cardd.log import setup_logging

    level = {0: default, 1: "info"}.get(args.verbose, "debug")
    setup_logging(level, traffic=args.traffic)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from cardd.errors import CardError

    try:
        return _dispatch(args)
    except CardError as e:
        _print_error(e)
        return exit_code(e)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `cardd watch | head`: the reader went away; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _print_error(e: Exception) -> None:
    from cardd.errors import CardError

    code = e.code if isinstance(e, CardError) else "error"
    print(f"cardd: error [{code}]: {e}", file=sys.stderr)
    hint = getattr(e, "hint", "")
    if hint:
        print(f"  next step: {hint}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    from cardd.config import load_config

    if args.command == "diag":
        # diag must report a broken configuration, not die on it
        from cardd.cli.diag import run_diag

        _setup_logging(args, "error")
        if args.bundle:
            from cardd.cli.bundle import write_bundle

            return write_bundle(args.config, args.bundle)
        return run_diag(args.config, as_json=args.json)

    if args.command == "reload":
        # a broken file is what a reload may be asked to report: it must not stop us asking
        from cardd.cli.reload_cmd import run as run_reload

        return run_reload(args.config, args)

    config = load_config(args.config)
    if args.command == "serve":
        import asyncio
        import dataclasses

        from cardd.daemon import serve

        if args.port is not None:
            config = dataclasses.replace(config, api=dataclasses.replace(config.api, port=args.port))
        from cardd.log import setup_logging

        setup_logging("debug" if args.verbose > 1 else config.log.level,
                      traffic=args.traffic or config.log.traffic, fmt=config.log.format)

        def ready(url: str) -> None:
            print(f"cardd {__version__} serving on {url} (Ctrl-C to stop)", flush=True)

        asyncio.run(serve(config, on_ready=ready))
        return 0

    _setup_logging(args)
    if args.command == "readers":
        from cardd.cli.readers_cmd import cmd_readers

        return cmd_readers(config, as_json=args.json)
    if args.command == "watch":
        from cardd.cli.readers_cmd import cmd_watch

        return cmd_watch(config, seconds=args.time, as_json=args.json)
    if args.command == "apdu":
        from cardd.cli.readers_cmd import cmd_apdu

        return cmd_apdu(config, args.apdus, reader=args.reader, chain=not args.no_chain)
    if args.command in ("rfid", "card", "ledger"):
        from cardd.cli import rfid_cmd

        handler = {"rfid": rfid_cmd.cmd_uid, "card": rfid_cmd.cmd_card, "ledger": rfid_cmd.cmd_ledger}
        return handler[args.command](config, args)
    if args.command in ("moica", "trust"):
        from cardd.cli.moica_cmd import run as run_moica

        return run_moica(config, args)
    if args.command == "batch":
        from cardd.cli.batch_cmd import run

        return run(config, args)
    if args.command == "sim":
        from cardd.cli.sim_cmd import run as run_sim

        return run_sim(config, args)
    if args.command == "kiosk":
        from cardd.cli.kiosk_cmd import run as run_kiosk

        return run_kiosk(config, args)
    if args.command == "token":
        from cardd.cli.token_cmd import run as run_token

        return run_token(config, args)
    if args.command == "demo-site":
        from cardd.cli.demo_cmd import run as run_demo

        return run_demo(config, args)
    if args.command == "sip2":
        from cardd.cli.sip2_cmd import run as run_sip2

        return run_sip2(config, args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
