"""Reward sources shared by PPO and GRPO."""

import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from llmtrain.errors import RecipeError, StageInputError
from llmtrain.recipe import validate_section
from llmtrain.train.align.grpo import CombinedReward, group_spread
from llmtrain.train.align.rewards import RewardModelScore, build_rewards, final_answer
from llmtrain.train.align.rl_config import RewardSection


def rewards_of(*specs, tmp_path=None):
    sections = [validate_section(RewardSection, spec) for spec in specs]
    return build_rewards(sections, default_reward_model=(tmp_path or "/nonexistent"), method="ppo")


CHAT = [{"role": "user", "content": "What is 2 + 3?"}]


def test_builtin_rewards():
    rewards = rewards_of(
        {"type": "answer_match"},
        {"type": "numeric_match", "tolerance": 0.01, "weight": 0.5},
        {"type": "format", "pattern": r"The answer is -?\d+\.$", "weight": 0.25},
        {"type": "length_penalty", "target_length": 3, "coef": 0.1},
    )
    completions = ["2 + 3 = 5. The answer is 5.", "The answer is 5.0", "I think 6", "5"]
    totals, parts = rewards.score([CHAT] * 4, completions, answer=["5"] * 4)
    assert parts["answer_match"] == [1.0, 1.0, 0.0, 1.0]
    assert parts["numeric_match"] == [1.0, 1.0, 0.0, 1.0]
    assert parts["format"] == [1.0, 0.0, 0.0, 0.0]
    assert parts["length_penalty"] == pytest.approx([-0.6, -0.1, 0.0, 0.0])  # words over 3
    assert totals == pytest.approx([1 + 0.5 + 0.25 - 0.6, 1.5 - 0.1, 0.0, 1.5])


def test_answers_are_read_and_normalised():
    assert final_answer("so the answer is Paris.", None) == "Paris"
    assert final_answer("1 + 1 = 2, then 2 + 2 = 4", None) == "4"
    assert final_answer("x = 7. The answer is 7.", r"The answer is (-?\d+)\.") == "7"
    assert final_answer("no digits", None) is None
    rewards = rewards_of({"type": "answer_match"})
    # conversational completions (TRL's form) and text answers
    totals, _ = rewards.score(
        [CHAT, CHAT],
        [[{"role": "assistant", "content": "The answer is PARIS!"}], "paris"],
        answer=["Paris", "Rome"],
    )
    assert totals == [1.0, 0.0]


def test_numeric_match_tolerance_is_relative_to_the_answer():
    rewards = rewards_of({"type": "numeric_match", "tolerance": 0.01})
    totals, _ = rewards.score(["q"] * 3, ["1004", "1011", "-0.005"], answer=["1000", "1000", "0"])
    assert totals == [1.0, 0.0, 1.0]


def test_user_function_and_its_errors(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            def brevity(prompts, completions, **fields):
                return [1.0 / (1 + len(c)) for c in completions]

            def too_few(prompts, completions, **fields):
                return [0.0]

            def not_finite(prompts, completions, **fields):
                return [0.0, float("nan")]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    totals, _ = rewards_of({"type": "function", "function": "my_rewards:brevity"}).score(
        ["q", "q"], ["a", "abc"]
    )
    assert totals == [0.5, 0.25]
    with pytest.raises(
        StageInputError, match=r"reward 'function' returned 1 values for 2 completions"
    ):
        rewards_of({"type": "function", "function": "my_rewards:too_few"}).score(
            ["q", "q"], ["a", "b"]
        )
    with pytest.raises(
        StageInputError,
        match=r"reward 'function' returned nan for sample 1 \(prompt 'q2', completion 'bad one'\)",
    ):
        rewards_of({"type": "function", "function": "my_rewards:not_finite"}).score(
            ["q1", "q2"], ["a", "bad one"]
        )
    with pytest.raises(
        RecipeError, match=r"reward function 'no_such_module:f': cannot import module"
    ):
        rewards_of({"type": "function", "function": "no_such_module:f"})
    with pytest.raises(RecipeError, match=r"module 'my_rewards' has no function 'missing'"):
        rewards_of({"type": "function", "function": "my_rewards:missing"})


def test_reward_section_errors():
    with pytest.raises(RecipeError, match=r"a reward of type function needs function:"):
        validate_section(RewardSection, {"type": "function"})
    with pytest.raises(RecipeError, match=r"pattern needs a group around the answer"):
        validate_section(RewardSection, {"type": "answer_match", "pattern": r"\d+"})
    with pytest.raises(RecipeError, match=r"type: expected one of 'answer_match'"):
        validate_section(RewardSection, {"type": "vibes"})


def test_missing_answer_field_is_named():
    with pytest.raises(StageInputError, match=r"the prompt records have no 'answer' field"):
        rewards_of({"type": "answer_match"}).score(["q"], ["5"], solution=["5"])


def test_missing_reward_model_names_the_stage(tmp_path):
    with pytest.raises(
        StageInputError, match=r"no reward model at .*; run `llmtrain align --method rm"
    ):
        rewards_of({"type": "reward_model"}, tmp_path=tmp_path / "rm" / "final")


@pytest.fixture(scope="module")
def reward_model_dir(tiny_tokenizer_dir, tmp_path_factory):
    """A tiny sequence classifier with one output whose tokenizer pads with eos."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("rm")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.pad_token = tokenizer.eos_token  # pad == eos, the hard case
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=576,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_reward_model_scores_do_not_depend_on_batch_or_padding(reward_model_dir):
    scorer = RewardModelScore(reward_model_dir, batch_size=4)
    prompts = [CHAT, CHAT, [{"role": "user", "content": "hi"}]]
    completions = ["The answer is 5.", "5<|endoftext|> and more text after an eos", "hello"]
    together = scorer(prompts, completions)
    alone = [scorer([p], [c])[0] for p, c in zip(prompts, completions)]
    assert together == pytest.approx(alone, abs=1e-5)
    scorer.tokenizer.padding_side = "left"
    assert scorer(prompts, completions) == pytest.approx(alone, abs=1e-5)


def test_reward_model_without_a_scalar_head_is_refused(reward_model_dir, tmp_path):
    config = AutoConfig.from_pretrained(reward_model_dir)
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(reward_model_dir).save_pretrained(tmp_path)
    with pytest.raises(StageInputError, match=r"has 2 outputs, not a scalar head"):
        RewardModelScore(tmp_path)


def test_combined_reward_for_grpo_logs_sources_and_group_spread():
    logged = {}
    combined = CombinedReward(
        rewards_of({"type": "answer_match"}, {"type": "format", "pattern": "answer"})
    )
    prompts = ["a", "a", "b", "b"]
    totals = combined(
        prompts,
        ["the answer is 1", "2", "the answer is 3", "the answer is 3"],
        answer=["1", "1", "3", "3"],
        log_metric=logged.__setitem__,
        trainer_state=None,
    )
    assert totals == [2.0, 0.0, 2.0, 2.0]
    assert logged["reward/answer_match"] == 0.75
    assert logged["reward_group_std"] == pytest.approx((1.0 + 0.0) / 2)
    assert group_spread(["x", "y"], [1.0, 2.0]) == 0.0
