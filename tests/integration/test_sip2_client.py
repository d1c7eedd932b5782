# SPDX-License-Identifier: Apache-2.0
"""The SIP2 client over real loopback TCP: against our test ACS (cardd.sim.sip2_server) with
its faults, against pysip2 (a SIP2 server we did not write), with TLS, and the `cardd sip2` CLI.

No timed assertions: waits are for events (a message arriving at the server, a state change),
with generous limits that only stop a hung test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cardd import errors as E
from cardd.kiosk.sip2 import messages as M
from cardd.kiosk.sip2.client import Sip2Client
from cardd.kiosk.sip2.config import Sip2Config
from cardd.log import TRAFFIC
from cardd.sim.sip2_server import (
    ALWAYS,
    Sip2TestServer,
    TestPatron,
    ThreadedSip2Server,
    demo_patrons,
    status_field,
)
from cardd.sim.testpki import Validity, make_root, new_rsa_key, random_serial

VALID, LOST, FINED, UNKNOWN = "1234567890", "2000000002", "3000000003", "0000009999"
ASCII_PATRON = "4000000004"


def patrons() -> dict[str, TestPatron]:
    table = demo_patrons()
    table[ASCII_PATRON] = TestPatron(ASCII_PATRON, "Lin Mei-ling")
    return table


def config(port: int, **kw) -> Sip2Config:
    base: dict = dict(
        host="127.0.0.1",
        port=port,
        user="kiosk",
        password="secret",
        institution="MAIN",
        location="GATE1",
        timeout=2.0,
        keepalive_interval=0,
    )
    base.update(kw)
    return Sip2Config(**base)


@pytest.fixture
async def server():
    srv = Sip2TestServer(patrons())
    await srv.start()
    yield srv
    await srv.stop()


# -- session ------------------------------------------------------------------------------------------


async def test_login_then_status(server):
    async with Sip2Client(config(server.port)) as client:
        assert client.online and client.acs_status is not None
        assert client.acs_status.institution == "MAIN" and client.acs_status.online
    login, status = server.messages()[:2]
    assert login.id == "93" and login.get("CN") == "kiosk" and login.get("CO") == "secret"
    assert login.get("CP") == "GATE1"
    assert status.id == "99"
    # sequence numbers count up from 0, checksums on every request
    assert [m.sequence for m in server.messages()] == [0, 1]
    assert all(m.checksummed for m in server.messages())


async def test_login_refused(server, caplog):
    caplog.set_level(TRAFFIC)
    server.faults.refuse_login = True
    client = Sip2Client(config(server.port, password="wrong-pw-123"))
    with pytest.raises(E.Sip2LoginRefused) as info:
        await client.connect()
    assert isinstance(info.value, E.LibrarySystemUnavailable)  # the kiosk's offline policy applies
    assert "kiosk" in str(info.value) and "wrong-pw-123" not in str(info.value)
    assert "wrong-pw-123" not in caplog.text
    assert not client.online
    # no second login with a refused password within the back-off: nothing reaches the server
    before = server.connections
    with pytest.raises(E.Sip2LoginRefused, match="not tried again"):
        await client.patron_status(VALID)
    assert server.connections == before
    await client.close()


async def test_wrong_password_is_refused_by_the_account_check(server):
    with pytest.raises(E.Sip2LoginRefused):
        async with Sip2Client(config(server.port, password="nope")):
            pass


# -- patrons -------------------------------------------------------------------------------------------


async def test_patron_shapes(server):
    async with Sip2Client(config(server.port)) as client:
        valid = await client.patron_status(VALID)
        assert (
            valid.valid is True and valid.flags == frozenset() and valid.personal_name == "林美玲"
        )
        assert not valid.unknown_shape

        unknown = await client.patron_status(UNKNOWN)
        assert unknown.valid is False and unknown.unknown_shape and unknown.personal_name == ""
        assert unknown.screen_message == "Unknown patron"

        lost = await client.patron_status(LOST)
        assert lost.valid is True and lost.card_reported_lost
        assert lost.screen_message == "Card reported lost"

        fined = await client.patron_status(FINED)
        assert fined.charge_privileges_denied and not fined.card_reported_lost
        assert "excessive_outstanding_fines" in fined.flags
        assert fined.screen_message == "Fines of NT$120 outstanding\nPlease see the front desk"
    requests = server.messages("63")
    assert [m.get("AA") for m in requests] == [VALID, UNKNOWN, LOST, FINED]
    assert all(m.fixed["summary"] == " " * 10 and m.get("AO") == "MAIN" for m in requests)


async def test_patron_status_message_23_when_configured(server):
    async with Sip2Client(config(server.port, patron_request="23")) as client:
        lost = await client.patron_status(LOST)
    assert lost.card_reported_lost
    (request,) = server.messages("23")
    assert [fid for fid, _ in request.fields] == ["AO", "AA", "AC", "AD"]
    assert not server.messages("63")


async def test_terminal_password_is_sent(server):
    server.terminal_password = "tp-1"
    async with Sip2Client(config(server.port, terminal_password="tp-1")) as client:
        assert (await client.patron_status(VALID)).valid is True
    async with Sip2Client(config(server.port, terminal_password="other")) as client:
        assert (await client.patron_status(VALID)).valid is False


async def test_end_patron_session(server):
    async with Sip2Client(config(server.port)) as client:
        assert await client.end_patron_session(VALID) is True
    assert server.messages("35")[0].get("AA") == VALID


async def test_bad_patron_ids_are_refused_before_sending(server):
    async with Sip2Client(config(server.port)) as client:
        for bad in ("", "  ", "12\r34", "x" * 300):
            with pytest.raises(E.InvalidInput):
                await client.patron_status(bad)
    assert not server.messages("63")


async def test_concurrent_lookups_are_serialised_and_each_gets_its_own_answer(server):
    async with Sip2Client(config(server.port)) as client:
        ids = [VALID, LOST, FINED, UNKNOWN] * 5
        results = await asyncio.gather(*(client.patron_status(i) for i in ids))
    assert [r.patron_id for r in results] == ids
    assert [r.card_reported_lost for r in results] == [i == LOST for i in ids]
    assert [m.get("AA") for m in server.messages("63")] == ids  # in arrival order
    assert server.connections == 1


# -- error detection -----------------------------------------------------------------------------------


async def test_wrong_checksum_asks_97_and_recovers(server):
    async with Sip2Client(config(server.port)) as client:
        server.faults.bad_checksum = 1
        status = await client.patron_status(ASCII_PATRON)
        assert status.valid is True and status.personal_name == "Lin Mei-ling"
        assert client.stats.asked_97 == 1 and client.stats.drops == 0
    ids = [m.id for m in server.messages()]
    assert ids == ["93", "99", "63", "97"]
    assert server.received[-1].raw == M.REQUEST_ACS_RESEND


async def test_checksum_always_wrong_makes_the_library_system_unavailable(server):
    async with Sip2Client(config(server.port, resends=1)) as client:
        server.faults.bad_checksum = ALWAYS
        with pytest.raises(E.LibrarySystemUnavailable, match="corrupt"):
            await client.patron_status(ASCII_PATRON)
        assert not client.online
        # reconnected once: the login's own reply was corrupt too
        assert server.connections == 2
        server.faults.bad_checksum = 0
        assert (await client.patron_status(ASCII_PATRON)).valid is True
        assert client.online


async def test_non_ascii_checksum_mismatch_is_tolerated_after_a_97(server, caplog):
    caplog.set_level(logging.WARNING)
    async with Sip2Client(config(server.port, resends=1)) as client:
        server.faults.bad_checksum = 2  # the reply and its repeat
        status = await client.patron_status(VALID)  # name 林美玲: non-ASCII bytes
        assert status.personal_name == "林美玲" and status.valid is True
        assert client.stats.asked_97 == 1 and client.stats.tolerated_checksums == 1
    assert "non-ASCII" in caplog.text


async def test_codepoint_checksums_of_an_older_koha_are_accepted(server):
    server.faults.codepoint_checksum = True
    async with Sip2Client(config(server.port)) as client:
        status = await client.patron_status(VALID)
    assert status.personal_name == "林美玲"
    assert client.stats.asked_97 == 0 and client.stats.tolerated_checksums == 1


async def test_96_makes_us_resend_the_same_request(server):
    async with Sip2Client(config(server.port)) as client:
        server.faults.request_resend = 1
        assert (await client.patron_status(LOST)).card_reported_lost
        assert client.stats.resent_after_96 == 1
    first, second = [r.raw for r in server.received if r.message.id == "63"]
    assert first == second  # byte for byte: same sequence number, same checksum


async def test_96_forever_is_unavailable(server):
    async with Sip2Client(config(server.port, resends=2)) as client:
        server.faults.request_resend = ALWAYS
        with pytest.raises(E.LibrarySystemUnavailable, match="96"):
            await client.patron_status(VALID)


async def test_server_writing_crlf(server):
    server.faults.terminator = b"\r\n"  # Koha's default
    async with Sip2Client(config(server.port)) as client:
        for _ in range(3):
            assert (await client.patron_status(LOST)).card_reported_lost
        assert client.stats.drops == 0 and client.stats.asked_97 == 0


async def test_client_writing_crlf_and_no_error_detection(server):
    async with Sip2Client(config(server.port, terminator="CRLF", error_detection=False)) as client:
        assert (await client.patron_status(VALID)).valid is True
    raw = [r.raw for r in server.received]
    assert all(b"AZ" not in r for r in raw)
    assert not any(m.checksummed for m in server.messages())


async def test_cp950_end_to_end():
    async with Sip2TestServer(patrons(), encoding="cp950") as srv:
        async with Sip2Client(config(srv.port, encoding="cp950")) as client:
            status = await client.patron_status(VALID)
    assert status.personal_name == "林美玲" and client.stats.tolerated_checksums == 0


# -- timeouts, drops, restarts ---------------------------------------------------------------------------


async def test_slow_reply_times_out_then_unavailable(server):
    async with Sip2Client(config(server.port, timeout=0.3)) as client:
        server.faults.delay, server.faults.delay_replies = 30.0, ALWAYS
        with pytest.raises(E.LibrarySystemUnavailable, match="no reply within"):
            await client.patron_status(VALID)
        assert not client.online
        # reconnected and retried once: two connections' worth of 63
        assert server.connections == 2 and len(server.messages("63")) == 1
        server.faults.delay_replies = 0
        assert (await client.patron_status(VALID)).valid is True
        assert client.online


async def test_one_slow_reply_is_retried_on_a_new_connection(server):
    async with Sip2Client(config(server.port, timeout=0.3)) as client:
        server.faults.delay, server.faults.delay_replies = 30.0, 1
        assert (await client.patron_status(LOST)).card_reported_lost
        assert client.stats.drops == 1
    assert [(r.connection, r.message.id) for r in server.received] == [
        (1, "93"),
        (1, "99"),
        (1, "63"),
        (2, "93"),
        (2, "99"),
        (2, "63"),
    ]


async def test_dropped_connection_reconnects_and_retries(server):
    async with Sip2Client(config(server.port)) as client:
        server.faults.close_after = 1  # the next message closes the connection unanswered
        status = await client.patron_status(FINED)
        assert status.charge_privileges_denied
        assert client.stats.connects == 2 and client.stats.drops == 1
    assert [(r.connection, r.message.id) for r in server.received][-3:] == [
        (2, "93"),
        (2, "99"),
        (2, "63"),
    ]


async def test_server_restart_is_recovered(server):
    async with Sip2Client(config(server.port)) as client:
        assert (await client.patron_status(VALID)).valid
        port = server.port
        await server.restart()
        assert server.port == port
        assert (await client.patron_status(LOST)).card_reported_lost
        assert client.stats.connects == 2


async def test_server_down_is_unavailable_and_keepalive_brings_it_back():
    srv = Sip2TestServer(patrons())
    await srv.start()
    states: list[bool] = []
    back = asyncio.Event()

    def on_state(online: bool) -> None:
        states.append(online)
        if online and states[:-1].count(False):
            back.set()

    client = Sip2Client(config(srv.port, keepalive_interval=0.3, timeout=0.3), on_state=on_state)
    await client.connect()
    await srv.stop()
    with pytest.raises(E.LibrarySystemUnavailable, match="cannot connect|closed"):
        await client.patron_status(VALID)
    assert states == [True, False] and not client.online
    await srv.start()
    # no request from us: the keep-alive re-opens the session on its own
    await asyncio.wait_for(back.wait(), 15)
    assert client.online and states == [True, False, True]
    assert (await client.patron_status(VALID)).valid
    await client.close()
    await srv.stop()


async def test_connect_refused_is_unavailable():
    srv = Sip2TestServer(patrons())
    port = await srv.start()
    await srv.stop()
    with pytest.raises(E.LibrarySystemUnavailable) as info:
        async with Sip2Client(config(port)):
            pass
    assert info.value.code == "library_system_unavailable"
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_cancelled_lookup_leaves_no_stale_reply(server):
    async with Sip2Client(config(server.port, timeout=5)) as client:
        server.faults.delay, server.faults.delay_replies = 0.5, 1
        task = asyncio.create_task(client.patron_status(LOST))
        await server.wait_for(lambda s: len(s.messages("63")) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the late 64 about LOST must not become the answer about VALID
        status = await client.patron_status(VALID)
        assert status.patron_id == VALID and not status.card_reported_lost
        assert client.stats.drops == 1


async def test_a_late_reply_about_another_patron_is_never_the_answer(server):
    async with Sip2Client(config(server.port)) as client:
        assert (await client.patron_status(LOST)).card_reported_lost
        server.faults.stale_reply = 1  # the 64 about LOST arrives again before VALID's
        status = await client.patron_status(VALID)
        assert status.patron_id == VALID and not status.card_reported_lost
        assert client.stats.drops == 1 and client.stats.connects == 2


# -- keep-alive ----------------------------------------------------------------------------------------


async def test_keepalive_while_idle(server):
    async with Sip2Client(config(server.port, keepalive_interval=0.2, timeout=0.2)) as client:
        # we send nothing: the server must still see 99s beyond the session's first one
        await server.wait_for(lambda s: len(s.messages("99")) >= 3)
        # the third 99 is only sent once the first keep-alive's reply was read
        assert client.stats.keepalives >= 1 and client.online
    assert server.connections == 1
    assert {r.connection for r in server.received} == {1}
    # the sequence number wraps 0-9 and keeps counting across keep-alives
    seqs = [m.sequence for m in server.messages()]
    assert seqs[:3] == [0, 1, 2]


async def test_sequence_number_wraps(server):
    async with Sip2Client(config(server.port)) as client:
        for _ in range(12):
            await client.patron_status(ASCII_PATRON)
    seqs = [m.sequence for m in server.messages()]
    assert seqs == [i % 10 for i in range(14)]


# -- logs -----------------------------------------------------------------------------------------------


async def test_logs_never_hold_ids_names_or_passwords(server, caplog):
    caplog.set_level(TRAFFIC)
    server.terminal_password = "term-pw-9"
    cfg = config(server.port, password="secret", terminal_password="term-pw-9")
    async with Sip2Client(cfg) as client:
        server.faults.bad_checksum = 1
        await client.patron_status(FINED)
        await client.patron_status(VALID)
        server.faults.close_after = 1
        await client.patron_status(LOST)
    text = caplog.text
    assert "SIP2 >" in text and "SIP2 <" in text  # frames were logged at TRAFFIC
    for secret in ("secret", "term-pw-9", FINED, VALID, LOST, "林美玲", "Wang Hao"):
        assert secret not in text, secret
    assert "30****0003" in text


# -- TLS --------------------------------------------------------------------------------------------------


def _tls_material(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA made here and a server certificate for localhost / 127.0.0.1."""
    ca = make_root(validity=Validity(), key_size=2048)
    key = new_rsa_key(2048)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sip2 test server")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.private_key, hashes.SHA256())
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem())
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(chain)
    return ca_file, ctx


