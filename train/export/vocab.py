"""The tokenizer of a model directory as llama.cpp's GGUF vocabulary.

llama.cpp does not run the Hugging Face pre-tokenizer: it picks one of its own hand-written
splitters by the name in `tokenizer.ggml.pre`. A byte-level BPE exports only when its split
regex is exactly the regex of such a splitter (and the merge rule agrees: llama.cpp's
`llama-bpe` looks a whole word up before merging, `ignore_merges`), otherwise llama.cpp would
cut the text elsewhere and the model would see token sequences it never saw in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtrain.chat import end_of_turn_token_id
from llmtrain.errors import StageInputError
from llmtrain.tokenizer.config import split_pattern

GPT2_REGEX = split_pattern("gpt2", "runs")
"""GPT-2's regex, which `ByteLevel(use_regex=True)` applies."""

# (split regex of tokenizer.json, BPE ignore_merges) -> llama.cpp pre-tokenizer name. Each
# name's splitter in llama.cpp's llama-vocab.cpp / unicode.cpp is that exact regex.
LLAMA_CPP_PRE = {
    (split_pattern("llama3", "single"), False): "qwen2",
    (split_pattern("llama3", "groups_of_3"), True): "llama-bpe",
    (split_pattern("llama3", "groups_of_3"), False): "smaug-bpe",
    (GPT2_REGEX, False): "gpt-2",
}
EXPORTABLE_SPLITS = (
    "tokenizer.pattern llama3 with digits single (llama.cpp pre-tokenizer 'qwen2') or "
    "groups_of_3 ('llama-bpe' / 'smaug-bpe'), or gpt2 with digits runs ('gpt-2')"
)

# gguf.TokenType values (kept here so that this module reads without gguf installed)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass
class GGUFVocab:
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def llama_cpp_pre(tokenizer_json: dict[str, Any], where: str) -> str:
    """The llama.cpp pre-tokenizer name of a tokenizer.json, or StageInputError."""

    def refuse(what: str) -> StageInputError:
        return StageInputError(
            f"{where}: llama.cpp cannot reproduce this tokenizer ({what}); exportable: a "
            f"byte-level BPE without normalizer whose split is {EXPORTABLE_SPLITS}. Retrain "
            "the tokenizer with one of them (the `llmtrain` pattern has no llama.cpp "
            "counterpart)"
        )

    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise refuse(f"model {model.get('type')}, not a byte-level BPE")
    if tokenizer_json.get("normalizer"):
        raise refuse(f"normalizer {tokenizer_json['normalizer'].get('type')}")
    regex = _split_regex(tokenizer_json.get("pre_tokenizer"))
    if regex is None:
        raise refuse(f"pre-tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))}")
    pre = LLAMA_CPP_PRE.get((regex, bool(model.get("ignore_merges"))))
    if pre is None:
        raise refuse(f"split regex {regex!r}")
    return pre


def _split_regex(pre: dict[str, Any] | None) -> str | None:
    """The one regex of `Split(regex, isolated) + ByteLevel(no regex)` or of a regex
    ByteLevel; None for any other pre-tokenizer."""
    if not pre:
        return None
    if pre.get("type") == "ByteLevel":
        return GPT2_REGEX if pre.get("use_regex") and not pre.get("add_prefix_space") else None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, byte_level = steps
    if (
        split.get("type") != "Split"
        or split.get("behavior") != "Isolated"
        or split.get("invert")
        or "Regex" not in (split.get("pattern") or {})
        or byte_level.get("type") != "ByteLevel"
        or byte_level.get("use_regex")
        or byte_level.get("add_prefix_space")
    ):
        return None
    return split["pattern"]["Regex"]


def gguf_vocab(model_dir: Path, vocab_size: int) -> GGUFVocab:
    """Tokens (padded to the model's embedding rows with unused `[PADi]`), their types,
    merges, special ids and the chat template of the tokenizer in `model_dir`."""
    from transformers import AutoTokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise StageInputError(f"{path}: missing; export needs the fast tokenizer's tokenizer.json")
    tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
    pre = llama_cpp_pre(tokenizer_json, str(path))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise StageInputError(
            f"{path}: token id {max(by_id)} does not fit the model's {vocab_size} embedding rows"
        )
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    probe = tokenizer("a")["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return GGUFVocab(
        pre=pre,
        tokens=tokens,
        token_types=types,
        merges=merges,
        # no bos: the eos, which begins every document of our data builds (documents are
        # joined by it); left out, llama.cpp would take token 11 for its bos
        bos_id=bos if bos is not None else eos,
        eos_id=eos,
        eot_id=end_of_turn_token_id(tokenizer),
        pad_id=tokenizer.pad_token_id,
        add_bos=bos is not None and probe[:1] == [bos],
        add_eos=eos is not None and probe[-1:] == [eos],
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )
