"""``covserve-train``: the command line of :data:`DESCRIPTION`, with the exit codes of :data:`EXIT_CODES`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from covserve._flags import add_switch, help_with_default, rewrite_deprecated_switches
from covserve.training import __version__
from covserve.training.config import ModelConfig, RunConfig, TrainConfig, load_config
from covserve.training.data import DataConfig
from covserve.training.errors import (
    ExportError,
    TrainingDivergedError,
    TrainingInterruptedError,
    UsageError,
)
from covserve.training.options import NGBOOST_ESTIMATORS

if TYPE_CHECKING:
    from covserve.training.data import Split
    from covserve.training.distributed import Ranks

__all__ = ["main"]

PROG = "covserve-train"
DESCRIPTION = "Fit, compare, evaluate and export models of input-dependent full covariance."
EXIT_CODES = (
    "exit codes: 0 success, 2 a usage or data error (the message names the file, column or flag), "
    "3 training diverged, 4 the export failed its own verification, 130 interrupted (resume with --resume)"
)
EVALUATE_ALL_ROWS, EVALUATE_TEST_ROWS = "all", "test"
DEFAULT_COMPARE_METHODS = "w2-bound,hybrid,nll,faithful,beta-nll,nll-tic"
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


def _is_switch(field: FieldInfo) -> bool:
    return field.annotation is bool


def _add_flags(
    parser: argparse.ArgumentParser, sections: tuple[str, ...], omit: frozenset[str] = frozenset()
) -> None:
    """One flag per field of the configuration ``sections``, except the fields named in ``omit``."""
    for section, model, title, excluded in _FLAG_SECTIONS:
        if section not in sections:
            continue
        group = parser.add_argument_group(title)
        for name, field in model.model_fields.items():
            if name not in excluded and name not in omit:
                flag = f"--{name.replace('_', '-')}"
                text = help_with_default(field.description, field.get_default(call_default_factory=True))
                if _is_switch(field):
                    add_switch(group, flag, name, text)
                else:
                    group.add_argument(
                        flag, dest=name, type=_flag_type(field.annotation), default=None, help=text
                    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"covserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def training_command(name: str, text: str, omit: frozenset[str] = frozenset()) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=text, description=text, epilog=EXIT_CODES)
        command.add_argument(
            "--config", type=Path, default=None, help="YAML run configuration (flags override)"
        )
        add_switch(
            command, "--progress", "progress", "progress bars (default: only when stderr is a terminal)"
        )
        _add_flags(command, ("data", "train", "model", "run"), omit)
        return command

    fit = training_command("fit", "train, evaluate on the test split, export to the repository")
    fit.add_argument("--resume", type=Path, default=None, help="run directory (or checkpoint) to continue")
    fit.add_argument(
        "--skip-if-published",
        action="store_true",
        help="exit 0 without training when the repository already has a version of the model "
        "(what `make demo` and the training image do)",
    )
    compare = training_command(
        "compare", "train several methods on identical splits and initial weights", frozenset({"method"})
    )
    compare.add_argument(
        "--methods",
        default=DEFAULT_COMPARE_METHODS,
        help="comma-separated: a loss or hybrid, optionally +targets, +residuals or +local-linear labels "
        "(w2-bound+targets is the paper's method), or ngboost when NGBoost is installed "
        f"(default {DEFAULT_COMPARE_METHODS})",
    )
    compare.add_argument(
        "--trials", type=int, default=3, help="repetitions with seeds seed..seed+K-1 (default 3)"
    )
    compare.add_argument(
        "--ngboost-estimators",
        type=int,
        default=NGBOOST_ESTIMATORS,
        help="NGBoost's boosting rounds, early-stopped on the validation rows "
        f"(default {NGBOOST_ESTIMATORS})",
    )
    evaluate_text = (
        "score a published model through ONNX Runtime on a data set; its columns are the model's "
        "(model.json) unless --inputs/--targets say otherwise"
    )
    evaluate = commands.add_parser(
        "evaluate", help=evaluate_text, description=evaluate_text, epilog=EXIT_CODES
    )
    evaluate.add_argument("model", type=Path, help="models/<name>/<version>")
    evaluate.add_argument("--config", type=Path, default=None, help="YAML run configuration (data section)")
    evaluate.add_argument(
        "--rows",
        choices=(EVALUATE_ALL_ROWS, EVALUATE_TEST_ROWS),
        default=EVALUATE_ALL_ROWS,
        help="score every row of the data (default) or only the test split that the data flags and seed "
        "define, the rows fit held out",
    )
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


# Each command imports what it runs (torch, ONNX Runtime, matplotlib take seconds to import), so ``--help``
# and usage errors answer at once.


@dataclass(frozen=True)
class _FitPlan:
    """What a ``fit`` trains on, settled (by rank 0 alone in a distributed run) before training starts."""

    config: RunConfig
    split: Split
    run_path: Path
    resume: dict[str, Any] | None


def _plan_fit(args: argparse.Namespace) -> _FitPlan | int:
    """Read the configuration (or the run to resume), the data and the checkpoint; create the run folder.
    An exit code instead when there is nothing to train."""
    from covserve.training.data import load_split

    resume = None
    if args.resume is not None:
        from covserve.training.runs import RunDirectory
        from covserve.training.trainer import load_checkpoint

        resume = load_checkpoint(args.resume)
        run_path = args.resume if args.resume.is_dir() else args.resume.parent
        finished = RunDirectory(run_path).read_report()
        if finished is not None:
            published = finished.get("published") or "nothing (not exportable)"
            print(f"{run_path} finished already and published {published}; nothing to resume")
            return 0
        config = load_config(run_path / "config.yaml", {})
    else:
        config = load_config(args.config, _overrides(args))
        if args.skip_if_published and _report_published(config.repository / config.name):
            return 0
    split = load_split(config.data)  # a fresh fit's data errors answer here, before torch is imported

    from covserve.training.pipeline import check_fit_split, check_publishable, start_run

    check_fit_split(config, split)
    if args.resume is None:
        check_publishable(config, split)
        run_path = start_run(config).path
    print(split.description)
    print(f"run directory: {run_path}")
    return _FitPlan(config, split, run_path, resume)


def _fit(args: argparse.Namespace) -> int:
    """``fit`` in this process, or as one rank of a ``torchrun`` launch: rank 0 plans the run (reads every
    file, creates the run folder) and sends the plan, or its error, to every rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        plan = _plan_fit(args)
        return plan if isinstance(plan, int) else _train_plan(args, plan, None)
    from covserve.training.distributed import finish, start

    ranks = start()
    try:
        planned: _FitPlan | int | Exception | None = None
        if ranks.main:
            try:
                planned = _plan_fit(args)
            except Exception as error:  # every rank must learn why rank 0 stopped, or they would wait
                planned = error
        planned = ranks.broadcast(planned)
        if isinstance(planned, Exception):
            raise planned
        assert planned is not None, "rank 0 always sends a plan, an exit code or an error"
        return planned if isinstance(planned, int) else _train_plan(args, planned, ranks)
    finally:
        finish()


