# SPDX-License-Identifier: Apache-2.0
"""`cardd rfid uid`, `cardd card ...` and `cardd ledger ...` as separate processes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from cardd.sim.cards.faults import FaultyCard
from tests.helpers import READER0, READER1, fixture_card, wait_card

pytestmark = pytest.mark.pcsc


@pytest.fixture
def env(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('[student_card]\nsector = 14\nkey_a = "A0A1A2A3A4A5"\nkey_b = "B0B1B2B3B4B5"\n')
    keys.chmod(0o600)
    config = tmp_path / "cardd.toml"
    config.write_text(f'[rfid]\nkey_file = "{keys}"\nstation = "desk"\n')
    return dict(os.environ, CARDD_CONFIG=str(config), CARDD_STATE_DIR=str(tmp_path / "state"))


def cardd(env, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "cardd.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_uid_of_card_on_reader(env, vreaders):
    vreaders[1].insert(fixture_card("easycard_7b.json"))
    wait_card(READER1, present=True)
    out = cardd(env, "rfid", "uid", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["reader"] == READER1 and data["uid"]["decLE"] == "69495546249912580"


def test_uid_times_out_cleanly(env, vreaders):
    out = cardd(env, "rfid", "uid", "--timeout", "1")
    assert out.returncode == 9 and "timeout" in out.stderr and "Traceback" not in out.stderr


def test_burn_read_lost_show_history_export(env, vreaders):
    vreaders[0].insert(fixture_card("classic_1k_student.json"))
    wait_card(READER0, present=True)
    burn = cardd(env, "card", "burn", "--id", "A123456789", "-r", READER0, "--operator", "alice")
    assert burn.returncode == 0, burn.stderr
    assert "A12*****8900" in burn.stdout and "A123456789" not in burn.stdout
    read = json.loads(cardd(env, "card", "read", "-r", READER0, "--json").stdout)
    assert (read["record"], read["ledgerState"]) == ("valid", "active")
    again = cardd(env, "card", "burn", "--id", "A123456789", "-r", READER0)
    assert again.returncode == 0 and "already carries" in again.stdout
    bad = cardd(env, "card", "burn", "--id", "A123456788", "-r", READER0)
    assert bad.returncode == 2 and "id_invalid" in bad.stderr and "A123456788" not in bad.stderr
    assert cardd(env, "card", "report-lost", "A12345678900").returncode == 0
    show = json.loads(cardd(env, "ledger", "show", "A123456789", "--json").stdout)
    assert [(r["libraryNumber"], r["state"]) for r in show] == [("A12345678900", "lost")]
    history = json.loads(cardd(env, "ledger", "history", "A123456789", "--json").stdout)
    assert [h["to"] for h in history][-1] == "lost" and history[0]["operator"] == "alice"
    exported = list(csv.DictReader(io.StringIO(cardd(env, "ledger", "export").stdout)))
    assert exported[0]["libraryNumber"] == "A12345678900" and exported[0]["uid"] == "93A131C0"


def test_resolve_commits_or_voids_pending_numbers(env, vreaders):
    card = FaultyCard(fixture_card("classic_1k_student.json"))
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    card.remove_on_next(lambda apdu: apdu[:2] == b"\xff\xd6", after_processing=False)
    pulled = cardd(env, "card", "burn", "--id", "A123456789", "-r", READER0)
    assert pulled.returncode == 7, pulled.stderr  # card_removed
    listed = cardd(env, "ledger", "resolve")
    assert listed.returncode == 1 and "pending" in listed.stdout
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    done = cardd(env, "ledger", "resolve")
    assert done.returncode == 0 and "voided" in done.stdout, done.stdout + done.stderr
    assert cardd(env, "ledger", "resolve").stdout.strip() == "nothing pending"
    burn = cardd(env, "card", "burn", "--id", "A123456789", "-r", READER0)
    assert "A12*****8901" in burn.stdout  # suffix 00 was voided and is never reused
