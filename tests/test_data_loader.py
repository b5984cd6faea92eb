"""The loader pretraining reads: windows, mixture, epochs, ranks, resume, validation, errors.

Synthetic builds whose token ids are consecutive integers make every window checkable: a
window is right exactly when its ids are consecutive, and its first id names its position.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmtrain.data_pipeline.loader import TrainBatches, read_manifest, validation_batches
from llmtrain.data_pipeline.sampling import Blend, Permutation
from llmtrain.errors import StageInputError
from tests.data_support import arange_documents, write_synthetic_build

SEQ = 8


def take(batches, count: int) -> list[torch.Tensor]:
    return [next(batches) for _ in range(count)]


def window_starts(batches: list[torch.Tensor]) -> list[int]:
    return [int(row[0]) for batch in batches for row in batch]


@pytest.fixture
def one_source(tmp_path):
    # two shards whose ids continue across the boundary: 0..499 then 500..709
    shards = [arange_documents(0, 10, 50), arange_documents(500, 7, 30)]
    return write_synthetic_build(tmp_path / "one", {"a": (shards, 1.0)}, seq_len=SEQ)


@pytest.fixture
def three_sources(tmp_path):
    return write_synthetic_build(
        tmp_path / "three",
        {
            "a": ([arange_documents(0, 40, 100)], 0.5),  # 4000 tokens
            "b": ([arange_documents(10_000, 30, 100)], 0.3),  # 3000 tokens
            "c": ([arange_documents(20_000, 4, 50)], 0.2),  # 200 tokens: repeated
        },
        validation={
            "a": [arange_documents(30_000, 3, 100)],
            "b": [arange_documents(40_000, 2, 100)],
        },
        seq_len=SEQ,
    )


def source_of(first_id: int) -> str:
    return {0: "a", 1: "b", 2: "c", 3: "a", 4: "b"}[first_id // 10_000]


def test_each_epoch_reads_every_window_once_in_a_new_order(one_source):
    batches = TrainBatches(
        one_source, seq_len=SEQ, micro_batch_size=4, rank=0, world_size=1, seed=1
    )
    windows = (710 - 1) // SEQ
    assert batches.num_windows == windows == 88
    epochs = [take(batches, windows // 4) for _ in range(2)]
    for epoch in epochs:
        for batch in epoch:
            assert batch.shape == (4, SEQ + 1) and batch.dtype == torch.int64
            # consecutive ids: packed across documents and across the shard boundary
            assert (batch[:, 1:] - batch[:, :-1] == 1).all()
        starts = window_starts(epoch)
        assert sorted(starts) == [k * SEQ for k in range(windows)]
    assert window_starts(epochs[0]) != window_starts(epochs[1])
    assert window_starts(epochs[0]) != sorted(window_starts(epochs[0]))  # shuffled


def test_mixture_token_shares_match_the_weights(three_sources):
    batches = TrainBatches(three_sources, seq_len=SEQ, micro_batch_size=8, seed=3)
    drawn = take(batches, 150)
    counts = {"a": 0, "b": 0, "c": 0}
    for start in window_starts(drawn):
        counts[source_of(start)] += 1
    total = sum(counts.values())
    for name, weight in {"a": 0.5, "b": 0.3, "c": 0.2}.items():
        assert abs(counts[name] / total - weight) < 0.01
        assert batches.tokens_per_source[name] == counts[name] * SEQ
    # c holds (200 - 1) // 8 = 24 windows; 240 of them were drawn: 10 epochs, each complete
    c_starts = [s for s in window_starts(drawn) if source_of(s) == "c"]
    assert len(c_starts) == 240 and batches.epochs_per_source["c"] == 10
    for epoch in range(10):
        block = c_starts[epoch * 24 : (epoch + 1) * 24]
        assert sorted(block) == [20_000 + k * SEQ for k in range(24)]


def test_resume_continues_with_exactly_the_next_batches(three_sources):
    first = TrainBatches(three_sources, seq_len=SEQ, micro_batch_size=4, seed=7)
    take(first, 37)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    expected = take(first, 30)
    resumed = TrainBatches(three_sources, seq_len=SEQ, micro_batch_size=4, seed=7)
    resumed.load_state_dict(state)
    for want, got in zip(expected, take(resumed, 30), strict=True):
        assert torch.equal(want, got)
    assert resumed.tokens_per_source == first.tokens_per_source


def test_ranks_split_the_global_stream_without_overlap(three_sources):
    single = TrainBatches(three_sources, seq_len=SEQ, micro_batch_size=4, seed=5)
    ranks = [
        TrainBatches(three_sources, seq_len=SEQ, micro_batch_size=2, rank=r, world_size=2, seed=5)
        for r in range(2)
    ]
    rank_windows = [set(), set()]
    for _ in range(50):
        whole = next(single)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat(parts), whole)  # together: exactly the global stream
        for r, part in enumerate(parts):
            rank_windows[r].update(int(row[0]) for row in part if source_of(int(row[0])) != "c")
    # a and b are within their first epoch: no window is read by both ranks
    assert rank_windows[0] and rank_windows[1]
    assert not rank_windows[0] & rank_windows[1]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_get_disjoint_windows_covering_the_data(one_source, world_size):
    ranks = [
        TrainBatches(one_source, seq_len=SEQ, micro_batch_size=2, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    steps = ranks[0].num_windows // (2 * world_size)  # one epoch: 88 windows
    seen = [window_starts(take(r, steps)) for r in ranks]
    for starts in seen:
        assert len(starts) == len(set(starts)) == 2 * steps
    for a in range(world_size):
        for b in range(a + 1, world_size):
            assert not set(seen[a]) & set(seen[b])
    assert sorted(s for starts in seen for s in starts) == [k * SEQ for k in range(88)]


def test_state_from_another_seed_or_world_size_is_refused(three_sources):
    batches = TrainBatches(three_sources, seq_len=SEQ, micro_batch_size=4, seed=7)
    take(batches, 3)
    state = batches.state_dict()
    other = TrainBatches(three_sources, seq_len=SEQ, micro_batch_size=4, seed=8)
    with pytest.raises(StageInputError) as error:
        other.load_state_dict(state)
    assert str(error.value) == (
        "the checkpoint's data position was saved with seed 7, but the data loader now has 8; "
        "resume with the same data build, seq_len and seed, or start a new run"
    )
    wider = TrainBatches(
        three_sources, seq_len=SEQ, micro_batch_size=4, rank=0, world_size=8, seed=7
    )
    with pytest.raises(StageInputError, match="not a whole number of micro-steps of 4 x 8"):
        wider.load_state_dict(state)


def test_validation_batches_are_deterministic_and_split_across_ranks(three_sources):
    # a: 299 tokens -> 37 windows, b: 199 -> 24 windows; 61 in all
    every = list(validation_batches(three_sources, seq_len=SEQ, micro_batch_size=2))
    assert len(every) == 30  # whole micro-steps only
    again = list(validation_batches(three_sources, seq_len=SEQ, micro_batch_size=2))
    assert all(torch.equal(x, y) for x, y in zip(every, again, strict=True))
    starts = window_starts(every)
    assert len(set(starts)) == len(starts)
    assert {source_of(s) for s in starts} == {"a", "b"}
    per_rank = [
        list(
            validation_batches(
                three_sources, seq_len=SEQ, micro_batch_size=1, rank=r, world_size=2, max_batches=12
            )
        )
        for r in range(2)
    ]
    assert [len(p) for p in per_rank] == [12, 12]
    interleaved = [torch.cat([x, y]) for x, y in zip(*per_rank, strict=True)]
    assert all(torch.equal(x, y) for x, y in zip(interleaved, every[:12], strict=True))


def test_validation_smaller_than_one_micro_step_is_an_error(three_sources):
    with pytest.raises(StageInputError) as error:
        validation_batches(three_sources, seq_len=SEQ, micro_batch_size=40, world_size=2)
    assert str(error.value) == (
        f"the validation split of the data build at {three_sources} holds 61 sequences of 9 "
        "tokens (500 tokens), fewer than one micro-step over all ranks (micro_batch_size 40 x "
        "2 processes = 80); rebuild with a larger data.validation.fraction, or lower "
        "micro_batch_size or seq_len"
    )


def test_train_split_smaller_than_one_micro_step_is_an_error(one_source):
    with pytest.raises(StageInputError) as error:
        TrainBatches(one_source, seq_len=SEQ, micro_batch_size=50, world_size=2)
    assert str(error.value) == (
        f"the data build at {one_source} holds 88 training sequences of 9 tokens, fewer than "
        "one micro-step over all ranks (micro_batch_size 50 x 2 processes = 100); add data, or "
        "lower micro_batch_size or seq_len"
    )


def test_seq_len_longer_than_a_source_is_an_error(three_sources):
    with pytest.raises(StageInputError) as error:
        TrainBatches(three_sources, seq_len=256, micro_batch_size=1)
    assert str(error.value) == (
        f"source 'c' of the data build at {three_sources} has 200 training tokens, fewer than "
        "one sequence of seq_len + 1 = 257; lower seq_len, give the source more text, or drop "
        "it from data.sources and rebuild"
    )


def test_missing_or_incomplete_build_names_llmtrain_data(tmp_path, one_source):
    with pytest.raises(StageInputError) as error:
        read_manifest(tmp_path / "nowhere")
    assert str(error.value) == (
        f"no data build at {tmp_path / 'nowhere'} (manifest.json missing); run `llmtrain data "
        "RECIPE` first"
    )
    (one_source / "shards" / "a" / "train-00001.bin").unlink()
    with pytest.raises(StageInputError) as error:
        TrainBatches(one_source, seq_len=SEQ, micro_batch_size=1)
    assert str(error.value) == (
        f"the data build at {one_source} is incomplete: shard file "
        "shards/a/train-00001.bin is missing; run `llmtrain data` with its recipe again to "
        "finish it (or with --overwrite to rebuild it)"
    )


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 12_345])
def test_permutation_is_a_bijection(n):
    image = Permutation(n, (1, 2, 3))(np.arange(n))
    assert sorted(image.tolist()) == list(range(n))
    assert np.array_equal(image, Permutation(n, (1, 2, 3))(np.arange(n)))
    if n >= 64:
        assert not np.array_equal(image, Permutation(n, (1, 2, 4))(np.arange(n)))


def test_blend_keeps_every_source_within_one_window_of_its_share():
    weights = [0.5, 0.3, 0.15, 0.05]
    blend = Blend(weights)
    for total in range(1, 2001):
        blend.next_source()
        assert all(abs(c - w * total) <= 1 for c, w in zip(blend.counts, weights, strict=True))


@pytest.mark.parametrize("bad", ["/etc/hostname", "../../outside.bin", "shards/../../x.bin"])
def test_a_manifest_path_outside_the_build_is_refused(one_source, bad):
    manifest_path = one_source / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["path"] = bad
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StageInputError) as error:
        TrainBatches(one_source, seq_len=SEQ, micro_batch_size=1)
    assert str(error.value) == (
        f"{manifest_path}: shards: the path {bad!r} is not inside {one_source}; a record may "
        "only name files in its own directory (rebuild or restore the directory instead of "
        "editing it)"
    )


def test_resume_on_a_changed_build_is_refused_unless_asked_for(tmp_path, caplog):
    """Issue 18.6: the data position of a checkpoint names the training shards it was drawn
    from; a rebuilt source (same names, seq_len and seed) is refused, naming the shard, unless
    resume_on_changed_data says to continue on the new data."""
    build = tmp_path / "build"
    old = {"a": ([arange_documents(0, 20, 50), arange_documents(1_000, 20, 50)], 1.0)}
    write_synthetic_build(build, old, seq_len=SEQ)
    first = TrainBatches(build, seq_len=SEQ, micro_batch_size=4, seed=7)
    take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    assert sorted(state["shards"]) == ["shards/a/train-00000.bin", "shards/a/train-00001.bin"]
    new = {"a": ([arange_documents(0, 20, 50), arange_documents(5_000, 20, 50)], 1.0)}
    write_synthetic_build(build, new, seq_len=SEQ)
    resumed = TrainBatches(build, seq_len=SEQ, micro_batch_size=4, seed=7)
    with pytest.raises(StageInputError) as error:
        resumed.load_state_dict(state)
    message = (
        f"the data build at {build} is not the one the checkpoint was trained on (training "
        "shards changed: shards/a/train-00001.bin)"
    )
    assert str(error.value) == (
        f"{message}; resume with the build it was trained on, or set "
        "pretrain.resume_on_changed_data: true to continue on the new data"
    )
    allowed = TrainBatches(
        build, seq_len=SEQ, micro_batch_size=4, seed=7, resume_on_changed_data=True
    )
    allowed.load_state_dict(state)
    assert f"{message}; continuing on the new data" in caplog.text
    assert sum(allowed.state_dict()["windows_drawn"]) == 20  # the position is kept
    take(allowed, 1)
