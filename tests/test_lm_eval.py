"""eval.lm_eval: lm-evaluation-harness on our models, offline, against its own command.

The task YAMLs and their jsonl data are written here into tmp_path (lm-eval's `dataset_path:
json` with local `data_files`); no test reaches a hub (conftest sets the offline variables).
"""

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from llmtrain.errors import InputDataError, RecipeError, StageInputError
from llmtrain.recipe import load_recipe
from llmtrain.train.evaluate.runner import evaluate_recipe
from tests.rl_support import problems

lm_eval = pytest.importorskip("lm_eval")

MC_ROWS = [
    # choices of different lengths in characters and bytes (é is two bytes)
    {"prompt": f"{a} plus {b} is", "choices": [str(a + b), "é" * (a + 1), "eleven", "ab"]}
    for a, b in [(1, 2), (2, 2), (3, 1), (0, 4), (5, 3), (2, 6)]
]
for index, row in enumerate(MC_ROWS):
    row["answer"] = index % 4


def write_tasks(folder):
    """Three local lm-eval tasks: tiny_gen (generate_until, exact match of the number after
    "="), tiny_mc (multiple_choice: acc, acc_norm, acc_bytes) and tiny_ppl
    (loglikelihood_rolling: word_perplexity, byte_perplexity, bits_per_byte)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = [{"question": p.question, "answer": str(p.answer)} for p in problems()[:6]]
    texts = [
        {"text": "def add(a, b):\n    return a + b\n"},
        {"text": "What is 2 + 3? 2 + 3 = 5. The answer is 5."},
        # longer than max_length (64 tokens): lm-eval scores it in rolling windows
        {"text": "Lists are mutable sequences, typically used to store collections. " * 6},
    ]
    for name, rows in [("gen", gen), ("mc", MC_ROWS), ("ppl", texts)]:
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def data(name):
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / name}"

    tasks = {
        "tiny_gen": """
            output_type: generate_until
            doc_to_text: "{{question}}"
            doc_to_target: answer
            generation_kwargs: {until: ["<|im_end|>", "\\n"], max_gen_toks: 12, do_sample: false}
            filter_list:
              - name: number
                filter:
                  - {function: regex, regex_pattern: "= (-?[0-9]+)"}
                  - {function: take_first}
            metric_list:
              - {metric: exact_match, aggregation: mean, higher_is_better: true}
            """,
        "tiny_mc": """
            output_type: multiple_choice
            doc_to_text: "{{prompt}}"
            doc_to_choice: choices
            doc_to_target: answer
            metric_list:
              - {metric: acc, aggregation: mean, higher_is_better: true}
              - {metric: acc_norm, aggregation: mean, higher_is_better: true}
              - {metric: acc_bytes, aggregation: mean, higher_is_better: true}
            """,
        "tiny_ppl": """
            output_type: loglikelihood_rolling
            doc_to_text: ""
            doc_to_target: "{{text}}"
            metric_list:
              - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}
              - {metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}
              - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}
            """,
    }
    files = {"tiny_gen": "gen.jsonl", "tiny_mc": "mc.jsonl", "tiny_ppl": "ppl.jsonl"}
    for task, body in tasks.items():
        text = f"task: {task}\n{data(files[task])}\ntest_split: test\n"
        text += textwrap.dedent(body) + "metadata:\n  version: 2.0\n"
        (folder / f"{task}.yaml").write_text(text)
    return folder


def lm_eval_recipe(write_recipe, model_dir, tasks_dir):
    return load_recipe(
        write_recipe(
            f"""
            name: t
            output_dir: out
            eval:
              models: [{model_dir}]
              batch_size: 4
              lm_eval:
                tasks: [tiny_gen, tiny_mc, tiny_ppl]
                max_length: 64
                include_path: [{tasks_dir}]
            """
        )
    )


def lm_eval_command(model_dir, tasks_dir, out_dir, *extra):
    """lm-eval's own command on the same model and tasks; its results JSON."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "run",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model_dir},max_length=64",
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--tasks",
            "tiny_gen,tiny_mc,tiny_ppl",
            "--include_path",
            str(tasks_dir),
            "--output_path",
            str(out_dir),
            "--log_samples",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = out_dir.glob("**/results_*.json")
    return json.loads(results.read_text())


