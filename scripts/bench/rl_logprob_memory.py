"""Peak memory of the log-probabilities of sampled tokens at a real vocabulary: the full logits
(what PPO did before: logits [1, T, V], fp32 log_softmax, gather) against the fused head of
train/logprobs.py (TRL's chunked kernel: at most one 4096 x 32768 tile of logits), forward and
backward, each in its own subprocess (peak RSS from getrusage; the same model and tokens),
and the fused head again with smaller tiles of tokens (--token-tile, 0 to skip).

The model is a Llama with no decoder layer and a tied head, so its hidden states have the
real width and everything else is the head: what is measured is the log-prob part alone.

    python scripts/bench/rl_logprob_memory.py                       # vocab 128256, 2048 tokens, width 2048
    python scripts/bench/rl_logprob_memory.py --vocab 32000 --tokens 512 --width 512

fp32 on the CPU; at the defaults the full-logits run peaks near 4.5 GiB RSS (7 GiB with
--tokens 4096 --width 1024).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def measure(
    mode: str, vocab: int, tokens: int, width: int, temperature: float, token_tile: int | None
) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmtrain.train.logprobs import fuse_lm_head, response_logprobs

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=width,
        num_hidden_layers=0,
        num_attention_heads=8,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(0, vocab, (1, tokens + 1))
    attention = torch.ones_like(input_ids)
    response_mask = torch.ones(1, tokens)
    advantages = torch.randn(1, tokens)
    if mode == "fused":
        fuse_lm_head(model, temperature=temperature)
        if token_tile:  # a smaller tile than TRL's 4096 tokens (a knob of the kernel's module)
            import trl.kernels.chunked_logprob as kernel

            kernel.TOKEN_CHUNK_SIZE = token_tile
    before = rss_gib()
    start = time.perf_counter()
    if mode == "fused":
        logprobs, _ = response_logprobs(model, input_ids, attention, response_mask)
    else:  # PPO's code before train/logprobs.py
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        logits = logits[:, :-1].float() / temperature
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        del logits
    (advantages * logprobs).sum().backward()
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "peak_gib": peak_gib(),
        "before_gib": before,
        "above_gib": peak_gib() - before,
        "seconds": seconds,
        "grad_norm": float(model.lm_head.weight.grad.norm()),
        "logprob_sum": float(logprobs.detach().sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--tokens", type=int, default=2048, help="completion tokens (batch 1)")
    parser.add_argument("--width", type=int, default=2048, help="hidden size")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument(
        "--token-tile",
        type=int,
        default=512,
        help="also measure the fused head with tiles of this many tokens (0: skip)",
    )
    parser.add_argument("--mode", choices=["full", "fused"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        row = measure(
            args.mode, args.vocab, args.tokens, args.width, args.temperature, args.token_tile
        )
        print(json.dumps(row))
        return
    runs = [("full logits", "full", 0), ("fused head (chunked)", "fused", 0)]
    if args.token_tile:
        runs.append((f"fused head, {args.token_tile}-token tiles", "fused", args.token_tile))
    rows = {}
    for name, mode, tile in runs:
        command = [sys.executable, __file__, "--mode", mode, "--token-tile", str(tile)]
        for key in ("vocab", "tokens", "width", "temperature"):
            command += [f"--{key}", str(getattr(args, key))]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    full = rows["full logits"]
    print(
        f"vocab {args.vocab}, {args.tokens} completion tokens, width {args.width}, fp32, "
        "forward + backward of the sampled tokens' log-probs"
    )
    print("| | peak RSS GiB | above the model and inputs GiB | seconds |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['peak_gib']:.2f} | {row['above_gib']:.2f} | {row['seconds']:.1f} |")
    for name, row in list(rows.items())[1:]:
        print(
            f"ratio full / {name}: peak {full['peak_gib'] / row['peak_gib']:.2f}x, "
            f"above the model {full['above_gib'] / row['above_gib']:.2f}x"
        )
        same = abs(full["logprob_sum"] - row["logprob_sum"]) <= 1e-4 * abs(full["logprob_sum"])
        same &= abs(full["grad_norm"] - row["grad_norm"]) <= 1e-4 * full["grad_norm"]
        print(f"  same log-probs and head gradient norm as the full logits (rtol 1e-4): {same}")


if __name__ == "__main__":
    main()
