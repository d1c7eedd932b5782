# SPDX-License-Identifier: Apache-2.0
"""MOICA gen1 public data read back byte for byte through the real pcscd + vpcd."""

from __future__ import annotations

import json

import pytest

from cardd.moica.gen1 import MoicaGen1Session
from cardd.readers.pcsc import PcscBackend
from cardd.sim.cards.faults import FaultyCard
from tests.helpers import FIXTURES, READER0, fixture_card, wait_card

pytestmark = pytest.mark.pcsc


def expected():
    spec = json.loads((FIXTURES / "moica" / "card.json").read_text())
    return spec["cardNumber"], [(FIXTURES / "moica" / name).read_bytes() for name in spec["certificates"]]


def test_card_number_and_certificates_byte_for_byte(vreaders):
    card = fixture_card("../moica/card.json")
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    number, certs = expected()
    with PcscBackend().connect(READER0) as conn:
        assert MoicaGen1Session(conn).read_card_number() == number
        before = vreaders[0].link.apdu_count
        data = MoicaGen1Session(conn).read_public_data()
        used = vreaders[0].link.apdu_count - before
    assert data.card_number == number and data.from_directory
    assert sorted(data.certificates) == sorted(certs)
    # 4 for the number (3 SELECT + READ), then 26 for CDF and certificates, less the 3F00
    # selection the number already made (see test_moica_gen1 for the formula)
    assert used <= 30, used


def test_reading_through_61xx_chaining_gives_the_same_bytes(vreaders):
    card = FaultyCard(fixture_card("../moica/card.json"), chain_61xx=True)
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    _, certs = expected()
    with PcscBackend().connect(READER0) as conn:
        assert sorted(MoicaGen1Session(conn).read_certificates()) == sorted(certs)
