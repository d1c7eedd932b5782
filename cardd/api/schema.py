# SPDX-License-Identifier: Apache-2.0
"""Strict JSON request bodies, declared once per route.

A :class:`BodySchema` both checks a request body (the security middleware runs it before the
handler) and writes itself out as the JSON Schema in the OpenAPI document, so the documented
body and the accepted body cannot drift apart.

Rules (bridge-security.md §2.8, after web-eid-app's ``requireArgumentsAndOptionalLang``): the
body is one JSON object; a key the route does not know is refused by name; a required key that
is missing is refused by name; a value of the wrong type is refused by name. An optional key
may be ``null``, which means the same as leaving it out: JavaScript callers often send
``{"reader": null}`` for "any reader".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from cardd.errors import InvalidInput

FieldType = Literal["string", "integer", "boolean"]


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    description: str
    required: bool = False
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None

    def check(self, value: Any) -> None:
        """Raise InvalidInput naming this key when ``value`` does not fit."""
        if self.type == "string":
            if not isinstance(value, str):
                raise InvalidInput(f"'{self.name}' must be a string")
            if self.min_length is not None and len(value) < self.min_length:
                raise InvalidInput(f"'{self.name}' must have at least {self.min_length} characters")
            if self.max_length is not None and len(value) > self.max_length:
                raise InvalidInput(f"'{self.name}' must have at most {self.max_length} characters")
            if self.pattern is not None and re.search(self.pattern, value) is None:
                raise InvalidInput(f"'{self.name}' has the wrong form")
        elif self.type == "boolean":
            if not isinstance(value, bool):
                raise InvalidInput(f"'{self.name}' must be true or false")
        else:  # integer; JSON true/false are not integers here, whatever Python thinks
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"'{self.name}' must be an integer")
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise InvalidInput(
                    f"'{self.name}' must be an integer from {self.minimum} to {self.maximum}"
                )

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": self.type if self.required else [self.type, "null"],
            "description": self.description,
        }
        for key, value in (
            ("minLength", self.min_length),
            ("maxLength", self.max_length),
            ("minimum", self.minimum),
            ("maximum", self.maximum),
            ("pattern", self.pattern),
        ):
            if value is not None:
                schema[key] = value
        return schema


@dataclass(frozen=True)
class BodySchema:
    fields: tuple[Field, ...] = ()

    def validate(self, body: Any) -> dict[str, Any]:
        """The body as a dict with every optional key that was left out or null removed.

        :raises InvalidInput: naming the first offending key.
        """
        if not isinstance(body, dict):
            raise InvalidInput("the request body must be a JSON object")
        known = {f.name: f for f in self.fields}
        for key in body:
            if key not in known:
                # repr() of at most 40 characters: the key is the caller's own input, but an
                # error message is no place for a kilobyte of it
                raise InvalidInput(f"unknown key {key[:40]!r} in the request body")
        out: dict[str, Any] = {}
        for field in self.fields:
            value = body.get(field.name)
            if value is None:
                if field.required:
                    raise InvalidInput(f"'{field.name}' is required")
                continue
            field.check(value)
            out[field.name] = value
        return out

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: f.json_schema() for f in self.fields},
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            schema["required"] = required
        return schema
