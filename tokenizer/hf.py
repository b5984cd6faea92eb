"""Tokenizers trained with Hugging Face `tokenizers`: byte-level BPE, Unigram with byte
fallback, WordPiece.

- bpe: the recipe's split regex (a named pattern splits numbers as `digits` says; digits
  inside identifiers stay with them), then bytes mapped to printable characters (GPT-2's
  byte-level alphabet); the 256 bytes are the initial alphabet, so every string encodes
  without an unknown token and decodes back exactly.
- unigram: spaces become "▁" and the text is split SentencePiece style (a run of spaces
  stays with the word that follows it, as with allow_whitespace_only_pieces), digits split as
  asked; a character outside the vocabulary is spelled as <0xNN> byte pieces, so this is
  lossless too.
- wordpiece: BERT's normaliser and pre-tokenizer ("##" continuation pieces); lossy by design
  (whitespace is dropped).

Special tokens are passed to the trainer, so they take the ids 0..k-1 in the order of
`config.special_token_list`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from llmtrain.errors import RecipeError

from .config import BYTE_ALPHABET, DEFAULT_PATTERN, PATTERNS, TokenizerSection, split_pattern

SPACE = "\u2581"  # "▁", SentencePiece's visible space
SPM_WORDS = f"{SPACE}*[^{SPACE}]+|{SPACE}+"
"""SentencePiece's words with whitespace-only pieces allowed: a run of spaces and the
non-space characters after it (`SplitIntoWords` in sentencepiece's model_interface.cc)."""

BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
SCORE_DECIMALS = 6


def check_pattern(section: TokenizerSection, where: str = "") -> None:
    """A custom split regex must compile (Oniguruma syntax, as `tokenizers` uses)."""
    if section.pattern is None or section.pattern in PATTERNS:
        return
    try:
        Regex(section.pattern)
    except Exception as exc:  # tokenizers raises a plain Exception for a bad regex
        raise RecipeError(
            f"{where}tokenizer.pattern: not a valid regex ({exc}): {section.pattern!r}"
        ) from None


def digit_splitter(digits: str) -> list:
    """Pre-tokenizers that apply the `digits` setting after the main split (the named BPE
    patterns apply it with their own number alternative instead)."""
    if digits == "single":
        return [pre_tokenizers.Digits(individual_digits=True)]
    if digits == "groups_of_3":
        return [pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated")]
    return []


def normalizer(section: TokenizerSection, *more) -> normalizers.Normalizer | None:
    steps = [normalizers.NFKC()] if section.normalization == "nfkc" else []
    steps.extend(more)
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else normalizers.Sequence(steps)


def untrained(section: TokenizerSection, unk: str | None) -> Tokenizer:
    """The pipeline of the recipe's algorithm around an empty model."""
    if section.algorithm == "bpe":
        tokenizer = Tokenizer(models.BPE())
        pattern = section.pattern or DEFAULT_PATTERN
        custom_digits = digit_splitter(section.digits) if pattern not in PATTERNS else []
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_pattern(pattern, section.digits)), "isolated"),
                *custom_digits,
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
    elif section.algorithm == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = spm_pre_tokenizer(section.digits)
        tokenizer.decoder = spm_decoder()
    else:
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.BertPreTokenizer(), *digit_splitter(section.digits)]
        )
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    extra = []
    if section.algorithm == "unigram":
        extra.append(normalizers.Replace(" ", SPACE))
    elif section.algorithm == "wordpiece":
        extra.append(
            normalizers.BertNormalizer(
                clean_text=True,
                handle_chinese_chars=True,
                strip_accents=section.lowercase,
                lowercase=section.lowercase,
            )
        )
    tokenizer.normalizer = normalizer(section, *extra)
    return tokenizer


