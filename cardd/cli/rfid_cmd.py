# SPDX-License-Identifier: Apache-2.0
"""`cardd rfid uid`, `cardd card ...` and `cardd ledger ...`: the technician's student-card tools.

Card commands run their own reader manager in this process (the same code the daemon uses);
they do not need `cardd serve`.
"""

from __future__ import annotations

# Only light imports at module level: `cardd --help` builds these parsers, and asyncio, the
# reader manager and the configuration cost ~100 ms to import (bench/RESULTS.md).
import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from cardd.config import Config
    from cardd.readers.manager import ReaderManager

T = TypeVar("T")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("rfid", help="contactless cards: UIDs (chip numbers)")
    s = p.add_subparsers(dest="rfid_command", metavar="RFIDCOMMAND", required=True)
    q = s.add_parser("uid", help="the UID of the card on the reader, or of the next tap, in every form")
    q.add_argument("-r", "--reader")
    q.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a tap (default 30)")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("card", help="student cards: read, burn, report lost, personalize")
    s = p.add_subparsers(dest="card_command", metavar="CARDCOMMAND", required=True)
    q = s.add_parser("read", help="the library number on the card and its ledger state")
    q.add_argument("-r", "--reader")
    q.add_argument("--json", action="store_true")
    q = s.add_parser("burn", help="burn the next library number for an ID into the card")
    q.add_argument("--id", required=True, dest="id_number", help="national ID or resident certificate number")
    q.add_argument("--reissue", action="store_true", help="replace the ID's working card (next suffix)")
    q.add_argument("--confirm-overwrite", action="store_true", help="the card carries another person's number: overwrite it")
    q.add_argument("-r", "--reader")
    q.add_argument("--operator", default=None, help="name in the audit log (default: login name)")
    q.add_argument("--json", action="store_true")
    q = s.add_parser("report-lost", help="mark a library number lost (its card stops working)")
    q.add_argument("number", help="the 12-character library number")
    q.add_argument("--operator", default=None)
    q = s.add_parser("personalize", help="give a blank card's record sector the configured keys")
    q.add_argument("-r", "--reader")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = sub.add_parser("ledger", help="the issuance ledger: show, history, export, resolve")
    s = p.add_subparsers(dest="ledger_command", metavar="LEDGERCOMMAND", required=True)
    q = s.add_parser("show", help="the numbers of an ID, or one number")
    q.add_argument("key", help="ID number (10 characters) or library number (12)")
    q.add_argument("--json", action="store_true")
    q = s.add_parser("history", help="the audit log of an ID or number")
    q.add_argument("key")
    q.add_argument("--json", action="store_true")
    q = s.add_parser("export", help="every number, for the library system (CSV or JSON)")
    q.add_argument("--format", choices=["csv", "json"], default="csv")
    q.add_argument("-o", "--output", help="file to write (default: standard output)")
    q = s.add_parser("resolve", help="finish or void numbers left pending by an interrupted burn")
    q.add_argument("-r", "--reader")
    q.add_argument("--void-missing", action="store_true",
                   help="void pending numbers whose card is not on a reader (the cards are gone)")
    q.add_argument("--operator", default=None)


def _operator(name: str | None) -> str:
    import getpass

    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


async def _with_manager(config: Config, fn: Callable[[ReaderManager], Awaitable[T]]) -> T:
    import asyncio

    from cardd.daemon import build_backends
    from cardd.events import EventBus
    from cardd.readers.manager import ReaderManager

    manager = ReaderManager(build_backends(), EventBus(), config.readers)
    await manager.start()
    try:
        # The watcher reports the readers and cards it finds at start; give it that moment.
        await manager.wait_until(lambda: bool(manager.readers()) and manager.backend_states().get("pcsc") == "up", 2.0)
        await asyncio.sleep(0.05)
        return await fn(manager)
    finally:
        await manager.stop()


def _print_json(data: Any) -> None:
    import json

    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


# -- rfid uid ------------------------------------------------------------------------------


