"""An Ollama Modelfile beside an exported GGUF: `ollama create NAME -f Modelfile`.

Ollama renders prompts with Go templates, not Jinja: the built-in ChatML template is written
out in Go; any other chat template is left to Ollama, which reads the GGUF's
tokenizer.chat_template. The stop tokens are the tokenizer's eos and the end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path

from llmtrain.chat import CHATML, end_of_turn_token_id

GO_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)


def write_modelfile(model_dir: str | Path, gguf_path: str | Path) -> Path:
    from transformers import AutoTokenizer

    model_dir, gguf_path = Path(model_dir), Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lines = [f"FROM ./{gguf_path.name}"]
    if tokenizer.chat_template == CHATML:
        lines.append(f'TEMPLATE """{GO_CHATML}"""')
    stops = [end_of_turn_token_id(tokenizer), tokenizer.eos_token_id]
    for token_id in dict.fromkeys(i for i in stops if i is not None):
        lines.append(f'PARAMETER stop "{tokenizer.convert_ids_to_tokens(token_id)}"')
    path = gguf_path.parent / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
