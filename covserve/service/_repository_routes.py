"""The repository extension of the Open Inference Protocol: index, load (hot reload) and unload."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request, Response

from covserve.service._repository import scan_repository

__all__ = ["index", "load", "router", "unload"]

router = APIRouter(prefix="/v2/repository", tags=["repository"])


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post("/index", summary="Every version on disk and whether it is served")
async def index(request: Request) -> Response:
    """``[{"name", "version", "state", "reason"}]``: READY when served, UNAVAILABLE otherwise."""
    models = request.app.state.models
    scan = await asyncio.to_thread(scan_repository, request.app.state.settings.repository)
    served = {(loaded.version.name, loaded.version.version) for loaded in models}
    entries: list[dict[str, str]] = [
        {
            "name": version.name,
            "version": str(version.version),
            "state": "READY" if (version.name, version.version) in served else "UNAVAILABLE",
            "reason": "" if (version.name, version.version) in served else "unloaded",
        }
        for version in scan.versions
    ]
    entries += [
        {
            "name": problem.path.parent.name,
            "version": problem.path.name,
            "state": "UNAVAILABLE",
            "reason": problem.reason,
        }
        for problem in scan.problems
    ]
    return _json(entries)


@router.post("/models/{name}/load", summary="Load or reload a model's versions from disk")
async def load(request: Request, name: str) -> Response:
    """Creates and warms new sessions before swapping them in; in-flight requests finish on the old ones.
    400 when no valid version of ``name`` exists (the reasons are in the message)."""
    models = request.app.state.models
    problems = await asyncio.to_thread(models.refresh, name)
    if name not in models.versions:
        reasons = (
            "; ".join(f"{problem.path}: {problem.reason}" for problem in problems) or "no version folder"
        )
        return Response(
            orjson.dumps({"error": f"model {name!r}: no valid version to load ({reasons})"}),
            status_code=400,
            media_type="application/json",
        )
    return _json({})


@router.post("/models/{name}/unload", summary="Stop serving a model")
async def unload(request: Request, name: str) -> Response:
    """404 when the model is not served."""
    request.app.state.models.unload(name)
    return _json({})
