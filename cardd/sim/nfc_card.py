# SPDX-License-Identifier: Apache-2.0
"""A simulated contactless card for nfcpy readers: ``python -m cardd.sim.nfc_card``.

The process is one card lying on an nfcpy reader that uses nfcpy's UDP driver (``[nfc] devices =
["udp:localhost:PORT"]``). It answers the reader's polls through nfcpy's own listener code
(``listen_tta`` with the given ATQA / UID / SAK, or ``listen_ttf`` with an IDm), so the reader
side runs nfcpy's real anticollision and polling, as with a card on a USB reader. Ending the
process takes the card away; starting it again puts a card down (a new tap).

    python -m cardd.sim.nfc_card --device udp:localhost:54321 --uid 93A131C0
    python -m cardd.sim.nfc_card --device udp:localhost:54321 --uid 04A1B2C3D4E5F6 --atqa 4400
    python -m cardd.sim.nfc_card --device udp:localhost:54321 --felica 012E4CD2A3B4C5D6

It prints ``ready`` once it listens and ``selected N`` after the reader's N-th complete selection
(tests count them), one line each, flushed. It listens on the loopback host given, never on all
interfaces. Type A UIDs have 4 or 7 bytes (nfcpy 1.0.4's UDP listener cannot complete a 10-byte
selection). This imports nfcpy through cardd.readers.nfc, the only module that may.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from cardd.readers.nfc_config import check_device_path


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.replace(":", "").replace(" ", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cardd.sim.nfc_card", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--device", required=True, help="udp:HOST:PORT, as the reader's [nfc] devices entry"
    )
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--uid", type=_hex, help="Type A UID (4 or 7 bytes, hex, UID0 first)")
    kind.add_argument("--felica", type=_hex, metavar="IDM", help="FeliCa IDm (8 bytes, hex)")
    parser.add_argument(
        "--atqa",
        type=_hex,
        help="Type A SENS_RES as sent (default 0400 for 4-byte UIDs, 4400 for 7)",
    )
    parser.add_argument(
        "--sak", type=_hex, default=b"\x08", help="Type A SEL_RES (default 08: MIFARE Classic 1K)"
    )
    args = parser.parse_args(argv)

    from cardd.errors import ConfigError

    try:
        check_device_path(args.device)
    except ConfigError as e:
        parser.error(e.message)
    if not args.device.startswith("udp:"):
        parser.error("the simulated card lives on nfcpy's UDP driver: --device udp:HOST:PORT")

    from cardd.readers.nfc import EmulatedCard, run_card_emulator

    try:
        if args.uid is not None:
            atqa = args.atqa or (b"\x44\x00" if len(args.uid) == 7 else b"\x04\x00")
            if len(args.sak) != 1:
                parser.error("--sak is one byte")
            card = EmulatedCard("106A", args.uid, sens_res=atqa, sel_res=args.sak[0])
        else:
            card = EmulatedCard("212F", args.felica)
    except ValueError as e:
        parser.error(str(e))

    count = itertools.count(1)

    def ready() -> None:
        print("ready", flush=True)

    def selected() -> None:
        print(f"selected {next(count)}", flush=True)

    try:
        run_card_emulator(args.device, card, on_ready=ready, on_selected=selected)
    except OSError as e:
        print(f"nfc_card: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
