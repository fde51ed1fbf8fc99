"""Direct dispatch of the inference routes: endpoints called without FastAPI's per-request machinery.

The inference endpoints read their body themselves and take only string path parameters, so FastAPI's
per-request work for them (walking the route table, solving dependencies, validating path parameters,
wrapping the response) is pure overhead, and on a single-row request it costs more than the inference.
:class:`DirectRoutes` sits inside the access middleware (auth, limits, metrics and the access log still
apply), matches ``POST`` requests against the declared routes' own path patterns and awaits their endpoints;
the routes stay declared on the app, so ``/docs`` and every other request are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from covserve.service._errors import ApiError, error_response

__all__ = ["DirectRoutes"]


class DirectRoutes:
    """Pure ASGI: ``POST`` requests matching one of ``routes`` go straight to its endpoint.

    An endpoint is awaited as ``endpoint(request, **path_parameters)`` with string parameters; an
    :class:`ApiError` it raises becomes its ``{"error"}`` response. Anything else continues to ``app``.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[APIRoute]) -> None:
        self._app = app
        self._routes = [route for route in routes if "POST" in (route.methods or ())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            for route in self._routes:
                match = route.path_regex.match(path)
                if match is not None:
                    parameters = match.groupdict()
                    scope["path_params"] = parameters
                    scope["route"] = route
                    try:
                        response = await route.endpoint(Request(scope, receive), **parameters)
                    except ApiError as error:
                        response = error_response(error.status, error.message, error.headers)
                    await response(scope, receive, send)
                    return
        await self._app(scope, receive, send)
