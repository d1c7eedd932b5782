# SPDX-License-Identifier: Apache-2.0
"""Kiosk decisions on pure logic: a scripted library system, a ledger table, a manual clock.

The library system and the ledger are fakes here (unit tests of the decision rules); the
integration tests run the same rules through the daemon, pcscd + vpcd, the real ledger and the
SIP2 test server.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from cardd.errors import InvalidInput, LedgerUnavailable, LibrarySystemUnavailable
from cardd.kiosk.decide import REASONS, Decider, online_verdict
from cardd.kiosk.offline import KioskStore
from cardd.kiosk.patron import PatronStatus
from cardd.kiosk.settings import KioskPolicy
from cardd.kiosk.tokens import (
    TokenKind,
    TokenRules,
    from_barcode,
    from_record,
    from_tap,
    unreadable,
)
from cardd.rfid.idnumber import parse_library_number
from cardd.rfid.ledger import NumberRecord, NumberState
from cardd.rfid.uid import uid_forms

RULES = TokenRules()
PERSON = "A123456789"
CHIP = "93A131C0"  # 內碼 3224478099


class Library:
    """A scripted library system: a patron table; `down` makes every lookup fail."""

    def __init__(self, patrons: dict[str, PatronStatus]) -> None:
        self.patrons = patrons
        self.down = False
        self.asked: list[str] = []

    async def patron_status(self, patron_id: str) -> PatronStatus:
        self.asked.append(patron_id)
        if "|" in patron_id:
            raise InvalidInput("a patron id cannot contain |")
        if self.down:
            raise LibrarySystemUnavailable("connection refused")
        return self.patrons.get(patron_id) or PatronStatus.from_status_field(
            patron_id, "YYYY" + " " * 10, valid=False
        )


class Ledger:
    def __init__(self, *records: tuple[str, NumberState, str | None]) -> None:
        now = datetime.now(UTC)
        self.records = [
            NumberRecord(n, n[:10], int(n[10:]), s, uid, now, now, now, "desk", "op", None)
            for n, s, uid in records
        ]
        self.fail = False

    def state(self, number: str) -> NumberRecord | None:
        if self.fail:
            raise LedgerUnavailable("database down")
        return next((r for r in self.records if r.number == number), None)

    def find_by_uid(self, uid: str) -> list[NumberRecord]:
        if self.fail:
            raise LedgerUnavailable("database down")
        return [r for r in self.records if r.uid == uid]


def patron(pid: str, status: str = " " * 14, af: str = "", valid: bool = True) -> PatronStatus:
    return PatronStatus.from_status_field(
        pid, status, valid=valid, personal_name="X", screen_message=af
    )


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    s = KioskStore(tmp_path)
    yield s
    s.close()


def make(store, library=None, ledger=None, **policy) -> tuple[Decider, Clock]:
    clock = Clock()
    d = Decider(
        KioskPolicy(**policy),
        RULES,
        store,
        patrons=library,
        ledger=(lambda: ledger) if ledger is not None else None,
        clock=clock,
        today=lambda: date(2013, 11, 8),
    )
    return d, clock


def uid_token(uid=CHIP):
    return from_tap({"reader": "R", "uid": uid_forms(bytes.fromhex(uid)).to_dict()}, RULES)


def card(number: str, uid=CHIP):
    return from_record(parse_library_number(number), bytes.fromhex(uid), "R")


def test_every_reason_has_both_messages():
    for reason, (_allow, zh, en) in REASONS.items():
        assert zh and en, reason


async def test_known_patron_welcome_with_screen_message(store):
    lib = Library({"3224478099": patron("3224478099", af="Books due tomorrow")})
    d, _ = make(store, lib)
    out = await d.decide(uid_token())
    assert (out.allow, out.reason, out.screen_message, out.offline) == (
        True,
        "welcome",
        "Books due tomorrow",
        False,
    )
    assert out.to_event()["message"] == "歡迎光臨" and lib.asked == ["3224478099"]
    assert d.library_online is True


@pytest.mark.parametrize(
    ("status", "valid", "reason", "alarm"),
    [
        ("    Y" + " " * 9, True, "card_lost", True),
        ("YYYY" + " " * 10, False, "patron_unknown", False),
        (" " * 14, None, "patron_unknown", False),  # no BL field: not a valid patron
        ("Y" + " " * 13, True, "welcome", False),  # charge denied admitted by default
    ],
)
async def test_library_answers(store, status, valid, reason, alarm):
    lib = Library({"3224478099": patron("3224478099", status, valid=valid)})
    d, _ = make(store, lib)
    out = await d.decide(uid_token())
    assert (out.reason, out.alarm) == (reason, alarm)


async def test_charge_denied_refused_when_the_site_says_so(store):
    lib = Library({"3224478099": patron("3224478099", "Y" + " " * 13, af="Fines")})
    d, _ = make(store, lib, deny_on_charge_denied=True)
    out = await d.decide(uid_token())
    assert (out.allow, out.reason, out.screen_message) == (False, "patron_blocked", "Fines")


async def test_superseded_student_card_is_lost_with_alarm_and_library_not_asked(store):
    lib = Library({})
    ledger = Ledger(
        (PERSON + "00", NumberState.SUPERSEDED, CHIP),
        (PERSON + "01", NumberState.ACTIVE, "04112233"),
    )
    d, _ = make(store, lib, ledger)
    out = await d.decide(card(PERSON + "00"))
    assert (out.allow, out.reason, out.alarm) == (False, "card_lost", True)
    assert out.to_event()["message"] == "此卡已掛失，請洽櫃台" and lib.asked == []


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (NumberState.LOST, "card_lost"),
        (NumberState.PENDING, "card_not_active"),
        (NumberState.VOID, "card_not_active"),
    ],
)
async def test_ledger_states_refused(store, state, reason):
    d, _ = make(store, Library({}), Ledger((PERSON + "00", state, CHIP)))
    assert (await d.decide(card(PERSON + "00"))).reason == reason


async def test_active_card_is_asked_about_by_its_number(store):
    lib = Library({PERSON + "01": patron(PERSON + "01")})
    d, _ = make(store, lib, Ledger((PERSON + "01", NumberState.ACTIVE, CHIP)))
    out = await d.decide(card(PERSON + "01"))
    assert out.reason == "welcome" and lib.asked == [PERSON + "01"]


async def test_uid_bound_in_the_ledger_stands_for_the_student_card(store):
    """A kiosk without the key file: the tapped UID finds the card's number in the ledger."""
    lib = Library({PERSON + "01": patron(PERSON + "01")})
    ledger = Ledger(
        (PERSON + "00", NumberState.SUPERSEDED, CHIP),
        (PERSON + "01", NumberState.ACTIVE, "04112233"),
    )
    d, _ = make(store, lib, ledger)
    old = await d.decide(uid_token(CHIP))
    assert (old.reason, old.alarm) == ("card_lost", True)
    new = await d.decide(uid_token("04112233"))
    assert new.reason == "welcome" and new.token.kind is TokenKind.LIBRARY_NUMBER
    assert new.token.masked == "A12*****8901" and lib.asked == [PERSON + "01"]


