"""ONNX Runtime sessions over validated model versions (no torch, no onnx).

:func:`load_model` reads ``model.onnx`` (re-checking its sha256), creates one
:class:`onnxruntime.InferenceSession` on the requested :class:`Device`, checks the graph's interface against
``model.json`` and warms the session up. :meth:`LoadedModel.run` is thread-safe: ``InferenceSession.run``
supports concurrent calls and releases the GIL, and ONNX Runtime's own EP fallback (which would swap the
providers of a shared session mid-flight and print to stdout) is disabled.

Provider selection
------------------
``cpu``
    ``["CPUExecutionProvider"]`` only.
``cuda``
    CUDA with CPU for unsupported nodes; :class:`DeviceUnavailableError` unless ``CUDAExecutionProvider``
    really attached (``session.get_providers()[0]``), because a missing CUDA library is only logged by ONNX
    Runtime, which then quietly runs on the CPU.
``auto``
    CUDA when this ONNX Runtime build has it and it attaches, else a CPU-only session. CUDA is not even
    requested on a CPU-only build, and ONNX Runtime's loader errors are silenced during the attempt.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from enum import Enum
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from covserve.repository import INPUT_NAME, OUTPUT_NAMES, ContractError, check_interface, session_options
from covserve.service._repository import ModelVersion

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "Device",
    "DeviceUnavailableError",
    "InvalidModelError",
    "LoadedModel",
    "NonFiniteInputError",
    "Prediction",
    "available_cpus",
    "finite_in_float32",
    "load_model",
]

CPU_PROVIDER = "CPUExecutionProvider"
FLOAT32_MAX = float(np.finfo(np.float32).max)
"""ONNX Runtime's CPU execution provider, always available."""

CUDA_PROVIDER = "CUDAExecutionProvider"
"""ONNX Runtime's CUDA execution provider (``onnxruntime-gpu`` builds only)."""

CUDA_DEVICE_ID = 0
"""The GPU a ``cuda`` or ``auto`` session runs on (select another with ``CUDA_VISIBLE_DEVICES``)."""

ORT_LOG_SEVERITY = 3
"""ONNX Runtime log severity for sessions and the default logger: 0 verbose … 3 error, 4 fatal."""

ORT_SILENT_SEVERITY = 4
"""Severity while ``auto`` probes CUDA, so a missing CUDA library is not logged as an error."""

NUMERIC_KINDS = "fiu"
"""NumPy dtype kinds a model accepts as inputs: floats, signed and unsigned integers."""

WARM_UP_ROWS = 4
"""Rows of the second warm-up batch (the first has one row), so both batch shapes are planned."""

WARM_UP_STEP = 0.5
"""Spacing, in training standard deviations, of the second warm-up batch centred on the training mean."""


_GPU_HELP = (
    "install the GPU build of ONNX Runtime (`pip uninstall -y onnxruntime onnxruntime-gpu && "
    "pip install 'covserve[gpu]'`; both builds install the same `onnxruntime` module, so only one may be "
    "installed; the `gpu` extra brings the CUDA and cuDNN libraries that build needs as NVIDIA wheels), make "
    "sure the NVIDIA driver is recent enough for that CUDA version and the GPU "
    "is visible (`nvidia-smi`, `--gpus all` for containers), or start with --device auto (falls back to "
    "the CPU) or --device cpu"
)


class Device(str, Enum):
    """Where sessions run: ``auto`` (CUDA if it attaches, else CPU), ``cpu`` or ``cuda`` (or fail)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class DeviceUnavailableError(Exception):
    """``--device cuda`` was requested but ONNX Runtime's CUDA execution provider did not attach."""


class InvalidModelError(Exception):
    """``model.onnx`` cannot be loaded, or its inputs/outputs disagree with ``model.json``."""


class NonFiniteInputError(ValueError):
    """An input row holds NaN, an infinity or a value beyond ±float32 max; ``row`` is the first such row."""

    def __init__(self, message: str, row: int) -> None:
        super().__init__(message)
        self.row = row


