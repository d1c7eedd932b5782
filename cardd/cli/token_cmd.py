# SPDX-License-Identifier: Apache-2.0
"""`cardd token show|rotate`: the bearer token local programs send to the localhost API.

The token file is ``[api] token_file`` (default ``<state_dir>/token``), mode 0600, created by
``cardd serve`` at first start. ``rotate`` replaces it atomically; a running daemon notices
the new file on the next request and refuses the old token from then on, no restart needed.
``show`` prints the path, not the token (terminals get recorded, screens get shared); add
``--print`` to get the token itself, e.g. ``curl -H "Authorization: Bearer $(cardd token show
--print)" …``.
"""

from __future__ import annotations

import argparse
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardd.errors import UsageError

if TYPE_CHECKING:
    from cardd.config import Config


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "token",
        help="show or rotate the API token of local programs",
        description="Local programs (scripts, CI, the kiosk shell) call cardd's API with the "
        "token from the daemon's token file as 'Authorization: Bearer TOKEN'. Web pages never "
        "use it: they are allowed by origin ([api.origins] in the configuration).",
    )
    s = p.add_subparsers(dest="token_command", metavar="TOKENCOMMAND", required=True)
    q = s.add_parser("show", help="print the token file's path (the token with --print)")
    q.add_argument(
        "--print", dest="print_token", action="store_true", help="print the token itself"
    )
    q = s.add_parser(
        "rotate", help="write a new token; the running daemon accepts only the new one"
    )
    q.add_argument("--print", dest="print_token", action="store_true", help="print the new token")


def token_path(config: Config) -> Path:
    return config.api.token_file or (config.state_dir / "token")


def run(config: Config, args: argparse.Namespace) -> int:
    path = token_path(config)
    if args.token_command == "rotate":  # noqa: S105 - a subcommand, not a secret
        from cardd.api.security import write_new_token

        try:
            token = write_new_token(path)
        except PermissionError:
            raise _no_access(path, "write") from None
        print(
            f"new token written to {path} (mode 0600); a running cardd accepts only it from now on"
        )
        if args.print_token:
            print(token)
        return 0

    try:
        st = path.stat()
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise UsageError(
            f"no token file at {path} yet: start `cardd serve` once, or run `cardd token rotate`"
        ) from None
    except PermissionError:
        raise _no_access(path, "read") from None
    if args.print_token:
        print(token)
        return 0
    print(path)
    if stat.S_IMODE(st.st_mode) & 0o077:
        print(
            f"warning: {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "run `cardd token rotate` to replace it with a private one"
        )
    return 0


def _no_access(path: Path, what: str) -> UsageError:
    return UsageError(
        f"cannot {what} the token file {path}: run as the user cardd runs as, or as root"
    )
