"""Issue 18's guards on the TRL-backed stages and on stage inputs: non-finite steps skipped and
stopped (pretraining's guard, shared), no non-finite checkpoint or final/, the wrong kind of
model refused at start."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import trl
from safetensors.torch import load_file

from llmtrain.errors import StageInputError, TrainingError
from llmtrain.recipe import load_recipe
from llmtrain.train.align.sft import run_sft
from llmtrain.train.align.trl_glue import AlignRun
from tests.align_support import FAST, run_args, write_recipe_file, write_sft_data
from tests.conftest import build_tiny_tokenizer


def _sft_section(tmp_path, model_dir, **extra):
    data = write_sft_data(tmp_path)
    return {
        "model": str(model_dir),
        "data": [{"path": str(data)}],
        "max_steps": 20,
        "global_batch_size": 8,
        "micro_batch_size": 8,
        "lr": 3.0e-3,
        "eval_every": 0,
        "save_every": 5,
        "keep_last": 0,
        **FAST,
        "log_every": 1,
        **extra,
    }


def _strict_records(run_dir):
    """metrics.jsonl parsed as strict JSON (a bare NaN or Infinity fails)."""

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines]


def test_sft_skips_non_finite_steps_and_stops_with_pretrainings_message(
    tmp_path, tiny_causal_lm_dir, monkeypatch, caplog
):
    """Issue 18.3: a non-finite loss in a TRL-backed stage skips the step (the weights stay
    finite and keep learning) and max_nonfinite_steps in a row stop the run with pretraining's
    message; no final/ is written."""
    real = trl.SFTTrainer.compute_loss
    calls = {"train": 0}

    def poisoned(self, model, inputs, *args, **kwargs):
        result = real(self, model, inputs, *args, **kwargs)
        if not model.training:
            return result
        calls["train"] += 1
        if calls["train"] == 3 or calls["train"] >= 7:
            if isinstance(result, tuple):
                return (result[0] * float("nan"), *result[1:])
            return result * float("nan")
        return result

    monkeypatch.setattr(trl.SFTTrainer, "compute_loss", poisoned)
    section = _sft_section(tmp_path, tiny_causal_lm_dir, max_nonfinite_steps=3)
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    run_dir = recipe.stage_dir("sft")
    caplog.set_level(logging.WARNING)
    with pytest.raises(TrainingError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        "sft stopped: 3 steps in a row (7-9) had a non-finite loss or gradient "
        "(sft.max_nonfinite_steps is 3); the last good checkpoint "
        f"{run_dir / 'checkpoints' / 'step-5'} is intact. Lower sft.lr, keep grad_clip on "
        "or use bf16 rather than fp16, then continue with --resume"
    )
    assert "step 3: the gradient norm is nan; the step was skipped" in caplog.text
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-5"]
    assert not (run_dir / "final").exists()
    weights = load_file(run_dir / "checkpoints" / "step-5" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    records = {r["step"]: r for r in _strict_records(run_dir) if "loss" in r}
    assert "skipped_steps" not in records[2] and records[3]["skipped_steps"] == 1
    assert records[6]["loss"] < records[1]["loss"]  # the weights stayed finite and kept learning


def test_dpo_gets_the_same_guard(tmp_path, tiny_causal_lm_dir, monkeypatch):
    """The guard lives in the glue every TRL-backed method uses: DPO (as kto, orpo, simpo,
    grpo, gspo, rloo) stops on a run of non-finite losses with the same message."""
    from llmtrain.train.align.dpo import run_dpo
    from tests.align_support import write_preference_data

    real = trl.DPOTrainer.compute_loss
    calls = {"train": 0}

    def poisoned(self, model, inputs, *args, **kwargs):
        result = real(self, model, inputs, *args, **kwargs)
        if not model.training:
            return result
        calls["train"] += 1
        if calls["train"] >= 4:
            if isinstance(result, tuple):
                return (result[0] * float("nan"), *result[1:])
            return result * float("nan")
        return result

    monkeypatch.setattr(trl.DPOTrainer, "compute_loss", poisoned)
    prefs, _ = write_preference_data(tmp_path)
    section = _sft_section(tmp_path, tiny_causal_lm_dir, max_steps=10, save_every=2)
    section.update(data=[{"path": str(prefs)}], max_nonfinite_steps=2)
    recipe = load_recipe(write_recipe_file(tmp_path, {"dpo": section}))
    run_dir = recipe.stage_dir("dpo")
    with pytest.raises(TrainingError) as err:
        run_dpo(recipe, run_args())
    assert str(err.value) == (
        "dpo stopped: 2 steps in a row (4-5) had a non-finite loss or gradient "
        "(dpo.max_nonfinite_steps is 2); the last good checkpoint "
        f"{run_dir / 'checkpoints' / 'step-2'} is intact. Lower dpo.lr, keep grad_clip on "
        "or use bf16 rather than fp16, then continue with --resume"
    )
    assert not (run_dir / "final").exists()


def test_sft_never_publishes_non_finite_weights(tmp_path, tiny_causal_lm_dir, monkeypatch):
    """Issue 18.3: weights that turn non-finite (a finite loss, a poisoned update) are neither
    checkpointed nor written as final/; the error names the last checkpoint written from finite
    weights as the good one."""
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step == 7:  # the 8th update
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("inf")

    real_callbacks = AlignRun.callbacks
    monkeypatch.setattr(AlignRun, "callbacks", lambda self: [*real_callbacks(self), Poison()])
    section = _sft_section(tmp_path, tiny_causal_lm_dir, max_steps=10)
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    run_dir = recipe.stage_dir("sft")
    with pytest.raises(TrainingError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        "sft: the trained weights hold NaN or infinite values, so final/ was not written; "
        f"the last good checkpoint is {run_dir / 'checkpoints' / 'step-5'}. Lower sft.lr or "
        "keep grad_clip on, then train again (or continue from the checkpoint with --resume)"
    )
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-5"]
    assert not (run_dir / "final").exists()
    _strict_records(run_dir)


# ---------------------------------------------------------------------------------------------
# Issue 18.4: the wrong kind of model, a tokenizer of another size


@pytest.fixture(scope="module")
def reward_model_dir(tiny_causal_lm_dir, tmp_path_factory):
    """A reward model's final/: the tiny Llama as a LlamaForSequenceClassification."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("reward-model")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_causal_lm_dir, num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_causal_lm_dir).save_pretrained(out)
    return out


