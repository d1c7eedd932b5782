# SPDX-License-Identifier: Apache-2.0
"""What each API route accepts and answers: one record per aiohttp route name.

The records feed two things that must agree: the security middleware (which body schema to
enforce, whether the route is public) and the OpenAPI document at ``GET /v1/openapi.json``
(cardd/api/openapi.py). A route's *scope* is not repeated here: it stays where the route is
added (``_route(name, scope)`` in cardd/api/app.py fills ``security.ROUTE_SCOPE``), and the
OpenAPI document reads it from there.

To describe a new route (e.g. the PIN page and ``/v1/client/cardd.js``), call :func:`describe`
once at import time of the module that adds the route, with the same name as the aiohttp route::

    from cardd.api.routedoc import Reply, describe
    describe("client.js", "GET", "/v1/client/cardd.js", "The JavaScript client",
             responses={200: Reply("The script", content_type="text/javascript", schema=None)},
             public=True)

``public=True`` skips caller identification (Origin allowlist / bearer token) for that route:
only for GET routes that a browser loads by navigation or ``<script src>`` (those carry no
Origin header) and that reveal nothing and change nothing. The Host check and the security
headers still apply. Every other route must name the callers' scope in ``_route``.

The test tests/integration/test_openapi.py fails when a route has no record, or a record names
a route that does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cardd.api.schema import BodySchema

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """One documented answer of a route. ``schema`` None means "no schema for the body"."""

    description: str
    schema: Mapping[str, Any] | None = None
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)  # header name -> description


@dataclass(frozen=True)
class RouteDoc:
    name: str
    method: str
    path: str
    summary: str
    description: str = ""
    body: BodySchema | None = None
    responses: Mapping[int, Reply] = field(default_factory=dict)
    public: bool = False
    #: error statuses this route can answer besides the ones every route can (401, 403, …)
    errors: Mapping[int, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


ROUTE_DOCS: dict[str, RouteDoc] = {}


def describe(
    name: str,
    method: str,
    path: str,
    summary: str,
    *,
    description: str = "",
    body: BodySchema | None = None,
    responses: Mapping[int, Reply] | None = None,
    errors: Mapping[int, str] | None = None,
    public: bool = False,
    tags: tuple[str, ...] = (),
) -> RouteDoc:
    """Register (or replace) the record of route ``name``; see the module docstring."""
    doc = RouteDoc(
        name=name,
        method=method.upper(),
        path=path,
        summary=summary,
        description=description,
        body=body,
        responses=dict(responses or {}),
        errors=dict(errors or {}),
        public=public,
        tags=tags,
    )
    ROUTE_DOCS[name] = doc
    return doc
