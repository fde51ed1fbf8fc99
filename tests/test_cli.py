"""``covserve-train`` end to end on small data: fit, evaluate, export, compare, errors, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covserve.training.cli import main
from covserve.training.config import ModelConfig, RunConfig, TrainConfig
from covserve.training.data import DataConfig

SCRIPT = str(Path(sys.executable).parent / "covserve-train")
UCI = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "uci"
TINY = ["--width", "8", "--depth", "1", "--batch-size", "32", "--device", "cpu", "--no-progress"]


def _plant_csv(path: Path, rows: int = 240) -> Path:
    generator = np.random.default_rng(0)
    temperature = generator.uniform(10, 30, rows)
    pressure = generator.uniform(1, 2, rows)
    noise = generator.normal(size=(rows, 2)) * (0.1 + 0.05 * temperature[:, None])
    yield_a = 2.0 * temperature + noise[:, 0]
    yield_b = pressure * 3.0 + noise[:, 0] * 0.8 + noise[:, 1] * 0.2
    lines = ["temperature,pressure,yield_a,yield_b"]
    lines += [
        f"{t:.6f},{p:.6f},{a:.6f},{b:.6f}"
        for t, p, a, b in zip(temperature, pressure, yield_a, yield_b, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _output_flags(tmp_path: Path) -> list[str]:
    return ["--repository", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs")]


def test_fit_then_evaluate_a_named_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = _plant_csv(tmp_path / "plant.csv")
    data = ["--data", str(csv), "--inputs", "temperature,pressure", "--targets", "yield_a,yield_b"]
    code = main(["fit", *data, "--epochs", "2", "--name", "plant", *TINY, *_output_flags(tmp_path)])
    assert code == 0, capsys.readouterr().err
    version = tmp_path / "models" / "plant" / "1"
    metadata = json.loads((version / "model.json").read_text())
    assert metadata["input_names"] == ["temperature", "pressure"]
    assert metadata["target_names"] == ["yield_a", "yield_b"]
    assert metadata["method"] == "w2-bound"
    assert metadata["parameterisation"] == "cholesky"
    (run,) = (tmp_path / "runs").iterdir()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    report = json.loads((run / "report.json").read_text())
    assert report["published"] == str(version)
    assert np.isfinite(report["test_metrics"]["nll"])
    for plot in ("learning_curves", "predicted_vs_true", "calibration", "covariance_ellipses"):
        assert (run / f"{plot}.png").stat().st_size > 1000
    capsys.readouterr()

    assert main(["evaluate", str(version), *data, "--rows", "test"]) == 0
    printed = capsys.readouterr().out
    nll = float(printed.split("nll ")[1].split()[0])
    assert nll == pytest.approx(report["test_metrics"]["nll"], rel=1e-3)
    assert f"the test split, {report['data']['split_sizes']['test']} rows" in printed

    assert main(["evaluate", str(version), "--data", str(csv)]) == 0  # the model's columns, every row
    printed = capsys.readouterr().out
    assert f"every row, {sum(report['data']['split_sizes'].values())} rows" in printed


def test_fit_says_what_it_kept_and_reports_the_process_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--samples", "400", "--epochs", "3", *TINY, *_output_flags(tmp_path)]
    assert main(["fit", *flags]) == 0
    printed = capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert "training ran all 3 epochs" in printed
    assert f"kept epoch {report['best_epoch']}, the best on the validation rows" in printed
    assert f"covariance calibration factor {report['covariance_calibration']:.4g}" in printed
    assert report["process_peak_rss_mib"] > 100  # torch alone is larger; the old figure was RSS growth
    assert report["training_memory_growth_mib"] < report["process_peak_rss_mib"]
    assert (run / "correlations.png").stat().st_size > 1000  # 4 targets: a heatmap, not ellipses


@pytest.fixture(scope="module")
def plant_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(plant.csv, models/plant/1)``: a 2-epoch model on temperature, pressure → yield_a, yield_b."""
    root = tmp_path_factory.mktemp("plant")
    csv = _plant_csv(root / "plant.csv")
    data = ["--data", str(csv), "--inputs", "temperature,pressure", "--targets", "yield_a,yield_b"]
    assert main(["fit", *data, "--epochs", "2", *TINY, *_output_flags(root)]) == 0
    return csv, root / "models" / "plant" / "1"


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (
            ["--inputs", "pressure,temperature", "--targets", "yield_a,yield_b"],
            r"--inputs: the model in .* takes \['temperature', 'pressure'\], "
            r"got \['pressure', 'temperature'\] \(in another order\); "
            r"select them with --inputs temperature,pressure",
        ),
        (
            ["--inputs", "temperature,pressure", "--targets", "yield_b,yield_a"],
            r"--targets: .* takes \['yield_a', 'yield_b'\], got \['yield_b', 'yield_a'\] "
            r"\(in another order\)",
        ),
        (
            ["--inputs", "temperature,yield_b", "--targets", "yield_a,pressure"],
            r"--inputs: .* \(other columns\)",
        ),
    ],
)
def test_evaluate_refuses_columns_in_another_order_than_the_models(
    plant_model: tuple[Path, Path], columns: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, version = plant_model
    assert main(["evaluate", str(version), "--data", str(csv), *columns]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_new_version_with_other_columns_is_refused_before_any_run_folder(
    plant_model: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, version = plant_model
    repository = version.parent.parent
    runs = tmp_path / "runs"
    flags = ["--epochs", "1", *TINY, "--repository", str(repository), "--run-dir", str(runs)]
    swapped = ["--data", str(csv), "--inputs", "temperature", "--targets", "yield_a,yield_b"]
    assert main(["fit", *swapped, *flags]) == 2
    error = capsys.readouterr().err
    assert "has other columns than this run (inputs ['temperature', 'pressure'] → ['temperature'])" in error
    assert "--allow-schema-change" in error
    assert not runs.exists()
    assert sorted(path.name for path in version.parent.iterdir()) == ["1"]
    assert main(["fit", *swapped, *flags, "--allow-schema-change"]) == 0
    assert sorted(path.name for path in version.parent.iterdir()) == ["1", "2"]


def test_skip_if_published_trains_only_into_an_empty_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["fit", "--samples", "400", "--epochs", "1", *TINY, *_output_flags(tmp_path)]
    flags.append("--skip-if-published")
    assert main(flags) == 0
    capsys.readouterr()
    assert main(flags) == 0
    assert "already has version 1; not training (--skip-if-published)" in capsys.readouterr().out
    assert [path.name for path in (tmp_path / "models" / "synthetic").iterdir()] == ["1"]
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_on_off_options_are_switches_and_the_old_spelling_still_parses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["fit", "--samples", "400", "--epochs", "1", *TINY, *_output_flags(tmp_path)]
    assert main([*flags, "--calibrate", "no"]) == 0
    assert "'--calibrate no' is deprecated, use '--no-calibrate'" in capsys.readouterr().err
    assert main([*flags, "--no-calibrate"]) == 0
    reports = [json.loads((run / "report.json").read_text()) for run in sorted((tmp_path / "runs").iterdir())]
    assert [report["covariance_calibration"] for report in reports] == [1.0, 1.0]
    capsys.readouterr()
    with pytest.raises(SystemExit) as usage_error:
        main(["fit", "--calibrate", "maybe"])
    assert usage_error.value.code == 2
    assert "unrecognized arguments: maybe" in capsys.readouterr().err


def test_export_republishes_a_checkpoint_as_the_next_version(tmp_path: Path) -> None:
    flags = ["--samples", "400", "--epochs", "1", *TINY, *_output_flags(tmp_path)]
    assert main(["fit", *flags]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert main(["export", str(run), "--name", "again", "--repository", str(tmp_path / "models")]) == 0
    assert (tmp_path / "models" / "again" / "1" / "model.onnx").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["fit", "--data", "missing.csv", "--targets", "y"], "missing.csv"),
        (["fit", "--data", "{csv}", "--targets", "nope"], "nope"),
        (["fit", "--data", "{csv}"], "--targets"),
        (["fit", "--data", "{csv}", "--targets", "yield_a", "--inputs", "yield_a"], "yield_a"),
        (["fit", "--method", "w3"], "method: expected one of mse, nll"),
        (["fit", "--method", "hybrid", "--epochs", "1"], "--method hybrid needs at least one epoch"),
        (["fit", "--epochs", "3", "--hybrid-epochs", "3"], "--hybrid-epochs"),
        (["fit", "--in-dim", "0"], "--in-dim"),
        (["fit", "--device", "cuda"] if not torch.cuda.is_available() else ["fit", "--lr", "-1"], "--"),
        (["fit", "--config", "{bad_yaml}"], "bad.yaml"),
        (["fit", "--config", "{unknown_key}"], "learning_rate"),
        (["fit", "--test-fraction", "0"], "--test-fraction"),
        (["compare", "--methods", "w2-bound,w3"], "--methods"),
        (["evaluate", "{tmp}/models/none/1"], "model.json"),
        (["export", "{tmp}/no-run"], "no-run"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _plant_csv(tmp_path / "plant.csv", rows=40)
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n", encoding="utf-8")
    (tmp_path / "unknown.yaml").write_text("train:\n  learning_rate: 0.1\n", encoding="utf-8")
    substitutions = {
        "{csv}": str(csv),
        "{bad_yaml}": str(tmp_path / "bad.yaml"),
        "{unknown_key}": str(tmp_path / "unknown.yaml"),
        "{tmp}": str(tmp_path),
    }
    filled = []
    for argument in arguments:
        for key, value in substitutions.items():
            argument = argument.replace(key, value)
        filled.append(argument)
    code = main([*filled, *_output_flags(tmp_path)] if filled[0] in {"fit", "compare"} else filled)
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("covserve-train: error: ")
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "models").exists()
    assert not (tmp_path / "runs").exists(), "a refused command left a run folder"


def test_console_script_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [SCRIPT, "fit", "--data", str(tmp_path / "absent.parquet"), "--targets", "y"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "absent.parquet" in result.stderr
    assert "Traceback" not in result.stderr


def _checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    weights: dict[str, torch.Tensor] = state["model"]
    return weights


def _sigint_not_ignored() -> None:
    """Run in the child before exec: a test run started in the background (``cmd &`` in a script) inherits
    an ignored SIGINT, under which Python never raises KeyboardInterrupt and Ctrl-C cannot be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow(
    reason="trains three times, once in a child process interrupted by SIGINT, to compare weights"
)
def test_resume_after_ctrl_c_reproduces_the_uninterrupted_weights(tmp_path: Path) -> None:
    epochs = 6
    flags = ["fit", "--samples", "1500", "--epochs", str(epochs), *TINY, "--patience", "100"]
    straight = tmp_path / "straight"
    assert main([*flags, *_output_flags(straight)]) == 0

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [SCRIPT, *flags, *_output_flags(interrupted)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_sigint_not_ignored,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("epoch 2:"):
            process.send_signal(signal.SIGINT)
            break
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error
    assert "--resume" in error
    assert "Traceback" not in error
    (run,) = (interrupted / "runs").iterdir()
    assert len((run / "metrics.jsonl").read_text().splitlines()) < epochs

    assert main(["fit", "--resume", str(run), "--no-progress"]) == 0
    (straight_run,) = (straight / "runs").iterdir()
    expected, actual = _checkpoint_weights(straight_run), _checkpoint_weights(run)
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), name

    versions = sorted(path.name for path in (interrupted / "models" / "synthetic").iterdir())
    assert main(["fit", "--resume", str(run), "--no-progress"]) == 0  # finished: nothing more to publish
    assert sorted(path.name for path in (interrupted / "models" / "synthetic").iterdir()) == versions == ["1"]


def test_compare_puts_the_hybrid_ngboost_and_label_schemes_in_one_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    methods = "w2-bound,w2-bound+targets,hybrid,nll,ngboost"
    flags = ["--samples", "400", "--epochs", "3", "--hybrid-epochs", "1", "--trials", "2"]
    flags += ["--methods", methods]
    assert main(["compare", *flags, "--ngboost-estimators", "5", *TINY, *_output_flags(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "2 trials on synthetic" in printed
    assert "at most 3 epochs" in printed
    assert "residuals labels for names without +scheme, the hybrid's first phase 1" in printed
    assert "--lr 1e-3 --epochs 40 --labels targets gives their settings" in printed
    header = next(line for line in printed.splitlines() if line.startswith("| method |"))
    assert header.split(" | ")[1:5] == ["MSE", "NLL", "NLL without calibration", "factor c"]
    assert "KL to truth" in header
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line != header]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == methods.split(",")
    (run,) = (tmp_path / "runs").iterdir()
    fits = json.loads((run / "compare.json").read_text())
    assert [(fit["method"], fit["trial"]) for fit in fits] == [
        (method, trial) for trial in (0, 1) for method in methods.split(",")
    ]
    by_method = {fit["method"]: fit["metrics"] for fit in fits if fit["trial"] == 0}
    assert "calibration_factor" not in by_method["ngboost"]
    assert by_method["nll"]["calibration_factor"] > 0
    assert (run / "hybrid-trial1" / "checkpoint.pt").is_file()
    assert not (run / "ngboost-trial0").exists()
    assert (run / "compare.md").read_text().startswith("2 trials on synthetic")


@pytest.mark.skipif(not UCI.is_dir(), reason=f"UCI data sets not present at {UCI}")
def test_compare_runs_on_uci_energy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--data", "uci:energy", "--data-dir", str(UCI), "--epochs", "1", "--trials", "1"]
    assert main(["compare", *flags, "--methods", "w2-bound,nll", *TINY, *_output_flags(tmp_path)]) == 0
    assert "| w2-bound |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--labels", "median"], "argument --labels: expected one of targets, residuals, local-linear"),
        (["--label-refresh", "x"], "argument --label-refresh: invalid int value: 'x'"),
    ],
)
def test_a_bad_label_flag_exits_2_naming_the_flag(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["fit", *flags])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_label_refresh_below_one_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--label-refresh", "0", *_output_flags(tmp_path)]) == 2
    assert "train.label_refresh" in capsys.readouterr().err


def test_help_lists_the_label_options_with_their_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--labels LABELS pseudo-label scheme: targets" in text
    assert f"(default {TrainConfig().labels.value})" in text
    assert "--label-refresh LABEL_REFRESH" in text
    assert "(unset: 64 for targets, 256 for residuals and local-linear)" in text


def test_every_configuration_field_is_a_flag_whose_help_shows_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    sections = {"data": DataConfig(), "train": TrainConfig(), "model": ModelConfig(), "run": RunConfig()}
    for section, config in sections.items():
        for name, value in config:
            if (section, name) in {("data", "seed")} or isinstance(
                value, (DataConfig, TrainConfig, ModelConfig)
            ):
                continue
            option = f"--{name.replace('_', '-')}"
            flag = f"{option}, --no-{option[2:]}" if isinstance(value, bool) else f"{option} {name.upper()}"
            assert flag in text, flag
            if (section, name) == ("run", "name"):
                assert "(unset: from --data" in text.rsplit(flag, 1)[1], flag  # derived, not a constant
            elif value not in (None, [], ""):
                shown = value.value if hasattr(value, "value") else value
                if isinstance(value, bool):
                    shown = "on" if value else "off"
                after = text.rsplit(flag, 1)[1].split(" --", 1)[0]  # its help, not the usage line
                assert f"(default {shown})" in after, (flag, after)
    assert "(default on)" in text.rsplit("--calibrate, --no-calibrate", 1)[1].split(" --", 1)[0]


@pytest.mark.parametrize(
    ("flags", "method", "labels", "hybrid_epochs"),
    [
        (["--method", "w2-bound", "--labels", "residuals"], "w2-bound", "residuals", 0),
        (["--method", "nll", "--hybrid-epochs", "1", "--labels", "local-linear"], "nll", "local-linear", 1),
        (["--method", "nll", "--labels", "residuals"], "nll", None, 0),
        (["--method", "hybrid", "--labels", "residuals"], "hybrid", "residuals", 1),
    ],
    ids=["bound", "bound-then-nll", "no-labels", "hybrid-half-of-the-epochs"],
)
def test_model_json_records_the_method_and_label_scheme(
    flags: list[str], method: str, labels: str | None, hybrid_epochs: int, tmp_path: Path
) -> None:
    run = ["fit", "--samples", "400", "--epochs", "2", "--neighbours", "16", *TINY, *_output_flags(tmp_path)]
    assert main([*run, *flags]) == 0
    metadata = json.loads((tmp_path / "models" / "synthetic" / "1" / "model.json").read_text())
    assert (metadata["method"], metadata["labels"], metadata["hybrid_epochs"]) == (
        method,
        labels,
        hybrid_epochs,
    )
