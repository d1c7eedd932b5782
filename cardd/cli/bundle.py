# SPDX-License-Identifier: Apache-2.0
"""`cardd diag --bundle PATH`: one redacted archive (tar.gz) for a support ticket.

What goes in (under ``cardd-bundle-<time>/``):

==================  =================================================================
``diag.json``       every `cardd diag` section (each fails on its own, as in diag)
``config.json``     the configuration file as parsed, key file and token paths masked,
                    passwords in ledger URLs masked; or why it does not parse
``versions.json``   cardd, Python, every installed package, pcscd, the OS and kernel
``readers.json``    readers as the running daemon sees them (else diag's PC/SC view)
``events.json``     the daemon's last events (``GET /v1/diag/events``), if it runs
``metrics.txt``     the daemon's ``/v1/metrics``, if it runs
``log.txt``         the last :data:`LOG_LINES` lines of ``journalctl -u cardd`` and of the
                    files in the LogsDirectory (``$LOGS_DIRECTORY``, else /var/log/cardd)
``manifest.json``   what is in the archive and what could not be collected
==================  =================================================================

Every member is passed through :func:`cardd.log.redact` before it is written: ID numbers
masked, the keys of the configured key file and the API token scrubbed (they are registered as
secrets first, when readable), values of secret-named settings dropped. The archive is written
0600 (it still describes the station) and atomically, so a half-written bundle never lies around.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cardd import __version__
from cardd.log import redact, redact_value, register_secret

#: log lines taken from the journal and from the log directory (each)
LOG_LINES = 1000
MASKED = "<masked>"


def write_bundle(config_path: str | None, out: str | os.PathLike[str]) -> int:
    """Collect, redact and write the archive; 0 when written (sections may still have failed)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    members: dict[str, str] = {}
    problems: dict[str, str] = {}
    config = _load_config(config_path, problems)
    _register_secrets(config)

    def section(name: str, fn: Any) -> None:
        try:
            members[name] = fn()
        except Exception as e:  # noqa: BLE001 - one missing part must not lose the others
            problems[name] = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"

    section("diag.json", lambda: _diag(config_path))
    section("config.json", lambda: _config(config_path))
    section("versions.json", _versions)
    daemon = _Daemon(config) if config is not None else None
    section("readers.json", lambda: _readers(daemon, members.get("diag.json")))
    if daemon is not None:
        section("events.json", lambda: _json(daemon.get_json("/v1/diag/events")))
        section("metrics.txt", lambda: daemon.get("/v1/metrics"))
    section("log.txt", _logs)
    members["manifest.json"] = _json(
        {
            "cardd": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "members": sorted(members),
            "notCollected": problems,
            "redaction": "ID numbers masked; key file keys, the API token, PINs and secret-named "
            "settings removed (cardd.log.redact)",
        }
    )
    path = Path(out)
    _write_archive(path, f"cardd-bundle-{stamp}", members)
    print(f"support bundle written: {path} ({len(members)} files)")
    for name, why in sorted(problems.items()):
        print(f"  not collected: {name}: {why}", file=sys.stderr)
    return 0


# -- parts ----------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return (
        json.dumps(redact_value("bundle", value), ensure_ascii=False, indent=2, default=str) + "\n"
    )


def _load_config(config_path: str | None, problems: dict[str, str]) -> Any:
    from cardd.config import load_config
    from cardd.errors import CardError

    try:
        return load_config(config_path)
    except CardError as e:
        problems["config"] = e.message
        return None


def _register_secrets(config: Any) -> None:
    """Whatever this process can read of the station's secrets is scrubbed from every member."""
    if config is None:
        return
    from cardd.errors import CardError

    token_file = config.api.token_file or (config.state_dir / "token")
    try:
        token = token_file.read_text().strip()
        if token:
            register_secret(token.encode())
    except OSError:
        pass
    if config.rfid.key_file is not None:
        from cardd.rfid.keys import load_key_file

        try:
            load_key_file(config.rfid.key_file)  # registers its keys (cardd.rfid.keys)
        except CardError:
            pass


def _diag(config_path: str | None) -> str:
    from cardd.cli.diag import FAIL, collect

    sections = collect(config_path)
    return _json(
        {
            "ok": not any(s.status == FAIL for s in sections.values()),
            "sections": {k: v.to_dict() for k, v in sections.items()},
        }
    )


