"""`llmtrain align --method sft`: learning, label masking, packing, final/, resume, bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.chat import CHATML
from llmtrain.data_pipeline.arithmetic import read_answer, sft_record
from llmtrain.errors import InputDataError, RecipeError, StageInputError
from llmtrain.recipe import load_recipe, validate_section
from llmtrain.rundir import read_metrics
from llmtrain.train.align.chat_data import load_examples, sft_tokens, tokenize_sft
from llmtrain.train.align.config import SFTSection
from llmtrain.train.align.sft import run_sft
from tests.align_support import (
    FAST,
    arithmetic_split,
    assert_final_is_merged_adapter,
    held_out_prompts,
    run_args,
    write_jsonl,
    write_recipe_file,
    write_sft_data,
)
from tests.conftest import run_cli


def greedy_replies(model_dir, conversations, max_new_tokens=32):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = tokenizer.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        padding=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=False) for row in new]


# ---------------------------------------------------------------------------------------------
# Learning, final/


def test_sft_drives_assistant_loss_down_and_answers_held_out_prompts(sft_arithmetic):
    recipe, _ = sft_arithmetic
    run_dir = recipe.stage_dir("sft")
    records = read_metrics(run_dir / "metrics.jsonl")
    data = records[0]
    assert data["step"] == 0
    assert data["data/records"] == 360 and data["data/validation_examples"] == 18
    assert data["data/train_examples"] == 342 and data["data/train/truncated"] == 0
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.4 * losses[0]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert [r["step"] for r in records if "eval_loss" in r] == [50, 100, 150]

    final = run_dir / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(final)
    assert end_of_turn in model.generation_config.eos_token_id
    assert tokenizer.eos_token_id in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    _, held = arithmetic_split()
    replies = greedy_replies(final, held_out_prompts(held))
    in_format = [
        r
        for r in replies
        if read_answer(r) is not None
        and r.split("<|im_end|>")[0].endswith(".")
        and "<|im_end|>" in r
    ]
    assert len(in_format) >= 0.9 * len(held), replies[:5]


def test_final_gives_the_outputs_of_the_end_of_training(sft_arithmetic):
    recipe, trainer = sft_arithmetic
    final = recipe.stage_dir("sft") / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    batch = tokenizer(["What is 3 + 4? 3 + 4 = 7."], return_tensors="pt")
    trained = trainer.model.eval()
    loaded = AutoModelForCausalLM.from_pretrained(final).eval()
    with torch.no_grad():
        expected = trained(**batch).logits
        got = loaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert sorted(p.name for p in (recipe.stage_dir("sft") / "checkpoints").iterdir()) == [
        "step-150",
        "step-75",
    ]
    assert not (final / "training_args.bin").exists()


# ---------------------------------------------------------------------------------------------
# Label masking


def _labelled_spans(tokenizer, ids, labels):
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == -100:
            if current:
                spans.append(tokenizer.decode(current))
                current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_every_prompt_token_has_label_minus_100(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    conversation = [
        {"role": "system", "content": "You add and subtract."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4. The answer is 4."},
        {"role": "user", "content": "And 5 - 1?"},
        {"role": "assistant", "content": "5 - 1 = 4. The answer is 4."},
    ]
    ids, labels = sft_tokens(
        {"messages": conversation, "train_from": 0}, tokenizer, CHATML, assistant_only=True
    )
    assert _labelled_spans(tokenizer, ids, labels) == [
        "2 + 2 = 4. The answer is 4.<|im_end|>",
        "5 - 1 = 4. The answer is 4.<|im_end|>",
    ]
    # the whole rendering is there: the unlabelled tokens are exactly the prompt parts
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(
        conversation, chat_template=CHATML, tokenize=False
    )

    # chat prompt/completion: an assistant turn inside the prompt is not trained on
    ids, labels = sft_tokens(
        {"messages": conversation, "train_from": 4}, tokenizer, CHATML, assistant_only=True
    )
    assert _labelled_spans(tokenizer, ids, labels) == ["5 - 1 = 4. The answer is 4.<|im_end|>"]

    # text prompt/completion: the completion and eos
    ids, labels = sft_tokens(
        {"prompt": "Q: 2 + 2? A:", "completion": " 4"}, tokenizer, None, assistant_only=True
    )
    assert _labelled_spans(tokenizer, ids, labels) == [" 4<|endoftext|>"]

    # assistant_only_loss: false trains on everything
    ids, labels = sft_tokens(
        {"messages": conversation, "train_from": 0}, tokenizer, CHATML, assistant_only=False
    )
    assert labels == ids


# ---------------------------------------------------------------------------------------------
# Packing and padding-free


def _token_nll(model, batch):
    """(sum of next-token NLL over labelled tokens, their count) of one collated batch, from
    the model's own loss on every key the collator made (as the trainer calls it)."""
    count = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        mean = model(**batch, use_cache=False).loss.item()
    return mean * count, count