def _train_plan(args: argparse.Namespace, plan: _FitPlan, ranks: Ranks | None) -> int:
    from covserve.training.distributed import SINGLE
    from covserve.training.pipeline import fit
    from covserve.training.runs import RunDirectory

    def report_epoch(record: dict[str, float]) -> None:
        summary = "  ".join(f"{key} {value:.4g}" for key, value in record.items() if key != "epoch")
        print(f"epoch {int(record['epoch'])}: {summary}", flush=True)

    ranks = ranks or SINGLE
    outcome = fit(
        plan.config,
        plan.split,
        RunDirectory(plan.run_path),
        resume=plan.resume,
        progress=_progress(args) and ranks.main,
        on_epoch=report_epoch,
        on_search=lambda search: print(search.summary(), flush=True),
        ranks=ranks,
    )
    if outcome is None:
        return 0
    print(outcome.training_summary())
    _print_published(outcome.version)
    print(f"report: {outcome.report_path}")
    print("test: " + "  ".join(f"{key} {value:.4g}" for key, value in outcome.metrics.items()))
    return 0


def _report_published(model_dir: Path) -> bool:
    """Whether ``model_dir`` has a published version, saying which when it has."""
    from covserve.repository import latest_published

    latest = latest_published(model_dir)
    if latest is not None:
        print(f"{model_dir} already has version {latest.version}; not training (--skip-if-published)")
    return latest is not None


