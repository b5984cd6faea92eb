import json
import math
import shutil

import pytest
import torch

from llmtrain.errors import InputDataError, StageInputError
from llmtrain.recipe import load_recipe
from llmtrain.train.evaluate.perplexity import _stream_windows, perplexity_on_texts
from llmtrain.train.evaluate.runner import evaluate_recipe, write_table
from llmtrain.train.evaluate.tasks import (
    TaskSection,
    answer_request,
    continuation_logprobs,
    load_task_records,
    run_multiple_choice_task,
    run_preference_task,
    with_fewshot,
)
from tests.test_generation import WORDS, log_table, make


def test_multiple_choice_scores_by_likelihood_per_character_and_per_byte(tmp_path):
    a, b, c = (WORDS.index(w) for w in "abc")
    table = log_table({0: {a: 0.5, b: 0.5}, b: {c: 0.8, a: 0.2}})
    model, tokenizer = make(table)
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"prompt": "<s>", "choices": ["a", "b c"], "answer": 1}) + "\n")
    records = load_task_records(path, "multiple_choice")
    logprobs = continuation_logprobs(model, tokenizer, [("<s>", " a"), ("<s>", " b c")])
    assert logprobs == pytest.approx([math.log(0.5), math.log(0.5 * 0.8)], abs=1e-5)
    result = run_multiple_choice_task(model, tokenizer, records, ["<s>"])
    # raw likelihood prefers "a" (0.5 > 0.4); per character and per byte of the choice (the
    # space before it not counted) "b c" (log 0.4 / 3 > log 0.5 / 1)
    assert result.metrics == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0, "n": 1}


def test_preference_pairs_are_ranked_by_the_likelihood_of_each_answer(tmp_path):
    a, b, c = (WORDS.index(w) for w in "abc")
    table = log_table({0: {a: 0.6, b: 0.4}, a: {c: 0.5, a: 0.5}, b: {c: 1.0}})
    model, tokenizer = make(table)
    rows = [
        {"prompt": "<s>", "chosen": "a", "rejected": "b"},  # 0.6 over 0.4: right
        {"prompt": "<s>", "chosen": "a c", "rejected": "b c"},  # 0.3 over 0.4: wrong
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_preference_task(
        model, tokenizer, load_task_records(path, "preference"), chat=False
    )
    margin = (math.log(0.6 / 0.4) + math.log(0.3 / 0.4)) / 2
    assert result.metrics["pair_accuracy"] == 0.5
    assert result.metrics["logprob_margin"] == pytest.approx(margin, abs=1e-5)
    assert [s["correct"] for s in result.samples] == [True, False]


def test_preference_answer_is_the_assistant_turn_of_the_chat_template(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    context, answer = answer_request(tokenizer, prompt, "The answer is 4.", chat=True)
    assert context == tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True
    )
    whole = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": "The answer is 4."}], tokenize=False
    )
    assert context + answer == whole
    assert answer.startswith("The answer is 4.")


def test_preference_tasks_take_no_fewshot_examples(tmp_path):
    with pytest.raises(ValueError, match="num_fewshot: 0"):
        TaskSection(name="p", path=tmp_path / "p.jsonl", type="preference", num_fewshot=2)


def test_fewshot_prompt_plain_and_chat(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [
        {"prompt": f"What is {i} + 1?", "answer": i + 1, "completion": f"It is {i + 1}."}
        for i in range(3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second, third = load_task_records(path, "generation")
    assert with_fewshot(third, [first, second], chat=False) == (
        "What is 0 + 1? It is 1.\n\nWhat is 1 + 1? It is 2.\n\nWhat is 2 + 1?"
    )
    assert with_fewshot(third, [first], chat=True) == [
        {"role": "user", "content": "What is 0 + 1?"},
        {"role": "assistant", "content": "It is 1."},
        {"role": "user", "content": "What is 2 + 1?"},
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"answer": 1}, r"mc.jsonl:1: a task record needs a non-empty 'prompt'"),
        ({"prompt": "q"}, r"mc.jsonl:1: a task record needs an 'answer'"),
        (
            {"prompt": "q", "answer": 0, "choices": ["x"]},
            r"needs 'choices': a list of 2\+ non-empty strings",
        ),
        (
            {"prompt": "q", "answer": 5, "choices": ["x", "y"]},
            r"answer index 5 is outside the 2 choices",
        ),
        (
            {"prompt": "q", "answer": "z", "choices": ["x", "y"]},
            r"must be a choice index or one of the choices",
        ),
    ],
)
def test_bad_task_records(tmp_path, record, message):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(InputDataError, match=message):
        load_task_records(path, "multiple_choice")


def test_a_preference_record_needs_both_answers(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "x"}) + "\n")
    with pytest.raises(InputDataError, match=r"pairs.jsonl:1: .* non-empty 'rejected'"):
        load_task_records(path, "preference")


