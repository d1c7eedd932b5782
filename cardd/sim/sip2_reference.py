# SPDX-License-Identifier: Apache-2.0
"""A SIP2 server cardd did not write: PyPI ``pysip2`` (MIT, an AnyIO ACS), serving the same
patron table as :mod:`cardd.sim.sip2_server`. Tests and the benchmark run our client against it,
so our reading of the protocol is checked against someone else's.

``pysip2`` is a test dependency (the ``test`` extra), never needed by the daemon: it is imported
here only, and only when a reference server is made. How it was evaluated, and where it differs
from real library systems, is in :mod:`cardd.kiosk.sip2`.

::

    app = make_reference_server(demo_patrons(), accounts={"kiosk": "secret"})
    async with app.start() as port:       # 127.0.0.1, a free port
        ...
    server = ReferenceServer(app); port = await server.start(); ...; await server.stop()

    python -m cardd.sim.sip2_reference --port 6001      # a separate process (the benchmark)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

from cardd.sim.sip2_server import UNKNOWN_STATUS, TestPatron, demo_patrons


def _now18() -> str:
    now = dt.datetime.now()
    return now.strftime("%Y%m%d") + "    " + now.strftime("%H%M%S")


def make_reference_server(
    patrons: Mapping[str, TestPatron],
    *,
    accounts: Mapping[str, str],
    institution: str = "MAIN",
    encoding: str = "utf-8",
) -> Any:
    """A ``pysip2.SIP2Server`` with login required and handlers for 93, 23, 63 and 35 (99 is
    built in). UTF-8 by default, for the demo patrons' Chinese names (pysip2's own default is
    cp850, as FOLIO's)."""
    import pysip2

    app = pysip2.SIP2Server(
        institution_id=institution,
        library_name="pysip2 reference",
        login_required=True,
        encoding=encoding,
    )

    @app.route(pysip2.LOGIN)
    async def login(req: Any, ctx: Any) -> Any:
        ok = accounts.get(req.login_user_id) == req.login_password
        return pysip2.LoginResponse(ok="1" if ok else "0")

    def lookup(patron_id: str) -> tuple[str, str, str, tuple[str, ...]]:
        patron = patrons.get(patron_id)
        if patron is None:
            return UNKNOWN_STATUS, "", "N", ("Unknown patron",)
        return patron.status, patron.name, "Y" if patron.valid else "N", patron.screen_messages

    @app.route(pysip2.PATRON_STATUS)
    async def patron_status(req: Any, ctx: Any) -> Any:
        status, name, valid, screen = lookup(req.patron_identifier)
        return pysip2.PatronStatusResponse(
            patron_status=status,
            language=req.language,
            transaction_date=_now18(),
            institution_id=req.institution_id,
            patron_identifier=req.patron_identifier,
            personal_name=name,
            valid_patron=valid,
            screen_message=screen,
        )

    @app.route(pysip2.PATRON_INFORMATION)
    async def patron_information(req: Any, ctx: Any) -> Any:
        status, name, valid, screen = lookup(req.patron_identifier)
        return pysip2.PatronInformationResponse(
            patron_status=status,
            language=req.language,
            transaction_date=_now18(),
            hold_items_count="0000",
            overdue_items_count="0000",
            charged_items_count="0000",
            fine_items_count="0000",
            recall_items_count="0000",
            unavailable_holds_count="0000",
            institution_id=req.institution_id,
            patron_identifier=req.patron_identifier,
            personal_name=name,
            valid_patron=valid,
            screen_message=screen,
        )

    @app.route(pysip2.END_PATRON_SESSION)
    async def end_session(req: Any, ctx: Any) -> Any:
        return pysip2.EndSessionResponse(
            end_session="Y",
            transaction_date=_now18(),
            institution_id=req.institution_id,
            patron_identifier=req.patron_identifier,
        )

    return app


class ReferenceServer:
    """The reference server on the running asyncio loop, started and stopped from any task.

    pysip2 serves inside an AnyIO task group, which must be entered and left by one task; a
    test fixture's set-up and tear-down run in different tasks, so the server gets its own."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def serve() -> None:
            try:
                async with self.app.start() as port:
                    ready.set_result(port)
                    await self._stop.wait()
            except BaseException as e:
                if not ready.done():
                    ready.set_exception(e)
                raise

        self._task = asyncio.create_task(serve(), name="pysip2-reference")
        self.port = await ready
        return self.port

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def main() -> None:
    parser = argparse.ArgumentParser(description="pysip2 reference SIP2 server (demo patrons)")
    parser.add_argument("--port", type=int, default=6001)
    parser.add_argument("--user", default="kiosk")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--encoding", default="utf-8")
    args = parser.parse_args()
    import anyio

    app = make_reference_server(
        demo_patrons(), accounts={args.user: args.password}, encoding=args.encoding
    )
    print(f"pysip2 reference server on 127.0.0.1:{args.port}", flush=True)
    anyio.run(app.serve, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
