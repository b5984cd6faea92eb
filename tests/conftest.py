"""Shared fixtures. Tests build their own tiny corpora, tokenizers and models: no network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# No test may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting make a loaded machine crawl (a 40x slower generate on
# 2 busy cores); passive waiting costs nothing on an idle one. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m llmtrain ARGS` in a subprocess; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "llmtrain", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe YAML (dedented) under tmp_path and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


# ---------------------------------------------------------------------------------------------
# Tiny tokenizer and model, built without the tokenizer or pretraining stages so that every
# stage's tests stand alone. Session-scoped: built once per test run.

TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(out_dir: Path, vocab_size: int = 512) -> Path:
    """A byte-level BPE on stdlib docs + arithmetic text, with the chatml template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmtrain.chat import CHATML
    from llmtrain.data_pipeline.arithmetic import make_problems, pretraining_text
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents

    texts = list(iter_documents("docs", max_bytes=300_000))
    texts.append(pretraining_text(make_problems(400, seed=0)))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHATML,
    )
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_causal_lm(tokenizer_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64) with the tokenizer saved beside it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tiny_tokenizer_dir, tmp_path_factory) -> Path:
    """A freshly initialised tiny Llama; copy it before training if a test writes into it."""
    return build_tiny_causal_lm(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def sft_arithmetic(tiny_causal_lm_dir, tmp_path_factory):
    """The tiny Llama after `align --method sft` on arithmetic chats, as (recipe, trainer);
    recipe.stage_dir("sft") / "final" is the input of the rm and dpo tests."""
    from tests.align_support import train_sft

    return train_sft(tmp_path_factory.mktemp("sft-arithmetic"), tiny_causal_lm_dir)


@pytest.fixture(scope="session")
def tokenizer_corpus(tmp_path_factory) -> Path:
    """~250 KB of jsonl ({"text"}): stdlib docs and source, arithmetic, and lines in other
    scripts, for the tokenizer stage's tests."""
    from tests.tokenizer_support import write_corpus

    return write_corpus(tmp_path_factory.mktemp("tokenizer-corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def rl_policy(tiny_causal_lm_dir, tmp_path_factory) -> Path:
    """The tiny Llama fine-tuned (plain torch) to answer small sums, ending with "The answer
    is N." only one time in five: the PPO and GRPO tests' starting policy."""
    from tests.rl_support import sft_policy

    return sft_policy(tiny_causal_lm_dir, tmp_path_factory.mktemp("rl-policy"), steps=150)