async def test_ledger_down_leaves_the_decision_to_the_library_system(store):
    ledger = Ledger((PERSON + "00", NumberState.ACTIVE, CHIP))
    ledger.fail = True
    d, _ = make(store, Library({PERSON + "00": patron(PERSON + "00")}), ledger)
    out = await d.decide(card(PERSON + "00"))
    assert out.reason == "welcome" and out.detail == "ledger_unavailable"


async def test_ledger_only_mode_without_a_library_system(store):
    ledger = Ledger((PERSON + "00", NumberState.ACTIVE, CHIP))
    d, _ = make(store, None, ledger)
    assert (await d.decide(card(PERSON + "00"))).reason == "ledger_active"
    assert (await d.decide(uid_token("04999999"))).reason == "patron_unknown"


async def test_unreadable_reads_are_refused_without_asking(store):
    lib = Library({})
    d, _ = make(store, lib)
    for problem in ("random_uid", "record_corrupt", "read_failed"):
        out = await d.decide(unreadable(problem, bytes.fromhex("08000000"), "R"))
        assert (out.allow, out.reason) == (False, problem)
    out = await d.decide(from_barcode("hello", RULES))
    assert out.reason == "unknown_barcode" and lib.asked == []


async def test_debounce_then_anti_passback(store):
    lib = Library({"3224478099": patron("3224478099")})
    d, clock = make(store, lib, debounce_seconds=2, anti_passback_seconds=30)
    assert (await d.decide(uid_token())).reason == "welcome"
    clock.t += 1.5
    assert await d.decide(uid_token()) is None  # the same tap seen twice: no decision
    clock.t += 1.0
    again = await d.decide(uid_token())
    assert (again.allow, again.reason, again.message) == (False, "already_in", "已在館內")
    clock.t += 30
    assert (await d.decide(uid_token())).reason == "welcome"
    assert len(lib.asked) == 2  # already_in did not ask the library system


async def test_anti_passback_off(store):
    lib = Library({"3224478099": patron("3224478099")})
    d, clock = make(store, lib, debounce_seconds=0, anti_passback_seconds=0)
    for _ in range(3):
        assert (await d.decide(uid_token())).reason == "welcome"


