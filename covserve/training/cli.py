"""``covserve-train``: fit, compare, evaluate and export models of input-dependent full covariance.

Exit codes: 0 success, 2 a usage or data error (the message names the file, column or flag), 3 training
diverged, 4 the export failed its own verification, 130 interrupted (resumable with ``--resume``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from covserve.training import __version__
from covserve.training.config import ModelConfig, RunConfig, TrainConfig, load_config, parse_method
from covserve.training.data import DataConfig, load_split
from covserve.training.errors import UsageError
from covserve.training.evaluate import evaluate_model
from covserve.training.export import ExportError, read_published
from covserve.training.pipeline import compare, fit, load_fit_split, republish, start_run
from covserve.training.runs import RunDirectory
from covserve.training.trainer import (
    TrainingDivergedError,
    TrainingInterruptedError,
    load_checkpoint,
)

__all__ = ["main"]

PROG = "covserve-train"
DEFAULT_COMPARE_METHODS = "w2-bound,nll,faithful,beta-nll,nll-tic"
EXIT_USAGE, EXIT_DIVERGED, EXIT_EXPORT, EXIT_INTERRUPTED = 2, 3, 4, 130

_FLAG_SECTIONS: tuple[tuple[str, type[BaseModel], str, frozenset[str]], ...] = (
    ("data", DataConfig, "data", frozenset({"seed"})),
    ("train", TrainConfig, "training", frozenset()),
    ("model", ModelConfig, "networks", frozenset()),
    ("run", RunConfig, "output", frozenset({"data", "model", "train"})),
)
"""``(section, config model, help group, fields that are not flags)``: every other field of the run
configuration is a flag ``--field-name``, its help the field's description and default."""


def _one_of(choices: type[Enum]) -> Callable[[str], str]:
    """An argparse type accepting the values of ``choices``; anything else exits 2 naming the flag."""
    valid = [str(choice.value) for choice in choices]

    def parse(value: str) -> str:
        if value not in valid:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(valid)}, got {value!r}")
        return value

    return parse


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _flag_type(annotation: object) -> Callable[[str], object]:
    """The argparse type of a field: enums and numbers are checked at parse time, lists split at commas;
    everything else is a string that pydantic validates (its message names the field)."""
    members = [member for member in get_args(annotation) if member is not type(None)]
    inner = members[0] if get_origin(annotation) in (Union, UnionType) and len(members) == 1 else annotation
    if get_origin(inner) is list:
        return _split_list
    if isinstance(inner, type) and issubclass(inner, Enum):
        return _one_of(inner)
    if inner in (int, float, Path):
        return inner
    return str


def _flag_help(field: FieldInfo) -> str:
    """The field's description with its default (argparse %-formats help, so ``%`` is doubled)."""
    text = field.description or ""
    default = field.get_default(call_default_factory=True)
    if isinstance(default, Enum):
        default = default.value
    elif isinstance(default, bool):
        default = "yes" if default else "no"
    if default is not None and default != []:
        text = f"{text} (default {default})"
    return text.replace("%", "%%")