def test_every_token_is_predicted_once():
    tokens = list(range(23))
    windows = list(_stream_windows(tokens, seq_len=5, batch_size=2))
    predicted = [t for w in windows for row in w.tolist() for t in row[1:]]
    assert predicted == tokens[1:]


def test_eval_of_an_untrained_model_is_near_uniform(tiny_causal_lm_dir, tmp_path, write_recipe):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_causal_lm_dir, model_dir)
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + 2?"}], "answer": str(i + 2)}
        for i in range(4)
    ]
    (tmp_path / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc = [
        {"prompt": f"{i} plus one is", "choices": [str(i + 1), str(i + 7)], "answer": 0}
        for i in range(4)
    ]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    pairs = [
        {**row, "chosen": f"The answer is {i + 2}.", "rejected": f"The answer is {i + 3}."}
        for i, row in enumerate(rows)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (tmp_path / "text.txt").write_text("def f(x):\n    return x + 1\n" * 40)
    path = write_recipe(
        f"""
        name: t
        output_dir: out
        eval:
          models: [{model_dir}]
          perplexity: {{files: [text.txt], max_tokens: 2000}}
          tasks:
            - {{name: arith, path: arith.jsonl, type: generation,
               decoding: {{max_new_tokens: 4, answer_pattern: 'The answer is (-?\\d+)'}}}}
            - {{name: mc, path: mc.jsonl, type: multiple_choice, num_fewshot: 1}}
            - {{name: pairs, path: pairs.jsonl, type: preference}}
        """
    )
    recipe = load_recipe(path)
    results = evaluate_recipe(recipe)["model"]
    ppl = results["perplexity"]["text.txt"]
    vocab = 576
    assert vocab / 2 < ppl["perplexity"] < vocab * 2
    assert ppl["bits_per_byte"] > 0
    assert results["tasks"]["arith"] == {"exact_match": 0.0, "n": 4}
    assert set(results["tasks"]["mc"]) == {"acc", "acc_norm", "acc_bytes", "n"}
    assert set(results["tasks"]["pairs"]) == {"pair_accuracy", "logprob_margin", "n"}
    assert results["tasks"]["pairs"]["n"] == 4
    out = recipe.stage_dir("eval")
    assert json.loads((out / "model.json").read_text())["tasks"]["mc"]["n"] == 4
    assert len((out / "samples" / "model-arith.jsonl").read_text().splitlines()) == 4
    assert "| model |" in (out / "results.md").read_text()


def test_eval_names_the_missing_stage(write_recipe):
    recipe = load_recipe(write_recipe("name: t\noutput_dir: out\neval: {models: [sft]}\n"))
    with pytest.raises(
        StageInputError, match=r"eval: .*sft/final does not exist; run the sft stage first"
    ):
        evaluate_recipe(recipe)
    recipe = load_recipe(write_recipe("name: t\noutput_dir: out\neval: {models: [nonsense]}\n"))
    with pytest.raises(StageInputError, match=r"'nonsense' is neither a stage"):
        evaluate_recipe(recipe)
    a, b = recipe.source.parent / "a" / "model", recipe.source.parent / "b" / "model"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    recipe = load_recipe(write_recipe(f"name: t\noutput_dir: out\neval: {{models: [{a}, {b}]}}\n"))
    with pytest.raises(
        StageInputError, match=r"a/model and .*b/model would both write eval/model.json"
    ):
        evaluate_recipe(recipe)


def test_perplexity_of_a_model_that_knows_the_text_is_low():
    a, b = WORDS.index("a"), WORDS.index("b")
    table = log_table({a: {b: 0.99, a: 0.01}, b: {a: 0.98, 7: 0.01, b: 0.01}})
    model, tokenizer = make(table)
    result = perplexity_on_texts(model, tokenizer, ["a b a b a b"], seq_len=4)
    expected_nll = -(3 * math.log(0.99) + 2 * math.log(0.98) + math.log(0.01))
    assert result["tokens"] == 6  # 6 words + </s> - the first token
    assert result["loss"] == pytest.approx(expected_nll / 6, rel=1e-4)
    uniform, tokenizer = make(torch.zeros(len(WORDS), len(WORDS)))
    assert perplexity_on_texts(uniform, tokenizer, ["a b a b a b"], seq_len=4)[
        "perplexity"
    ] == pytest.approx(len(WORDS))


def test_results_table_lists_stages_in_pipeline_order(tmp_path):
    for name, accuracy in [("sft", 0.5), ("grpo", 0.7), ("my-model", 0.1), ("pretrain", 0.0)]:
        result = {"perplexity": {}, "tasks": {"arith": {"exact_match": accuracy, "n": 10}}}
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    table = write_table(tmp_path)
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == [
        "| pretrain",
        "| sft",
        "| grpo",
        "| my-model",
    ]
    assert "| grpo | 0.700 |" in table