def _mask_url(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1" + MASKED + "@", url)


def _config(config_path: str | None) -> str:
    from cardd.config import find_config

    path = find_config(config_path)
    if path is None:
        return _json({"file": None, "note": "no configuration file; defaults in force"})
    info: dict[str, Any] = {"file": str(path), "mode": oct(path.stat().st_mode & 0o777)}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        info["error"] = str(e)
        return _json(info)
    api = raw.get("api")
    if isinstance(api, dict) and "token_file" in api:
        api["token_file"] = MASKED
    rfid = raw.get("rfid")
    if isinstance(rfid, dict):
        key_file = rfid.get("key_file")
        if isinstance(key_file, str):
            key_path = Path(key_file)
            rfid["key_file"] = MASKED
            try:
                info["keyFile"] = {"exists": True, "mode": oct(key_path.stat().st_mode & 0o777)}
            except OSError as e:
                info["keyFile"] = {"exists": False, "error": e.strerror}
        if isinstance(rfid.get("ledger"), str):
            rfid["ledger"] = _mask_url(rfid["ledger"])
    info["settings"] = raw
    return _json(info)


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip() or None


def _versions() -> str:
    from importlib.metadata import distributions

    packages = sorted(
        {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]},
        key=str.lower,
    )
    os_release: dict[str, str] = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            k, _, v = line.partition("=")
            if k in ("PRETTY_NAME", "VERSION_ID", "ID"):
                os_release[k] = v.strip('"')
    except OSError:
        pass
    pcscd = _run(["pcscd", "--version"])
    return _json(
        {
            "cardd": __version__,
            "python": sys.version,
            "executable": sys.executable,
            "platform": platform.platform(),
            "kernel": platform.release(),
            "os": os_release,
            "pcscd": pcscd.splitlines()[0] if pcscd else None,
            "systemd": (_run(["systemctl", "--version"]) or "").splitlines()[:1],
            "packages": packages,
        }
    )


class _Daemon:
    """The running daemon's API, as a local program with the token file."""

    def __init__(self, config: Any) -> None:
        self.base = f"http://{config.api.host}:{config.api.port}"
        self.host = f"127.0.0.1:{config.api.port}"
        token_file = config.api.token_file or (config.state_dir / "token")
        try:
            self.token: str | None = token_file.read_text().strip()
        except OSError:
            self.token = None

    def get(self, path: str) -> str:
        if not self.token:
            raise RuntimeError("the token file is not readable by this user")
        request = urllib.request.Request(  # noqa: S310 - a fixed http://127.0.0.1 URL
            self.base + path, headers={"Authorization": f"Bearer {self.token}", "Host": self.host}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310
                return str(r.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"cardd answered {e.code} for {path}") from None
        except OSError as e:
            raise RuntimeError(f"cardd is not running at {self.base} ({e})") from None

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))


def _readers(daemon: _Daemon | None, diag_json: str | None) -> str:
    if daemon is not None:
        try:
            return _json({"source": "daemon", **daemon.get_json("/v1/readers")})
        except RuntimeError as e:
            reason = str(e)
    else:
        reason = "no usable configuration"
    pcsc = json.loads(diag_json)["sections"]["pcsc"]["details"] if diag_json else []
    return _json({"source": "pcscd (diag)", "daemon": reason, "readers": pcsc})


def _tail(lines: list[str], n: int) -> list[str]:
    return lines[-n:]


def _logs() -> str:
    parts: list[str] = []
    journal = _run(
        [
            "journalctl",
            "-u",
            "cardd.service",
            "-n",
            str(LOG_LINES),
            "--no-pager",
            "-o",
            "short-iso",
        ],
        timeout=30,
    )
    if journal and "-- No entries --" not in journal:
        parts.append("== journalctl -u cardd.service ==")
        parts.extend(_tail(journal.splitlines(), LOG_LINES))
    logs_dir = Path((os.environ.get("LOGS_DIRECTORY") or "/var/log/cardd").split(":")[0])
    files = (
        sorted((p for p in logs_dir.glob("*") if p.is_file()), key=lambda p: p.stat().st_mtime)
        if logs_dir.is_dir()
        else []
    )
    tail: list[str] = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        tail.extend(f"{p.name}: {line}" for line in text.splitlines())
    if tail:
        parts.append(f"== {logs_dir} ==")
        parts.extend(_tail(tail, LOG_LINES))
    if not parts:
        raise RuntimeError(f"no cardd journal entries and no log files in {logs_dir}")
    return "\n".join(parts) + "\n"


def _write_archive(path: Path, top: str, members: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w:gz") as tar:
            now = time.time()
            for name, text in sorted(members.items()):
                data = redact(text).encode("utf-8")
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), now, 0o600
                info.uname = info.gname = "cardd"
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
