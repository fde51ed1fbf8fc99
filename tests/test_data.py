"""Tests of ``training.data`` on real files: written to ``tmp_path``, and the shared UCI data sets."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError

from covserve.training.data import (
    UCI_NAMES,
    DataConfig,
    Protocol,
    Split,
    Table,
    load_split,
    load_table,
    make_split,
)
from covserve.training.errors import UsageError
from covserve.training.synthetic import multivariate

DEFAULT_DATA_DIR: Path = DataConfig.model_fields["data_dir"].default
UCI_DIR = (Path(__file__).resolve().parents[1] / DEFAULT_DATA_DIR).resolve()
needs_uci = pytest.mark.skipif(
    not UCI_DIR.is_dir(), reason=f"the shared UCI data sets are not available at {UCI_DIR}"
)

UCI_SHAPES = {
    "abalone": (4177, 8),
    "air_quality": (6941, 15),
    "concrete": (1030, 9),
    "electrical": (10000, 13),
    "energy": (768, 10),
    "wine_red": (1599, 12),
    "wine_white": (4898, 12),
}
"""Rows and columns after cleaning. air_quality: 9,357 rows, of which 2,416 hold a -200 in a column other
than the dropped NMHC(GT) (counted independently in ``test_air_quality_drops_the_sentinel_rows``); its 15
columns are day, month, hour and 12 sensors. electrical: 14 columns less the label ``stabf``."""

TICTAC_STD = 10.0


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    """Write a plain CSV file (``\\n`` line ends, no quoting) and return its path."""
    lines = [delimiter.join(header), *(delimiter.join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def numeric_csv(path: Path, columns: list[str], rows: int, seed: int = 0) -> NDArray[np.float64]:
    """Write ``rows`` random rows (written with ``repr``, so they read back exactly); return the values."""
    values = np.random.default_rng(seed).normal(size=(rows, len(columns))) * 10.0 ** np.arange(len(columns))
    write_csv(path, columns, [[repr(float(value)) for value in row] for row in values])
    return values


def config(path: Path | str, **options: Any) -> DataConfig:
    """A configuration reading ``path``."""
    return DataConfig(data=str(path), **options)


# --- files --------------------------------------------------------------------------------------------------


def test_csv_round_trip_keeps_values_exactly_and_names_in_order(tmp_path: Path) -> None:
    values = numeric_csv(tmp_path / "data.csv", ["a", "b", "c", "d", "e"], rows=30)
    table, description = load_table(config(tmp_path / "data.csv", inputs=["c", "a"], targets=["e", "b"]))
    assert table.input_names == ("c", "a")
    assert table.target_names == ("e", "b")
    np.testing.assert_array_equal(table.inputs, values[:, [2, 0]])
    np.testing.assert_array_equal(table.targets, values[:, [4, 1]])
    assert table.inputs.dtype == np.float64
    assert table.true_mean is None
    assert table.true_covariance is None
    assert len(table) == 30
    assert "read 30 rows and 5 columns" in description
    assert "no rows dropped" in description


def test_inputs_default_to_every_column_that_is_not_a_target_or_excluded(tmp_path: Path) -> None:
    values = numeric_csv(tmp_path / "data.csv", ["a", "b", "c", "d"], rows=12)
    table, _ = load_table(config(tmp_path / "data.csv", targets=["c"], exclude=["a"]))
    assert table.input_names == ("b", "d")
    assert table.target_names == ("c",)
    assert table.targets.shape == (12, 1)
    np.testing.assert_array_equal(table.inputs, values[:, [1, 3]])


def test_semicolon_csv_is_sniffed(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "semi.csv", ["x", "y", "z"], [[str(i), f"{i}.5", str(-i)] for i in range(12)], ";"
    )
    table, description = load_table(config(path, targets=["z"]))
    np.testing.assert_array_equal(table.inputs[:, 1], np.arange(12) + 0.5)
    np.testing.assert_array_equal(table.targets[:, 0], -np.arange(12.0))
    assert "delimiter ';'" in description


def test_tab_separated_file_is_sniffed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.tsv", ["x", "y"], [[str(i), str(2 * i)] for i in range(10)], "\t")
    table, _ = load_table(config(path, targets=["y"]))
    np.testing.assert_array_equal(table.targets[:, 0], 2.0 * np.arange(10))


def test_bom_crlf_quoted_header_padding_and_blank_rows(tmp_path: Path) -> None:
    rows = [f"{i}.0 , {2 * i} ,{i % 3}" for i in range(10)]
    text = '"first col","second, with comma" ,"y"\r\n' + "\r\n".join(rows[:5]) + "\r\n\r\n,,\r\n"
    text += "\r\n".join(rows[5:]) + "\r\n , ,\r\n,,"
    path = tmp_path / "messy.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    table, description = load_table(config(path, targets=["y"]))
    assert table.input_names == ("first col", "second, with comma")
    np.testing.assert_array_equal(table.inputs, np.column_stack([np.arange(10.0), 2.0 * np.arange(10)]))
    np.testing.assert_array_equal(table.targets[:, 0], np.arange(10) % 3)
    assert "skipped 4 blank rows" in description


def test_parquet_round_trip_with_text_and_nullable_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "label": [f"row {i}" for i in range(15)],
            "u": rng.normal(size=15),
            "flag": [i % 2 == 0 for i in range(15)],
            "count": pd.array([*range(14), None], dtype="Int64"),
            "y": rng.normal(size=15),
        }
    )
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    table, description = load_table(config(path, targets=["y"], exclude=["label"]))
    assert table.input_names == ("u", "flag", "count")
    np.testing.assert_array_equal(table.inputs[:, 0], frame["u"].to_numpy()[:14])
    np.testing.assert_array_equal(table.inputs[:, 1], np.arange(14) % 2 == 0)
    np.testing.assert_array_equal(table.inputs[:, 2], np.arange(14.0))
    np.testing.assert_array_equal(table.targets[:, 0], frame["y"].to_numpy()[:14])
    assert "dropped 1 of 15 rows" in description


def test_ranges_are_inclusive_and_in_file_order(tmp_path: Path) -> None:
    values = numeric_csv(tmp_path / "data.csv", ["a", "b", "c", "d", "e", "f"], rows=10)
    table, _ = load_table(config(tmp_path / "data.csv", inputs=["a:c"], targets=["d : e"]))
    assert table.input_names == ("a", "b", "c")
    assert table.target_names == ("d", "e")
    np.testing.assert_array_equal(table.inputs, values[:, :3])
    np.testing.assert_array_equal(table.targets, values[:, 3:5])


def test_a_name_containing_a_colon_is_a_name_first(tmp_path: Path) -> None:
    numeric_csv(tmp_path / "data.csv", ["t:0", "t", "0", "y"], rows=10)
    table, _ = load_table(config(tmp_path / "data.csv", inputs=["t:0"], targets=["y"]))
    assert table.input_names == ("t:0",)
    table, _ = load_table(config(tmp_path / "data.csv", inputs=["t:0:0"], targets=["y"]))
    assert table.input_names == ("t:0", "t", "0")


def test_an_ambiguous_range_is_an_error(tmp_path: Path) -> None:
    numeric_csv(tmp_path / "data.csv", ["a", "a:b", "b:c", "c"], rows=10)
    with pytest.raises(
        UsageError, match=r"--targets: the range 'a:b:c' of .* is ambiguous: 'a' to 'b:c' or 'a:b'"
    ):
        load_table(config(tmp_path / "data.csv", targets=["a:b:c"]))


def test_a_single_target_column_is_valid(tmp_path: Path) -> None:
    numeric_csv(tmp_path / "data.csv", ["a", "b", "y"], rows=20)
    split = load_split(config(tmp_path / "data.csv", targets=["y"]))
    assert split.train.targets.shape == (16, 1)


# --- missing values -----------------------------------------------------------------------------------------


def test_sentinel_empty_and_nan_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [[str(i), str(i * 2), str(i % 5)] for i in range(20)]
    rows[1][0] = "-999"
    rows[4][2] = ""
    rows[7][1] = "nan"
    rows[9][1] = "NA"
    rows[11][0] = "-999"
    rows[11][2] = "inf"
    path = write_csv(tmp_path / "gaps.csv", ["a", "b", "y"], rows)
    table, description = load_table(config(path, targets=["y"], missing_value=-999))
    assert len(table) == 15
    assert (
        "dropped 5 of 20 rows with a missing value "
        "(empty, 'n/a', 'na', 'nan', 'none', 'null', infinite, -999)" in description
    )
    np.testing.assert_array_equal(table.inputs[:, 0], [0, 2, 3, 5, 6, 8, 10, 12, 13, 14, 15, 16, 17, 18, 19])
    assert np.isfinite(table.inputs).all()


def test_missing_values_in_unselected_columns_keep_the_row(tmp_path: Path) -> None:
    rows = [[str(i), str(i), "" if i % 2 else "x"] for i in range(12)]
    path = write_csv(tmp_path / "data.csv", ["a", "y", "note"], rows)
    table, description = load_table(config(path, inputs=["a"], targets=["y"]))
    assert len(table) == 12
    assert "no rows dropped" in description


# --- user errors --------------------------------------------------------------------------------------------


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """Columns a, b, c, y (12 numeric rows) and a text column ``kind``."""
    rows = [[str(i), str(i + 1), str(i + 2), str(i % 4), "even" if i % 2 == 0 else "odd"] for i in range(12)]
    return write_csv(tmp_path / "small.csv", ["a", "b", "c", "y", "kind"], rows)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"no target columns given for .*small\.csv: pass --targets .*'a', 'b', 'c', 'y', 'kind'"),
        ({"targets": ["z"]}, r"--targets: 'z' is not a column of .*small\.csv.*available columns: 'a', 'b'"),
        ({"targets": ["y"], "inputs": ["a", "q:c"]}, r"--inputs: 'q:c' is not a column .*available columns"),
        (
            {"targets": ["y"], "inputs": ["a", "b", "a"], "exclude": ["kind"]},
            r"--inputs names column 'a' .* twice",
        ),
        ({"targets": ["y"], "inputs": ["a:c", "b"]}, r"--inputs names column 'b' .* twice"),
        (
            {"targets": ["y", "a"], "inputs": ["a", "b"]},
            r"columns \['a'\] of .* in both --inputs and --targets",
        ),
        ({"targets": ["y"], "inputs": ["c:a"]}, r"--inputs range 'c:a' runs backwards"),
        (
            {"targets": ["y"]},
            r"columns of .*small\.csv are not numeric: 'kind': 12 cells such as 'even', 'odd' "
            r"\(data rows 1, 2, 3, …\)\. Drop the inputs with --exclude kind, or mark missing values",
        ),
        (
            {"targets": ["kind"], "inputs": ["a"]},
            r"not numeric: 'kind': 12 cells .*\. Choose --targets without 'kind', or mark missing values",
        ),
        (
            {"targets": ["y"], "inputs": ["a", "kind"], "exclude": ["kind"]},
            r"--inputs selects \['kind'\].*--exclude",
        ),
        ({"targets": ["y"], "exclude": ["a:c", "kind"]}, r"no input columns remain in .*small\.csv"),
        ({"targets": ["y"], "exclude": ["nope"]}, r"--exclude: 'nope' is not a column"),
        (
            {"targets": ["y"], "exclude": ["kind"], "missing_value": 3},
            r"only 7 rows of .*small\.csv remain after dropping 5 of 12 .*need at least 10",
        ),
        (
            {"targets": ["y"], "exclude": ["kind"], "validation_fraction": 0.2, "test_fraction": 0.05},
            r"leaves 1 test rows.*--test-fraction",
        ),
    ],
)
def test_bad_column_choices_name_the_flag_and_column(
    small_csv: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        load_split(config(small_csv, **options))


def test_unknown_extension_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "data.xlsx"
    path.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"--data .*data\.xlsx: unknown file type '\.xlsx'"):
        load_table(config(path, targets=["b"]))


def test_misspelt_builtin_is_an_unknown_file_type() -> None:
    with pytest.raises(UsageError, match=r"--data synthtic: unknown file type ''.*'synthetic', 'sinusoid'"):
        load_table(config("synthtic"))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"data file .*absent\.csv does not exist \(check --data\)"):
        load_table(config(tmp_path / "absent.csv", targets=["y"]))


def test_folder_instead_of_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(UsageError, match=r"data file .*folder\.csv is not a regular file"):
        load_table(config(tmp_path / "folder.csv", targets=["y"]))


def test_undecodable_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,b\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"cannot read data file .*latin1\.csv"):
        load_table(config(path, targets=["b"]))


def test_corrupt_parquet_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(UsageError, match=r"cannot read parquet file .*broken\.parquet"):
        load_table(config(path, targets=["y"]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"data file .*bad\.csv is empty"),
        ("\n,,\n \n", r"data file .*bad\.csv is empty"),
        ("a,b,a\n1,2,3\n", r"data file .*bad\.csv has two columns named 'a'"),
        ("a,b\n1,2\n3,4,5\n", r"data file .*bad\.csv, line 3: 3 fields, but the header has 2"),
        ("a,b\n1,2\n", r"only 1 rows of .*bad\.csv remain after dropping 0 of 1.*at least 10"),
    ],
)
def test_malformed_csv_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        load_table(config(path, targets=["b"]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"in_dim": 0}, "--in-dim must be >= 1, got 0"),
        ({"out_dim": -2}, "--out-dim must be >= 1, got -2"),
        ({"samples": 5}, "--samples must be >= 10, got 5"),
        ({"validation_fraction": 1.0}, r"--validation-fraction must be in \[0, 1\), got 1.0"),
        ({"test_fraction": -0.1}, r"--test-fraction must be in \[0, 1\), got -0.1"),
        (
            {"validation_fraction": 0.5, "test_fraction": 0.5},
            r"--validation-fraction \+ --test-fraction must be < 1",
        ),
        ({"seed": -1}, "--seed must be >= 0, got -1"),
        ({"missing_value": float("nan")}, "--missing-value must be a finite number"),
        ({"data": "  "}, "--data must name a data set or a file"),
        ({"inputs": []}, "--inputs must name at least one column"),
        ({"targets": ["a", " "]}, "--targets contains an empty column name"),
    ],
)
def test_invalid_options_name_the_flag(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as raised:
        DataConfig(**options)
    assert raised.value.errors()[0]["msg"].startswith("--")


def test_unknown_options_are_rejected() -> None:
    with pytest.raises(ValidationError, match="colour"):
        DataConfig(colour="red")  # type: ignore[call-arg]


@pytest.mark.parametrize("option", [{"targets": ["y0"]}, {"exclude": ["x0"]}, {"missing_value": -1.0}])
def test_column_options_do_not_apply_to_builtins(option: dict[str, Any]) -> None:
    flag = "--" + next(iter(option)).replace("_", "-")
    with pytest.raises(
        UsageError, match=f"{flag} apply only to files and uci: data sets, not to the built-in"
    ):
        load_table(DataConfig(data="synthetic", **option))


# --- splits -------------------------------------------------------------------------------------------------


@pytest.fixture
def numbered_csv(tmp_path: Path) -> Path:
    """1,000 rows whose column ``id`` is the row number, and 11 other numeric columns."""
    values = np.random.default_rng(3).normal(size=(1000, 12))
    values[:, 0] = np.arange(1000)
    columns = ["id", *(f"v{i}" for i in range(11))]
    return write_csv(tmp_path / "numbered.csv", columns, [[repr(float(v)) for v in row] for row in values])


def ids(table: Table) -> NDArray[np.float64]:
    """The ``id`` column of a table whose first input is ``id``."""
    assert table.input_names[0] == "id"
    return table.inputs[:, 0]


def test_holdout_is_80_10_10_disjoint_and_covers_every_row(numbered_csv: Path) -> None:
    split = load_split(config(numbered_csv, targets=["v9:v10"]))
    assert split.sizes() == {"train": 800, "validation": 100, "test": 100}
    parts = [ids(split.train), ids(split.validation), ids(split.test)]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000.0))
    assert "protocol holdout" in split.description
    assert "train 800 (80%), validation 100 (10%), test 100 (10%)" in split.description
    assert "read 1000 rows and 12 columns" in split.description


def test_holdout_keeps_rows_whole(numbered_csv: Path) -> None:
    table, _ = load_table(config(numbered_csv, targets=["v9:v10"]))
    split = make_split(table, config(numbered_csv, targets=["v9:v10"]))
    rows = ids(split.test).astype(np.int64)
    np.testing.assert_array_equal(split.test.inputs, table.inputs[rows])
    np.testing.assert_array_equal(split.test.targets, table.targets[rows])


def test_holdout_is_deterministic_by_seed(numbered_csv: Path) -> None:
    first = load_split(config(numbered_csv, targets=["v10"], seed=7))
    again = load_split(config(numbered_csv, targets=["v10"], seed=7))
    other = load_split(config(numbered_csv, targets=["v10"], seed=8))
    np.testing.assert_array_equal(ids(first.test), ids(again.test))
    assert not np.array_equal(ids(first.test), ids(other.test))


def test_holdout_fractions_are_honoured_and_zero_means_empty(numbered_csv: Path) -> None:
    split = load_split(config(numbered_csv, targets=["v10"], validation_fraction=0.25, test_fraction=0.0))
    assert split.sizes() == {"train": 750, "validation": 250, "test": 0}
    assert split.test.inputs.shape == (0, 11)


def tictac(path: Path, seed: int) -> Split:
    """The TIC-TAC split of ``numbered.csv`` (12 columns, the last 9 given as targets)."""
    return load_split(config(path, targets=["v2:v10"], protocol=Protocol.TICTAC, seed=seed))


def test_tictac_scales_permutes_and_uses_every_row(numbered_csv: Path) -> None:
    split = tictac(numbered_csv, seed=0)
    assert split.sizes() == {"train": 1000, "validation": 1000, "test": 1000}
    assert split.train is split.validation is split.test
    table = split.train
    assert table.inputs.shape == (1000, 3)
    assert table.targets.shape == (1000, 9)
    columns = np.hstack([table.inputs, table.targets])
    np.testing.assert_allclose(columns.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(columns.std(axis=0), TICTAC_STD, rtol=1e-12)
    names = table.input_names + table.target_names
    assert sorted(names) == sorted(["id", *(f"v{i}" for i in range(11))])
    original, _ = load_table(config(numbered_csv, targets=["v2:v10"]))
    position = (original.input_names + original.target_names).index(names[0])
    source = np.hstack([original.inputs, original.targets])[:, position]
    np.testing.assert_allclose(table.inputs[:, 0], TICTAC_STD * (source - source.mean()) / source.std())
    assert "protocol tictac" in split.description
    assert "train, validation and test are all 1000 rows" in split.description


def test_tictac_is_deterministic_and_seeds_give_different_permutations(numbered_csv: Path) -> None:
    first, again, other = tictac(numbered_csv, 0), tictac(numbered_csv, 0), tictac(numbered_csv, 1)
    assert first.train.input_names == again.train.input_names
    assert first.train.target_names == again.train.target_names
    np.testing.assert_array_equal(first.train.targets, again.train.targets)
    assert (
        first.train.input_names + first.train.target_names
        != other.train.input_names + other.train.target_names
    )


def test_tictac_turns_a_constant_column_into_zeros(tmp_path: Path) -> None:
    rows = [[str(i), "3.0", str(i * i), str(-i)] for i in range(12)]
    path = write_csv(tmp_path / "flat.csv", ["a", "flat", "b", "y"], rows)
    split = load_split(config(path, targets=["b", "y"], protocol="tictac"))
    columns = dict(
        zip(
            split.train.input_names + split.train.target_names,
            np.hstack([split.train.inputs, split.train.targets]).T,
            strict=True,
        )
    )
    np.testing.assert_array_equal(columns["flat"], 0.0)
    assert "constant columns (std at most 1e-09 of their largest value) became 0: flat" in split.description


def test_tictac_names_a_column_of_one_value_whose_float_std_is_not_zero(tmp_path: Path) -> None:
    """0.1 repeated has a float64 standard deviation of about 1e-17, not 0: still constant, still named."""
    rows = [[str(i), "0.1", str(i * i), str(-i)] for i in range(13)]
    assert np.std(np.full(13, 0.1)) > 0.0
    path = write_csv(tmp_path / "flat.csv", ["a", "flat", "b", "y"], rows)
    split = load_split(config(path, targets=["b", "y"], protocol="tictac"))
    names = split.train.input_names + split.train.target_names
    flat = np.hstack([split.train.inputs, split.train.targets])[:, names.index("flat")]
    np.testing.assert_array_equal(flat, 0.0)
    assert "became 0: flat" in split.description


def test_a_mixed_column_names_both_fixes_and_a_blank_header_is_named(tmp_path: Path) -> None:
    rows = [[str(i), str(i % 3), "bad" if i in (2, 5) else str(i), str(i)] for i in range(12)]
    path = write_csv(tmp_path / "mixed.csv", ["a", "", "t", "y"], rows)
    with pytest.raises(UsageError) as error:
        load_split(config(path, inputs=["a", "c1"], targets=["t", "y"]))
    assert "'t': 2 cells such as 'bad' (data rows 3, 6)" in str(error.value)
    assert "--exclude" not in str(error.value)
    _, description = load_table(config(path, inputs=["a", "c1"], targets=["y"], exclude=["t"]))
    assert "1 column(s) with a blank header, named by position: c1" in description


def test_linearly_dependent_targets_are_named_in_the_description(tmp_path: Path) -> None:
    """``c = a − 2 b`` exactly (as electrical's ``p1 = −(p2 + p3 + p4)``): the split names a, b and c and the
    rank (3 of the 4 varying targets), not the constant or the independent target; without c, no warning."""
    rng = np.random.default_rng(0)
    x, a, b, d = rng.normal(size=(4, 40))
    rows = [[repr(float(v)) for v in (x[i], a[i], b[i], a[i] - 2.0 * b[i], 5.0, d[i])] for i in range(40)]
    path = write_csv(tmp_path / "dependent.csv", ["x", "a", "b", "c", "flat", "d"], rows)

    split = load_split(config(path, inputs=["x"], targets=["a", "b", "c", "flat", "d"]))

    warnings = [line for line in split.description.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, split.description
    assert warnings[0].startswith(
        "warning: the training targets a, b, c are linearly dependent (rank 3 of 4)"
    )
    independent = load_split(config(path, inputs=["x"], targets=["a", "b", "flat", "d"]))
    assert "warning" not in independent.description


# --- built-in data sets -------------------------------------------------------------------------------------


def test_synthetic_truth_stays_aligned_after_splitting() -> None:
    data = multivariate(3, 2, 200, seed=5)
    split = load_split(DataConfig(data="synthetic", in_dim=3, out_dim=2, samples=200, seed=5))
    assert split.sizes() == {"train": 160, "validation": 20, "test": 20}
    row_of = {tuple(row): index for index, row in enumerate(data.inputs)}
    for part in (split.train, split.validation, split.test):
        rows = np.array([row_of[tuple(row)] for row in part.inputs])
        assert part.true_mean is not None
        assert part.true_covariance is not None
        np.testing.assert_array_equal(part.targets, data.targets[rows])
        np.testing.assert_array_equal(part.true_mean, data.mean[rows])
        np.testing.assert_array_equal(part.true_covariance, data.covariance[rows])
    assert split.train.input_names == ("x0", "x1", "x2")
    assert split.train.target_names == ("y0", "y1")
    assert "multivariate(in_dim=3, out_dim=2, samples=200, seed=5)" in split.description


def test_sinusoid_is_one_input_one_target_with_truth() -> None:
    table, description = load_table(DataConfig(data="sinusoid", samples=50, seed=2))
    assert table.inputs.shape == (50, 1)
    assert table.targets.shape == (50, 1)
    assert table.true_covariance is not None
    assert table.true_covariance.shape == (50, 1, 1)
    assert (table.input_names, table.target_names) == (("x0",), ("y0",))
    assert "sinusoid(samples=50" in description


def test_tictac_drops_the_truth_of_synthetic_data() -> None:
    split = load_split(DataConfig(data="synthetic", samples=100, protocol=Protocol.TICTAC))
    assert split.train.true_mean is None
    assert split.train.inputs.shape == (100, 2)
    assert "true mean and covariance are dropped" in split.description


def test_table_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="inputs have 3 rows but targets have 2"):
        Table(np.zeros((3, 1)), np.zeros((2, 1)), ("x",), ("y",))
    with pytest.raises(ValueError, match="true_covariance must have shape"):
        Table(np.zeros((2, 1)), np.zeros((2, 2)), ("x",), ("y", "z"), true_covariance=np.zeros((2, 2, 1)))


# --- UCI ----------------------------------------------------------------------------------------------------


def uci(name: str, **options: Any) -> DataConfig:
    """A configuration reading ``uci:<name>`` from the shared folder."""
    return DataConfig(data=f"uci:{name}", data_dir=UCI_DIR, **options)


@functools.cache
def uci_table(name: str) -> tuple[Table, str]:
    """``load_table`` of ``uci:<name>`` with the defaults, read once per test session."""
    return load_table(uci(name))


@needs_uci
@pytest.mark.parametrize("name", UCI_NAMES)
def test_uci_data_sets_load_finite_with_the_expected_sizes(name: str) -> None:
    rows, columns = UCI_SHAPES[name]
    table, description = uci_table(name)
    inputs = max(1, int(0.25 * columns))
    assert table.inputs.shape == (rows, inputs)
    assert table.targets.shape == (rows, columns - inputs)
    assert np.isfinite(table.inputs).all()
    assert np.isfinite(table.targets).all()
    assert f"uci:{name}" in description


def test_uci_names_are_the_seven_data_sets() -> None:
    assert set(UCI_NAMES) == set(UCI_SHAPES)


@needs_uci
def test_air_quality_drops_the_sentinel_rows() -> None:
    raw = pd.read_csv(UCI_DIR / "air_quality.csv").drop(columns=["NMHC(GT)"])
    with_sentinel = int((raw == -200).any(axis=1).sum())
    assert (len(raw), with_sentinel) == (9357, 2416)
    table, description = uci_table("air_quality")
    assert len(table) == len(raw) - with_sentinel == UCI_SHAPES["air_quality"][0]
    assert f"dropped {with_sentinel} of {len(raw)} rows" in description
    assert table.input_names == ("day", "month", "hour")
    assert "NMHC(GT)" not in table.target_names
    assert not (table.targets == -200).any()
    assert set(np.unique(table.inputs[:, 2])) <= set(range(24))
    assert table.inputs[:, 0].min() >= 1
    assert table.inputs[:, 1].max() <= 12


@needs_uci
def test_electrical_drops_the_label_and_abalone_is_named_by_position() -> None:
    electrical, description = uci_table("electrical")
    names = electrical.input_names + electrical.target_names
    assert len(names) == 13
    assert "stabf" not in names
    assert "stab" in names
    assert "dropped column(s) stabf" in description
    abalone, _ = uci_table("abalone")
    assert abalone.input_names + abalone.target_names == tuple(f"c{i}" for i in range(8))


@needs_uci
def test_energy_skips_the_blank_rows() -> None:
    table, description = load_table(uci("energy", targets=["Y1", "Y2"]))
    assert table.input_names == tuple(f"X{i}" for i in range(1, 9))
    assert len(table) == 768
    assert "skipped 528 blank rows" in description


@needs_uci
def test_uci_with_inputs_only_makes_every_other_column_a_target() -> None:
    table, _ = load_table(uci("wine_red", inputs=["alcohol"], exclude=["quality"]))
    assert table.input_names == ("alcohol",)
    assert len(table.target_names) == 10


@needs_uci
def test_uci_tictac_matches_the_paper_column_counts() -> None:
    split = load_split(uci("concrete", protocol=Protocol.TICTAC, seed=3))
    assert split.sizes() == {"train": 1030, "validation": 1030, "test": 1030}
    assert split.train.inputs.shape == (1030, 2)
    np.testing.assert_allclose(split.train.targets.std(axis=0), TICTAC_STD, rtol=1e-12)


def test_unknown_uci_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"unknown UCI data set 'iris' in --data; valid names: uci:abalone, "
    ):
        load_table(DataConfig(data="uci:iris", data_dir=tmp_path))


def test_missing_data_dir_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--data-dir .*nowhere is not a folder.*energy\.csv"):
        load_table(DataConfig(data="uci:energy", data_dir=tmp_path / "nowhere"))


def test_missing_uci_file_names_the_path_and_flag(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=re.escape(f"{tmp_path / 'energy.csv'} not found: --data-dir {tmp_path}")
    ):
        load_table(DataConfig(data="uci:energy", data_dir=tmp_path))


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("y", [1e20 * (i % 3) for i in range(40)], "target column 'y' has a standard deviation of"),
        (
            "y",
            [1e300 * (i % 3) for i in range(40)],
            "target column 'y' holds values up to 2e+300, beyond 1e+30",
        ),
        ("a", [1e300 * (i % 3) for i in range(40)], "input column 'a' holds values up to 2e+300"),
        ("a", [1e-13 * (i % 3) for i in range(40)], "input column 'a' varies by a standard deviation of"),
    ],
)
def test_columns_float32_cannot_carry_are_named_with_a_rescaling_hint(
    tmp_path: Path, column: str, values: list[float], message: str
) -> None:
    table = {"a": [float(i) for i in range(40)], "b": [float(i % 7) for i in range(40)]}
    table["y"] = [float(i % 5) for i in range(40)]
    table[column] = values
    rows = [[repr(table[name][i]) for name in ("a", "b", "y")] for i in range(40)]
    path = write_csv(tmp_path / "extreme.csv", ["a", "b", "y"], rows)
    with pytest.raises(UsageError, match=re.escape(message)) as refused:
        load_split(config(path, targets=["y"]))
    assert "rescale" in str(refused.value)
