# SPDX-License-Identifier: Apache-2.0
"""Class batches through the real pcscd with virtual MIFARE student cards, non-interactive.

Most tests run ``cardd batch burn`` as a separate process, as a technician would, and play the
person at the reader from a thread: a fresh card (new UID each) when the batch prints "put a card
on the reader", the card taken away when it prints "take the card off the reader". One test
kills the batch with SIGKILL in the middle of a card write and runs it again. The in-process test
drives the engine through its hooks and simulates a crash between the ledger commit and the
journal line.
"""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cardd.events import EventBus
from cardd.readers.manager import ReaderManager
from cardd.readers.pcsc import PcscBackend
from cardd.rfid.batch import BatchUI, Decision, Journal, journal_path, write_results
from cardd.rfid.burn import StudentCards
from cardd.rfid.idnumber import check_digit
from cardd.rfid.keys import load_key_file
from cardd.rfid.ledger import NumberState, open_ledger
from cardd.rfid.roster import read_roster
from cardd.rfid.uid import uid_forms
from cardd.sim.cards.faults import FaultyCard
from cardd.sim.cards.mifare import MifareClassic
from tests.helpers import FIXTURES, READER0, fixture_card, wait_card

pytestmark = pytest.mark.pcsc

KEYS = """[student_card]
sector = 14
key_a = "A0A1A2A3A4A5"
key_b = "B0B1B2B3B4B5"
"""
ROSTERS = FIXTURES / "rosters"
RECORD_BLOCK = 14 * 4  # sector 14, block 0
PUT, TAKE = "  put a card on the reader", "  take the card off the reader"
PRE_UID = "AABBCCDD"  # the card a student got before the batch


def valid_id(prefix: str) -> str:
    return prefix + str(check_digit(prefix))


