"""The stage registry and stage instances (`stages:` in the recipe)."""

import ast
import json
import sys
from pathlib import Path

import pytest

from llmtrain.errors import RecipeError
from llmtrain.pipeline import MARKER, plan, select_stages, stage_command, stage_fingerprint
from llmtrain.recipe import Recipe, load_recipe
from llmtrain.stages import registry
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[1]

RECIPE = """
name: t
output_dir: out
model: {preset: llama-tiny}
data: {sources: [{name: web, paths: [web.jsonl]}]}
pretrain: {steps: 10, global_batch_size: 8, micro_batch_size: 8}
sft: {data: [{path: chats.jsonl}]}
dpo: {data: [{path: prefs.jsonl}]}
stages:
  sft_math: {kind: sft, inputs: {model: sft}, data: [{path: math.jsonl}], lr: 1.0e-5}
  data_anneal: {kind: data, sources: [{name: hq, paths: [hq.jsonl]}]}
  pretrain_anneal: {kind: pretrain, inputs: {data: data_anneal, model: pretrain}, steps: 5}
"""


@pytest.fixture
def instance_recipe(write_recipe, tmp_path):
    for name in ("web", "chats", "prefs", "math", "hq"):
        (tmp_path / f"{name}.jsonl").write_text("")
    return write_recipe(RECIPE)


def mark_done(recipe, stage):
    path = recipe.stage_dir(stage) / MARKER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": stage_fingerprint(recipe, stage)}))


def test_registry_declares_every_stage_once_and_the_recipe_follows_it():
    kinds = registry()
    names = list(kinds)
    core = ["tokenizer", "data", "pretrain", "sft", "rm", "dpo", "ppo", "grpo", "eval"]
    assert [n for n in names if n in core] == core  # methods may join between them
    assert names[:4] == core[:4] and names[-1] == "eval"
    for name, kind in kinds.items():
        assert Recipe.model_fields[name].annotation == kind.section | None
    assert (
        Recipe.model_fields["model"].annotation == kinds["pretrain"].extra_sections["model"] | None
    )
    assert kinds["ppo"].reads == {"model": "sft", "reward_model": "rm"}
    assert kinds["rm"].produces == "reward_model"
    assert kinds["dpo"].shell_command("dpo_2") == (
        "llmtrain align --method dpo RECIPE --stage dpo_2"
    )


def test_instances_run_after_what_they_read_and_see_their_own_settings(instance_recipe, tmp_path):
    recipe = load_recipe(instance_recipe)
    out = tmp_path / "out"
    assert recipe.stage_names() == [
        "data",
        "data_anneal",
        "pretrain",
        "pretrain_anneal",
        "sft",
        "sft_math",
        "dpo",
    ]
    view = recipe.for_stage("sft_math")
    assert view.sft.lr == 1e-5 and recipe.sft.lr == 2e-5
    assert view.stage_dir("sft") == out / "sft_math"
    assert view.input_dir("sft", "model") == out / "sft"
    assert recipe.input_dir("sft", "model") == out / "pretrain"
    anneal = recipe.for_stage("pretrain_anneal")
    assert anneal.pretrain.steps == 5
    assert anneal.stage_dir("pretrain") == out / "pretrain_anneal"
    assert anneal.input_dir("pretrain", "data") == out / "data_anneal"
    assert anneal.input_dir("pretrain", "model") == out / "pretrain"
    assert recipe.input_dir("pretrain", "model") is None  # optional role, not given
    # the resolved recipe keeps the instances, settings filled in, and loads again
    again = load_recipe(_write(tmp_path / "resolved.yaml", recipe.to_yaml()))
    assert again.stage_names() == recipe.stage_names()
    assert again.for_stage("sft_math").sft == view.sft


def test_dry_run_lists_instance_stages_in_order(instance_recipe):
    result = run_cli("run", str(instance_recipe), "--dry-run")
    assert result.returncode == 0, result.stderr
    listed = [line.split(":")[0].strip() for line in result.stdout.splitlines() if ": run" in line]
    assert listed == [
        "data",
        "data_anneal",
        "pretrain",
        "pretrain_anneal",
        "sft",
        "sft_math",
        "dpo",
    ]