def _print_published(version: Path | None) -> None:
    if version is None:
        print(f"{PROG}: not exported: the tic covariance has no ONNX form (it needs input derivatives)")
    else:
        print(f"published {version}")


def _compare(args: argparse.Namespace) -> int:
    from covserve.training.compare import describe_settings
    from covserve.training.methods import parse_methods
    from covserve.training.pipeline import compare

    config = load_config(args.config, _overrides(args))
    try:
        methods = parse_methods(str(args.methods))
    except ValueError as error:
        raise UsageError(f"--methods {args.methods!r}: {error}") from None
    if args.ngboost_estimators < 1:
        raise UsageError(f"--ngboost-estimators must be >= 1, got {args.ngboost_estimators}")
    print(describe_settings(config, args.trials))
    run, comparison = compare(
        config, methods, args.trials, progress=_progress(args), ngboost_estimators=args.ngboost_estimators
    )
    print(f"{len(methods)} methods × {args.trials} trials on {config.data.data}; mean ± std over trials")
    print(comparison.table())
    print(f"saved {run.path / 'compare.md'}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from covserve.training.data import BUILTIN_NAMES, Protocol, load_split, load_table
    from covserve.training.evaluate import evaluate_model
    from covserve.training.export import read_published

    metadata = read_published(args.model)
    config = load_config(args.config, {"data": _overrides(args)["data"]})
    data = config.data
    if data.data not in BUILTIN_NAMES and data.protocol is Protocol.HOLDOUT:
        data = data.model_copy(
            update={
                "inputs": data.inputs or list(metadata.input_names),
                "targets": data.targets or list(metadata.target_names),
            }
        )
    if args.rows == EVALUATE_ALL_ROWS and data.protocol is Protocol.HOLDOUT:
        table, _ = load_table(data)
        which = "every row"
    else:
        table = load_split(data).test
        which = "the test split" if data.protocol is Protocol.HOLDOUT else "the tictac protocol's rows"
    evaluation = evaluate_model(
        args.model,
        table.inputs,
        table.targets,
        input_names=table.input_names,
        target_names=table.target_names,
        true_mean=table.true_mean,
        true_covariance=table.true_covariance,
    )
    print(f"{metadata.name} v{metadata.version} on {data.data} ({which}, {len(table)} rows)")
    print("  ".join(f"{key} {value:.4g}" for key, value in evaluation.metrics.items()))
    return 0


def _export(args: argparse.Namespace) -> int:
    from covserve.training.pipeline import republish

    version = republish(args.checkpoint, args.name, args.repository)
    _print_published(version)
    return 0 if version is not None else EXIT_EXPORT


def _progress(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress`` as given, else progress bars only on a terminal (never in logs)."""
    return bool(args.progress) if args.progress is not None else sys.stderr.isatty()


def _switch_flags() -> list[str]:
    """Every ``--x`` switch of the run configuration, for :func:`rewrite_deprecated_switches`."""
    return [
        f"--{name.replace('_', '-')}"
        for _, model, _, excluded in _FLAG_SECTIONS
        for name, field in model.model_fields.items()
        if name not in excluded and _is_switch(field)
    ]


_COMMANDS = {"fit": _fit, "compare": _compare, "evaluate": _evaluate, "export": _export}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command and return the exit code; errors are one line, never a traceback."""
    given = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(rewrite_deprecated_switches(given, _switch_flags(), PROG))
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
