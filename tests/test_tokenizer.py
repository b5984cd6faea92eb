"""`llmtrain tokenizer`: what the tokenizer directory holds and how the trained tokenizers behave."""

from __future__ import annotations

import json

import pytest

from llmtrain.chat import CHATML
from llmtrain.errors import RunDirError
from tests.tokenizer_support import MULTILINGUAL, load, tokenizer_recipe, train

ROUND_TRIP = {
    "english": "The quick brown fox jumps over the lazy dog. It's 2024; isn't it?",
    "chinese": "分词器必须能够无损地还原每一个字符串，包括中文标点。",
    "emoji": "emoji 😀🎉 family 👨‍👩‍👧 flag 🇯🇵 skin 👍🏽",
    "code": "class A:\n\tdef f(self,  x):\n\t\treturn   x\n        \n    # spaces\t\ttabs \n\n\n",
    "unseen": "Ꙭ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x01 \u200b zero-width, \r\n CRLF, trailing space ",
    "special strings": "a literal <|endoftext|> and <|im_start|> inside text",
}


@pytest.fixture(scope="module")
def bpe(tokenizer_corpus, tmp_path_factory):
    """The default byte-level BPE with every kind of special token."""
    return train(
        tmp_path_factory.mktemp("bpe"),
        tokenizer_corpus,
        vocab_size=700,  # rounded up to 704
        add_bos=True,
        special_tokens={
            "bos": "<|begin_of_text|>",
            "mask": "[MASK]",
            "sentinels": 8,
            "additional": ["<tool_call>"],
            "user_defined": ["<think>"],
            "reserved": 2,
        },
    )


@pytest.mark.parametrize("kind", list(ROUND_TRIP))
def test_byte_level_bpe_round_trips_exactly(bpe, kind):
    tokenizer = load(bpe[0])
    text = ROUND_TRIP[kind]
    backend = tokenizer.backend_tokenizer
    backend.encode_special_tokens = True  # as the data build encodes: special strings are text
    ids = backend.encode(text, add_special_tokens=False).ids
    assert backend.decode(ids, skip_special_tokens=False) == text
    unk = tokenizer.unk_token_id
    assert unk is None or unk not in ids
    # through the transformers API too (special strings become special tokens, decoded back)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_report_vocabulary_and_special_token_ids(bpe):
    out, report = bpe
    tokenizer = load(out)
    assert report["vocab_size"] == len(tokenizer) == 704
    assert report["vocab_size"] % 64 == 0
    assert report["requested_vocab_size"] == 700
    assert report["trained_vocab_size"] + report["padding_tokens"] == 704
    ids = report["special_token_ids"]
    expected_order = [
        "<|pad|>",
        "<|endoftext|>",
        "<|begin_of_text|>",
        "[MASK]",
        "<|im_start|>",
        "<|im_end|>",
        "<tool_call>",
        *(f"<extra_id_{i}>" for i in range(8)),
        "<|reserved_0|>",
        "<|reserved_1|>",
        "<think>",
    ]
    assert [ids[t] for t in expected_order] == list(range(len(expected_order)))
    assert report["reserved_tokens"][:2] == ["<|reserved_0|>", "<|reserved_1|>"]
    assert len(report["reserved_tokens"]) == 2 + report["padding_tokens"]
    assert max(ids.values()) == len(tokenizer) - 1  # the padding fills the rounding
    vocab = tokenizer.get_vocab()
    for token, token_id in ids.items():
        assert vocab[token] == token_id
        # never split, wherever it appears
        assert tokenizer(f"x{token}y", add_special_tokens=False)["input_ids"][1] == token_id
        assert tokenizer.convert_tokens_to_ids(token) == token_id
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == ids["<|endoftext|>"]
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.bos_token_id == ids["<|begin_of_text|>"]
    assert tokenizer.mask_token_id == ids["[MASK]"]
    assert tokenizer.unk_token is None  # byte-level BPE needs none
    assert report["special_tokens"] == {
        "pad_token": "<|pad|>",
        "eos_token": "<|endoftext|>",
        "bos_token": "<|begin_of_text|>",
        "mask_token": "[MASK]",
    }
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["mask_token"] == "[MASK]"
    assert "<extra_id_7>" in config["extra_special_tokens"]


