# SPDX-License-Identifier: Apache-2.0
"""PostgreSQL schema of the issuance ledger (see the package docstring for the rules).

Equivalent to the SQLite schema, version for version. The rule triggers raise SQLSTATE 23001
(restrict_violation) for forbidden UPDATE/DELETE/TRUNCATE and 23514 (check_violation) for an
illegal state change, so the backend can tell them apart.
"""

from __future__ import annotations

from cardd.rfid.migrations import Migration, check_order

_STATES = "('pending', 'active', 'superseded', 'lost', 'void')"

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "ids, numbers and the audit log",
        (
            """CREATE TABLE ledger_ids (
                id_number   text PRIMARY KEY CHECK (char_length(id_number) = 10),
                last_suffix smallint CHECK (last_suffix BETWEEN 0 AND 99),
                created_at  timestamptz NOT NULL,
                updated_at  timestamptz NOT NULL
            )""",
            f"""CREATE TABLE ledger_numbers (
                number      text PRIMARY KEY,
                id_number   text NOT NULL REFERENCES ledger_ids (id_number),
                suffix      smallint NOT NULL CHECK (suffix BETWEEN 0 AND 99),
                state       text NOT NULL CHECK (state IN {_STATES}),
                uid         text,
                supersedes  text REFERENCES ledger_numbers (number),
                station     text NOT NULL,
                operator    text NOT NULL,
                reserved_at timestamptz NOT NULL,
                issued_at   timestamptz,
                updated_at  timestamptz NOT NULL,
                UNIQUE (id_number, suffix),
                CHECK (number = id_number || lpad(suffix::text, 2, '0')),
                CHECK (state IN ('pending', 'void') OR (uid IS NOT NULL AND issued_at IS NOT NULL))
            )""",
            "CREATE UNIQUE INDEX ledger_numbers_one_pending ON ledger_numbers (id_number)"
            " WHERE state = 'pending'",
            "CREATE UNIQUE INDEX ledger_numbers_one_live ON ledger_numbers (id_number)"
            " WHERE state IN ('active', 'lost')",
            "CREATE INDEX ledger_numbers_uid ON ledger_numbers (uid) WHERE uid IS NOT NULL",
            "CREATE INDEX ledger_numbers_pending ON ledger_numbers (reserved_at)"
            " WHERE state = 'pending'",
            f"""CREATE TABLE ledger_audit (
                seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at         timestamptz NOT NULL,
                id_number  text NOT NULL,
                number     text NOT NULL REFERENCES ledger_numbers (number),
                from_state text CHECK (from_state IN {_STATES}),
                to_state   text NOT NULL CHECK (to_state IN {_STATES}),
                uid        text,
                station    text NOT NULL,
                operator   text NOT NULL,
                detail     text NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX ledger_audit_id ON ledger_audit (id_number, seq)",
            "CREATE INDEX ledger_audit_number ON ledger_audit (number, seq)",
        ),
    ),
    Migration(
        2,
        "database-enforced rules: append-only audit, legal transitions, no reuse",
        (
            """CREATE FUNCTION ledger_reject() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION USING MESSAGE = TG_ARGV[0], ERRCODE = TG_ARGV[1];
            END
            $$""",
            """CREATE TRIGGER ledger_audit_append_only BEFORE UPDATE OR DELETE ON ledger_audit
            FOR EACH ROW EXECUTE FUNCTION ledger_reject('ledger_audit is append-only', '23001')""",
            """CREATE TRIGGER ledger_audit_no_truncate BEFORE TRUNCATE ON ledger_audit
            FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject('ledger_audit is append-only', '23001')""",
            """CREATE TRIGGER ledger_numbers_no_delete BEFORE DELETE ON ledger_numbers
            FOR EACH ROW EXECUTE FUNCTION
                ledger_reject('ledger numbers are never deleted (suffixes are not reused)', '23001')""",
            """CREATE TRIGGER ledger_numbers_no_truncate BEFORE TRUNCATE ON ledger_numbers
            FOR EACH STATEMENT EXECUTE FUNCTION
                ledger_reject('ledger numbers are never deleted (suffixes are not reused)', '23001')""",
            """CREATE TRIGGER ledger_ids_no_delete BEFORE DELETE ON ledger_ids
            FOR EACH ROW EXECUTE FUNCTION
                ledger_reject('ledger ids are never deleted (suffixes are not reused)', '23001')""",
            """CREATE TRIGGER ledger_ids_no_truncate BEFORE TRUNCATE ON ledger_ids
            FOR EACH STATEMENT EXECUTE FUNCTION
                ledger_reject('ledger ids are never deleted (suffixes are not reused)', '23001')""",
            """CREATE TRIGGER ledger_ids_suffix_monotonic BEFORE UPDATE OF last_suffix ON ledger_ids
            FOR EACH ROW WHEN (OLD.last_suffix IS NOT NULL
                               AND (NEW.last_suffix IS NULL OR NEW.last_suffix < OLD.last_suffix))
            EXECUTE FUNCTION ledger_reject('ledger: last_suffix never decreases', '23514')""",
            """CREATE TRIGGER ledger_numbers_identity BEFORE UPDATE OF number, id_number, suffix
            ON ledger_numbers
            FOR EACH ROW WHEN (NEW.number IS DISTINCT FROM OLD.number
                               OR NEW.id_number IS DISTINCT FROM OLD.id_number
                               OR NEW.suffix IS DISTINCT FROM OLD.suffix)
            EXECUTE FUNCTION ledger_reject('ledger: a number never changes its ID or suffix', '23514')""",
            """CREATE TRIGGER ledger_numbers_transition BEFORE UPDATE OF state ON ledger_numbers
            FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state AND NOT (
                   (OLD.state = 'pending' AND NEW.state IN ('active', 'void'))
                OR (OLD.state = 'active' AND NEW.state IN ('lost', 'superseded'))
                OR (OLD.state = 'lost' AND NEW.state = 'superseded')))
            EXECUTE FUNCTION ledger_reject('ledger: invalid state transition', '23514')""",
            """CREATE TRIGGER ledger_numbers_uid_once BEFORE UPDATE OF uid ON ledger_numbers
            FOR EACH ROW WHEN (OLD.uid IS NOT NULL AND NEW.uid IS DISTINCT FROM OLD.uid)
            EXECUTE FUNCTION ledger_reject('ledger: a bound card UID never changes', '23514')""",
        ),
    ),
]

check_order(MIGRATIONS)
