"""Exact and near dedup on Ray, as a partitioned shuffle (the same result as `dedup.deduplicate`).

    exact:  map (a task per range of documents) their digests, split by digest into P partitions
            reduce (one task per partition)    the ids whose digest appeared at an earlier id
    near:   map (a task per range of documents) band keys of their candidates, split by key into P
                                               partitions (a bucket lands whole in one)
            reduce (one task per partition)    per band, each member paired with the earliest
                                               of its bucket; pairs checked on the signatures
                                               (read from the scan files), returned with the
                                               verdict
            driver                             distinct pairs, clusters from the confirmed ones

Only duplicate ids and candidate pairs come back to the driver; the driver holds one status
byte per document (what the tokenize step reads) and nothing else per document. A reducer
holds 1/P of the digests or band keys (16 + 8 bytes a document; 2 + 8 + 8 a band of a
candidate), so its memory falls with P. Map outputs live in Ray's object store; a task lost with its worker or
node is run again (Ray retries it, and rebuilds lost map outputs from their lineage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import DedupSection
from .dedup import (
    EXACT,
    KEPT,
    NEAR,
    Corpus,
    bucket_pair_array,
    confirm_pairs,
    duplicate_ids,
    resolve_clusters,
    unique_pairs,
)
from .minhash import band_keys
from .scan import ScanOutput

SIGNATURE_BLOCK = 1 << 15
"""Documents whose signatures a near-dedup map task reads at a time."""
MAX_RETRIES = 3
"""Times Ray runs a task again after its worker or node died (errors in our code are not
retried: they would fail again)."""
MAP_DOCUMENTS = 1 << 16
MAP_TASKS = 1024
"""A map task takes a range of at least MAP_DOCUMENTS consecutive documents (across files),
so its memory follows that range, not the files; ranges grow past it to keep at most
MAP_TASKS maps (the driver owns maps x partitions objects)."""
PART_BYTES = 128 << 10
"""Ranges also grow until a map's output for one partition is about this size: Ray returns a
task's results under 100 KiB (`max_direct_call_object_size`) to the caller's memory instead
of the object store, so smaller parts would put the whole shuffle in the driver."""
EXACT_BYTES = 16 + 8
"""Shuffled per document by exact dedup (digest, id); near dedup: 2 + 8 + 8 per band of a
candidate (band, key, id)."""

Piece = tuple[str, int, int, int]
"""Part of a map's range in one scanned file: (directory, the file's first id, start, stop)
with start and stop within the file."""


def _split(partition: np.ndarray, partitions: int, *columns: np.ndarray) -> list[tuple]:
    """Rows of `columns` grouped by partition (the order within a partition is kept)."""
    order = np.argsort(partition, kind="stable")
    bounds = np.searchsorted(partition[order], np.arange(partitions + 1))
    return [
        tuple(column[order[lo:hi]] for column in columns)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _returns(parts: list[tuple]) -> Any:
    """A task's P returns (Ray wants a bare value when num_returns is 1)."""
    return parts[0] if len(parts) == 1 else parts


def exact_map(pieces: list[Piece], partitions: int) -> Any:
    """(digests, ids) of a range of documents, per partition of the digest."""
    digests = [np.zeros(0, dtype="S16")]
    ids = [np.zeros(0, dtype=np.int64)]
    for directory, first, start, stop in pieces:
        digests.append(ScanOutput(Path(directory)).array("exact")[start:stop])
        ids.append(first + np.arange(start, stop, dtype=np.int64))
    digest, ident = np.concatenate(digests), np.concatenate(ids)
    head = np.frombuffer(digest.tobytes(), dtype="<u8")[0::2]  # digests are uniform
    return _returns(_split(head % np.uint64(partitions), partitions, digest, ident))