def test_special_and_user_defined_tokens_decode_as_configured(bpe):
    tokenizer = load(bpe[0])
    ids = tokenizer("<think>hm</think><extra_id_3> done", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "<think>"
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text.startswith("<think>hm") and "<extra_id_3>" not in text  # user-defined is text


def test_sentinels_are_what_span_corruption_looks_up(bpe):
    from llmtrain.train.objectives import sentinel_ids

    out, report = bpe
    tokenizer = load(out)
    assert sentinel_ids(tokenizer, 8) == [
        report["special_token_ids"][f"<extra_id_{i}>"] for i in range(8)
    ]


def test_bos_is_added_when_the_recipe_asks(bpe):
    # transformers 5 reads this from tokenizer.json's post-processor, not add_bos_token
    tokenizer = load(bpe[0])
    ids = tokenizer("hello")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer("hello", add_special_tokens=False)["input_ids"] == ids[1:]


def test_heldout_measures(bpe):
    _, report = bpe
    held = report["heldout"]
    assert held["documents"] > 0
    assert held["round_trip_exact"] is True and held["round_trip_failures"] == 0
    assert held["bytes_per_token"] == pytest.approx(held["bytes"] / held["tokens"])
    assert 1.5 < held["bytes_per_token"] < 6
    assert held["tokens_per_word"] == pytest.approx(held["tokens"] / held["words"])
    assert held["unknown_rate"] is None  # no unknown token to count
    corpus = report["corpus"][0]
    assert corpus["heldout_documents"] == held["documents"]
    assert corpus["train_documents"] + corpus["heldout_documents"] == corpus["documents"]


def test_chat_template_renders_a_conversation(bpe):
    out, _ = bpe
    tokenizer = load(out)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHATML
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "5"},
    ]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n"
        "<|im_start|>assistant\n5<|im_end|>\n"
    )
    encoded = tokenizer.apply_chat_template(
        chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    trained_on = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained_on == "5<|im_end|>"
    prompt = tokenizer.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_custom_chat_template_from_the_recipe(tokenizer_corpus, tmp_path):
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    out, _ = train(
        tmp_path,
        tokenizer_corpus,
        chat_template=template,
        special_tokens={"additional": ["<|user|>", "<|assistant|>", "<|end|>"]},
    )
    tokenizer = load(out)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == (
        "<|user|>hi<|end|><|assistant|>yo<|end|>"
    )
    assert "<|im_start|>" not in tokenizer.get_vocab()  # chat tokens come from chatml only


def test_same_input_and_seed_give_identical_tokenizer_json(tokenizer_corpus, tmp_path):
    first, _ = train(tmp_path / "a", tokenizer_corpus, seed=3)
    second, _ = train(tmp_path / "b", tokenizer_corpus, seed=3)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    other, _ = train(tmp_path / "c", tokenizer_corpus, seed=4)  # another held-out split
    assert (other / "tokenizer.json").read_bytes() != (first / "tokenizer.json").read_bytes()


@pytest.mark.parametrize(
    ("algorithm", "backend"),
    [
        ("bpe", "tokenizers"),
        ("unigram", "tokenizers"),
        ("wordpiece", "tokenizers"),
        ("bpe", "sentencepiece"),
        ("unigram", "sentencepiece"),
    ],
)
def test_each_algorithm_and_backend_trains_and_loads(
    tokenizer_corpus, tmp_path, algorithm, backend
):
    from transformers import AutoTokenizer

    settings = {"algorithm": algorithm, "backend": backend, "vocab_size": 640}
    if algorithm == "wordpiece":
        settings["limit_alphabet"] = 150
        settings["special_tokens"] = {"cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
        settings["add_cls_sep"] = True
    corpus = [{"paths": [str(tokenizer_corpus)], "max_chars": 100_000}]
    out, report = train(tmp_path, corpus, **settings)
    again, _ = train(tmp_path / "again", corpus, **settings)
    for name in ("tokenizer.json", "tokenizer.model"):  # same input and seed: same files
        if (out / name).exists():
            assert (out / name).read_bytes() == (again / name).read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.is_fast
    assert len(tokenizer) == report["vocab_size"] == 640
    assert report["algorithm"] == algorithm and report["backend"] == backend
    model = json.loads((out / "tokenizer.json").read_text())["model"]["type"]
    assert model == {"bpe": "BPE", "unigram": "Unigram", "wordpiece": "WordPiece"}[algorithm]
    assert tokenizer.eos_token_id == report["special_token_ids"]["<|endoftext|>"]
    assert tokenizer.pad_token_id == report["special_token_ids"]["<|pad|>"]
    assert tokenizer.unk_token == (
        None if (algorithm, backend) == ("bpe", "tokenizers") else "<unk>"
    )
    held = report["heldout"]
    if algorithm == "wordpiece":  # BERT-style: whitespace is not kept
        assert held["round_trip_exact"] is False
        ids = tokenizer("Hello there")["input_ids"]
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    else:
        assert held["round_trip_exact"] is True
        for text in MULTILINGUAL:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text
            assert tokenizer.unk_token_id not in ids  # byte fallback, never <unk>
    if backend == "sentencepiece":
        import sentencepiece

        assert (out / "tokenizer.model").is_file()
        processor = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
        agreement = report["sentencepiece_agreement"]
        # Unigram: SentencePiece sums scores in float32 over a whole document, so rare near-ties
        # can resolve differently from the float64 Viterbi of `tokenizers`
        assert agreement["rate"] == 1.0 if algorithm == "bpe" else agreement["rate"] >= 0.9
        text = MULTILINGUAL[-1]
        assert processor.encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
        for token in ("<|pad|>", "<|endoftext|>", "<unk>", "<|im_start|>"):
            assert processor.piece_to_id(token) == report["special_token_ids"][token]
    else:
        assert not (out / "tokenizer.model").exists()


def test_digit_splitting(tokenizer_corpus, tmp_path):
    single, _ = train(tmp_path / "single", tokenizer_corpus, digits="single")
    groups, _ = train(tmp_path / "groups", tokenizer_corpus, digits="groups_of_3")
    # the default split (Llama 3's regex, llama.cpp's `qwen2`): the space before a number is
    # a token of its own
    assert load(single).tokenize("x = 12345") == ["x", "Ġ=", "Ġ", "1", "2", "3", "4", "5"]
    grouped = load(groups).tokenize("12345678")
    assert "".join(grouped) == "12345678" and len(grouped) >= 3
    assert all(len(piece) <= 3 for piece in grouped)


def test_llmtrain_pattern_is_an_opt_in_that_keeps_spaces_around_punctuation(
    tokenizer_corpus, tmp_path
):
    out, _ = train(tmp_path, tokenizer_corpus, pattern="llmtrain")
    assert load(out).tokenize("x = 12345") == ["x", "Ġ=Ġ", "1", "2", "3", "4", "5"]


def test_nfkc_normalisation_is_reported_as_lossy(tokenizer_corpus, tmp_path):
    from llmtrain.tokenizer.measure import measure

    out, _ = train(tmp_path, tokenizer_corpus, normalization="nfkc")
    tokenizer = load(out)
    assert tokenizer.decode(tokenizer("ﬁne ①", add_special_tokens=False)["input_ids"]) == "fine 1"
    result = measure(tokenizer.backend_tokenizer, ["plain text", "a ﬁne day"])
    assert result["round_trip_exact"] is False and result["round_trip_failures"] == 1
    assert result["round_trip_first_failure"] == {
        "char": 2,
        "original": "a ﬁne day",
        "decoded": "a fine day",
    }


def test_sample_cap_bounds_the_training_text(tokenizer_corpus, tmp_path):
    cap = 50_000
    _, report = train(tmp_path / "a", [{"paths": [str(tokenizer_corpus)], "max_chars": cap}])
    stats = report["corpus"][0]
    assert 0.5 * cap < stats["train_chars"] <= cap
    assert stats["train_documents"] < stats["documents"] - stats["heldout_documents"]
    _, again = train(tmp_path / "b", [{"paths": [str(tokenizer_corpus)], "max_chars": cap}])
    assert again["corpus"] == report["corpus"]  # seeded: the same sample
    _, docs = train(tmp_path / "c", [{"paths": [str(tokenizer_corpus)], "max_documents": 10}])
    assert docs["corpus"][0]["train_documents"] == 10


def test_rerun_skips_same_settings_and_refuses_others(tokenizer_corpus, tmp_path):
    out, report = train(tmp_path, tokenizer_corpus)
    written = (out / "tokenizer.json").stat().st_mtime_ns
    train(tmp_path, tokenizer_corpus)  # same settings: left as is
    assert (out / "tokenizer.json").stat().st_mtime_ns == written
    with pytest.raises(RunDirError) as error:
        train(tmp_path, tokenizer_corpus, vocab_size=576)
    assert str(error.value) == (
        f"tokenizer: {out} already holds a tokenizer trained with other settings "
        "(changed: vocab_size); pass --overwrite to replace it, or set tokenizer.output_dir to "
        "write elsewhere"
    )
    _, replaced = train(tmp_path, tokenizer_corpus, vocab_size=576, overwrite=True)
    assert replaced["vocab_size"] == 576 != report["vocab_size"]
    assert [p.name for p in out.parent.iterdir()] == ["tokenizer"]  # no temporaries left


def test_refuses_to_replace_a_directory_it_did_not_write(tokenizer_corpus, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError) as error:
        train(tmp_path, tokenizer_corpus, output_dir=str(target), overwrite=True)
    assert str(error.value) == (
        f"tokenizer: {target} exists and is not a tokenizer directory; refusing to replace it: "
        "set tokenizer.output_dir to another path, or remove it"
    )
    assert (target / "notes.txt").read_text() == "keep me"


def test_output_dir_defaults_to_the_stage_dir(tokenizer_corpus, tmp_path):
    recipe = tokenizer_recipe(tmp_path, tokenizer_corpus)
    assert recipe.tokenizer.output_path(recipe) == recipe.stage_dir("tokenizer")
    out, _ = train(tmp_path, tokenizer_corpus)
    assert out == tmp_path / "run" / "tokenizer"


def test_reads_every_input_format_through_globs(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from tests.tokenizer_support import write_corpus

    texts = [json.loads(line)["text"] for line in write_corpus(tmp_path / "base.jsonl").open()]
    parts = [texts[i::4] for i in range(4)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()

    def jsonl(records):
        return "".join(json.dumps({"content": t}) + "\n" for t in records).encode()

    (corpus / "a.jsonl.gz").write_bytes(gzip.compress(jsonl(parts[0])))
    (corpus / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl(parts[1])))
    pq.write_table(
        pa.table({"content": parts[2], "n": list(range(len(parts[2])))}), corpus / "c.parquet"
    )
    (tmp_path / "notes").mkdir()
    paragraphs = [f"Paragraph {i}: some notes,\nover two lines." for i in range(30)]
    (tmp_path / "notes" / "d.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    sources = [
        {"paths": [str(corpus / "*.jsonl.*"), str(corpus / "*.parquet")], "text_field": "content"},
        {"paths": str(tmp_path / "notes"), "text_mode": "paragraph"},  # one path, no list
    ]
    out, report = train(tmp_path, sources, heldout_fraction=0)
    records, text = report["corpus"]
    assert records["files"] == 3 and text["files"] == 1
    assert records["documents"] == len(parts[0]) + len(parts[1]) + len(parts[2])
    assert records["chars"] == sum(len(t) for t in parts[0] + parts[1] + parts[2])
    assert text["documents"] == len(paragraphs)
    assert load(out)("def f(x):\n    return x")["input_ids"]


@pytest.mark.parametrize("backend", ["tokenizers", "sentencepiece"])
def test_max_token_length_caps_learned_tokens(tokenizer_corpus, tmp_path, backend):
    corpus = [{"paths": [str(tokenizer_corpus)], "max_chars": 100_000}]
    out, report = train(tmp_path, corpus, vocab_size=1024, max_token_length=3, backend=backend)
    tokenizer = load(out)
    specials = set(report["special_token_ids"])
    learned = [t for t in tokenizer.get_vocab() if t not in specials and not t.startswith("<0x")]
    # byte-level BPE counts bytes: one character of its printable byte alphabet each
    assert max(len(t) for t in learned) == 3


def test_sentencepiece_gives_the_same_model_whatever_the_core_count(
    tokenizer_corpus, tmp_path, monkeypatch
):
    # SentencePiece's Unigram splits its work by thread: the stage fixes the thread count
    corpus = [{"paths": [str(tokenizer_corpus)], "max_chars": 100_000}]
    models = []
    for cores in (1, 8):
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        out, _ = train(
            tmp_path / str(cores),
            corpus,
            vocab_size=640,
            algorithm="unigram",
            backend="sentencepiece",
        )
        models.append((out / "tokenizer.model").read_bytes())
    assert models[0] == models[1]
