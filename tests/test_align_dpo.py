"""`llmtrain align --method dpo`: margin and held-out accuracy, padding-free, final/, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.chat import CHATML
from llmtrain.errors import RecipeError
from llmtrain.recipe import load_recipe, validate_section
from llmtrain.rundir import RunDir, read_metrics
from llmtrain.train.align.chat_data import normalize_preference, tokenize_preferences
from llmtrain.train.align.config import DPOSection
from llmtrain.train.align.dpo import PaddingFreeForward, dpo_trainer_class, run_dpo
from tests.align_support import (
    FAST,
    assert_final_is_merged_adapter,
    run_args,
    write_preference_data,
    write_recipe_file,
)


def _dpo_section(sft_recipe, train, held, **overrides):
    return {
        "model": str(sft_recipe.stage_dir("sft") / "final"),
        "data": [{"path": str(train)}],
        "validation_data": [{"path": str(held)}],
        "max_steps": 40,
        "global_batch_size": 16,
        "micro_batch_size": 16,
        "lr": 1.0e-3,
        "beta": 0.1,
        "eval_every": 20,
        **FAST,
        **overrides,
    }


@pytest.fixture(scope="module")
def dpo_run(sft_arithmetic, tmp_path_factory):
    sft_recipe, _ = sft_arithmetic
    folder = tmp_path_factory.mktemp("dpo")
    train, held = write_preference_data(folder)
    recipe = load_recipe(write_recipe_file(folder, {"dpo": _dpo_section(sft_recipe, train, held)}))
    return recipe, run_dpo(recipe, run_args())


def test_dpo_raises_the_margin_and_reaches_90_percent_held_out_accuracy(dpo_run):
    recipe, _ = dpo_run
    records = read_metrics(recipe.stage_dir("dpo") / "metrics.jsonl")
    train = [r for r in records if "rewards/margins" in r]
    assert train[0]["step"] == 1 and train[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)
    assert train[-1]["rewards/margins"] > 1.0
    evals = [r for r in records if "eval_rewards/margins" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["eval_rewards/margins"] > 1.0
    assert evals[-1]["eval_rewards/accuracies"] >= 0.9
    assert evals[-1]["eval_rewards/chosen"] > evals[-1]["eval_rewards/rejected"]


def test_final_gives_the_outputs_of_the_end_of_training(dpo_run):
    recipe, trainer = dpo_run
    final = recipe.stage_dir("dpo") / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    loaded = AutoModelForCausalLM.from_pretrained(final).eval()
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in loaded.generation_config.eos_token_id
    batch = tokenizer(["What is 3 + 4? 3 + 4 = 7."], return_tensors="pt")
    with torch.no_grad():
        expected = trainer.model.eval()(**batch).logits
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=1e-5)


def _rows(tokenizer, path, n):
    examples = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    rows, _ = tokenize_preferences(
        [normalize_preference(e) for e in examples],
        tokenizer,
        CHATML,
        max_length=256,
        on_too_long="truncate",
    )
    return rows


def test_padding_free_forward_matches_the_padded_one(dpo_run, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig

    recipe, trained = dpo_run
    final = recipe.stage_dir("dpo") / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    train_path = recipe.dpo.data[0].path
    rows = _rows(tokenizer, Path(train_path), 12)

    # the per-token outputs of the fused head, policy side
    batch = trained.data_collator(rows[:6])
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    model = trained.model.eval()
    with torch.no_grad():
        padded = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                       fused_lm_head=True, use_cache=False)  # fmt: skip
        flat = PaddingFreeForward(model)(
            batch["input_ids"], batch["attention_mask"], labels=labels, fused_lm_head=True,
            use_cache=False,
        )  # fmt: skip
    for name in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(flat, name), getattr(padded, name), rtol=0, atol=2e-5)
    assert torch.equal(flat.is_top1, padded.is_top1)

    # the whole DPO loss and its metrics, through the trainer, with and without padding-free,
    # for losses that read sequence sums (sigmoid), per-token means (ipo), the chosen tokens'
    # log-probs (sft, RPO) and the log-ratios alone (apo_zero)
    def trainer(padding_free: bool, loss_type: list[str]):
        name = f"{'-'.join(loss_type)}-{padding_free}"
        args = DPOConfig(
            output_dir=str(tmp_path / f"out-{name}"), report_to="none", bf16=False,
            use_cpu=True, per_device_train_batch_size=6, max_length=None,
            activation_checkpointing=False, beta=0.1, loss_type=loss_type,
        )  # fmt: skip
        return dpo_trainer_class()(
            run_dir=RunDir(tmp_path / f"run-{name}"), keep_last=1,
            padding_free=padding_free, model=AutoModelForCausalLM.from_pretrained(final),
            ref_model=AutoModelForCausalLM.from_pretrained(recipe.dpo.model),
            args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        )  # fmt: skip

    for loss_type in (["sigmoid"], ["ipo"], ["sigmoid", "sft"], ["apo_zero"]):
        losses, metrics = [], []
        for padding_free in (False, True):
            t = trainer(padding_free, loss_type)
            t.model.train()  # dropout is disabled; train mode files the metrics under "train"
            inputs = t._prepare_inputs(t.data_collator(rows[:6]))
            with torch.no_grad():
                losses.append(t.compute_loss(t.model, inputs))
            metrics.append({k: v[-1] for k, v in t._metrics["train"].items()})
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6, msg=str(loss_type))
        assert metrics[0]["rewards/margins"] > 1.0  # the policy is far from the reference
        for key in ("rewards/margins", "logps/chosen", "logps/rejected", "entropy"):
            assert metrics[1][key] == pytest.approx(metrics[0][key], rel=1e-4, abs=1e-5), key


def test_padding_free_precomputed_reference_run_learns_and_resumes(sft_arithmetic, tmp_path):
    sft_recipe, _ = sft_arithmetic
    train, held = write_preference_data(tmp_path)
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:64]))  # 6 steps of 8 pairs: the reference scores 64 + 40
    section = _dpo_section(
        sft_recipe, train, held,
        max_steps=6, global_batch_size=8, micro_batch_size=4, save_every=3, keep_last=0,
        eval_every=0, padding_free=True, precompute_ref_log_probs=True, log_every=1,
    )  # fmt: skip
    recipe = load_recipe(write_recipe_file(tmp_path, {"dpo": section}))
    trainer = run_dpo(recipe, run_args())
    assert trainer.ref_model is None  # freed after precomputing
    run_dir = recipe.stage_dir("dpo")
    straight = read_metrics(run_dir / "metrics.jsonl")
    margins = [r["rewards/margins"] for r in straight if "rewards/margins" in r]
    assert margins[-1] > margins[0]
    assert [r for r in straight if "eval_rewards/accuracies" in r][-1][
        "eval_rewards/accuracies"
    ] >= 0.8

    shutil.rmtree(run_dir / "checkpoints" / "step-6")
    shutil.rmtree(run_dir / "final")
    run_dpo(recipe, run_args(resume=True))
    resumed = read_metrics(run_dir / "metrics.jsonl")
    before = {r["step"]: r["loss"] for r in straight if "loss" in r}
    after = {r["step"]: r["loss"] for r in resumed if "loss" in r}
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert after[step] == pytest.approx(before[step], rel=1e-5)


def test_dpo_section_checks_loss_types():
    with pytest.raises(RecipeError) as err:
        from llmtrain.recipe import validate_recipe

        validate_recipe(
            {"name": "x", "output_dir": "/tmp/x", "dpo": {"data": [{"path": "p.jsonl"}],
             "loss_type": ["sigmoid", "kto"]}}
        )  # fmt: skip
    assert str(err.value) == (
        "dpo: loss_type: unknown 'kto'; choose from sigmoid, hinge, ipo, exo_pair, nca_pair, "
        "robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, "
        "sigmoid_norm"
    )
    section = validate_section(
        DPOSection,
        {"data": [{"path": "p.jsonl"}], "loss_type": ["sigmoid", "sft"], "loss_weights": [1, 0.5]},
    )
    assert section.loss_type == ["sigmoid", "sft"]


def test_lora_uses_the_base_as_reference_and_a_given_reference_is_used(
    tmp_path, tiny_causal_lm_dir, tiny_tokenizer_dir
):
    from tests.conftest import build_tiny_causal_lm

    train, _ = write_preference_data(tmp_path)
    common = {
        "model": str(tiny_causal_lm_dir), "data": [{"path": str(train)}], "validation_split": 0,
        "max_steps": 6, "global_batch_size": 8, "micro_batch_size": 8, "eval_every": 0,
        "save_every": 0, **FAST, "log_every": 1,
    }  # fmt: skip

    # LoRA: no reference copy; the reference is the base with the adapters switched off
    lora = {**common, "lr": 1.0e-2, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    recipe = load_recipe(write_recipe_file(tmp_path / "lora", {"dpo": lora}))
    trainer = run_dpo(recipe, run_args())
    assert trainer.ref_model is None
    run_dir = recipe.stage_dir("dpo")
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "rewards/margins" in r]
    assert records[0]["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert records[0]["rewards/rejected"] == pytest.approx(0, abs=1e-6)
    assert records[-1]["rewards/margins"] > 0.3
    assert_final_is_merged_adapter(run_dir, trainer)

    # dpo.ref_model: that model is the reference, so the rewards start away from 0 (with
    # the policy as its own reference they start at exactly 0, as above)
    other = build_tiny_causal_lm(tiny_tokenizer_dir, tmp_path / "other", seed=1)
    given = {**common, "max_steps": 1, "lr": 1.0e-3, "ref_model": str(other)}
    recipe = load_recipe(write_recipe_file(tmp_path / "ref", {"dpo": given}))
    trainer = run_dpo(recipe, run_args())
    expected = AutoModelForCausalLM.from_pretrained(other)
    for (name, a), (_, b) in zip(
        trainer.ref_model.named_parameters(), expected.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    (first,) = [r for r in read_metrics(recipe.stage_dir("dpo") / "metrics.jsonl") if "loss" in r]
    assert abs(first["rewards/chosen"]) > 1e-2 and abs(first["rewards/margins"]) > 1e-2
