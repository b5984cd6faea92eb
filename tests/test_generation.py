"""Decoding strategies on a model whose next-token distribution is a known table."""

import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutputWithPast

from llmtrain.answers import extract_answer
from llmtrain.errors import RecipeError
from llmtrain.recipe import validate_section
from llmtrain.train.evaluate.generation import (
    DecodingSection,
    best_of_n,
    decode,
    majority_vote,
    self_consistency,
)

WORDS = ["<s>", "a", "b", "c", "d", "e", "f", "</s>", "<pad>"]
V = len(WORDS)


class TableConfig(PretrainedConfig):
    model_type = "table-lm"

    def __init__(self, vocab_size=V, **kwargs):
        self.vocab_size = vocab_size
        self.num_hidden_layers = 1  # generate() sizes its (unused) KV cache from this
        super().__init__(**kwargs)


class TableLM(PreTrainedModel, GenerationMixin):
    """p(next | previous token) = softmax(table[previous]): a bigram model with set weights."""

    config_class = TableConfig

    def __init__(self, config, table):
        super().__init__(config)
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return CausalLMOutputWithPast(logits=self.table[input_ids])


def table_tokenizer():
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>"
    )


def log_table(rows: dict[int, dict[int, float]]) -> torch.Tensor:
    table = torch.full((V, V), -1e4)
    for prev, nexts in rows.items():
        for token, prob in nexts.items():
            table[prev, token] = math.log(prob)
    return table


def make(table):
    model = TableLM(TableConfig(eos_token_id=WORDS.index("</s>"), pad_token_id=8), table)
    model.eval()
    return model, table_tokenizer()


def test_beam_search_finds_the_more_likely_sequence_greedy_misses():
    a, b, c, d, e, f = range(1, 7)
    # greedy takes "a" (0.6) but every continuation of "a" is unlikely (0.25 each): 0.15;
    # "b" (0.4) is followed by "c" with 0.9: 0.36
    table = log_table(
        {0: {a: 0.6, b: 0.4}, a: {c: 0.25, d: 0.25, e: 0.25, f: 0.25}, b: {c: 0.9, d: 0.1}}
    )
    model, tokenizer = make(table)
    greedy = DecodingSection(strategy="greedy", max_new_tokens=2)
    beam = DecodingSection(strategy="beam", max_new_tokens=2, num_beams=3)
    (g,) = decode(model, tokenizer, ["<s>"], greedy, chat=False)
    (bm,) = decode(model, tokenizer, ["<s>"], beam, chat=False)
    assert g.text.split()[0] == "a"
    assert bm.text == "b c"


@pytest.mark.parametrize(
    ("settings", "allowed"),
    [
        (dict(top_k=2), lambda probs: set(torch.topk(probs, 2).indices.tolist())),
        (dict(top_p=0.6), lambda probs: nucleus(probs, 0.6)),
    ],
)
def test_top_k_and_top_p_never_sample_outside_the_allowed_set(settings, allowed):
    torch.manual_seed(0)
    table = torch.randn(V, V) * 2
    table[:, [0, 7, 8]] = -1e4  # only words: special tokens are dropped from the text
    model, tokenizer = make(table)
    section = DecodingSection(strategy="sample", max_new_tokens=6, temperature=1.0, **settings)
    outputs = decode(model, tokenizer, ["<s>"] * 64, section, chat=False)
    probs = torch.softmax(table, dim=-1)
    seen = 0
    for output in outputs:
        previous = 0
        for word in output.text.split():
            token = WORDS.index(word)
            assert token in allowed(probs[previous]), (previous, token)
            previous = token
            seen += 1
    assert seen == 64 * 6


def nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    order = torch.argsort(probs, descending=True).tolist()
    kept, total = set(), 0.0
    for token in order:
        kept.add(token)
        total += float(probs[token])
        if total >= top_p:
            break
    return kept


def test_best_of_n_returns_the_highest_scored_candidate():
    def scorer(prompts, completions):
        return [float(len(c)) if "x" not in c else 100.0 for c in completions]

    decoded = best_of_n("q", ["short", "much longer", "x", "mid one"], scorer)
    assert decoded.text == "x"
    assert [c.score for c in decoded.candidates] == [5.0, 11.0, 100.0, 7.0]


def test_best_of_n_through_decode_uses_the_scorer():
    table = torch.zeros(V, V)
    table[:, 7:] = -1e4
    model, tokenizer = make(table)
    section = DecodingSection(strategy="best_of_n", n=6, max_new_tokens=3)
    score_by_text = {}

    def scorer(prompts, completions):
        scores = [float(c.count("a")) - 0.01 * i for i, c in enumerate(completions)]
        score_by_text.update(zip(completions, scores))
        return scores

    (out,) = decode(model, tokenizer, ["<s>"], section, chat=False, scorer=scorer)
    assert len(out.candidates) == 6
    assert out.text == max(out.candidates, key=lambda c: c.score).text


def test_self_consistency_takes_the_majority_answer():
    texts = ["so it is 4", "The answer is 5.", "answer is 5", "It is 4.0", "the answer is 5"]
    decoded = self_consistency(texts, r"(\d+(?:\.\d+)?)\D*$")
    assert decoded.answer == "5"
    assert decoded.text == "The answer is 5."
    assert majority_vote(["4", None, "4.5", "4.5", "4"]) == "4"
    assert majority_vote([None, None]) is None


def test_extract_answer_normalises():
    assert extract_answer("x = 7. The answer is 7.", r"The answer is (-?\d+)\.") == "7"
    assert extract_answer("no answer", r"The answer is (-?\d+)\.") is None
    assert extract_answer("  Paris. ", None) == "paris"
    assert extract_answer("1,000", None) == "1000"


def test_decoding_section_checks_answer_pattern():
    with pytest.raises(RecipeError, match=r"answer_pattern needs a group"):
        validate_section(DecodingSection, {"answer_pattern": r"\d+"})
    with pytest.raises(RecipeError, match=r"top_p: expected less than or equal to 1"):
        validate_section(DecodingSection, {"top_p": 1.5})
