"""OpenAPI documentation for routes that read their body themselves (for speed and for ``{"error"}`` errors).

FastAPI documents a body only when it parses it. :func:`json_body` describes the body instead, with the
pydantic model's schema and examples, and :func:`with_schemas` adds the models' schemas to the document's
``components`` so the references resolve in ``/docs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

__all__ = ["error_responses", "json_body", "with_schemas"]

REFERENCE = "#/components/schemas/{model}"
JSON = "application/json"


def json_body(model: type[BaseModel], examples: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route: a required JSON body of ``model`` with named ``examples``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": {"$ref": REFERENCE.format(model=model.__name__)},
                    "examples": {name: {"value": value} for name, value in examples.items()},
                }
            },
        }
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries documenting the ``{"error": "..."}`` body of each status."""
    error = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
    return {status: {"description": "error", "content": {JSON: {"schema": error}}} for status in statuses}


def with_schemas(app: FastAPI, models: tuple[type[BaseModel], ...]) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` replacement whose document also holds the JSON schemas of ``models``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=REFERENCE)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    return openapi
