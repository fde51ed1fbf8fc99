"""The ``k`` nearest training rows of query rows, through a chosen index (:class:`NeighbourIndex`).

Mahalanobis neighbours of the inputs are Euclidean neighbours of the whitened inputs ``z = (x − x̄) W``
(:func:`covserve.training.pseudolabels.mahalanobis_whitening`), so any Euclidean index serves.
:func:`search` takes ``z`` ``(N, M)`` float64 and returns, for each query row, its ``k`` nearest rows and
their squared distances, ascending:

* ``exact``: every pair's distance in blocked matrix products (:func:`exact_neighbours`), the reference.
  Time ``O(N² M)``, memory ``O(chunk_elements + Q k)``.
* ``kdtree``: ``scipy.spatial.cKDTree``, exact, with ``threads`` workers. The queries are sent in the
  tree's own leaf order, so consecutive queries walk the same nodes: 2.8× faster than row order at
  N = 1 000 000, M = 8, k = 64 (80 s against 222 s on 2 cores). A k-d tree prunes well for few inputs and
  degrades towards a scan of every row as ``M`` grows.
* ``faiss``: a FAISS HNSW graph over 8-bit scalar-quantised rows (``IndexHNSWSQ``), approximate. The rows
  are laid out, and queried, cluster by cluster (k-means, :data:`LOCALITY_CLUSTERS`), so consecutive
  graph walks share memory. Its search depth ``efSearch`` grows by
  :data:`HNSW_DEPTH_GROWTH` on a tuning sample of query rows until the recall there reaches
  :data:`TARGET_RECALL`; the recall of the whole search is then measured on a separate sample of
  :data:`RECALL_SAMPLE_ROWS` rows against exact neighbours and reported, with a :class:`LowRecallWarning`
  below :data:`MIN_RECALL`. An inverted-file index (``IndexIVFFlat``) was measured first and rejected:
  on uniform inputs with M = 32 it needed 512 of its 1 264 lists (a scan of 40 % of the rows) for a recall
  of 0.99 at N = 100 000, where HNSW reaches 0.97 at ``efSearch`` 128 in a third of the time. At
  N = 1 000 000, M = 32 (uniform) and ``efSearch`` 221, the 8-bit rows and the cluster order searched in
  226 s against 362 s for float rows in row order, at the same recall (0.946 and 0.947), and built the
  graph in 55 s against 72 s.
* ``auto``: :func:`choose_index`, from the sizes: exact up to 20 000 rows, the k-d tree beyond for up to
  12 inputs, and for more inputs exact up to 100 000 rows and FAISS beyond.

The query row itself has distance 0. Every index returns it when ``include_self`` (also when duplicate rows
tie with it) and never when not; the other neighbours are the nearest other rows.

Recall is the fraction of the returned neighbours (the query itself excluded) that are no farther than the
exact ``k``-th neighbour, so a tie at the ``k``-th distance counts as found.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from covserve.training.options import NeighbourIndex, parse_neighbour_index

__all__ = [
    "AUTO_EXACT_MAX_ROWS",
    "AUTO_FAISS_MIN_ROWS",
    "AUTO_KDTREE_MAX_INPUTS",
    "DEFAULT_CHUNK_ELEMENTS",
    "DEFAULT_TILE_COLUMNS",
    "MIN_RECALL",
    "RECALL_SAMPLE_ROWS",
    "TARGET_RECALL",
    "Found",
    "LowRecallWarning",
    "NeighbourIndex",
    "SearchReport",
    "choose_index",
    "exact_neighbours",
    "faiss_available",
    "recall",
    "search",
]

DEFAULT_CHUNK_ELEMENTS = 1 << 22
"""Upper bound on the ``chunk × tile`` distance entries held at once (32 MiB in float64)."""

SELECTION_GROUP = 32
"""Columns per group in the exact grouped nearest-neighbour selection (:func:`_smallest`)."""

DEFAULT_TILE_COLUMNS = 1 << 15
"""Candidate neighbours per distance block. Bounding the tile, not only the block, keeps at least
``chunk_elements / tile_columns`` (128) query rows per matrix product however large ``N`` grows, so each
tile of keys is read once per 128 queries: at N = 1 000 000 a block of all ``N`` columns would hold only 4
query rows and re-read every key for each 4. Measured side by side on one core against whole-row blocks
(the same rows, one process): 4.0× faster at N = 1 000 000 and M = 32, 1.75× at M = 8; 1.1 to 1.2× at
N = 100 000 and 0.97 to 1.2× at N = 30 000."""

QUERY_CHUNK_ROWS = 1 << 16
"""Query rows per call of an index, so its ``(rows, k + 1)`` answers stay small (68 MiB at k = 64)."""

KDTREE_LEAF_SIZE = 16
"""Rows per k-d tree leaf (scipy's default; 32 and 128 were not faster at N = 1 000 000, M = 8)."""

AUTO_EXACT_MAX_ROWS = 20_000
"""``auto`` searches exactly up to this many rows at any M (at 10 000 rows the exact search and the k-d
tree both take 0.35 s at M = 8, the exact search 0.38 s and the k-d tree 1.7 s at M = 32)."""

AUTO_KDTREE_MAX_INPUTS = 12
"""``auto`` uses the k-d tree above :data:`AUTO_EXACT_MAX_ROWS` rows for at most this many inputs (at
N = 100 000 it takes 5.5 s against the exact search's 11.7 s at M = 8, and 285 s against 15.4 s at
M = 32)."""

AUTO_FAISS_MIN_ROWS = 100_000
"""With more inputs, ``auto`` keeps the exact search up to this many rows and uses FAISS above (at
N = 100 000 and M = 32 FAISS takes 13.2 s against the exact search's 15.4 s; the exact search grows as N²,
FAISS about as N)."""

TARGET_RECALL = 0.955
"""Recall on the tuning sample at which the FAISS search depth stops growing."""

MIN_RECALL = 0.95
"""A FAISS search whose measured recall is below this warns (:class:`LowRecallWarning`)."""

RECALL_SAMPLE_ROWS = 1000
"""Query rows whose exact neighbours measure the recall (and, separately, tune the search depth)."""

RECALL_DISTANCE_RTOL = 1e-9
"""Relative slack on the exact ``k``-th distance within which a returned neighbour counts as found."""

LOCALITY_CLUSTERS = 1024
"""k-means clusters whose order lays out the rows for the FAISS graph (at most one per
:data:`LOCALITY_ROWS_PER_CLUSTER` rows)."""

LOCALITY_ROWS_PER_CLUSTER = 64
"""Rows per cluster, at least, and the k-means training rows per centroid (FAISS warns below 39)."""

HNSW_LINKS = 32
"""Graph links per node (FAISS's ``M``): memory ``≈ 8 · 2 · HNSW_LINKS`` bytes per row besides the rows."""

HNSW_BUILD_DEPTH = 40
"""``efConstruction`` (FAISS's default): 72 s to build at N = 1 000 000, M = 32 on 2 cores."""

HNSW_INITIAL_DEPTH = 64
"""The first ``efSearch`` tried, or ``k + 1`` when larger (a walk less deep returns fewer rows)."""

HNSW_DEPTH_GROWTH = 1.25
"""Factor between successive ``efSearch`` values on the tuning sample."""

HNSW_MAX_DEPTH = 2048
"""The deepest ``efSearch`` tried; a search that still misses :data:`TARGET_RECALL` runs at this depth."""


class LowRecallWarning(UserWarning):
    """An approximate neighbour search measured a recall below :data:`MIN_RECALL`."""


@dataclass(frozen=True)
class SearchReport:
    """How a search ran: the index ``requested`` and the one ``used`` (with the ``reason``), wall
    ``seconds``, the ``recall`` measured on ``recall_rows`` sample rows (``None`` for an exact index) and
    the index's ``parameters``."""

    requested: NeighbourIndex
    used: NeighbourIndex
    reason: str
    seconds: float
    recall: float | None = None
    recall_rows: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (``report.json``, ``model.json``)."""
        return {
            "requested": self.requested.value,
            "index": self.used.value,
            "reason": self.reason,
            "seconds": self.seconds,
            "recall": self.recall,
            "recall_rows": self.recall_rows,
            "parameters": self.parameters,
        }

    def summary(self) -> str:
        """One line for the console."""
        measured = "exact" if self.recall is None else f"recall {self.recall:.4f} on {self.recall_rows} rows"
        return f"neighbour index {self.used.value} ({self.reason}); {measured}; {self.seconds:.1f} s"


@dataclass(frozen=True)
class Found:
    """The ``k`` nearest rows of ``Q`` query rows: ``squared`` ``(Q, k)`` float64 squared distances,
    ascending, ``index`` ``(Q, k)`` int64 row numbers, and the :class:`SearchReport`."""

    squared: Tensor
    index: Tensor
    report: SearchReport


def faiss_available() -> bool:
    """Whether ``faiss`` (the ``train`` extra's ``faiss-cpu``) can be imported."""
    return find_spec("faiss") is not None


def choose_index(
    requested: NeighbourIndex | str, rows: int, inputs: int, device: str
) -> tuple[NeighbourIndex, str]:
    """The index ``auto`` stands for with ``rows`` rows of ``inputs`` whitened inputs on ``device``, and why.

    From the measured table (2 cores, k = 64, ``benchmarks/results/pseudolabels.md``; the constants
    :data:`AUTO_EXACT_MAX_ROWS`, :data:`AUTO_KDTREE_MAX_INPUTS` and :data:`AUTO_FAISS_MIN_ROWS` quote it):
    the exact search grows as N², the k-d tree is exact and fast for few inputs and slows down steeply
    with M, FAISS is approximate and about linear in N at any M. On CUDA the exact search runs on the
    device (the k-d tree and FAISS here are CPU libraries).
    """
    requested = parse_neighbour_index(requested)
    if requested is not NeighbourIndex.AUTO:
        return requested, "requested"
    if device != "cpu":
        return NeighbourIndex.EXACT, f"auto: exact matrix products on {device}"
    if rows <= AUTO_EXACT_MAX_ROWS:
        return NeighbourIndex.EXACT, f"auto: N = {rows} ≤ {AUTO_EXACT_MAX_ROWS}"
    if inputs <= AUTO_KDTREE_MAX_INPUTS:
        return (
            NeighbourIndex.KDTREE,
            f"auto: N = {rows} > {AUTO_EXACT_MAX_ROWS}, M = {inputs} ≤ {AUTO_KDTREE_MAX_INPUTS}",
        )
    if rows <= AUTO_FAISS_MIN_ROWS:
        return (
            NeighbourIndex.EXACT,
            f"auto: M = {inputs} > {AUTO_KDTREE_MAX_INPUTS}, N = {rows} ≤ {AUTO_FAISS_MIN_ROWS}",
        )
    if not faiss_available():
        return (
            NeighbourIndex.EXACT,
            f"auto: M = {inputs} > {AUTO_KDTREE_MAX_INPUTS} but faiss is not installed",
        )
    return (
        NeighbourIndex.FAISS,
        f"auto: N = {rows} > {AUTO_FAISS_MIN_ROWS}, M = {inputs} > {AUTO_KDTREE_MAX_INPUTS}",
    )


def recall(squared: Tensor, exact_squared: Tensor, include_self: bool) -> float:
    """Mean fraction of the neighbours in ``squared`` ``(S, k)`` no farther than the exact ``k``-th
    neighbour of ``exact_squared`` ``(S, k)`` (both ascending; the query itself, column 0 when
    ``include_self``, is not counted)."""
    first = 1 if include_self else 0
    bound = exact_squared[:, -1:] * (1.0 + RECALL_DISTANCE_RTOL) + torch.finfo(torch.float64).tiny
    return float((squared[:, first:] <= bound).double().mean())


def search(
    whitened: Tensor,
    rows: Tensor,
    neighbours: int,
    *,
    include_self: bool = True,
    index: NeighbourIndex | str = NeighbourIndex.AUTO,
    threads: int = 1,
    seed: int = 0,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    tile_columns: int = DEFAULT_TILE_COLUMNS,
) -> Found:
    """The ``neighbours`` nearest rows of ``whitened`` ``(N, M)`` float64 for each of ``rows`` ``(Q,)``.

    ``threads`` is the k-d tree's and FAISS's worker count; ``seed`` draws the recall samples. The answer
    is on ``whitened``'s device. Raises ``ImportError`` naming the package when ``faiss`` is requested and
    not installed.
    """
    requested = parse_neighbour_index(index)
    used, reason = choose_index(
        requested, int(whitened.shape[0]), int(whitened.shape[1]), whitened.device.type
    )
    started = time.perf_counter()
    if used is NeighbourIndex.EXACT:
        squared, found = exact_neighbours(
            whitened, rows, neighbours, include_self, chunk_elements, tile_columns
        )
        return Found(squared, found, SearchReport(requested, used, reason, time.perf_counter() - started))
    if used is NeighbourIndex.KDTREE:
        found_np, parameters = _kdtree(
            whitened.cpu().numpy(), rows.cpu().numpy(), neighbours, include_self, threads
        )
        measured: float | None = None
        sample = 0
    else:
        found_np, parameters, measured, sample = _faiss(
            whitened, rows, neighbours, include_self, threads, seed, chunk_elements, tile_columns
        )
    squared, found = _exact_distances(whitened, rows, torch.from_numpy(found_np).to(whitened.device))
    report = SearchReport(
        requested, used, reason, time.perf_counter() - started, measured, sample, parameters
    )
    if measured is not None and measured < MIN_RECALL:
        warnings.warn(
            f"the {used.value} neighbour index found {measured:.3f} of the exact neighbours on {sample} "
            f"sample rows, below {MIN_RECALL}: the pseudo-labels are noisier than the exact search's "
            "(use --neighbour-index exact or kdtree)",
            LowRecallWarning,
            stacklevel=2,
        )
    return Found(squared, found, report)


def exact_neighbours(
    whitened: Tensor,
    rows: Tensor,
    neighbours: int,
    include_self: bool,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    tile_columns: int = DEFAULT_TILE_COLUMNS,
) -> tuple[Tensor, Tensor]:
    """Exact ``squared`` distances ``(Q, k)`` (ascending) and ``index`` ``(Q, k)`` of ``rows``.

    Distances are computed in blocks of ``chunk`` query rows × ``tile_columns`` candidate rows holding at
    most ``chunk_elements`` entries; the result does not depend on either.
    """
    count = whitened.shape[0]
    squared_norms = whitened.square().sum(dim=1)
    tile = min(count, tile_columns)
    if tile > SELECTION_GROUP * neighbours:
        tile -= tile % SELECTION_GROUP
    chunk = max(1, min(len(rows), chunk_elements // tile))
    keys = torch.cat([-2.0 * whitened, squared_norms[:, None]], dim=1).T.contiguous()
    queries = torch.cat([whitened, torch.ones_like(whitened[:, :1])], dim=1)
    buffer = torch.empty(chunk * tile, dtype=torch.float64, device=whitened.device)
    squared = torch.empty(len(rows), neighbours, dtype=torch.float64, device=whitened.device)
    index = torch.empty(len(rows), neighbours, dtype=torch.int64, device=whitened.device)
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk].to(whitened.device)
        ranked, nearest = _nearest(queries[block], keys, block, neighbours, include_self, buffer, tile)
        squared[start : start + len(block)] = (ranked + squared_norms[block, None]).clamp_(min=0.0)
        index[start : start + len(block)] = nearest
    return squared, index


def _nearest(
    queries: Tensor,
    keys: Tensor,
    rows: Tensor,
    neighbours: int,
    include_self: bool,
    buffer: Tensor,
    tile: int,
) -> tuple[Tensor, Tensor]:
    """The ``neighbours`` smallest ``‖zⱼ‖² − 2 zᵢ·zⱼ`` of each query, ascending, and their row indices.

    ``queries`` ``(C, M + 1)`` are ``[zᵢ, 1]`` for the rows ``rows`` ``(C,)``; ``keys`` ``(M + 1, N)`` are
    ``[−2 zⱼ; ‖zⱼ‖²]``, so one plain matrix product per ``tile`` keys, written into the reused flat
    ``buffer`` (at least ``C × tile`` entries), ranks candidates like the squared distance (``‖zᵢ‖²`` is
    constant along a row and is added to the survivors only); that is 1.5 to 4.5× faster on CPU than a
    broadcast ``addmm``. Each tile keeps its own best ``neighbours`` (:func:`_smallest`); a final selection
    over the survivors is exact.
    """
    count, chunk = keys.shape[1], queries.shape[0]
    survivors: list[tuple[Tensor, Tensor]] = []
    for first in range(0, count, tile):
        last = min(first + tile, count)
        block = buffer[: chunk * (last - first)].view(chunk, last - first)
        partial = torch.mm(queries, keys[:, first:last], out=block)
        own = ((rows >= first) & (rows < last)).nonzero().squeeze(1)
        partial[own, rows[own] - first] = -keys[-1, rows[own]] if include_self else math.inf
        ranked, index = _smallest(partial, neighbours)
        survivors.append((ranked, index + first))
    ranked = torch.cat([ranked for ranked, _ in survivors], dim=1)
    index = torch.cat([index for _, index in survivors], dim=1)
    best, position = torch.topk(ranked, neighbours, dim=1, largest=False, sorted=True)
    return best, index.gather(1, position)


def _smallest(block: Tensor, neighbours: int) -> tuple[Tensor, Tensor]:
    """The ``min(neighbours, W)`` smallest entries of each row of ``block`` ``(C, W)`` and their columns.

    Exact, and about 1.4× faster than ``topk`` over a 32 768-wide row: the row is cut into groups of
    :data:`SELECTION_GROUP` columns, and only the ``neighbours`` groups with the smallest minima can hold
    the row's ``neighbours`` smallest entries (those minima are ``neighbours`` entries no larger than any
    entry of the other groups), so ``topk`` runs over their ``neighbours × group`` entries only.
    """
    chunk, width = block.shape
    groups = width // SELECTION_GROUP
    if groups <= neighbours or width % SELECTION_GROUP:
        return torch.topk(block, min(neighbours, width), dim=1, largest=False, sorted=False)
    minima = block.view(chunk, groups, SELECTION_GROUP).amin(dim=2)
    nearest_groups = torch.topk(minima, neighbours, dim=1, largest=False, sorted=False).indices
    offsets = torch.arange(SELECTION_GROUP, device=block.device)
    columns = (nearest_groups[:, :, None] * SELECTION_GROUP + offsets).reshape(chunk, -1)
    ranked, position = torch.topk(block.gather(1, columns), neighbours, dim=1, largest=False, sorted=False)
    return ranked, columns.gather(1, position)


def _exact_distances(
    whitened: Tensor, rows: Tensor, index: Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> tuple[Tensor, Tensor]:
    """``‖zᵢ − zⱼ‖²`` in float64 for the ``(Q, k)`` candidates ``index`` of ``rows``, and ``index``
    reordered by it in place (ascending, the query itself first at distance 0). Temporaries are blocks
    of at most ``chunk_elements`` coordinates."""
    squared = torch.empty(index.shape, dtype=torch.float64, device=whitened.device)
    rows = rows.to(whitened.device)
    chunk = max(1, chunk_elements // max(1, index.shape[1] * whitened.shape[1]))
    for start in range(0, len(rows), chunk):
        block = slice(start, start + chunk)
        candidates = index[block]
        distances = (whitened[candidates] - whitened[rows[block], None, :]).square().sum(dim=2)
        is_self = candidates == rows[block, None]
        distances[is_self] = 0.0
        order = torch.argsort(torch.where(is_self, -1.0, distances), dim=1, stable=True)
        squared[block] = distances.gather(1, order)
        index[block] = candidates.gather(1, order)
    return squared, index


def _without_self(
    rows: NDArray[np.int64],
    candidates: NDArray[np.int64],
    squared: NDArray[np.floating[Any]],
    neighbours: int,
    include_self: bool,
) -> NDArray[np.int64]:
    """``(Q, k)`` row numbers from ``candidates`` ``(Q, k + 1)`` (ascending by ``squared``): the query
    itself moved out (or, when duplicates crowded it out, the farthest candidate dropped), then put first
    when ``include_self``."""
    is_self = candidates == rows[:, None]
    order = np.argsort(np.where(is_self, np.inf, squared), axis=1, kind="stable")
    others = np.take_along_axis(candidates, order, axis=1)
    if include_self:
        return np.concatenate([rows[:, None], others[:, : neighbours - 1]], axis=1)
    return others[:, :neighbours]


def _kdtree(
    points: NDArray[np.float64], rows: NDArray[np.int64], neighbours: int, include_self: bool, threads: int
) -> tuple[NDArray[np.int64], dict[str, Any]]:
    """k-d tree neighbours ``(Q, k)`` of ``rows``, queried in the tree's leaf order (module docstring)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points, leafsize=KDTREE_LEAF_SIZE)
    asked = min(neighbours + 1, len(points))
    position = np.empty(len(points), dtype=np.int64)
    position[tree.indices] = np.arange(len(points))
    order = np.argsort(position[rows], kind="stable")
    found = np.empty((len(rows), neighbours), dtype=np.int64)
    for start in range(0, len(rows), QUERY_CHUNK_ROWS):
        block = order[start : start + QUERY_CHUNK_ROWS]
        distances, candidates = tree.query(points[rows[block]], asked, workers=threads)
        found[block] = _without_self(
            rows[block], candidates.astype(np.int64), distances, neighbours, include_self
        )
    return found, {"leaf_size": KDTREE_LEAF_SIZE, "workers": threads}


def _faiss(
    whitened: Tensor,
    rows: Tensor,
    neighbours: int,
    include_self: bool,
    threads: int,
    seed: int,
    chunk_elements: int,
    tile_columns: int,
) -> tuple[NDArray[np.int64], dict[str, Any], float, int]:
    """FAISS HNSW neighbours ``(Q, k)`` of ``rows``, the index's parameters, the recall measured on a
    sample of rows and that sample's size (module docstring)."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "the faiss neighbour index needs the faiss-cpu package (pip install 'covserve[train]')"
        ) from None
    points = np.ascontiguousarray(whitened.cpu().numpy(), dtype=np.float32)
    queries = rows.cpu().numpy()
    count, dims = points.shape
    sample = min(len(queries), RECALL_SAMPLE_ROWS)
    drawn = np.random.default_rng(seed).permutation(len(queries))
    tuning = np.sort(queries[drawn[:sample]])
    measuring = np.sort(
        queries[drawn[sample : 2 * sample] if len(queries) >= 2 * sample else drawn[-sample:]]
    )

    def exact(selected: NDArray[np.int64]) -> tuple[Tensor, Tensor]:
        return exact_neighbours(
            whitened, torch.from_numpy(selected), neighbours, include_self, chunk_elements, tile_columns
        )

    def measured_recall(selected: NDArray[np.int64], found: NDArray[np.int64], reference: Tensor) -> float:
        squared, _ = _exact_distances(whitened, torch.from_numpy(selected), torch.from_numpy(found))
        return recall(squared.cpu(), reference.cpu(), include_self)

    previous_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        layout = _cluster_order(faiss, points, seed)
        position = np.empty(count, dtype=np.int64)
        position[layout] = np.arange(count)
        graph = faiss.IndexHNSWSQ(dims, faiss.ScalarQuantizer.QT_8bit, HNSW_LINKS)  # type: ignore[arg-type]  # the stubs type the kind as the class
        graph.hnsw.efConstruction = HNSW_BUILD_DEPTH
        laid_out = np.ascontiguousarray(points[layout])
        graph.train(laid_out)
        graph.add(laid_out)
        del laid_out

        def query(selected: NDArray[np.int64]) -> tuple[NDArray[np.int64], int]:
            distances, candidates = graph.search(points[selected], min(neighbours + 1, count))
            missing = (candidates < 0).any(axis=1)
            found = np.empty((len(selected), neighbours), dtype=np.int64)
            kept = ~missing
            found[kept] = _without_self(
                selected[kept], layout[candidates[kept]], distances[kept], neighbours, include_self
            )
            if missing.any():  # the graph walk returned fewer than k + 1 rows
                found[missing] = exact(selected[missing])[1].cpu().numpy()
            return found, int(missing.sum())

        exact_tuning = exact(tuning)[0]
        depth = max(HNSW_INITIAL_DEPTH, neighbours + 1)  # a shallower walk returns fewer than k + 1 rows
        while True:
            graph.hnsw.efSearch = depth
            if (
                depth >= HNSW_MAX_DEPTH
                or measured_recall(tuning, query(tuning)[0], exact_tuning) >= TARGET_RECALL
            ):
                break
            depth = min(math.ceil(depth * HNSW_DEPTH_GROWTH), HNSW_MAX_DEPTH)
        found = np.empty((len(queries), neighbours), dtype=np.int64)
        searched_exactly = 0
        in_layout = np.argsort(position[queries], kind="stable")
        for start in range(0, len(queries), QUERY_CHUNK_ROWS):
            block = in_layout[start : start + QUERY_CHUNK_ROWS]
            found[block], fallback = query(queries[block])
            searched_exactly += fallback
    finally:
        faiss.omp_set_num_threads(previous_threads)
    achieved = measured_recall(measuring, found[_positions(queries, measuring)], exact(measuring)[0])
    parameters = {
        "kind": "IndexHNSWSQ (8-bit)",
        "locality_clusters": _clusters(count),
        "links": HNSW_LINKS,
        "ef_construction": HNSW_BUILD_DEPTH,
        "ef_search": depth,
        "threads": threads,
        "rows_searched_exactly": searched_exactly,
    }
    return found, parameters, achieved, sample


def _clusters(count: int) -> int:
    return max(1, min(LOCALITY_CLUSTERS, count // LOCALITY_ROWS_PER_CLUSTER))


def _cluster_order(faiss: Any, points: NDArray[np.float32], seed: int) -> NDArray[np.int64]:
    """The rows ordered by their k-means cluster (:data:`LOCALITY_CLUSTERS`), stable within a cluster."""
    clusters = _clusters(len(points))
    if clusters == 1:
        return np.arange(len(points), dtype=np.int64)
    kmeans = faiss.Kmeans(
        points.shape[1], clusters, niter=10, seed=seed, max_points_per_centroid=LOCALITY_ROWS_PER_CLUSTER
    )
    kmeans.train(points)
    _, assignment = kmeans.index.search(points, 1)
    order: NDArray[np.int64] = np.argsort(assignment[:, 0], kind="stable").astype(np.int64)
    return order


def _positions(values: NDArray[np.int64], selected: NDArray[np.int64]) -> NDArray[np.int64]:
    """The positions in ``values`` of each of ``selected`` (all present)."""
    order = np.argsort(values, kind="stable")
    return order[np.searchsorted(values, selected, sorter=order)]