def cmd_uid(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    from cardd.errors import NoCard, OperationTimeout
    from cardd.readers.types import ReaderKind
    from cardd.rfid.taps import read_uid
    from cardd.rfid.uid import is_random_uid, uid_forms

    async def go(manager: ReaderManager) -> tuple[str, bytes]:
        try:
            reader = manager.pick_reader(args.reader, kind=ReaderKind.CONTACTLESS)
        except NoCard:
            print("Tap a card...", file=sys.stderr, flush=True)
            ok = await manager.wait_until(
                lambda: any(r.card_present and r.kind is not ReaderKind.CONTACT
                            and (args.reader in (None, r.name)) for r in manager.readers()),
                args.timeout,
            )
            if not ok:
                raise OperationTimeout(f"no card was tapped within {args.timeout:g} s") from None
            reader = manager.pick_reader(args.reader, kind=ReaderKind.CONTACTLESS)
        return reader, await manager.run(reader, read_uid, name="rfid.uid")

    reader, uid = asyncio.run(_with_manager(config, go))
    forms = uid_forms(uid).to_dict()
    if args.json:
        _print_json({"reader": reader, "uid": forms, "randomUid": is_random_uid(uid)})
    else:
        print(f"reader       {reader}")
        for key, value in forms.items():
            print(f"{key:<12} {value}")
        if is_random_uid(uid):
            print("note         a random UID (08...): it changes at every tap and cannot be bound")
    return 0


# -- card ----------------------------------------------------------------------------------


def cmd_card(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    from cardd.errors import InvalidInput
    from cardd.readers.types import ReaderKind
    from cardd.rfid.idnumber import mask_id
    from cardd.rfid.station import RfidStation
    from cardd.rfid.uid import uid_forms

    station = RfidStation(config)
    try:
        if args.card_command == "report-lost":
            record = station.cards.report_lost(args.number.strip().upper(), operator=_operator(args.operator))
            print(f"{mask_id(record.number)} is now {record.state.value}")
            return 0
        cards = station.cards

        async def go(manager: ReaderManager) -> Any:
            reader = manager.pick_reader(args.reader, kind=ReaderKind.CONTACTLESS)
            if args.card_command == "read":
                return await manager.run(reader, lambda c, e: cards.read(c, reader=reader), name="card.read")
            if args.card_command == "burn":
                return await manager.run(
                    reader,
                    lambda c, e: cards.burn(c, args.id_number, reissue=args.reissue,
                                            operator=_operator(args.operator),
                                            confirm_overwrite=args.confirm_overwrite,
                                            reader=reader, cancel=e),
                    name="card.burn",
                )
            if args.card_command == "personalize":
                if not args.yes and not _confirm(f"Change the keys of sector {cards.keys.sector} on the card in {reader}?"):
                    raise InvalidInput("not confirmed")
                return await manager.run(reader, lambda c, e: cards.personalize(c, reader=reader), name="card.personalize")
            raise AssertionError(args.card_command)

        result = asyncio.run(_with_manager(config, go))
    finally:
        station.close()

    if args.card_command == "personalize":
        print(f"card {result.hex().upper()}: sector {cards.keys.sector} personalized")
    elif args.card_command == "read":
        number = result.record.number
        data = {
            "uid": uid_forms(result.uid).to_dict(),
            "record": result.record.state.value,
            "reason": result.record.reason,
            "libraryNumber": mask_id(str(number)) if number else None,
            "ledgerState": result.ledger.state.value if result.ledger else None,
            "issuedAt": result.ledger.issued_at if result.ledger else None,
        }
        if args.json:
            _print_json(data)
        else:
            for key, value in data.items():
                if key != "uid":
                    print(f"{key:<14} {value if value is not None else '-'}")
            print(f"{'uid':<14} {data['uid']['hex']} (chip number {data['uid']['decLE']})")
    else:
        data = {"status": result.status, "libraryNumber": mask_id(result.number), "suffix": result.suffix,
                "superseded": mask_id(result.superseded) if result.superseded else None,
                "uid": result.uid.hex().upper(), "apdus": result.apdus}
        if args.json:
            _print_json(data)
        else:
            msg = {"burned": "burned", "resumed": "burned (an interrupted burn completed)",
                   "already_done": "already carries this number; nothing written"}[result.status]
            print(f"{data['libraryNumber']}: {msg} (card {data['uid']})")
            if data["superseded"]:
                print(f"  the old card {data['superseded']} no longer works as a library card")
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# -- ledger --------------------------------------------------------------------------------


def _record_dict(r: Any) -> dict[str, Any]:
    return {"libraryNumber": r.number, "idNumber": r.id_number, "suffix": r.suffix, "state": r.state.value,
            "uid": r.uid, "issuedAt": r.issued_at.isoformat() if r.issued_at else None,
            "updatedAt": r.updated_at.isoformat(), "station": r.station, "supersedes": r.supersedes}


def cmd_ledger(config: Config, args: argparse.Namespace) -> int:
    import csv
    import json

    from cardd.rfid.idnumber import mask_id
    from cardd.rfid.station import RfidStation

    station = RfidStation(config)
    ledger = station.ledger
    try:
        if args.ledger_command == "show":
            key = args.key.strip().upper()
            records = ([r] if (r := ledger.state(key)) else []) if len(key) == 12 else ledger.numbers_for(key)
            if args.json:
                _print_json([_record_dict(r) for r in records])
            elif not records:
                print("no numbers in the ledger")
            for r in records if not args.json else []:
                print(f"{r.number}  {r.state.value:<10}  card {r.uid or '-':<14}  issued {r.issued_at or '-'}")
            return 0
        if args.ledger_command == "history":
            entries = ledger.history(args.key.strip().upper())
            if args.json:
                _print_json([{"at": e.at.isoformat(), "station": e.station, "operator": e.operator,
                              "libraryNumber": e.number, "from": e.from_state.value if e.from_state else None,
                              "to": e.to_state.value, "uid": e.uid, "detail": e.detail} for e in entries])
            for e in entries if not args.json else []:
                frm = e.from_state.value if e.from_state else "-"
                print(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.number}  {frm:>10} -> {e.to_state.value:<10} "
                      f"{e.station}/{e.operator}  {e.uid or ''} {e.detail}")
            return 0
        if args.ledger_command == "export":
            out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
            try:
                rows = (_record_dict(r) for r in ledger.export())
                if args.format == "json":
                    json.dump(list(rows), out, ensure_ascii=False, indent=2)
                    out.write("\n")
                else:
                    fields = ["libraryNumber", "idNumber", "suffix", "state", "uid", "issuedAt",
                              "updatedAt", "station", "supersedes"]
                    writer = csv.DictWriter(out, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)
            finally:
                if out is not sys.stdout:
                    out.close()
            return 0
        if args.ledger_command == "resolve":
            return _resolve(config, station, args, mask_id)
    finally:
        station.close()
    raise AssertionError(args.ledger_command)


def _resolve(config: Config, station: Any, args: argparse.Namespace, mask_id: Callable[[str], str]) -> int:
    """Pending numbers: commit those whose card (on a reader) carries them, void the rest.

    A pending number whose card is on a reader is decided by the card: it carries the number
    intact → the write happened, commit; anything else → the write did not complete, void (the
    card can simply be burned again, with the next suffix). A pending number whose card is not
    here is only voided with --void-missing: the operator says that card is gone.
    """
    import asyncio

    from cardd.errors import CardError

    ledger = station.ledger
    pending = ledger.pending()
    if not pending:
        print("nothing pending")
        return 0
    operator = _operator(args.operator)
    cards = station.cards

    async def check(manager: ReaderManager) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for info in manager.readers():
            if not info.card_present or (args.reader and info.name != args.reader):
                continue
            name = info.name

            def read_card(conn: Any, _cancel: Any, name: str = name) -> Any:
                return cards.read(conn, reader=name)

            try:
                read = await manager.run(name, read_card, name="ledger.resolve")
            except CardError as e:  # a card we cannot read is just not the one we look for
                print(f"{name}: card not readable ({e.code})", file=sys.stderr)
                continue
            found[read.uid.hex().upper()] = read
        return found

    on_readers = asyncio.run(_with_manager(config, check))
    left = 0
    for p in pending:
        read = on_readers.get(p.uid or "")
        if read is not None:
            if read.record.number is not None and str(read.record.number) == p.number:
                ledger.commit(p.number, uid=p.uid, station=station.name, operator=operator)
                print(f"{mask_id(p.number)}: the card {p.uid} carries it: committed")
            else:
                ledger.void(p.number, station=station.name, operator=operator,
                            reason=f"resolve: card {p.uid} does not carry it ({read.record.state.value})")
                print(f"{mask_id(p.number)}: the card {p.uid} does not carry it: voided; burn the card again")
        elif args.void_missing:
            ledger.void(p.number, station=station.name, operator=operator, reason="resolve: card gone")
            print(f"{mask_id(p.number)}: card {p.uid or '(none bound)'} not here: voided")
        else:
            left += 1
            print(f"{mask_id(p.number)}: pending; put card {p.uid or '(none bound)'} on a reader, "
                  "or run with --void-missing if it is gone")
    return 1 if left else 0
