"""`llmtrain align --method rm`: held-out accuracy, padding-proof scores, final/, bad input."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llmtrain.chat import CHATML
from llmtrain.errors import InputDataError
from llmtrain.recipe import load_recipe, validate_section
from llmtrain.rundir import read_metrics
from llmtrain.train.align.chat_data import (
    load_examples,
    normalize_preference,
    tokenize_preferences,
    uses_chat_template,
)
from llmtrain.train.align.config import RMSection
from llmtrain.train.align.rm import (
    load_reward_model,
    pairwise_accuracy,
    run_rm,
    sequence_scores,
)
from tests.align_support import (
    FAST,
    arithmetic_split,
    run_args,
    style_preference,
    write_jsonl,
    write_preference_data,
    write_recipe_file,
)


@pytest.fixture(scope="module")
def reward_run(sft_arithmetic, tmp_path_factory):
    """An rm run from the SFT model on style preferences; identical pairs mixed in."""
    sft_recipe, _ = sft_arithmetic
    folder = tmp_path_factory.mktemp("rm")
    train, held = write_preference_data(folder)
    records = [json.loads(line) for line in train.read_text().splitlines()]
    for record in records[:3]:  # identical pairs are dropped and counted
        records.append({**record, "rejected": record["chosen"]})
    write_jsonl(train, records)
    section = {
        "model": str(sft_recipe.stage_dir("sft") / "final"),
        "data": [{"path": str(train)}],
        "validation_data": [{"path": str(held)}],
        "max_steps": 60,
        "global_batch_size": 16,
        "micro_batch_size": 16,
        "lr": 1.0e-3,
        "eval_every": 30,
        **FAST,
    }
    recipe = load_recipe(write_recipe_file(folder, {"rm": section}))
    return recipe, run_rm(recipe, run_args()), held


def _held_rows(tokenizer, held_path):
    examples = [json.loads(line) for line in held_path.read_text().splitlines()]
    rows, _ = tokenize_preferences(
        [normalize_preference(e) for e in examples],
        tokenizer,
        CHATML,
        max_length=256,
        on_too_long="truncate",
    )
    return rows


def test_reward_model_reaches_90_percent_held_out_accuracy(reward_run):
    recipe, _, held = reward_run
    run_dir = recipe.stage_dir("rm")
    records = read_metrics(run_dir / "metrics.jsonl")
    assert records[0]["data/dropped_identical_pairs"] == 3
    assert records[0]["data/records"] == 363 + 40 and records[0]["data/train_examples"] == 360
    assert [r["step"] for r in records if "eval_accuracy" in r] == [30, 60]
    assert records[-2]["eval_accuracy"] >= 0.9
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]

    final = run_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert pairwise_accuracy(model, tokenizer, _held_rows(tokenizer, held)) >= 0.9


def test_final_scores_match_the_end_of_training(reward_run):
    recipe, trainer, held = reward_run
    final = recipe.stage_dir("rm") / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    loaded = AutoModelForSequenceClassification.from_pretrained(final).eval()
    trained = trainer.model.eval()
    rows = _held_rows(tokenizer, held)[:6]
    sequences = [r["prompt_ids"] + r["chosen_ids"] for r in rows]
    batch = tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
    with torch.no_grad():
        expected = sequence_scores(trained, batch["input_ids"], batch["attention_mask"])
        got = sequence_scores(loaded, batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        # plain transformers on one unpadded sequence reads the same score
        single = torch.tensor([sequences[0]])
        plain = loaded(input_ids=single).logits[0, 0]
    assert plain.item() == pytest.approx(expected[0].item(), abs=1e-5)


def test_scores_do_not_depend_on_padding_or_batch_with_pad_equal_to_eos(tiny_causal_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    tokenizer.pad_token = tokenizer.eos_token  # pad == eos
    torch.manual_seed(0)
    model = load_reward_model(tiny_causal_lm_dir, {}).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    texts = ["What is 1 + 2?", "A longer text about adding 12 and 30 together.", "Hi"]
    sequences = [tokenizer(t)["input_ids"] + [eos] for t in texts]  # each ends with pad == eos
    sequences.append(tokenizer("no eos here")["input_ids"])
    with torch.no_grad():
        alone = torch.stack(
            [
                sequence_scores(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[
                    0
                ]
                for s in sequences
            ]
        )
        for side in ("right", "left"):
            tokenizer.padding_side = side
            batch = tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
            assert (batch["input_ids"] == eos).sum() > len(texts)  # real eos and padding alike
            together = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
            torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
            # another batch composition: two of them, in reverse order
            pair = tokenizer.pad({"input_ids": sequences[2:0:-1]}, return_tensors="pt")
            scores = sequence_scores(model, pair["input_ids"], pair["attention_mask"])
            torch.testing.assert_close(scores, alone[[2, 1]], rtol=0, atol=1e-5)
        # control: transformers' own pooling reads another token when the text ends in pad == eos
        plain = model(input_ids=torch.tensor([sequences[0]])).logits[0, 0]
    assert abs(plain.item() - alone[0].item()) > 1e-4


def test_margin_enters_the_bradley_terry_loss(reward_run):
    _, trainer, _ = reward_run
    tokenizer = trainer.processing_class
    rows = [
        {
            "chosen_ids": tokenizer("good answer")["input_ids"],
            "rejected_ids": tokenizer("bad")["input_ids"],
            "margin": m,
        }
        for m in (0.0, 1.5)
    ]
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        scores = sequence_scores(trainer.model, batch["input_ids"], batch["attention_mask"])
        chosen, rejected = scores.chunk(2)
        expected = -torch.nn.functional.logsigmoid(chosen - rejected - batch["margin"]).mean()
        loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, expected)
    without = dict(batch)
    del without["margin"]
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, without) < loss


def test_preference_records_are_checked(tmp_path):
    train, _ = arithmetic_split()
    rng = random.Random(0)
    good = [style_preference(p, rng) for p in train[:10]]
    no_rejected = {"prompt": "q", "chosen": "a"}
    path = write_jsonl(tmp_path / "p.jsonl", [*good, no_rejected])
    section = validate_section(RMSection, {"data": [{"path": str(path)}]})
    with pytest.raises(InputDataError) as err:
        load_examples(section, "preference", method="rm", seed=0)
    assert str(err.value) == (
        f"{path}:11: expected `chosen` and `rejected` (and usually `prompt`); missing rejected "
        "(fields: prompt, chosen); fix the record, or set rm.on_bad_record: skip to skip and "
        "count such records"
    )
    # whole conversations without a prompt: the shared first messages become the prompt
    conversation = {
        "chosen": good[0]["prompt"] + good[0]["chosen"],
        "rejected": good[0]["prompt"] + good[0]["rejected"],
    }
    assert normalize_preference(conversation) == good[0]
    # one message record among text ones is enough to need the chat template
    text = {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert not uses_chat_template([text]) and uses_chat_template([text, good[0]])
    assert normalize_preference({"prompt": "q", "chosen": "same", "rejected": "same"}) is None


def test_pairs_over_max_length_lose_prompt_tokens_first(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    example = {
        "prompt": [{"role": "user", "content": "word " * 60}],
        "chosen": [{"role": "assistant", "content": "The answer is 4."}],
        "rejected": [{"role": "assistant", "content": "I don't know."}],
    }
    (full,), _ = tokenize_preferences(
        [example], tokenizer, CHATML, max_length=1000, on_too_long="truncate"
    )
    rows, stats = tokenize_preferences(
        [example], tokenizer, CHATML, max_length=40, on_too_long="truncate"
    )
    assert (stats.truncated, stats.dropped_too_long, stats.examples) == (1, 0, 1)
    (row,) = rows
    assert row["chosen_ids"] == full["chosen_ids"] and row["rejected_ids"] == full["rejected_ids"]
    assert row["prompt_ids"] == full["prompt_ids"][-len(row["prompt_ids"]) :]
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 40
    rows, stats = tokenize_preferences(
        [example], tokenizer, CHATML, max_length=40, on_too_long="drop"
    )
    assert (rows, stats.dropped_too_long) == ([], 1)


def test_lora_reward_model_resumes_and_merges_its_head(tmp_path, tiny_causal_lm_dir):
    train, _ = write_preference_data(tmp_path)
    section = {
        "model": str(tiny_causal_lm_dir), "data": [{"path": str(train)}], "validation_split": 0,
        "max_steps": 6, "global_batch_size": 8, "micro_batch_size": 4, "lr": 1.0e-2,
        "save_every": 3, "keep_last": 0, "eval_every": 0, **FAST, "log_every": 1,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    }  # fmt: skip
    recipe = load_recipe(write_recipe_file(tmp_path, {"rm": section}))
    trainer = run_rm(recipe, run_args())
    run_dir = recipe.stage_dir("rm")
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert "score" in adapter["modules_to_save"]  # the new head is trained in full
    straight = {
        r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r
    }
    assert straight[6] < 0.5 * straight[1]

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "final")
    batch = tokenizer(
        ["What is 3 + 4? 3 + 4 = 7.", "I don't know."], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        expected = sequence_scores(
            trainer.model.eval(), batch["input_ids"], batch["attention_mask"]
        )
    merged = AutoModelForSequenceClassification.from_pretrained(run_dir / "final").eval()
    with torch.no_grad():
        got = sequence_scores(merged, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

    # killed after the step-3 checkpoint: resuming reproduces steps 4-6 and the final scores
    shutil.rmtree(run_dir / "checkpoints" / "step-6")
    shutil.rmtree(run_dir / "final")
    run_rm(recipe, run_args(resume=True))
    resumed = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-5)
    again = AutoModelForSequenceClassification.from_pretrained(run_dir / "final").eval()
    with torch.no_grad():
        scores = sequence_scores(again, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(scores, got, rtol=0, atol=1e-5)