@pytest.mark.slow
def test_llmtrain_eval_equals_the_lm_eval_command(rl_policy, tmp_path, write_recipe):
    # a chat model of a post-training stage: apply_chat_template is on by default
    model_dir = tmp_path / "sft" / "final"
    shutil.copytree(rl_policy, model_dir)
    tasks_dir = write_tasks(tmp_path / "tasks")
    recipe = lm_eval_recipe(write_recipe, model_dir, tasks_dir)
    ours = evaluate_recipe(recipe)["sft-final"]
    theirs = lm_eval_command(model_dir, tasks_dir, tmp_path / "cli", "--apply_chat_template")

    assert ours["lm_eval"]["apply_chat_template"] is True
    assert ours["lm_eval"]["version"] == lm_eval.__version__
    assert ours["lm_eval"]["max_length"] == 64
    expected = {
        "tiny_gen": ["exact_match,number"],
        "tiny_mc": ["acc", "acc_norm", "acc_bytes"],
        "tiny_ppl": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    }
    for task, metrics in expected.items():
        assert ours["lm_eval"]["tasks"][task]["version"] == 2.0
        assert ours["tasks"][task]["n"] == theirs["n-samples"][task]["effective"]
        for metric in metrics:
            key = metric if "," in metric else f"{metric},none"
            assert ours["tasks"][task][metric] == pytest.approx(
                theirs["results"][task][key], rel=1e-6
            ), (task, metric)
    # the policy answers most sums: the generation numbers compare real completions
    assert ours["tasks"]["tiny_gen"]["exact_match,number"] >= 0.5
    samples = tmp_path / "out" / "eval" / "samples" / "sft-final-tiny_gen.jsonl"
    completions = [json.loads(line)["resps"] for line in samples.read_text().splitlines()]
    (their_samples,) = (tmp_path / "cli").glob("**/samples_tiny_gen_*.jsonl")
    their = [json.loads(line)["resps"] for line in their_samples.read_text().splitlines()]
    assert completions == their
    table = (tmp_path / "out" / "eval" / "results.md").read_text()
    assert "tiny_mc acc_norm" in table and "tiny_ppl bits_per_byte" in table


