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


def test_worked_solutions_compute_every_answer_and_slips_miss_it():
    import random

    import pytest

    from llmtrain.data_pipeline.arithmetic import Problem, slip_for

    problems = make_problems(10**6, seed=0, max_operand=99, non_negative=True)
    assert len(problems) == 100 * 100 + 100 * 101 // 2  # every sum, differences >= 0
    assert all(p.answer >= 0 for p in problems)
    for problem in problems:
        assert read_answer(problem.worked_solution()) == problem.answer, problem
        assert read_answer(problem.worked_solution(slip=2)) == problem.answer + 2, problem
    assert Problem(18, "+", 15).worked_solution() == "8 + 5 = 13, 1 + 1 + 1 = 3. The answer is 33."
    assert Problem(41, "-", 17).worked_solution() == "11 - 7 = 4, 4 - 1 - 1 = 2. The answer is 24."
    with pytest.raises(ValueError, match="no column arithmetic"):
        Problem(3, "-", 5).worked_solution()
    with pytest.raises(ValueError, match="makes the ones column of 'What is 1 \\+ 0\\?' negative"):
        Problem(1, "+", 0).worked_solution(slip=-2)
    rng = random.Random(0)
    slips = [slip_for(p, rng) for p in problems[:2000]]
    assert 0 not in slips and 0.4 < sum(s > 0 for s in slips) / len(slips) < 0.6
    assert all(read_answer(p.worked_solution(s)) == p.answer + s for p, s in zip(problems, slips))
    record = preference_record(Problem(7, "+", 8), random.Random(0), worked=True)
    chosen, rejected = record["chosen"][0]["content"], record["rejected"][0]["content"]
    assert read_answer(chosen) == 15 and read_answer(rejected) != 15
    record = preference_record(Problem(36, "+", 38), random.Random(0), slip=True)
    chosen, rejected = record["chosen"][0]["content"], record["rejected"][0]["content"]
    assert chosen == Problem(36, "+", 38).worked_solution()
    assert rejected.startswith("6 + 8 = ") and rejected != chosen  # the ones column slips
    assert read_answer(rejected) - read_answer(chosen) in (-3, -2, -1, 1, 2, 3)
