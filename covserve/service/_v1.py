"""The v1 (native) API: ``/v1/models``, ``/v1/models/{name}[/versions/{v}]/predict`` and ``.../condition``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covserve.service import gaussian
from covserve.service._body import read_body
from covserve.service._errors import ApiError
from covserve.service._openapi import error_responses, json_body
from covserve.service._runtime import FLOAT32_MAX, LoadedModel, Prediction, finite_in_float32

__all__ = [
    "ConditionRequest",
    "OutputName",
    "PredictRequest",
    "condition",
    "list_models",
    "predict_latest",
    "predict_version",
    "router",
]

DEFAULT_LEVEL = 0.9
JSON = "application/json"


class OutputName(str, Enum):
    """Arrays a predict request can ask for."""

    MEAN = "mean"
    COVARIANCE = "covariance"
    STD = "std"
    CORRELATION = "correlation"
    SCALE = "scale"
    INTERVAL = "interval"
    MAHALANOBIS_OOD = "mahalanobis_ood"


DEFAULT_OUTPUTS = (OutputName.MEAN, OutputName.COVARIANCE)


class _Rows(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[list[float]] | None = Field(default=None, description="rows of raw-unit features")
    instances: list[dict[str, float]] | None = Field(default=None, description="rows as {feature: value}")

    @model_validator(mode="after")
    def _exactly_one(self) -> _Rows:
        if (self.inputs is None) == (self.instances is None):
            raise ValueError(
                "give exactly one of 'inputs' (rows of numbers) or 'instances' (rows of {feature: value})"
            )
        return self


class PredictRequest(_Rows):
    """``{"inputs": [[...], ...]}`` or ``{"instances": [{...}]}``, optional ``outputs`` and ``level``."""

    outputs: list[OutputName] | None = Field(default=None, description="default: mean and covariance")
    level: float = Field(
        default=DEFAULT_LEVEL, gt=0, lt=1, description="probability of each marginal interval"
    )

    @field_validator("level")
    @classmethod
    def _interval_is_finite(cls, value: float) -> float:
        # the largest double below 1 rounds (1 + level) / 2 up to 1, whose normal quantile is infinite
        if (1.0 + value) / 2.0 >= 1.0:
            raise ValueError(f"expected a probability in (0, 1) with a finite interval, got {value!r}")
        return value


class ConditionRequest(_Rows):
    """Inputs plus, per row, the observed targets ``{"<target>": value}``."""

    observed: list[dict[str, float]] = Field(description="one mapping per row of observed target values")


router = APIRouter(prefix="/v1", tags=["native"])


def _parse(body: bytes, schema: type[_Rows]) -> Any:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"body: expected a JSON object, got invalid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ApiError(400, f"body: expected a JSON object, got {type(document).__name__}")
    try:
        return schema.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "body"
        raise ApiError(400, f"{location}: {first['msg']}") from None


def _rows(request: _Rows, model: LoadedModel, max_rows: int) -> NDArray[np.float64]:
    names = model.version.input_names
    if request.instances is not None:
        rows = []
        for index, instance in enumerate(request.instances):
            missing = [name for name in names if name not in instance]
            extra = [key for key in instance if key not in names]
            if missing or extra:
                raise ApiError(
                    400,
                    f"instances[{index}]: expected features {list(names)}, "
                    f"got missing {missing} and unknown {extra}",
                )
            rows.append([instance[name] for name in names])
    else:
        rows = request.inputs or []
    if not rows:
        raise ApiError(400, "inputs: expected at least one row, got none")
    if len(rows) > max_rows:
        raise ApiError(413, f"inputs: at most {max_rows} rows per request, got {len(rows)}")
    widths = {len(row) for row in rows}
    if widths != {model.version.in_dim}:
        raise ApiError(
            400,
            f"inputs: expected rows of {model.version.in_dim} features {list(names)}, "
            f"got widths {sorted(widths)}",
        )
    array = np.asarray(rows, dtype=np.float64)
    finite = finite_in_float32(array)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise ApiError(
            400,
            f"inputs[{row}]: expected finite numbers within ±{FLOAT32_MAX:.4g}, got NaN, infinity or beyond",
        )
    return array


def _selected(
    outputs: Sequence[OutputName],
    prediction: Prediction,
    model: LoadedModel,
    inputs: NDArray[np.float64],
    level: float,
) -> dict[str, Any]:
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
            result["mahalanobis_ood"] = gaussian.mahalanobis(
                inputs, model.version.training_mean, model.version.training_precision
            )
    return result


def _respond(payload: dict[str, Any]) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)


async def _predict(request: Request, name: str, version: str | None) -> Response:
    state = request.app.state
    model = state.models.get(name, version)
    body = _parse(await read_body(request), PredictRequest)
    inputs = _rows(body, model, state.settings.max_rows)
    prediction = (await state.inference.run(model, inputs)).prediction
    outputs = body.outputs or list(DEFAULT_OUTPUTS)
    return _respond(
        {
            "model": model.version.name,
            "version": model.version.version,
            "targets": list(model.version.target_names),
            "outputs": _selected(outputs, prediction, model, inputs, body.level),
        }
    )


PREDICT_EXAMPLES = {
    "rows": {"inputs": [[-1.5, 0.2, 3.1, 0.7]]},
    "named features and chosen outputs": {
        "instances": [{"x0": -1.5, "x1": 0.2, "x2": 3.1, "x3": 0.7}],
        "outputs": ["mean", "std", "correlation", "interval", "mahalanobis_ood"],
        "level": 0.95,
    },
}
CONDITION_EXAMPLES = {"one observed target": {"inputs": [[-1.5, 0.2, 3.1, 0.7]], "observed": [{"y1": -2.0}]}}
PREDICT_RESPONSE = {
    "model": "demo",
    "version": 1,
    "targets": ["y0", "y1"],
    "outputs": {"mean": [[-0.36, -1.72]], "covariance": [[[7.14, -0.59], [-0.59, 5.85]]]},
}
ERRORS = error_responses(400, 401, 404, 413, 503)


@router.post(
    "/models/{name}/predict",
    summary="Predict mean and covariance with the latest version",
    openapi_extra=json_body(PredictRequest, PREDICT_EXAMPLES),
    responses={200: {"content": {JSON: {"example": PREDICT_RESPONSE}}}, **ERRORS},
)
async def predict_latest(request: Request, name: str) -> Response:
    """Body: ``{"inputs": [[x1, x2, ...]], "outputs": ["mean", "covariance", "interval"], "level": 0.9}``."""
    return await _predict(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/predict",
    summary="Predict with a given version",
    openapi_extra=json_body(PredictRequest, PREDICT_EXAMPLES),
    responses={200: {"content": {JSON: {"example": PREDICT_RESPONSE}}}, **ERRORS},
)
async def predict_version(request: Request, name: str, version: str) -> Response:
    """As ``/v1/models/{name}/predict`` for one version."""
    return await _predict(request, name, version)


@router.post(
    "/models/{name}/condition",
    summary="Condition on observed targets",
    openapi_extra=json_body(ConditionRequest, CONDITION_EXAMPLES),
    responses=ERRORS,
)
async def condition(request: Request, name: str) -> Response:
    """Body: ``{"inputs": [[...]], "observed": [{"<target>": value}]}``; returns, per row, the mean and
    covariance of the unobserved targets given the observed ones (Gaussian conditioning)."""
    state = request.app.state
    model = state.models.get(name, None)
    body = _parse(await read_body(request), ConditionRequest)
    inputs = _rows(body, model, state.settings.max_rows)
    if len(body.observed) != len(inputs):
        raise ApiError(
            400, f"observed: expected one mapping per input row ({len(inputs)}), got {len(body.observed)}"
        )
    targets = list(model.version.target_names)
    for index, observed in enumerate(body.observed):
        unknown = [key for key in observed if key not in targets]
        if unknown or len(observed) >= len(targets):
            raise ApiError(
                400,
                f"observed[{index}]: expected a strict subset of targets {targets}, got {sorted(observed)}",
            )
        if not all(math.isfinite(value) and abs(value) <= FLOAT32_MAX for value in observed.values()):
            raise ApiError(
                400,
                f"observed[{index}]: expected finite numbers within ±{FLOAT32_MAX:.4g}, "
                "got NaN, infinity or beyond",
            )
    prediction = (await state.inference.run(model, inputs)).prediction
    rows = []
    for index, observed in enumerate(body.observed):
        indices = [targets.index(key) for key in observed]
        values = np.asarray([[observed[targets[i]] for i in indices]], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mean, covariance = gaussian.condition(
                prediction.mean[index : index + 1], prediction.covariance[index : index + 1], indices, values
            )
        if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
            raise ApiError(
                400,
                f"observed[{index}]: the conditional distribution overflows for these values, got {observed}",
            )
        free = [target for position, target in enumerate(targets) if position not in indices]
        rows.append({"targets": free, "mean": mean[0], "covariance": covariance[0]})
    return _respond({"model": model.version.name, "version": model.version.version, "rows": rows})


@router.get("/models", summary="Served models")
async def list_models(request: Request) -> Response:
    """Names, versions, dims, target names, provider, readiness and training metrics of every model."""
    state = request.app.state
    models = [
        {
            "name": loaded.version.name,
            "version": loaded.version.version,
            "in_dim": loaded.version.in_dim,
            "out_dim": loaded.version.out_dim,
            "inputs": list(loaded.version.input_names),
            "targets": list(loaded.version.target_names),
            "method": loaded.version.metadata.method,
            "labels": loaded.version.metadata.labels,
            "provider": loaded.provider,
            "ready": state.models.ready,
            "test_metrics": loaded.version.metadata.test_metrics,
        }
        for loaded in state.models
    ]
    problems = [{"path": str(problem.path), "reason": problem.reason} for problem in state.models.problems]
    return _respond({"models": models, "skipped": problems})
