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