def test_acc_norm_is_lm_evals(tiny_causal_lm_dir, tmp_path):
    """Our evaluator's acc_norm (log-likelihood per character of the choice) and acc_bytes
    (per UTF-8 byte) pick, question by question, what lm-eval's do."""
    from llmtrain.train.evaluate.config import LmEvalSection
    from llmtrain.train.evaluate.generation import load_causal_lm
    from llmtrain.train.evaluate.harness import run_lm_eval
    from llmtrain.train.evaluate.tasks import load_task_records, run_multiple_choice_task

    tasks_dir = write_tasks(tmp_path / "tasks")
    model, tokenizer = load_causal_lm(tiny_causal_lm_dir)
    section = LmEvalSection(tasks=["tiny_mc"], include_path=[tasks_dir], apply_chat_template=False)
    theirs = run_lm_eval(
        section, model, tokenizer, tiny_causal_lm_dir, chat_model=False, batch_size=4
    )
    records = load_task_records(tasks_dir / "mc.jsonl", "multiple_choice")
    ours = run_multiple_choice_task(model, tokenizer, records, [r["prompt"] for r in MC_ROWS])

    their_samples = sorted(theirs["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    their_logprobs = [[resp[0] for resp in s["filtered_resps"]] for s in their_samples]
    for mine, their in zip(ours.samples, their_logprobs):
        assert mine["logprobs"] == pytest.approx(their, abs=1e-4)
    picks = {"acc": "predicted", "acc_norm": "predicted_norm", "acc_bytes": "predicted_bytes"}
    for metric, pick in picks.items():
        per_question = [s[metric] for s in their_samples]
        assert [float(s[pick] == s["answer"]) for s in ours.samples] == per_question, metric
        assert ours.metrics[metric] == pytest.approx(theirs["metrics"]["tiny_mc"][metric])
    # the data tells the definitions apart: per byte of " " + choice (our old acc_norm) picks
    # differently from per character on some question
    old = [
        max(range(4), key=lambda i: s["logprobs"][i] / len((" " + s["choices"][i]).encode()))
        for s in ours.samples
    ]
    per_char = [
        max(range(4), key=lambda i: s["logprobs"][i] / len(s["choices"][i])) for s in ours.samples
    ]
    assert old != per_char


def test_missing_extra_is_named(tiny_causal_lm_dir, tmp_path, write_recipe, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    recipe = lm_eval_recipe(write_recipe, tiny_causal_lm_dir, write_tasks(tmp_path / "tasks"))
    with pytest.raises(StageInputError) as info:
        evaluate_recipe(recipe)
    assert str(info.value) == (
        "eval.lm_eval: lm-evaluation-harness is not installed; install the extra "
        "(pip install 'llmtrain[eval]') or remove eval.lm_eval from the recipe"
    )


def test_a_hub_dataset_offline_and_uncached_names_task_and_dataset(
    tiny_causal_lm_dir, tmp_path, write_recipe, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "hub_task.yaml").write_text(
        textwrap.dedent(
            """
            task: hub_task
            dataset_path: someorg/some_dataset
            dataset_name: main
            test_split: test
            output_type: multiple_choice
            doc_to_text: "{{question}}"
            doc_to_choice: choices
            doc_to_target: answer
            """
        )
    )
    recipe = load_recipe(
        write_recipe(
            f"""
            name: t
            output_dir: out
            eval:
              models: [{tiny_causal_lm_dir}]
              lm_eval: {{tasks: [hub_task], include_path: [{tasks_dir}]}}
            """
        )
    )
    with pytest.raises(InputDataError) as info:
        evaluate_recipe(recipe)
    message = str(info.value)
    assert message.startswith("eval.lm_eval.tasks: the task 'hub_task' needs a dataset")
    assert "'someorg/some_dataset'" in message
    assert "dataset_path: json" in message


def test_unsafe_code_tasks_and_name_clashes_are_refused(tiny_causal_lm_dir, tmp_path, write_recipe):
    tasks_dir = write_tasks(tmp_path / "tasks")
    yaml = (tasks_dir / "tiny_gen.yaml").read_text()
    (tasks_dir / "tiny_code.yaml").write_text(
        yaml.replace("task: tiny_gen", "task: tiny_code") + "unsafe_code: true\n"
    )
    (tmp_path / "mc.jsonl").write_text((tasks_dir / "mc.jsonl").read_text())

    def recipe(lm_eval, tasks="[]"):
        return load_recipe(
            write_recipe(
                f"""
                name: t
                output_dir: out
                eval:
                  models: [{tiny_causal_lm_dir}]
                  tasks: {tasks}
                  lm_eval: {{include_path: [{tasks_dir}], {lm_eval}}}
                """
            )
        )

    with pytest.raises(RecipeError) as info:
        evaluate_recipe(recipe("tasks: [tiny_code]"))
    assert str(info.value) == (
        "eval.lm_eval.tasks: 'tiny_code' runs the code the model writes (tiny_code); set "
        "eval.lm_eval.confirm_run_unsafe_code: true (and HF_ALLOW_CODE_EVAL=1) to run it"
    )
    own = "[{name: tiny_mc, path: mc.jsonl, type: multiple_choice}]"
    with pytest.raises(RecipeError) as info:
        evaluate_recipe(recipe("tasks: [tiny_mc], limit: 1", tasks=own))
    assert str(info.value) == (
        "eval.tasks: the task name 'tiny_mc' is also an lm-eval task in eval.lm_eval; "
        "rename the task of eval.tasks"
    )


@pytest.mark.slow
def test_an_unknown_task_is_named(tiny_causal_lm_dir, tmp_path, write_recipe):
    recipe = load_recipe(
        write_recipe(
            f"""
            name: t
            output_dir: out
            eval:
              models: [{tiny_causal_lm_dir}]
              lm_eval: {{tasks: [no_such_benchmark]}}
            """
        )
    )
    with pytest.raises(RecipeError, match=r"'no_such_benchmark' is not an lm-eval task"):
        evaluate_recipe(recipe)


def test_chat_template_default_follows_the_stage(write_recipe):
    from pathlib import Path

    from llmtrain.train.evaluate.runner import is_post_training

    recipe = load_recipe(write_recipe("name: t\noutput_dir: out\n"))
    assert is_post_training(recipe, "sft", Path("/r/sft/final"), True)
    assert not is_post_training(recipe, "pretrain", Path("/r/pretrain/final"), True)
    assert is_post_training(recipe, "final", Path("/elsewhere/dpo/final"), False)
    assert not is_post_training(recipe, "final", Path("/elsewhere/pretrain/final"), False)
    assert not is_post_training(recipe, "final", Path("/elsewhere/rm/final"), False)
    assert not is_post_training(recipe, "my-model", Path("/models/my-model"), False)
