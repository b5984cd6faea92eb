"""`llmtrain export gguf MODEL_DIR OUT.gguf [--type f32|f16|bf16|q8_0] [--modelfile]`."""

from __future__ import annotations

import argparse

TYPES = ("f32", "f16", "bf16", "q8_0")
"""GGUF weight types (norms, biases and the MoE router stay f32 in each)."""


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    export = commands.add_parser(
        "export", help="write a model directory for another runtime (GGUF)", parents=[common]
    )
    formats = export.add_subparsers(dest="format", metavar="FORMAT", required=True)
    gguf = formats.add_parser(
        "gguf",
        help="one GGUF file for llama.cpp, Ollama, LM Studio (Llama, Qwen3, Qwen3-MoE, GPT-2)",
        parents=[common],
    )
    gguf.add_argument("model", help="Hugging Face model directory (with tokenizer)")
    gguf.add_argument("out", help="the .gguf file to write")
    gguf.add_argument(
        "--type", dest="out_type", choices=TYPES, default="f16", help="weight type (default f16)"
    )
    gguf.add_argument(
        "--modelfile",
        action="store_true",
        help="also write an Ollama Modelfile beside the GGUF (chat template, stop tokens)",
    )
    gguf.set_defaults(func=_run_gguf)


def _run_gguf(args: argparse.Namespace) -> None:
    from llmtrain.train.export.gguf_export import export_gguf

    path = export_gguf(args.model, args.out, args.out_type)
    print(f"wrote {path}")
    if args.modelfile:
        from llmtrain.train.export.modelfile import write_modelfile

        print(f"wrote {write_modelfile(args.model, path)}")
