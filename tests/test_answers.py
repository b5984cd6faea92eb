"""One final-answer extractor (llmtrain/answers.py) for rewards and eval, and one stop-token
rule (llmtrain/chat.py) that follows the chat template."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from llmtrain.answers import extract_answer, is_correct, last_number, normalize_answer, parse_number
from llmtrain.chat import end_of_turn_token_id, stop_token_ids
from llmtrain.data_pipeline.arithmetic import ANSWER_PATTERN, Problem, read_answer
from llmtrain.recipe import validate_section
from llmtrain.train.align.rewards import build_rewards
from llmtrain.train.align.rl_config import RewardSection
from llmtrain.train.evaluate import generation, tasks

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Paris. ", "paris"),
        ("**Paris**", "paris"),
        ("PARIS!", "paris"),
        ("New   York", "new york"),
        ("7", "7"),
        ("7.", "7"),
        ("3.0", "3"),
        ("2.50", "2.5"),
        ("+4", "4"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("1e3", "1000"),
        ("1,000", "1000"),
        ("$1,234.50", "1234.5"),
        ("1,5", "1,5"),  # not a thousands separator: stays text
        ("12345678901234567891", "12345678901234567891"),  # exact, no float rounding
        ("1e400", "1e+400"),  # no 400-digit string
        ("１２", "12"),  # full-width digits (NFKC)
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "pattern", "expected"),
    [
        ("x = 7. The answer is 7.", ANSWER_PATTERN, "7"),
        ("The answer is 3. The answer is 5.", ANSWER_PATTERN, "5"),  # the last match
        ("no answer", ANSWER_PATTERN, None),
        ("so the answer is Paris.", None, "paris"),
        ("The answer is 3.5. Next, 9", None, "3.5"),  # "answer is" wins over the last number
        ("The Answer is: -12", None, "-12"),
        ("1 + 1 = 2, then 2 + 2 = 4", None, "4"),  # else the last number
        ("5-3 leaves 2, x = 5-3", None, "3"),  # a minus between numbers is no sign
        ("it costs $1,250.", None, "1250"),
        ("no digits here.", None, "no digits here"),  # else the whole text
        ("   ", None, None),
    ],
)
def test_extract_answer(text, pattern, expected):
    assert extract_answer(text, pattern) == expected


def test_numbers():
    assert parse_number("1234.5") == 1234.5
    assert parse_number("paris") is None
    assert parse_number("1e+400") is None  # not finite
    assert parse_number(None) is None
    assert last_number("about 1,000 or 2.5 apples") == 2.5
    assert last_number("none") is None
    assert is_correct("7", " 7.0 ") and not is_correct(None, "7") and not is_correct("7", "8")


# Completions on which the old reward (train/align/rewards.py) and the old eval
# (train/evaluate/generation.py) disagreed, or were both wrong, with the verdict both give now.
DISAGREED = [
    # (completion, reference, pattern, correct)
    ("The answer is 7.", "7", None, True),  # old eval compared the whole text: wrong
    ("$5", "5", None, True),  # old eval kept the $: wrong
    ("**42**", "42", None, True),  # both kept the markdown: wrong
    ("1,5", "15", None, False),  # both read 1,5 as 15: right only by accident of commas
    ("12345678901234567891", "12345678901234567890", None, False),  # both rounded to a float
    ("Paris", "Paris", None, True),  # old reward found no answer (no "answer is", no number)
    ("The answer is 1,000.", "1000", ANSWER_PATTERN.replace("-?\\d+", "[\\d,]+"), True),
    ("x = 7. The answer is 7.", "7", ANSWER_PATTERN, True),
    ("The answer is 8.", "7", ANSWER_PATTERN, False),
    ("I think 7", "7", ANSWER_PATTERN, False),  # no match of the pattern
]


def _eval_exact_match(monkeypatch, completions, references, pattern):
    """eval's generation task on completions given in place of the model's."""
    monkeypatch.setattr(
        tasks,
        "decode",
        lambda model, tokenizer, prompts, decoding, **kw: [
            generation.Decoded(text=c, candidates=[generation.Candidate(c)]) for c in completions
        ],
    )
    records = [tasks.TaskRecord(prompt="q", answer=r) for r in references]
    decoding = generation.DecodingSection(answer_pattern=pattern)
    result = tasks.run_generation_task(
        None, None, records, ["q"] * len(records), decoding, chat=False
    )
    return [sample["correct"] for sample in result.samples]


@pytest.mark.parametrize(("completion", "reference", "pattern", "correct"), DISAGREED)
def test_reward_and_eval_give_one_verdict(monkeypatch, completion, reference, pattern, correct):
    section = validate_section(RewardSection, {"type": "answer_match", "pattern": pattern})
    rewards = build_rewards([section], default_reward_model=Path("/nonexistent"), method="grpo")
    reward, _ = rewards.score(["q"], [completion], answer=[reference])
    eval_verdict = _eval_exact_match(monkeypatch, [completion], [reference], pattern)
    # self-consistency votes over the same answers
    votes = generation.self_consistency([completion, completion], pattern).answer
    assert reward == [float(correct)]
    assert eval_verdict == [correct]
    assert is_correct(votes, reference) is correct


def test_numeric_match_reads_the_same_answer():
    section = validate_section(
        RewardSection, {"type": "numeric_match", "pattern": r"answer is ([^\n]*)"}
    )
    rewards = build_rewards([section], default_reward_model=Path("/nonexistent"), method="ppo")
    scores, _ = rewards.score(
        ["q"] * 4,
        ["The answer is $1,000.", "The answer is 1000.0", "The answer is about 999", "none"],
        answer=["1,000"] * 4,
    )
    assert scores == [1.0, 1.0, 0.0, 0.0]


def test_the_demo_reads_answers_as_its_recipe_rewards_and_scores_them():
    problem = Problem(27, "+", 15)
    assert read_answer(problem.worked_solution()) == 42
    assert read_answer(problem.solution(40)) == 40
    recipe = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    rewards = [r for stage in ("ppo", "grpo") for r in recipe[stage]["rewards"]]
    patterns = {r["pattern"] for r in rewards if r["type"] == "answer_match"}
    patterns |= {
        t["decoding"]["answer_pattern"]
        for t in recipe["eval"]["tasks"]
        if t["type"] == "generation"
    }
    assert patterns == {ANSWER_PATTERN}


# ------------------------------------------------------------------------------------------
# The stop token follows the chat template

LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{%- for m in messages -%}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] }}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif -%}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>"]
LLAMA3_SPECIALS += ["<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture
def llama3_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "hi", "Zq7", "user", "assistant", "hello"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        additional_special_tokens=LLAMA3_SPECIALS[2:],
        chat_template=LLAMA3_TEMPLATE,
    )


def test_the_stop_token_follows_a_llama3_template(llama3_tokenizer):
    tokenizer = llama3_tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert "<|im_end|>" not in tokenizer.get_vocab()
    assert end_of_turn_token_id(tokenizer) == eot  # the tokenizer's own template
    assert end_of_turn_token_id(tokenizer, LLAMA3_TEMPLATE) == eot
    assert stop_token_ids(tokenizer) == sorted([tokenizer.eos_token_id, eot])
    # eval's generation stops there too, beside the model's own eos ids
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[99]))
    assert generation.stop_token_ids(model, tokenizer) == sorted([tokenizer.eos_token_id, eot, 99])


def test_no_template_no_end_of_turn(llama3_tokenizer):
    tokenizer = llama3_tokenizer
    tokenizer.chat_template = None
    assert end_of_turn_token_id(tokenizer) is None
    assert stop_token_ids(tokenizer) == [tokenizer.eos_token_id]
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=None))
    assert generation.stop_token_ids(model, tokenizer) == [tokenizer.eos_token_id]


def test_the_stop_token_of_chatml(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_token_id(tokenizer) == im_end
    assert stop_token_ids(tokenizer) == sorted([tokenizer.eos_token_id, im_end])
