# SPDX-License-Identifier: Apache-2.0
"""`cardd readers`, `cardd watch` and `cardd apdu`: the technician's reader tools."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from cardd.config import Config
from cardd.errors import ApduError, InvalidInput, NoReader, UsageError
from cardd.readers.identify import identify
from cardd.readers.types import ReaderStatus


def _snapshot() -> list[ReaderStatus]:
    from cardd.readers.pcsc import PcscBackend

    return PcscBackend().snapshot()


def _reader_rows(config: Config) -> list[dict[str, Any]]:
    from cardd.readers.manager import reader_kind

    rows = []
    for status in _snapshot():
        if status.name in config.readers.ignore:
            continue
        ident = identify(status.atr) if status.atr else None
        rows.append(
            {
                "name": status.name,
                "backend": status.backend,
                "kind": reader_kind(status.name, ident, config.readers.kinds).value,
                "cardPresent": status.card_present,
                "inUse": status.in_use,
                "atr": status.atr.hex().upper() if status.atr else None,
                "cardType": ident.card_type.value if ident else None,
                "cardLabel": ident.label if ident else None,
            }
        )
    return rows


def cmd_readers(config: Config, *, as_json: bool) -> int:
    rows = _reader_rows(config)
    if as_json:
        print(json.dumps({"readers": rows}, ensure_ascii=False, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    # Piped output (support tickets, scripts) must not lose reader names to an 80-column guess.
    console = Console(width=None if sys.stdout.isatty() else 200)
    if not rows:
        console.print("No readers. Plug one in, or run `cardd diag` to see why none is found.")
        return 0
    table = Table("#", "Reader", "Backend", "Kind", "Card", "ATR")
    for i, r in enumerate(rows):
        card = r["cardLabel"] if r["cardPresent"] else "[dim]no card[/dim]"
        if r["inUse"]:
            card = f"{card} [yellow](in use)[/yellow]"
        table.add_row(str(i), str(r["name"]), str(r["backend"]), str(r["kind"]), str(card), str(r["atr"] or ""))
    console.print(table)
    return 0


def resolve_reader(spec: str | None, names: list[str]) -> str:
    """A reader by exact name, number from `cardd readers`, or a unique part of its name."""
    if not names:
        raise NoReader("no reader connected")
    if spec is None:
        if len(names) > 1:
            raise UsageError("several readers are connected: choose one with --reader")
        return names[0]
    if spec in names:
        return spec
    if spec.isdigit() and int(spec) < len(names):
        return names[int(spec)]
    matches = [n for n in names if spec.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NoReader(f"no reader matches {spec!r}")
    raise UsageError(f"{spec!r} matches several readers: {', '.join(matches)}")


# -- watch ---------------------------------------------------------------------------------


def _format_event(data: dict[str, Any]) -> str:
    t = data["time"]
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    parts = [stamp, f"{data['type']:<18}", data.get("reader") or data.get("backend") or "-"]
    if data.get("counter") is not None:
        parts.append(f"#{data['counter']}")
    if data.get("cardLabel"):
        parts.append(data["cardLabel"])
    if data.get("atr"):
        parts.append(bytes.fromhex(data["atr"]).hex(" ").upper())
    for key in ("operation", "result", "detail"):
        if data.get(key):
            parts.append(str(data[key]))
    return "  ".join(parts)


def cmd_watch(config: Config, *, seconds: float | None, as_json: bool) -> int:
    """Subscribe to the same event bus `cardd serve` publishes on, and print what arrives."""
    import asyncio

    from cardd.daemon import build_backends
    from cardd.events import EventBus
    from cardd.readers.manager import ReaderManager

    async def watch() -> None:
        bus = EventBus()
        manager = ReaderManager(build_backends(), bus, config.readers)
        with bus.subscribe() as sub:
            await manager.start()
            try:
                async with asyncio.timeout(seconds):
                    async for event in sub:
                        data = event.to_dict()
                        if as_json:
                            print(json.dumps(data, ensure_ascii=False), flush=True)
                        else:
                            print(_format_event(data), flush=True)
            except TimeoutError:
                pass
            finally:
                await manager.stop()

    if not as_json:
        print("Watching readers and cards (Ctrl-C to stop)...", file=sys.stderr, flush=True)
    try:
        asyncio.run(watch())
    except KeyboardInterrupt:
        pass
    return 0


# -- apdu ----------------------------------------------------------------------------------

_APDU_RE = re.compile(r"^(?P<apdu>[0-9A-Fa-f\s:]+?)(?:=(?P<sw>[0-9A-Fa-fxX]{4}))?$")


@dataclass(frozen=True)
class ApduSpec:
    apdu: bytes
    expect: str | None  # 4 hex digits, x = any nibble

    def matches(self, sw: int) -> bool:
        if self.expect is None:
            return True
        got = f"{sw:04X}"
        return all(e in "xX" or e.upper() == g for e, g in zip(self.expect, got, strict=True))


def parse_apdu_arg(text: str) -> ApduSpec:
    m = _APDU_RE.match(text.strip())
    if not m:
        raise InvalidInput(f"not an APDU: {text!r} (hex bytes, optionally =SW like =9000)")
    hexdigits = re.sub(r"[\s:]", "", m.group("apdu"))
    if len(hexdigits) % 2:
        raise InvalidInput(f"odd number of hex digits in {text!r}")
    apdu = bytes.fromhex(hexdigits)
    if len(apdu) < 4:
        raise InvalidInput(f"an APDU has at least 4 bytes (CLA INS P1 P2): {text!r}")
    return ApduSpec(apdu, m.group("sw"))


def cmd_apdu(config: Config, apdus: list[str], *, reader: str | None, chain: bool) -> int:
    from cardd.log import redact_apdu
    from cardd.readers.pcsc import PcscContext
    from cardd.readers.transport import transceive

    specs = [parse_apdu_arg(a) for a in apdus]  # all of them checked before any is sent
    ctx = PcscContext()
    try:
        names = [n for n in ctx.list_readers() if n not in config.readers.ignore]
        name = resolve_reader(reader, names)
        with ctx.connect(name) as conn:
            for spec in specs:
                if chain:
                    data, sw = transceive(conn, spec.apdu)
                else:
                    data, sw = conn.send_and_receive(spec.apdu)
                print(f"> {redact_apdu(spec.apdu)}")
                print(f"< {data.hex(' ').upper()} {sw:04X}".replace("<  ", "< "))
                if not spec.matches(sw):
                    raise ApduError(sw, data, f"expected SW {spec.expect}, card answered {sw:04X}")
    finally:
        ctx.release()
    return 0
