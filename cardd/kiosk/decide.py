# SPDX-License-Identifier: Apache-2.0
"""Gate decisions: one token in, allow or deny with a stable reason out.

The order (kiosk.md §1.3, §5; each step can end the decision):

1. **Unreadable** tokens (a random UID, an unknown barcode, a corrupt record, a card pulled
   before it could be read) are refused at once; the library system is not asked.
2. **Debounce**: the same card read again within ``debounce_seconds`` of its last decision is
   ignored (no second decision, no second gate pulse).
3. **Ledger**: a library number that is ``superseded`` or ``lost`` is a lost card: refused,
   and a ``kiosk.alarm`` is raised; ``pending`` or ``void`` is not a working card. A contactless
   UID that the ledger bound to a student card answers as that card: the active number is asked
   about instead of the UID (so a kiosk without the key file still knows student cards when it
   shares the ledger), a card whose numbers are all superseded or lost is a lost card.
   *Decision (EasyCards bound as library cards)*: there is no separate site table. A library
   that binds a patron's own EasyCard/iPass stores its chip number in the library system (SIP2
   ``AA`` in the configured form, kiosk.md §4), which also reports it lost (status position 5);
   a second list in cardd would drift from it. Student cards are the exception because cardd
   issues them: the ledger is their source of truth.
4. **Staff allow-list**: admitted without asking (online and offline), after the ledger check
   so that a lost staff card is still refused.
5. **Virtual interlibrary card**: refused when past its printed validity; with
   ``virtual_cards = "local"`` admitted on that validity alone.
6. **Anti-passback**: a patron admitted within ``anti_passback_seconds`` is refused with
   "已在館內 / Already in".
7. **Library system** (SIP2): card reported lost (alarm), not a valid patron (``BL`` not ``Y``
   or the unknown-patron shape), charge privileges denied when the site says so; else welcome.
   The screen message ``AF`` always goes to the page. Without a library system configured the
   kiosk runs on the ledger alone: an active student card is admitted, anything else refused.
8. **Offline** (:class:`~cardd.errors.LibrarySystemUnavailable`): ``fail_closed`` refuses,
   ``cache`` admits patrons admitted online within ``cache_hours`` and refuses everyone else,
   ``open`` admits everyone. Every offline decision is queued durably before it is returned.

Debounce and anti-passback state is kept in memory: a restart forgets it, which at worst lets
one patron through twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Protocol, TypeVar

from cardd.errors import CardError, LibrarySystemUnavailable
from cardd.kiosk.offline import KioskStore
from cardd.kiosk.patron import PatronSource, PatronStatus
from cardd.kiosk.settings import KioskPolicy
from cardd.kiosk.tokens import Token, TokenKind, TokenRules, virtual_card_valid
from cardd.rfid.ledger import NumberRecord, NumberState

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: reason code → (allowed, message for the page in Traditional Chinese, English subtitle)
REASONS: dict[str, tuple[bool, str, str]] = {
    "welcome": (True, "歡迎光臨", "Welcome"),
    "staff": (True, "歡迎光臨", "Welcome (staff)"),
    "ledger_active": (True, "歡迎光臨", "Welcome"),
    "virtual_card": (True, "歡迎光臨（館際借書證）", "Welcome (interlibrary card)"),
    "offline_cached": (True, "歡迎光臨（系統離線）", "Welcome (library system offline)"),
    "offline_open": (True, "歡迎光臨（系統離線）", "Welcome (library system offline)"),
    "card_lost": (
        False,
        "此卡已掛失，請洽櫃台",
        "This card was reported lost. Please see the desk.",
    ),
    "card_not_active": (
        False,
        "此卡尚未啟用，請洽櫃台",
        "This card is not active. Please see the desk.",
    ),
    "patron_unknown": (False, "查無讀者資料，請洽櫃台", "Unknown patron. Please see the desk."),
    "patron_blocked": (
        False,
        "借閱權限已停用，請洽櫃台",
        "Your privileges are suspended. Please see the desk.",
    ),
    "already_in": (False, "已在館內", "Already in"),
    "virtual_card_expired": (
        False,
        "館際借書證已過期，請洽櫃台",
        "This interlibrary card has expired.",
    ),
    "random_uid": (
        False,
        "此卡無法識別，請改用借書證",
        "This card cannot be identified. Please use your library card.",
    ),
    "unknown_barcode": (False, "無法辨識此條碼，請洽櫃台", "Unknown barcode. Please see the desk."),
    "record_corrupt": (
        False,
        "卡片資料異常，請洽櫃台",
        "The card's data is damaged. Please see the desk.",
    ),
    "read_failed": (
        False,
        "讀取失敗，請再感應一次",
        "The card could not be read. Please tap again.",
    ),
    "library_offline": (
        False,
        "系統離線中，請洽櫃台",
        "The library system is offline. Please see the desk.",
    ),
    "offline_unknown": (
        False,
        "系統離線中，無法確認身分，請洽櫃台",
        "The library system is offline and cannot confirm you. Please see the desk.",
    ),
}

_LOST_STATES = (NumberState.SUPERSEDED, NumberState.LOST)


@dataclass(frozen=True, repr=False)
class Decision:
    token: Token
    reason: str
    offline: bool = False
    #: SIP2 AF: always shown to the patron
    screen_message: str = ""
    #: raise a kiosk.alarm (a lost card was presented)
    alarm: bool = False
    #: the identifier the library system was (or would have been) asked about; never in events
    patron: str | None = None
    #: milliseconds spent waiting for the library system (None when it was not asked)
    library_ms: float | None = None
    #: notes for the audit (e.g. "ledger_unavailable")
    detail: str | None = None
    #: when it was decided (the decider's clock)
    at: float | None = None

    @property
    def allow(self) -> bool:
        return REASONS[self.reason][0]

    @property
    def message(self) -> str:
        return REASONS[self.reason][1]

    @property
    def message_en(self) -> str:
        return REASONS[self.reason][2]

    def to_event(self) -> dict[str, Any]:
        return {
            "decision": "allow" if self.allow else "deny",
            "reason": self.reason,
            "message": self.message,
            "messageEn": self.message_en,
            "screenMessage": self.screen_message,
            "token": self.token.to_event(),
            "offline": self.offline,
        }

    def __repr__(self) -> str:
        return f"Decision({'allow' if self.allow else 'deny'}, {self.reason}, {self.token!r})"


def online_verdict(status: PatronStatus, policy: KioskPolicy) -> str:
    """The reason code for a library system's answer (kiosk.md §1.3, suggested gate decision)."""
    if status.card_reported_lost:
        return "card_lost"
    if status.valid is not True or status.unknown_shape:
        return "patron_unknown"
    if policy.deny_on_charge_denied and status.charge_privileges_denied:
        return "patron_blocked"
    return "welcome"


