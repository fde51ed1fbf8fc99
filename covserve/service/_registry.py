"""The model registry: the set of served model versions, swapped atomically on reload."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from covserve.service._errors import InvalidRequestError, NotFoundError
from covserve.service._metrics import ServiceMetrics
from covserve.service._repository import Problem, scan_repository
from covserve.service._runtime import InvalidModelError, LoadedModel, load_model
from covserve.service._settings import Settings

__all__ = ["ServedModels"]

LOGGER = logging.getLogger("covserve.service")
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,17}")
"""A version in a path: a positive integer in ASCII digits without a leading zero, bounded (``str.isdigit``
accepts '²'; ``int`` refuses 4300+ digits)."""
MAX_ECHOED_CHARACTERS = 80


class ServedModels:
    """Loaded sessions by model name and version, swapped atomically on reload.

    A refresh loads and warms new versions *before* replacing the mapping, so a request always sees either
    the old or the new set, and requests in flight finish on the session they started with. ``ready`` turns
    true after the first refresh; ``draining`` after a shutdown signal.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.versions: dict[str, dict[int, LoadedModel]] = {}
        self.problems: list[Problem] = []
        self.unloaded: set[str] = set()
        self.ready = False
        self.draining = False
        self._settings = settings
        self._metrics = metrics
        self._lock = threading.Lock()

    def refresh(self, only: str | None = None) -> list[Problem]:
        """Rescan the repository (or one model) and load what changed; returns this scan's problems.

        A version that is served and turns invalid on disk (truncated, sha256 mismatch, unreadable) keeps
        being served from the session already loaded, as Triton does, and is reported in ``problems``
        until a valid file replaces it; a version removed from disk stops being served. Blocking (sessions
        are created and warmed up): call it from a worker thread.
        """
        with self._lock:
            root = Path(self._settings.repository)
            scan = scan_repository(root)
            problems = [p for p in scan.problems if only is None or _model_of(p, root) == only]
            current = self.versions
            fresh: dict[str, dict[int, LoadedModel]] = {
                name: versions for name, versions in current.items() if only is not None and name != only
            }
            for version in scan.versions:
                if (only is None and version.name in self.unloaded) or (
                    only is not None and version.name != only
                ):
                    continue
                existing = current.get(version.name, {}).get(version.version)
                if existing is not None and existing.version.onnx_sha256 == version.onnx_sha256:
                    fresh.setdefault(version.name, {})[version.version] = existing
                    continue
                try:
                    loaded = load_model(version, self._settings.device, self._settings.threads)
                except InvalidModelError as error:
                    problems.append(Problem(version.path, str(error)))
                    if existing is not None:
                        fresh.setdefault(version.name, {})[version.version] = existing
                    continue
                fresh.setdefault(version.name, {})[version.version] = loaded
                self._metrics.model_info.labels(version.name, str(version.version), loaded.provider).set(1)
                LOGGER.info("loaded %s version %d on %s", version.name, version.version, loaded.provider)
            broken = {problem.path for problem in problems}
            for name, versions in current.items():
                for number, loaded in versions.items():
                    if loaded.version.path in broken and number not in fresh.get(name, {}):
                        fresh.setdefault(name, {})[number] = loaded
                        LOGGER.warning(
                            "%s: invalid on disk; still serving the copy loaded before", loaded.version.path
                        )
            for problem in problems:
                LOGGER.warning("skipped %s: %s", problem.path, problem.reason)
            if only is not None:
                self.unloaded.discard(only)
            self.versions = fresh
            kept = [p for p in self.problems if only is not None and _model_of(p, root) != only]
            self.problems = [*kept, *problems]
            self.ready = True
            return problems

    def unready_reason(self) -> str | None:
        """Why the server is not ready, or ``None`` when it is.

        Ready means: the first scan finished, the server is not draining, and every model found in the
        repository has a loaded version, at least one in all. A broken version beside a loaded version of
        the same model stays in ``problems`` (``GET /v1/models``) without unreadying the server, and a
        model unloaded through the repository API does not count.
        """
        if not self.ready:
            return "models are loading"
        if self.draining:
            return "the server is draining"
        root = Path(self._settings.repository)
        failed = [
            problem
            for problem in self.problems
            if problem.path == root or _model_of(problem, root) not in {*self.versions, *self.unloaded}
        ]
        if failed:
            more = f" (and {len(failed) - 1} more: GET /v1/models)" if len(failed) > 1 else ""
            return f"not every model in the repository loaded: {failed[0].reason}{more}"
        if not self.versions and not self.unloaded:
            return f"the model repository {root} holds no model versions (models/<name>/<version>/)"
        return None

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (:class:`NotFoundError` if it is not served); in-flight requests finish."""
        with self._lock:
            if name not in self.versions:
                raise NotFoundError(f"model {name!r} is not loaded")
            self.versions = {key: value for key, value in self.versions.items() if key != name}
            self.unloaded.add(name)
            LOGGER.info("unloaded %s", name)

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        """The named model's ``version`` as written in a path (latest when ``None``).

        :class:`InvalidRequestError` when ``version`` is not a positive integer, :class:`NotFoundError` when
        it is not served.
        """
        number = None if version is None else _version_number(version)
        available = self.versions.get(name)
        if not available:
            known = ", ".join(sorted(self.versions)) or "none"
            raise NotFoundError(f"model {name!r} not found (served models: {known})")
        if number is None:
            return available[max(available)]
        if number not in available:
            versions = ", ".join(str(v) for v in sorted(available))
            raise NotFoundError(f"model {name!r} has no version {number} (served versions: {versions})")
        return available[number]

    def __iter__(self) -> Iterator[LoadedModel]:
        snapshot = self.versions
        for name in sorted(snapshot):
            for version in sorted(snapshot[name]):
                yield snapshot[name][version]


def _model_of(problem: Problem, root: Path) -> str:
    """The model name a problem belongs to (its model directory or its version's parent)."""
    return problem.path.name if problem.path.parent == root else problem.path.parent.name


def _version_number(text: str) -> int:
    if not VERSION_PATTERN.fullmatch(text):
        echoed = repr(text)
        if len(echoed) > MAX_ECHOED_CHARACTERS:
            echoed = echoed[: MAX_ECHOED_CHARACTERS - 3] + "..."
        raise InvalidRequestError(f"version: expected a positive integer, got {echoed}")
    return int(text)