def test_a_reward_model_is_refused_as_the_model_of_sft_and_dpo(tmp_path, reward_model_dir):
    from llmtrain.train.align.dpo import run_dpo
    from tests.align_support import write_preference_data

    data = write_sft_data(tmp_path)
    prefs, _ = write_preference_data(tmp_path)
    sections = {
        "sft": {"model": str(reward_model_dir), "data": [{"path": str(data)}], **FAST},
        "dpo": {"model": str(reward_model_dir), "data": [{"path": str(prefs)}], **FAST},
    }
    recipe = load_recipe(write_recipe_file(tmp_path, sections))
    for method, run in (("sft", run_sft), ("dpo", run_dpo)):
        with pytest.raises(StageInputError) as err:
            run(recipe, run_args())
        assert str(err.value) == (
            f"{method}.model: {reward_model_dir} holds a LlamaForSequenceClassification, and "
            "this stage needs a causal language model (*ForCausalLM); give the final/ of a "
            "stage that writes one"
        )
        assert not recipe.stage_dir(method).exists()


def test_rm_starts_from_a_causal_lm_or_a_reward_model(
    tmp_path, tiny_causal_lm_dir, reward_model_dir
):
    data = write_sft_data(tmp_path)
    recipe = load_recipe(
        write_recipe_file(tmp_path, {"rm": {"data": [{"path": str(data)}], **FAST}})
    )
    run = AlignRun(recipe, "rm", recipe.section("rm"))
    assert run.model_kinds() == ("causal_lm", "reward_model")
    assert run.input_model_dir(tiny_causal_lm_dir) == tiny_causal_lm_dir
    assert run.input_model_dir(reward_model_dir) == reward_model_dir