class LedgerView(Protocol):
    """What the decisions need from the issuance ledger (cardd.rfid.ledger.Ledger has it)."""

    def state(self, library_number: str) -> NumberRecord | None: ...
    def find_by_uid(self, uid: str) -> list[NumberRecord]: ...


class Decider:
    """Decides taps; keeps the debounce and anti-passback windows and the online state."""

    def __init__(
        self,
        policy: KioskPolicy,
        rules: TokenRules,
        store: KioskStore,
        *,
        patrons: PatronSource | None,
        ledger: Callable[[], LedgerView] | None,
        io: Executor | None = None,
        clock: Callable[[], float] = time.time,
        today: Callable[[], date] = date.today,
    ) -> None:
        self.policy = policy
        self.rules = rules
        self.store = store
        self.patrons = patrons
        self._ledger = ledger
        self._io = io
        self._clock = clock
        self._today = today
        self._last_decided: dict[tuple[str, str], float] = {}
        self._admitted: dict[str, float] = {}
        #: None until the library system was first asked; then whether it answered
        self.library_online: bool | None = None

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn)

    # -- the decision ------------------------------------------------------------------------

    async def decide(self, token: Token) -> Decision | None:
        """The decision for one read, or None when it repeats a card decided moments ago."""
        now = self._clock()
        if self._is_repeat(token, now):
            return None
        if token.kind is TokenKind.UNKNOWN:  # the library system is not asked about nobody
            return Decision(token, token.problem or "read_failed")
        decision = await self._decide(token, now)
        if decision.allow and decision.patron is not None:
            self._admitted[decision.patron] = now
        self._prune(now)
        return decision

    def _is_repeat(self, token: Token, now: float) -> bool:
        last = self._last_decided.get(token.key)
        if last is not None and now - last < self.policy.debounce_seconds:
            return True
        self._last_decided[token.key] = now
        return False

    async def _decide(self, token: Token, now: float) -> Decision:
        detail = None
        active = False  # the ledger holds the token's number as a working card
        if self._ledger is not None and token.kind in (TokenKind.LIBRARY_NUMBER, TokenKind.UID):
            asked = token
            try:
                token, refusal, active = await self._run(lambda: self._check_ledger(asked))
            except CardError as e:  # the ledger's database is down: the library system decides
                logger.warning("kiosk: ledger not available (%s); deciding without it", e.code)
                refusal, detail = None, "ledger_unavailable"
            if refusal is not None:
                return refusal
        patron = token.value
        if patron in self.policy.staff:
            return Decision(token, "staff", patron=patron, detail=detail)
        if token.kind is TokenKind.VIRTUAL_CARD:
            if not virtual_card_valid(token, self._today(), self.rules.virtual_card_days):
                return Decision(token, "virtual_card_expired", patron=patron)
            if self.policy.virtual_cards == "local":
                return self._passback(Decision(token, "virtual_card", patron=patron), now)
        seen = self._admitted.get(patron)
        if seen is not None and now - seen < self.policy.anti_passback_seconds:
            return Decision(token, "already_in", patron=patron, detail=detail)
        if self.patrons is None:
            return Decision(token, "ledger_active" if active else "patron_unknown", patron=patron)
        started = time.perf_counter()
        try:
            status = await self.patrons.patron_status(patron)
        except LibrarySystemUnavailable as e:
            self.library_online = False
            ms = (time.perf_counter() - started) * 1000
            logger.warning(
                "kiosk: library system unavailable (%s); offline policy %s",
                e.message,
                self.policy.offline_mode,
            )
            return await self._offline(token, patron, now, ms)
        except CardError as e:
            # Not an outage: the library system cannot be asked about this identifier (e.g. a
            # barcode with characters SIP2 cannot carry). Nobody is admitted on it.
            logger.warning("kiosk: %s not looked up: [%s]", token.masked, e.code)
            return Decision(token, "patron_unknown", patron=patron, detail=e.code)
        ms = (time.perf_counter() - started) * 1000
        self.library_online = True
        reason = online_verdict(status, self.policy)
        return Decision(
            token,
            reason,
            screen_message=status.screen_message,
            alarm=reason == "card_lost",
            patron=patron,
            library_ms=ms,
            detail=detail,
            at=now,
        )

    async def commit(self, decision: Decision) -> None:
        """Remember an online admission for the ``cache`` offline policy.

        Called after the decision was shown and the gate told to open: the write is synced to
        disk, which a patron should not wait for (the offline queue, in contrast, is written
        before an offline decision is returned).
        """
        if decision.allow and decision.reason == "welcome" and decision.patron is not None:
            patron, at = decision.patron, decision.at
            await self._run(lambda: self.store.record_grant(patron, at))

    def _passback(self, decision: Decision, now: float) -> Decision:
        seen = self._admitted.get(decision.patron or "")
        if seen is not None and now - seen < self.policy.anti_passback_seconds:
            return replace(decision, reason="already_in")
        return decision

    def _check_ledger(self, token: Token) -> tuple[Token, Decision | None, bool]:
        """Runs on the I/O thread: (the token to ask about, a refusal or None, whether the
        ledger holds its number as a working card)."""
        assert self._ledger is not None
        ledger = self._ledger()
        if token.kind is TokenKind.LIBRARY_NUMBER:
            entry = ledger.state(token.value)
            if entry is None:
                return token, None, False  # issued elsewhere: the library system knows it
            if entry.state in _LOST_STATES:
                return token, Decision(token, "card_lost", alarm=True, patron=token.value), False
            if entry.state is not NumberState.ACTIVE:
                return token, Decision(token, "card_not_active", patron=token.value), False
            return token, None, True
        assert token.uid_hex is not None
        entries = ledger.find_by_uid(token.uid_hex)
        active = [e for e in entries if e.state is NumberState.ACTIVE]
        if active:
            number = max(active, key=lambda e: e.suffix).number
            return replace(token, kind=TokenKind.LIBRARY_NUMBER, value=number), None, True
        lost = [e for e in entries if e.state in _LOST_STATES]
        if lost:
            number = max(lost, key=lambda e: e.suffix).number
            return token, Decision(token, "card_lost", alarm=True, patron=number), False
        return token, None, False

    async def _offline(self, token: Token, patron: str, now: float, ms: float) -> Decision:
        mode = self.policy.offline_mode
        if mode == "open":
            reason = "offline_open"
        elif mode == "cache":
            since = now - self.policy.cache_hours * 3600
            cached = await self._run(lambda: self.store.granted_since(patron, since))
            reason = "offline_cached" if cached else "offline_unknown"
        else:
            reason = "library_offline"
        decision = Decision(token, reason, offline=True, patron=patron, library_ms=ms)
        # Queued (and synced) before anyone sees the decision: an admission is never lost.
        await self._run(
            lambda: self.store.queue(
                patron=patron,
                kind=token.kind.value,
                masked=token.masked,
                decision="allow" if decision.allow else "deny",
                reason=reason,
                at=now,
            )
        )
        return decision

    def _prune(self, now: float) -> None:
        if len(self._last_decided) + len(self._admitted) < 4096:
            return
        horizon = max(self.policy.debounce_seconds, self.policy.anti_passback_seconds)
        self._last_decided = {k: t for k, t in self._last_decided.items() if now - t < horizon}
        self._admitted = {k: t for k, t in self._admitted.items() if now - t < horizon}
