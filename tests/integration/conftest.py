# SPDX-License-Identifier: Apache-2.0
"""Integration fixtures: a private PostgreSQL cluster (tests/pg.py) for the ledger tests.

``pg_url`` is one database for the session; ``pg_fresh_url`` is a new, empty database per test
(dropped afterwards), for tests that need a clean ledger. Without PostgreSQL the tests are
skipped, or fail under CI.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.pg import PrivatePostgres


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivatePostgres]:
    reason = PrivatePostgres.usable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot run: {reason}")
        pytest.skip(reason)
    pg = PrivatePostgres().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def pg_url(pg_cluster: PrivatePostgres) -> str:
    return pg_cluster.create_database("cardd_test")


@pytest.fixture
def pg_fresh_url(pg_cluster: PrivatePostgres) -> Iterator[str]:
    name = f"cardd_{uuid.uuid4().hex[:12]}"
    url = pg_cluster.create_database(name)
    yield url
    pg_cluster.drop_database(name)
