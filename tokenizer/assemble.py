"""From a trained `tokenizers.Tokenizer` to a Hugging Face tokenizer: user-defined tokens,
vocabulary rounding, bos / cls-sep post-processing, named special tokens, chat template."""

from __future__ import annotations

import json
from typing import Any

from tokenizers import AddedToken, Tokenizer, processors

from llmtrain.chat import BUILTIN_TEMPLATES
from llmtrain.errors import RecipeError

from .config import (
    TokenizerSection,
    extra_special_tokens,
    named_special_tokens,
    round_up,
)

SAMPLE_CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
]


def chat_template(section: TokenizerSection) -> str | None:
    if section.chat_template is None:
        return None
    return BUILTIN_TEMPLATES.get(section.chat_template, section.chat_template)


def check_chat_template(section: TokenizerSection, where: str = "") -> None:
    """Render a sample conversation with the recipe's template before any training."""
    template = chat_template(section)
    if template is None:
        return
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast

    probe = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"x": 0}, unk_token="x")),
        chat_template=template,
    )
    try:
        probe.apply_chat_template(SAMPLE_CHAT, tokenize=False)
    except Exception as exc:  # jinja2 raises TemplateSyntaxError, UndefinedError, ...
        raise RecipeError(
            f"{where}tokenizer.chat_template: the template cannot render a conversation "
            f"({type(exc).__name__}: {exc}); fix the Jinja, or use chat_template: chatml"
        ) from None


def mark_user_defined(backend: Tokenizer, user_defined: list[str]) -> Tokenizer:
    """Trainers add every given token as special; user-defined ones are ordinary text."""
    if not user_defined:
        return backend
    spec = json.loads(backend.to_str())
    for token in spec["added_tokens"]:
        if token["content"] in user_defined:
            token["special"] = False
    return Tokenizer.from_str(json.dumps(spec))


def pad_vocabulary(backend: Tokenizer, multiple: int, first_reserved: int) -> list[str]:
    """Append reserved special tokens until the size is a multiple of `multiple`."""
    size = backend.get_vocab_size(with_added_tokens=True)
    vocab = backend.get_vocab(with_added_tokens=True)
    names: list[str] = []
    number = first_reserved
    while size + len(names) < round_up(size, multiple):
        name = f"<|reserved_{number}|>"
        number += 1
        if name not in vocab:
            names.append(name)
    backend.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    return names


def set_post_processor(backend: Tokenizer, section: TokenizerSection) -> None:
    """BERT-style [CLS] A [SEP] (B [SEP]); bos is left to transformers' add_bos_token."""
    if not section.add_cls_sep:
        return
    cls, sep = section.special_tokens.cls, section.special_tokens.sep
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )


def to_transformers(backend: Tokenizer, section: TokenizerSection) -> Any:
    """The PreTrainedTokenizerFast (TokenizersBackend) saved as the tokenizer directory."""
    from transformers import PreTrainedTokenizerFast

    kwargs: dict[str, Any] = dict(named_special_tokens(section))
    if section.add_bos:
        kwargs["add_bos_token"] = True
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        extra_special_tokens=extra_special_tokens(section),
        chat_template=chat_template(section),
        clean_up_tokenization_spaces=False,
        **kwargs,
    )