async def test_tls(tmp_path, caplog):
    ca_file, server_ctx = _tls_material(tmp_path)
    async with Sip2TestServer(patrons(), ssl_context=server_ctx) as srv:
        # verified against the CA, by IP address and by name
        async with Sip2Client(config(srv.port, tls=True, tls_ca_file=ca_file)) as client:
            assert (await client.patron_status(LOST)).card_reported_lost
        cfg = config(srv.port, tls=True, tls_ca_file=ca_file, tls_server_name="localhost")
        async with Sip2Client(cfg) as client:
            assert (await client.patron_status(VALID)).valid
        # the system store does not know our CA: refused, not silently accepted
        with pytest.raises(E.LibrarySystemUnavailable, match="not trusted"):
            async with Sip2Client(config(srv.port, tls=True)):
                pass
        # the wrong name is refused too
        cfg = config(srv.port, tls=True, tls_ca_file=ca_file, tls_server_name="ils.example.tw")
        with pytest.raises(E.LibrarySystemUnavailable, match="not trusted"):
            async with Sip2Client(cfg):
                pass
        # verification off: works, and says so in the log
        caplog.set_level(logging.WARNING)
        async with Sip2Client(config(srv.port, tls=True, tls_verify=False)) as client:
            assert (await client.patron_status(VALID)).valid
        assert "NOT verified" in caplog.text
        # a plain-text client against the TLS server gets no SIP2 answer
        with pytest.raises(E.LibrarySystemUnavailable):
            async with Sip2Client(config(srv.port, timeout=0.5)):
                pass


