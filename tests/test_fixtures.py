"""The shared tiny tokenizer and model load with Auto classes and render chats."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from llmtrain.data_pipeline.arithmetic import (
    make_problems,
    preference_record,
    read_answer,
    sft_record,
    split_problems,
)


def test_tiny_tokenizer_renders_chat_with_assistant_mask(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    problem = make_problems(1, seed=1)[0]
    messages = sft_record(problem)["messages"]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == (
        f"<|im_start|>user\n{problem.question}<|im_end|>\n"
        f"<|im_start|>assistant\n{problem.solution()}<|im_end|>\n"
    )
    out = tokenizer.apply_chat_template(
        messages, return_assistant_tokens_mask=True, return_dict=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == problem.solution() + "<|im_end|>"
    assert tokenizer.decode(ids) == text


def test_tiny_model_loads_and_generates(tiny_causal_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    ids = tokenizer("What is 1 + 2?", return_tensors="pt").input_ids
    out = model.generate(
        ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert out.shape[1] == ids.shape[1] + 4


def test_arithmetic_problems_are_distinct_and_checkable():
    import random

    problems = make_problems(50, seed=3)
    assert len(set(problems)) == 50
    train, held = split_problems(problems, 10)
    assert not set(train) & set(held)
    pair = preference_record(problems[0], random.Random(0))
    assert read_answer(pair["chosen"][0]["content"]) == problems[0].answer
    assert read_answer(pair["rejected"][0]["content"]) != problems[0].answer
    assert read_answer("no number here") is None


def test_fingerprint_tracks_ids_not_files(tiny_tokenizer_dir, tmp_path):
    from llmtrain.tokenizer.fingerprint import fingerprint_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp_path / "same")
    assert fingerprint_dir(tmp_path / "same") == fingerprint_dir(tiny_tokenizer_dir)
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(tmp_path / "other")
    assert fingerprint_dir(tmp_path / "other") != fingerprint_dir(tiny_tokenizer_dir)
