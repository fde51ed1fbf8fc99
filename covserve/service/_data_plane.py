"""The data plane: every inference request validated once, run, shaped and counted in one object.

Routes are thin: they read the path and the body and render what :class:`DataPlane` returns. The data
plane resolves the model (:class:`~covserve.service._registry.ServedModels`), checks the rows once
(``LoadedModel.checked``), runs them through the queue (:class:`~covserve.service._inference.Inference`),
shapes the outputs of each protocol and keeps the per-version counters that ``/stats`` reports. Failures
are domain errors (:mod:`covserve.service._errors`), mapped to HTTP in one place by the app.

Routes get the data plane through :func:`data_plane` (as a FastAPI dependency, :data:`DataPlaneDependency`).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from numpy.typing import NDArray

from covserve import gaussian
from covserve.repository import INPUT_NAME, OUTPUT_NAMES
from covserve.service._admission import Admission, body_limit
from covserve.service._body import declared_length, read_body
from covserve.service._errors import InvalidRequestError, ServiceError, TooLargeError
from covserve.service._inference import Inference, Outcome
from covserve.service._metrics import ServiceMetrics
from covserve.service._oip import (
    HEADER_LENGTH_HEADER,
    TensorInput,
    encode_infer_response,
    parse_infer_request,
)
from covserve.service._registry import ServedModels
from covserve.service._requests import (
    DEFAULT_OUTPUTS,
    ConditionRequest,
    OutputName,
    PredictRequest,
    RowsRequest,
    parse_request,
)
from covserve.service._runtime import FLOAT32_MAX, LoadedModel, NonFiniteInputError
from covserve.service._settings import Settings

__all__ = ["DataPlane", "DataPlaneDependency", "InferenceStatistics", "attach", "data_plane", "of_app"]

NANOSECONDS = 1_000_000_000
MILLISECONDS = 1000
NOT_FINITE = f"expected finite numbers within ±{FLOAT32_MAX:.4g}, got NaN, infinity or beyond"


@dataclass
class InferenceStatistics:
    """Cumulative counters of one model version, in the shape perf_analyzer reads from ``/stats``.

    Durations in nanoseconds; ``last_inference_ms`` in milliseconds since the epoch.
    """

    success_count: int = 0
    success_ns: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    failure_count: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0


class DataPlane:
    """The served models, the inference queue and the per-version statistics, behind three operations:
    :meth:`predict` and :meth:`condition` (v1) and :meth:`infer` (Open Inference Protocol)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.models = ServedModels(settings, metrics)
        self.inference = Inference(settings, metrics)
        self.admission = Admission(settings.workers + settings.max_queue, settings.max_buffered_bytes)
        self._body_limits: weakref.WeakKeyDictionary[LoadedModel, int] = weakref.WeakKeyDictionary()
        self._statistics: dict[tuple[str, int], InferenceStatistics] = {}

    def statistics(self, model: LoadedModel) -> InferenceStatistics:
        """The counters of ``model``'s version (zeros before its first OIP request)."""
        key = (model.version.name, model.version.version)
        counters = self._statistics.get(key)
        if counters is None:
            counters = self._statistics[key] = InferenceStatistics()
        return counters

    def shutdown(self) -> None:
        """Mark the models draining (readiness turns false) and wait for running inferences."""
        self.models.draining = True
        self.inference.shutdown()

    # ---------------------------------------------------------------------------------------------- v1

    def _admit(self, request: Request, model: LoadedModel) -> tuple[int, int]:
        """Admit ``request`` for ``model`` before its body is read; returns ``(body limit, bytes reserved)``.

        :class:`TooLargeError` when the declared length passes the model's limit, :class:`OverloadedError`
        when the server has no room (:class:`~covserve.service._admission.Admission`).
        """
        settings = self.settings
        limit = self._body_limits.get(model)
        if limit is None:  # once per loaded version, not per request
            limit = self._body_limits[model] = body_limit(model, settings.max_rows, settings.max_body_bytes)
        declared = declared_length(request)
        if declared is not None and declared > limit:
            raise TooLargeError(
                f"body: at most {limit} bytes for model {model.version.name!r} ({settings.max_rows} rows of "
                f"{model.version.in_dim} inputs), got {declared}"
            )
        reserved = limit if declared is None else declared
        self.admission.admit(reserved)
        return limit, reserved

    async def _body(self, request: Request, limit: int) -> bytes:
        return await read_body(request, limit, self.settings.body_timeout_seconds)

    async def predict(self, name: str, version: str | None, request: Request) -> dict[str, Any]:
        """The v1 predict document for a :class:`PredictRequest` body: model, version, targets, outputs."""
        model = self.models.get(name, version)
        limit, reserved = self._admit(request, model)
        try:
            parsed = parse_request(await self._body(request, limit), PredictRequest, self.settings.max_rows)
            outcome = await self.inference.run(model, self._v1_rows(parsed, model))
        finally:
            self.admission.release(reserved)
        return {
            "model": model.version.name,
            "version": model.version.version,
            "targets": list(model.version.target_names),
            "outputs": _selected(parsed.outputs or DEFAULT_OUTPUTS, outcome, parsed.level),
        }

    async def condition(self, name: str, request: Request) -> dict[str, Any]:
        """The v1 condition document for a :class:`ConditionRequest` body: per row, the unobserved
        targets' names, conditional mean ``(D - K,)`` and covariance ``(D - K, D - K)``."""
        model = self.models.get(name, None)
        limit, reserved = self._admit(request, model)
        try:
            parsed = parse_request(await self._body(request, limit), ConditionRequest, self.settings.max_rows)
            return await self._condition(model, parsed)
        finally:
            self.admission.release(reserved)

    async def _condition(self, model: LoadedModel, request: ConditionRequest) -> dict[str, Any]:
        inputs = self._v1_rows(request, model)
        targets = list(model.version.target_names)
        if len(request.observed) != len(inputs):
            raise InvalidRequestError(
                f"observed: expected one mapping per input row ({len(inputs)}), got {len(request.observed)}"
            )
        observed_indices = [
            _observed_indices(index, observed, targets) for index, observed in enumerate(request.observed)
        ]
        prediction = (await self.inference.run(model, inputs)).prediction
        rows = []
        for index, (observed, indices) in enumerate(zip(request.observed, observed_indices, strict=True)):
            values = np.asarray([[observed[targets[i]] for i in indices]], dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                mean, covariance = gaussian.condition(
                    prediction.mean[index : index + 1],
                    prediction.covariance[index : index + 1],
                    indices,
                    values,
                )
            if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
                raise InvalidRequestError(
                    f"observed[{index}]: the conditional distribution overflows for these values, "
                    f"got {observed}"
                )
            free = [target for position, target in enumerate(targets) if position not in indices]
            rows.append({"targets": free, "mean": mean[0], "covariance": covariance[0]})
        return {"model": model.version.name, "version": model.version.version, "rows": rows}

    def _v1_rows(self, request: RowsRequest, model: LoadedModel) -> NDArray[np.float32]:
        """The request's rows ``(B, M)`` in the model's feature order, checked once."""
        names = model.version.input_names
        if request.instances is not None:
            rows = []
            for index, instance in enumerate(request.instances):
                missing = [name for name in names if name not in instance]
                extra = [key for key in instance if key not in names]
                if missing or extra:
                    raise InvalidRequestError(
                        f"instances[{index}]: expected features {list(names)}, "
                        f"got missing {missing} and unknown {extra}"
                    )
                rows.append([instance[name] for name in names])
        else:
            if request.columns is not None and tuple(request.columns) != tuple(names):
                raise InvalidRequestError(
                    f"columns: the model's inputs are {list(names)} in this order, got {request.columns}"
                )
            rows = request.inputs or []
        if not rows:
            raise InvalidRequestError("inputs: expected at least one row, got none")
        widths = {len(row) for row in rows}
        if widths != {model.version.in_dim}:
            raise InvalidRequestError(
                f"inputs: expected rows of {model.version.in_dim} features {list(names)}, "
                f"got widths {sorted(widths)}"
            )
        try:
            return model.checked(np.asarray(rows, dtype=np.float64))
        except NonFiniteInputError as error:
            raise InvalidRequestError(f"inputs[{error.row}]: {NOT_FINITE}") from None

    # ---------------------------------------------------------------------------------------------- OIP

    async def infer(self, name: str, version: str | None, request: Request) -> tuple[bytes, dict[str, str]]:
        """The OIP infer response body and headers for a JSON or binary infer request.

        Input ``x`` ``[B, M]``; outputs ``mean``, ``covariance`` and ``scale`` (all unless the request
        names some), each JSON or binary as the request asks. Counts the request in :meth:`statistics`.
        """
        started = time.perf_counter_ns()
        model = self.models.get(name, version)
        counters = self.statistics(model)
        try:
            limit, reserved = self._admit(request, model)
            try:
                decoded = parse_infer_request(
                    await self._body(request, limit),
                    request.headers.get(HEADER_LENGTH_HEADER),
                    self.settings.max_rows * model.version.in_dim,
                )
                inputs = _oip_rows(decoded.inputs, model)
                requested = (
                    [output.name for output in decoded.outputs] if decoded.outputs else list(OUTPUT_NAMES)
                )
                unknown = [output for output in requested if output not in OUTPUT_NAMES]
                if unknown:
                    raise InvalidRequestError(
                        f"outputs: expected names from {list(OUTPUT_NAMES)}, got {unknown}"
                    )
                outcome = await self.inference.run(model, inputs)
            finally:
                self.admission.release(reserved)
        except ServiceError:
            counters.failure_count += 1
            raise
        prediction = outcome.prediction
        arrays = {
            "mean": prediction.mean.astype(np.float32),
            "covariance": prediction.covariance.astype(np.float32),
            "scale": prediction.scale.astype(np.float32),
        }
        response = encode_infer_response(
            model.version.name,
            str(model.version.version),
            decoded.id,
            [(output, arrays[output], decoded.binary_for(output)) for output in requested],
        )
        counters.success_count += 1
        counters.inference_count += len(inputs)
        counters.queue_ns += int(outcome.queue_seconds * NANOSECONDS)
        counters.compute_ns += int(outcome.compute_seconds * NANOSECONDS)
        counters.success_ns += time.perf_counter_ns() - started
        counters.last_inference_ms = int(time.time() * MILLISECONDS)
        return response


def attach(app: FastAPI, plane: DataPlane) -> None:
    """Make ``plane`` the data plane of ``app`` (``create_app`` does)."""
    app.state.data_plane = plane


def of_app(app: FastAPI) -> DataPlane:
    """The data plane attached to ``app``."""
    plane: DataPlane = app.state.data_plane
    return plane


def data_plane(request: Request) -> DataPlane:
    """The data plane of the app serving ``request``."""
    return of_app(request.app)


DataPlaneDependency = Annotated[DataPlane, Depends(data_plane)]
"""A route parameter annotated with this receives the app's :class:`DataPlane`."""


def _selected(outputs: Sequence[OutputName], outcome: Outcome, level: float) -> dict[str, Any]:
    prediction = outcome.prediction
    result: dict[str, Any] = {}
    for output in outputs:
        if output is OutputName.MEAN:
            result["mean"] = prediction.mean
        elif output is OutputName.COVARIANCE:
            result["covariance"] = prediction.covariance
        elif output is OutputName.STD:
            result["std"] = np.sqrt(np.diagonal(prediction.covariance, axis1=-2, axis2=-1))
        elif output is OutputName.CORRELATION:
            result["correlation"] = gaussian.correlation(prediction.covariance)
        elif output is OutputName.SCALE:
            result["scale"] = prediction.scale
        elif output is OutputName.INTERVAL:
            lower, upper = gaussian.marginal_intervals(prediction.mean, prediction.covariance, level)
            result["interval"] = {"level": level, "lower": lower, "upper": upper}
        else:
            result["mahalanobis_ood"] = outcome.input_mahalanobis
    return result


def _observed_indices(index: int, observed: dict[str, float], targets: list[str]) -> list[int]:
    """Positions of row ``index``'s observed targets; refuses unknown, all or non-finite observations."""
    unknown = [key for key in observed if key not in targets]
    if unknown or len(observed) >= len(targets):
        raise InvalidRequestError(
            f"observed[{index}]: expected a strict subset of targets {targets}, got {sorted(observed)}"
        )
    if not all(math.isfinite(value) and abs(value) <= FLOAT32_MAX for value in observed.values()):
        raise InvalidRequestError(f"observed[{index}]: {NOT_FINITE}")
    return [targets.index(key) for key in observed]


def _oip_rows(inputs: tuple[TensorInput, ...], model: LoadedModel) -> NDArray[np.float32]:
    """The one input tensor ``x`` ``[B, M]``, checked once."""
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = [tensor.name for tensor in inputs]
        raise InvalidRequestError(f"inputs: expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = inputs[0]
    if len(tensor.shape) != 2 or tensor.shape[1] != model.version.in_dim or tensor.shape[0] < 1:
        raise InvalidRequestError(
            f"inputs[0].shape: expected [B, {model.version.in_dim}] with B >= 1, got {list(tensor.shape)}"
        )
    try:
        return model.checked(tensor.data)
    except NonFiniteInputError as error:
        raise InvalidRequestError(f"inputs[0] row {error.row}: {NOT_FINITE}") from None
