# SPDX-License-Identifier: Apache-2.0
"""Configuration reload on SIGHUP (``cardd reload``, ``systemctl reload cardd``).

The daemon re-reads the file it started with. If it parses and validates, the settings that
can change live are swapped in at once, without dropping readers, event streams or operations
in flight; if it does not, the reload is refused with the file, the line and the reason (in the
log, in systemd's STATUS= line and in ``<state_dir>/reload-status.json`` for ``cardd reload``)
and the configuration in force stays as it was.

What changes live (:data:`LIVE_KEYS`):

- ``api.origins``: origins and their scopes, for the next request (open streams keep going;
  a stream of an origin that lost its scope ends at the next reconnect);
- ``readers.operation_timeout``, ``readers.kinds``, ``readers.ignore`` (for readers that appear
  from now on; a reader already listed stays until it is unplugged);
- ``rfid.key_file``, ``rfid.station``, ``rfid.consent_column``: the key file is loaded and
  checked during the reload (a bad one refuses the reload), and the next operation uses it;
  a burn already running finishes with the keys it started with;
- ``moica.revocation``, ``moica.trust_dir``, ``moica.ocsp``, ``moica.crl_grace_hours``: the
  trust store and revocation sources are rebuilt on next use;
- ``log.level``, ``log.traffic``, ``log.format``.

What needs a restart (logged as ignored, the old value stays in force): ``api.host``,
``api.port`` (the listening socket), ``api.token_file``, ``rfid.ledger`` (an open database, maybe
with a burn between reserve and commit), ``moica.pkcs11_module`` (a loaded C library that holds
the card's login), ``state_dir``, ``sim.*`` and any section cardd cannot switch live.

How the parts see the change: the daemon hands them :attr:`LiveConfig.view` instead of a
:class:`~cardd.config.Config`. It reads through to the configuration in force, so code that
keeps ``config.readers`` (the reader manager) reads the new values on its next request without
knowing about reloads. Hot paths that derive tables from a section (the security middleware's
origin -> scopes map) use :func:`derived`: the tables are rebuilt once, at the swap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from cardd.config import Config, find_config, parse_config
from cardd.errors import CardError, ConfigError

logger = logging.getLogger(__name__)
T = TypeVar("T")

LIVE_KEYS = frozenset(
    {
        "api.origins",
        "readers.operation_timeout",
        "readers.ignore",
        "readers.kinds",
        "rfid.key_file",
        "rfid.station",
        "rfid.consent_column",
        "moica.revocation",
        "moica.trust_dir",
        "moica.ocsp",
        "moica.crl_grace_hours",
        "log.level",
        "log.traffic",
        "log.format",
    }
)
PID_FILE = "cardd.pid"
STATUS_FILE = "reload-status.json"


# -- the configuration in force, seen through views ------------------------------------------


class LiveConfig:
    """The configuration in force; :meth:`swap` replaces it in one reference assignment."""

    def __init__(self, config: Config) -> None:
        self.current = config
        self.view = cast(Config, _View(self, ()))
        self._on_swap: list[Callable[[Config], None]] = []

    def swap(self, config: Config) -> None:
        self.current = config
        for callback in self._on_swap:
            callback(config)

    def on_swap(self, callback: Callable[[Config], None]) -> None:
        """Call ``callback(new_config)`` right after every swap (on the event loop)."""
        self._on_swap.append(callback)


class _View:
    """Reads through to ``live.current`` (and its sections) at every attribute access."""

    __slots__ = ("_live", "_path")

    def __init__(self, live: LiveConfig, path: tuple[str, ...]) -> None:
        object.__setattr__(self, "_live", live)
        object.__setattr__(self, "_path", path)

    def _target(self) -> Any:
        obj: Any = self._live.current
        for name in self._path:
            obj = getattr(obj, name)
        return obj

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target(), name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return _View(self._live, (*self._path, name))  # a section: keep reading through
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the configuration is read-only; reload it instead")

    def __repr__(self) -> str:
        return f"<live {self._target()!r}>"


class Derived(Generic[T]):
    """``build(section)`` of one configuration section, built again when a reload swaps that
    section; :attr:`value` is what is in force.

    For hot paths that derive tables from the configuration once (the security middleware's
    host set and origin -> scopes map): a request reads one attribute, and a reload does the
    work once, at the swap, instead of every request checking whether something changed.
    Requests already running keep the value they read; new ones get the new value.
    """

    __slots__ = ("value", "_build", "_section")

    def __init__(self, section: Any, build: Callable[[Any], T]) -> None:
        self._build = build
        self._section = section
        self.value: T = build(section)

    def _rebuild(self, section: Any) -> None:
        if section is not self._section:
            self.value = self._build(section)
            self._section = section


def derived(section: Any, build: Callable[[Any], T]) -> Derived[T]:
    """:class:`Derived` of ``section``: a section of :attr:`LiveConfig.view` (e.g. ``view.api``)
    follows reloads; a plain section (tests, ``cardd`` without a reloader) never changes."""
    if not isinstance(section, _View):
        return Derived(section, build)
    live, path = section._live, section._path  # noqa: SLF001 - our own class

    def current(config: Config) -> Any:
        obj: Any = config
        for name in path:
            obj = getattr(obj, name)
        return obj

    out = Derived(current(live.current), build)
    live.on_swap(lambda config: out._rebuild(current(config)))  # noqa: SLF001
    return out


# -- finding what changed --------------------------------------------------------------------


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted names of the settings that differ (``api.origins``, ``log.level``, ``state_dir``)."""
    out = []
    for f in dataclasses.fields(old):
        if f.name == "source":
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            for sub in dataclasses.fields(a):
                if getattr(a, sub.name) != getattr(b, sub.name, None):
                    out.append(f"{f.name}.{sub.name}")
        elif a != b:
            out.append(f.name)
    return out


