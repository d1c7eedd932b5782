# SPDX-License-Identifier: Apache-2.0
"""What the library system says about a patron: the contract between the SIP2 client
(cardd.kiosk.sip2) and the kiosk's decisions (cardd.kiosk.decide).

The 14 patron-status flags are those of SIP2 messages 24 and 64 (kiosk.md §1.3); any other
library-system client (NCIP, a REST API) answers with the same dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: SIP2 patron status positions 1..14, in order (Evergreen patron_status_string, Koha Patron.pm)
STATUS_FLAGS: tuple[str, ...] = (
    "charge_privileges_denied",
    "renewal_privileges_denied",
    "recall_privileges_denied",
    "hold_privileges_denied",
    "card_reported_lost",
    "too_many_items_charged",
    "too_many_items_overdue",
    "too_many_renewals",
    "too_many_claims_of_items_returned",
    "too_many_items_lost",
    "excessive_outstanding_fines",
    "excessive_outstanding_fees",
    "recall_overdue",
    "too_many_items_billed",
)


@dataclass(frozen=True)
class PatronStatus:
    """One patron lookup's answer. ``flags`` holds the names from STATUS_FLAGS that are set."""

    patron_id: str
    #: BL: the library system knows this patron (None when the reply had no BL field)
    valid: bool | None
    flags: frozenset[str] = frozenset()
    #: AE
    personal_name: str = ""
    #: AF: always shown to the patron (kiosk.md §1.2)
    screen_message: str = ""
    #: the reply had the unknown-patron shape (Evergreen: YYYY + blanks, empty AE, BL N)
    unknown_shape: bool = False

    @property
    def card_reported_lost(self) -> bool:
        return "card_reported_lost" in self.flags

    @property
    def charge_privileges_denied(self) -> bool:
        return "charge_privileges_denied" in self.flags

    @classmethod
    def from_status_field(
        cls,
        patron_id: str,
        status: str,
        *,
        valid: bool | None,
        personal_name: str = "",
        screen_message: str = "",
    ) -> PatronStatus:
        """Build from the 14-character status field: 'Y' at a position sets that flag."""
        flags = frozenset(name for name, ch in zip(STATUS_FLAGS, status, strict=False) if ch == "Y")
        unknown = status[:4] == "YYYY" and not personal_name.strip() and valid is False
        return cls(patron_id, valid, flags, personal_name, screen_message, unknown)


class PatronSource(Protocol):
    """Anything the kiosk can ask about a patron. Raises cardd.errors.LibrarySystemUnavailable
    when the library system cannot answer (the kiosk then applies its offline policy)."""

    async def patron_status(self, patron_id: str) -> PatronStatus: ...
