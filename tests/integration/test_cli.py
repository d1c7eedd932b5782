# SPDX-License-Identifier: Apache-2.0
"""The technician CLI as a person runs it: separate processes against the real pcscd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import FIXTURES, READER0, READER1, fixture_card, wait_card

pytestmark = pytest.mark.pcsc


def cardd(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardd.cli.main", *args],
        capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ),
    )


def test_readers_json_and_table(vreaders):
    vreaders[1].insert(fixture_card("desfire.json"))
    wait_card(READER1, present=True)
    out = cardd("readers", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["readers"]}
    assert rows[READER1]["cardType"] == "iso14443_4" and rows[READER1]["atr"] == "3B8180018080"
    assert rows[READER0]["cardPresent"] is False
    table = cardd("readers")
    assert table.returncode == 0 and READER1 in table.stdout and "Traceback" not in table.stderr


def test_apdu_with_status_assertions(vreaders):
    vreaders[0].insert(fixture_card("easycard_4b.json"))
    wait_card(READER0, present=True)
    ok = cardd("apdu", "-r", "00 00", "FFCA000000=9000")
    assert ok.returncode == 0, ok.stderr
    assert "93 A1 31 C0 9000" in ok.stdout
    bad = cardd("apdu", "-r", "00 00", "FFCA010000=9000")  # ATS of a storage card: 6A81
    assert bad.returncode == 10
    assert "apdu_failed" in bad.stderr and "6A81" in bad.stderr and "Traceback" not in bad.stderr
    keys = cardd("apdu", "-r", "00 00", "FF82000006A0A1A2A3A4A5")
    assert "A0 A1 A2" not in keys.stdout  # keys never printed


def test_apdu_errors_are_clean(vreaders):
    no_card = cardd("apdu", "-r", READER0, "FFCA000000")
    assert no_card.returncode == 6 and "no_card" in no_card.stderr and "Traceback" not in no_card.stderr
    ambiguous = cardd("apdu", "FFCA000000")
    assert ambiguous.returncode == 2 and "--reader" in ambiguous.stderr
    garbage = cardd("apdu", "-r", READER0, "nothex")
    assert garbage.returncode == 2 and "not an APDU" in garbage.stderr


def test_watch_prints_events_with_timestamps(vreaders):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardd.cli.main", "watch", "--json", "-t", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.0)
        vreaders[0].insert(fixture_card("classic_4k_blank.json"))
        wait_card(READER0, present=True)
        vreaders[0].remove()
        wait_card(READER0, present=False)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    mine = [(e["type"], e.get("cardType")) for e in events if e.get("reader") == READER0]
    assert mine == [("reader.added", None), ("card.inserted", "mifare_classic_4k"), ("card.removed", None)]
    assert all(isinstance(e["time"], float) for e in events)


def test_sim_control_insert_swap_fault_remove(pcscd, tmp_path):
    sock = tmp_path / "sim.sock"
    base = ["--control", str(sock)]
    server = subprocess.Popen(
        [sys.executable, "-m", "cardd.cli.main", "sim", *base, "serve", "--port", str(pcscd.vpcd_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        assert cardd("sim", *base, "insert", "0", str(FIXTURES / "cards" / "easycard_4b.json")).returncode == 0
        wait_card(READER0, present=True)
        assert cardd("apdu", "-r", READER0, "FFCA000000=9000").returncode == 0
        assert cardd("sim", *base, "fault", "0", "sw", "--sw", "6F00").returncode == 0
        assert "6F00" in cardd("apdu", "-r", READER0, "FFCA000000=6F00").stdout
        swap = cardd("sim", *base, "swap", "0", str(FIXTURES / "cards" / "desfire.json"))
        assert swap.returncode == 0, swap.stderr
        assert wait_card(READER0, present=True) == bytes.fromhex("3B8180018080")
        status = json.loads(cardd("sim", *base, "status").stdout)
        assert status["slots"][0]["card"] == "desfire.json"
        refused = cardd("sim", *base, "insert", "0", str(FIXTURES / "cards" / "easycard_4b.json"))
        assert refused.returncode == 2 and "already holds a card" in refused.stderr
        assert cardd("sim", *base, "remove", "0").returncode == 0
        wait_card(READER0, present=False)
    finally:
        server.terminate()
        server.wait(10)
    assert not sock.exists()
    gone = cardd("sim", *base, "status")
    assert gone.returncode == 4 and "cardd sim serve" in gone.stderr


def test_diag_without_pcscd_reports_pcsc_and_still_the_rest(tmp_path):
    env = dict(os.environ, PCSCLITE_CSOCK_NAME=str(tmp_path / "nothing-here.comm"))
    out = cardd("diag", "--json", env=env)
    assert out.returncode == 1
    report = json.loads(out.stdout)
    sections = report["sections"]
    assert sections["pcsc"]["status"] == "fail"
    assert "pcscd not reachable" in sections["pcsc"]["summary"]
    assert any("pcscd" in step for step in sections["pcsc"]["nextSteps"])
    for name in ("versions", "config", "vpcd", "nfc", "serial", "permissions"):
        assert sections[name]["status"] != "fail", (name, sections[name])
    human = cardd("diag", env=env)
    assert "pcsc" in human.stdout and "next step" in human.stdout and "Traceback" not in human.stderr


def test_diag_with_pcscd_lists_readers_and_cards(vreaders):
    vreaders[0].insert(fixture_card("../moica/card.json"))
    wait_card(READER0, present=True)
    report = json.loads(cardd("diag", "--json").stdout)
    readers = {r["name"]: r for r in report["sections"]["pcsc"]["details"]}
    assert readers[READER0]["card"]["card_type"] == "moica_gen1"


def test_diag_reports_a_broken_config_without_dying(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nhost = '0.0.0.0'\n")
    report = json.loads(cardd("--config", str(bad), "diag", "--json").stdout)
    assert report["sections"]["config"]["status"] == "fail"
    assert "loopback" in report["sections"]["config"]["summary"]
    assert report["sections"]["versions"]["status"] == "info"


def test_serve_refuses_a_bad_config_cleanly(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nhost = '0.0.0.0'\n")
    out = cardd("--config", str(bad), "serve")
    assert out.returncode == 3 and "config_invalid" in out.stderr and "Traceback" not in out.stderr
