"""Pretraining objectives: turn a batch of packed token windows into model inputs and a loss.

Every objective receives `windows`, a LongTensor [batch, seq_len + 1] cut from the token stream
(documents separated by EOS), and returns `ModelInputs` whose `labels` hold -100 where no
prediction is scored. The loss is the SUM of token cross-entropies; the loop divides by the
number of scored tokens over the whole optimizer step (all micro-batches, all processes), so
each token weighs the same however the batch is split.

    clm   next-token prediction over the window
    mlm   BERT masking: a share of positions chosen, of those 80% [MASK], 10% random, 10% kept
    span  T5 span corruption: spans replaced by sentinels in the input, spelled out in the target

Masking and span choices draw from a `torch.Generator` the loop seeds per (step, micro-batch,
rank), so they do not depend on global RNG state and a resumed run draws the same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmtrain.errors import StageInputError

IGNORE = -100


@dataclass
class ModelInputs:
    """Keyword arguments of the model's forward, plus the labels scored against its logits."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    num_targets: int = -1
    """Positions with a label (counted on the CPU when built)."""

    def __post_init__(self) -> None:
        if self.num_targets < 0:
            self.num_targets = int((self.labels != IGNORE).sum())

    def to(self, device: torch.device | str) -> ModelInputs:
        inputs = {k: _to(v, device) for k, v in self.inputs.items()}
        return ModelInputs(inputs, self.labels.to(device, non_blocking=True), self.num_targets)


def _to(value: Any, device: torch.device | str) -> Any:
    """A tensor, or a dict of them (an attention mask per layer type), on `device`."""
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropies over positions whose label is not -100 (computed in fp32)."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


class CausalLM:
    """Next-token prediction: input the window's first seq_len tokens, predict the next ones."""

    name = "clm"

    def prepare(self, windows: torch.Tensor, generator: torch.Generator) -> ModelInputs:
        return ModelInputs({"input_ids": windows[:, :-1]}, windows[:, 1:])


class MaskedLM:
    """BERT-style masked language modelling over the window's first seq_len tokens."""

    name = "mlm"

    def __init__(
        self,
        tokenizer: Any,
        *,
        probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
    ):
        if tokenizer.mask_token_id is None:
            raise StageInputError(
                f"pretrain.objective mlm needs a mask token, and the tokenizer at "
                f"{tokenizer.name_or_path} has none; train the tokenizer with a mask token "
                "among its special tokens (e.g. [MASK]) and rebuild the data"
            )
        self.mask_id = tokenizer.mask_token_id
        special = sorted(set(tokenizer.all_special_ids))
        self.special_ids = torch.tensor(special, dtype=torch.long)
        # random replacements come from the ordinary vocabulary, never a special token
        ordinary = torch.ones(len(tokenizer), dtype=torch.bool)
        ordinary[self.special_ids] = False
        self.random_pool = torch.nonzero(ordinary).squeeze(1)
        self.probability = probability
        self.mask_fraction = mask_fraction
        self.random_fraction = random_fraction

    def prepare(self, windows: torch.Tensor, generator: torch.Generator) -> ModelInputs:
        ids = windows[:, :-1]
        eligible = ~torch.isin(ids, self.special_ids)
        chosen = eligible & (torch.rand(ids.shape, generator=generator) < self.probability)
        labels = torch.where(chosen, ids, IGNORE)
        how = torch.rand(ids.shape, generator=generator)
        to_mask = chosen & (how < self.mask_fraction)
        to_random = (
            chosen & (how >= self.mask_fraction) & (how < self.mask_fraction + self.random_fraction)
        )
        random_tokens = self.random_pool[
            torch.randint(len(self.random_pool), ids.shape, generator=generator)
        ]
        inputs = torch.where(to_mask, self.mask_id, ids)
        inputs = torch.where(to_random, random_tokens, inputs)
        return ModelInputs({"input_ids": inputs}, labels)


@dataclass(frozen=True)
class SpanLengths:
    """Fixed sizes of span corruption for a window of `raw` tokens."""

    raw: int
    noise: int
    spans: int

    @property
    def inputs(self) -> int:
        """Encoder input: kept tokens, one sentinel per span, EOS."""
        return self.raw - self.noise + self.spans + 1

    @property
    def targets(self) -> int:
        """Decoder target: per span its sentinel and its tokens, then EOS."""
        return self.noise + self.spans + 1


def span_lengths(raw: int, noise_density: float, mean_span_length: float) -> SpanLengths:
    """T5's sizing: round(raw x density) noise tokens in round(noise / mean) spans."""
    noise = min(max(int(round(raw * noise_density)), 1), raw - 1)
    spans = min(max(int(round(noise / mean_span_length)), 1), noise, raw - noise)
    return SpanLengths(raw=raw, noise=noise, spans=spans)


def sentinel_ids(tokenizer: Any, count: int) -> list[int]:
    """Ids of <extra_id_0> ... <extra_id_{count-1}>, or an error saying which are missing."""
    vocab = tokenizer.get_vocab()
    names = [f"<extra_id_{i}>" for i in range(count)]
    missing = [name for name in names if name not in vocab]
    if missing:
        have = count - len(missing)
        raise StageInputError(
            f"pretrain.objective span needs {count} sentinel tokens <extra_id_0> ... "
            f"<extra_id_{count - 1}> (one per corrupted span of a window), and the tokenizer at "
            f"{tokenizer.name_or_path} has {have}; add them as special tokens when training the "
            "tokenizer and rebuild the data, or shorten seq_len"
        )
    return [vocab[name] for name in names]


