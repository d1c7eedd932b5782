# SPDX-License-Identifier: Apache-2.0
"""`cardd sim ...`: virtual cards in the vpcd readers of the real pcscd, for demos and tests."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardd.errors import BackendUnavailable, UsageError

if TYPE_CHECKING:
    from cardd.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "sim",
        help="virtual cards for the vpcd driver (demos and tests)",
        description="Run virtual cards in pcscd's vpcd readers, and insert, remove, swap or "
        "disturb them while they run. Never install vpcd on a kiosk: it accepts cards from the network.",
    )
    p.add_argument("--control", type=Path, help="control socket (default: $XDG_RUNTIME_DIR/cardd-sim.sock)")
    s = p.add_subparsers(dest="sim_command", metavar="SIMCOMMAND", required=True)
    q = s.add_parser("serve", help="run the simulator in the foreground")
    q.add_argument("--port", type=int, help="vpcd port of slot 0 (default 35963)")
    q.add_argument("--slots", type=int, help="number of vpcd slots (default 2)")
    q.add_argument("--insert", action="append", default=[], metavar="SLOT=FILE", help="insert a card at start")
    q = s.add_parser("insert", help="insert a card (a JSON card image) into a slot")
    q.add_argument("slot", type=int)
    q.add_argument("card", type=Path)
    q = s.add_parser("swap", help="remove the card in a slot and insert another")
    q.add_argument("slot", type=int)
    q.add_argument("card", type=Path)
    q = s.add_parser("remove", help="remove the card from a slot")
    q.add_argument("slot", type=int)
    s.add_parser("status", help="slots, cards and APDU counts")
    q = s.add_parser("fault", help="disturb the card in a slot")
    q.add_argument("slot", type=int)
    q.add_argument("kind", choices=["sw", "mute", "remove", "delay", "chain", "wrong-le", "clear"])
    q.add_argument("--sw", help="status word for kind=sw, e.g. 6F00")
    q.add_argument("--count", type=int, default=1, help="how many APDUs (default 1)")
    q.add_argument("--seconds", type=float, help="delay for kind=delay")
    q.add_argument("--after", action="store_true", help="kind=remove: after the card processed the APDU")
    q.add_argument("--off", action="store_true", help="kind=chain/wrong-le: switch off")


def run(config: Config, args: argparse.Namespace) -> int:
    from cardd.sim.control import default_control_socket, request

    path = args.control or config.sim.control_socket or default_control_socket()
    if args.sim_command == "serve":
        return _serve(config, args, path)
    msg: dict[str, Any] = {"cmd": args.sim_command}
    if args.sim_command in ("insert", "swap"):
        msg.update(slot=args.slot, card=str(args.card.resolve()))
    elif args.sim_command == "remove":
        msg.update(slot=args.slot)
    elif args.sim_command == "fault":
        msg.update(slot=args.slot, kind=args.kind, count=args.count, after=args.after, on=not args.off)
        if args.kind == "sw":
            if not args.sw:
                raise UsageError("kind=sw needs --sw XXXX")
            msg["sw"] = args.sw
        if args.kind == "delay":
            if args.seconds is None:
                raise UsageError("kind=delay needs --seconds")
            msg["seconds"] = args.seconds
    try:
        answer = request(path, msg)
    except OSError as e:
        raise BackendUnavailable(f"no simulator on {path} ({e.strerror or e}); start one with `cardd sim serve`") from None
    if not answer.pop("ok"):
        raise UsageError(answer.get("error", "simulator refused the command"))
    print(json.dumps(answer, ensure_ascii=False, indent=2 if args.sim_command == "status" else None))
    return 0


def _serve(config: Config, args: argparse.Namespace, path: Path) -> int:
    from cardd.sim.control import ControlServer, Simulator

    sim = Simulator(config.sim.vpcd_host, args.port or config.sim.vpcd_port, args.slots or config.sim.slots)
    try:
        for item in args.insert:
            slot, _, file = item.partition("=")
            if not slot.isdigit() or not file:
                raise UsageError(f"--insert wants SLOT=FILE, got {item!r}")
            info = sim.insert(int(slot), str(Path(file).resolve()))
            print(f"slot {info['slot']}: inserted {info['card']} (ATR {info['atr']})", flush=True)
    except ConnectionError as e:
        sim.close()
        raise BackendUnavailable(str(e)) from None
    server = ControlServer(path, sim)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="cardd-sim-control", daemon=True)
    thread.start()
    print(f"simulator running; control socket {path} (Ctrl-C to stop)", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        sim.close()
    return 0