def _add_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    for section, model, title, excluded in _FLAG_SECTIONS:
        if section not in sections:
            continue
        group = parser.add_argument_group(title)
        for name, field in model.model_fields.items():
            if name not in excluded:
                flag = f"--{name.replace('_', '-')}"
                kind = _flag_type(field.annotation)
                group.add_argument(flag, dest=name, type=kind, default=None, help=_flag_help(field))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"covserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def training_command(name: str, text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--config", type=Path, default=None, help="YAML run configuration (flags override)"
        )
        command.add_argument("--no-progress", action="store_true", help="no progress bars")
        _add_flags(command, ("data", "train", "model", "run"))
        return command

    fit = training_command("fit", "train, evaluate on the test split, export to the repository")
    fit.add_argument("--resume", type=Path, default=None, help="run directory (or checkpoint) to continue")
    compare = training_command("compare", "train several methods on identical splits and initial weights")
    compare.add_argument("--methods", default=DEFAULT_COMPARE_METHODS, help="comma-separated losses")
    compare.add_argument("--trials", type=int, default=3, help="repetitions with seeds seed..seed+K-1")
    evaluate = commands.add_parser("evaluate", help="evaluate a published model through ONNX Runtime")
    evaluate.add_argument("model", type=Path, help="models/<name>/<version>")
    evaluate.add_argument("--config", type=Path, default=None, help="YAML run configuration (data section)")
    _add_flags(evaluate, ("data",))
    export = commands.add_parser("export", help="re-export a checkpoint to the repository")
    export.add_argument("checkpoint", type=Path, help="run directory or its checkpoint.pt")
    export.add_argument("--name", default=None, help="model name (default: the run's)")
    export.add_argument("--repository", type=Path, default=None, help="model repository (default: the run's)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The flags given, by configuration section (``None`` for the ones not given)."""
    return {
        section: {name: getattr(args, name, None) for name in model.model_fields if name not in excluded}
        for section, model, _, excluded in _FLAG_SECTIONS
    }


def _fit(args: argparse.Namespace) -> int:
    if args.resume is not None:
        resume = load_checkpoint(args.resume)
        run = RunDirectory(args.resume if args.resume.is_dir() else args.resume.parent)
        config = load_config(run.path / "config.yaml", {})
        split = load_fit_split(config)
    else:
        resume = None
        config = load_config(args.config, _overrides(args))
        split = load_fit_split(config)
        run = start_run(config)
    print(split.description)
    print(f"run directory: {run.path}")

    def report_epoch(record: dict[str, float]) -> None:
        summary = "  ".join(f"{key} {value:.4g}" for key, value in record.items() if key != "epoch")
        print(f"epoch {int(record['epoch'])}: {summary}", flush=True)

    outcome = fit(config, split, run, resume=resume, progress=not args.no_progress, on_epoch=report_epoch)
    _print_published(outcome.version)
    print(f"report: {outcome.report_path}")
    print("test: " + "  ".join(f"{key} {value:.4g}" for key, value in outcome.metrics.items()))
    return 0


def _print_published(version: Path | None) -> None:
    if version is None:
        print(f"{PROG}: not exported: the tic covariance has no ONNX form (it needs input derivatives)")
    else:
        print(f"published {version}")


def _compare(args: argparse.Namespace) -> int:
    config = load_config(args.config, _overrides(args))
    try:
        methods = [parse_method(name.strip()) for name in str(args.methods).split(",") if name.strip()]
    except ValueError as error:
        raise UsageError(f"--methods {args.methods!r}: {error}") from None
    run, comparison = compare(config, methods, args.trials, progress=not args.no_progress)
    print(f"{len(methods)} methods × {args.trials} trials on {config.data.data}; mean ± std over trials")
    print(comparison.table())
    print(f"saved {run.path / 'compare.md'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    metadata = read_published(args.model)
    config = load_config(args.config, {"data": _overrides(args)["data"]})
    split = load_split(config.data)
    table = split.test
    evaluation = evaluate_model(
        args.model,
        table.inputs,
        table.targets,
        true_mean=table.true_mean,
        true_covariance=table.true_covariance,
    )
    print(f"{metadata.name} v{metadata.version} on {config.data.data} (test split, {len(table)} rows)")
    print("  ".join(f"{key} {value:.4g}" for key, value in evaluation.metrics.items()))
    return 0


def _export(args: argparse.Namespace) -> int:
    version = republish(args.checkpoint, args.name, args.repository)
    _print_published(version)
    return 0 if version is not None else EXIT_EXPORT


_COMMANDS = {"fit": _fit, "compare": _compare, "evaluate": _evaluate, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command and return the exit code; errors are one line, never a traceback."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDivergedError as error:
        print(f"{PROG}: training diverged: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except ExportError as error:
        print(f"{PROG}: export failed, nothing published: {error}", file=sys.stderr)
        return EXIT_EXPORT
    except TrainingInterruptedError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no model version was published", file=sys.stderr)
        return EXIT_INTERRUPTED
