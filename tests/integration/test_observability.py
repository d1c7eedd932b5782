# SPDX-License-Identifier: Apache-2.0
"""Metrics, JSON logs without secrets, and the support bundle, on a real `cardd serve`.

One daemon for the module, on the private pcscd with virtual cards: a student card (MIFARE
Classic, its sector keys in the key file) and a MOICA gen1 card whose PKCS#11 side is SoftHSM2.
The daemon logs at DEBUG with TRAFFIC in JSON. The operations are done once (``exercised``):
a tap, a burn, a refused second burn, a read, a MOICA read, an authentication with the right
PIN and one with a wrong PIN; the tests then check the metrics scraped before and after, every
line of the log, and a support bundle made afterwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tarfile

import aiohttp
import pytest

from cardd.sim.cards.moica import MoicaGen1Card
from cardd.sim.revocation_server import RevocationServer
from cardd.sim.softhsm import provision_token, softhsm_unusable
from cardd.sim.testpki import PkiEndpoints, make_test_pki
from cardd.sim.vpcd import VirtualReaders
from tests.helpers import READER0, READER1, fixture_card, wait_card
from tests.integration.observe_helpers import Daemon, Sse, free_port, value, wait_metric

pytestmark = pytest.mark.pcsc

ORIGIN = "https://library.example.tw"
PIN, WRONG_PIN = "246810", "975319"
ID, OTHER_ID = "A123456789", "B120000008"
KEY_A, KEY_B = "A0A1A2A3A4A5", "B0B1B2B3B4B5"  # the student card fixture's record sector keys


@pytest.fixture(scope="module")
def world(tmp_path_factory, pcscd):
    reason = softhsm_unusable()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("observe")
    pki_port = free_port()
    pki = make_test_pki(endpoints=PkiEndpoints.at(f"http://127.0.0.1:{pki_port}"))
    server = RevocationServer(pki, port=pki_port)
    server.start()
    identity = pki.issue_citizen("王小明", "1234567890123456", ID[-4:])
    token = provision_token(identity, tmp / "hsm", label="citizen", pin=PIN)
    keys = tmp / "keys.toml"
    keys.write_text(f'[student_card]\nsector = 14\nkey_a = "{KEY_A}"\nkey_b = "{KEY_B}"\n')
    keys.chmod(0o600)
    port = free_port()
    config = (
        f'[rfid]\nkey_file = "{keys}"\nstation = "desk-observe"\n'
        f"[api]\nport = {port}\n"
        f'[api.origins."{ORIGIN}"]\nscopes = ["readers", "moica", "rfid:read"]\n'
        f'[moica]\npkcs11_module = "{token.module_path}"\n'
        '[log]\nlevel = "debug"\ntraffic = true\nformat = "json"\n'
    )
    daemon = Daemon(tmp, config, port=port, env=token.env())
    readers = VirtualReaders(port=pcscd.vpcd_port)
    card = MoicaGen1Card(
        "TP03000000000001", [pki.moica.der(), identity.encryption.der(), identity.signing.der()]
    )
    yield {
        "daemon": daemon,
        "readers": readers,
        "moica_card": card,
        "tmp": tmp,
        "keys": keys,
        "token": token,
        "identity": identity,
    }
    readers.remove_all()
    for name in (READER0, READER1):
        try:
            wait_card(name, present=False, timeout=3)
        except Exception:
            pass
    daemon.stop()
    server.stop()


async def _exercise(w) -> dict:
    d: Daemon = w["daemon"]
    readers = w["readers"]
    out: dict = {"before": await d.metrics()}
    async with aiohttp.ClientSession() as s:
        async with s.get(d.url + "/v1/events", headers=d.auth) as r:
            sse = Sse(r)
            assert (await sse.next())[0] == "hello"
            out["with_sse"] = await d.metrics()
    # the tap (the student card arriving on a contactless reader), then the card operations
    readers[1].insert(fixture_card("classic_1k_student.json"))
    wait_card(READER1, present=True)
    await wait_metric(
        d,
        lambda m: (
            value(m, "cardd_operations_total", operation="tag.read", result="ok")
            > value(out["before"], "cardd_operations_total", operation="tag.read", result="ok")
        ),
    )
    out["burn"] = await d.post("/v1/student-card/burn", {"idNumber": ID, "reader": READER1})
    # another person's number onto this card: refused inside the operation (card_in_use)
    out["burn_other"] = await d.post(
        "/v1/student-card/burn", {"idNumber": OTHER_ID, "reader": READER1}
    )
    out["read"] = await d.post("/v1/student-card/read", {"reader": READER1})
    readers[0].insert(w["moica_card"])
    wait_card(READER0, present=True)
    await wait_metric(
        d, lambda m: sum(v for k, v in m.items() if k[0] == "cardd_readers_card_present") == 2
    )
    out["moica_read"] = await d.post("/v1/moica/read", {"reader": READER0}, {"Origin": ORIGIN})
    from cardd.moica.verify import NonceStore

    nonce = NonceStore().issue()
    out["auth_ok"] = await d.post(
        "/v1/moica/authenticate", {"nonce": nonce, "origin": ORIGIN, "pin": PIN, "reader": READER0}
    )
    out["auth_bad"] = await d.post(
        "/v1/moica/authenticate",
        {"nonce": nonce, "origin": ORIGIN, "pin": WRONG_PIN, "reader": READER0},
    )
    # Ledger counts are cached for a few seconds; the SSE stream's end is noticed at its next write.
    out["after"] = await wait_metric(
        d,
        lambda m: (
            value(m, "cardd_ledger_numbers", state="active") >= 1
            and value(m, "cardd_event_subscribers", transport="sse") == 0
        ),
    )
    return out


@pytest.fixture(scope="module")
def exercised(world):
    return asyncio.run(_exercise(world))


def test_operations_answered_as_expected(exercised):
    assert exercised["burn"][0] == 200, exercised["burn"]
    assert exercised["burn_other"][1]["error"]["code"] == "card_in_use"
    assert exercised["read"][0] == 200 and exercised["read"][1]["ledgerState"] == "active"
    assert exercised["moica_read"][0] == 200
    assert exercised["auth_ok"][0] == 200, exercised["auth_ok"]
    assert exercised["auth_bad"][1]["error"]["code"] == "pin_incorrect"


def test_metrics_follow_real_operations(exercised):
    b, a = exercised["before"], exercised["after"]

    def delta(name, **labels):
        return value(a, name, **labels) - value(b, name, **labels)

    assert delta("cardd_taps_total", backend="pcsc") == 1  # the MOICA card is a contact card
    ops = "cardd_operations_total"
    assert delta(ops, operation="tag.read", result="ok") == 1
    assert delta(ops, operation="student-card.burn", result="ok") == 1
    assert delta(ops, operation="student-card.burn", result="card_in_use") == 1
    assert delta(ops, operation="student-card.read", result="ok") == 1
    assert delta(ops, operation="moica.read", result="ok") == 1
    assert delta(ops, operation="moica.authenticate", result="ok") == 1
    assert delta(ops, operation="moica.authenticate", result="pin_incorrect") == 1
    assert delta("cardd_operation_duration_seconds_count", operation="student-card.burn") == 2
    assert value(
        a, "cardd_operation_duration_seconds_bucket", operation="student-card.burn", le="+Inf"
    ) == value(a, "cardd_operation_duration_seconds_count", operation="student-card.burn")
    assert delta("cardd_events_published_total", type="card.inserted") == 2
    assert delta("cardd_events_published_total", type="tag.tapped") == 1
    assert delta("cardd_events_published_total", type="operation.finished") >= 6
    readers = {k: v for k, v in a.items() if k[0] == "cardd_readers"}
    assert sum(readers.values()) == 2 and all(dict(k[1])["backend"] == "pcsc" for k in readers)
    assert value(a, "cardd_backend_up", backend="pcsc") == 1
    assert value(a, "cardd_ledger_numbers", state="active") == 1
    assert value(exercised["with_sse"], "cardd_event_subscribers", transport="sse") == 1
    assert value(a, "cardd_event_subscribers", transport="sse") == 0
    assert any(k[0] == "cardd_build_info" for k in a)
    assert a[("cardd_process_start_time_seconds", ())] > 1.6e9
    # bounded cardinality: nothing card- or person-specific became a label
    labels = " ".join(f"{k[1]}" for k in a)
    assert "93A131C0" not in labels and ID[:3] not in labels and READER1 not in labels


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1/diag/events"])
async def test_token_callers_only_never_browsers(world, path):
    d: Daemon = world["daemon"]
    status, body, _ = await d.get(path, {"Origin": ORIGIN})  # allowlisted, still refused
    assert status == 403 and json.loads(body)["error"]["code"] == "local_only"
    status, body, _ = await d.get(path, {"Origin": ORIGIN, **d.auth})
    assert status == 403 and json.loads(body)["error"]["code"] == "local_only"
    status, body, _ = await d.get(path, {"Origin": "https://evil.example"})
    assert status == 403
    status, body, _ = await d.get(
        path, {**d.auth, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    )
    assert status == 403
    status, _, _ = await d.get(path, {})
    assert status == 401
    status, body, _ = await d.get(path, d.auth)
    assert status == 200 and body


def _secret_forms() -> list[str]:
    return [
        PIN,
        WRONG_PIN,
        ID,
        ID.lower(),
        ID.encode().hex(),
        OTHER_ID,
        KEY_A.lower(),
        KEY_B.lower(),
    ]


def _assert_clean(text: str, where: str) -> None:
    # hex in any case, with or without separators, or as bytes escapes
    squashed = re.sub(r"[\s:\-]|\\x", "", text.lower())
    for secret in _secret_forms():
        assert secret not in text, f"{secret!r} in {where}"
        assert secret.lower() not in squashed, f"{secret!r} (squashed) in {where}"


def test_no_secret_in_any_log_line(world, exercised):
    d: Daemon = world["daemon"]
    lines = d.log_text().splitlines()
    records = []
    for line in lines:
        _assert_clean(line, f"log line {line[:200]!r}")
        if line.startswith("{"):
            records.append(json.loads(line))  # every log line is one JSON object
        else:
            assert line.startswith("cardd ") and "serving on" in line, line  # the one stdout line
    levels = {r["level"] for r in records}
    assert {"traffic", "debug", "info"} <= levels  # the log was as verbose as it gets
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any("MIFARE key file" in r["message"] for r in records)  # the key file load
    assert any("FF 82" in r["message"] for r in records)  # LOAD KEYS went by, redacted
    assert sum("C_Login" in r["message"] for r in records) >= 2  # the right and the wrong PIN
    assert any("A12*****89" in json.dumps(r, ensure_ascii=False) for r in records)


def test_careless_callers_cannot_leak_through_the_layer(world, exercised):
    """The daemon's own code never hands secrets to a logger (above); here a careless caller does,
    in every form, during real operations in this process, and the layer still scrubs them.

    Mutation check: with :func:`cardd.log.redact` returning its input, this test fails.
    """
    import io
    import logging

    from cardd.log import setup_logging
    from cardd.readers.pcsc import PcscBackend
    from cardd.rfid.burn import StudentCards
    from cardd.rfid.keys import load_key_file
    from cardd.rfid.ledger import open_ledger

    stream = io.StringIO()
    setup_logging("debug", traffic=True, stream=stream, fmt="json")
    careless = logging.getLogger("careless.caller")
    try:
        keys = load_key_file(world["keys"])  # a real key file load registers its keys
        careless.debug("loaded %r %r", keys.key_a, keys.key_b)
        careless.info(
            "keys %s / %s",
            keys.key_a.hex(),
            keys.key_b.hex(" ").upper(),
            extra={"detail": keys.key_a.hex(":")},
        )
        ledger = open_ledger(world["tmp"] / "careless.sqlite3")
        with PcscBackend().connect(READER1) as conn:  # the student card the daemon burned
            record = StudentCards(keys, ledger, station="careless").read(conn, reader=READER1)
        careless.info("read %s for %s (%r)", record.record.number, ID, ID.encode().hex())
        ledger.close()

        # During C_Login the PIN is in scope: a record logged then (by anyone) is scrubbed.
        cert = world["tmp"] / "signing.der"
        cert.write_bytes(world["identity"].signing.der())
        signed = subprocess.run(
            [sys.executable, "-m", "tests.integration.careless_pin",
             world["token"].module_path, str(cert)],
            env=dict(os.environ, **world["token"].env(), CARELESS_PIN=PIN),
            capture_output=True, text=True, timeout=60,
        )
        assert signed.returncode == 0, signed.stderr[-2000:]
        stream.write(signed.stderr)
    finally:
        setup_logging("warning")
    text = stream.getvalue()
    assert text.count("careless.caller") >= 4 and "the PIN is" in text  # the leaks were attempted
    assert any(json.loads(line)["level"] == "traffic" for line in text.splitlines())
    for line in text.splitlines():
        json.loads(line)
        _assert_clean(line, f"line {line[:200]!r}")


def test_support_bundle_opens_and_holds_no_secret(world, exercised, tmp_path):
    d: Daemon = world["daemon"]
    out = tmp_path / "bundle.tar.gz"
    run = d.cli("diag", "--bundle", str(out))
    assert run.returncode == 0, run.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out) as tar:
        members = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read().decode() for m in tar.getmembers()
        }
    assert {
        "diag.json",
        "config.json",
        "versions.json",
        "readers.json",
        "events.json",
        "metrics.txt",
        "log.txt",
        "manifest.json",
    } <= members.keys(), members.get("manifest.json")
    for name, text in members.items():
        _assert_clean(text, name)
        assert d.token not in text, name
    config = json.loads(members["config.json"])
    assert config["settings"]["rfid"]["key_file"] == "<masked>"
    assert config["keyFile"]["mode"] == "0o600"
    events = json.loads(members["events.json"])["events"]
    assert any(
        e["type"] == "operation.finished" and e["operation"] == "student-card.burn" for e in events
    )
    assert "cardd_operations_total" in members["metrics.txt"]
    assert "MIFARE key file" in members["log.txt"]
    readers = json.loads(members["readers.json"])
    assert readers["source"] == "daemon" and len(readers["readers"]) == 2
    versions = json.loads(members["versions.json"])
    assert versions["pcscd"] and any(p.startswith("aiohttp==") for p in versions["packages"])


def test_crl_age_per_issuer_from_the_crl_store(tmp_path):
    """The gauge reads the daemon's CRL store (built on first verification), never builds one."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from cardd import metrics
    from cardd.api.metrics import _collect_crls
    from cardd.api.moica import MOICA_KEY
    from cardd.config import Config
    from cardd.moica.crl import CrlSource, CrlStore
    from cardd.moica.revocation import Revocation
    from cardd.moica.service import MoicaService
    from cardd.sim.testpki import make_crl

    pki = make_test_pki()
    service = MoicaService(Config(state_dir=tmp_path))
    app = {MOICA_KEY: service}
    _collect_crls(app)  # no revocation checker yet: no series, and none is created
    assert not [k for k in metrics.CRL_AGE._values] and service._revocation is None
    source = CrlSource(pki.moica.certificate, "http://127.0.0.1:9/moica.crl")
    store = CrlStore([source], tmp_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    crl = make_crl(
        pki.moica, this_update=now - dt.timedelta(hours=2), next_update=now + dt.timedelta(hours=22)
    )
    store.install(source, crl.public_bytes(Encoding.DER), now=now)
    service.set_revocation(Revocation(None, store))
    _collect_crls(app)
    issuer = source.key_id.hex()[:16]
    assert 7200 <= metrics.CRL_AGE.value(issuer) < 7200 + 600
    assert 22 * 3600 - 600 < metrics.CRL_NEXT_UPDATE.value(issuer) <= 22 * 3600
