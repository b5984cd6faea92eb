"""Hashing, MinHash near-dedup, clustering and tokenization details."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from llmtrain.data_pipeline.hashing import Words, exact_hash, ngram_hashes, words_of
from llmtrain.data_pipeline.loader import TrainBatches
from llmtrain.data_pipeline.minhash import (
    MinHasher,
    bucket_pairs,
    cluster_stats,
    connected_components,
    similarity,
)
from llmtrain.data_pipeline.shards import token_dtype
from llmtrain.data_pipeline.tokenize import DocumentEncoder, load_tokenizer
from tests.data_support import arange_documents, english_documents, write_synthetic_build


def test_word_hashes_ignore_case_and_punctuation_and_are_the_same_in_every_process():
    a, _ = words_of("Hello, World! naïve 日本語 x_y")
    b, _ = words_of("hello world naïve 日本語 x_y")
    assert np.array_equal(a, b) and a.size == 5
    code = "from llmtrain.data_pipeline.hashing import words_of; print(words_of('hello')[0][0])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == int(a[0])  # no per-process salt: builds are reproducible
    assert exact_hash("A  b\nC ") == exact_hash("a b c") != exact_hash("a b d")


def test_batched_words_match_one_document_at_a_time():
    texts = ["The river, the stone.", "", "short", "naïve café and 日本語", "a b c d e f g"]
    batch = Words(texts)
    for n in (1, 3, 5):
        grams, offsets = batch.ngrams(n)
        for index, text in enumerate(texts):
            alone = ngram_hashes(words_of(text)[0], n)
            assert np.array_equal(grams[offsets[index] : offsets[index + 1]], alone)


def jaccard_pair(rng, words: int, keep: float) -> tuple[str, str, float]:
    """Two documents whose 5-gram sets have a known Jaccard similarity (computed exactly)."""
    vocabulary = [f"w{i}" for i in range(5000)]
    base = [vocabulary[i] for i in rng.integers(0, 5000, words)]
    other = [w if rng.random() < keep else vocabulary[int(rng.integers(0, 5000))] for w in base]
    sets = [{tuple(doc[i : i + 5]) for i in range(len(doc) - 4)} for doc in (base, other)]
    return " ".join(base), " ".join(other), len(sets[0] & sets[1]) / len(sets[0] | sets[1])


def test_signature_agreement_estimates_jaccard():
    rng = np.random.default_rng(0)
    hasher = MinHasher()
    errors = []
    for keep in (1.0, 0.99, 0.97, 0.9, 0.8):
        for _ in range(10):
            first, second, true = jaccard_pair(rng, 400, keep)
            signatures, shingled = hasher.signatures(Words([first, second]))
            assert shingled.all()
            errors.append(similarity(signatures[:1], signatures[1:])[0] - true)
    errors = np.array(errors)
    # 112 permutations: standard error sqrt(J(1-J)/112) <= 0.047
    assert abs(errors.mean()) < 0.02 and np.abs(errors).max() < 0.15


def test_documents_without_words_take_no_part():
    signatures, shingled = MinHasher().signatures(Words(["...", "real words here"]))
    assert shingled.tolist() == [False, True]
    assert (signatures[0] == np.uint32(0xFFFFFFFF)).all()


def test_bucket_pairs_link_each_member_to_the_earliest():
    keys = np.array([7, 3, 7, 3, 9, 7], dtype=np.uint64)
    ids = np.array([10, 11, 12, 13, 14, 15])
    first, other = bucket_pairs(keys, ids)
    assert sorted(zip(first.tolist(), other.tolist(), strict=True)) == [
        (10, 12),
        (10, 15),
        (11, 13),
    ]


def test_union_find_keeps_the_earliest_document_of_each_cluster():
    # chains 5-2-8 and 1-7, 3 alone
    labels = connected_components(9, np.array([5, 2, 1]), np.array([2, 8, 7]))
    assert labels.tolist() == [0, 1, 2, 3, 4, 2, 6, 1, 2]
    active = np.ones(9, dtype=bool)
    stats = cluster_stats(labels, active)
    assert (stats.clusters, stats.documents_in_clusters, stats.removed, stats.largest_cluster) == (
        2,
        5,
        3,
        3,
    )


def test_tokenizer_that_adds_bos_gets_it_per_document(tmp_path, tiny_tokenizer_dir):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    bos = tokenizer.convert_tokens_to_ids("<|im_start|>")
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)]
    )
    tokenizer.save_pretrained(str(tmp_path / "bos"))
    loaded, info = load_tokenizer(tmp_path / "bos")
    assert (info.bos_id, info.adds_bos) == (bos, True)
    flat, lengths = DocumentEncoder.of(loaded, info).encode(
        ["one document", "and <|endoftext|> another"]
    )
    ends = np.cumsum(lengths)
    starts = ends - lengths
    assert flat[starts].tolist() == [bos, bos] and flat[ends - 1].tolist() == [info.eos_id] * 2
    # the special token's text inside a document is text, not a document boundary
    assert (flat == info.eos_id).sum() == 2


def test_tokenizer_without_bos_convention_gets_only_eos(tiny_tokenizer_dir):
    tokenizer, info = load_tokenizer(tiny_tokenizer_dir)
    assert (info.bos_id, info.adds_bos) == (None, False)
    flat, lengths = DocumentEncoder.of(tokenizer, info).encode(["x <|endoftext|> y"])
    body = tokenizer("x <|endoftext|> y", add_special_tokens=False)["input_ids"]
    assert flat[-1] == info.eos_id and lengths.tolist() == [len(flat)]
    assert info.eos_id in body  # the tokenizer's own call splits the special token out...
    assert info.eos_id not in flat[:-1].tolist()  # ...the data build does not


def test_large_vocabularies_use_uint32_shards(tmp_path):
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    build = write_synthetic_build(
        tmp_path,
        {"a": ([arange_documents(100_000, 10, 20)], 1.0)},
        seq_len=8,
        dtype=np.dtype("<u4"),
    )
    batch = next(TrainBatches(build, seq_len=8, micro_batch_size=2, seed=0))
    assert batch.min() >= 100_000 and (batch[:, 1:] - batch[:, :-1] == 1).all()
    assert batch.dtype == torch.int64


@pytest.mark.parametrize("keep", [0.995, 0.98])
def test_near_duplicates_of_english_prose_are_found(keep):
    rng = np.random.default_rng(3)
    docs = english_documents(20, seed=5, words=(200, 300))
    copies = [" ".join(w if rng.random() < keep else "zebra" for w in d.split()) for d in docs]
    hasher = MinHasher()
    signatures, _ = hasher.signatures(Words(docs + copies))
    agreement = similarity(signatures[:20], signatures[20:])
    assert (agreement >= 0.7).mean() >= 0.9  # the default threshold confirms these pairs
    unrelated = similarity(signatures[:19], signatures[1:20])
    assert (unrelated < 0.2).all()