# -- against pysip2, a SIP2 server we did not write ----------------------------------------------------------


def _require_pysip2() -> None:
    """pysip2 comes with the test extra: missing, the tests skip locally and fail under CI."""
    if os.environ.get("CI"):
        import pysip2  # noqa: F401
    else:
        pytest.importorskip("pysip2")


@pytest.fixture
async def reference_port():
    _require_pysip2()
    from cardd.sim.sip2_reference import ReferenceServer, make_reference_server

    server = ReferenceServer(make_reference_server(patrons(), accounts={"kiosk": "secret"}))
    yield await server.start()
    await server.stop()


async def test_reference_server_lookups(reference_port):
    async with Sip2Client(config(reference_port)) as client:
        assert client.acs_status is not None and client.acs_status.supports("63")
        valid = await client.patron_status(VALID)
        assert valid.valid is True and valid.personal_name == "林美玲"  # UTF-8 checksum agreed
        lost = await client.patron_status(LOST)
        assert lost.card_reported_lost and lost.screen_message == "Card reported lost"
        fined = await client.patron_status(FINED)
        assert fined.charge_privileges_denied and fined.screen_message.count("\n") == 1
        unknown = await client.patron_status(UNKNOWN)
        assert unknown.unknown_shape and unknown.valid is False
        assert await client.end_patron_session(VALID) is True
        for _ in range(12):  # the sequence number wraps; pysip2 checks every checksum
            await client.sc_status()
        assert client.stats.asked_97 == 0 and client.stats.drops == 0


