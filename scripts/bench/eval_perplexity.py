"""Bits per byte: our stream convention against lm-evaluation-harness' rolling windows.

    python scripts/bench/eval_perplexity.py --model runs/tiny-demo/pretrain/final \
        --texts runs/corpus/stdlib_docs.jsonl --max-docs 200

Same model, same documents, one process:
- ours (`eval.perplexity.files`): the documents tokenized and joined by EOS into one stream,
  cut into windows of seq_len tokens that overlap by one; every token of the stream after the
  first is predicted once (the EOS tokens too, and later documents see the end of earlier
  ones); bits per byte divide by the documents' UTF-8 bytes (the EOS tokens have none).
- lm-eval (`loglikelihood_rolling`, bits_per_byte): each document alone, after one prefix
  token (BOS, else EOS), in rolling windows of max_length tokens that overlap by one, except
  the last window of a long document, which takes a whole max_length of the tokens before as
  context; every token of the document is predicted, nothing else.
- ours per document: our window scorer on [EOS] + each document's tokens (a short last window
  keeps one token of context): equal to lm-eval's figure for documents of one window, so the
  gap between it and lm-eval is the last windows' context, the rest is the stream.
Both sides use windows of the same length: --seq-len (lm-eval's max_length), default the
model's max_position_embeddings (lm-eval's default).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import textwrap
import time
from pathlib import Path

from llmtrain.data_pipeline.readers import iter_texts
from llmtrain.train.evaluate.config import LmEvalSection
from llmtrain.train.evaluate.generation import load_causal_lm
from llmtrain.train.evaluate.harness import run_lm_eval
from llmtrain.train.evaluate.perplexity import (
    _stream_windows,
    perplexity_on_texts,
    score_windows,
)


def per_document_bits_per_byte(model, tokenizer, texts: list[str], seq_len: int) -> float:
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
    prefix = prefix if prefix is not None else tokenizer.eos_token_id
    total = 0.0
    for text in texts:
        ids = [prefix, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        nll, _ = score_windows(model, _stream_windows(ids, seq_len, batch_size=8))
        total += nll
    return total / math.log(2) / sum(len(t.encode("utf-8")) for t in texts)


def lm_eval_bits_per_byte(
    model, tokenizer, model_dir: Path, texts: list[str], seq_len: int
) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = folder / "docs.jsonl"
        data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        (folder / "ppl_convention.yaml").write_text(
            textwrap.dedent(
                f"""\
                task: ppl_convention
                dataset_path: json
                dataset_kwargs: {{data_files: {{test: {data}}}}}
                test_split: test
                output_type: loglikelihood_rolling
                doc_to_text: ""
                doc_to_target: text
                metric_list:
                  - {{metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}}
                  - {{metric: word_perplexity, aggregation: weighted_perplexity,
                     higher_is_better: false}}
                """
            )
        )
        section = LmEvalSection(
            tasks=["ppl_convention"],
            include_path=[folder],
            apply_chat_template=False,
            max_length=seq_len,
        )
        outcome = run_lm_eval(section, model, tokenizer, model_dir, chat_model=False, batch_size=8)
    return outcome["metrics"]["ppl_convention"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--texts", type=Path, required=True, help="jsonl ({'text'}) or text")
    parser.add_argument("--max-docs", type=int, default=200)
    parser.add_argument("--seq-len", type=int, help="default: the model's positions")
    args = parser.parse_args()
    texts = []
    for text in iter_texts(args.texts, text_field="text"):
        if text.strip():
            texts.append(text)
        if len(texts) >= args.max_docs:
            break
    print(f"{len(texts)} documents, {sum(len(t.encode()) for t in texts)} bytes from {args.texts}")
    print("| model | seq_len | ours (stream) | lm-eval (per document) | ours per document | "
          "ours - lm-eval |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for model_dir in args.model:
        start = time.perf_counter()
        model, tokenizer = load_causal_lm(model_dir)
        seq_len = args.seq_len or model.config.max_position_embeddings
        ours = perplexity_on_texts(model, tokenizer, texts, seq_len=seq_len)["bits_per_byte"]
        theirs = lm_eval_bits_per_byte(model, tokenizer, model_dir, texts, seq_len)
        theirs = theirs["bits_per_byte"]
        per_doc = per_document_bits_per_byte(model, tokenizer, texts, seq_len)
        print(
            f"| {model_dir} | {seq_len} | {ours:.4f} | {theirs:.4f} | {per_doc:.4f} | "
            f"{ours - theirs:+.4f} |  ({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