def exact_reduce(*parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The ids of one partition whose digest appeared at an earlier id (maps in file order,
    so the ids are ascending)."""
    digests = np.concatenate([p[0] for p in parts])
    ids = np.concatenate([p[1] for p in parts])
    return duplicate_ids(digests, ids)


def near_map(
    pieces: list[Piece], status: np.ndarray, bands: int, rows: int, partitions: int
) -> Any:
    """(band, key, id) of every band of every candidate (kept by exact dedup, with words) of a
    range of documents (`status` covers the range), per partition of the key; ids ascending
    within each band."""
    band_parts, key_parts, id_parts = [], [], []
    offset = 0  # of the piece in `status`
    for directory, first, start, stop in pieces:
        output = ScanOutput(Path(directory))
        part = status[offset : offset + stop - start]
        offset += stop - start
        shingled = output.array("shingled")[start:stop].astype(bool)
        local = start + np.flatnonzero((part == KEPT) & shingled)
        for lo in range(0, local.size, SIGNATURE_BLOCK):
            chosen = local[lo : lo + SIGNATURE_BLOCK]
            block = output.signature_block(int(chosen[0]), int(chosen[-1]) + 1)
            signatures = block[chosen - chosen[0]]
            for band in range(bands):
                band_parts.append(np.full(chosen.size, band, dtype=np.uint16))
                key_parts.append(band_keys(signatures, band, rows))
                id_parts.append(first + chosen)
    if not band_parts:
        empty = (np.zeros(0, np.uint16), np.zeros(0, np.uint64), np.zeros(0, np.int64))
        return _returns([empty] * partitions)
    band = np.concatenate(band_parts)
    key = np.concatenate(key_parts)
    ids = np.concatenate(id_parts)
    order = np.argsort(band, kind="stable")  # by band, then (pieces, blocks in order) by id
    band, key, ids = band[order], key[order], ids[order]
    return _returns(_split(key % np.uint64(partitions), partitions, band, key, ids))


def near_reduce(
    directories: list[str], threshold: float | None, *parts: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """(distinct candidate pairs of one partition, True where the signatures confirm them)."""
    band = np.concatenate([p[0] for p in parts])
    key = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([p[2] for p in parts])
    order = np.argsort(band, kind="stable")  # maps in file order: ids ascending per band
    band, key, ids = band[order], key[order], ids[order]
    bounds = np.searchsorted(band, np.arange(int(band.max()) + 2)) if band.size else [0]
    found = [
        bucket_pair_array(key[lo:hi], ids[lo:hi])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
        if hi - lo >= 2
    ]
    pairs = unique_pairs(found)
    corpus = Corpus([("", ScanOutput(Path(d))) for d in directories])
    return pairs, confirm_pairs(pairs, corpus.signature_rows, threshold)


def deduplicate(
    ray: Any,
    files: list[tuple[str, ScanOutput]],
    settings: DedupSection,
    partitions: int,
    run: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(status of every document: KEPT, EXACT or NEAR, statistics), as `dedup.deduplicate`.

    `run(step, tasks, fetch)` waits for tasks ({ref: (documents, message)}), reporting
    progress, and returns {ref: value} (values fetched only with `fetch`)."""
    directories = [str(output.directory) for _, output in files]
    counts = [output.documents for _, output in files]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    status = np.full(int(starts[-1]), KEPT, dtype=np.uint8)
    total = int(starts[-1])
    stats: dict[str, Any] = {}
    options = {"num_returns": partitions, "max_retries": MAX_RETRIES}
    if settings.exact.enabled:
        spans = _spans(total, partitions, EXACT_BYTES)
        groups = [_pieces(directories, starts, lo, hi) for lo, hi in spans]
        mapper = ray.remote(exact_map).options(**options)
        maps = [mapper.remote(g, partitions) for g in groups]
        run("dedup exact map", _map_progress(maps, partitions, spans), fetch=False)
        reducer = ray.remote(exact_reduce).options(max_retries=MAX_RETRIES)
        reduces = {
            reducer.remote(*[_part(m, p, partitions) for m in maps]): (0, f"partition {p}")
            for p in range(partitions)
        }
        removed = 0
        for ids in run("dedup exact reduce", reduces).values():
            status[ids] = EXACT
            removed += ids.size
        stats["exact"] = {"removed": int(removed)}
    if settings.near.enabled:
        near = settings.near
        spans = _spans(total, partitions, 18 * near.bands)
        groups = [_pieces(directories, starts, lo, hi) for lo, hi in spans]
        mapper = ray.remote(near_map).options(**options)
        maps = [
            mapper.remote(g, status[lo:hi], near.bands, near.rows, partitions)
            for g, (lo, hi) in zip(groups, spans, strict=True)
        ]
        run("dedup near map", _map_progress(maps, partitions, spans), fetch=False)
        reducer = ray.remote(near_reduce).options(max_retries=MAX_RETRIES)
        reduces = {}
        for p in range(partitions):
            ref = reducer.remote(
                directories, near.threshold, *[_part(m, p, partitions) for m in maps]
            )
            reduces[ref] = (0, f"partition {p}")
        found = DistinctPairs()
        run("dedup near reduce", reduces, consume=found.add)
        removed_ids, stats["near"] = resolve_clusters(*found.result())
        status[removed_ids] = NEAR
    return status, stats


MERGE_ROWS = 1 << 16
"""DistinctPairs merges no fewer waiting rows than this (small results: one sort at the end)."""


class DistinctPairs:
    """The distinct (pair, verdict) rows of the near reducers' results, merged as they come.
    Two near copies collide in several bands, whose keys lie in different partitions, so up to
    min(P, bands) reducers report the same pair (with the same verdict): kept until the end,
    the repeats would cost the driver that many times the distinct pairs (measured: 10x at
    P=32). Merged whenever the rows waiting outnumber the distinct ones, the driver holds at
    most about twice the distinct pairs, and their sort."""

    def __init__(self):
        self.pairs = np.zeros((0, 2), dtype=np.int64)
        self.verdicts = np.zeros(0, dtype=bool)
        self.waiting: list[tuple[np.ndarray, np.ndarray]] = []
        self.rows = 0

    def add(self, result: tuple[np.ndarray, np.ndarray]) -> None:
        pairs, verdicts = result
        self.waiting.append((np.asarray(pairs).reshape(-1, 2), np.asarray(verdicts, dtype=bool)))
        self.rows += len(verdicts)
        if self.rows > max(len(self.pairs), MERGE_ROWS):
            self._merge()

    def _merge(self) -> None:
        pairs = np.concatenate([self.pairs, *(p for p, _ in self.waiting)])
        verdicts = np.concatenate([self.verdicts, *(v for _, v in self.waiting)])
        self.pairs, first = np.unique(pairs, axis=0, return_index=True)
        self.verdicts = verdicts[first]
        self.waiting, self.rows = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct pairs, ascending; True where confirmed)."""
        self._merge()
        return self.pairs, self.verdicts


def _spans(total: int, partitions: int, shuffled_bytes: int) -> list[tuple[int, int]]:
    """The ranges of document ids of the map tasks (see MAP_DOCUMENTS and PART_BYTES), for
    maps that shuffle `shuffled_bytes` per document."""
    size = max(MAP_DOCUMENTS, -(-total // MAP_TASKS), -(-partitions * PART_BYTES // shuffled_bytes))
    return [(lo, min(lo + size, total)) for lo in range(0, total, size)] or [(0, 0)]


def _pieces(directories: list[str], starts: np.ndarray, lo: int, hi: int) -> list[Piece]:
    """The parts of the files that documents [lo, hi) lie in."""
    pieces = []
    for f in range(int(np.searchsorted(starts, lo, side="right")) - 1, len(directories)):
        if starts[f] >= hi:
            break
        start, stop = max(lo, int(starts[f])), min(hi, int(starts[f + 1]))
        if stop > start:
            pieces.append(
                (directories[f], int(starts[f]), start - int(starts[f]), stop - int(starts[f]))
            )
    return pieces


def _map_progress(maps: list, partitions: int, spans: list[tuple[int, int]]) -> dict:
    """The map tasks to wait for, as `run` takes them (their first return stands for each)."""
    return {
        _part(m, 0, partitions): (hi - lo, f"documents {lo}-{hi}")
        for m, (lo, hi) in zip(maps, spans, strict=True)
    }


def _part(returns: Any, partition: int, partitions: int) -> Any:
    return returns if partitions == 1 else returns[partition]