def _random_partition(total: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    """`total` split into `parts` positive integers, uniformly over such splits."""
    if parts == 1:
        return torch.tensor([total])
    cuts = torch.randperm(total - 1, generator=generator)[: parts - 1] + 1
    bounds = torch.cat([torch.tensor([0]), cuts.sort().values, torch.tensor([total])])
    return bounds.diff()


class SpanCorruption:
    """T5 span corruption over the window's first seq_len tokens.

    Noise spans alternate with kept spans, starting with a kept one (as in T5); lengths are
    random partitions, so every example has the same input and target length and a
    micro-batch needs no padding.
    """

    name = "span"

    def __init__(
        self,
        tokenizer: Any,
        seq_len: int,
        *,
        noise_density: float = 0.15,
        mean_span_length: float = 3.0,
        decoder_start_token_id: int,
    ):
        if tokenizer.eos_token_id is None:
            raise StageInputError(
                f"pretrain.objective span needs an EOS token; the tokenizer at "
                f"{tokenizer.name_or_path} has none"
            )
        self.lengths = span_lengths(seq_len, noise_density, mean_span_length)
        self.sentinels = torch.tensor(sentinel_ids(tokenizer, self.lengths.spans))
        self.eos_id = tokenizer.eos_token_id
        self.decoder_start_token_id = decoder_start_token_id

    def noise_mask(self, generator: torch.Generator) -> torch.Tensor:
        """Boolean [raw]: True at corrupted positions."""
        lengths = self.lengths
        noise = _random_partition(lengths.noise, lengths.spans, generator)
        kept = _random_partition(lengths.raw - lengths.noise, lengths.spans, generator)
        interleaved = torch.stack([kept, noise], dim=1).reshape(-1)
        is_noise = torch.tensor([False, True]).repeat(lengths.spans)
        return torch.repeat_interleave(is_noise, interleaved)

    def corrupt(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder input, decoder target) of one sequence for a noise mask."""
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])
        span_index = torch.cumsum(starts.long(), 0) - 1
        eos = torch.tensor([self.eos_id])
        # input: kept tokens, and the sentinel of each span at the span's first position
        keep_in_input = ~mask | starts
        inputs = torch.where(starts, self.sentinels[span_index.clamp(min=0)], tokens)
        inputs = torch.cat([inputs[keep_in_input], eos])
        # target: for each span its sentinel, then its tokens
        noise_tokens = tokens[mask]
        noise_starts = starts[mask]
        noise_span = span_index[mask]
        target_len = len(noise_tokens) + int(noise_starts.sum())
        targets = torch.empty(target_len, dtype=tokens.dtype)
        position = torch.arange(len(noise_tokens)) + torch.cumsum(noise_starts.long(), 0)
        targets[position] = noise_tokens
        targets[position[noise_starts] - 1] = self.sentinels[noise_span[noise_starts]]
        return inputs, torch.cat([targets, eos])

    def prepare(self, windows: torch.Tensor, generator: torch.Generator) -> ModelInputs:
        rows = windows[:, :-1]
        if rows.shape[1] != self.lengths.raw:
            raise ValueError(
                f"expected windows of {self.lengths.raw + 1} tokens, got {windows.shape}"
            )
        inputs, targets = [], []
        for row in rows:
            source, target = self.corrupt(row, self.noise_mask(generator))
            inputs.append(source)
            targets.append(target)
        labels = torch.stack(targets)
        start = torch.full((labels.shape[0], 1), self.decoder_start_token_id, dtype=labels.dtype)
        decoder_input_ids = torch.cat([start, labels[:, :-1]], dim=1)
        return ModelInputs(
            {"input_ids": torch.stack(inputs), "decoder_input_ids": decoder_input_ids}, labels
        )


def uncorrupt(inputs: torch.Tensor, targets: torch.Tensor, sentinels: list[int]) -> torch.Tensor:
    """The original sequence from a span-corrupted (input, target) pair, each ending in EOS."""
    sentinel_set = set(sentinels)
    spans: dict[int, list[int]] = {}
    current = None
    for token in targets[:-1].tolist():
        if token in sentinel_set:
            current = token
            spans[current] = []
        elif current is not None:
            spans[current].append(token)
    out: list[int] = []
    for token in inputs[:-1].tolist():
        out.extend(spans[token] if token in sentinel_set else [token])
    return torch.tensor(out, dtype=inputs.dtype)


def build_objective(name: str, tokenizer: Any, *, seq_len: int, section: Any, model_config: Any):
    """The objective `name` for this tokenizer; `section` is the recipe's pretrain section."""
    if name == "clm":
        return CausalLM()
    if name == "mlm":
        return MaskedLM(
            tokenizer,
            probability=section.mlm.probability,
            mask_fraction=section.mlm.mask_fraction,
            random_fraction=section.mlm.random_fraction,
        )
    if name == "span":
        return SpanCorruption(
            tokenizer,
            seq_len,
            noise_density=section.span.noise_density,
            mean_span_length=section.span.mean_span_length,
            decoder_start_token_id=model_config.decoder_start_token_id,
        )
    raise ValueError(f"unknown objective {name!r}")


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The generator for masking one micro-batch: a pure function of its place in training."""
    import numpy as np

    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")
