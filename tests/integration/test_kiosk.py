# SPDX-License-Identifier: Apache-2.0
"""`cardd kiosk` end to end: taps through pcscd + vpcd, EM4100 and barcodes through serial
pseudo-terminals, the real ledger, the SIP2 test server, the offline policy and its report."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from cardd.readers.framing import PRESETS, encode_frame
from cardd.readers.pcsc import PcscBackend
from cardd.rfid.burn import StudentCards
from cardd.rfid.keys import load_key_file
from cardd.rfid.ledger import open_ledger
from cardd.sim.cards.mifare import MifareClassic
from cardd.sim.sip2_server import Sip2TestServer
from tests.helpers import READER0
from tests.integration.kiosk_rig import (
    EASYCARD_CHIP,
    EM4100_DEC,
    EM4100_TAG,
    PERSON,
    EventStream,
    KioskDaemon,
    easycard,
    lift,
    patrons,
    student,
    tap,
    uid_card,
)
from tests.serial_pty import PtyDevice

pytestmark = pytest.mark.pcsc

OLD_UID, NEW_UID = "04A1A2A3", "04B1B2B3"
ON, OFF = bytes.fromhex("A00101A2"), bytes.fromhex("A00100A1")  # LCUS relay channel 1


@pytest.fixture
async def sip2():
    server = Sip2TestServer(patrons(), accounts={"kiosk": "secret"}, institution="MAIN")
    await server.start()
    yield server
    await server.stop()


def burn_and_reissue(daemon: KioskDaemon, vreaders) -> tuple[MifareClassic, MifareClassic]:
    """First issue on one card, reissue on another: the first card is superseded (lost)."""
    ledger = open_ledger(daemon.ledger)
    keys = load_key_file(daemon.key_file)
    cards = StudentCards(keys, ledger, station="desk-1")
    burned = []
    try:
        for uid, reissue in ((OLD_UID, False), (NEW_UID, True)):
            card = student(uid)
            tap(vreaders, card)
            with PcscBackend().connect(READER0) as conn:
                cards.burn(conn, PERSON, reissue=reissue, operator="clerk", reader=READER0)
            lift(vreaders)
            burned.append(card)
    finally:
        ledger.close()
    return burned[0], burned[1]


def ledger_shows(daemon: KioskDaemon) -> dict[str, str]:
    ledger = open_ledger(daemon.ledger)
    try:
        return {r.number: r.state.value for r in ledger.numbers_for(PERSON)}
    finally:
        ledger.close()


async def test_every_token_kind_lost_card_alarm_debounce_and_anti_passback(
    pcscd, vreaders, sip2, tmp_path
):
    rfid_pty, scanner_pty = PtyDevice(tmp_path / "rfid"), PtyDevice(tmp_path / "scanner")
    daemon = KioskDaemon(
        tmp_path,
        sip2.port,
        kiosk="debounce_seconds = 2.0\nanti_passback_seconds = 600\n",
        extra=(
            f'[[serial.devices]]\nname = "gate-rfid"\nport = "{rfid_pty.link}"\n'
            'preset = "rdm6300"\nrole = "rfid"\n'
            f'[[serial.devices]]\nname = "gate-scanner"\nport = "{scanner_pty.link}"\n'
            'preset = "barcode-cr"\nrole = "barcode"\n'
        ),
    )
    old_card, new_card = burn_and_reissue(daemon, vreaders)
    assert ledger_shows(daemon) == {PERSON + "00": "superseded", PERSON + "01": "active"}
    daemon.start()
    try:
        async with EventStream(daemon) as events:
            # The old student card after the reissue: refused as lost, alarm raised, the
            # library system not even asked.
            tap(vreaders, old_card)
            lost = await events.next("kiosk.decision")
            alarm = await events.next("kiosk.alarm")
            lift(vreaders)
            assert (lost["decision"], lost["reason"], lost["message"]) == (
                "deny",
                "card_lost",
                "此卡已掛失，請洽櫃台",
            )
            assert lost["token"] == {
                "kind": "library_number",
                "source": "card_record",
                "masked": "A12*****8900",
                "reader": READER0,
            }
            assert alarm["reason"] == "card_lost" and alarm["token"]["masked"] == "A12*****8900"

            # The new card: its record is read with the key file and the library system is
            # asked about the library number.
            tap(vreaders, new_card)
            new = await events.next("kiosk.decision")
            lift(vreaders)
            assert (new["decision"], new["reason"], new["token"]["masked"]) == (
                "allow",
                "welcome",
                "A12*****8901",
            )
            assert new["ms"]["record"] is not None and new["ms"]["library"] is not None
            asked = [m.get("AA") for m in sip2.messages("63")]
            assert asked == [PERSON + "01"]

            # An EasyCard: its chip number (little-endian decimal, 10 digits); AF shown.
            tap(vreaders, easycard())
            welcome = await events.next("kiosk.decision")
            lift(vreaders)
            assert (welcome["decision"], welcome["token"]["kind"], welcome["screenMessage"]) == (
                "allow",
                "uid",
                "請於 11/20 前歸還圖書",
            )
            assert welcome["token"]["masked"] == "******8099"
            decided_at = time.monotonic()

            # The same EasyCard again at once: debounced, no second decision. The EM4100 tag
            # read next is the next decision the stream shows.
            tap(vreaders, easycard())
            rfid_pty.write(encode_frame(PRESETS["rdm6300"].spec, EM4100_TAG))
            em = await events.next("kiosk.decision")
            lift(vreaders)
            assert (em["decision"], em["token"]["kind"], em["token"]["reader"]) == (
                "allow",
                "em4100",
                "gate-rfid",
            )
            assert sip2.messages("63")[-1].get("AA") == EM4100_DEC

            # Barcodes: a virtual interlibrary card (seed 003), a junk code, and the old
            # card's library number printed as a barcode (the ledger refuses it too).
            virtual = next(p for p in sip2.patrons if p.startswith("CUTE-"))
            for text in (virtual, "hello", PERSON + "00"):
                scanner_pty.write(text.encode() + b"\r")
            got = [await events.next("kiosk.decision") for _ in range(3)]
            assert [(d["decision"], d["reason"], d["token"]["kind"]) for d in got] == [
                ("allow", "welcome", "virtual_card"),
                ("deny", "unknown_barcode", "unknown"),
                ("deny", "card_lost", "library_number"),
            ]

            # After the debounce window the EasyCard is decided again: anti-passback.
            await asyncio.sleep(max(0.0, 2.1 - (time.monotonic() - decided_at)))
            tap(vreaders, easycard())
            again = await events.next("kiosk.decision")
            lift(vreaders)
            assert (again["decision"], again["reason"], again["message"]) == (
                "deny",
                "already_in",
                "已在館內",
            )
            decisions = [d for k, d in events.seen if k == "kiosk.decision"]
            assert len(decisions) == 8  # the debounced tap made none
    finally:
        assert daemon.stop() == 0, daemon.log_text()
        rfid_pty.unplug()
        scanner_pty.unplug()
    log = daemon.log_text()
    assert PERSON not in log and EASYCARD_CHIP not in log  # masked everywhere
    out = daemon.cli("kiosk", "log", "-n", "20", "--json")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["reason"] for r in rows] == [
        "card_lost",
        "welcome",
        "welcome",
        "welcome",
        "welcome",
        "unknown_barcode",
        "card_lost",
        "already_in",
    ]
    assert PERSON not in out.stdout and EASYCARD_CHIP not in out.stdout


async def test_fail_closed_denies_offline_and_reports_after_recovery(
    pcscd, vreaders, sip2, tmp_path
):
    relay = PtyDevice(tmp_path / "relay")  # an LCUS USB relay board, played on a pty
    relay.start_reading()
    daemon = KioskDaemon(
        tmp_path,
        sip2.port,
        kiosk="anti_passback_seconds = 0\ndebounce_seconds = 0\n",
        extra=f'[kiosk.gate]\nport = "{relay.link}"\npulse = 0.2\n',
    ).start()
    try:
        async with EventStream(daemon) as events:
            assert relay.wait_received(OFF) == OFF  # switched off at start
            tap(vreaders, easycard())
            first = await events.next("kiosk.decision")
            lift(vreaders)
            assert (first["decision"], first["offline"]) == ("allow", False)
            # the allow pulsed the gate: on, then off
            assert relay.wait_received(OFF + ON + OFF) == OFF + ON + OFF

            await sip2.stop()  # the library system goes away
            tap(vreaders, easycard())
            off = await events.next("kiosk.decision")
            lift(vreaders)
            assert (off["decision"], off["reason"], off["offline"], off["message"]) == (
                "deny",
                "library_offline",
                True,
                "系統離線中，請洽櫃台",
            )
            status = await events.next("kiosk.status")
            assert status == {
                "libraryOnline": False,
                "queued": 1,
                "type": "kiosk.status",
                "seq": status["seq"],
                "time": status["time"],
            }

            await sip2.start()  # back on the same port
            report = await events.next("kiosk.offline_report", timeout=20)
            assert (report["count"], report["remaining"], report["admittedButWouldDeny"]) == (
                1,
                0,
                0,
            )
            [entry] = report["entries"]
            assert (
                entry["decision"],
                entry["reason"],
                entry["onlineDecision"],
                entry["masked"],
            ) == ("deny", "library_offline", "allow", "******8099")
            assert relay.received == OFF + ON + OFF  # the offline refusal left the gate shut
            # the page's offline notice went away with the library system's return
            assert ("kiosk.status", True) in [(k, d.get("libraryOnline")) for k, d in events.seen]
    finally:
        assert daemon.stop() == 0, daemon.log_text()
        relay.unplug()
    queue = json.loads(daemon.cli("kiosk", "queue", "--json").stdout)
    assert queue["waiting"] == [] and queue["reported"][0]["verdict"] == "allow"
    assert EASYCARD_CHIP not in json.dumps(queue)


async def test_cache_admits_a_recent_patron_and_refuses_an_unknown_one(
    pcscd, vreaders, sip2, tmp_path
):
    daemon = KioskDaemon(
        tmp_path,
        sip2.port,
        kiosk='offline_mode = "cache"\ncache_hours = 24\nanti_passback_seconds = 0\n'
        "debounce_seconds = 0\n",
    ).start()
    try:
        async with EventStream(daemon) as events:
            tap(vreaders, easycard())
            assert (await events.next("kiosk.decision"))["reason"] == "welcome"
            lift(vreaders)

            await sip2.stop()
            tap(vreaders, easycard())
            cached = await events.next("kiosk.decision")
            lift(vreaders)
            assert (cached["decision"], cached["reason"], cached["offline"], cached["message"]) == (
                "allow",
                "offline_cached",
                True,
                "歡迎光臨（系統離線）",
            )
            tap(vreaders, uid_card("04D1D2D3"))  # never admitted online: never admitted now
            unknown = await events.next("kiosk.decision")
            lift(vreaders)
            assert (unknown["decision"], unknown["reason"]) == ("deny", "offline_unknown")

            await sip2.start()
            report = await events.next("kiosk.offline_report", timeout=20)
            verdicts = [
                (e["decision"], e["onlineDecision"], e["onlineReason"]) for e in report["entries"]
            ]
            assert verdicts == [("allow", "allow", "welcome"), ("deny", "deny", "patron_unknown")]
            assert report["admittedButWouldDeny"] == 0
    finally:
        assert daemon.stop() == 0, daemon.log_text()
    # The cache names nobody in clear.
    assert EASYCARD_CHIP.encode() not in (daemon.state / "kiosk.sqlite3").read_bytes()
    assert os.stat(daemon.state / "kiosk.sqlite3").st_mode & 0o777 == 0o600