@pytest.mark.parametrize("assistant_only", [True, False])
def test_packing_gives_the_same_loss_as_unpacked_batches(sft_arithmetic, assistant_only):
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    recipe, _ = sft_arithmetic
    final = recipe.stage_dir("sft") / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    train, _ = arithmetic_split()
    rows, _ = tokenize_sft(
        [{"messages": sft_record(p)["messages"], "train_from": 0} for p in train[:24]],
        tokenizer,
        CHATML,
        max_length=256,
        on_too_long="truncate",
        assistant_only=assistant_only,
    )
    # assistant_only false: every example starts with a labelled token, which a packed row
    # must not train to follow the previous example
    assert all((row["labels"][0] != -100) == (not assistant_only) for row in rows)

    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    unpacked = [_token_nll(model, padded(rows[i : i + 8])) for i in range(0, len(rows), 8)]

    packed_rows = list(pack_dataset(Dataset.from_list(rows), 128, "bfd"))
    assert len(packed_rows) < len(rows) and max(len(r["seq_lengths"]) for r in packed_rows) > 1
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    packed = [
        _token_nll(model, flat(packed_rows[i : i + 2])) for i in range(0, len(packed_rows), 2)
    ]
    padding_free = [_token_nll(model, flat(rows[i : i + 8])) for i in range(0, len(rows), 8)]

    def mean(parts):
        return sum(s for s, _ in parts) / sum(n for _, n in parts)

    assert sum(n for _, n in packed) == sum(n for _, n in unpacked)
    assert sum(n for _, n in padding_free) == sum(n for _, n in unpacked)
    assert mean(packed) == pytest.approx(mean(unpacked), rel=1e-5)
    assert mean(padding_free) == pytest.approx(mean(unpacked), rel=1e-5)

    # control: the same packed rows with attention across examples give another loss
    leaky = []
    for i in range(0, len(packed_rows), 2):
        batch = flat(packed_rows[i : i + 2])
        batch = {k: batch[k] for k in ("input_ids", "labels")}
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
        leaky.append(_token_nll(model, batch))
    assert abs(mean(leaky) - mean(unpacked)) > 1e-2


def test_sft_with_packing_feeds_position_ids_and_trains(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)
    section = {
        "model": str(tiny_causal_lm_dir),
        "data": [{"path": str(data)}],
        "packing": True,
        "max_length": 128,
        "max_steps": 12,
        "global_batch_size": 2,
        "micro_batch_size": 2,
        "lr": 3.0e-3,
        "validation_split": 0,
        **FAST,
    }
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    trainer = run_sft(recipe, run_args())
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    assert int((batch["position_ids"][0] == 0).sum()) > 2  # several examples in the row
    losses = [
        r["loss"] for r in read_metrics(recipe.stage_dir("sft") / "metrics.jsonl") if "loss" in r
    ]
    assert losses[-1] < losses[0] - 1.0


# ---------------------------------------------------------------------------------------------
# Resume