def test_a_reward_model_is_refused_as_the_model_to_pretrain(tiny_tokenizer_dir, reward_model_dir):
    from transformers import AutoTokenizer

    from llmtrain.train.config import ModelSection
    from llmtrain.train.models import create_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    section = ModelSection(path=str(reward_model_dir))
    with pytest.raises(StageInputError) as err:
        create_model(section, tokenizer, objective="clm", seed=0)
    assert str(err.value) == (
        f"model.path: {reward_model_dir} holds a LlamaForSequenceClassification, and this stage "
        "needs a causal language model (*ForCausalLM); give the final/ of a stage that writes one"
    )


def test_a_tokenizer_of_another_size_than_the_models_own_is_refused(
    tmp_path, tiny_causal_lm_dir, tiny_tokenizer_dir
):
    """sft.tokenizer with fewer tokens than the model's own (which fits in its padded
    embeddings, so the embedding check alone lets it through), and pretraining from a model
    whose own tokenizer is larger than the data build's."""
    from transformers import AutoTokenizer

    from llmtrain.train.config import ModelSection
    from llmtrain.train.models import create_model

    small_dir = tmp_path / "small-tokenizer"
    build_tiny_tokenizer(small_dir, vocab_size=300)
    small = AutoTokenizer.from_pretrained(small_dir)
    own = len(AutoTokenizer.from_pretrained(tiny_causal_lm_dir))
    data = write_sft_data(tmp_path)
    section = {
        "model": str(tiny_causal_lm_dir),
        "tokenizer": str(small_dir),
        "data": [{"path": str(data)}],
        **FAST,
    }
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    with pytest.raises(StageInputError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        f"sft: sft.tokenizer ({small_dir}) has {len(small)} tokens but the model in "
        f"{tiny_causal_lm_dir} was trained with its own tokenizer of {own} tokens; they do not "
        "belong together: use the model's own tokenizer (remove sft.tokenizer) or a model "
        "trained with this one"
    )
    with pytest.raises(StageInputError) as err:
        create_model(ModelSection(path=str(tiny_causal_lm_dir)), small, objective="clm", seed=0)
    assert str(err.value) == (
        f"model.path: the data build's tokenizer ({small_dir}) has {len(small)} tokens but the "
        f"model in {tiny_causal_lm_dir} was trained with its own tokenizer of {own} tokens; "
        "they do not belong together: build the data with the model's tokenizer or start from "
        "a model trained with this one"
    )


def test_sft_resume_from_a_truncated_checkpoint_gives_one_message(tmp_path, tiny_causal_lm_dir):
    """Issue 18.7 (TRL-backed stages): a damaged checkpoint is reported, not a traceback."""
    from llmtrain.errors import RunDirError

    section = _sft_section(tmp_path, tiny_causal_lm_dir, max_steps=3, save_every=3)
    run_sft(load_recipe(write_recipe_file(tmp_path, {"sft": section})), run_args())
    step3 = tmp_path / "out" / "sft" / "checkpoints" / "step-3"
    weights = step3 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    section["max_steps"] = 6
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    with pytest.raises(RunDirError) as err:
        run_sft(recipe, run_args(resume=True))
    assert str(err.value) == (
        f"--resume: cannot load the checkpoint {step3} (Error while deserializing header: "
        "incomplete metadata, file not fully covered); it is truncated or damaged, or was "
        "written for another model shape; resume from another checkpoint (--resume PATH) or "
        "start again with --overwrite"
    )


def test_a_chat_template_that_cannot_render_is_reported_when_the_recipe_is_read(tmp_path):
    """Issue 18.7: `config check` (which loads the recipe) and every start report a Jinja
    template that does not render, with the template's error."""
    from llmtrain.errors import RecipeError

    data = write_sft_data(tmp_path)
    section = {"data": [{"path": str(data)}], "chat_template": "{% for m in messages %}{{ m }}"}
    path = write_recipe_file(tmp_path, {"sft": section})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == (
        f"{path}: sft.chat_template: the Jinja template does not render a user and an assistant "
        "message (line 1): TemplateSyntaxError: Unexpected end of template. Jinja was looking "
        "for the following tags: 'endfor' or 'else'. The innermost block that needs to be "
        "closed is 'for'."
    )


