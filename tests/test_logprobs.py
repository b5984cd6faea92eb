"""train/logprobs.py: the fused head's log-probabilities, entropies and gradients equal those of
the full logits (log_softmax over [batch, length, vocab]) to fp32 tolerance, also when the
tokens and the vocabulary are cut into many tiles."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llmtrain.train.logprobs import fuse_lm_head, response_logprobs, token_logprobs

VOCAB = 300


def tiny(family: str) -> torch.nn.Module:
    """A random model in eval mode (no dropout: both computations see the same function)."""
    torch.manual_seed(0)
    if family == "gpt2":  # tied head
        config = GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0
        )
        config.eos_token_id = 0
        return GPT2LMHeadModel(config).eval()
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def full_logits_reference(model, input_ids, attention_mask, scored, temperature):
    """What PPO computed before: the whole logits, log_softmax in fp32, gather."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    keep = scored[:, 1:].float()
    return logprobs * keep, entropy * keep


def batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (3, 17), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0  # left padding
    scored = torch.zeros_like(input_ids, dtype=torch.bool)
    scored[:, 9:] = True
    scored[1, 14:] = False  # padding after an end token
    return input_ids, attention_mask, scored


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fused_head_equals_the_full_logits_with_gradients(family, monkeypatch):
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    # tiles of 7 tokens x 64 vocabulary entries: 8 x 5 tiles instead of one
    monkeypatch.setattr(kernel, "TOKEN_CHUNK_SIZE", 7)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 64)
    temperature = 0.7
    input_ids, attention_mask, scored = batch()
    weights = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))

    def loss_and_grads(logprobs, entropy, model):
        model.zero_grad()
        loss = (weights * logprobs).sum() + 0.3 * entropy.sum()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = tiny(family)
    expected = full_logits_reference(model, input_ids, attention_mask, scored, temperature)
    expected_grads = loss_and_grads(*expected, model)

    fuse_lm_head(model, temperature=temperature, entropy=True)
    logprobs, entropy = token_logprobs(model, input_ids, attention_mask, scored)
    torch.testing.assert_close(logprobs, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, expected[1], rtol=1e-5, atol=1e-5)
    grads = loss_and_grads(logprobs, entropy, model)
    assert grads.keys() == expected_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # the plain forward (and so generation) is unchanged
    plain = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert plain.shape == (3, 17, VOCAB)


def test_response_logprobs_are_the_last_columns_and_a_second_patch_must_agree():
    model = tiny("llama")
    fuse_lm_head(model, temperature=1.0)
    fuse_lm_head(model, temperature=1.0)  # the same settings: nothing to do
    input_ids, attention_mask, _ = batch()
    response_mask = torch.ones(3, 8)
    response_mask[1, 5:] = 0
    with torch.no_grad():
        logprobs, entropy = response_logprobs(model, input_ids, attention_mask, response_mask)
        scored = torch.cat([torch.zeros(3, 9), response_mask], dim=1).bool()
        expected, _ = full_logits_reference(model, input_ids, attention_mask, scored, 1.0)
    assert entropy is None and logprobs.shape == (3, 8)
    torch.testing.assert_close(logprobs, expected[:, -8:], rtol=1e-5, atol=1e-5)
    assert (logprobs[1, 5:] == 0).all() and (logprobs[1, :5] < 0).all()
    with pytest.raises(RuntimeError, match=r"set up for \(temperature, entropy\) \(1.0, False\)"):
        fuse_lm_head(model, temperature=0.5)
