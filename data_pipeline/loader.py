"""What pretraining reads from a data build: packed windows, memory-mapped, never loaded whole.

    batches = TrainBatches(build_dir, seq_len=2048, micro_batch_size=8, rank=r, world_size=w,
                           seed=1234)
    for batch in batches:               # LongTensor [micro_batch_size, seq_len + 1], forever
        ...
    # document_positions=True: PackedWindows(tokens, positions) instead, positions restarting
    # at 0 at each document start (from the shards' .idx offsets) and at the window's start
    state = batches.state_dict()        # small JSON-able dict, saved with a checkpoint
    batches.load_state_dict(state)      # the next batch is the one that would have come next

    for batch in validation_batches(build_dir, seq_len=2048, micro_batch_size=8, rank=r,
                                    world_size=w, max_batches=50):
        ...

A source's training tokens (its train shards, in manifest order) are one stream; window k of
the source is tokens [k * seq_len, k * seq_len + seq_len + 1), so consecutive windows share
one token and every token is a target once per epoch. Windows run across document
boundaries (documents are separated by EOS; with `document_positions` each batch also says
where they start, for document masking). Which source the next window comes from is
decided by `Blend` with the manifest's weights (token shares match the weights to within one
window); within a source the windows of each epoch come in the order of a `Permutation`
keyed by (seed, source, epoch), so a small source repeats with a fresh order each epoch and a
large one is subsampled by how far training gets.

The global stream of windows is cut into micro-steps of micro_batch_size x world_size
windows; rank r takes windows [r * micro_batch_size, (r + 1) * micro_batch_size) of each, so
ranks never share a window and together read exactly the global stream.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from llmtrain.errors import StageInputError

from .manifest import read_manifest, shards_of
from .sampling import Blend, Permutation
from .shards import INDEX_DTYPE, dtype_from_name, open_tokens

log = logging.getLogger(__name__)

__all__ = ["PackedWindows", "TrainBatches", "read_manifest", "validation_batches"]

STATE_VERSION = 1


class PackedWindows(NamedTuple):
    """A micro-batch with its document boundaries (loaders given document_positions=True)."""

    tokens: Any
    """LongTensor [micro_batch_size, seq_len + 1], as without document positions."""
    positions: Any
    """LongTensor of the same shape: each token's position in its document, 0 at a document's
    first token and at the window's first token."""


