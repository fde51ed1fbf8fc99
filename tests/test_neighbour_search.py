"""The neighbour indexes against a naive full-distance-matrix reference, with ties, duplicates and shares."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covserve.training import neighbour_search
from covserve.training.cli import main
from covserve.training.neighbour_search import (
    AUTO_EXACT_MAX_ROWS,
    AUTO_FAISS_MIN_ROWS,
    AUTO_KDTREE_MAX_INPUTS,
    LowRecallWarning,
    NeighbourIndex,
    choose_index,
    recall,
    search,
)
from covserve.training.pseudolabels import find_neighbourhoods
from covserve.training.synthetic import multivariate

EXACT_INDEXES = [NeighbourIndex.EXACT, NeighbourIndex.KDTREE]


def _naive(points: np.ndarray, neighbours: int, include_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances ``(N, k)`` ascending and row numbers from the full ``(N, N)`` distance matrix;
    the query first when ``include_self``, never otherwise."""
    squared = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(squared, -1.0 if include_self else np.inf)
    order = np.argsort(squared, axis=1, kind="stable")[:, :neighbours]
    distances = np.take_along_axis(squared, order, axis=1)
    return np.where(distances < 0, 0.0, distances), order


def _found(
    points: np.ndarray, neighbours: int, include_self: bool, index: NeighbourIndex
) -> tuple[np.ndarray, np.ndarray]:
    result = search(
        torch.from_numpy(points),
        torch.arange(len(points)),
        neighbours,
        include_self=include_self,
        index=index,
        threads=2,
    )
    return result.squared.numpy(), result.index.numpy()


@pytest.mark.parametrize("index", EXACT_INDEXES)
@pytest.mark.parametrize("include_self", [True, False])
def test_exact_indexes_find_the_naive_neighbour_sets(index: NeighbourIndex, include_self: bool) -> None:
    points = np.random.default_rng(1).normal(size=(700, 5))
    squared, found = _found(points, 20, include_self, index)
    reference_squared, reference = _naive(points, 20, include_self)
    assert all(set(a) == set(b) for a, b in zip(found, reference, strict=True))
    np.testing.assert_allclose(squared, reference_squared, rtol=1e-10, atol=1e-12)
    rows = np.arange(len(points))
    assert (found[:, 0] == rows).all() if include_self else (found != rows[:, None]).all()


@pytest.mark.parametrize("index", EXACT_INDEXES)
@pytest.mark.parametrize("include_self", [True, False])
def test_exact_indexes_agree_on_ties_and_duplicates(index: NeighbourIndex, include_self: bool) -> None:
    """Integer grid points (every distance is an integer, so most k-th distances tie) plus duplicated rows:
    the sorted distances equal the naive ones, the neighbours strictly inside the k-th distance are the
    same rows, and the query itself is first (or absent) however many rows duplicate it."""
    grid = np.random.default_rng(2).integers(0, 8, size=(400, 3)).astype(np.float64)
    points = np.concatenate([grid, grid[:50]])
    neighbours = 12
    squared, found = _found(points, neighbours, include_self, index)
    reference_squared, reference = _naive(points, neighbours, include_self)
    np.testing.assert_allclose(squared, reference_squared, atol=1e-9)
    for row, (mine, theirs, distances) in enumerate(zip(found, reference, reference_squared, strict=True)):
        inside = distances < distances[-1] - 0.5
        assert set(theirs[inside]) <= set(mine), f"row {row}"
        assert (row in mine) == include_self
    assert (squared[:, -1] == squared[:, -2]).mean() > 0.5, "the data should make ties at the k-th distance"


def test_the_exact_index_reproduces_the_blocked_search_of_earlier_releases() -> None:
    """``find_neighbourhoods(index="exact")`` is the same computation as before indexes were added: the same
    rows and bit-identical weights whatever the block sizes."""
    inputs = torch.from_numpy(np.random.default_rng(3).uniform(size=(900, 6)))
    one_block = find_neighbourhoods(inputs, neighbours=32, index="exact", chunk_elements=1 << 30)
    blocked = find_neighbourhoods(inputs, neighbours=32, index="exact", chunk_elements=4096, tile_columns=64)
    tree = find_neighbourhoods(inputs, neighbours=32, index="kdtree")
    assert torch.equal(one_block.index, blocked.index)
    assert torch.equal(one_block.index, tree.index)
    torch.testing.assert_close(one_block.weights, blocked.weights, rtol=0, atol=1e-15)
    torch.testing.assert_close(one_block.weights, tree.weights, rtol=0, atol=1e-12)
    assert one_block.search is not None
    assert (one_block.search.used, one_block.search.recall) == (NeighbourIndex.EXACT, None)


@pytest.mark.parametrize("index", ["exact", "kdtree", "faiss"])
def test_a_share_of_rows_equals_those_rows_of_the_whole_search(index: str) -> None:
    inputs = torch.from_numpy(np.random.default_rng(4).normal(size=(1200, 4)))
    whole = find_neighbourhoods(inputs, neighbours=16, index=index)
    share = find_neighbourhoods(inputs, neighbours=16, index=index, rows=slice(500, 900))
    assert share.index.shape == (400, 16)
    if index != "faiss":
        assert torch.equal(share.index, whole.index[500:900])
        torch.testing.assert_close(share.weights, whole.weights[500:900])
    torch.testing.assert_close(share.whitened, whole.whitened)


