# SPDX-License-Identifier: Apache-2.0
"""Schema migrations of the issuance ledger, one ordered list per database.

Migrations are Python data (not ``.sql`` files) so that they ship with the package without a
package-data entry, and so that each one is a list of single statements: no SQL splitting, and
PL/pgSQL bodies with their own semicolons need no special handling.

Rules for adding one:

- append a ``Migration`` with the next version to *both* lists (keep the two schemas equivalent);
- never edit or reorder a migration that has been released: a station that already applied it
  would not see the change;
- each migration runs in one transaction together with its ``ledger_schema_version`` row, so it
  is applied completely or not at all.

A database whose highest version is above the code's ``latest_version`` is refused
(``LedgerSchemaTooNew``): an older cardd must not write to a ledger whose rules it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


def latest_version(migrations: list[Migration]) -> int:
    return migrations[-1].version if migrations else 0


def check_order(migrations: list[Migration]) -> None:
    """Versions must be 1, 2, 3, … with no gap; a mistake here is a programming error."""
    for expected, m in enumerate(migrations, start=1):
        if m.version != expected:
            raise RuntimeError(f"ledger migration list out of order at version {m.version}")