def test_resume_continues_where_the_run_stopped(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)
    section = {
        "model": str(tiny_causal_lm_dir),
        "data": [{"path": str(data)}],
        "max_steps": 6,
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "lr": 3.0e-3,
        "save_every": 3,
        "keep_last": 0,
        "eval_every": 0,
        **FAST,
        "log_every": 1,
    }
    recipe = load_recipe(write_recipe_file(tmp_path, {"sft": section}))
    run_sft(recipe, run_args())
    run_dir = recipe.stage_dir("sft")
    straight = read_metrics(run_dir / "metrics.jsonl")
    straight_model = AutoModelForCausalLM.from_pretrained(run_dir / "final")

    # as if the run had been killed after its step-3 checkpoint
    shutil.rmtree(run_dir / "checkpoints" / "step-6")
    shutil.rmtree(run_dir / "final")
    with pytest.raises(Exception, match="already holds a run"):
        run_sft(recipe, run_args())
    trainer = run_sft(recipe, run_args(resume=True))
    assert trainer.state.global_step == 6
    resumed = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in resumed if "loss" in r] == [1, 2, 3, 4, 5, 6]
    before = {r["step"]: r["loss"] for r in straight if "loss" in r}
    after = {r["step"]: r["loss"] for r in resumed if "loss" in r}
    for step in (4, 5, 6):
        assert after[step] == pytest.approx(before[step], rel=1e-5)
    resumed_model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    for (name, a), (_, b) in zip(
        straight_model.named_parameters(), resumed_model.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------
# Bad input


def _sft_recipe(tmp_path, **section):
    return load_recipe(write_recipe_file(tmp_path, {"sft": {**FAST, **section}}))


def test_missing_input_model_names_the_stage_to_run_first(tmp_path):
    data = write_sft_data(tmp_path)
    recipe = _sft_recipe(tmp_path, data=[{"path": str(data)}])
    expected = recipe.stage_dir("pretrain") / "final"
    with pytest.raises(StageInputError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        f"sft: no input model at {expected}; run `llmtrain pretrain RECIPE` first, or set "
        "sft.model to a Hugging Face model directory"
    )
    recipe = _sft_recipe(tmp_path, data=[{"path": str(data)}], model=str(tmp_path / "nowhere"))
    with pytest.raises(RecipeError, match=r"sft.model: file not found: .*nowhere"):
        run_sft(recipe, run_args(overwrite=True))


def test_model_directory_without_tokenizer_or_config(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_causal_lm_dir, model)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model / name).unlink()
    recipe = _sft_recipe(tmp_path, data=[{"path": str(data)}], model=str(model))
    with pytest.raises(StageInputError) as err:
        run_sft(recipe, run_args(overwrite=True))
    assert str(err.value) == (
        f"sft.model: {model} has no tokenizer (tokenizer.json, tokenizer_config.json); save the "
        "tokenizer into the model directory (tokenizer.save_pretrained) or set sft.tokenizer to a "
        "tokenizer directory"
    )
    (model / "config.json").unlink()
    with pytest.raises(StageInputError, match="has no config.json, so it is not a Hugging Face"):
        run_sft(recipe, run_args(overwrite=True))


def test_tokenizer_without_chat_template(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(tiny_causal_lm_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    recipe = _sft_recipe(tmp_path, data=[{"path": str(data)}], model=str(model))
    with pytest.raises(StageInputError) as err:
        run_sft(recipe, run_args(overwrite=True))
    assert str(err.value) == (
        f"the tokenizer in {model} has no chat template and the recipe sets none; set "
        "sft.chat_template: chatml (the built-in ChatML template; its tokens <|im_start|> and "
        "<|im_end|> are added if missing) or give a Jinja template string as sft.chat_template"
    )
    # the fix the message gives works
    recipe = _sft_recipe(
        tmp_path,
        data=[{"path": str(data)}],
        model=str(model),
        chat_template="chatml",
        max_steps=1,
        global_batch_size=4,
        micro_batch_size=4,
    )
    run_sft(recipe, run_args(overwrite=True))
    saved = AutoTokenizer.from_pretrained(recipe.stage_dir("sft") / "final")
    assert saved.chat_template == CHATML
    # text prompt/completion records need no template
    train, _ = arithmetic_split()
    text = write_jsonl(
        tmp_path / "text.jsonl",
        [{"prompt": p.question, "completion": " " + p.solution()} for p in train],
    )
    recipe = _sft_recipe(
        tmp_path,
        data=[{"path": str(text)}],
        model=str(model),
        max_steps=1,
        global_batch_size=4,
        micro_batch_size=4,
    )
    run_sft(recipe, run_args(overwrite=True))
    assert (recipe.stage_dir("sft") / "final" / "model.safetensors").is_file()


def _section(tmp_path, records, **extra):
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    return path, validate_section(SFTSection, {"data": [{"path": str(path)}], **extra})


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


MARKED_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}{{ 'A: ' }}"
    "{%- generation -%}{{ m['content'] + '<|im_end|>' }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}{{ 'U: ' + m['content'] + '\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'A: ' }}{%- endif -%}"
)


