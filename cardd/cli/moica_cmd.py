# SPDX-License-Identifier: Apache-2.0
"""`cardd moica read|authenticate|verify-token|check` and `cardd trust fetch`."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cardd.config import Config


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("moica", help="citizen certificate cards (自然人憑證): read, sign, verify")
    s = p.add_subparsers(dest="moica_command", metavar="MOICACOMMAND", required=True)
    q = s.add_parser("read", help="card number, holder and certificates, without a PIN")
    q.add_argument("-r", "--reader")
    q.add_argument("--json", action="store_true")
    q = s.add_parser("authenticate", help="sign a relying party's challenge; prints the token")
    q.add_argument("--origin", required=True, help="the relying party's origin, https://host[:port]")
    q.add_argument("--nonce", required=True, help="the relying party's challenge (base64, 44-128 chars)")
    q.add_argument("-r", "--reader")
    q = s.add_parser("verify-token", help="verify a token as the relying party does")
    q.add_argument("token", help="file with the token JSON, or - for standard input")
    q.add_argument("--origin", required=True)
    q.add_argument("--nonce", required=True)
    q.add_argument("--id", dest="id_number", help="the ID number typed on the form (checks the last four)")
    q.add_argument("--json", action="store_true")
    q = s.add_parser("check", help="cardd as the relying party: own nonce, sign, verify, print the result")
    q.add_argument("-r", "--reader")
    q.add_argument("--id", dest="id_number")
    q.add_argument("--origin", default="https://cardd.local", help="origin bound into the signature")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("trust", help="GRCA/MOICA trust anchors")
    s = p.add_subparsers(dest="trust_command", metavar="TRUSTCOMMAND", required=True)
    q = s.add_parser("fetch", help="download the CA certificates; refuse any whose fingerprint differs")
    q.add_argument("--dir", help="where to store them (default: [moica] trust_dir or <state_dir>/trust)")
    s.add_parser("show", help="the anchors in the trust directory and their pins")


def _pin_source() -> Any:
    import getpass

    def source() -> bytearray:
        # getpass returns a str we cannot wipe; we keep it no longer than this call.
        return bytearray(getpass.getpass("PIN: ").encode("ascii", "replace"))

    return source


def _print(data: Any, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        for key, value in data.items():
            if key != "certificates":
                print(f"{key:<16} {value if value is not None else '-'}")


def run(config: Config, args: argparse.Namespace) -> int:
    if args.command == "trust":
        return _trust(config, args)
    import asyncio
    import json

    from cardd.cli.rfid_cmd import _with_manager
    from cardd.moica.service import MoicaService
    from cardd.readers.types import ReaderKind

    service = MoicaService(config)
    cmd = args.moica_command
    if cmd == "verify-token":
        if args.token == "-":  # noqa: S105 - "-" means standard input, not a password
            text = sys.stdin.read()
        else:
            with open(args.token, encoding="utf-8") as f:
                text = f.read()
        result = service.verify(text.strip(), origin=args.origin, nonce=args.nonce, id_number=args.id_number)
        _print(_result_dict(result), args.json)
        return 0

    async def go(manager: Any) -> Any:
        reader = manager.pick_reader(args.reader, kind=ReaderKind.CONTACT)
        identity = manager.reader(reader).identity
        card = await manager.run(reader, lambda c, e: service.read(c, identity), name="moica.read")
        if cmd == "read":
            return card
        origin: str = args.origin
        if cmd == "check":
            from cardd.moica.verify import NonceStore

            nonce: str = NonceStore().issue()
        else:
            nonce = args.nonce
        token = await asyncio.to_thread(service.authenticate, card, origin, nonce, _pin_source())
        return card, token, nonce

    out = asyncio.run(_with_manager(config, go))
    if cmd == "read":
        data = out.to_dict()
        _print(data, args.json)
        if not args.json:
            for c in data["certificates"]:
                print(f"certificate      {c['usage']:<8} serial {c['serial']}  valid to {c['notAfter']}  {c['generation'] or ''}")
        return 0
    card, token, nonce = out
    if cmd == "authenticate":
        print(json.dumps(token, indent=2))
        return 0
    result = service.verify(json.dumps(token), origin=args.origin, nonce=nonce, id_number=args.id_number)
    _print(_result_dict(result), args.json)
    return 0


def _result_dict(result: Any) -> dict[str, Any]:
    return {
        "valid": True,
        "holderName": result.holder_name,
        "idLast4": result.id_last4,
        "subjectSerialNumber": result.subject_serial_number,
        "certificateSerial": result.certificate_serial,
        "generation": result.generation,
        "revocation": result.revocation_method,
        "notAfter": result.not_after,
    }


def _trust(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from cardd.moica.trust import PINNED, TrustStore, fetch_anchors

    directory = Path(getattr(args, "dir", None) or config.moica.trust_dir or config.state_dir / "trust")
    if args.trust_command == "fetch":
        written = fetch_anchors(directory)
        for path in written:
            print(f"stored {path} (fingerprint checked)")
        return 0
    store = TrustStore.from_directory(directory)
    for anchor in store.anchors:
        print(f"anchor  {anchor.generation}  {anchor.certificate.subject.rfc4514_string()}")
    for root in store.roots:
        print(f"root    {root.subject.rfc4514_string()}")
    print(f"{len(PINNED)} certificates pinned in cardd")
    return 0
