"""Recipe section `tokenizer:` of `llmtrain tokenizer`.

    tokenizer:
      algorithm: bpe              # bpe | unigram | wordpiece
      backend: tokenizers         # tokenizers | sentencepiece (bpe or unigram)
      vocab_size: 32768           # learned + special tokens; then rounded up to a multiple of 64
      sources:
        - {paths: [corpus/web/*.jsonl.zst]}
        - {paths: [corpus/code/*.parquet], text_field: content, max_chars: 2.0e8}
      special_tokens: {bos: "<|begin_of_text|>", sentinels: 100}
      chat_template: chatml

Light module (no tokenizers, transformers): the recipe imports it for the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from llmtrain.schema import InputGlob, OutputPath, Section

if TYPE_CHECKING:
    from llmtrain.recipe import Recipe

Algorithm = Literal["bpe", "unigram", "wordpiece"]
Backend = Literal["tokenizers", "sentencepiece"]
Digits = Literal["single", "groups_of_3", "runs"]

BYTE_ALPHABET = 256
"""Byte-level BPE starts from the 256 bytes; Unigram and SentencePiece keep 256 byte-fallback
pieces. Either way a vocabulary needs room for them."""

# Pre-tokenizer patterns for byte-level BPE. `{digits}` is replaced by the number alternative
# of the `digits` setting. Pieces are tried left to right at each position.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
DEFAULT_PATTERN = "llama3"
"""The split of new byte-level BPEs: Llama 3's regex, which llama.cpp reproduces exactly
(pre-tokenizer `qwen2` with single digits, `llama-bpe` with groups of 3), so the model exports to
GGUF (`llmtrain export gguf`)."""
PATTERNS = {
    # Opt-in. Llama 3's pattern with two changes that matter for code (docs/benchmarks.md#tokenizer):
    # identifiers keep their underscores and digits (`[\p{L}_][\p{L}\p{N}_]*`), and
    # punctuation or a line break takes the newlines and the indentation that follow it, so
    # "):\n        " is one pre-token and the keyword after it starts a new one. llama.cpp has
    # no splitter for it: a tokenizer with this pattern does not export to GGUF.
    "llmtrain": "|".join(
        [
            _CONTRACTIONS,
            r"[^\r\n\p{L}\p{N}]?[\p{L}_][\p{L}\p{N}_]*",
            "{digits}",
            r" ?[^\s\p{L}\p{N}]+[\r\n]*[^\S\r\n]*",
            r"\s*[\r\n]+[^\S\r\n]*",
            r"\s+(?!\S)",
            r"\s+",
        ]
    ),
    "llama3": "|".join(
        [
            _CONTRACTIONS,
            r"[^\r\n\p{L}\p{N}]?\p{L}+",
            "{digits}",
            r" ?[^\s\p{L}\p{N}]+[\r\n]*",
            r"\s*[\r\n]+",
            r"\s+(?!\S)",
            r"\s+",
        ]
    ),
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?{digits}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
}
DIGIT_PATTERNS = {"single": r"\p{N}", "groups_of_3": r"\p{N}{1,3}", "runs": r"\p{N}+"}


def split_pattern(pattern: str, digits: Digits) -> str:
    """The regex of a named pattern with its number alternative set; a custom regex as is."""
    if pattern in PATTERNS:
        return PATTERNS[pattern].replace("{digits}", DIGIT_PATTERNS[digits])
    return pattern


class SourceSection(Section):
    """One corpus the tokenizer trains on."""

    paths: list[InputGlob] = Field(min_length=1)
    """Files, directories or globs: .jsonl/.json (also .gz/.zst), .parquet, plain text, or
    directories saved with datasets' save_to_disk."""
    text_field: str = "text"
    """Field holding the text in jsonl, parquet and datasets records."""
    text_mode: Literal["file", "line", "paragraph"] = "file"
    """Plain-text files: one document per file, per line, or per blank-line-separated
    paragraph."""
    on_error: Literal["raise", "skip"] = "raise"
    """A broken JSON line or a record without the text field: stop with an error naming file
    and line, or skip it (the count goes into report.json)."""
    encoding_errors: Literal["strict", "replace"] = "strict"
    """Bytes that are not UTF-8: an error naming file and byte offset, or replaced with
    U+FFFD."""
    max_chars: float | None = Field(default=None, gt=0)
    """Train on a seeded random sample of this source's documents holding at most this many
    characters (whole documents; the corpus is read through once, memory stays bounded by the
    sample). Null: every document."""
    max_documents: int | None = Field(default=None, gt=0)
    """Train on a seeded random sample of at most this many documents of this source."""

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value  # `paths: corpus/*.jsonl`


