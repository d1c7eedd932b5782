# SPDX-License-Identifier: Apache-2.0
"""`cardd reload`: the running daemon re-reads its configuration file (cardd.reload).

Finds the daemon through the pid file in the state directory, asks systemd to reload the unit
when the daemon runs under it (``ExecReload=/bin/kill -HUP $MAINPID``) and sends SIGHUP itself
otherwise, then waits for the daemon's answer: what changed, what needs a restart, or why the
file was refused (file, line, reason). Exit status 0 when the new configuration is in force,
3 (configuration) when it was refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from cardd.errors import ConfigError


def state_dir_of(config_path: str | None) -> Path:
    """The state directory (where the pid file is), even from a file that no longer validates."""
    from cardd.config import default_state_dir, find_config, load_config

    try:
        return load_config(config_path).state_dir
    except ConfigError:
        pass
    try:
        path = find_config(config_path)
        raw = tomllib.loads(path.read_text(encoding="utf-8")) if path else {}
        if isinstance(raw.get("state_dir"), str):
            return Path(raw["state_dir"])
    except (ConfigError, OSError, ValueError):
        pass
    return default_state_dir()


def run(config_path: str | None, args: argparse.Namespace) -> int:
    from cardd.reload import request_reload

    result = request_reload(state_dir_of(config_path))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    if result.get("ok"):
        if not args.json:
            changed = result.get("changed") or []
            print(
                "configuration reloaded: " + (", ".join(changed) if changed else "no live changes")
            )
            for key in result.get("needsRestart") or []:
                print(
                    f"  {key} changed: takes effect after `systemctl restart cardd`",
                    file=sys.stderr,
                )
        return 0
    error = result.get("error") or {}
    where = error.get("file", "?") + (f" line {error['line']}" if error.get("line") else "")
    if args.json:
        return 3
    raise ConfigError(
        f"reload refused: {where}: {error.get('reason', 'see the daemon log')}; "
        "the running configuration stays in force"
    )