async def test_reference_server_23(reference_port):
    async with Sip2Client(config(reference_port, patron_request="23")) as client:
        assert (await client.patron_status(LOST)).card_reported_lost


async def test_reference_server_refuses_login(reference_port):
    with pytest.raises(E.Sip2LoginRefused):
        async with Sip2Client(config(reference_port, password="wrong")):
            pass


async def test_reference_server_cp850():
    _require_pysip2()
    from cardd.sim.sip2_reference import make_reference_server

    table = {"42": TestPatron("42", "Zoë Müller", status_field("card_reported_lost"))}
    app = make_reference_server(table, accounts={"kiosk": "secret"}, encoding="cp850")
    async with app.start() as port:
        async with Sip2Client(config(port, encoding="cp850")) as client:
            status = await client.patron_status("42")
    assert status.personal_name == "Zoë Müller" and status.card_reported_lost
    assert client.stats.tolerated_checksums == 0 and client.stats.asked_97 == 0


async def test_reference_server_keepalive(reference_port):
    async with Sip2Client(config(reference_port, keepalive_interval=0.2, timeout=0.2)) as client:
        while client.stats.keepalives < 2:
            await asyncio.sleep(0.05)
        assert client.online and client.stats.connects == 1


# -- the CLI ----------------------------------------------------------------------------------------------------