class SpecialTokensSection(Section):
    """Special tokens: never split, never produced from ordinary text, ids listed in
    report.json. Ids follow this order: pad, eos, bos, unk, cls, sep, mask, chat tokens,
    additional, sentinels, reserved, user_defined."""

    eos: str = "<|endoftext|>"
    """End of a document; the data build separates documents with it."""
    pad: str = "<|pad|>"
    """Padding (distinct from eos, so padded positions are never mistaken for an end)."""
    bos: str | None = None
    """Beginning of a document (Llama style); null: none."""
    unk: str = "<unk>"
    """Unknown token; used by unigram, wordpiece and the sentencepiece backend (byte-level BPE
    and byte-fallback Unigram never produce it)."""
    mask: str | None = None
    """Mask token for masked-language-model pretraining, e.g. "[MASK]"."""
    cls: str | None = None
    """Classification token of encoders, e.g. "[CLS]"."""
    sep: str | None = None
    """Separator token of encoders, e.g. "[SEP]"."""
    sentinels: int = Field(default=0, ge=0)
    """T5 span-corruption sentinels <extra_id_0> ... <extra_id_{N-1}> (T5 uses 100)."""
    additional: list[str] = []
    """Further special tokens (e.g. tool-call markers); skipped when decoding with
    skip_special_tokens."""
    user_defined: list[str] = []
    """Tokens that are never split but are ordinary text (kept when decoding with
    skip_special_tokens), e.g. "<think>"."""
    reserved: int = Field(default=0, ge=0)
    """Placeholder special tokens <|reserved_0|> ... to rename later (e.g. for new chat
    roles) without resizing the model."""


class TokenizerSection(Section):
    """`llmtrain tokenizer`: train a tokenizer and write a Hugging Face tokenizer directory."""

    sources: list[SourceSection] = Field(min_length=1)
    """The corpora to train on."""
    algorithm: Algorithm = "bpe"
    """bpe: byte-level BPE (GPT-2/Llama 3 style, every string round-trips); unigram: T5/ALBERT
    style with byte fallback; wordpiece: BERT style (lossy: whitespace is not kept)."""
    backend: Backend = "tokenizers"
    """Trainer: Hugging Face `tokenizers`, or `sentencepiece` (bpe or unigram; tokenizer.model
    is kept beside tokenizer.json)."""
    vocab_size: int = Field(default=32768, gt=0, le=1_048_576)
    """Learned tokens plus special tokens, before rounding (at most 2^20; the largest
    vocabularies in use are about 262k)."""
    pad_vocab_to_multiple_of: int = Field(default=64, ge=1)
    """Round the vocabulary up to a multiple of this with reserved special tokens, so that
    len(tokenizer) is the embedding size (GPU-friendly); 1: no rounding."""
    pattern: str | None = None
    """Byte-level BPE pre-tokenizer regex: `llama3` (default; exports to llama.cpp), `llmtrain`
    (Llama 3's regex tuned for code: fewer tokens on source code, but llama.cpp cannot
    reproduce its split, so no GGUF export), `gpt2`, or a regex of your own (Oniguruma
    syntax)."""
    digits: Digits = "single"
    """Numbers: `single` digits (Llama 1/2, DeepSeek; helps arithmetic), `groups_of_3`
    (Llama 3), or `runs` (no splitting; with a custom pattern: the pattern decides)."""
    normalization: Literal["none", "nfkc"] = "none"
    """Unicode normalisation before tokenizing; nfkc folds compatibility characters but
    makes decoding lossy for them."""
    lowercase: bool = False
    """Lowercase before tokenizing (wordpiece only, as uncased BERT)."""
    max_token_length: int | None = Field(default=None, ge=2)
    """Longest learned token in characters (byte-level BPE: in bytes); default: no limit for
    BPE, 16 for unigram and sentencepiece. Not for wordpiece."""
    min_frequency: int = Field(default=2, ge=0)
    """A pair must occur this often to be merged (bpe and wordpiece with `tokenizers`)."""
    limit_alphabet: int = Field(default=1000, gt=0)
    """Most distinct characters in the initial alphabet (wordpiece)."""
    character_coverage: float = Field(default=0.9999, gt=0, le=1)
    """Share of characters covered by the vocabulary (sentencepiece); the rest falls back to
    bytes."""
    special_tokens: SpecialTokensSection = SpecialTokensSection()
    chat_template: str | None = "chatml"
    """`chatml` (built in; adds <|im_start|> and <|im_end|>), a Jinja template of your own (list
    the tokens it uses under special_tokens.additional), or null for none."""
    add_bos: bool = False
    """Prepend bos to every encoded text (Llama style); needs special_tokens.bos."""
    add_cls_sep: bool = False
    """Wrap every encoded text as cls ... sep (BERT style); needs special_tokens.cls and sep."""
    heldout_fraction: float = Field(default=0.01, ge=0, lt=1)
    """Share of documents held out of training to measure the tokenizer (chosen from a hash of
    the text and the seed)."""
    heldout_max_chars: int = Field(default=10_000_000, ge=0)
    """Most characters held out; documents past it train."""
    output_dir: OutputPath | None = None
    """Where to write the tokenizer; default <output_dir>/tokenizer."""

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        # a custom regex is compiled (Oniguruma) when the stage starts
        if value is not None and not value:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)} or a non-empty regex")
        return value

    @model_validator(mode="after")
    def _check(self) -> TokenizerSection:
        byte_level_bpe = self.algorithm == "bpe" and self.backend == "tokenizers"
        if self.backend == "sentencepiece" and self.algorithm == "wordpiece":
            raise ValueError(
                "backend sentencepiece trains bpe or unigram, not wordpiece; use backend "
                "tokenizers for wordpiece"
            )
        if self.pattern is not None and not byte_level_bpe:
            raise ValueError(
                "pattern applies to byte-level BPE (algorithm bpe, backend tokenizers) only; "
                "remove it"
            )
        custom = self.pattern is not None and self.pattern not in PATTERNS
        if custom and self.digits == "groups_of_3":
            raise ValueError(
                "digits groups_of_3 has no effect with a custom pattern; put \\p{N}{1,3} in "
                "the pattern and set digits: runs (or digits: single to split every digit)"
            )
        if self.backend == "sentencepiece" and self.digits == "groups_of_3":
            raise ValueError(
                "sentencepiece splits numbers into single digits or not at all; set digits to "
                "single or runs"
            )
        if self.max_token_length is not None and self.algorithm == "wordpiece":
            raise ValueError(
                "max_token_length applies to bpe and unigram; the wordpiece trainer has no such "
                "limit: remove it"
            )
        if self.lowercase and self.algorithm != "wordpiece":
            raise ValueError("lowercase applies to wordpiece only; remove it")
        specials = self.special_tokens
        if self.add_bos and specials.bos is None:
            raise ValueError("add_bos needs a bos token; set special_tokens.bos")
        if self.add_cls_sep and (specials.cls is None or specials.sep is None):
            raise ValueError("add_cls_sep needs special_tokens.cls and special_tokens.sep")
        if self.add_bos and self.add_cls_sep:
            raise ValueError("add_bos and add_cls_sep both set; choose one")
        tokens = special_token_list(self)
        seen: set[str] = set()
        for token in tokens:
            if not token:
                raise ValueError("special_tokens: a token is the empty string; remove it")
            if token in seen:
                raise ValueError(
                    f"special_tokens: {token!r} is used twice; each special token needs its "
                    "own text"
                )
            seen.add(token)
        minimum = minimum_vocab_size(self)
        if self.vocab_size < minimum:
            raise ValueError(
                f"vocab_size {self.vocab_size} is smaller than the {len(tokens)} special tokens "
                f"plus the base alphabet ({alphabet_size(self)}); set vocab_size to at least "
                f"{minimum}"
            )
        return self

    def output_path(self, recipe: Recipe) -> Path:
        """Where the tokenizer is written: output_dir, or <recipe output_dir>/tokenizer."""
        return Path(self.output_dir) if self.output_dir else recipe.stage_dir("tokenizer")