def test_sft_data_errors_name_the_keys_the_sft_section_has(tmp_path):
    """Issue 18.7: SFT's hints name sft.on_bad_record (not the data build's on_error) and no
    encoding_errors (the SFT section has none: its files are UTF-8)."""
    from llmtrain.errors import InputDataError
    from llmtrain.recipe import validate_section
    from llmtrain.train.align.chat_data import load_examples
    from llmtrain.train.align.config import SFTSection

    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    path = tmp_path / "data.jsonl"
    section = validate_section(SFTSection, {"data": [{"path": str(path)}]})
    path.write_text(f"{good}\n{{broken\n")
    with pytest.raises(InputDataError) as err:
        load_examples(section, "sft", method="sft", seed=0)
    assert str(err.value) == (
        f"{path}:2: invalid JSON (Expecting property name enclosed in double quotes at column "
        "2); fix the line, or set sft.on_bad_record: skip to skip and count such lines"
    )
    path.write_bytes(good.encode() + b"\n" + b'{"text": "\xff"}\n')
    with pytest.raises(InputDataError) as err:
        load_examples(section, "sft", method="sft", seed=0)
    assert str(err.value) == (
        f"{path}:2: not valid UTF-8 at byte offset {len(good) + 11}; convert the file to UTF-8"
    )


# ---------------------------------------------------------------------------------------------
# Issue 18.5: token ids past the model's vocabulary


def test_a_shard_with_ids_past_the_vocabulary_is_named_before_training(
    tiny_tokenizer_dir, tmp_path
):
    """The build records each shard's largest id; pretraining refuses a shard whose ids do not
    fit the model's embeddings (it was an IndexError mid-run, a device assert on a GPU)."""
    import numpy as np

    from llmtrain.data_pipeline.manifest import read_manifest
    from llmtrain.data_pipeline.shards import ShardWriter, dtype_from_name, open_tokens
    from llmtrain.train.pretrain import run_pretrain
    from tests.pretrain_support import build_data, write_pretrain_recipe

    data = build_data(tmp_path / "data", tiny_tokenizer_dir, 64)
    manifest = read_manifest(data)
    dtype = dtype_from_name(manifest["dtype"])
    for shard in manifest["shards"]:
        assert shard["max_id"] == int(np.max(open_tokens(data / shard["path"], dtype)))

    # one shard rewritten as a build with a larger tokenizer would have written it
    shard = manifest["shards"][0]
    ids = np.array(open_tokens(data / shard["path"], dtype))
    ids[5] = 1000
    with ShardWriter(data / shard["path"], dtype) as writer:
        writer.add(ids)
    shard.update(documents=1, sha256=writer.sha256, max_id=writer.max_id)
    assert writer.max_id == 1000
    (data / "manifest.json").write_text(json.dumps(manifest))

    recipe = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=data,
        model="preset: llama-tiny",
        pretrain="steps: 2\nglobal_batch_size: 8\nmicro_batch_size: 8\nprecision: fp32",
    )
    with pytest.raises(StageInputError) as err:
        run_pretrain(load_recipe(recipe))
    assert str(err.value) == (
        f"{data / shard['path']}: holds token id 1000, but the model's vocabulary has 512 ids "
        "(0-511); the shard was written with another tokenizer or is damaged: rebuild the data "
        "with the model's tokenizer (`llmtrain data RECIPE --overwrite`)"
    )


def test_best_of_n_evaluation_loads_the_reward_model_as_its_scorer(reward_model_dir):
    from llmtrain.train.evaluate.generation import DecodingSection
    from llmtrain.train.evaluate.runner import _scorer

    section = DecodingSection(strategy="best_of_n", n=2, reward_model=str(reward_model_dir))
    scores = _scorer(section)(["2+2=", "2+2="], ["4", "5 and more words"])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    assert scores[0] != scores[1]
