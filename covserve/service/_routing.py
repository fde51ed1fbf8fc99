"""Routes of the data plane: plain Starlette routes, documented in the app's OpenAPI document.

FastAPI's per-request work for an :class:`~fastapi.routing.APIRoute` (dependency solving, parameter
validation, response wrapping, two exit stacks) costs more than a single-row inference, and the inference
endpoints need none of it: they take the raw body and string path parameters. So, as MLServer and KServe
do, the hot ``POST`` routes are Starlette :class:`~starlette.routing.Route` objects in the app's own route
table: matched by the router, behind every middleware, their errors rendered by the app's exception
handlers. FastAPI documents only its own routes, so each :class:`DataPlaneRoute` also declares its OpenAPI
operation, and :func:`documented` adds those to the app's document.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from covserve.service._data_plane import DataPlane
from covserve.service._registry import VERSION_PATTERN
from covserve.service._responses import JSON

__all__ = ["DataPlaneRoute", "documented", "error_responses", "json_body"]

REFERENCE = "#/components/schemas/{model}"
PATH_PARAMETER = re.compile(r"{(\w+)}")
NON_WORD = re.compile(r"\W+")

Endpoint = Callable[[DataPlane, Request], Awaitable[Response]]


class _Bound:
    """The ASGI app of a data-plane route: ``endpoint(plane, request)``, its response sent as returned.

    Records its route as ``scope["route"]`` (as FastAPI's routes do) for the access accounting. Exceptions
    propagate to the app's exception middleware, which renders them with the app's handlers.
    """

    def __init__(self, endpoint: Endpoint, plane: DataPlane, path: str) -> None:
        self._endpoint = endpoint
        self._plane = plane
        self.route = Route(path, self, methods=["POST"], name=endpoint.__name__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        response = await self._endpoint(self._plane, Request(scope, receive))
        await response(scope, receive, send)


@dataclass(frozen=True)
class DataPlaneRoute:
    """One hot ``POST`` route: ``endpoint(plane, request)`` reads ``request.path_params`` (strings) and the
    body and asks ``plane`` for the answer.

    ``request_body`` and ``responses`` are OpenAPI objects (see :func:`json_body`, :func:`error_responses`);
    the summary, tags and the endpoint's docstring document the operation.
    """

    path: str
    endpoint: Endpoint
    summary: str
    tags: tuple[str, ...]
    request_body: dict[str, Any] | None = None
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)

    def route(self, plane: DataPlane) -> Route:
        """The Starlette route serving this path with ``plane``."""
        return _Bound(self.endpoint, plane, self.path).route

    def operation(self) -> dict[str, Any]:
        """The OpenAPI operation object of this route."""
        operation: dict[str, Any] = {
            "tags": list(self.tags),
            "summary": self.summary,
            "description": (self.endpoint.__doc__ or "").strip(),
            "operationId": f"{self.endpoint.__name__}_{NON_WORD.sub('_', self.path).strip('_')}_post",
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string", "title": name}}
                for name in PATH_PARAMETER.findall(self.path)
            ],
            "responses": {
                "200": {"description": "Successful Response"},
                **{str(status): response for status, response in self.responses.items()},
            },
        }
        if self.request_body is not None:
            operation["requestBody"] = self.request_body
        return operation


def json_body(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI request body: required JSON of ``model`` (schema in ``components``) with ``examples``."""
    return {
        "required": True,
        "content": {
            JSON: {
                "schema": {"$ref": REFERENCE.format(model=model.__name__)},
                "examples": {name: {"value": value} for name, value in examples.items()},
            }
        },
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the ``{"error": "..."}`` body of each status."""
    error = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    return {status: {"description": "error", "content": {JSON: {"schema": error}}} for status in statuses}


def documented(
    app: FastAPI, routes: Sequence[DataPlaneRoute], models: Sequence[type[BaseModel]]
) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` replacement: FastAPI's document, ``routes``' operations, ``models``' schemas."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            paths = document.setdefault("paths", {})
            for route in routes:
                paths.setdefault(route.path, {})["post"] = route.operation()
            for operations in paths.values():
                for operation in operations.values():
                    _as_served(operation)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for unused in VALIDATION_SCHEMAS:
                schemas.pop(unused, None)
            for model in models:
                schema = model.model_json_schema(ref_template=REFERENCE)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    return openapi


VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
"""FastAPI's 422 schemas: covserve renders validation errors as 400 ``{"error": ...}`` instead."""
SERVED_ERRORS = (400, 401, 404)
"""What every FastAPI route of covserve can answer besides its own statuses: a bad parameter, a missing
key, an unknown model or route."""


def _as_served(operation: dict[str, Any]) -> None:
    """Document what the server does: the ``{"error": ...}`` statuses instead of FastAPI's 422, and a
    version parameter's pattern (a positive integer without a leading zero)."""
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "version" and parameter["in"] == "path":
            parameter["schema"] = {"type": "string", "pattern": f"^{VERSION_PATTERN.pattern}$"}
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    for status, response in error_responses(*SERVED_ERRORS).items():
        responses.setdefault(str(status), response)