async def test_staff_allow_list_online_and_offline_but_never_a_lost_card(store):
    lib = Library({})
    lib.down = True
    ledger = Ledger((PERSON + "00", NumberState.LOST, CHIP))
    d, _ = make(store, lib, ledger, staff=frozenset({"3224478099", PERSON + "00"}))
    assert (await d.decide(uid_token("93A131C1"))).reason == "library_offline"
    assert (await d.decide(card(PERSON + "00"))).reason == "card_lost"
    staff_uid = "93A131C0"  # not in the ledger by UID: the decLE is on the allow-list
    d2, _ = make(store, lib, None, staff=frozenset({"3224478099"}))
    assert (await d2.decide(uid_token(staff_uid))).reason == "staff"
    assert len(lib.asked) == 1  # only the first (non-staff) tap asked the library system


async def test_virtual_card_expiry_and_local_policy(store):
    lib = Library({"CUTE-1-20131107112934": patron("CUTE-1-20131107112934")})
    d, _ = make(store, lib)  # today is 2013-11-08
    assert (await d.decide(from_barcode("CUTE-1-20131107112934", RULES))).reason == "welcome"
    out = await d.decide(from_barcode("CUTE-1-20131101112934", RULES))
    assert (out.reason, out.message) == ("virtual_card_expired", "館際借書證已過期，請洽櫃台")
    d2, _ = make(store, Library({}), virtual_cards="local")
    assert (await d2.decide(from_barcode("CUTE-2-20131107112934", RULES))).reason == "virtual_card"


async def test_fail_closed_denies_and_queues(store):
    lib = Library({"3224478099": patron("3224478099")})
    lib.down = True
    d, _ = make(store, lib)
    out = await d.decide(uid_token())
    assert (out.allow, out.reason, out.offline) == (False, "library_offline", True)
    assert d.library_online is False
    [queued] = store.unreported()
    assert (queued.patron, queued.decision, queued.reason, queued.masked) == (
        "3224478099",
        "deny",
        "library_offline",
        "******8099",
    )


async def test_cache_admits_recent_online_grants_only(store):
    lib = Library({"3224478099": patron("3224478099")})
    d, clock = make(store, lib, offline_mode="cache", cache_hours=24, anti_passback_seconds=0)
    granted = await d.decide(uid_token())
    assert granted.reason == "welcome"
    assert not store.granted_since("3224478099", 0)  # remembered only once committed
    await d.commit(granted)  # (the kiosk loop does this after showing the decision)
    lib.down = True
    clock.t += 3600
    out = await d.decide(uid_token())
    assert (out.allow, out.reason, out.offline) == (True, "offline_cached", True)
    assert (await d.decide(uid_token("01020304"))).reason == "offline_unknown"
    clock.t += 24 * 3600  # the grant is older than the window now
    assert (await d.decide(uid_token())).reason == "offline_unknown"
    assert [q.reason for q in store.unreported()] == [
        "offline_cached",
        "offline_unknown",
        "offline_unknown",
    ]


async def test_open_mode_admits_everyone_offline(store):
    lib = Library({})
    lib.down = True
    d, _ = make(store, lib, offline_mode="open")
    out = await d.decide(uid_token("01020304"))
    assert (out.allow, out.reason, out.offline) == (True, "offline_open", True)
    assert out.to_event()["message"] == "歡迎光臨（系統離線）"


def test_online_verdict_is_what_the_report_uses():
    policy = KioskPolicy()
    assert online_verdict(patron("x"), policy) == "welcome"
    assert online_verdict(patron("x", "    Y" + " " * 9), policy) == "card_lost"


def test_store_forgets_the_patron_once_reported(store):
    entry = store.queue(
        patron="3224478099",
        kind="uid",
        masked="******8099",
        decision="allow",
        reason="offline_cached",
    )
    store.mark_reported(entry, "deny", "card_lost")
    assert store.unreported() == [] and store.unreported_count() == 0
    [row] = store.reported()
    assert row["patron"] is None and row["verdict"] == "deny" and row["masked"] == "******8099"


def test_store_files_are_private(tmp_path):
    s = KioskStore(tmp_path)
    s.record_grant("3224478099")
    s.close()
    assert (tmp_path / "kiosk.sqlite3").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "kiosk.key").stat().st_mode & 0o777 == 0o600
    assert b"3224478099" not in (tmp_path / "kiosk.sqlite3").read_bytes()


async def test_an_identifier_the_library_system_cannot_take_is_refused_not_offline(store):
    rules = TokenRules(barcode_patterns=(r"P[0-9|]+",))
    d, _ = make(store, Library({}))
    out = await d.decide(from_barcode("P12|34", rules))
    assert (out.allow, out.reason, out.offline, out.detail) == (
        False,
        "patron_unknown",
        False,
        "invalid_input",
    )
    assert d.library_online is None and store.unreported() == []
