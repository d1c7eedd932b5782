# SPDX-License-Identifier: Apache-2.0
"""The demo registration site in headless Chromium, through cardd's PIN page, end to end.

The site (its own origin) issues a nonce; the page calls cardd.moica.authenticate(), which opens
cardd's PIN window; the PIN typed there reaches the SoftHSM2 token; the site verifies the token
(test PKI, OCSP) and fills 姓名; an EasyCard tap binds its chip number; the account is activated.
Then every way a PIN request can end without a token: wrong PIN (and a right one after), cancel,
card pulled, window closed.
"""

from __future__ import annotations

import re

import pytest

from cardd.rfid.uid import uid_forms
from tests.browser.conftest import HOLDER, ID_NUMBER, PIN, shot
from tests.helpers import READER1, fixture_card

pytestmark = [pytest.mark.pcsc, pytest.mark.browser]


def open_form(context, world):
    page = context.new_page()
    page.goto(world.site + "/")
    page.wait_for_selector("body[data-cardd]")
    assert page.get_attribute("body", "data-cardd") == "ready", page.inner_text("#carddStatus")
    page.fill("#idNumber", ID_NUMBER)
    return page


def start_moica(page):
    """Click 以自然人憑證驗證 and return cardd's PIN window once it shows the request."""
    with page.expect_popup() as popup_info:
        page.click("#moicaBtn")
    popup = popup_info.value
    popup.wait_for_selector("body[data-state=waiting_pin]")
    return popup


def moica_outcome(page) -> str:
    page.wait_for_selector("body[data-moica]")
    return page.get_attribute("body", "data-moica")


def accounts(page) -> list[dict]:
    return page.evaluate("fetch('/api/accounts').then(r => r.json())")["accounts"]


def test_registration_with_citizen_certificate_and_easycard(world, context, moica_card):
    page = open_form(context, world)
    page.fill("#password", "abc12345")
    page.fill("#password2", "abc12345")
    page.fill("#birthday", "1990-01-02")
    page.fill("#email", "wang@example.tw")
    page.fill("#phone", "0912345678")
    page.fill("#address", "臺中市南區五權南路100號")
    assert "格式正確" in page.inner_text("#idHint")  # the page's own checksum check
    shot(page, "01-registration-form")

    popup = start_moica(page)
    # what the PIN window shows comes from cardd's operation record
    assert popup.url.startswith(world.cardd + "/pin?op=")
    assert popup.inner_text("#origin") == world.site
    assert popup.inner_text("#holder") == HOLDER
    assert "身分驗證" in popup.inner_text("#action")
    shot(popup, "02-pin-page")
    popup.fill("#pin", PIN)
    popup.click("#ok")
    assert moica_outcome(page) == "verified", page.inner_text("#moicaResult")
    assert page.input_value("#name") == HOLDER  # 姓名 from the certificate
    assert "6789" in page.inner_text("#moicaResult")
    shot(page, "03-verified")

    # 綁定悠遊卡／一卡通: the page waits for a tap; a tap before its request arrived would be
    # missed, so the card is tapped again until the page has it
    card = fixture_card("easycard_4b.json")
    expected = uid_forms(card.uid).to_dict()["decLE"]
    page.click("#bindBtn")
    page.wait_for_function("document.querySelector('#chipResult').textContent.includes('感應區')")
    for _ in range(10):
        moica_card[1].insert(card)
        world.wait_reader(READER1, present=True)
        try:
            page.wait_for_selector(f"body[data-chip='{expected}']", timeout=3000)
            break
        except Exception:
            moica_card[1].remove()
            world.wait_reader(READER1, present=False)
    assert page.get_attribute("body", "data-chip") == expected == "3224478099"
    shot(page, "04-easycard-bound")

    page.click("#submitBtn")
    page.wait_for_selector("body[data-account]")
    assert page.get_attribute("body", "data-account") == "activated", page.inner_text("#result")
    shot(page, "05-account-activated")
    [account] = [a for a in accounts(page) if a["maskedId"] == "A12*****89"]
    assert account["status"] == "activated" and account["verifiedBy"] == "moica"
    assert (account["name"], account["chip"], account["chipForm"]) == (HOLDER, expected, "decLE")


def test_wrong_pin_then_right_pin(world, context, moica_card):
    page = open_form(context, world)
    popup = start_moica(page)
    popup.fill("#pin", "135791")
    popup.click("#ok")
    popup.wait_for_selector("body[data-error=pin_incorrect][data-state=waiting_pin]")
    assert "PIN 碼錯誤" in popup.inner_text("#message")
    shot(popup, "06-wrong-pin")
    assert popup.input_value("#pin") == ""  # the field is cleared, never kept
    # the request is still waiting (never retried by cardd): the right PIN completes it
    popup.fill("#pin", PIN)
    popup.click("#ok")
    assert moica_outcome(page) == "verified", page.inner_text("#moicaResult")
    shot(page, "07-verified-after-wrong-pin")


def test_malformed_pin_never_reaches_the_card(world, context, moica_card):
    page = open_form(context, world)
    popup = start_moica(page)
    # the page refuses it; the server refuses it too (a page could skip its own check)
    popup.fill("#pin", "12a4")
    popup.click("#ok")
    assert "6 到 8 位數字" in popup.inner_text("#message")
    answer = popup.evaluate("""async () => {
        const app = document.getElementById('app');
        const r = await fetch('/v1/pin/' + app.dataset.op + '/submit', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({secret: app.dataset.secret, pin: '12'})});
        return [r.status, await r.json()];
    }""")
    assert answer[0] == 422 and answer[1]["error"]["code"] == "pin_format"
    assert popup.get_attribute("body", "data-state") == "waiting_pin"
    popup.click("#cancel")
    assert moica_outcome(page) == "user_cancelled"


def test_cancel_button(world, context, moica_card):
    page = open_form(context, world)
    popup = start_moica(page)
    popup.click("#cancel")
    popup.wait_for_selector("body[data-state=failed][data-error=user_cancelled]")
    shot(popup, "08-cancelled-pin-page")
    assert moica_outcome(page) == "user_cancelled"
    assert "取消" in page.inner_text("#moicaResult")
    shot(page, "09-cancelled")


def test_card_pulled_while_the_pin_page_is_open(world, context, moica_card):
    page = open_form(context, world)
    popup = start_moica(page)
    moica_card[0].remove()
    popup.wait_for_selector("body[data-state=failed][data-error=card_removed]")
    shot(popup, "10-card-removed-pin-page")
    assert moica_outcome(page) == "card_removed"
    shot(page, "11-card-removed")


def test_closing_the_pin_window(world, context, moica_card):
    page = open_form(context, world)
    popup = start_moica(page)
    popup.close()
    assert moica_outcome(page) == "user_cancelled"
    shot(page, "12-window-closed")


def test_id_number_that_is_not_the_card_holders(world, context, moica_card):
    page = open_form(context, world)
    page.fill("#idNumber", "B120000008")  # valid checksum, another person's last four
    popup = start_moica(page)
    popup.fill("#pin", PIN)
    popup.click("#ok")
    page.wait_for_selector("#moicaResult.error")
    assert "不符" in page.inner_text("#moicaResult")
    assert page.input_value("#name") == ""


def test_the_pin_never_reaches_a_log(world):
    text = world.cardd_log.read_text(errors="replace")
    assert "cardd listening" in text  # the daemon's log, with content
    assert PIN not in text and "135791" not in text
    assert not re.search(r'"pin"\s*:', text)
