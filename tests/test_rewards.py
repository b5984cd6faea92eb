"""Reward sources shared by PPO and GRPO."""

import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from llmtrain.answers import extract_answer
from llmtrain.errors import RecipeError, StageInputError
from llmtrain.recipe import validate_section
from llmtrain.train.align.grpo import CombinedReward
from llmtrain.train.align.ppo import value_model_source
from llmtrain.train.align.rewards import RewardModelScore, build_rewards
from llmtrain.train.align.rl_config import RewardSection
from llmtrain.train.align.rm import sequence_scores


def rewards_of(*specs, tmp_path=None, search_path=()):
    sections = [validate_section(RewardSection, spec) for spec in specs]
    return build_rewards(
        sections,
        default_reward_model=(tmp_path or "/nonexistent"),
        method="ppo",
        search_path=search_path,
    )


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
    # one extractor for rewards and eval (llmtrain/answers.py): the answer comes normalised,
    # and a completion with neither "answer is" nor a number is its own answer
    assert extract_answer("so the answer is Paris.", None) == "paris"
    assert extract_answer("1 + 1 = 2, then 2 + 2 = 4", None) == "4"
    assert extract_answer("x = 7. The answer is 7.", r"The answer is (-?\d+)\.") == "7"
    assert extract_answer("no digits", None) == "no digits"
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

            def not_a_list(prompts, completions, **fields):
                return 1.0

            def fails(prompts, completions, **fields):
                return [len(c) / 0 for c in completions]

            def no_kwargs(prompts, completions):
                return [0.0] * len(completions)
            """
        )
    )
    (tmp_path / "broken_rewards.py").write_text("def f(prompts, completions:\n    pass\n")
    (tmp_path / "needs_more.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_rewards", None)
    totals, _ = rewards_of({"type": "function", "function": "my_rewards:brevity"}).score(
        ["q", "q"], ["a", "abc"]
    )
    assert totals == [0.5, 0.25]
    with pytest.raises(StageInputError) as err:
        rewards_of({"type": "function", "function": "my_rewards:too_few"}).score(
            ["q", "q"], ["a", "b"]
        )
    assert str(err.value) == (
        "reward function 'my_rewards:too_few' (function) returned 1 values for 2 completions; "
        "it must return one number per completion"
    )
    with pytest.raises(StageInputError) as err:
        rewards_of({"type": "function", "function": "my_rewards:not_finite", "name": "nf"}).score(
            ["q1", [{"role": "user", "content": "q2"}]], ["a", "bad one"]
        )
    assert str(err.value) == (
        "reward function 'my_rewards:not_finite' (nf) returned nan for sample 1 (prompt "
        "'user: q2', completion 'bad one'); rewards must be finite numbers"
    )
    with pytest.raises(
        StageInputError,
        match=r"reward function 'my_rewards:not_a_list' \(function\) returned float, not a list",
    ):
        rewards_of({"type": "function", "function": "my_rewards:not_a_list"}).score(["q"], ["a"])
    with pytest.raises(
        StageInputError,
        match=r"reward function 'my_rewards:fails' \(function\) raised ZeroDivisionError: "
        r"division by zero \(on 2 completions, the first: prompt 'q1', completion 'a'\)",
    ):
        rewards_of({"type": "function", "function": "my_rewards:fails"}).score(
            ["q1", "q2"], ["a", "b"]
        )
    with pytest.raises(StageInputError, match=r"unexpected keyword argument 'answer'.*\*\*kwargs"):
        rewards_of({"type": "function", "function": "my_rewards:no_kwargs"}).score(
            ["q"], ["a"], answer=["1"]
        )
    with pytest.raises(RecipeError) as err:
        rewards_of({"type": "function", "function": "no_such_module:f"})
    assert str(err.value).startswith(
        "reward function 'no_such_module:f': cannot import module 'no_such_module' "
        "(No module named 'no_such_module'); it is looked up on PYTHONPATH"
    )
    with pytest.raises(RecipeError, match=r"module 'my_rewards' \(.*my_rewards.py\) has no funct"):
        rewards_of({"type": "function", "function": "my_rewards:missing"})
    with pytest.raises(
        RecipeError,
        match=r"reward function 'broken_rewards:f': importing module 'broken_rewards' failed "
        r"with SyntaxError",
    ):
        rewards_of({"type": "function", "function": "broken_rewards:f"})
    with pytest.raises(
        RecipeError,
        match=r"importing module 'needs_more' failed with ModuleNotFoundError: No module named "
        r"'not_installed_dependency'",
    ):
        rewards_of({"type": "function", "function": "needs_more:f"})


def test_user_function_beside_the_recipe_is_found(tmp_path):
    """A module next to the recipe (or in the current directory) imports without PYTHONPATH."""
    folder = tmp_path / "recipe_folder"
    folder.mkdir()
    (folder / "beside_recipe_rewards.py").write_text(
        "def exact(prompts, completions, answer, **fields):\n"
        "    return [float(c.strip() == a) for c, a in zip(completions, answer)]\n"
    )
    sys.modules.pop("beside_recipe_rewards", None)
    spec = {"type": "function", "function": "beside_recipe_rewards:exact"}
    with pytest.raises(RecipeError, match=r"cannot import module 'beside_recipe_rewards'"):
        rewards_of(spec)
    rewards = rewards_of(
        spec, {"type": "format", "pattern": "7", "weight": 2.0}, search_path=[folder]
    )
    totals, parts = rewards.score(["q", "q"], ["7", " 8"], answer=["7", "7"])
    assert parts["function"] == [1.0, 0.0]
    assert totals == [3.0, 0.0]
    sys.path.remove(str(folder))


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
    prompts = [CHAT, CHAT, [{"role": "user", "content": "hi"}], "What is 2 + 3?"]
    completions = ["The answer is 5.", "5<|endoftext|> and more text after an eos", "hello", " 5"]
    together = scorer(prompts, completions)
    alone = [scorer([p], [c])[0] for p, c in zip(prompts, completions)]
    assert together == pytest.approx(alone, abs=1e-5)
    # each is the score of the unpadded sequence the rm stage would have built
    for prompt, completion, score in zip(prompts, completions, together):
        ids = torch.tensor([scorer.token_ids(prompt, completion)])
        assert float(sequence_scores(scorer.model, ids, torch.ones_like(ids))[0]) == pytest.approx(
            score, abs=1e-5
        )
    # a text prompt: its tokens, the completion's, then eos (as rm tokenizes text pairs)
    tokenizer = scorer.tokenizer
    assert scorer.token_ids("What is 2 + 3?", " 5") == (
        tokenizer("What is 2 + 3?")["input_ids"]
        + tokenizer(" 5", add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
    )


def test_a_reward_model_with_another_tokenizer_reads_its_own_tokens(
    reward_model_dir, tiny_causal_lm_dir, tmp_path
):
    """The text is re-tokenized with the reward model's tokenizer; the value model then cannot
    start from the reward model (it must read the policy's tokens)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from tests.conftest import build_tiny_tokenizer

    other = build_tiny_tokenizer(tmp_path / "other-tokenizer", vocab_size=320)
    tokenizer = AutoTokenizer.from_pretrained(other)
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    assert policy_tokenizer.get_vocab() != tokenizer.get_vocab()

    rewards = rewards_of({"type": "reward_model", "path": str(tmp_path / "rm")})
    scorer = rewards.reward_models[0]
    reply = [{"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}]
    ids = tokenizer.apply_chat_template(CHAT + reply, tokenize=True, return_dict=True)["input_ids"]
    assert scorer.token_ids(CHAT, reply) == list(ids)
    assert (
        ids
        != policy_tokenizer.apply_chat_template(CHAT + reply, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )
    expected = sequence_scores(scorer.model, torch.tensor([ids]), torch.ones(1, len(ids)))
    totals, _ = rewards.score([CHAT], [reply])
    assert totals[0] == pytest.approx(float(expected[0]), abs=1e-5)

    auto, from_rm = SimpleNamespace(value_model="auto"), SimpleNamespace(value_model="reward_model")
    assert value_model_source(auto, rewards, policy_tokenizer) is None  # the policy + a new head
    with pytest.raises(StageInputError, match=r"has another tokenizer than the policy"):
        value_model_source(from_rm, rewards, policy_tokenizer)
    same = rewards_of({"type": "reward_model", "path": str(reward_model_dir)})
    shared = AutoTokenizer.from_pretrained(reward_model_dir)
    assert value_model_source(auto, same, shared) == reward_model_dir


def test_reward_model_without_a_scalar_head_is_refused(reward_model_dir, tmp_path):
    config = AutoConfig.from_pretrained(reward_model_dir)
    config.num_labels = 2
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(reward_model_dir).save_pretrained(tmp_path)
    with pytest.raises(StageInputError, match=r"has 2 outputs, not a scalar head"):
        RewardModelScore(tmp_path)


def test_a_language_model_is_not_a_reward_model(tiny_causal_lm_dir):
    with pytest.raises(StageInputError) as err:
        RewardModelScore(tiny_causal_lm_dir)
    assert str(err.value) == (
        f"reward model: {tiny_causal_lm_dir} has no trained scalar head (its checkpoint holds no "
        "score weights: a language model, not a reward model); train one with `llmtrain align "
        "--method rm` or give the rm stage's final/"
    )


def test_combined_reward_for_grpo_logs_sources_and_group_spread():
    logged = {}
    combined = CombinedReward(
        rewards_of({"type": "answer_match"}, {"type": "format", "pattern": "answer"}), 2
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
    # groups [2, 0] and [2, 2]: sample std sqrt(2) and 0; one group of two without spread
    assert logged["reward_group_std"] == pytest.approx(2**0.5 / 2)
    assert logged["reward_group_zero_std_share"] == 0.5