class Prediction(NamedTuple):
    """Raw-unit outputs of one batch, float64 (a named tuple: one is made per request, cheaply).

    ``mean`` ``(B, D)``; ``covariance`` ``(B, D, D)``, symmetric exactly; ``scale`` ``(B, D, D)`` with
    ``scale · scaleᵀ ≈ covariance`` (lower triangular for the exported parameterisations).
    """

    mean: NDArray[np.float64]
    covariance: NDArray[np.float64]
    scale: NDArray[np.float64]


class LoadedModel:
    """One model version with its ONNX Runtime session; :meth:`run` may be called from many threads."""

    def __init__(self, version: ModelVersion, session: ort.InferenceSession) -> None:
        self.version = version
        self.provider: str = str(session.get_providers()[0])
        """The provider that runs the graph: ``CUDAExecutionProvider`` or ``CPUExecutionProvider``."""
        self._session = session
        self._output_names = list(OUTPUT_NAMES)

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.version.name!r}, version={self.version.version}, provider={self.provider!r})"
        )

    def run(self, inputs: NDArray[Any]) -> Prediction:
        """Predict for raw-unit ``inputs`` ``(B, M)``: :meth:`checked`, then :meth:`run_checked`.

        Raises
        ------
        ValueError
            ``inputs`` has the wrong shape or dtype; :class:`NonFiniteInputError` when a row is not finite
            in float32.
        """
        return self.run_checked(self.checked(inputs))

    def checked(self, inputs: NDArray[Any]) -> NDArray[np.float32]:
        """``inputs`` ``(B, M)`` (float or integer, ``B >= 1``, ``M = in_dim``) as the graph's float32.

        The one check of a request's rows: shape, dtype, and finiteness in float32 (NaN, ±inf and values
        beyond ±float32 max would reach the graph as NaN or ±inf).

        Raises
        ------
        ValueError
            Wrong shape or a non-numeric dtype.
        NonFiniteInputError
            A row is not finite in float32.
        """
        array = np.asarray(inputs)
        in_dim = self.version.in_dim
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != in_dim:
            raise ValueError(
                f"inputs: expected shape (B, {in_dim}) with B >= 1 for model {self.version.name!r} version "
                f"{self.version.version}, got {array.shape}"
            )
        if array.dtype.kind not in NUMERIC_KINDS:
            raise ValueError(f"inputs: expected a numeric array, got dtype {array.dtype}")
        finite = finite_in_float32(array)
        if not finite.all():
            rows = finite.all(axis=1)
            row = int(np.flatnonzero(~rows)[0])
            raise NonFiniteInputError(
                f"inputs: row {row} is not finite in float32 (NaN, infinite or beyond ±3.4e38; "
                f"{int((~rows).sum())} such rows)",
                row,
            )
        return np.ascontiguousarray(array, dtype=np.float32)

    def run_checked(self, batch: NDArray[np.float32]) -> Prediction:
        """Predict for ``batch`` ``(B, M)`` float32 as returned by :meth:`checked` (not checked again).

        Outputs are returned in float64 with the covariance symmetrised exactly, ``(Σ + Σᵀ) / 2``.
        Thread-safe (``InferenceSession.run`` releases the GIL).
        """
        mean, covariance, scale = self._session.run(self._output_names, {INPUT_NAME: batch})
        covariance64 = np.asarray(covariance, dtype=np.float64)
        return Prediction(
            mean=np.asarray(mean, dtype=np.float64),
            covariance=0.5 * (covariance64 + np.swapaxes(covariance64, -1, -2)),
            scale=np.asarray(scale, dtype=np.float64),
        )

    def warm_up(self) -> None:
        """Run the training mean as a batch of 1 row and as :data:`WARM_UP_ROWS` rows around it.

        The first runs allocate ONNX Runtime's buffers and plan each batch shape; warming up keeps that off
        the first requests and checks the outputs' concrete shapes and finiteness.

        Raises
        ------
        InvalidModelError
            An output has the wrong shape, or is not finite at the training mean.
        """
        mean = self.version.training_mean
        covariance = self.version.metadata.training_inputs.covariance_array()
        std = np.sqrt(np.maximum(np.diagonal(covariance), 0.0))
        steps = WARM_UP_STEP * (np.arange(WARM_UP_ROWS) - (WARM_UP_ROWS - 1) / 2.0)
        for batch in (mean[None, :], mean[None, :] + steps[:, None] * std[None, :]):
            rows = len(batch)
            prediction = self.run(batch)
            dim = self.version.out_dim
            expected = {"mean": (rows, dim), "covariance": (rows, dim, dim), "scale": (rows, dim, dim)}
            for name, shape in expected.items():
                value: NDArray[np.float64] = getattr(prediction, name)
                if value.shape != shape:
                    raise InvalidModelError(
                        f"{self.version.model_path}: output {name!r} has shape {value.shape} for a batch of "
                        f"{rows}, expected {shape} ('out_dim' {dim} in {self.version.metadata_path})"
                    )
                if not np.all(np.isfinite(value)):
                    raise InvalidModelError(
                        f"{self.version.model_path}: output {name!r} is not finite at the training mean"
                    )


