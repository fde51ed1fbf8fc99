"""The repository extension of the Open Inference Protocol: index, load (hot reload) and unload."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from covserve.service._data_plane import DataPlaneDependency
from covserve.service._errors import InvalidRequestError, NotFoundError
from covserve.service._repository import scan_repository
from covserve.service._responses import json_response
from covserve.service._routing import error_responses

__all__ = ["index", "load", "router", "unload"]

router = APIRouter(prefix="/v2/repository", tags=["repository"], responses=error_responses(403))


@router.post("/index", summary="Every version on disk and whether it is served")
async def index(plane: DataPlaneDependency) -> Response:
    """``[{"name", "version", "state", "reason"}]``: READY when served, UNAVAILABLE otherwise."""
    scan = await asyncio.to_thread(scan_repository, plane.settings.repository)
    served = {(loaded.version.name, loaded.version.version) for loaded in plane.models}
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
    return json_response(entries)


@router.post("/models/{name}/load", summary="Load or reload a model's versions from disk")
async def load(plane: DataPlaneDependency, name: str) -> Response:
    """Creates and warms new sessions before swapping them in; in-flight requests finish on the old ones.
    404 when the repository has no folder of ``name``'s versions, 400 when none of them is valid (the
    reasons are in the message)."""
    problems = await asyncio.to_thread(plane.models.refresh, name)
    if name not in plane.models.versions:
        if not problems:
            raise NotFoundError(f"model {name!r}: the repository has no version of it to load")
        reasons = "; ".join(f"{problem.path}: {problem.reason}" for problem in problems)
        raise InvalidRequestError(f"model {name!r}: no valid version to load ({reasons})")
    return json_response({})


@router.post("/models/{name}/unload", summary="Stop serving a model")
async def unload(plane: DataPlaneDependency, name: str) -> Response:
    """404 when the model is not served."""
    plane.models.unload(name)
    return json_response({})
