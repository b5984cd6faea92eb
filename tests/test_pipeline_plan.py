"""What `llmtrain run` decides for each stage, before running anything."""

import json

import pytest

from llmtrain.errors import RecipeError
from llmtrain.pipeline import MARKER, plan, select_stages, stage_fingerprint
from llmtrain.recipe import load_recipe

RECIPE = """
name: t
output_dir: out
model: {preset: llama-tiny}
pretrain: {steps: 10, global_batch_size: 8, micro_batch_size: 8}
sft: {data: [{path: sft.jsonl}]}
rm: {data: [{path: prefs.jsonl}]}
dpo: {data: [{path: prefs.jsonl}]}
eval: {tasks: []}
"""


def actions(recipe, chosen=None, start=None):
    chosen = select_stages(recipe, chosen, start)
    return {p.stage: p.action for p in plan(recipe, chosen, start)}


def mark_done(recipe, stage):
    path = recipe.stage_dir(stage) / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": stage_fingerprint(recipe, stage)}))


def test_fresh_pipeline_runs_every_stage_of_the_recipe(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    assert actions(recipe) == {
        "pretrain": "run",
        "sft": "run",
        "rm": "run",
        "dpo": "run",
        "eval": "run",
    }


def test_finished_stages_are_skipped_and_changes_rerun_downstream(write_recipe):
    path = write_recipe(RECIPE)
    recipe = load_recipe(path)
    for stage in ("pretrain", "sft", "rm", "dpo"):
        mark_done(recipe, stage)
    assert actions(recipe) == {
        "pretrain": "skip",
        "sft": "skip",
        "rm": "skip",
        "dpo": "skip",
        "eval": "run",
    }
    # a DPO setting changes only DPO
    changed = load_recipe(path, ["dpo.beta=0.5"])
    assert actions(changed)["dpo"] == "rerun"
    assert actions(changed)["sft"] == "skip"
    # a model change reruns pretraining and everything that reads from it
    bigger = load_recipe(path, ["model.num_layers=3"])
    assert actions(bigger) == {
        "pretrain": "rerun",
        "sft": "rerun",
        "rm": "rerun",
        "dpo": "rerun",
        "eval": "run",
    }


def test_interrupted_training_stage_resumes(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    (recipe.stage_dir("pretrain") / "checkpoints" / "step-5").mkdir(parents=True)
    (recipe.stage_dir("sft")).mkdir(parents=True)  # started, no checkpoint yet
    result = actions(recipe)
    assert result["pretrain"] == "resume"
    assert result["sft"] == "rerun"


def test_from_reruns_that_stage_and_what_reads_from_it(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    for stage in ("pretrain", "sft", "rm", "dpo"):
        mark_done(recipe, stage)
    assert actions(recipe, start="sft") == {
        "sft": "rerun",
        "rm": "rerun",
        "dpo": "rerun",
        "eval": "run",
    }
    assert actions(recipe, ["rm", "dpo"]) == {"rm": "skip", "dpo": "skip"}


def test_unknown_stage_and_missing_section(write_recipe):
    recipe = load_recipe(write_recipe(RECIPE))
    with pytest.raises(RecipeError, match=r"unknown stage 'pretrian'; stages are: tokenizer, data"):
        select_stages(recipe, ["pretrian"], None)
    with pytest.raises(RecipeError, match=r"the recipe has no section for ppo; add `ppo:`"):
        select_stages(recipe, ["ppo"], None)
    with pytest.raises(RecipeError, match=r"--from grpo: that stage is not among those to run"):
        select_stages(recipe, None, "grpo")


def run_with_stub(monkeypatch, recipe, jobs, fail=()):
    """run_pipeline with each command replaced by a 0.3 s wait; (what, start, end, env, log) of
    each in the order they finished."""
    import threading
    import time

    from llmtrain import pipeline

    calls, lock = [], threading.Lock()

    def fake_run(command, what, env=None, log=None):
        start = time.perf_counter()
        time.sleep(0.3)
        with lock:
            calls.append((what, start, time.perf_counter(), env, log))
        if what in fail:
            raise pipeline.PipelineError(f"{what} failed")

    monkeypatch.setattr(pipeline, "_run", fake_run)
    monkeypatch.setattr(pipeline, "refresh_model_cards", lambda output_dir: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(pipeline, "available_cpus", lambda: 8)
    pipeline.run_pipeline(recipe, "recipe.yaml", [], jobs=jobs)
    return calls


def recipe_with_inputs(write_recipe, text):
    path = write_recipe(text)
    for name in ("sft.jsonl", "prefs.jsonl", "prompts.jsonl"):
        (path.parent / name).write_text("{}\n")
    return load_recipe(path)


def test_jobs_run_stages_side_by_side_once_what_they_read_has_finished(write_recipe, monkeypatch):
    recipe = recipe_with_inputs(write_recipe, RECIPE)
    calls = {what: rest for what, *rest in run_with_stub(monkeypatch, recipe, jobs=2)}
    assert set(calls) == {"pretrain", "sft", "rm", "dpo", "eval of pretrain", "eval of sft",
                          "eval of dpo"}  # fmt: skip
    start, end = {w: c[0] for w, c in calls.items()}, {w: c[1] for w, c in calls.items()}
    assert end["pretrain"] <= start["sft"] and end["sft"] <= min(start["rm"], start["dpo"])
    assert start["dpo"] < end["rm"] and start["rm"] < end["dpo"]  # rm and dpo at once
    assert calls["dpo"][2]["OMP_NUM_THREADS"] == "4"  # 8 cores shared with rm
    assert "OMP_NUM_THREADS" not in calls["sft"][2]  # alone: every core
    assert calls["eval of dpo"][3] == recipe.output_dir / "logs" / "dpo.log"
    # one job: the stages one after another in run order, output to the console
    for stage in ("pretrain", "sft", "rm", "dpo"):
        (recipe.stage_dir(stage) / MARKER).unlink()
    order = run_with_stub(monkeypatch, recipe, jobs=1)
    assert [c[0] for c in order] == ["pretrain", "eval of pretrain", "sft", "eval of sft", "rm",
                                     "dpo", "eval of dpo"]  # fmt: skip
    assert all(c[4] is None and "OMP_NUM_THREADS" not in c[3] for c in order)


def test_after_a_failure_no_stage_starts_and_running_ones_finish(write_recipe, monkeypatch):
    from llmtrain.pipeline import PipelineError

    ppo = "ppo: {data: [{path: prompts.jsonl}], rewards: [{type: answer_match}]}\n"
    recipe = recipe_with_inputs(write_recipe, RECIPE + ppo)
    with pytest.raises(PipelineError, match="^rm failed$"):
        run_with_stub(monkeypatch, recipe, jobs=2, fail=("rm",))
    assert (recipe.stage_dir("dpo") / MARKER).is_file()  # ran beside rm and finished
    assert not (recipe.stage_dir("rm") / MARKER).exists()
    assert not recipe.stage_dir("ppo").exists()  # reads rm: never started
    with pytest.raises(RecipeError, match=r"^--jobs 0: run at least one stage at a time"):
        run_with_stub(monkeypatch, recipe, jobs=0)


def test_a_stage_run_with_a_log_writes_there_and_its_failure_names_the_log(tmp_path):
    import sys

    from llmtrain.pipeline import PipelineError, _run

    log = tmp_path / "rm.log"
    _run([sys.executable, "-c", "print('step 1')"], "rm", log=log)
    with pytest.raises(PipelineError) as failed:
        _run([sys.executable, "-c", "import sys; print('step 2'); sys.exit(3)"], "rm", log=log)
    assert str(failed.value) == (
        f"rm failed (exit status 3); fix what it reported in {log} and run the same "
        "`llmtrain run` again: finished stages are skipped, an interrupted training stage "
        "resumes"
    )
    assert log.read_text() == "step 1\nstep 2\n"  # appended, the console left alone