@dataclass
class _Stream:
    """The tokens of one source and split, across its shards, cut into windows."""

    name: str
    shards: list[np.memmap]
    ends: np.ndarray  # cumulative token counts of the shards
    seq_len: int
    offsets: list[np.memmap] | None = None  # the shards' document offsets (.idx), when asked

    @property
    def tokens(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def windows(self) -> int:
        return max(0, (self.tokens - 1) // self.seq_len)

    def window(self, k: int, out: np.ndarray) -> None:
        """Write window k (seq_len + 1 tokens) into `out`."""
        start = k * self.seq_len
        stop = start + self.seq_len + 1
        shard = int(np.searchsorted(self.ends, start, side="right"))
        written = 0
        while written < len(out):
            shard_start = int(self.ends[shard - 1]) if shard else 0
            lo = start + written - shard_start
            hi = min(stop - shard_start, int(self.ends[shard]) - shard_start)
            piece = self.shards[shard][lo:hi]
            out[written : written + len(piece)] = piece
            written += len(piece)
            shard += 1

    def positions(self, k: int, out: np.ndarray) -> None:
        """Write the positions of window k's tokens in their documents into `out` (seq_len + 1
        values): counting restarts at every document start of the shards' .idx offsets and at
        the window's first token."""
        assert self.offsets is not None, "stream opened without document offsets"
        start = k * self.seq_len
        stop = start + len(out)
        starts = [np.zeros(1, dtype=np.int64)]
        shard = int(np.searchsorted(self.ends, start, side="right"))
        while shard < len(self.ends):
            shard_start = int(self.ends[shard - 1]) if shard else 0
            if shard_start >= stop:
                break
            offsets = self.offsets[shard]
            lo = int(np.searchsorted(offsets, max(start - shard_start, 0), side="right"))
            hi = int(np.searchsorted(offsets, stop - shard_start, side="left"))
            starts.append(offsets[lo:hi].astype(np.int64) + (shard_start - start))
            if shard_start > start:  # the shard's first document starts inside the window
                starts.append(np.array([shard_start - start], dtype=np.int64))
            shard += 1
        document_starts = np.unique(np.concatenate(starts))
        index = np.arange(len(out))
        out[:] = index - document_starts[np.searchsorted(document_starts, index, "right") - 1]


def _open_streams(
    build_dir: Path,
    manifest: dict[str, Any],
    split: str,
    seq_len: int,
    document_positions: bool = False,
) -> list[_Stream]:
    dtype = dtype_from_name(manifest["dtype"])
    streams = []
    for source in manifest["sources"]:
        shards = shards_of(manifest, split, source["name"])
        maps = [open_tokens(build_dir / shard["path"], dtype) for shard in shards]
        ends = np.cumsum([shard["tokens"] for shard in shards], dtype=np.int64)
        offsets = None
        if document_positions:
            offsets = [
                np.memmap(build_dir / shard["index"], dtype=INDEX_DTYPE, mode="r")
                for shard in shards
            ]
        streams.append(_Stream(source["name"], maps, ends, seq_len, offsets))
    return streams


def _batch(
    streams: list[_Stream], picks: list[tuple[int, int]], seq_len: int, document_positions: bool
) -> Any:
    """The micro-batch of (source, window) picks: a LongTensor, or PackedWindows."""
    import torch

    batch = np.empty((len(picks), seq_len + 1), dtype=np.int64)
    for row, (source, window) in enumerate(picks):
        streams[source].window(window, batch[row])
    if not document_positions:
        return torch.from_numpy(batch)
    positions = np.empty_like(batch)
    for row, (source, window) in enumerate(picks):
        streams[source].positions(window, positions[row])
    return PackedWindows(torch.from_numpy(batch), torch.from_numpy(positions))


def _check_sizes(seq_len: int, micro_batch_size: int, rank: int, world_size: int) -> None:
    if seq_len < 1 or micro_batch_size < 1:
        raise ValueError(
            f"seq_len and micro_batch_size must be positive, got {seq_len}, {micro_batch_size}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")


class TrainBatches:
    """Endless micro-batches of training windows for one data-parallel rank (see module doc)."""

    def __init__(
        self,
        build_dir: str | Path,
        *,
        seq_len: int,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        resume_on_changed_data: bool = False,
        document_positions: bool = False,
    ):
        _check_sizes(seq_len, micro_batch_size, rank, world_size)
        self.document_positions = document_positions
        """Yield PackedWindows (tokens and positions in their documents) instead of tokens."""
        self.resume_on_changed_data = resume_on_changed_data
        """load_state_dict continues on a data build whose training shards changed since the
        state was saved (instead of refusing it)."""
        self.build_dir = Path(build_dir)
        self.manifest = read_manifest(self.build_dir)
        self.seq_len = seq_len
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        streams = _open_streams(self.build_dir, self.manifest, "train", seq_len, document_positions)
        weights = [float(source["weight"]) for source in self.manifest["sources"]]
        for stream, weight in zip(streams, weights, strict=True):
            if weight > 0 and stream.windows == 0:
                raise StageInputError(
                    f"source {stream.name!r} of the data build at {self.build_dir} has "
                    f"{stream.tokens} training tokens, fewer than one sequence of seq_len + 1 = "
                    f"{seq_len + 1}; lower seq_len, give the source more text, or drop it from "
                    "data.sources and rebuild"
                )
        self._streams = streams
        self.source_names = [stream.name for stream in streams]
        self.num_windows = sum(stream.windows for stream in streams)
        """Training windows in one pass over every source (all ranks together)."""
        per_step = micro_batch_size * world_size
        if self.num_windows < per_step:
            raise StageInputError(
                f"the data build at {self.build_dir} holds {self.num_windows} training "
                f"sequences of {seq_len + 1} tokens, fewer than one micro-step over all ranks "
                f"(micro_batch_size {micro_batch_size} x {world_size} processes = {per_step}); "
                "add data, or lower micro_batch_size or seq_len"
            )
        self._blend = Blend(weights)
        self._permutations: dict[int, tuple[int, Permutation]] = {}

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        mbs = self.micro_batch_size
        picks = [self._draw() for _ in range(mbs * self.world_size)]
        mine = picks[self.rank * mbs : (self.rank + 1) * mbs]
        sources = np.array([source for source, _ in mine], dtype=np.int64)
        drawn = np.array([count for _, count in mine], dtype=np.int64)
        windows = np.empty(mbs, dtype=np.int64)
        for source in np.unique(sources):
            rows = np.flatnonzero(sources == source)
            epochs, positions = np.divmod(drawn[rows], self._streams[source].windows)
            for epoch in np.unique(epochs):
                chosen = rows[epochs == epoch]
                permutation = self._permutation(int(source), int(epoch))
                windows[chosen] = permutation(positions[epochs == epoch])
        picks = [(int(source), int(window)) for source, window in zip(sources, windows)]
        return _batch(self._streams, picks, self.seq_len, self.document_positions)

    def _draw(self) -> tuple[int, int]:
        """(source, windows drawn from it before) for the next window of the global stream."""
        source = self._blend.next_source()
        return source, self._blend.counts[source] - 1

    def _permutation(self, source: int, epoch: int) -> Permutation:
        """The window order of one epoch of one source (the latest epoch is cached)."""
        cached = self._permutations.get(source)
        if cached is None or cached[0] != epoch:
            windows = self._streams[source].windows
            cached = (epoch, Permutation(windows, (self.seed, source, epoch)))
            self._permutations[source] = cached
        return cached[1]

    # ------------------------------------------------------------------ state

    @property
    def windows_per_source(self) -> dict[str, int]:
        """Windows drawn from each source so far, over all ranks."""
        return dict(zip(self.source_names, self._blend.counts, strict=True))

    @property
    def tokens_per_source(self) -> dict[str, int]:
        """Target tokens (seq_len per window) drawn from each source so far, over all ranks."""
        return {name: count * self.seq_len for name, count in self.windows_per_source.items()}

    @property
    def epochs_per_source(self) -> dict[str, float]:
        """Passes over each source's training windows so far."""
        return {
            stream.name: count / stream.windows if stream.windows else 0.0
            for stream, count in zip(self._streams, self._blend.counts, strict=True)
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: enough to continue with exactly the next batch."""
        return {
            "version": STATE_VERSION,
            "windows_drawn": list(self._blend.counts),
            "sources": list(self.source_names),
            "seq_len": self.seq_len,
            "seed": self.seed,
            "shards": self.train_shards(),
        }

    def train_shards(self) -> dict[str, str]:
        """The build's training shards: path -> sha256 (what a resume checks)."""
        return {shard["path"]: shard["sha256"] for shard in shards_of(self.manifest, "train")}

    def check_same_shards(self, saved: dict[str, str]) -> None:
        """Refuse to continue on training shards other than those of the saved state, naming
        what changed, unless resume_on_changed_data (then a warning)."""
        now = self.train_shards()
        if saved == now:
            return
        changes = {
            "changed": [path for path in saved if path in now and saved[path] != now[path]],
            "added": [path for path in now if path not in saved],
            "removed": [path for path in saved if path not in now],
        }
        named = "; ".join(
            f"{kind}: {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}"
            for kind, paths in changes.items()
            if paths
        )
        message = (
            f"the data build at {self.build_dir} is not the one the checkpoint was trained on "
            f"(training shards {named})"
        )
        if self.resume_on_changed_data:
            log.warning("%s; continuing on the new data (pretrain.resume_on_changed_data)", message)
            return
        raise StageInputError(
            f"{message}; resume with the build it was trained on, or set "
            "pretrain.resume_on_changed_data: true to continue on the new data"
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {
            "sources": self.source_names,
            "seq_len": self.seq_len,
            "seed": self.seed,
        }
        if state.get("version") != STATE_VERSION:
            raise StageInputError(
                f"data loader state version {state.get('version')} is not {STATE_VERSION}; "
                "the checkpoint was written by another llmtrain version"
            )
        for key, value in expected.items():
            if state.get(key) != value:
                raise StageInputError(
                    f"the checkpoint's data position was saved with {key} {state.get(key)!r}, "
                    f"but the data loader now has {value!r}; resume with the same data build, "
                    "seq_len and seed, or start a new run"
                )
        if "shards" in state:  # states saved before the shards were recorded: not checked
            self.check_same_shards(state["shards"])
        counts = [int(c) for c in state["windows_drawn"]]
        if sum(counts) % (self.micro_batch_size * self.world_size):
            raise StageInputError(
                f"the checkpoint's data position ({sum(counts)} windows) is not a whole number "
                f"of micro-steps of {self.micro_batch_size} x {self.world_size} windows; resume "
                "with the micro_batch_size and number of processes it was saved with"
            )
        self._blend = Blend(self._blend.weights, counts)
        self._permutations.clear()


def validation_batches(
    build_dir: str | Path,
    *,
    seq_len: int,
    micro_batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    max_batches: int | None = None,
    document_positions: bool = False,
) -> Iterator[Any]:
    """The validation split as micro-batches for one rank: finite, the same on every call
    (PackedWindows with `document_positions`, as TrainBatches).

    Each source's validation windows are read once, in order, interleaved across sources by
    the manifest's weights (a source that runs out drops out). Only whole micro-steps over all
    ranks are served, so every rank yields the same number of batches; `max_batches` caps
    that number. Raises before yielding when the split cannot fill one micro-step.
    """
    _check_sizes(seq_len, micro_batch_size, rank, world_size)
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    streams = _open_streams(build_dir, manifest, "validation", seq_len, document_positions)
    windows = sum(stream.windows for stream in streams)
    per_step = micro_batch_size * world_size
    steps = windows // per_step
    if steps == 0:
        tokens = sum(stream.tokens for stream in streams)
        raise StageInputError(
            f"the validation split of the data build at {build_dir} holds {windows} "
            f"sequences of {seq_len + 1} tokens ({tokens} tokens), fewer than one micro-step "
            f"over all ranks (micro_batch_size {micro_batch_size} x {world_size} processes = "
            f"{per_step}); rebuild with a larger data.validation.fraction, or lower "
            "micro_batch_size or seq_len"
        )
    if max_batches is not None:
        steps = min(steps, max_batches)
    weights = [float(s["weight"]) for s in manifest["sources"]]
    return _iter_validation(
        streams, weights, steps, micro_batch_size, rank, world_size, document_positions
    )


def _validation_order(streams: list[_Stream], weights: list[float]) -> Iterator[tuple[int, int]]:
    """(source, window) of every validation window, interleaved by weight, computed lazily
    (a capped evaluation computes only what it reads)."""
    remaining = [stream.windows for stream in streams]
    drawn = [0] * len(streams)
    while any(remaining):
        live = [w if r else 0.0 for w, r in zip(weights, remaining, strict=True)]
        if sum(live) == 0:  # only zero-weight sources left: still serve their windows
            live = [1.0 if r else 0.0 for r in remaining]
        blend = Blend(live, drawn)
        while True:
            source = blend.next_source()
            yield source, blend.counts[source] - 1
            remaining[source] -= 1
            if not remaining[source]:
                break
        drawn = blend.counts


def _iter_validation(
    streams: list[_Stream],
    weights: list[float],
    steps: int,
    micro_batch_size: int,
    rank: int,
    world_size: int,
    document_positions: bool,
) -> Iterator[Any]:
    order = _validation_order(streams, weights)
    seq_len = streams[0].seq_len
    for _ in range(steps):
        step = list(itertools.islice(order, micro_batch_size * world_size))
        mine = step[rank * micro_batch_size : (rank + 1) * micro_batch_size]
        yield _batch(streams, mine, seq_len, document_positions)
