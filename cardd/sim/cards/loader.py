# SPDX-License-Identifier: Apache-2.0
"""Virtual cards from JSON card images (``tests/fixtures/cards/*.json``).

One JSON object per card; ``type`` picks the model and ``description`` is free text for people::

    {"type": "uid", "uid": "93A131C0"}
    {"type": "uid", "uid": "08A1B2C3", "random": true, "seed": 1}
    {"type": "uid", "uid": "04A1B2C3D4E5F6", "card_name": "0002"}      (or "atr": "3B...")
    {"type": "mifare-classic", "size": "1k", "uid": "A1B2C3D4", "image": "blank"}
    {"type": "mifare-classic", "image": "student.mfd"}    (path relative to the JSON; the size
                                                           and UID come from the image if absent)
    {"type": "iso-dep", "uid": "04...", "historical": "80"}           (optional "ats")
    {"type": "moica-gen1", ...}                          (cardd.sim.cards.moica reads the rest)

Hex strings may contain spaces or colons. Anything wrong becomes a :class:`ConfigError` naming
the file, so a broken fixture fails with a readable message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cardd.errors import ConfigError
from cardd.sim.cards.base import VirtualCard
from cardd.sim.cards.contactless import CARD_NAME_CLASSIC_1K
from cardd.sim.cards.isodep import IsoDepCard
from cardd.sim.cards.mifare import LAYOUTS, MifareClassic
from cardd.sim.cards.uid import UidCard

_Builder = Callable[[Mapping[str, Any], Path], VirtualCard]
_COMMON_KEYS = frozenset({"type", "description"})
_MOICA_MODULE = "cardd.sim.cards.moica"


def load_card(path: str | Path) -> VirtualCard:
    """Read a JSON card image and build its card model.

    :param path: the ``.json`` file; image files it names are relative to it
    :raises ConfigError: unreadable file, bad JSON or an invalid card description
    """
    path = Path(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read card image: {exc}") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a card image is a JSON object")
    try:
        return card_from_spec(spec, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def card_from_spec(spec: Mapping[str, Any], base_dir: str | Path) -> VirtualCard:
    """Build a card model from a parsed card image.

    :param spec: the JSON object
    :param base_dir: where relative image paths start (the JSON file's directory)
    :raises ConfigError: unknown type, missing or invalid fields
    """
    base = Path(base_dir)
    kind = spec.get("type")
    build: _Builder
    if kind == "moica-gen1":
        build = _moica  # its module checks its own fields
    else:
        builder = _BUILDERS.get(kind) if isinstance(kind, str) else None
        if builder is None:
            known = ", ".join(sorted([*_BUILDERS, "moica-gen1"]))
            raise ConfigError(f"unknown card type {kind!r} (known: {known})")
        allowed, build = builder
        unknown = set(spec) - allowed - _COMMON_KEYS
        if unknown:
            raise ConfigError(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")
    try:
        return build(spec, base)
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"{kind}: {exc}") from exc


def _uid_card(spec: Mapping[str, Any], base: Path) -> VirtualCard:
    atr = _hex(spec, "atr") if "atr" in spec else None
    card_name = _hex(spec, "card_name") if "card_name" in spec else CARD_NAME_CLASSIC_1K
    seed = spec.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError("seed must be an integer")
    return UidCard(
        _hex(spec, "uid"),
        atr,
        card_name=card_name,
        random_id=_bool(spec, "random"),
        seed=seed,
    )


def _mifare_classic(spec: Mapping[str, Any], base: Path) -> VirtualCard:
    size = spec.get("size")
    if size is not None and size not in LAYOUTS:
        raise ValueError(f"size must be one of {', '.join(LAYOUTS)}, not {size!r}")
    uid = _hex(spec, "uid") if "uid" in spec else None
    image = spec.get("image", "blank")
    if not isinstance(image, str):
        raise ValueError("image must be 'blank' or a file name")
    if image == "blank":
        if uid is None:
            raise ValueError("a blank image needs a uid")
        return MifareClassic.blank(uid, size or "1k")
    card = MifareClassic.from_mfd(base / image, uid=uid)
    if size is not None and card.size != size:
        raise ValueError(f"{image} holds a {card.size} card, not {size}")
    return card


def _iso_dep(spec: Mapping[str, Any], base: Path) -> VirtualCard:
    historical = _hex(spec, "historical") if "historical" in spec else b"\x80"
    ats = _hex(spec, "ats") if "ats" in spec else None
    return IsoDepCard(_hex(spec, "uid"), historical, ats)


def _moica(spec: Mapping[str, Any], base: Path) -> VirtualCard:
    # Imported here: another module owns that model, and the other card types must load
    # whether or not it is installed.
    try:
        from cardd.sim.cards.moica import MoicaGen1Card
    except ModuleNotFoundError as exc:
        if exc.name != _MOICA_MODULE:
            raise
        raise ConfigError("moica-gen1 cards need cardd.sim.cards.moica") from exc
    card: VirtualCard = MoicaGen1Card.from_spec(dict(spec), base)
    return card


_BUILDERS: dict[str, tuple[frozenset[str], _Builder]] = {
    "uid": (frozenset({"uid", "atr", "card_name", "random", "seed"}), _uid_card),
    "mifare-classic": (frozenset({"uid", "size", "image"}), _mifare_classic),
    "iso-dep": (frozenset({"uid", "historical", "ats"}), _iso_dep),
}


def _hex(spec: Mapping[str, Any], key: str) -> bytes:
    value = spec.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a hex string")
    try:
        return bytes.fromhex(value.replace(":", " "))
    except ValueError:
        raise ValueError(f"{key} is not hex: {value!r}") from None


def _bool(spec: Mapping[str, Any], key: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value