def test_instances_skip_when_done_and_rerun_when_they_or_their_inputs_change(instance_recipe):
    recipe = load_recipe(instance_recipe)
    for stage in recipe.stage_names():
        mark_done(recipe, stage)

    def actions(r):
        return {p.stage: p.action for p in plan(r, select_stages(r, None, None))}

    assert set(actions(recipe).values()) == {"skip"}
    changed = load_recipe(instance_recipe, ["stages.data_anneal.seq_len=64"])
    assert actions(changed) == {
        "data": "skip",
        "data_anneal": "rerun",
        "pretrain": "skip",
        "pretrain_anneal": "rerun",
        "sft": "skip",
        "sft_math": "skip",
        "dpo": "skip",
    }
    upstream_change = load_recipe(instance_recipe, ["sft.lr=3e-5"])
    result = actions(upstream_change)
    assert result["sft"] == result["sft_math"] == "rerun"
    assert result["dpo"] == "rerun" and result["pretrain_anneal"] == "skip"


def test_stage_command_selects_the_instance(instance_recipe):
    recipe = load_recipe(instance_recipe)
    command = stage_command(recipe, "r.yaml", [], "sft_math", "rerun", 1)
    assert command[:3] == [sys.executable, "-m", "llmtrain"]
    assert command[3:] == [
        "align",
        "--method",
        "sft",
        "r.yaml",
        "--stage",
        "sft_math",
        "--overwrite",
    ]
    assert stage_command(recipe, "r.yaml", [], "data_anneal", "run", 2)[3:] == [
        "data",
        "r.yaml",
        "--stage",
        "data_anneal",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("sft: {kind: sft, data: [{path: a.jsonl}]}", "stages.sft: a stage name is lower-case"),
        ("x: {kind: tokenizer}", "stages.x.kind: expected one of data, pretrain, sft, rm, dpo"),
        ("x: {data: []}", "stages.x: expected a mapping with `kind:`"),
        ("x: {kind: sft, inputs: {model: nope}, data: [{path: a.jsonl}]}", "no stage 'nope'"),
        (
            "x: {kind: sft, inputs: {data: sft}, data: [{path: a.jsonl}]}",
            "stages.x.inputs.data: sft reads no 'data' (roles: model)",
        ),
        (
            "x: {kind: sft, inputs: {model: data}, data: [{path: a.jsonl}]}",
            "stages.x.inputs.model: 'data' writes data, but model needs causal_lm",
        ),
        (
            "x: {kind: sft, data: [{path: a.jsonl}], lr: fast}",
            "stages.x.lr: expected a number, got 'fast'",
        ),
        (
            "x: {kind: sft, data: [{path: a.jsonl}], lr_shedule: 1}",
            "stages.x.lr_shedule: unknown key",
        ),
        (
            "x: {kind: sft, inputs: {model: y}, data: [{path: a.jsonl}]}\n"
            "  y: {kind: sft, inputs: {model: x}, data: [{path: a.jsonl}]}",
            "stages: x -> y -> x read from each other in a cycle",
        ),
    ],
)
def test_bad_instances_are_refused_with_their_key(write_recipe, entry, message):
    path = write_recipe(
        "name: t\noutput_dir: out\ndata: {sources: [{name: w, paths: [a.jsonl]}]}\n"
        f"stages:\n  {entry}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert message in str(err.value)


def test_stage_option_must_match_the_command(instance_recipe):
    result = run_cli("data", str(instance_recipe), "--stage", "sft_math")
    assert result.returncode == 2
    assert (
        "--stage sft_math: that is a sft stage, not data; run it with "
        "`llmtrain align --method sft RECIPE --stage sft_math`" in result.stderr
    )


# -- imports: the core imports no stage, a stage imports only what others publish -------------

STAGE_PACKAGES = {"tokenizer": "tokenizer", "data_pipeline": "data_pipeline", "train": "train"}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_no_module_imports_another_stage_package_internals():
    import importlib

    problems = []
    for path in sorted(REPO.glob("llmtrain/*.py")):
        for name in _imports(path):
            if name.split(".")[:2][-1] in STAGE_PACKAGES and name.startswith("llmtrain."):
                problems.append(f"core module {path.name} imports {name}")
    for package, folder in STAGE_PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            for name in _imports(path):
                parts = name.split(".")
                if len(parts) < 3 or parts[0] != "llmtrain" or parts[1] == package:
                    continue
                if parts[1] not in STAGE_PACKAGES:
                    continue
                public = importlib.import_module(f"llmtrain.{parts[1]}").PUBLIC_MODULES
                if parts[2] not in public:
                    problems.append(f"{path.relative_to(REPO)} imports {name}")
    assert problems == []


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_registered_entry_imports():
    import importlib

    for kind in registry().values():
        if kind.entry is not None:
            module_name, function_name = kind.entry.split(":")
            assert callable(getattr(importlib.import_module(module_name), function_name)), kind
