"""Chat templates shared by the tokenizer stage (saved with the tokenizer) and alignment stages.

`{% generation %}` marks assistant text, so `apply_chat_template(...,
return_assistant_tokens_mask=True)` can tell which tokens an SFT loss trains on.
"""

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
