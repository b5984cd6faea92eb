"""What every final/ holds besides the weights: the KV cache switched on, and a model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from llmtrain.model_card import INTENDED_USE
from llmtrain.rundir import RunDir


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_final_generates_one_new_token_per_step(sft_arithmetic):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, _ = sft_arithmetic
    final = recipe.stage_dir("sft") / "final"
    for name in ("config.json", "generation_config.json"):
        assert json.loads((final / name).read_text())["use_cache"] is True, name
    model = AutoModelForCausalLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    fed = []
    model.model.register_forward_pre_hook(
        lambda module, args, kwargs: fed.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    prompt = tokenizer("What is 3 + 4?", return_tensors="pt")
    with torch.no_grad():
        model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert fed == [prompt["input_ids"].shape[1]] + [1] * 5


def test_save_final_switches_the_cache_on(tmp_path):
    """Models are created with use_cache false (training does not need it); what is saved
    generates with it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            use_cache=False,
        )
    )
    assert model.generation_config.use_cache is False
    final = RunDir(tmp_path / "pretrain").save_final(lambda tmp: model.save_pretrained(tmp))
    for name in ("config.json", "generation_config.json"):
        assert json.loads((final / name).read_text())["use_cache"] is True, name


def test_model_card_of_an_alignment_stage(sft_arithmetic):
    recipe, _ = sft_arithmetic
    final = recipe.stage_dir("sft") / "final"
    card = (final / "README.md").read_text()
    meta = front_matter(card)
    data = Path(recipe.sft.data[0].path)
    assert meta["base_model"] == str(recipe.sft.model)
    assert meta["datasets"] == [data.name]
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["llmtrain", "sft"]
    assert "license" not in meta  # the recipe states none
    assert f"| {data.name} | `{hashlib.sha256(data.read_bytes()).hexdigest()}` | 1.0 |" in card
    assert "| sft | sft | " in card and "max_steps=150" in card
    assert INTENDED_USE in card


def test_model_card_of_pretraining_names_data_sources_licence_and_eval(tmp_path):
    output = tmp_path / "run"
    (output / "data").mkdir(parents=True)
    shards = [
        {"source": "web", "sha256": "a" * 64},
        {"source": "code", "sha256": "b" * 64},
        {"source": "web", "sha256": "c" * 64},
    ]
    manifest = {"sources": [{"name": "web", "weight": 2.0}, {"name": "code", "weight": 1.0}]}
    (output / "data" / "manifest.json").write_text(json.dumps({**manifest, "shards": shards}))
    (output / "eval").mkdir()
    (output / "eval" / "pretrain.json").write_text(
        json.dumps({"perplexity": {"data_validation": {"bits_per_byte": 1.25}}, "tasks": {}})
    )
    run = RunDir(output / "pretrain")
    run.path.mkdir()
    recipe = {
        "name": "demo",
        "output_dir": str(output),
        "license": "apache-2.0",
        "model": {"preset": "llama-tiny", "num_layers": 4},
        "pretrain": {"steps": 300, "lr": 0.003},
    }
    (run.path / "config.yaml").write_text(yaml.safe_dump(recipe))
    final = run.save_final(lambda tmp: (tmp / "config.json").write_text("{}"))
    card = (final / "README.md").read_text()
    meta = front_matter(card)
    assert "base_model" not in meta  # trained from scratch
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["web", "code"]
    web = hashlib.sha256(("a" * 64 + "c" * 64).encode()).hexdigest()
    assert f"| web | `{web}` | 2.0 |" in card
    assert "| pretrain | pretrain | " in card and "preset=llama-tiny" in card
    assert "| data_validation | bits_per_byte | 1.25 |" in card


def test_refresh_after_eval_adds_the_results(tmp_path):
    from llmtrain.model_card import refresh_model_cards

    output = tmp_path / "run"
    run = RunDir(output / "sft")
    run.path.mkdir(parents=True)
    (run.path / "config.yaml").write_text(yaml.safe_dump({"name": "x", "output_dir": str(output)}))
    final = run.save_final(lambda tmp: (tmp / "config.json").write_text("{}"))
    assert "No evaluation results yet" in (final / "README.md").read_text()
    (output / "eval").mkdir()
    (output / "eval" / "sft.json").write_text(
        json.dumps({"perplexity": {}, "tasks": {"arithmetic": {"exact_match": 0.88, "n": 100}}})
    )
    assert refresh_model_cards(output) == [final / "README.md"]
    card = (final / "README.md").read_text()
    assert "| arithmetic | exact_match | 0.88 |" in card and "| arithmetic | n | 100 |" in card
    assert "No evaluation results yet" not in card


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_rollouts_feed_one_new_token_per_step(rl_policy, tmp_path, monkeypatch, method):
    """Even from a model whose generation config says use_cache false (as every final/ did
    before), GRPO's and PPO's rollouts generate with the KV cache."""
    import shutil

    from transformers.models.llama import modeling_llama

    from llmtrain.recipe import load_recipe
    from llmtrain.train.align.grpo import run_grpo
    from llmtrain.train.align.ppo import run_ppo
    from tests.align_support import run_args
    from tests.rl_support import rl_recipe

    policy = shutil.copytree(rl_policy, tmp_path / "policy")
    path = policy / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_cache": False}))
    calls: list[list[int]] = []  # the lengths fed to the model in each generate call
    forward, generate = modeling_llama.LlamaModel.forward, modeling_llama.LlamaForCausalLM.generate

    def recording_forward(self, input_ids=None, **kwargs):
        if calls and calls[-1] is not None and input_ids is not None:
            calls[-1].append(input_ids.shape[1])
        return forward(self, input_ids=input_ids, **kwargs)

    def recording_generate(self, *args, **kwargs):
        calls.append([])
        try:
            return generate(self, *args, **kwargs)
        finally:
            calls.append(None)  # forwards after this one are not generation

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", recording_forward)
    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "generate", recording_generate)
    sizes = {"global_batch_size": 8, "micro_batch_size": 8}
    if method == "ppo":
        sizes |= {"rollout_batch_size": 8, "ppo_epochs": 1, "eval_every": 0, "save_every": 0}
    recipe = load_recipe(rl_recipe(tmp_path / method, method, policy, max_steps=1, **sizes))
    (run_grpo if method == "grpo" else run_ppo)(recipe, run_args())
    generations = [lengths for lengths in calls if lengths]
    assert generations  # the rollout generated
    for prompt, *steps in generations:  # the prompts at once, then one token per step
        assert prompt > 1 and steps and set(steps) == {1}, generations
