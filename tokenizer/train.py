"""`llmtrain tokenizer RECIPE`: train the recipe's tokenizer and write its directory.

The directory (`tokenizer.output_dir`, default <output_dir>/tokenizer) is written under a
temporary name and renamed when complete. It holds what `save_pretrained` writes
(tokenizer.json, tokenizer_config.json with the special tokens and the chat template),
tokenizer.model with the sentencepiece backend, and report.json.

An existing directory trained with the same settings (the `tokenizer` section and the seed) is
left as it is; one trained with other settings is replaced only with `--overwrite`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from llmtrain.atomic import atomic_path, atomic_write_json
from llmtrain.errors import RunDirError

from .config import (
    TokenizerSection,
    named_special_tokens,
    reserved_tokens,
    special_token_list,
    uses_unk,
)

log = logging.getLogger(__name__)

REPORT = "report.json"
FORMAT_VERSION = 1


def run_tokenizer(recipe: Any, overwrite: bool = False) -> Path:
    """Train and write the tokenizer of `recipe`; return its directory."""
    section: TokenizerSection = recipe.section("tokenizer")
    recipe.check_inputs("tokenizer")
    out = section.output_path(recipe)
    fingerprint = recipe.fingerprint("seed", "tokenizer")
    settings = {"seed": recipe.seed, **section.model_dump(mode="json")}
    if _up_to_date(out, settings, fingerprint, overwrite):
        log.info("%s already holds a tokenizer trained with these settings", out)
        print(f"tokenizer: {out} is up to date (same settings); --overwrite trains it again")
        return out
    _remove_stale_temporaries(out)

    from .assemble import check_chat_template
    from .hf import check_pattern

    where = f"{recipe.source}: " if recipe.source else ""
    check_pattern(section, where)
    check_chat_template(section, where)
    trained = train(section, recipe.seed)
    report = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "settings": settings,
        **trained.report,
    }
    with atomic_path(out) as tmp:
        trained.tokenizer.save_pretrained(str(tmp), save_jinja_files=False)
        if trained.sentencepiece_model is not None:
            (tmp / "tokenizer.model").write_bytes(trained.sentencepiece_model)
        atomic_write_json(tmp / REPORT, report)
    _print_summary(out, report)
    return out


@dataclass
class Trained:
    """A trained tokenizer (transformers), its SentencePiece model if any, and its report."""

    tokenizer: Any
    sentencepiece_model: bytes | None
    report: dict


def train(section: TokenizerSection, seed: int) -> Trained:
    """Read the corpus, train, round the vocabulary, measure on the held-out documents."""
    from . import hf, spm
    from .assemble import mark_user_defined, pad_vocabulary, set_post_processor, to_transformers
    from .corpus import Corpus
    from .measure import agreement, measure

    specials = special_token_list(section)
    unk = section.special_tokens.unk if uses_unk(section) else None
    corpus = Corpus(section, seed)
    log.info(
        "training a %s tokenizer (%s) of %d tokens on %d source(s), %d file(s)",
        section.algorithm,
        section.backend,
        section.vocab_size,
        len(corpus.files),
        sum(len(files) for files in corpus.files),
    )
    start = time.perf_counter()
    model_bytes = None
    if section.backend == "sentencepiece":
        backend, model_bytes = spm.train(section, corpus.training_texts(), specials, seed)
    else:
        backend = hf.train(section, corpus.training_texts, specials, unk)
        backend = mark_user_defined(backend, section.special_tokens.user_defined)
    train_seconds = time.perf_counter() - start

    trained_size = backend.get_vocab_size(with_added_tokens=True)
    if trained_size < section.vocab_size:
        log.warning(
            "the corpus gave only %d of the %d tokens asked for; add text for a larger vocabulary",
            trained_size,
            section.vocab_size,
        )
    padding = pad_vocabulary(
        backend, section.pad_vocab_to_multiple_of, section.special_tokens.reserved
    )
    set_post_processor(backend, section)
    tokenizer = to_transformers(backend, section)

    report: dict[str, Any] = {
        "algorithm": section.algorithm,
        "backend": section.backend,
        "vocab_size": len(tokenizer),
        "requested_vocab_size": section.vocab_size,
        "trained_vocab_size": trained_size,
        "padding_tokens": len(padding),
        "train_seconds": round(train_seconds, 3),
        "special_tokens": named_special_tokens(section),
        "special_token_ids": {token: backend.token_to_id(token) for token in [*specials, *padding]},
        "corpus": [stats.to_dict() for stats in corpus.stats],
    }
    heldout = corpus.heldout
    if heldout:
        backend_tok = tokenizer.backend_tokenizer
        report["heldout"] = measure(backend_tok, heldout, tokenizer.unk_token_id)
        if model_bytes is not None:
            report["sentencepiece_agreement"] = agreement(
                backend_tok, spm.processor(model_bytes), heldout
            )
    else:
        report["heldout"] = None
        log.warning(
            "no document was held out (heldout_fraction %s); measure the tokenizer with "
            "`llmtrain tokenizer eval`",
            section.heldout_fraction,
        )
    report["versions"] = {
        name: version(name) for name in ("tokenizers", "transformers", "sentencepiece")
    }
    report["reserved_tokens"] = reserved_tokens(0, section.special_tokens.reserved) + padding
    return Trained(tokenizer, model_bytes, report)


def _up_to_date(out: Path, settings: dict, fingerprint: str, overwrite: bool) -> bool:
    """True when `out` holds a tokenizer with these settings (and no --overwrite); raise when
    it holds anything else and --overwrite was not given."""
    if not out.exists():
        return False
    if not _is_tokenizer_dir(out):
        raise RunDirError(
            f"tokenizer: {out} exists and is not a tokenizer directory; refusing to replace "
            "it: set tokenizer.output_dir to another path, or remove it"
        )
    if overwrite:
        return False
    previous = _read_report(out)
    if previous.get("fingerprint") == fingerprint:
        return True
    before = previous.get("settings") or {}
    changed = [key for key in settings if before.get(key) != settings[key]]
    detail = f" (changed: {', '.join(changed)})" if before and changed else ""
    raise RunDirError(
        f"tokenizer: {out} already holds a tokenizer trained with other settings{detail}; "
        "pass --overwrite to replace it, or set tokenizer.output_dir to write elsewhere"
    )


def _is_tokenizer_dir(path: Path) -> bool:
    """A directory this stage wrote (or an empty one, or one holding only run's marker)."""
    if not path.is_dir():
        return False
    if (path / "tokenizer.json").is_file() or (path / REPORT).is_file():
        return True
    return all(p.name == ".pipeline.json" for p in path.iterdir())


def _read_report(path: Path) -> dict:
    try:
        return json.loads((path / REPORT).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _remove_stale_temporaries(out: Path) -> None:
    """Temporaries of a run that was killed before its rename."""
    if out.parent.is_dir():
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)


def _print_summary(out: Path, report: dict) -> None:
    held = report.get("heldout")
    line = f"tokenizer: {out} ({report['vocab_size']} tokens, trained in {report['train_seconds']:.1f} s"
    if held:
        line += (
            f"; held-out: {held['bytes_per_token']:.3f} bytes/token, "
            f"{held['tokens_per_word']:.3f} tokens/word, round trip "
            f"{'exact' if held['round_trip_exact'] else 'NOT exact'}"
        )
    print(line + ")")
