"""Objectives (MLM masking statistics, span corruption), optimizer groups and schedules."""

import pytest
import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer

from llmtrain.errors import StageInputError
from llmtrain.train.config import ModelSection
from llmtrain.train.models import create_model
from llmtrain.train.objectives import (
    CausalLM,
    MaskedLM,
    SpanCorruption,
    span_lengths,
    step_generator,
    token_loss_sum,
    uncorrupt,
)
from llmtrain.train.optim import lr_multiplier, param_groups


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture(scope="module")
def mlm_tokenizer(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    sentinels = [AddedToken(f"<extra_id_{i}>", special=True) for i in range(40)]
    tokenizer.add_tokens(sentinels, special_tokens=True)
    return tokenizer


def windows_with_specials(tokenizer, rows=64, length=257, seed=0):
    """Random ordinary tokens with EOS at every 20th position (document boundaries)."""
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(10, 500, (rows, length), generator=generator)
    windows[:, ::20] = tokenizer.eos_token_id
    return windows


def test_clm_scores_every_next_token():
    windows = torch.arange(18).reshape(2, 9)
    inputs = CausalLM().prepare(windows, step_generator(0, 0, 0, 0))
    assert torch.equal(inputs.inputs["input_ids"], windows[:, :-1])
    assert torch.equal(inputs.labels, windows[:, 1:])
    assert inputs.num_targets == 16


def test_mlm_masking_statistics(mlm_tokenizer):
    windows = windows_with_specials(mlm_tokenizer)
    objective = MaskedLM(mlm_tokenizer)
    inputs = objective.prepare(windows, step_generator(1, 0, 0, 0))
    original = windows[:, :-1]
    masked = inputs.inputs["input_ids"]
    chosen = inputs.labels != -100
    special = original == mlm_tokenizer.eos_token_id
    assert not chosen[special].any()  # special tokens are never chosen
    assert torch.equal(masked[special], original[special])
    assert chosen[~special].float().mean().item() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(inputs.labels[chosen], original[chosen])  # loss only on chosen positions
    became_mask = masked[chosen] == mlm_tokenizer.mask_token_id
    unchanged = masked[chosen] == original[chosen]
    randomised = ~became_mask & ~unchanged
    n = chosen.sum().item()
    assert became_mask.sum().item() / n == pytest.approx(0.8, abs=0.02)
    # a random replacement may draw the original token (1 in ~500): 10% each within tolerance
    assert unchanged.sum().item() / n == pytest.approx(0.1, abs=0.015)
    assert randomised.sum().item() / n == pytest.approx(0.1, abs=0.015)
    assert not torch.isin(
        masked[chosen][randomised], torch.tensor(mlm_tokenizer.all_special_ids)
    ).any()
    assert not chosen[~special].all() and (masked[~chosen] == original[~chosen]).all()
    # the same step, micro-batch and rank draw the same masks; another step draws others
    again = objective.prepare(windows, step_generator(1, 0, 0, 0))
    other = objective.prepare(windows, step_generator(1, 1, 0, 0))
    assert torch.equal(again.labels, inputs.labels)
    assert not torch.equal(other.labels, inputs.labels)


def test_mlm_needs_a_mask_token(tokenizer):
    with pytest.raises(StageInputError) as err:
        MaskedLM(tokenizer)
    assert str(err.value) == (
        f"pretrain.objective mlm needs a mask token, and the tokenizer at "
        f"{tokenizer.name_or_path} has none; train the tokenizer with a mask token among its "
        "special tokens (e.g. [MASK]) and rebuild the data"
    )


def test_span_corruption_rebuilds_the_original(mlm_tokenizer):
    windows = windows_with_specials(mlm_tokenizer, rows=32, length=129)
    objective = SpanCorruption(mlm_tokenizer, 128, decoder_start_token_id=1)
    lengths = objective.lengths
    assert (lengths.noise, lengths.spans) == (19, 6)  # round(128 x 0.15), round(19 / 3)
    inputs = objective.prepare(windows, step_generator(3, 0, 0, 0))
    assert inputs.inputs["input_ids"].shape == (32, lengths.inputs) == (32, 116)
    assert inputs.labels.shape == (32, lengths.targets) == (32, 26)
    sentinels = objective.sentinels.tolist()
    eos = mlm_tokenizer.eos_token_id
    for row in range(32):
        source, target = inputs.inputs["input_ids"][row], inputs.labels[row]
        assert torch.equal(uncorrupt(source, target, sentinels), windows[row, :-1])
        assert source[-1] == eos and target[-1] == eos
        assert sorted(set(source.tolist()) & set(sentinels)) == sentinels  # every span once
    # the decoder sees the target shifted right behind the start token
    assert torch.equal(inputs.inputs["decoder_input_ids"][:, 1:], inputs.labels[:, :-1])
    assert (inputs.inputs["decoder_input_ids"][:, 0] == 1).all()
    # spans average the configured length
    noise = [objective.noise_mask(step_generator(0, i, 0, 0)) for i in range(200)]
    starts = sum(int((m[1:] & ~m[:-1]).sum()) for m in noise)
    assert sum(int(m.sum()) for m in noise) / starts == pytest.approx(19 / 6)


def test_span_lengths_and_missing_sentinels(tokenizer):
    assert span_lengths(512, 0.15, 3.0).spans == 26
    assert span_lengths(2048, 0.15, 3.0).inputs == 2048 - 307 + 102 + 1
    with pytest.raises(StageInputError) as err:
        SpanCorruption(tokenizer, 64, decoder_start_token_id=1)
    assert str(err.value) == (
        "pretrain.objective span needs 3 sentinel tokens <extra_id_0> ... <extra_id_2> (one per "
        f"corrupted span of a window), and the tokenizer at {tokenizer.name_or_path} has 0; add "
        "them as special tokens when training the tokenizer and rebuild the data, or shorten "
        "seq_len"
    )


def test_token_loss_sum_ignores_unscored_positions():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    expected = sum(
        torch.nn.functional.cross_entropy(logits[b, t][None], labels[b, t][None])
        for b, t in [(0, 0), (0, 2), (1, 2)]
    )
    assert token_loss_sum(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_no_weight_decay_on_norms_biases_and_embeddings(tokenizer):
    model = create_model(ModelSection(preset="gpt-tiny"), tokenizer, objective="clm", seed=0)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "transformer.wte.weight" in kept and "transformer.wpe.weight" in kept  # embeddings
    assert "transformer.h.0.ln_1.weight" in kept and "transformer.h.0.attn.c_attn.bias" in kept
    assert "transformer.h.0.attn.c_attn.weight" in decayed
    assert "transformer.h.0.mlp.c_proj.weight" in decayed
    assert len(decayed) + len(kept) == len(names)


def test_schedules():
    def curve(schedule, **kw):
        args = dict(total_steps=100, warmup_steps=10, min_lr_ratio=0.1, decay_steps=20)
        args.update(kw)
        return [lr_multiplier(s, schedule=schedule, **args) for s in range(100)]

    cosine = curve("cosine")
    assert cosine[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warmup
    assert cosine[10] == 1.0 and cosine[99] == pytest.approx(0.1)
    assert cosine[55] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 45 / 89)).item())
    )
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:]))
    linear = curve("linear")
    assert linear[99] == pytest.approx(0.1) and linear[54] == pytest.approx(1 - 0.9 * 44 / 89)
    wsd = curve("wsd")
    assert wsd[10:80] == [1.0] * 70  # stable
    assert wsd[80] == pytest.approx(1 - 0.9 / 20) and wsd[99] == pytest.approx(0.1)
    assert curve("constant")[10:] == [1.0] * 90
    assert curve("cosine", warmup_steps=0)[0] == 1.0