def uses_unk(section: TokenizerSection) -> bool:
    """Byte-level BPE never needs an unknown token; every other model has one."""
    return not (section.algorithm == "bpe" and section.backend == "tokenizers")


def chat_tokens(section: TokenizerSection) -> list[str]:
    if section.chat_template == "chatml":
        from llmtrain.chat import CHATML_TOKENS

        return list(CHATML_TOKENS)
    return []


def named_special_tokens(section: TokenizerSection) -> dict[str, str]:
    """transformers attribute name (eos_token, ...) -> token text, for the tokens set."""
    specials = section.special_tokens
    named = {
        "pad_token": specials.pad,
        "eos_token": specials.eos,
        "bos_token": specials.bos,
        "unk_token": specials.unk if uses_unk(section) else None,
        "cls_token": specials.cls,
        "sep_token": specials.sep,
        "mask_token": specials.mask,
    }
    return {name: token for name, token in named.items() if token is not None}


def extra_special_tokens(section: TokenizerSection) -> list[str]:
    """Special tokens without a transformers attribute: chat, additional, sentinels."""
    specials = section.special_tokens
    sentinels = [f"<extra_id_{i}>" for i in range(specials.sentinels)]
    return [*chat_tokens(section), *specials.additional, *sentinels]


def reserved_tokens(start: int, count: int) -> list[str]:
    return [f"<|reserved_{i}|>" for i in range(start, start + count)]


def special_token_list(section: TokenizerSection) -> list[str]:
    """Every token that gets a fixed id before the learned vocabulary, in id order."""
    specials = section.special_tokens
    return [
        *named_special_tokens(section).values(),
        *chat_tokens(section),
        *specials.additional,
        *(f"<extra_id_{i}>" for i in range(specials.sentinels)),
        *reserved_tokens(0, specials.reserved),
        *specials.user_defined,  # last, as SentencePiece numbers them
    ]


def alphabet_size(section: TokenizerSection) -> int:
    """Tokens every vocabulary of this kind holds besides the special tokens."""
    if section.algorithm == "wordpiece":
        return section.limit_alphabet
    return BYTE_ALPHABET


def minimum_vocab_size(section: TokenizerSection) -> int:
    return len(special_token_list(section)) + alphabet_size(section)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
