"""``covserve-serve`` (and ``python -m covserve.service``): serve a model repository over HTTP."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from types import FrameType

import onnxruntime
import uvicorn
from pydantic import ValidationError

from covserve import __version__
from covserve._flags import add_switch, help_with_default, rewrite_deprecated_switches
from covserve.service._app import create_app
from covserve.service._connections import SPARE_FILES, raise_open_file_limit, uvicorn_config
from covserve.service._data_plane import of_app
from covserve.service._registry import ServedModels
from covserve.service._runtime import CUDA_PROVIDER, Device
from covserve.service._settings import Settings

__all__ = ["main"]

PROG = "covserve-serve"
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve the models of a covserve model repository over HTTP. Every flag can also be set "
        "as an environment variable COVSERVE_<FLAG> (e.g. COVSERVE_PORT=9000).",
    )
    parser.add_argument("--version", action="version", version=f"covserve {__version__}")
    for name, field in Settings.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        text = help_with_default(field.description, field.get_default(call_default_factory=True))
        if field.annotation is bool:
            add_switch(parser, flag, name, text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=text)
    return parser


def _switch_flags() -> list[str]:
    return [
        f"--{name.replace('_', '-')}"
        for name, field in Settings.model_fields.items()
        if field.annotation is bool
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, load the repository and serve until interrupted; returns the exit code."""
    given = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(rewrite_deprecated_switches(given, _switch_flags(), PROG))
    overrides = {key: value for key, value in vars(args).items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "flags"
        print(f"{PROG}: error: {flag}: {first['msg']}", file=sys.stderr)
        return EXIT_USAGE
    if not settings.repository.is_dir():
        print(
            f"{PROG}: error: --repository {settings.repository}: no such directory "
            "(train a model into it first, e.g. covserve-train fit --config configs/demo.yaml)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if settings.device is Device.CUDA and CUDA_PROVIDER not in onnxruntime.get_available_providers():
        print(
            f"{PROG}: error: --device cuda: this ONNX Runtime build has no CUDA provider "
            "(install covserve[gpu] instead of covserve[cpu], or use --device auto)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app(settings)
    raise_open_file_limit(settings.max_connections + SPARE_FILES)
    config = uvicorn_config(app, settings)
    _freeze_startup_objects()
    _DrainingServer(config, of_app(app).models).run()
    return 0


def _freeze_startup_objects() -> None:
    """Take every object alive at start-up (modules, classes, the app) out of the garbage collector's walks.

    They live as long as the process, yet every full collection walks them all, and a single-row request
    allocates enough short-lived containers (coroutines, closures, dicts) to trigger collections often.
    ``gc.freeze`` (what pre-fork servers do before forking) leaves the collector only the objects created
    while serving; the effect is measured in ``benchmarks/results/serving_data_plane.md``.
    """
    gc.collect()
    gc.freeze()


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT readiness turns false at once; uvicorn then lets in-flight requests finish."""

    def __init__(self, config: uvicorn.Config, models: ServedModels) -> None:
        super().__init__(config)
        self._models = models

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._models.draining = True
        super().handle_exit(sig, frame)
