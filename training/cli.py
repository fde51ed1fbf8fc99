"""``covserve-train``: fit, compare, evaluate and export models of input-dependent full covariance.

Exit codes: 0 success, 2 a usage or data error (the message names the file, column or flag), 3 training
diverged, 4 the export failed its own verification, 130 interrupted (resumable with ``--resume``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import __version__
from training.compare import run_comparison
from training.config import RunConfig, TrainConfig, load_config, parse_method
from training.data import Split, load_split
from training.errors import UsageError
from training.evaluate import evaluate_model
from training.export import ExportError, ModelCard, export_model, read_metadata
from training.losses import LossName
from training.networks import CovarianceModel
from training.pseudolabels import DEFAULT_NEIGHBOURS, DEFAULT_RESIDUAL_NEIGHBOURS, LabelScheme
from training.runs import RunDirectory, create_run_directory
from training.trainer import (
    TrainingDivergedError,
    TrainingInterruptedError,
    build_model,
    load_checkpoint,
    resolve_device,
    score,
    train,
    uses_pseudo_labels,
)

__all__ = ["main"]

PROG = "covserve-train"
VERIFICATION_ROWS = 256
DEFAULT_COMPARE_METHODS = "w2-bound,nll,faithful,beta-nll,nll-tic"
EXIT_USAGE, EXIT_DIVERGED, EXIT_EXPORT, EXIT_INTERRUPTED = 2, 3, 4, 130

Flags = Mapping[str, tuple[Callable[[str], object], str]]


def _one_of(choices: type[LabelScheme]) -> Callable[[str], str]:
    """An argparse type accepting the values of ``choices``; anything else exits 2 naming the flag."""
    valid = [choice.value for choice in choices]

    def parse(value: str) -> str:
        if value not in valid:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(valid)}, got {value!r}")
        return value

    return parse


_DEFAULT_TRAIN = TrainConfig()

_DATA_FLAGS: Flags = {
    "data": (str, "data set: synthetic | sinusoid | uci:<name> | path to a .csv or .parquet file"),
    "data_dir": (Path, "folder of the UCI files (default ../shared/datasets/uci)"),
    "inputs": (str, "comma-separated input columns or ranges A:B (default: all but targets)"),
    "targets": (str, "comma-separated target columns or ranges A:B (required for files)"),
    "exclude": (str, "comma-separated columns to ignore (e.g. text labels)"),
    "missing_value": (float, "sentinel that marks a missing value, e.g. -200; such rows are dropped"),
    "in_dim": (int, "synthetic input dimension (default 4)"),
    "out_dim": (int, "synthetic target dimension (default 4)"),
    "samples": (int, "synthetic/sinusoid rows (default 4000)"),
    "protocol": (str, "holdout (80/10/10 split, default) or tictac (the paper's UCI protocol)"),
    "validation_fraction": (float, "validation share of the rows (default 0.1)"),
    "test_fraction": (float, "test share of the rows (default 0.1)"),
}
_TRAIN_FLAGS: Flags = {
    "method": (
        str,
        "loss: "
        + ", ".join(name.value for name in LossName)
        + ", or hybrid (the W2 bound with pseudo-labels, "
        f"then NLL) (default {_DEFAULT_TRAIN.method.value})",
    ),
    "hybrid_epochs": (
        int,
        "epochs of the W2 bound with pseudo-labels before --method (default: half of --epochs for hybrid, "
        "0 otherwise)",
    ),
    "epochs": (int, "maximum epochs (default 100)"),
    "batch_size": (int, "rows per step (default 32)"),
    "lr": (float, "AdamW learning rate (default 3e-4)"),
    "weight_decay": (float, "AdamW weight decay (default 1e-2)"),
    "patience": (int, "early-stopping patience on validation NLL, epochs (default 20)"),
    "grad_clip": (float, "maximum gradient norm (default 10)"),
    "labels": (
        _one_of(LabelScheme),
        "pseudo-label scheme: targets (the paper's Algorithm 1), residuals (of the current mean network), "
        f"local-linear (a weighted linear fit per neighbourhood) (default {_DEFAULT_TRAIN.labels.value})",
    ),
    "label_refresh": (
        int,
        "epochs of mean warm-up before residual labels, and between their refreshes "
        f"(default {_DEFAULT_TRAIN.label_refresh})",
    ),
    "neighbours": (
        int,
        f"pseudo-label neighbourhood size k (default {DEFAULT_NEIGHBOURS} for targets, "
        f"{DEFAULT_RESIDUAL_NEIGHBOURS} for residuals and local-linear)",
    ),
    "temperature": (
        float,
        "pseudo-label softmax temperature, relative to the neighbour distances (default 1)",
    ),
    "calibrate": (str, "yes | no: scale Σ by the NLL-optimal factor on the validation rows (default yes)"),
    "device": (str, "auto | cpu | cuda (default auto)"),
    "threads": (int, "CPU threads for training (default 1: the per-step work is too small to share)"),
    "seed": (int, "seed of the split, weights and batches (default 0)"),
}
_MODEL_FLAGS: Flags = {
    "width": (int, "hidden units per layer (default max(D² + 2, 32))"),
    "depth": (int, "residual blocks per network (default 5)"),
}
_RUN_FLAGS: Flags = {
    "name": (str, "model name in the repository (default demo)"),
    "repository": (Path, "model repository (default models)"),
    "run_dir": (Path, "parent folder of run directories (default runs)"),
}
_LIST_FLAGS = {"inputs", "targets", "exclude"}


def _add_flags(
    parser: argparse.ArgumentParser, flags: Mapping[str, tuple[Callable[[str], object], str]], title: str
) -> None:
    group = parser.add_argument_group(title)
    for name, (kind, text) in flags.items():
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=text)


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
        _add_flags(command, _DATA_FLAGS, "data")
        _add_flags(command, _TRAIN_FLAGS, "training")
        _add_flags(command, _MODEL_FLAGS, "networks")
        _add_flags(command, _RUN_FLAGS, "output")
        return command

    fit = training_command("fit", "train, evaluate on the test split, export to the repository")
    fit.add_argument("--resume", type=Path, default=None, help="run directory (or checkpoint) to continue")
    compare = training_command("compare", "train several methods on identical splits and initial weights")
    compare.add_argument("--methods", default=DEFAULT_COMPARE_METHODS, help="comma-separated losses")
    compare.add_argument("--trials", type=int, default=3, help="repetitions with seeds seed..seed+K-1")
    evaluate = commands.add_parser("evaluate", help="evaluate a published model through ONNX Runtime")
    evaluate.add_argument("model", type=Path, help="models/<name>/<version>")
    evaluate.add_argument("--config", type=Path, default=None, help="YAML run configuration (data section)")
    _add_flags(evaluate, _DATA_FLAGS, "data")
    export = commands.add_parser("export", help="re-export a checkpoint to the repository")
    export.add_argument("checkpoint", type=Path, help="run directory or its checkpoint.pt")
    export.add_argument("--name", default=None, help="model name (default: the run's)")
    export.add_argument("--repository", type=Path, default=None, help="model repository (default: the run's)")
    return parser


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    def pick(flags: Flags) -> dict[str, object]:
        given = {name: getattr(args, name, None) for name in flags}
        return {name: _split_list(value) if name in _LIST_FLAGS else value for name, value in given.items()}

    return {
        "data": pick(_DATA_FLAGS),
        "train": pick(_TRAIN_FLAGS),
        "model": pick(_MODEL_FLAGS),
        "run": pick(_RUN_FLAGS),
    }


def _card(config: RunConfig, split: Split, test_metrics: dict[str, float]) -> ModelCard:
    return ModelCard(
        name=config.name,
        method=config.train.method.value,
        input_names=split.train.input_names,
        target_names=split.train.target_names,
        data_description=split.description,
        split_sizes=split.sizes(),
        test_metrics=test_metrics,
        training_input_mean=split.train.inputs.mean(axis=0),
        training_input_covariance=np.atleast_2d(np.cov(split.train.inputs, rowvar=False)),
        labels=config.train.labels.value if uses_pseudo_labels(config.train) else None,
        hybrid_epochs=config.train.bound_epochs,
    )


def _publish(
    model: CovarianceModel, config: RunConfig, split: Split, metrics: dict[str, float]
) -> Path | None:
    if model.kind.value == "tic":
        print(f"{PROG}: not exported: the tic covariance has no ONNX form (it needs input derivatives)")
        return None
    verification = split.test.inputs[:VERIFICATION_ROWS]
    version = export_model(model.cpu(), _card(config, split, metrics), config.repository, verification)
    print(f"published {version}")
    return version


def _fit_split(config: RunConfig) -> Split:
    """The split ``fit`` trains on, refused (with an unusable ``--device``) before any run folder exists
    if it has no test rows."""
    resolve_device(config.train.device)
    split = load_split(config.data)
    if len(split.test) == 0:
        raise UsageError(
            "--test-fraction must be > 0: fit reports test metrics and verifies the export on them"
        )
    return split


def _fit(args: argparse.Namespace) -> int:
    resume = load_checkpoint(args.resume) if args.resume is not None else None
    if args.resume is not None:
        run = RunDirectory(args.resume if args.resume.is_dir() else args.resume.parent)
        config = load_config(run.path / "config.yaml", {})
        split = _fit_split(config)
    else:
        config = load_config(args.config, _overrides(args))
        split = _fit_split(config)
        run = create_run_directory(config.run_dir, config.name)
        run.write_config(config)
    print(split.description)
    print(f"run directory: {run.path}")

    def report_epoch(record: dict[str, float]) -> None:
        run.append_epoch(record)
        summary = "  ".join(f"{key} {value:.4g}" for key, value in record.items() if key != "epoch")
        print(f"epoch {int(record['epoch'])}: {summary}", flush=True)

    result = train(
        split,
        config.train,
        config.model,
        run_dir=run.path,
        resume=resume,
        progress=not args.no_progress,
        on_epoch=report_epoch,
    )
    mean, covariance, metrics = score(result.model, split.test, torch.device(result.device))
    run.write_plots(result.history, split.test, mean, covariance)
    version = _publish(result.model, config, split, metrics)
    report: dict[str, Any] = {
        "test_metrics": metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped": result.stopped,
        "seconds_per_epoch": result.seconds_per_epoch,
        "covariance_calibration": result.covariance_calibration,
        "peak_memory_mib": result.peak_memory_mib,
        "device": result.device,
        "data": {"description": split.description, "split_sizes": split.sizes()},
        "published": str(version) if version is not None else None,
        "covserve_version": __version__,
    }
    print(f"report: {run.write_report(report)}")
    print("test: " + "  ".join(f"{key} {value:.4g}" for key, value in metrics.items()))
    return 0


def _compare(args: argparse.Namespace) -> int:
    config = load_config(args.config, _overrides(args))
    try:
        methods = [parse_method(name.strip()) for name in str(args.methods).split(",") if name.strip()]
    except ValueError as error:
        raise UsageError(f"--methods {args.methods!r}: {error}") from None
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    resolve_device(config.train.device)
    load_split(config.data)
    run = create_run_directory(config.run_dir, f"{config.name}-compare")
    run.write_config(config)
    comparison = run_comparison(config, methods, args.trials, run, progress=not args.no_progress)
    print(f"{len(methods)} methods × {args.trials} trials on {config.data.data}; mean ± std over trials")
    print(comparison.table())
    print(f"saved {run.path / 'compare.md'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    metadata = read_metadata(args.model)
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
    print(f"{metadata['name']} v{metadata['version']} on {config.data.data} (test split, {len(table)} rows)")
    print("  ".join(f"{key} {value:.4g}" for key, value in evaluation.metrics.items()))
    return 0


def _export(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    run_path = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    config = load_config(
        run_path / "config.yaml", {"run": {"name": args.name, "repository": args.repository}}
    )
    split = load_split(config.data)
    model = build_model(split, config.train, config.model)
    model.load_state_dict(checkpoint["best_model"])
    _, _, metrics = score(model, split.test, torch.device("cpu"))
    return 0 if _publish(model, config, split, metrics) is not None else EXIT_EXPORT


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