def _cardd(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CARDD_SIP2_PASSWORD": "secret", **(env_extra or {})}
    env.pop("CARDD_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "cardd.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_cli_status_and_patron():
    with ThreadedSip2Server(Sip2TestServer(patrons())) as threaded:
        port = str(threaded.server.port)
        common = [
            "sip2",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--user",
            "kiosk",
            "--institution",
            "MAIN",
        ]
        r = _cardd(*common, "status")
        assert r.returncode == 0, r.stderr
        assert "online" in r.stdout and "MAIN" in r.stdout
        r = _cardd(*common, "patron", LOST, "--json")
        assert r.returncode == 0, r.stderr
        import json

        data = json.loads(r.stdout)
        assert data["valid"] is True and "card_reported_lost" in data["flags"]
        assert data["screenMessage"] == "Card reported lost"
        r = _cardd(*common, "patron", VALID)
        assert r.returncode == 0 and "林美玲" in r.stdout and "secret" not in r.stdout + r.stderr
        # the password never comes from the command line; a wrong one is refused with a hint
        r = _cardd(*common, "status", env_extra={"CARDD_SIP2_PASSWORD": "wrong"})
        assert r.returncode == 4 and "sip2_login_refused" in r.stderr and "next step" in r.stderr
        # what the server saw from the CLI
        seen = threaded.call(lambda s: [m.id for m in s.messages()])
        assert seen[:2] == ["93", "99"] and "63" in seen


def test_cli_unavailable_server_exit_code():
    srv = Sip2TestServer()
    with ThreadedSip2Server(srv) as threaded:
        port = str(threaded.server.port)
    r = _cardd("sip2", "--host", "127.0.0.1", "--port", port, "--timeout", "0.5", "status")
    assert r.returncode == 4
    assert "library_system_unavailable" in r.stderr and "Traceback" not in r.stderr


def test_cli_reads_the_kiosk_sip2_table(tmp_path):
    with ThreadedSip2Server(Sip2TestServer(patrons())) as threaded:
        cfg = tmp_path / "cardd.toml"
        cfg.write_text(
            f'[kiosk.sip2]\nhost = "127.0.0.1"\nport = {threaded.server.port}\nuser = "kiosk"\n'
            f'password = "secret"\ninstitution = "MAIN"\n'
        )
        r = _cardd(
            "--config", str(cfg), "sip2", "patron", FINED, env_extra={"CARDD_SIP2_PASSWORD": ""}
        )
        assert r.returncode == 0, r.stderr
        assert "charge_privileges_denied" in r.stdout


async def test_cli_test_server_process():
    """`cardd sip2 test-server`: the demo server a technician or the benchmark starts."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "CARDD_CONFIG"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cardd.cli.main",
        "sip2",
        "test-server",
        "--listen-port",
        str(port),
        "--crlf",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert f"127.0.0.1:{port}" in line.decode()
        async with Sip2Client(config(port)) as client:
            assert (await client.patron_status(LOST)).card_reported_lost
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