def finite_in_float32(array: NDArray[Any]) -> NDArray[np.bool_]:
    """Elementwise: finite and within ±float32 max, so the cast to the models' float32 stays finite.

    For wider floats ``|x| <= max`` (false for NaN and ±inf) tests it without a cast or an overflow warning;
    narrower floats and integers always fit, so only NaN and ±inf are refused.
    """
    finite: NDArray[np.bool_] = (
        np.abs(array) <= FLOAT32_MAX
        if array.dtype.kind == "f" and array.dtype.itemsize > 4
        else np.isfinite(array)
    )
    return finite


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def load_model(version: ModelVersion, device: Device, intra_op_threads: int) -> LoadedModel:
    """Create, check and warm up the session of ``version`` on ``device``.

    ``intra_op_threads`` (``>= 1``) is set explicitly because ONNX Runtime's default counts the host's
    physical cores, not the container's CPU quota; ``inter_op_num_threads`` is 1 (sequential execution).
    Sessions are created one after another (creation holds the GIL and concurrent creation can race).

    Raises
    ------
    ValueError
        ``intra_op_threads < 1``.
    InvalidModelError
        ``model.onnx`` is unreadable, changed since the scan (sha256), cannot be loaded by ONNX Runtime, its
        interface disagrees with ``model.json`` or its warm-up outputs are malformed.
    DeviceUnavailableError
        ``device`` is ``cuda`` and the CUDA execution provider did not attach.
    """
    device = Device(device)
    if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1:
        raise ValueError(f"intra_op_threads: expected an integer >= 1, got {intra_op_threads!r}")
    ort.set_default_logger_severity(ORT_LOG_SEVERITY)
    model_bytes = _model_bytes(version)
    options = session_options(intra_op_threads, ORT_LOG_SEVERITY)
    if device is Device.CPU:
        session = _create(model_bytes, options, [CPU_PROVIDER], version)
    elif device is Device.CUDA:
        session = _cuda_session(model_bytes, options, version)
    else:
        session = _auto_session(model_bytes, options, version)
    try:
        check_interface(session, version.model_path, version.in_dim, version.out_dim)
    except ContractError as error:
        raise InvalidModelError(f"{error.reason} (dims from {version.metadata_path})") from None
    model = LoadedModel(version, session)
    model.warm_up()
    return model


# ------------------------------------------------------------------------------------------------ sessions