def merge_live(current: Config, new: Config, keys: list[str]) -> Config:
    """``current`` with the live ``keys`` taken from ``new``."""
    sections: dict[str, dict[str, Any]] = {}
    for key in keys:
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = getattr(getattr(new, section), name)
    return dataclasses.replace(
        current,
        **{s: dataclasses.replace(getattr(current, s), **v) for s, v in sections.items()},
    )


# -- where in the file an error is ---------------------------------------------------------


_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_KEY_PART = r'(?:"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def find_line(text: str, path: tuple[str, ...]) -> int | None:
    """1-based line where the key or table ``path`` is defined (its first mention)."""
    table: tuple[str, ...] = ()
    prefix_line = None
    for number, line in enumerate(text.splitlines(), 1):
        if m := _HEADER.match(line):
            table = _split_key(m.group(1))
            here = table
        elif m := _ASSIGN.match(line):
            here = table + _split_key(m.group(1))
        else:
            continue
        if here == path:
            return number
        if prefix_line is None and here[: len(path)] == path:
            prefix_line = number
    return prefix_line


def _paths(raw: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in raw.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out.extend(_paths(v, (*prefix, k)))
    return out


def _without(raw: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    copy = dict(raw)
    if len(path) == 1:
        copy.pop(path[0], None)
    else:
        copy[path[0]] = _without(raw[path[0]], path[1:])
    return copy


def culprit(raw: dict[str, Any], source: Path, message: str) -> tuple[str, ...] | None:
    """The key whose removal makes the error go away (or changes it), deepest first.

    config.py's messages name the setting in their own words; trying the file without each key
    finds the one at fault whatever the wording, and the line follows from it.
    """
    candidate = None
    for path in sorted(_paths(raw), key=len, reverse=True):
        try:
            parse_config(_without(raw, path), source=source)
        except ConfigError as e:
            if candidate is None and e.message != message:
                candidate = path
            continue
        except Exception:  # noqa: BLE001, S112 - a half-removed table may upset the parser
            continue
        return path
    return candidate


@dataclass(frozen=True)
class Refusal:
    path: Path
    line: int | None
    column: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}" + (f" line {self.line}" if self.line else "")
        return f"{where}: {self.reason}"


def _reason(message: str, source: Path) -> str:
    for prefix in (f"{source}: ", f"{source} ", "config: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def load_checked(path: Path) -> tuple[Config, None] | tuple[None, Refusal]:
    """Parse and validate ``path``: the new Config, or why (and where) it is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        return None, Refusal(path, None, None, f"cannot read: {e.strerror}")
    except UnicodeDecodeError as e:
        return None, Refusal(path, None, None, f"not UTF-8: {e.reason}")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _TOML_POS.search(msg)
        reason = (
            "TOML syntax: "
            + re.sub(r"\s*\(at end of document\)", "", _TOML_POS.sub("", msg)).strip()
        )
        if m:
            return None, Refusal(path, int(m.group(1)), int(m.group(2)), reason)
        if "end of document" in msg:  # an unclosed array or string: the fault runs to the end
            return None, Refusal(path, len(text.splitlines()), None, reason)
        return None, Refusal(path, None, None, reason)
    try:
        return parse_config(raw, source=path), None
    except ConfigError as e:
        key = culprit(raw, path, e.message)
        line = find_line(text, key) if key else None
        return None, Refusal(path, line, None, _reason(e.message, path))


# -- the reloader ----------------------------------------------------------------------------


class Reloader:
    """Re-reads the configuration on SIGHUP and applies what may change live.

    :param live: the configuration in force (its ``source`` is the file re-read).
    :param station: the daemon's RfidStation (its cached keys are dropped on a key change).
    :param moica: the daemon's MoicaService (trust and revocation rebuilt on change).
    :param on_status: called with a one-line summary after each attempt (systemd STATUS=).
    """

    def __init__(
        self,
        live: LiveConfig,
        *,
        station: Any = None,
        moica: Any = None,
        on_status: Callable[[], None] | None = None,
        notifier: Any = None,
    ) -> None:
        self.live = live
        self.station = station
        self.moica = moica
        self.on_status = on_status
        self.notifier = notifier
        self.refused: Refusal | None = None
        self.state_dir = live.current.state_dir
        # What the file said when last read: a --port given on the command line is not a
        # change the file asked for.
        self._file_config = live.current
        source = live.current.source
        if source is not None:
            cfg, _ = load_checked(source)
            if cfg is not None:
                self._file_config = cfg
        self._loop: Any = None

    # -- process plumbing ----------------------------------------------------------------

    def install(self, loop: Any) -> None:
        """SIGHUP → :meth:`reload`; the pid file for ``cardd reload``."""
        self._loop = loop
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        except (NotImplementedError, RuntimeError):  # not the main thread (embedded use)
            self._loop = None
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            _write_private(self.state_dir / PID_FILE, f"{os.getpid()}\n")
        except OSError as e:
            logger.warning(
                "no pid file in %s (cardd reload will not find this daemon): %s",
                self.state_dir,
                e.strerror,
            )

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_signal_handler(signal.SIGHUP)
            except (NotImplementedError, RuntimeError):
                pass
        pid_file = self.state_dir / PID_FILE
        try:
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()
        except OSError:
            pass

    def status_part(self) -> str | None:
        """For systemd's STATUS= line while a refused configuration is waiting to be fixed."""
        if self.refused is None:
            return None
        return f"configuration reload refused: {self.refused}"

    # -- the reload ------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read and apply; True when the new configuration is in force."""
        from cardd import metrics

        if self.notifier is not None:
            self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            ok = self._reload()
        except Exception as e:  # noqa: BLE001 - a reload must never take the daemon down
            logger.exception("configuration reload failed")
            self.refused = Refusal(self.live.current.source or Path("?"), None, None, str(e))
            self._write_status(False, [], [])
            ok = False
        metrics.CONFIG_RELOADS.inc("ok" if ok else "refused")
        if self.notifier is not None:
            self.notifier.send("READY=1")
        if self.on_status is not None:
            self.on_status()
        return ok

    def _reload(self) -> bool:
        current = self.live.current
        path = current.source
        if path is None:
            path = find_config(None)
            if path is None:
                logger.info("configuration reload: no configuration file; defaults stay in force")
                self.refused = None
                self._write_status(True, [], [])
                return True
        new, refusal = load_checked(path)
        if refusal is None and new is not None:
            refusal = self._check_live_parts(new, current)
        if refusal is not None or new is None:
            assert refusal is not None
            self.refused = refusal
            logger.error(
                "configuration reload refused: %s; the configuration in force stays as it was",
                refusal,
                extra={
                    "file": str(refusal.path),
                    "line": refusal.line,
                    "column": refusal.column,
                    "code": "config_invalid",
                },
            )
            self._write_status(False, [], [])
            return False

        changed = changed_keys(self._file_config, new)
        live = [k for k in changed if k in LIVE_KEYS]
        restart = [k for k in changed if k not in LIVE_KEYS]
        effective = merge_live(current, new, live)
        effective = dataclasses.replace(effective, source=path)
        self.live.swap(effective)
        self._file_config = new
        self.refused = None
        self._apply(current, effective, live)
        if restart:
            logger.warning(
                "configuration reload: %s changed but need%s a restart; the running values stay "
                "in force until `systemctl restart cardd`",
                ", ".join(restart),
                "s" if len(restart) == 1 else "",
                extra={"ignored": restart},
            )
        logger.info(
            "configuration reloaded from %s: %s",
            path,
            ", ".join(live) if live else "nothing that can change live changed",
            extra={"changed": live},
        )
        self._write_status(True, live, restart)
        return True

    def _check_live_parts(self, new: Config, current: Config) -> Refusal | None:
        """Refuse now what would only fail at the next operation: an unusable key file."""
        key_file = new.rfid.key_file
        if key_file is not None and key_file != current.rfid.key_file:
            from cardd.rfid.keys import load_key_file

            try:
                load_key_file(key_file)
            except CardError as e:
                assert new.source is not None
                text = new.source.read_text(encoding="utf-8")
                return Refusal(
                    new.source,
                    find_line(text, ("rfid", "key_file")),
                    None,
                    f"rfid.key_file: {e.message}",
                )
        trust_dir = new.moica.trust_dir
        if (
            trust_dir is not None
            and trust_dir != current.moica.trust_dir
            and not trust_dir.is_dir()
        ):
            assert new.source is not None
            text = new.source.read_text(encoding="utf-8")
            return Refusal(
                new.source,
                find_line(text, ("moica", "trust_dir")),
                None,
                f"moica.trust_dir: {trust_dir} is not a directory",
            )
        return None

    def _apply(self, old: Config, new: Config, keys: list[str]) -> None:
        if any(k.startswith("log.") for k in keys):
            from cardd.log import setup_logging

            setup_logging(new.log.level, traffic=new.log.traffic, fmt=new.log.format)
        station = self.station
        if station is not None and any(k.startswith("rfid.") for k in keys):
            import socket

            # Cached on first use: drop them so the next operation builds them from the new
            # configuration. An operation already running holds its own references.
            with station._lock:
                station._cards = None
                station.name = new.rfid.station or socket.gethostname()
        moica = self.moica
        rebuild = {"moica.trust_dir", "moica.ocsp", "moica.crl_grace_hours"} & set(keys)
        if moica is not None and rebuild:
            with moica._lock:
                old_revocation = moica._revocation
                moica._revocation = None
                if "moica.trust_dir" in rebuild:
                    moica._trust = None
            crls = getattr(old_revocation, "crls", None)
            if crls is not None:
                crls.stop(timeout=0)  # its refresher thread; lookups in flight still answer

    def _write_status(self, ok: bool, changed: list[str], restart: list[str]) -> None:
        r = self.refused
        status = {
            "ok": ok,
            "time": time.time(),
            "pid": os.getpid(),
            "changed": changed,
            "needsRestart": restart,
            "error": None
            if r is None
            else {
                "file": str(r.path),
                "line": r.line,
                "column": r.column,
                "reason": r.reason,
            },
        }
        try:
            _write_private(self.state_dir / STATUS_FILE, json.dumps(status) + "\n")
        except OSError as e:
            logger.warning("reload status not written: %s", e.strerror)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# -- `cardd reload` ------------------------------------------------------------------------


def daemon_pid(state_dir: Path) -> int | None:
    """The pid in the pid file, if that process is alive and is a cardd."""
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"cardd" in cmdline else None


def _systemd_unit(pid: int) -> str | None:
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    m = re.search(r"/([^/\n]+\.service)$", cgroup, re.MULTILINE)
    return m.group(1) if m and m.group(1).startswith("cardd") else None


def request_reload(state_dir: Path, *, wait: float = 10.0) -> dict[str, Any]:
    """Ask the running daemon to reload (systemctl under systemd, else SIGHUP); its answer."""
    import subprocess

    pid = daemon_pid(state_dir)
    if pid is None:
        raise ConfigError(
            f"no running cardd found (pid file {state_dir / PID_FILE}); start it with `cardd serve`"
        )
    status_file = state_dir / STATUS_FILE
    try:
        before = status_file.stat().st_mtime_ns
    except OSError:
        before = None
    unit = _systemd_unit(pid)
    if unit is not None:
        # systemd runs ExecReload= (kill -HUP $MAINPID) and knows a reload is under way
        subprocess.run(["systemctl", "reload", unit], check=True, timeout=30)
    else:
        os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if status_file.stat().st_mtime_ns != before:
                result: dict[str, Any] = json.loads(status_file.read_text())
                if result.get("pid") == pid:
                    return result
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise ConfigError(f"cardd (pid {pid}) did not report a reload within {wait:g} s; see its log")
