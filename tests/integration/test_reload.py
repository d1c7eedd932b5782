# SPDX-License-Identifier: Apache-2.0
"""Configuration reload (SIGHUP, `cardd reload`) on a live `cardd serve` through the real pcscd.

A good file changes what may change live while an SSE stream stays open and keeps receiving;
a broken file is refused with its line and reason (log, `cardd reload`, systemd STATUS=) and
the rules in force stay; settings that need a restart are reported and left alone.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import aiohttp
import pytest

from cardd.config import parse_config
from cardd.reload import changed_keys, find_line, load_checked, merge_live
from tests.helpers import READER0, fixture_card, wait_card
from tests.integration.observe_helpers import Daemon, Sse, free_port, value

ALLOWED = "https://library.example.tw"
READONLY = "https://kiosk.example.tw"
NEWSITE = "https://new.example.tw"


def config_text(port: int, readonly_scopes: str = '["rfid:read"]', extra: str = "") -> str:
    return (
        f"[api]\nport = {port}\n"
        f'[api.origins."{ALLOWED}"]\nscopes = ["readers"]\n'
        f'[api.origins."{READONLY}"]\nscopes = {readonly_scopes}\n'
        '[log]\nlevel = "info"\nformat = "json"\n' + extra
    )


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield path, sock
    sock.close()


@pytest.fixture
def daemon(pcscd, tmp_path, notify_socket):
    port = free_port()
    d = Daemon(tmp_path, config_text(port), port=port, env={"NOTIFY_SOCKET": str(notify_socket[0])})
    yield d
    assert d.stop() == 0, d.log_text()


async def status_of(d: Daemon, origin: str) -> int:
    status, _, _ = await d.get("/v1/readers", {"Origin": origin})
    return status


def log_records(d: Daemon) -> list[dict]:
    return [json.loads(line) for line in d.log_text().splitlines() if line.startswith("{")]


@pytest.mark.pcsc
async def test_new_scopes_apply_at_once_and_the_sse_stream_keeps_flowing(daemon, vreaders):
    async with aiohttp.ClientSession() as s:
        async with s.get(daemon.url + "/v1/events", headers={"Origin": ALLOWED}) as r:
            sse = Sse(r)
            assert (await sse.next())[0] == "hello"
            assert await status_of(daemon, READONLY) == 403
            daemon.config.write_text(
                config_text(daemon.port, '["readers", "rfid:read"]').replace(
                    'level = "info"', 'level = "info"\ntraffic = true'
                )
            )
            run = daemon.cli("reload")
            assert run.returncode == 0, run.stderr
            assert "api.origins" in run.stdout and "log.traffic" in run.stdout
            assert await status_of(daemon, READONLY) == 200  # the new rule, no restart
            assert await status_of(daemon, ALLOWED) == 200
            vreaders[0].insert(fixture_card("easycard_4b.json"))  # the old stream still delivers
            _, data = await sse.until(lambda t, d: t == "card.inserted" and d["reader"] == READER0)
            assert data["cardType"] == "mifare_classic_1k"
            await sse.until(lambda t, d: t == "tag.tapped")  # its UID read (APDUs) has happened
    records = log_records(daemon)
    done = [r for r in records if r["message"].startswith("configuration reloaded")]
    assert done and done[-1]["changed"] == ["api.origins", "log.traffic"]
    assert any(r["level"] == "traffic" for r in records)  # the tap's APDUs: [log] took effect
    m = await daemon.metrics()
    assert value(m, "cardd_config_reloads_total", result="ok") == 1


BROKEN = [
    # (what, file text after the good part, line of the fault, words of the reason)
    (
        "syntax",
        f'[api.origins."{NEWSITE}"]\nscopes = [readers]\n',
        11,
        "TOML syntax: Invalid value",
    ),
    (
        "unclosed",
        f'[api.origins."{NEWSITE}"]\nscopes = ["readers"\n',
        11,
        "TOML syntax: Unclosed array",
    ),
    (
        "unknown key",
        f'[api.origins."{NEWSITE}"]\nscopes = ["readers"]\nscopez = ["moica"]\n',
        12,
        "unknown key(s) scopez",
    ),
    (
        "unknown scope",
        f'[api.origins."{NEWSITE}"]\nscopes = ["readers", "everything"]\n',
        11,
        "unknown scope(s) everything",
    ),
    (
        "bad origin",
        '[api.origins."https://new.example.tw/path"]\nscopes = ["readers"]\n',
        10,
        "must be exactly scheme://host[:port]",
    ),
    (
        "bad timeout",
        "[readers]\noperation_timeout = -1\n",
        11,
        "operation_timeout must be positive",
    ),
]


@pytest.mark.pcsc
@pytest.mark.parametrize(("what", "tail", "line", "reason"), BROKEN, ids=[b[0] for b in BROKEN])
async def test_broken_file_is_refused_with_line_and_old_rules_stay(
    daemon, notify_socket, what, tail, line, reason
):
    _, sock = notify_socket
    good = config_text(daemon.port)
    daemon.config.write_text(good + tail)
    assert (good + tail).splitlines()[line - 1]  # the line the test expects exists
    async with aiohttp.ClientSession() as s:
        async with s.get(daemon.url + "/v1/events", headers={"Origin": ALLOWED}) as r:
            sse = Sse(r)
            assert (await sse.next())[0] == "hello"
            run = daemon.cli("reload")
            assert run.returncode == 3, (run.stdout, run.stderr)
            assert f"{daemon.config} line {line}: " in run.stderr and reason in run.stderr
            assert "Traceback" not in run.stderr
            # the rules in force are the old ones
            assert await status_of(daemon, ALLOWED) == 200
            assert await status_of(daemon, READONLY) == 403
            assert await status_of(daemon, NEWSITE) == 403
            # and the stream is still open
            await daemon.post("/v1/rfid/wait-tap", {"timeoutMs": 100})  # an operation.* free call
            daemon.sighup()  # a second refusal is reported again, not swallowed
    refused = [
        r for r in log_records(daemon) if r["message"].startswith("configuration reload refused")
    ]
    assert refused and refused[0]["line"] == line and refused[0]["file"] == str(daemon.config)
    assert reason in refused[0]["message"] and refused[0]["level"] == "error"
    # systemd saw RELOADING=1, then READY=1 with a STATUS= naming the file and line
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any("configuration reload refused" in d for d in datagrams):
            break
    status = [d for d in datagrams if "configuration reload refused" in d]
    assert status and f"line {line}" in status[0], datagrams
    assert any("RELOADING=1" in d for d in datagrams)
    m = await daemon.metrics()
    assert value(m, "cardd_config_reloads_total", result="refused") >= 1
    # fixed: accepted, and the refusal leaves STATUS
    daemon.config.write_text(good)
    run = daemon.cli("reload")
    assert run.returncode == 0, run.stderr


@pytest.mark.pcsc
async def test_settings_that_need_a_restart_are_reported_and_left_alone(daemon, vreaders):
    other_port = free_port()
    daemon.config.write_text(
        config_text(other_port, extra=f'[rfid]\nledger = "{daemon.tmp / "other.sqlite3"}"\n')
    )
    run = daemon.cli("reload", "--json")
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["ok"] and set(answer["needsRestart"]) == {"api.port", "rfid.ledger"}
    assert answer["changed"] == []
    assert await status_of(daemon, ALLOWED) == 200  # still on the old port
    warn = [r for r in log_records(daemon) if "need a restart" in r["message"]]
    assert warn and warn[0]["ignored"] == ["api.port", "rfid.ledger"]


def test_reload_without_a_daemon_says_so(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, CARDD_STATE_DIR=str(tmp_path / "state"))
    run = subprocess.run(
        [sys.executable, "-m", "cardd.cli.main", "reload"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 3 and "no running cardd" in run.stderr


# -- pure parts ------------------------------------------------------------------------------


def test_find_line_for_tables_dotted_and_quoted_keys():
    text = (
        "# comment\n"
        "[api]\n"
        "port = 7420\n"
        '[api.origins."https://a.example"]\n'
        "scopes = []\n"
        "[rfid]\n"
        "key_file = '/k'\n"
        "moica.ocsp = false\n"
    )
    assert find_line(text, ("api", "port")) == 3
    assert find_line(text, ("api", "origins", "https://a.example")) == 4
    assert find_line(text, ("api", "origins", "https://a.example", "scopes")) == 5
    assert find_line(text, ("api", "origins")) == 4  # defined only through its sub-tables
    assert find_line(text, ("rfid", "moica", "ocsp")) == 8
    assert find_line(text, ("nothing",)) is None


def test_semantic_errors_name_the_line_of_the_key(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[api]\nport = 7420\n\n[moica]\nocsp = true\nrevocation = "sometimes"\n')
    cfg, refusal = load_checked(path)
    assert cfg is None and refusal is not None
    assert refusal.line == 6 and "moica.revocation" in refusal.reason
    path.write_text('[api]\nhost = "0.0.0.0"\n')
    _, refusal = load_checked(path)
    assert refusal is not None and refusal.line == 2 and "loopback" in refusal.reason


def test_only_live_keys_are_merged():
    old = parse_config({"api": {"port": 1}, "log": {"level": "info"}})
    new = parse_config(
        {
            "api": {"port": 2, "origins": {ALLOWED: {"scopes": ["readers"]}}},
            "log": {"level": "debug"},
        }
    )
    keys = changed_keys(old, new)
    assert set(keys) == {"api.port", "api.origins", "log.level"}
    merged = merge_live(old, new, ["api.origins", "log.level"])
    assert merged.api.port == 1 and merged.log.level == "debug"
    assert merged.api.origin_policy(ALLOWED) is not None
    wait_card  # noqa: B018 - imported for the pcsc tests' fixtures
