"""The v1 request bodies: pydantic models of ``predict`` and ``condition`` and their one parser."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from covserve.service._errors import InvalidRequestError, TooLargeError

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_OUTPUTS",
    "ROW_FIELDS",
    "ConditionRequest",
    "OutputName",
    "PredictRequest",
    "RowsRequest",
    "parse_request",
]

DEFAULT_LEVEL = 0.9


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


class RowsRequest(BaseModel):
    """Input rows, either positional (``inputs``) or by feature name (``instances``)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[list[StrictFloat]] | None = Field(default=None, description="rows of raw-unit features")
    instances: list[dict[str, StrictFloat]] | None = Field(
        default=None, description="rows as {feature: value}"
    )
    columns: list[str] | None = Field(
        default=None,
        description="with 'inputs': the feature name of each column, checked against the model's order",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RowsRequest:
        if (self.inputs is None) == (self.instances is None):
            raise ValueError(
                "give exactly one of 'inputs' (rows of numbers) or 'instances' (rows of {feature: value})"
            )
        if self.columns is not None and self.inputs is None:
            raise ValueError("'columns' names the columns of 'inputs'; 'instances' rows name their own")
        return self


class PredictRequest(RowsRequest):
    """``{"inputs": [[...], ...]}`` or ``{"instances": [{...}]}``, optional ``outputs`` and ``level``."""

    outputs: list[OutputName] | None = Field(default=None, description="default: mean and covariance")
    level: StrictFloat = Field(
        default=DEFAULT_LEVEL, gt=0, lt=1, description="probability of each marginal interval"
    )

    @field_validator("level")
    @classmethod
    def _interval_is_finite(cls, value: float) -> float:
        # the largest double below 1 rounds (1 + level) / 2 up to 1, whose normal quantile is infinite
        if (1.0 + value) / 2.0 >= 1.0:
            raise ValueError(f"expected a probability in (0, 1) with a finite interval, got {value!r}")
        return value


class ConditionRequest(RowsRequest):
    """Inputs plus, per row, the observed targets ``{"<target>": value}``."""

    observed: list[dict[str, StrictFloat]] = Field(
        description="one mapping per row of observed target values"
    )


Request = TypeVar("Request", bound=RowsRequest)


ROW_FIELDS = ("inputs", "instances", "observed")
"""The request fields that hold one entry per row, counted against the row limit before validation."""


def parse_request(body: bytes, schema: type[Request], max_rows: int) -> Request:
    """``body`` parsed as JSON and validated as ``schema``; :class:`InvalidRequestError` naming the field.

    Numbers are strict (a string or a boolean is not a number). The rows are counted right after parsing,
    before validation: more than ``max_rows`` is a :class:`TooLargeError` without validating any.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidRequestError(f"body: expected a JSON object, got invalid JSON ({error})") from None
    if not isinstance(document, dict):
        raise InvalidRequestError(f"body: expected a JSON object, got {type(document).__name__}")
    for field in ROW_FIELDS:
        rows = document.get(field)
        if isinstance(rows, list) and len(rows) > max_rows:
            raise TooLargeError(f"{field}: at most {max_rows} rows per request, got {len(rows)}")
    try:
        return schema.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidRequestError(f"{location}: {first['msg']}") from None
