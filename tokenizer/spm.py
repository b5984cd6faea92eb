"""The `sentencepiece` backend: train a BPE or Unigram model with SentencePiece, keep its
`tokenizer.model`, and convert it to a `tokenizers` pipeline that encodes the same ids.

Training settings keep text intact: identity normalisation (or NFKC), no collapsing of
whitespace runs, whitespace-only pieces allowed (indentation becomes a few tokens), no dummy
prefix, byte fallback. Documents are passed whole (newlines included, so pieces such as
"):\\n" are learned).

Why our own conversion: transformers 5 converts a directory holding only tokenizer.model with
`SpmConverter.build_tokenizer_from_spm_proto`, which has no pre-tokenizer, so a BPE merge can
cross the word boundaries SentencePiece keeps (a run of spaces merging into the next run) and
ids can differ. We write tokenizer.json ourselves with SentencePiece's word split, so
AutoTokenizer loads it directly as a fast tokenizer, and report.json records how many held-out
documents the two encode identically.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable

import sentencepiece
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Tokenizer, models, normalizers

from llmtrain.errors import InputDataError, RecipeError

from .config import TokenizerSection, named_special_tokens
from .hf import SPACE, spm_decoder, spm_pre_tokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MAX_SENTENCE_BYTES = 1 << 30  # SentencePiece's upper limit; it skips longer documents
THREADS = 16
"""SentencePiece's threads, fixed: its Unigram trainer splits the work (and sums floats) by
thread, so the pieces and scores depend on the thread count (and tokenizer.model records it).
A fixed count gives the same tokenizer on every machine; more threads than cores costs little."""


def train(
    section: TokenizerSection, texts: Iterable[str], specials: list[str], seed: int
) -> tuple[Tokenizer, bytes]:
    """Train with SentencePiece; return the converted tokenizer and the tokenizer.model bytes.

    The special tokens keep the ids of `specials` (pad/eos/bos/unk as SentencePiece's meta
    pieces, the rest as control symbols, user_defined as user-defined symbols).
    """
    named = named_special_tokens(section)
    user_defined = section.special_tokens.user_defined
    position = {token: index for index, token in enumerate(specials)}
    meta = {
        role: (position[named[f"{role}_token"]], named[f"{role}_token"])
        if f"{role}_token" in named
        else (-1, None)
        for role in ("pad", "eos", "bos", "unk")
    }
    meta_tokens = {token for _, token in meta.values() if token}
    control = [t for t in specials if t not in meta_tokens and t not in user_defined]
    options: dict = {
        "model_type": section.algorithm,
        "vocab_size": section.vocab_size,
        "character_coverage": section.character_coverage,
        "normalization_rule_name": "nfkc" if section.normalization == "nfkc" else "identity",
        "remove_extra_whitespaces": False,
        "allow_whitespace_only_pieces": True,
        "split_by_whitespace": True,
        "add_dummy_prefix": False,
        "byte_fallback": True,
        "split_digits": section.digits == "single",
        "max_sentence_length": MAX_SENTENCE_BYTES,
        "max_sentencepiece_length": section.max_token_length or 16,
        "input_sentence_size": 0,  # every document given (sampling is ours, seeded)
        "shuffle_input_sentence": False,
        "control_symbols": control,
        "user_defined_symbols": list(user_defined),
        "num_threads": THREADS,
        "minloglevel": 2,
    }
    for role, (index, token) in meta.items():
        options[f"{role}_id"] = index
        if token is not None:
            options[f"{role}_piece"] = token
    sentencepiece.set_random_generator_seed(seed)
    model = io.BytesIO()
    documents = _Remembering(texts)
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=documents, model_writer=model, **options
        )
    except RuntimeError as exc:
        if documents.error is not None:  # SentencePiece wraps it into a RuntimeError
            raise documents.error from None
        raise _explain(exc) from None
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    _check_ids(proto, specials)
    return convert(proto, specials, user_defined), model.getvalue()


class _Remembering:
    """An iterator that keeps the exception its source raised (e.g. a malformed record)."""

    def __init__(self, texts: Iterable[str]):
        self.texts = iter(texts)
        self.error: BaseException | None = None

    def __iter__(self) -> _Remembering:
        return self

    def __next__(self) -> str:
        try:
            return next(self.texts)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise


def _explain(exc: RuntimeError) -> Exception:
    message = str(exc)
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*?<= (\d+)", message)
    if too_high:
        return InputDataError(
            f"tokenizer.vocab_size: the corpus is too small for {too_high[1]} tokens; "
            f"sentencepiece can learn at most {too_high[2]} from it: lower vocab_size or add text"
        )
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        return RecipeError(
            f"tokenizer.vocab_size: {too_small[1]} is smaller than the special tokens plus the "
            f"characters sentencepiece must keep ({too_small[2]}); set vocab_size to at least "
            f"{too_small[2]}, or lower character_coverage"
        )
    return RuntimeError(f"sentencepiece training failed: {message}")


def _check_ids(proto, specials: list[str]) -> None:
    for index, token in enumerate(specials):
        if proto.pieces[index].piece != token:
            raise RuntimeError(
                f"sentencepiece gave {token!r} id {index}'s place to {proto.pieces[index].piece!r}"
            )


def convert(proto, specials: list[str], user_defined: list[str]) -> Tokenizer:
    """A `tokenizers` pipeline encoding like the SentencePiece model in `proto`."""
    # plain tuples: protobuf attribute access is slow in the loops below
    pieces = [(p.piece, p.type, p.score) for p in proto.pieces]
    scored = [score for _, kind, score in pieces if kind == NORMAL]
    floor = min(scored, default=0.0) - 10.0
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE:
        vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
        merges = []
        for i, (piece, kind, score) in enumerate(pieces):
            if kind != NORMAL:
                continue
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in vocab and right in vocab:
                    merges.append((-score, i, left, right))
        merges.sort()  # SentencePiece merges the pair whose result scores highest first
        model = models.BPE(
            vocab=vocab,
            merges=[(left, right) for _, _, left, right in merges],
            unk_token=proto.trainer_spec.unk_piece,
            fuse_unk=True,
            byte_fallback=True,
        )
    else:
        vocab_scores = [
            (piece, score if kind == NORMAL else floor) for piece, kind, score in pieces
        ]
        model = models.Unigram(vocab_scores, unk_id=proto.trainer_spec.unk_id, byte_fallback=True)
    tokenizer = Tokenizer(model)
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps.append(normalizers.Replace(" ", SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = spm_pre_tokenizer(
        "single" if proto.trainer_spec.split_digits else "runs"
    )
    tokenizer.decoder = spm_decoder()
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials if t not in user_defined]
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    return tokenizer


def processor(model_bytes: bytes) -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