def test_chat_template_from_the_recipe_and_bad_choices(tmp_path, tiny_tokenizer_dir):
    from llmtrain.chat import end_of_turn_token_id
    from llmtrain.train.align.chat_data import (
        resolve_chat_template,
        stop_token_trained,
        training_template,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    # a Jinja template given in the recipe is the one rendered and trained on
    section = validate_section(
        SFTSection, {"data": [{"path": "x.jsonl"}], "chat_template": MARKED_TEMPLATE}
    )
    template = resolve_chat_template(
        tokenizer, section.chat_template, method="sft", tokenizer_dir=tiny_tokenizer_dir
    )
    assert template == MARKED_TEMPLATE == tokenizer.chat_template
    assert training_template(tokenizer, template, method="sft") == template
    ids, labels = sft_tokens(
        {"messages": GOOD["messages"], "train_from": 0}, tokenizer, template, assistant_only=True
    )
    assert tokenizer.decode(ids) == "U: hi\nA: hello<|im_end|>\n"
    assert _labelled_spans(tokenizer, ids, labels) == ["hello<|im_end|>"]
    assert end_of_turn_token_id(tokenizer, template) == tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert stop_token_trained(tokenizer, template)

    # a name that is neither a built-in template nor Jinja: refused by the recipe check
    with pytest.raises(RecipeError) as err:
        validate_section(SFTSection, {"data": [{"path": "x.jsonl"}], "chat_template": "chatlm"})
    assert str(err.value) == (
        "chat_template: 'chatlm' is neither `tokenizer`, a built-in template (chatml) nor a "
        "Jinja template (one with {{ }} or {% %})"
    )

    # no {% generation %} markers (and not a template TRL has a marked copy of)
    plain = MARKED_TEMPLATE.replace("{%- generation -%}", "").replace("{%- endgeneration -%}", "")
    with pytest.raises(StageInputError) as err:
        training_template(tokenizer, plain, method="sft")
    assert str(err.value) == (
        "the chat template has no {% generation %} markers, which sft.assistant_only_loss needs "
        "to find the assistant tokens; set sft.chat_template: chatml, give a template with "
        "{% generation %}...{% endgeneration %} around assistant turns, or set "
        "sft.assistant_only_loss: false"
    )
    # the end-of-turn token outside the span: the model would never learn to stop (warned)
    late = MARKED_TEMPLATE.replace(
        "{{ m['content'] + '<|im_end|>' }}{%- endgeneration -%}",
        "{{ m['content'] }}{%- endgeneration -%}{{ '<|im_end|>' }}",
    )
    assert late != MARKED_TEMPLATE and not stop_token_trained(tokenizer, late)
    assert stop_token_trained(tokenizer, CHATML)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without GPU")
def test_qlora_without_a_gpu_says_what_it_needs():
    from llmtrain.train.align.trl_glue import qlora_quantization

    with pytest.raises(RecipeError) as err:
        qlora_quantization("4bit", "sft")
    assert str(err.value) == (
        "sft.lora.quantization: 4bit (QLoRA) needs a CUDA GPU and the bitsandbytes package; "
        "install bitsandbytes on a GPU machine or set sft.lora.quantization: none"
    )


def test_unknown_role_and_empty_assistant_turn(tmp_path):
    bot = {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}
    path, section = _section(tmp_path, [GOOD, bot])
    with pytest.raises(InputDataError) as err:
        load_examples(section, "sft", method="sft", seed=0)
    assert str(err.value) == (
        f"{path}:2: messages[1] has unknown role 'bot'; roles are system, user, assistant, "
        "tool; fix the record, or set sft.on_bad_record: skip to skip and count such records"
    )
    empty = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}
    path, section = _section(tmp_path, [empty, GOOD])
    with pytest.raises(InputDataError) as err:
        load_examples(section, "sft", method="sft", seed=0)
    assert str(err.value) == (
        f"{path}:1: messages[1] is an empty assistant turn; fix the record, or set "
        "sft.on_bad_record: skip to skip and count such records"
    )
    # skipped and counted when asked
    path, section = _section(
        tmp_path, [GOOD, bot, empty, GOOD], on_bad_record="skip", validation_split=0
    )
    data = load_examples(section, "sft", method="sft", seed=0)
    assert data.metrics() == {
        "data/records": 4,
        "data/skipped_bad_records": 2,
        "data/dropped_identical_pairs": 0,
        "data/train_examples": 2,
        "data/validation_examples": 0,
    }