class Station:
    """A key file, a ledger and a configuration file in tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.key_file = tmp_path / "keys.toml"
        self.key_file.write_text(KEYS)
        os.chmod(self.key_file, 0o600)
        self.ledger_path = tmp_path / "ledger.sqlite3"
        self.state_dir = tmp_path / "state"
        self.results = tmp_path / "results"
        self.config = tmp_path / "cardd.toml"
        self.config.write_text(
            f'state_dir = "{self.state_dir}"\n[rfid]\nkey_file = "{self.key_file}"\n'
            f'ledger = "{self.ledger_path}"\nstation = "desk-1"\n'
        )

    def ledger(self):
        return open_ledger(self.ledger_path)

    def cmd(self, roster: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), "batch", "burn",
            str(roster), "--reader", READER0, "--operator", "teacher", "--results",
            str(self.results), "--yes", "--card-timeout", "20", *extra,
        ]


_uids = iter(range(0x20000001, 0x2FFFFFFF))


def fresh_card() -> MifareClassic:
    """A personalized student card (our keys on sector 14) with a UID never used before."""
    base = fixture_card("classic_1k_student.json")
    return MifareClassic(next(_uids).to_bytes(4, "big"), base.dump())


class Hands(threading.Thread):
    """The person at the reader: reacts to the batch's output lines."""

    def __init__(self, proc: subprocess.Popen[str], slot, make_card=fresh_card) -> None:
        super().__init__(daemon=True)
        self.proc, self.slot, self.make_card = proc, slot, make_card
        self.lines: list[str] = []
        self.cards: list[MifareClassic | FaultyCard] = []

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith(PUT):
                card = self.make_card()
                self.cards.append(card)
                self.slot.insert(card)
            elif line.startswith(TAKE):
                self.slot.remove()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def start(cmd: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(proc: subprocess.Popen[str], hands: Hands, timeout: float) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    hands.join(5)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "Traceback" not in err, err
    return rc, err


def result_sheet(directory: Path) -> tuple[list[dict[str, str]], list[Path]]:
    files = sorted(directory.glob("*_results_*"))
    newest_csv = sorted(f for f in files if f.suffix == ".csv")[-1]
    with newest_csv.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, files


def card_number(card) -> str:
    inner = card.inner if isinstance(card, FaultyCard) else card
    return inner.block(RECORD_BLOCK)[3:15].decode()


# -- a bad roster touches nothing ------------------------------------------------------------


def test_bad_rows_are_all_reported_before_any_card_is_touched(vreaders, tmp_path):
    station = Station(tmp_path)
    card = fresh_card()
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    out = subprocess.run(
        station.cmd(ROSTERS / "class_roster.xlsx"), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    for row, reason in ((9, "check digit"), (20, "no ID number"), (31, "10 characters")):
        line = next(x for x in out.stdout.splitlines() if x.startswith(f"  row {row} "))
        assert reason in line
    assert "nothing was burned" in out.stdout and "--skip-bad" in out.stdout
    assert vreaders[0].link.apdu_count == 0
    assert not station.ledger_path.exists() or sum(station.ledger().counts().values()) == 0
    assert not (station.state_dir / "batches").exists() and not station.results.exists()


# -- the whole class ---------------------------------------------------------------------------


def test_whole_class_with_skip_bad_burns_every_consenting_student_once(vreaders, tmp_path):
    station = Station(tmp_path)
    roster = read_roster(ROSTERS / "class_roster.ods")
    proc = start(station.cmd(ROSTERS / "class_roster.ods", "--skip-bad", "--on-error", "retry"))
    hands = Hands(proc, vreaders[0])
    hands.start()
    rc, err = finish(proc, hands, timeout=100)
    assert rc == 0, hands.text + err
    # the bad rows were listed before the first card, and then skipped
    first_put = next(i for i, x in enumerate(hands.lines) if x.startswith(PUT))
    assert any(x.startswith("  row 9 ") for x in hands.lines[:first_put])
    # one card per consenting valid student, each burned once with that student's number
    assert len(hands.cards) == 35
    ledger = station.ledger()
    try:
        assert ledger.check() == []
        assert ledger.counts()["active"] == 35 and sum(ledger.counts().values()) == 35
        by_uid = {}
        for row in roster.to_burn:
            [number] = ledger.numbers_for(row.id_number)
            assert (number.number, number.state) == (row.id_number + "00", NumberState.ACTIVE)
            by_uid[number.uid] = number.number
        for card in hands.cards:
            assert by_uid[card.uid.hex().upper()] == card_number(card)
        for row in roster.no_consent:  # never burned
            assert row.id_number is None or ledger.numbers_for(row.id_number) == []
    finally:
        ledger.close()
    # the result sheets
    rows, files = result_sheet(station.results)
    assert len(files) == 2 and {f.suffix for f in files} == {".csv", ".xlsx"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    statuses = {int(r["列 row"]): r["狀態 status"] for r in rows}
    assert len(statuses) == 40
    assert {k for k, v in statuses.items() if v == "invalid"} == {9, 20, 31}
    assert {k for k, v in statuses.items() if v == "no_consent"} == {14, 26}
    assert sum(v == "burned" for v in statuses.values()) == 35
    burned = next(r for r in rows if r["狀態 status"] == "burned")
    uid = bytes.fromhex(burned["卡號 UID hex"])
    assert burned["內碼 UID decLE"] == uid_forms(uid).dec_le
    assert len(burned["借閱證號 library number"]) == 12
    assert "mode 0600" in hands.text
    # the terminal never shows a full ID number
    for row in roster.to_burn:
        assert row.id_number not in hands.text


# -- kill -9 in the middle of a write, and resume ----------------------------------------------


def test_killed_mid_write_resumes_without_burning_anyone_twice(vreaders, tmp_path):
    station = Station(tmp_path)
    ids = [valid_id(f"{'EFGHKM'[i]}{1 + i % 2}{3141590 + i:07d}") for i in range(6)]
    reissue_id = ids[1]
    # ids[1] had a card before the batch; the roster asks for a replacement (補發)
    ledger = station.ledger()
    r = ledger.reserve(reissue_id, reissue=False, station="desk-0", operator="x", uid=PRE_UID)
    ledger.commit(r.number, uid=PRE_UID, station="desk-0", operator="x")
    ledger.close()
    lines = ["座號,姓名,身分證字號,同意,補發"]
    lines += [f"{i + 1},學生{i + 1},{ident},是,{'是' if ident == reissue_id else ''}" for i, ident in enumerate(ids)]
    lines.append(f"7,學生7,{valid_id('N10000000')},否,")  # no consent
    roster_path = tmp_path / "301.csv"
    roster_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # Run 1: the third card stalls on its second block write; the batch is killed right then.
    writing = threading.Event()
    made = {"n": 0}

    def make_card():
        made["n"] += 1
        card = fresh_card()
        if made["n"] != 3:
            return card
        faulty = FaultyCard(card)
        seen = {"writes": 0}

        def on_apdu(apdu: bytes) -> bool:
            if apdu[:2] == b"\xff\xd6":  # UPDATE BINARY
                seen["writes"] += 1
                if seen["writes"] == 1:
                    faulty.delay_next(1.5)  # the next write (block 0) takes 1.5 s
                    writing.set()
            return False

        faulty.remove_on_next(on_apdu)
        return faulty

    proc = start(station.cmd(roster_path, "--on-error", "stop"))
    hands = Hands(proc, vreaders[0], make_card)
    hands.start()
    assert writing.wait(30), hands.text
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    hands.join(5)
    time.sleep(1.6)  # the stalled write lands on the card after its writer died
    stalled = hands.cards[2]
    assert vreaders[0].card is stalled  # still on the reader
    ledger = station.ledger()
    try:
        [pending] = ledger.pending()
        assert pending.id_number == ids[2] and pending.uid == stalled.inner.uid.hex().upper()
        assert ledger.active_for(ids[0]) is not None and ledger.active_for(reissue_id).suffix == 1
    finally:
        ledger.close()

    # Run 2: the same roster resumes: the interrupted burn first, on the card still there.
    proc = start(station.cmd(roster_path, "--on-error", "stop"))
    hands2 = Hands(proc, vreaders[0])
    hands2.start()
    rc, err = finish(proc, hands2, timeout=60)
    assert rc == 0, hands2.text + err
    assert "1 interrupted burn(s) go first" in hands2.text
    assert "2 student(s) already done" in hands2.text
    assert len(hands2.cards) == 3  # students 4-6; student 3 was finished on its own card
    ledger = station.ledger()
    try:
        assert ledger.check() == [] and ledger.pending() == []
        for ident in ids:
            numbers = ledger.numbers_for(ident)
            from_batch = [n for n in numbers if n.station == "desk-1"]
            assert len(from_batch) == 1, ident  # nothing burned twice
            assert from_batch[0].state is NumberState.ACTIVE
            assert from_batch[0].suffix == (1 if ident == reissue_id else 0)
        assert ledger.numbers_for(valid_id("N10000000")) == []
        assert ledger.numbers_for(reissue_id)[0].state is NumberState.SUPERSEDED
        assert card_number(stalled) == ids[2] + "00"
        assert ledger.active_for(ids[2]).uid == stalled.inner.uid.hex().upper()
    finally:
        ledger.close()
    rows, _ = result_sheet(station.results)
    statuses = [r["狀態 status"] for r in rows]
    assert statuses == ["burned", "burned", "resumed", "burned", "burned", "burned", "no_consent"]
    assert "done in an earlier run" in rows[0]["說明 detail"]
    # the journal: one line per event, nothing torn, the attempts fsynced before each card
    journal = Journal(journal_path(station.state_dir, roster_path))
    assert journal.runs == 2 and journal.torn == 0


# -- the engine in-process: crash between commit and journal, retries, leftover cards ------------


class FeedUI(BatchUI):
    """Plays the operator through the engine's hooks."""

    def __init__(self, slot, cards, *, swap_on_error: bool = False) -> None:
        self.slot = slot
        self.cards = iter(cards)
        self.swap_on_error = swap_on_error
        self.inserted: list[tuple[int, object]] = []
        self.removed: list[int] = []
        self.errors: list[tuple[int, str]] = []
        self.notices: list[str] = []

    def on_notice(self, text: str) -> None:
        self.notices.append(text)

    async def on_waiting(self, row) -> None:
        if self.slot.card is not None:
            return  # already put down (after a swap the reader state may lag a moment)
        card = next(self.cards)
        self.inserted.append((row.row, card))
        self.slot.insert(card)

    async def on_remove(self, row, result) -> None:
        self.removed.append(row.row)
        self.slot.remove()

    async def on_error(self, row, error, attempt) -> Decision:
        self.errors.append((row.row, error.code))
        if self.swap_on_error:
            # What people do while the error is on the screen: swap the card, then say retry.
            card = next(self.cards)
            self.inserted.append((row.row, card))
            await asyncio.to_thread(self.slot.swap, card)
            await asyncio.to_thread(wait_card, READER0, True)
        return Decision.RETRY if attempt < 3 else Decision.SKIP


class Crash(Exception):
    """The process dies: here, between the ledger's commit and the journal's result line."""


async def test_crash_after_commit_is_reconciled_from_the_ledger(vreaders, tmp_path):
    station = Station(tmp_path)
    a, b, c, d = (valid_id(p) for p in ("P12000000", "Q22000000", "R12000000", "S22000000"))
    roster_path = tmp_path / "class.csv"
    roster_path.write_text(
        "姓名,身分證字號,同意,補發\n"
        f"甲,{a},是,是\n"   # a reissue: had a card before the batch
        f"乙,{b},是,\n"     # had a card before the batch, no reissue asked
        f"丙,{c},是,\n"
        f"丁,{d},是,\n",
        encoding="utf-8",
    )
    roster = read_roster(roster_path)
    ledger = open_ledger(station.ledger_path)
    for ident in (a, b):
        r = ledger.reserve(ident, reissue=False, station="desk-0", operator="x", uid=PRE_UID)
        ledger.commit(r.number, uid=PRE_UID, station="desk-0", operator="x")
    cards = StudentCards(load_key_file(station.key_file), ledger, station="desk-1")
    bus = EventBus()
    manager = ReaderManager([PcscBackend()], bus)
    await manager.start()
    try:
        assert await manager.wait_until(lambda: READER0 in {r.name for r in manager.readers()}, 5)
        from cardd.rfid.batch import BatchEngine

        def engine(ui, journal):
            return BatchEngine(
                roster, cards=cards, manager=manager, reader=READER0, operator="teacher",
                journal=journal, ui=ui, card_timeout=10, bus=bus,
            )

        # Run 1 dies right after student 甲's reissue was committed.
        path = journal_path(station.state_dir, roster_path)
        journal = Journal(path)
        real_append = journal.append

        def dying_append(entry):
            if entry["t"] == "result" and entry["row"] == 2:
                raise Crash
            real_append(entry)

        journal.append = dying_append
        first_card = fresh_card()
        ui1 = FeedUI(vreaders[0], [first_card])
        with pytest.raises(Crash):
            await engine(ui1, journal).run()
        journal.close()
        assert ledger.active_for(a).suffix == 1
        assert await manager.wait_until(lambda: not manager.reader(READER0).busy, 5)

        # Run 2: 甲 is done (found in the ledger, not reissued again); 乙 is refused without a
        # card; 甲's card, still on the reader, is asked off; a blank card is refused, the
        # operator swaps it at the error prompt and retries: the new card is not asked off.
        blank = fixture_card("classic_1k_blank.json")
        good_c, good_d = fresh_card(), fresh_card()
        ui2 = FeedUI(vreaders[0], [blank, good_c, good_d], swap_on_error=True)
        journal2 = Journal(path)
        report = await engine(ui2, journal2).run()
        journal2.close()
    finally:
        await manager.stop()
    try:
        statuses = [(r.row.row, r.status) for r in report.results]
        assert statuses == [(2, "burned"), (3, "failed:already_issued"), (4, "burned"), (5, "burned")]
        assert "found in the ledger" in report.results[0].detail
        assert [n.suffix for n in ledger.numbers_for(a)] == [0, 1]  # no second reissue
        assert [(n.suffix, n.state) for n in ledger.numbers_for(b)] == [(0, NumberState.ACTIVE)]
        assert any("already carries" in n for n in ui2.notices)
        assert ui2.errors == [(4, "card_not_personalized")]
        assert ui2.removed == [4, 4, 5]  # 甲's leftover card, then 丙's and 丁's after burning
        assert [(row, card) for row, card in ui2.inserted] == [(4, blank), (4, good_c), (5, good_d)]
        assert ledger.find_by_uid(blank.uid.hex()) == []
        assert card_number(good_c) == c + "00" and card_number(good_d) == d + "00"
        assert ledger.check() == []
        assert not report.complete and report.counts.failed == 1
        paths = write_results(report, tmp_path / "out")
        assert [p.suffix for p in paths] == [".csv", ".xlsx"]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)
        from openpyxl import load_workbook

        sheet = load_workbook(paths[1]).active
        values = list(sheet.iter_rows(values_only=True))
        assert values[1][4] == a + "01" and values[1][7] == "burned"
        assert values[2][4] is None and values[2][7] == "failed:already_issued"
    finally:
        ledger.close()
    await asyncio.sleep(0)