def spm_pre_tokenizer(digits: str) -> pre_tokenizers.PreTokenizer:
    """SentencePiece's word split, on text whose spaces are already "▁"."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(SPM_WORDS), behavior="isolated"), *digit_splitter(digits)]
    )


def spm_decoder() -> decoders.Decoder:
    return decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )


def trainer(
    section: TokenizerSection,
    specials: list[str],
    unk: str | None,
    alphabet: list[str] | None = None,
) -> trainers.Trainer:
    show = sys.stderr.isatty()
    if section.algorithm == "bpe":
        return trainers.BpeTrainer(
            vocab_size=section.vocab_size,
            min_frequency=section.min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            max_token_length=bpe_max_token_length(section.max_token_length),
            show_progress=show,
        )
    if section.algorithm == "unigram":
        return trainers.UnigramTrainer(
            vocab_size=section.vocab_size - BYTE_ALPHABET,  # byte pieces are added after
            special_tokens=specials,
            unk_token=unk,
            max_piece_length=section.max_token_length or 16,
            show_progress=show,
        )
    return trainers.WordPieceTrainer(
        vocab_size=section.vocab_size,
        min_frequency=section.min_frequency,
        special_tokens=specials,
        limit_alphabet=section.limit_alphabet,
        initial_alphabet=alphabet or [],
        continuing_subword_prefix="##",
        show_progress=show,
    )


def bpe_max_token_length(longest: int | None) -> int | None:
    """The BpeTrainer value that caps learned tokens at `longest` characters.

    The trainer (tokenizers 0.23, `Word::merge`) only forms a pair whose length is strictly
    below its `max_token_length`, so it learns tokens one character shorter than asked;
    tests/test_tokenizer.py::test_max_token_length_caps_learned_tokens notices if that changes.
    Lengths are counted on the byte-level string, so for byte-level BPE they are bytes.
    """
    return None if longest is None else longest + 1


def train(
    section: TokenizerSection,
    texts: Callable[[], Iterable[str]],
    specials: list[str],
    unk: str | None,
) -> Tokenizer:
    """Train on the documents `texts()` yields; special tokens take ids 0..len(specials)-1.

    WordPiece reads the corpus twice: first to choose its alphabet (see `train_wordpiece`).
    """
    tokenizer = untrained(section, unk)
    if section.algorithm == "wordpiece":
        return train_wordpiece(tokenizer, section, texts, specials, unk)
    tokenizer.train_from_iterator(texts(), trainer(section, specials, unk))
    if section.algorithm == "unigram":
        tokenizer = add_byte_fallback(tokenizer, len(specials))
    return tokenizer


def train_wordpiece(
    tokenizer: Tokenizer,
    section: TokenizerSection,
    texts: Callable[[], Iterable[str]],
    specials: list[str],
    unk: str | None,
) -> Tokenizer:
    """WordPiece, made deterministic.

    Left alone, the trainer keeps the `limit_alphabet` most frequent characters with ties
    broken in hash-map order, numbers the "##c" pieces in hash-map order, and breaks ties
    between equally frequent merges by those numbers, so two runs give different vocabularies.
    Here the alphabet is chosen first (ties by code point) and given as the initial alphabet,
    which the trainer always keeps, and the "##c" pieces are numbered right after the special
    tokens (passed as special tokens, then made ordinary pieces again).
    """
    alphabet = top_characters(tokenizer, texts(), section.limit_alphabet)
    continuations = [f"##{c}" for c in alphabet]
    tokenizer.train_from_iterator(
        texts(), trainer(section, specials + continuations, unk, alphabet)
    )
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in continuations]
    return Tokenizer.from_str(json.dumps(spec))


def top_characters(tokenizer: Tokenizer, texts: Iterable[str], limit: int) -> list[str]:
    """The `limit` most frequent non-space characters after normalisation (ties: code point)."""
    counts: Counter[str] = Counter()
    normalize = tokenizer.normalizer.normalize_str if tokenizer.normalizer else str
    for text in texts:
        counts.update(normalize(text))
    ranked = sorted((c for c in counts if not c.isspace()), key=lambda c: (-counts[c], c))
    return ranked[:limit]


def add_byte_fallback(tokenizer: Tokenizer, num_specials: int) -> Tokenizer:
    """Insert the 256 <0xNN> pieces after the special tokens and turn byte fallback on.

    The trainer gives special tokens a score of 0, the best there is: text that spells a
    special token (when special tokens are encoded as text) would become that token. Special
    and byte pieces get a score below every learned piece, so only byte fallback reaches them.
    Learned scores are rounded and the pieces ordered by score, then text: the trainer sums
    floats in hash-map order, so two runs differ in the last digits and in the order of equal
    scores, which would make tokenizer.json differ. The characters the trainer had to keep
    without a learned score get the lowest score plus 0.0001 per character in hash-set order;
    they all get the lowest score (see `flatten_required_characters`).
    """
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    learned = flatten_required_characters(
        [
            (piece, round(score, SCORE_DECIMALS))
            for piece, score in vocab[num_specials:]
            if piece not in BYTE_PIECES
        ]
    )
    learned.sort(key=lambda item: (-item[1], item[0]))
    floor = min((score for _, score in learned), default=0.0) - 10.0
    spec["model"]["vocab"] = (
        [[piece, floor] for piece, _ in vocab[:num_specials]]
        + [[piece, floor] for piece in BYTE_PIECES]
        + [[piece, score] for piece, score in learned]
    )
    spec["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(spec))


REQUIRED_CHARACTER_STEP = 1e-4
"""What the Unigram trainer adds to the lowest score for each further required character."""


def flatten_required_characters(learned: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Single characters scored at the bottom of the vocabulary, in steps of 0.0001 from the
    lowest score (`UnigramTrainer::finalize` keeps every character of the corpus and scores
    the ones pruning removed that way, in hash-set order), all get the lowest score: which
    character got which step differs from run to run."""
    characters = sorted(score for piece, score in learned if len(piece) == 1)
    if not characters:
        return learned
    lowest = min(score for _, score in learned)
    band = 0
    while band < len(characters) and characters[band] <= lowest + REQUIRED_CHARACTER_STEP * (
        band + 0.5
    ):
        band += 1
    ceiling = lowest + REQUIRED_CHARACTER_STEP * (band - 0.5)
    return [
        (piece, lowest if len(piece) == 1 and score <= ceiling else score)
        for piece, score in learned
    ]
