# SPDX-License-Identifier: Apache-2.0
"""100 authenticate calls at once on one reader: one holds it and waits for its PIN, 99 get 409.

The calls come from a local program (bearer token, the relying party's origin in the body) so
that no browser connection limit serialises them; the one that proceeds is then completed
through cardd's PIN page in Chromium.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time

import aiohttp
import pytest

from cardd.moica.trust import TrustStore
from cardd.moica.types import RevocationPolicy
from cardd.moica.verify import verify_token
from tests.browser.conftest import PIN, shot

pytestmark = [pytest.mark.pcsc, pytest.mark.browser]

CALLS = 100


def test_hundred_concurrent_authenticate_calls(world, context, moica_card):
    nonce = base64.b64encode(secrets.token_bytes(32)).decode()
    ids = [secrets.token_urlsafe(16) for _ in range(CALLS)]
    answers: dict[str, tuple[int, dict]] = {}
    lock = threading.Lock()

    async def call(session: aiohttp.ClientSession, op: str) -> None:
        body = {"nonce": nonce, "origin": world.site, "pinPage": op}
        async with session.post(
            world.cardd + "/v1/moica/authenticate", json=body, headers=world.auth
        ) as r:
            answer = (r.status, await r.json())
        with lock:
            answers[op] = answer

    async def fire() -> None:
        connector = aiohttp.TCPConnector(limit=CALLS)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=180)
        ) as session:
            await asyncio.gather(*(call(session, op) for op in ids))

    caller = threading.Thread(target=asyncio.run, args=(fire(),))
    caller.start()
    deadline = time.monotonic() + 60
    while True:  # until all but one have their answer
        with lock:
            if len(answers) >= CALLS - 1:
                break
        assert time.monotonic() < deadline, f"only {len(answers)} answers"
        time.sleep(0.05)
    with lock:
        refused = dict(answers)
    assert len(refused) == CALLS - 1, {s for s, _ in refused.values()}
    assert {(s, b["error"]["code"]) for s, b in refused.values()} == {(409, "reader_busy")}
    [waiting] = [op for op in ids if op not in refused]

    # the one that holds the reader waits for its PIN on cardd's page
    page = context.new_page()
    page.goto(f"{world.cardd}/pin?op={waiting}")
    page.wait_for_selector("body[data-state=waiting_pin]")
    assert page.inner_text("#origin") == world.site
    shot(page, "30-one-of-hundred-waits-for-its-pin")
    # a refused call's page says how it ended
    other = context.new_page()
    other.goto(f"{world.cardd}/pin?op={next(iter(refused))}")
    other.wait_for_selector("body[data-state=failed][data-error=reader_busy]")
    page.fill("#pin", PIN)
    page.click("#ok")
    caller.join(120)
    assert not caller.is_alive()
    status, token = answers[waiting]
    assert status == 200, token
    result = verify_token(
        json.dumps(token),
        expected_origin=world.site,
        nonce=nonce,
        trust=TrustStore([world.ca], False),
        revocation=None,
        policy=RevocationPolicy.ALLOW_OFFLINE,
    )
    assert result.holder_name == "王小明"
