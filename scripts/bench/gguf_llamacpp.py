"""`llmtrain export gguf` checked against real llama.cpp: its token ids equal transformers' and
its greedy completions equal ours.

    python scripts/bench/gguf_llamacpp.py [--workdir runs/bench/gguf] [--steps 800]

1. llama.cpp: the sources shipped in the llama-cpp-python sdist (`pip download`), a CPU build
   of `llama-tokenize` and `llama-simple` (greedy completion) with cmake, cached under
   runs/bench-cache/ (gitignored; about 8 minutes on 2 cores the first time).
2. A small model trained here, through our own code where it matters: the tokenizer by the
   tokenizer stage with the recipe defaults (the default split: llama.cpp's `qwen2`), on the
   Python standard library's docs and source and arithmetic; a 4-layer Llama trained for
   --steps steps on arithmetic chats (ChatML); final/ written by RunDir.save_final; then
   `export_gguf` to f32 (and f16, q8_0 for the completions).
3. Token ids of held-out texts (chat-rendered prompts with special tokens, docs paragraphs
   and source files not trained on, and edge cases: whitespace runs, numbers, contractions,
   CRLF, scripts other than Latin), `llama-tokenize --ids` against `tokenizer(text)`.
4. Greedy completions of held-out arithmetic chat prompts, `llama-simple -n N` against
   `model.generate(do_sample=False, max_new_tokens=N)`: identical texts, and the exact-match
   accuracy of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

LLAMA_CPP_PYTHON = "0.3.36"
"""The llama-cpp-python sdist whose vendored llama.cpp is built."""
TARGETS = ("llama-tokenize", "llama-simple")
EDGE_CASES = [
    "x = 12345 + 678",
    "I'LL say it's 3.14159, don't you think? They've gone; we'd\tleave.",
    "def f(x):\r\n\tif x:\r\n\t\treturn  x  +  1\n        # eight spaces   \n\n\n    pass\n",
    "   leading and trailing spaces   ",
    "naïve café, Straße, façade — 分词器必须能够无损地还原每一个字符串。",
    "トークナイザーは日本語も扱います。Эмодзи тоже: 😀🎉👩‍💻 🇫🇷",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b <|pad|> c",
    "٣٤٥ ٦٧ and ½ ² ⅞ numbers",
    "",
]


# ---------------------------------------------------------------------------------------------
# llama.cpp


def llama_cpp_binaries(cache: Path) -> dict[str, Path]:
    """Build (once) and return {target: path} of the llama.cpp tools."""
    source = cache / f"llama.cpp-{LLAMA_CPP_PYTHON}"
    binaries = {t: source / "build" / "bin" / t for t in TARGETS}
    if all(b.is_file() for b in binaries.values()):
        return binaries
    if not (source / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp],
                check=True,
            )  # fmt: skip
            (sdist,) = Path(tmp).glob("*.tar.gz")
            with tarfile.open(sdist) as tar:
                tar.extractall(tmp, filter="data")
            vendored = Path(tmp) / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
            shutil.copytree(vendored, source)
    start = time.perf_counter()
    subprocess.run(
        ["cmake", "-S", str(source), "-B", str(source / "build"), "-DCMAKE_BUILD_TYPE=Release",
         "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DGGML_NATIVE=ON"],
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["cmake", "--build", str(source / "build"), "-j2", "--target", *TARGETS], check=True
    )
    print(f"built llama.cpp ({', '.join(TARGETS)}) in {time.perf_counter() - start:.0f} s")
    return binaries


def llama_tokenize(binary: Path, gguf: Path, text: str, tmp: Path) -> list[int]:
    path = tmp / "text.txt"
    path.write_bytes(text.encode("utf-8"))
    result = subprocess.run(
        [str(binary), "-m", str(gguf), "-f", str(path), "--ids", "--no-escape", "--log-disable"],
        capture_output=True,
        check=True,
    )
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def llama_complete(binary: Path, gguf: Path, prompt: str, max_new_tokens: int) -> str:
    """llama-simple's output (the prompt, then the greedy completion, then a line break of its
    own) minus the prompt and that line break."""
    result = subprocess.run(
        [str(binary), "-m", str(gguf), "-n", str(max_new_tokens), prompt],
        capture_output=True,
        check=True,
    )
    text = result.stdout.decode("utf-8", errors="replace")  # as tokenizer.decode does
    if not text.startswith(prompt) or not text.endswith("\n"):
        raise RuntimeError(f"unexpected llama-simple output: {text[:200]!r}")
    return text[len(prompt) : -1]


# ---------------------------------------------------------------------------------------------
# the model


def write_corpus(path: Path, problems: list) -> tuple[list[str], list[str]]:
    """Tokenizer corpus (docs, source, arithmetic); returns held-out (docs, source) texts."""
    from llmtrain.data_pipeline.arithmetic import pretraining_text
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents

    docs = list(iter_documents("docs", max_bytes=700_000))
    source = list(iter_documents("source", max_bytes=400_000))
    train_docs, held_docs = docs[: len(docs) * 2 // 3], docs[len(docs) * 2 // 3 :]
    train_source, held_source = source[: len(source) // 2], source[len(source) // 2 :]
    with open(path, "w", encoding="utf-8") as f:
        for text in [*train_docs, *train_source, pretraining_text(problems)]:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return held_docs, held_source


def train_tokenizer(workdir: Path, corpus: Path, vocab: int) -> Path:
    from llmtrain.recipe import validate_recipe
    from llmtrain.tokenizer.train import run_tokenizer

    recipe = validate_recipe(
        {
            "name": "gguf-bench",
            "output_dir": str(workdir),
            "tokenizer": {"sources": [{"paths": [str(corpus)]}], "vocab_size": vocab},
        }
    )
    return run_tokenizer(recipe, overwrite=True)


def train_model(workdir: Path, tokenizer_dir: Path, problems: list, steps: int):
    """A 4-layer Llama trained on chat-rendered arithmetic; final/ by RunDir.save_final."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    from llmtrain.chat import end_of_turn_token_id
    from llmtrain.data_pipeline.arithmetic import sft_record
    from llmtrain.rundir import RunDir

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [
        tokenizer.apply_chat_template(sft_record(p)["messages"], tokenize=False) for p in problems
    ]
    stream = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    seq = 128
    data = torch.tensor(stream[: len(stream) // (seq + 1) * (seq + 1)]).view(-1, seq + 1)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        use_cache=False,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        batch = data[torch.randint(len(data), (16,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step}: loss {loss.item():.3f}", flush=True)
    print(f"trained {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"{steps} steps in {time.perf_counter() - start:.0f} s")  # fmt: skip
    end_of_turn = end_of_turn_token_id(tokenizer)

    def writer(tmp: Path) -> None:
        model.generation_config = GenerationConfig(
            eos_token_id=[end_of_turn, tokenizer.eos_token_id],
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return RunDir(workdir / "sft").save_final(writer)


def greedy_completions(final: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmtrain.chat import end_of_turn_token_id

    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    # llama.cpp stops at every end-of-generation token of the GGUF: eos and end of turn
    stops = {*([eos] if isinstance(eos, int) else eos or []), tokenizer.eos_token_id}
    stops.add(end_of_turn_token_id(tokenizer))
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            new = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens)[
                0, ids.shape[1] :
            ]
            new = [int(t) for t in new]
            new = new[: next((i for i, t in enumerate(new) if t in stops), len(new))]
            out.append(tokenizer.decode(new))
    return out


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench" / "gguf")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-cache")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--retrain", action="store_true", help="train again even if the workdir holds a model"
    )
    parser.add_argument(
        "--model", type=Path, help="compare this model directory instead of training one"
    )
    parser.add_argument(
        "--prompts-file",
        type=Path,
        help="held-out prompts, jsonl of {prompt: messages, answer} (the demo's "
        "eval_arithmetic.jsonl); default: the held-out arithmetic problems",
    )
    args = parser.parse_args()

    import gguf
    from transformers import AutoTokenizer

    from llmtrain.data_pipeline.arithmetic import (
        make_problems,
        read_answer,
        split_problems,
        user_message,
    )
    from llmtrain.train.export.gguf_export import export_gguf

    args.workdir.mkdir(parents=True, exist_ok=True)
    binaries = llama_cpp_binaries(args.cache)
    problems = make_problems(1000, seed=0)  # all 882 with operands up to 20
    train, held_out = split_problems(problems, args.prompts)
    corpus = args.workdir / "corpus.jsonl"
    held_docs, held_source = write_corpus(corpus, train)
    final = args.model or args.workdir / "sft" / "final"
    if args.model:
        print(f"comparing {final}")
    elif args.retrain or not final.is_dir():
        shutil.rmtree(args.workdir / "sft", ignore_errors=True)
        tokenizer_dir = train_tokenizer(args.workdir, corpus, args.vocab)
        final = train_model(args.workdir, tokenizer_dir, train, args.steps)
    else:
        print(f"reusing {final} (--retrain to train again)")
    tokenizer = AutoTokenizer.from_pretrained(final)
    name = final.resolve().parent.name if args.model else "model"
    files = {
        t: export_gguf(final, args.workdir / f"{name}-{t}.gguf", t) for t in ("f32", "f16", "q8_0")
    }
    pre = gguf.GGUFReader(files["f32"]).fields["tokenizer.ggml.pre"].contents()
    print(f"exported {final} -> {', '.join(map(str, files.values()))}; pre-tokenizer {pre}")

    if args.prompts_file:
        records = [json.loads(line) for line in args.prompts_file.read_text().splitlines()]
        conversations = [r["prompt"] for r in records]
        answers = [int(r["answer"]) for r in records]
    else:
        conversations = [[user_message(p)] for p in held_out]
        answers = [p.answer for p in held_out]
    chats = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        for c in conversations
    ]
    texts = {
        "chat prompts": chats[:40],
        "docs paragraphs": [p for d in held_docs for p in d.split("\n\n") if p.strip()][:60],
        "source files": [s[:4000] for s in held_source[:20]],
        "source lines": [line for s in held_source for line in s.splitlines() if line][:40],
        "edge cases": EDGE_CASES,
    }
    total = same = 0
    with tempfile.TemporaryDirectory() as tmp:
        for kind, group in texts.items():
            equal = 0
            first_diff = None
            for text in group:
                ours = tokenizer(text)["input_ids"]
                theirs = llama_tokenize(binaries["llama-tokenize"], files["f32"], text, Path(tmp))
                equal += ours == theirs
                if ours != theirs and first_diff is None:
                    first_diff = (text[:80], ours[:20], theirs[:20])
            total, same = total + len(group), same + equal
            print(f"token ids, {kind}: {equal}/{len(group)} identical"
                  + (f"; first difference {first_diff}" if first_diff else ""))  # fmt: skip
    print(f"token ids: {same}/{total} texts identical")

    start = time.perf_counter()
    ours = greedy_completions(final, chats, args.max_new_tokens)
    print(f"transformers greedy: {time.perf_counter() - start:.0f} s")
    ours_correct = sum(read_answer(c) == a for c, a in zip(ours, answers, strict=True))
    print(f"transformers exact match: {ours_correct}/{len(chats)}")
    for out_type, path in files.items():
        start = time.perf_counter()
        theirs = [
            llama_complete(binaries["llama-simple"], path, c, args.max_new_tokens) for c in chats
        ]
        correct = sum(read_answer(c) == a for c, a in zip(theirs, answers, strict=True))
        identical = sum(a == b for a, b in zip(ours, theirs, strict=True))
        diff = next(((a, b) for a, b in zip(ours, theirs, strict=True) if a != b), None)
        print(f"llama.cpp {out_type}: completions identical to transformers {identical}/"
              f"{len(chats)}, exact match {correct}/{len(chats)} (transformers {ours_correct}), "
              f"{time.perf_counter() - start:.0f} s" + (f"; first difference {diff}" if diff else ""))  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
