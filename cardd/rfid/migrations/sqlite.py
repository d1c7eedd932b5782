# SPDX-License-Identifier: Apache-2.0
"""SQLite schema of the issuance ledger (see the package docstring for the rules)."""

from __future__ import annotations

from cardd.rfid.migrations import Migration, check_order

_STATES = "('pending', 'active', 'superseded', 'lost', 'void')"

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "ids, numbers and the audit log",
        (
            # One row per ID number: the row a burn locks (PostgreSQL) and the highest suffix
            # ever handed out, so that a suffix is never reused even if numbers were removed.
            """CREATE TABLE ledger_ids (
                id_number   TEXT PRIMARY KEY CHECK (length(id_number) = 10),
                last_suffix INTEGER CHECK (last_suffix BETWEEN 0 AND 99),
                created_at  TEXT NOT NULL,
                updated_at  TEXT NOT NULL
            )""",
            f"""CREATE TABLE ledger_numbers (
                number      TEXT PRIMARY KEY,
                id_number   TEXT NOT NULL REFERENCES ledger_ids (id_number),
                suffix      INTEGER NOT NULL CHECK (suffix BETWEEN 0 AND 99),
                state       TEXT NOT NULL CHECK (state IN {_STATES}),
                uid         TEXT,
                supersedes  TEXT REFERENCES ledger_numbers (number),
                station     TEXT NOT NULL,
                operator    TEXT NOT NULL,
                reserved_at TEXT NOT NULL,
                issued_at   TEXT,
                updated_at  TEXT NOT NULL,
                UNIQUE (id_number, suffix),
                CHECK (number = id_number || printf('%02d', suffix)),
                CHECK (state IN ('pending', 'void') OR (uid IS NOT NULL AND issued_at IS NOT NULL))
            )""",
            # At most one burn in progress per ID ...
            "CREATE UNIQUE INDEX ledger_numbers_one_pending ON ledger_numbers (id_number)"
            " WHERE state = 'pending'",
            # ... and at most one live card (active, or active and then reported lost) per ID.
            "CREATE UNIQUE INDEX ledger_numbers_one_live ON ledger_numbers (id_number)"
            " WHERE state IN ('active', 'lost')",
            "CREATE INDEX ledger_numbers_uid ON ledger_numbers (uid) WHERE uid IS NOT NULL",
            "CREATE INDEX ledger_numbers_pending ON ledger_numbers (reserved_at)"
            " WHERE state = 'pending'",
            f"""CREATE TABLE ledger_audit (
                seq        INTEGER PRIMARY KEY AUTOINCREMENT,
                at         TEXT NOT NULL,
                id_number  TEXT NOT NULL,
                number     TEXT NOT NULL REFERENCES ledger_numbers (number),
                from_state TEXT CHECK (from_state IN {_STATES}),
                to_state   TEXT NOT NULL CHECK (to_state IN {_STATES}),
                uid        TEXT,
                station    TEXT NOT NULL,
                operator   TEXT NOT NULL,
                detail     TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX ledger_audit_id ON ledger_audit (id_number, seq)",
            "CREATE INDEX ledger_audit_number ON ledger_audit (number, seq)",
        ),
    ),
    Migration(
        2,
        "database-enforced rules: append-only audit, legal transitions, no reuse",
        (
            """CREATE TRIGGER ledger_audit_no_update BEFORE UPDATE ON ledger_audit
            BEGIN SELECT RAISE(ABORT, 'ledger_audit is append-only'); END""",
            """CREATE TRIGGER ledger_audit_no_delete BEFORE DELETE ON ledger_audit
            BEGIN SELECT RAISE(ABORT, 'ledger_audit is append-only'); END""",
            """CREATE TRIGGER ledger_numbers_no_delete BEFORE DELETE ON ledger_numbers
            BEGIN SELECT RAISE(ABORT, 'ledger numbers are never deleted (suffixes are not reused)'); END""",
            """CREATE TRIGGER ledger_ids_no_delete BEFORE DELETE ON ledger_ids
            BEGIN SELECT RAISE(ABORT, 'ledger ids are never deleted (suffixes are not reused)'); END""",
            """CREATE TRIGGER ledger_ids_suffix_monotonic BEFORE UPDATE OF last_suffix ON ledger_ids
            WHEN OLD.last_suffix IS NOT NULL
                 AND (NEW.last_suffix IS NULL OR NEW.last_suffix < OLD.last_suffix)
            BEGIN SELECT RAISE(ABORT, 'ledger: last_suffix never decreases'); END""",
            """CREATE TRIGGER ledger_numbers_identity BEFORE UPDATE OF number, id_number, suffix
            ON ledger_numbers
            WHEN NEW.number IS NOT OLD.number OR NEW.id_number IS NOT OLD.id_number
                 OR NEW.suffix IS NOT OLD.suffix
            BEGIN SELECT RAISE(ABORT, 'ledger: a number never changes its ID or suffix'); END""",
            """CREATE TRIGGER ledger_numbers_transition BEFORE UPDATE OF state ON ledger_numbers
            WHEN NEW.state IS NOT OLD.state AND NOT (
                   (OLD.state = 'pending' AND NEW.state IN ('active', 'void'))
                OR (OLD.state = 'active' AND NEW.state IN ('lost', 'superseded'))
                OR (OLD.state = 'lost' AND NEW.state = 'superseded'))
            BEGIN SELECT RAISE(ABORT, 'ledger: invalid state transition'); END""",
            """CREATE TRIGGER ledger_numbers_uid_once BEFORE UPDATE OF uid ON ledger_numbers
            WHEN OLD.uid IS NOT NULL AND NEW.uid IS NOT OLD.uid
            BEGIN SELECT RAISE(ABORT, 'ledger: a bound card UID never changes'); END""",
        ),
    ),
]

check_order(MIGRATIONS)