def test_faiss_labels_reach_their_recall_on_synthetic_data_and_report_it_truthfully() -> None:
    """On the TIC-TAC generator's inputs (M = 12, N = 6000) the FAISS neighbours are at least 95 % of the
    exact ones, and the recall the search reports from its sample is within 0.02 of the true one."""
    data = multivariate(12, 4, 6000, seed=0)
    inputs = torch.from_numpy(data.inputs)
    approximate = find_neighbourhoods(inputs, neighbours=64, index="faiss", threads=2)
    exact = find_neighbourhoods(inputs, neighbours=64, index="exact")
    true_squared = (
        (approximate.whitened[approximate.index] - approximate.whitened[:, None, :]).square().sum(dim=2)
    )
    exact_squared = (exact.whitened[exact.index] - exact.whitened[:, None, :]).square().sum(dim=2)
    true_recall = recall(true_squared.sort(dim=1).values, exact_squared.sort(dim=1).values, include_self=True)
    report = approximate.search
    assert report is not None
    assert report.recall is not None
    assert true_recall >= 0.95
    assert abs(report.recall - true_recall) < 0.02
    assert report.used is NeighbourIndex.FAISS
    assert report.parameters["ef_search"] >= 64
    assert report.recall_rows == 1000


def test_a_recall_below_the_floor_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(neighbour_search, "TARGET_RECALL", 0.0)
    monkeypatch.setattr(neighbour_search, "HNSW_INITIAL_DEPTH", 1)
    monkeypatch.setattr(neighbour_search, "HNSW_LINKS", 2)
    inputs = torch.from_numpy(np.random.default_rng(5).uniform(size=(8000, 32)))
    with pytest.warns(LowRecallWarning, match="below 0.95"):
        found = find_neighbourhoods(inputs, neighbours=64, index="faiss", threads=2)
    assert found.search is not None
    assert found.search.recall is not None
    assert found.search.recall < 0.95


@pytest.mark.parametrize(
    ("rows", "inputs", "device", "expected"),
    [
        (AUTO_EXACT_MAX_ROWS, 64, "cpu", NeighbourIndex.EXACT),
        (AUTO_EXACT_MAX_ROWS + 1, AUTO_KDTREE_MAX_INPUTS, "cpu", NeighbourIndex.KDTREE),
        (AUTO_FAISS_MIN_ROWS, AUTO_KDTREE_MAX_INPUTS + 1, "cpu", NeighbourIndex.EXACT),
        (AUTO_FAISS_MIN_ROWS + 1, AUTO_KDTREE_MAX_INPUTS + 1, "cpu", NeighbourIndex.FAISS),
        (10_000_000, 32, "cuda", NeighbourIndex.EXACT),
    ],
)
def test_auto_chooses_by_size_and_says_why(
    rows: int, inputs: int, device: str, expected: NeighbourIndex
) -> None:
    chosen, reason = choose_index("auto", rows, inputs, device)
    assert chosen is expected
    assert reason.startswith("auto: ")
    assert choose_index("kdtree", rows, inputs, device) == (NeighbourIndex.KDTREE, "requested")


def test_an_unknown_index_is_named() -> None:
    with pytest.raises(ValueError, match="neighbour index: expected one of auto, exact, kdtree, faiss"):
        find_neighbourhoods(torch.zeros(10, 2), neighbours=3, index="annoy")


def test_a_bad_neighbour_index_flag_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--neighbour-index", "annoy"])
    assert stopped.value.code == 2
    assert "argument --neighbour-index: expected one of auto, exact, kdtree, faiss, got 'annoy'" in (
        capsys.readouterr().err
    )


def test_fit_with_faiss_prints_and_records_the_recall(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "fit",
            "--data", "synthetic", "--in-dim", "3", "--out-dim", "2", "--samples", "1500",
            "--epochs", "2", "--labels", "targets", "--neighbour-index", "faiss",
            "--width", "8", "--depth", "1", "--device", "cpu", "--no-progress",
            "--repository", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "neighbour index faiss (requested); recall " in printed
    (run,) = (tmp_path / "runs").iterdir()
    report = json.loads((run / "report.json").read_text())["neighbour_search"]
    card = json.loads((tmp_path / "models" / "synthetic" / "1" / "model.json").read_text())[
        "neighbour_search"
    ]
    assert report == card
    assert report["index"] == "faiss"
    assert report["requested"] == "faiss"
    assert 0.95 <= report["recall"] <= 1.0
    assert report["recall_rows"] > 0


def test_faiss_missing_is_a_usage_error_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # what `import faiss` sees where faiss-cpu is absent
    code = main(
        [
            "fit", "--data", "synthetic", "--in-dim", "2", "--out-dim", "2", "--samples", "300",
            "--epochs", "1", "--neighbour-index", "faiss", "--device", "cpu", "--no-progress",
            "--repository", str(tmp_path / "models"), "--run-dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "covserve-train: error: --neighbour-index faiss: faiss-cpu is not installed" in error
    assert "Traceback" not in error
    assert not (tmp_path / "runs").exists(), "refused before a run folder exists"
