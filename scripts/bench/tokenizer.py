"""Tokenizer training: our stage vs the backend trainer called directly, compression on Python
source, and peak memory with and without the sample cap.

    python scripts/bench/tokenizer.py overhead      # ours vs tokenizers / sentencepiece direct
    python scripts/bench/tokenizer.py compression   # bytes/token table, round trip checked
    python scripts/bench/tokenizer.py memory        # peak RSS, two corpus sizes, cap or not

The corpus is Python source: the standard library, then this interpreter's site-packages,
file by file, until --train-mb + --heldout-mb MB; each file goes to the held-out split with
probability heldout/(train+heldout) (a hash of its index), so both splits mix every package.
It is written once under --workdir and reused.

`overhead`: `llmtrain.tokenizer.train.run_tokenizer` (read the jsonl through the stage's
readers, train, round the vocabulary, save the directory and report.json) against the same
trainer configured by hand on the same documents (json.loads per line, train_from_iterator /
SentencePieceTrainer.train, save). Same settings: the default byte-level BPE (our split regex,
single digits, the same special tokens) or SentencePiece with our lossless options. Ours runs
with heldout_fraction 0 so both train on exactly the same documents; each side runs
--repeats times, alternating which goes first; the best times and the overhead within each
back-to-back pair (and its median) are printed.

`compression`: each tokenizer trained on the train split at --vocab, then bytes per token and
exact round trip (decode(encode(x)) == x) on the held-out split. --only picks rows (by their
number in the list, from 0); --subsample-mb trains on a seeded sample of the train split (for
trainers too slow for all of it), measured on the same held-out split.

`memory`: each run in its own subprocess (so ru_maxrss is its own peak): our stage on a
seeded sample of about A MB of the train split and on the B MB of it (the same mix of
packages), without and with `max_chars` (--cap-mb).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SPECIALS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


# ---------------------------------------------------------------------------------------------
# corpus


def python_corpus(workdir: Path, train_mb: float, heldout_mb: float) -> tuple[Path, Path]:
    """(train.jsonl, heldout.jsonl) of Python source, built once."""
    from llmtrain.data_pipeline.stdlib_corpus import iter_documents, stdlib_root

    name = f"python-{train_mb:g}mb-{heldout_mb:g}mb"
    train, heldout = workdir / f"{name}-train.jsonl", workdir / f"{name}-heldout.jsonl"
    if train.is_file() and heldout.is_file():
        return train, heldout
    workdir.mkdir(parents=True, exist_ok=True)
    roots = [stdlib_root(), Path(sysconfig.get_paths()["purelib"])]
    share = heldout_mb / (train_mb + heldout_mb)
    sizes = {"train": 0, "heldout": 0}
    limits = {"train": train_mb * 1e6, "heldout": heldout_mb * 1e6}
    with open(train, "w") as f_train, open(heldout, "w") as f_held:
        for index, text in enumerate(iter_documents("source", roots=roots)):
            digest = hashlib.blake2b(str(index).encode(), digest_size=8).digest()
            split = "heldout" if int.from_bytes(digest, "little") / 2**64 < share else "train"
            if sizes[split] >= limits[split]:
                split = "train" if split == "heldout" else "heldout"
                if sizes[split] >= limits[split]:
                    break
            (f_held if split == "heldout" else f_train).write(json.dumps({"text": text}) + "\n")
            sizes[split] += len(text.encode("utf-8"))
    if sizes["train"] < limits["train"]:
        sys.exit(f"only {sizes['train'] / 1e6:.1f} MB of Python source found for the train split")
    print(
        f"corpus: {train} ({sizes['train'] / 1e6:.1f} MB), {heldout} ({sizes['heldout'] / 1e6:.1f} MB)"
    )
    return train, heldout


def read_texts(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


# ---------------------------------------------------------------------------------------------
# the three ways of training


def recipe(out: Path, corpus: Path, vocab: int, **settings):
    from llmtrain.recipe import validate_recipe

    section = {
        "sources": [{"paths": [str(corpus)], **settings.pop("source", {})}],
        "vocab_size": vocab,
        "heldout_fraction": 0,
        "output_dir": str(out),
        **settings,
    }
    return validate_recipe({"name": "bench", "output_dir": str(out.parent), "tokenizer": section})


def train_ours(out: Path, corpus: Path, vocab: int, **settings) -> float:
    from llmtrain.tokenizer.train import run_tokenizer

    start = time.perf_counter()
    run_tokenizer(recipe(out, corpus, vocab, **settings), overwrite=True)
    return time.perf_counter() - start


def train_tokenizers_direct(out: Path, corpus: Path, vocab: int, pattern: str | None) -> float:
    """A byte-level BPE with `tokenizers` alone; pattern None: ByteLevel's own GPT-2 regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    start = time.perf_counter()
    tokenizer = Tokenizer(models.BPE())
    if pattern is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(read_texts(corpus), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    return time.perf_counter() - start


def spm_options(model_type: str, vocab: int, lossless: bool) -> dict:

    if not lossless:  # SentencePiece's own defaults (nmt_nfkc, whitespace collapsed)
        return {"model_type": model_type, "vocab_size": vocab, "byte_fallback": True}
    return {
        "model_type": model_type,
        "vocab_size": vocab,
        "character_coverage": 0.9999,
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "allow_whitespace_only_pieces": True,
        "split_by_whitespace": True,
        "add_dummy_prefix": False,
        "byte_fallback": True,
        "split_digits": True,
        "max_sentence_length": 1 << 30,
        "max_sentencepiece_length": 16,
        "input_sentence_size": 0,
        "shuffle_input_sentence": False,
        "pad_id": 0,
        "pad_piece": SPECIALS[0],
        "eos_id": 1,
        "eos_piece": SPECIALS[1],
        "bos_id": -1,
        "unk_id": 2,
        "control_symbols": SPECIALS[2:],
        "num_threads": 16,  # as the stage (llmtrain.tokenizer.spm.THREADS)
        "minloglevel": 2,
    }


def train_spm_direct(out: Path, corpus: Path, vocab: int, model_type: str, lossless: bool) -> float:
    import sentencepiece

    start = time.perf_counter()
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(1234)  # what the stage sets (the recipe's seed)
    options = spm_options(model_type, vocab, lossless)
    if not lossless:
        options["max_sentence_length"] = 1 << 30  # whole files, as for the others
        options["minloglevel"] = 2
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=read_texts(corpus), model_writer=model, **options
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# measuring


def measure_dir(out: Path, heldout: Path) -> dict:
    """bytes/token and round trip of a trained directory on the held-out documents."""
    if (out / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        from llmtrain.tokenizer.measure import measure

        return measure(Tokenizer.from_file(str(out / "tokenizer.json")), read_texts(heldout))
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    totals = {"documents": 0, "bytes": 0, "tokens": 0, "round_trip_failures": 0}
    for text in read_texts(heldout):
        ids = processor.encode(text)
        totals["documents"] += 1
        totals["bytes"] += len(text.encode("utf-8"))
        totals["tokens"] += len(ids)
        totals["round_trip_failures"] += processor.decode(ids) != text
    return {
        **totals,
        "bytes_per_token": totals["bytes"] / totals["tokens"],
        "round_trip_exact": totals["round_trip_failures"] == 0,
    }


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------------
# modes


def overhead(args) -> None:
    from llmtrain.tokenizer.config import DEFAULT_PATTERN, split_pattern

    train, _ = python_corpus(args.workdir, args.train_mb, args.heldout_mb)
    pattern = split_pattern(DEFAULT_PATTERN, "single")  # the stage's default
    cases = []
    if args.backend in ("tokenizers", "both"):
        cases.append(
            (
                "byte-level BPE (tokenizers)",
                lambda out: train_ours(out, train, args.vocab),
                lambda out: train_tokenizers_direct(out, train, args.vocab, pattern),
            )
        )
    if args.backend in ("sentencepiece", "both"):
        cases.append(
            (
                "BPE (sentencepiece)",
                lambda out: train_ours(out, train, args.vocab, backend="sentencepiece"),
                lambda out: train_spm_direct(out, train, args.vocab, "bpe", lossless=True),
            )
        )
    import transformers  # noqa: F401 - imported once up front, as by the `llmtrain` command

    for name, ours, direct in cases:
        wall: dict[str, list[float]] = {"ours": [], "direct": []}
        cpu: dict[str, list[float]] = {"ours": [], "direct": []}
        for repeat in range(args.repeats):
            order = [("ours", ours), ("direct", direct)]
            if repeat % 2:
                order.reverse()
            with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
                for label, run in order:
                    cpu_start = time.process_time()
                    wall[label].append(run(Path(tmp) / label))
                    cpu[label].append(time.process_time() - cpu_start)
                    print(
                        f"  {name} {label}: {wall[label][-1]:.1f} s wall, "
                        f"{cpu[label][-1]:.1f} s CPU",
                        flush=True,
                    )
                same = same_vocabulary(Path(tmp) / "ours", Path(tmp) / "direct")
            print(f"  same vocabulary (and merges) as the direct run: {same}", flush=True)
        for kind, times in (("wall", wall), ("CPU", cpu)):
            best = {label: min(values) for label, values in times.items()}
            print(
                f"{name}, {args.train_mb:g} MB, vocab {args.vocab}, {kind} time: ours "
                f"{best['ours']:.1f} s, direct {best['direct']:.1f} s, overhead "
                f"{100 * (best['ours'] / best['direct'] - 1):+.1f}% (best of {args.repeats}; "
                f"{machine()})",
                flush=True,
            )
            # each repeat runs both back to back: the ratio within a pair sees the same load
            pairs = sorted(o / d for o, d in zip(times["ours"], times["direct"], strict=True))
            print(
                f"  {kind}: overhead per pair "
                + ", ".join(f"{100 * (r - 1):+.1f}%" for r in pairs)
                + f"; median {100 * (statistics.median(pairs) - 1):+.1f}%",
                flush=True,
            )


def same_vocabulary(ours: Path, direct: Path) -> bool:
    """Whether both runs learned the same model: the check that the settings matched."""
    if (direct / "tokenizer.model").is_file():
        import sentencepiece

        a, b = (
            sentencepiece.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
            for d in (ours, direct)
        )
        return [a.id_to_piece(i) for i in range(a.get_piece_size())] == [
            b.id_to_piece(i) for i in range(b.get_piece_size())
        ]
    a, b = (json.loads((d / "tokenizer.json").read_text())["model"] for d in (ours, direct))
    return a["vocab"] == b["vocab"] and a["merges"] == b["merges"]


def compression(args) -> None:
    from llmtrain.tokenizer.config import split_pattern

    train, heldout = python_corpus(args.workdir, args.train_mb, args.heldout_mb)
    if args.subsample_mb:
        # a smaller training set, for trainers too slow for the full one; the same held-out
        part = args.workdir / f"python-sample-{args.subsample_mb:g}mb-of-{args.train_mb:g}mb.jsonl"
        if not part.is_file():
            _subsample(train, part, args.subsample_mb / args.train_mb)
        train = part
    train_mb = sum(len(t.encode("utf-8")) for t in read_texts(train)) / 1e6
    print(f"train: {train} ({train_mb:.1f} MB), held out: {heldout}")
    v = args.vocab
    rows = [
        ("llmtrain tokenizer: bpe (default)", lambda o: train_ours(o, train, v)),
        (
            "llmtrain tokenizer: bpe, pattern llama3, digits groups_of_3",
            lambda o: train_ours(o, train, v, pattern="llama3", digits="groups_of_3"),
        ),
        (
            "tokenizers ByteLevel defaults (GPT-2 regex)",
            lambda o: train_tokenizers_direct(o, train, v, None),
        ),
        (
            "tokenizers, Llama 3 regex (direct)",
            lambda o: train_tokenizers_direct(o, train, v, split_pattern("llama3", "groups_of_3")),
        ),
        (
            "llmtrain tokenizer: bpe, backend sentencepiece",
            lambda o: train_ours(o, train, v, backend="sentencepiece"),
        ),
        (
            "llmtrain tokenizer: unigram, backend sentencepiece",
            lambda o: train_ours(o, train, v, backend="sentencepiece", algorithm="unigram"),
        ),
        (
            "SentencePiece defaults, BPE (nmt_nfkc, whitespace collapsed)",
            lambda o: train_spm_direct(o, train, v, "bpe", lossless=False),
        ),
        (
            "SentencePiece defaults, Unigram (nmt_nfkc, whitespace collapsed)",
            lambda o: train_spm_direct(o, train, v, "unigram", lossless=False),
        ),
        (
            "llmtrain tokenizer: unigram (tokenizers, byte fallback)",
            lambda o: train_ours(o, train, v, algorithm="unigram"),
        ),
        (
            "llmtrain tokenizer: bpe, pattern llmtrain (opt-in; no GGUF export)",
            lambda o: train_ours(o, train, v, pattern="llmtrain"),
        ),
    ]
    if args.only:
        rows = [row for i, row in enumerate(rows) if i in args.only]
    print("| tokenizer | vocab | train s | bytes/token | round trip |\n|---|---|---|---|---|")
    for name, run in rows:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            out = Path(tmp) / "tok"
            seconds = run(out)
            result = measure_dir(out, heldout)
        trip = (
            "exact"
            if result["round_trip_exact"]
            else (f"{result['round_trip_failures']}/{result['documents']} differ")
        )
        print(
            f"| {name} | {v} | {seconds:.0f} | {result['bytes_per_token']:.3f} | {trip} |",
            flush=True,
        )


def memory(args) -> None:
    largest = max(args.sizes)
    train, _ = python_corpus(args.workdir, largest, args.heldout_mb)
    print("| corpus MB | backend | cap | train s | peak RSS MB |\n|---|---|---|---|---|")
    for size in args.sizes:
        # a seeded sample of the largest corpus, so both sizes hold the same mix of packages
        part = train
        if size < largest:
            part = args.workdir / f"python-sample-{size:g}mb-of-{largest:g}mb.jsonl"
            if not part.is_file():
                _subsample(train, part, size / largest)
        size = sum(len(t.encode("utf-8")) for t in read_texts(part)) / 1e6
        for backend in args.backends:
            for cap in (None, args.cap_mb):
                command = [
                    sys.executable,
                    __file__,
                    "_memory_child",
                    str(part),
                    str(args.vocab),
                    backend,
                    str(cap * 1e6 if cap else 0),
                    str(args.workdir),
                ]
                result = json.loads(
                    subprocess.run(
                        command, check=True, capture_output=True, text=True
                    ).stdout.splitlines()[-1]
                )
                cap_text = f"{cap:g} M chars" if cap else "none"
                print(
                    f"| {size:.1f} | {backend} | {cap_text} | {result['seconds']:.0f} | "
                    f"{result['peak_rss_mb']:.0f} |",
                    flush=True,
                )


def _subsample(source: Path, target: Path, fraction: float) -> None:
    """The documents whose line number hashes below `fraction` (every package represented)."""
    with open(source) as f, open(target, "w") as out:
        for index, line in enumerate(f):
            digest = hashlib.blake2b(f"sample-{index}".encode(), digest_size=8).digest()
            if int.from_bytes(digest, "little") / 2**64 < fraction:
                out.write(line)


def _memory_child(argv: list[str]) -> None:
    corpus, vocab, backend, cap, workdir = (
        Path(argv[0]),
        int(argv[1]),
        argv[2],
        float(argv[3]),
        Path(argv[4]),
    )
    source = {"max_chars": cap} if cap else {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        seconds = train_ours(Path(tmp) / "tok", corpus, vocab, backend=backend, source=source)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_memory_child":
        _memory_child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["overhead", "compression", "memory"])
    parser.add_argument("--train-mb", type=float, default=100)
    parser.add_argument("--heldout-mb", type=float, default=5)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--backend", choices=["tokenizers", "sentencepiece", "both"], default="both"
    )
    parser.add_argument("--only", type=int, nargs="*", help="compression: row numbers to run")
    parser.add_argument(
        "--subsample-mb",
        type=float,
        help="compression: train on a seeded sample of about this many MB of the train split",
    )
    parser.add_argument("--sizes", type=float, nargs=2, default=[25, 100], metavar=("A", "B"))
    parser.add_argument("--cap-mb", type=float, default=10, help="memory: max_chars, in millions")
    parser.add_argument("--backends", nargs="+", default=["tokenizers", "sentencepiece"])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench" / "tokenizer")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    import logging

    logging.basicConfig(level=logging.WARNING)
    {"overhead": overhead, "compression": compression, "memory": memory}[args.mode](args)


if __name__ == "__main__":
    main()