def _model_bytes(version: ModelVersion) -> bytes:
    """``model.onnx``, verified against the sha256 in ``model.json`` (the scan checked an earlier read)."""
    path = version.model_path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidModelError(f"{path}: cannot read the model: {exc.strerror or exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != version.onnx_sha256:
        raise InvalidModelError(
            f"{path}: changed since the repository scan, its sha256 {digest} differs from "
            f"{version.onnx_sha256} recorded in {version.metadata_path}"
        )
    return data


@functools.cache
def _preload_cuda_libraries() -> str:
    """Load CUDA and cuDNN from NVIDIA's pip wheels (the ``gpu`` extra) before the first CUDA session.

    ONNX Runtime's ``preload_dlls`` finds them in site-packages, where the dynamic loader does not look;
    with system-wide libraries it is harmless. It reports failures by printing; that text is returned
    (empty when all loaded) for the error message of a CUDA session that does not attach.
    """
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            ort.preload_dlls()
        except (OSError, RuntimeError) as error:
            print(error)
    return printed.getvalue().strip()


def _cuda_providers() -> list[Any]:
    return [(CUDA_PROVIDER, {"device_id": CUDA_DEVICE_ID}), CPU_PROVIDER]


def _create(
    model_bytes: bytes, options: ort.SessionOptions, providers: list[Any], version: ModelVersion
) -> ort.InferenceSession:
    """A session without ONNX Runtime's own retry-on-CPU fallback; load failures become InvalidModelError."""
    try:
        return ort.InferenceSession(model_bytes, options, providers=providers, enable_fallback=0)
    except Exception as exc:  # onnxruntime raises its own unexported exception types
        raise InvalidModelError(f"{version.model_path}: ONNX Runtime cannot load the model: {exc}") from exc


def _cuda_session(
    model_bytes: bytes, options: ort.SessionOptions, version: ModelVersion
) -> ort.InferenceSession:
    available = list(ort.get_available_providers())
    if CUDA_PROVIDER not in available:
        raise DeviceUnavailableError(
            f"--device cuda: the installed ONNX Runtime build ({ort.__version__}) has no "
            f"{CUDA_PROVIDER}, only {available}; {_GPU_HELP}"
        )
    preload_report = _preload_cuda_libraries()
    try:
        with warnings.catch_warnings():  # ONNX Runtime's provider warnings repeat what the checks below say
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(
                model_bytes, options, providers=_cuda_providers(), enable_fallback=0
            )
    except Exception as exc:
        raise DeviceUnavailableError(
            f"--device cuda: ONNX Runtime failed to create a CUDA session for {version.model_path}: "
            f"{type(exc).__name__}: {exc}; {_loader_notes(preload_report)}{_GPU_HELP}"
        ) from exc
    attached = list(session.get_providers())
    if attached[:1] != [CUDA_PROVIDER]:
        raise DeviceUnavailableError(
            f"--device cuda: {CUDA_PROVIDER} is in this ONNX Runtime build but did not attach (the session "
            f"got {attached}; usually the CUDA or cuDNN libraries are missing or do not match the build, or "
            f"no GPU is visible); {_loader_notes(preload_report)}{_GPU_HELP}"
        )
    return session


def _auto_session(
    model_bytes: bytes, options: ort.SessionOptions, version: ModelVersion
) -> ort.InferenceSession:
    if CUDA_PROVIDER in ort.get_available_providers():
        _preload_cuda_libraries()
        try:
            with _silenced_ort():
                session = ort.InferenceSession(
                    model_bytes, options, providers=_cuda_providers(), enable_fallback=0
                )
        except Exception:  # no usable GPU, or a model the CUDA EP rejects: the CPU session decides below
            pass
        else:
            if list(session.get_providers())[:1] == [CUDA_PROVIDER]:
                return session
    return _create(model_bytes, options, [CPU_PROVIDER], version)


def _loader_notes(preload_report: str) -> str:
    return f"loading the CUDA libraries reported: {preload_report}; " if preload_report else ""


@contextlib.contextmanager
def _silenced_ort() -> Iterator[None]:
    """Silence ONNX Runtime while ``auto`` probes CUDA: logger threshold at fatal, Python warnings ignored."""
    ort.set_default_logger_severity(ORT_SILENT_SEVERITY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        ort.set_default_logger_severity(ORT_LOG_SEVERITY)
