"""Chat templates shared by the tokenizer stage (saved with the tokenizer) and alignment stages.

`{% generation %}` marks assistant text, so `apply_chat_template(...,
return_assistant_tokens_mask=True)` can tell which tokens an SFT loss trains on.
"""

from __future__ import annotations

from typing import Any

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
"""The special tokens the chatml template uses; the tokenizer must have them."""

CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}{{ message['content'] + '<|im_end|>' }}{%- endgeneration -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

BUILTIN_TEMPLATES = {"chatml": CHATML}


def end_of_turn_token_id(tokenizer: Any, template: str | None = None) -> int | None:
    """The special token that closes an assistant turn: the first special token `template`
    (default: the tokenizer's own chat template) renders after the assistant's text (ChatML
    `<|im_end|>`, Llama 3 `<|eot_id|>`, Gemma `<end_of_turn>`). None without a template, or
    when an assistant turn ends in no special token. The one place the stop token is derived:
    sampling in PPO/GRPO, eval's generation and the generation_config of every final/."""
    if template is None:
        template = tokenizer.chat_template
    if not isinstance(template, str):
        return None
    probe = "Zq7"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
        chat_template=template,
        tokenize=False,
    )
    after = text[text.rfind(probe) + len(probe) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {
        index for index, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    return next((token_id for token_id in ids if token_id in special), None)


def stop_token_ids(tokenizer: Any, template: str | None = None) -> list[int]:
    """Where generation stops: eos and the template's end-of-turn token (sorted, no repeats)."""
    ids = [tokenizer.eos_token_id, end_of_turn_token_id(tokenizer, template)]
    return sorted({i for i in ids if i is not None})