def test_weights_mix_files_and_validation_is_held_out_first(tmp_path):
    train, _ = arithmetic_split()
    a = write_jsonl(tmp_path / "a.jsonl", [sft_record(p) for p in train[:100]])
    b = write_jsonl(tmp_path / "b.jsonl", [sft_record(p) for p in train[100:140]])
    section = validate_section(
        SFTSection,
        {
            "data": [{"path": str(a), "weight": 0.5}, {"path": str(b), "weight": 2.5}],
            "validation_split": 0.1,
        },
    )
    data = load_examples(section, "sft", method="sft", seed=0)
    a_stats, b_stats = data.sources
    assert (a_stats.validation, a_stats.train) == (10, 45)
    assert (b_stats.validation, b_stats.train) == (4, 90)
    held = {json.dumps(x) for x in data.validation}
    assert not held & {json.dumps(x) for x in data.train}
    again = load_examples(section, "sft", method="sft", seed=0)
    assert again.train == data.train  # same seed, same mixture


def test_examples_over_max_length_are_truncated_or_dropped_and_counted(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    long_answer = {"role": "assistant", "content": "1 + 1 = 2. " * 20 + "The answer is 2."}
    examples = [
        {"messages": GOOD["messages"], "train_from": 0},
        {"messages": [{"role": "user", "content": "What is 1 + 1?"}, long_answer], "train_from": 0},
        {"messages": [{"role": "user", "content": "x " * 80}, long_answer], "train_from": 0},
    ]
    rows, stats = tokenize_sft(
        examples, tokenizer, CHATML, max_length=40, on_too_long="truncate", assistant_only=True
    )
    assert (stats.examples, stats.truncated, stats.dropped_too_long) == (2, 1, 1)
    assert max(len(r["input_ids"]) for r in rows) == 40
    rows, stats = tokenize_sft(
        examples, tokenizer, CHATML, max_length=40, on_too_long="drop", assistant_only=True
    )
    assert (stats.examples, stats.truncated, stats.dropped_too_long) == (1, 0, 2)
    assert stats.metrics("data/train")["data/train/dropped_too_long"] == 2


def test_too_few_examples_for_one_batch(tmp_path, tiny_causal_lm_dir):
    data = write_jsonl(tmp_path / "tiny.jsonl", [GOOD] * 5)
    recipe = _sft_recipe(
        tmp_path,
        data=[{"path": str(data)}],
        model=str(tiny_causal_lm_dir),
        validation_split=0,
        global_batch_size=8,
        micro_batch_size=8,
    )
    with pytest.raises(InputDataError) as err:
        run_sft(recipe, run_args())
    assert str(err.value) == (
        "sft: 5 training examples are fewer than one batch (global_batch_size 8); add data or "
        "lower sft.global_batch_size"
    )


def test_cli_reports_the_error_without_traceback(tmp_path):
    data = write_sft_data(tmp_path)
    recipe = write_recipe_file(tmp_path, {"sft": {"data": [{"path": str(data)}]}})
    result = run_cli("align", "--method", "sft", str(recipe))
    assert result.returncode == 2
    assert "run `llmtrain pretrain RECIPE` first" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# LoRA and DeepSpeed


def test_lora_writes_the_adapter_and_a_merged_final(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)
    recipe = _sft_recipe(
        tmp_path,
        data=[{"path": str(data)}],
        model=str(tiny_causal_lm_dir),
        max_steps=20,
        global_batch_size=16,
        micro_batch_size=16,
        lr=1.0e-2,
        validation_split=0,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
    )
    trainer = run_sft(recipe, run_args())
    run_dir = recipe.stage_dir("sft")
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0] - 0.5
    batch, expected = assert_final_is_merged_adapter(run_dir, trainer)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)(**batch).logits
    assert (base - expected).abs().max() > 1e-2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_deepspeed_zero2_on_two_processes(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)
    section = {
        "model": str(tiny_causal_lm_dir),
        "data": [{"path": str(data)}],
        "max_steps": 4,
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "lr": 3.0e-3,
        "save_every": 2,
        "eval_every": 0,
        "deepspeed": {"zero_stage": 2},
        **FAST,
        "log_every": 1,
    }
    recipe_path = write_recipe_file(tmp_path, {"sft": section})
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", str(_free_port()),
        "-m", "llmtrain", "align", "--method", "sft", str(recipe_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "out" / "sft"
    assert (run_dir / "checkpoints" / "step-4" / "global_step4").is_dir()
    records = read_metrics(run_dir / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert model.generation_config.eos_token_id[0] == AutoTokenizer.from_pretrained(
        run_dir / "final"
    ).convert_tokens_to_ids("<|im_end|>")

    # resume from the DeepSpeed checkpoint of step 2 reproduces steps 3 and 4
    shutil.rmtree(run_dir / "checkpoints" / "step-4")
    shutil.rmtree(run_dir / "final")
    command[command.index("--master-port") + 1] = str(_free_port())
    result = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in resumed if "loss" in r] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed if "loss" in r] == pytest.approx(losses, rel=1e-5)
    again = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_reads_jsonl_parquet_and_datasets_directories(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    train, _ = arithmetic_split()
    records = [sft_record(p) for p in train[:30]]
    jsonl = write_jsonl(tmp_path / "a.jsonl", records[:10])
    parquet = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(records[10:20]), parquet)
    datasets_dir = tmp_path / "c"
    DatasetDict({"train": Dataset.from_list(records[20:])}).save_to_disk(str(datasets_dir))
    section = validate_section(
        SFTSection,
        {
            "data": [{"path": str(jsonl)}, {"path": str(parquet)}, {"path": str(datasets_dir)}],
            "validation_split": 0,
        },
    )
    data = load_examples(section, "sft", method="sft", seed=0)
    assert [s.train for s in data.sources] == [10, 10, 10]
    expected = sorted(json.dumps(r["messages"]) for r in records)
    assert sorted(json.dumps(e["messages"]) for e in data.train) == expected


def test_tokenizer_that_does_not_match_the_model(tmp_path, tiny_causal_lm_dir):
    data = write_sft_data(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(100)])
    tokenizer.save_pretrained(tmp_path / "big-tokenizer")
    recipe = _sft_recipe(
        tmp_path,
        data=[{"path": str(data)}],
        model=str(tiny_causal_lm_dir),
        tokenizer=str(tmp_path / "big-tokenizer"),
    )
    with pytest.raises(StageInputError) as err:
        run_sft(recipe, run_args())
    own = len(AutoTokenizer.from_pretrained(tiny_causal_lm_dir))
    assert str(err.value) == (
        f"sft: sft.tokenizer ({tmp_path / 'big-tokenizer'}) has {len(tokenizer)} tokens but the "
        f"model in {tiny_causal_lm_dir} was trained with its own tokenizer of {own} tokens; they "
        "do not belong together: use the model's own tokenizer (remove sft.tokenizer) or a "
        "model trained with this one"
    )
    assert not recipe.stage_dir("sft").exists()  # nothing written before the inputs are checked
