"""PPO's mathematics against examples computed by hand."""

import math

import pytest
import torch

from llmtrain.train.align.ppo_core import (
    AdaptiveKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    masked_whiten,
    penalize_missing_eos,
    response_mask,
    token_rewards,
)


def test_gae_by_hand():
    # one response of 3 tokens then padding; gamma 0.9, lambda 0.8
    rewards = torch.tensor([[0.0, 0.5, 1.0, 9.0]])
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 1.0 + 0.9 * 0.0 - 0.6  # last token: no next value
    d1 = 0.5 + 0.9 * 0.6 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.2
    a2 = d2
    a1 = d1 + 0.9 * 0.8 * a2
    a0 = d0 + 0.9 * 0.8 * a1
    assert advantages.tolist()[0] == pytest.approx([a0, a1, a2, 0.0])
    assert returns.tolist()[0] == pytest.approx([a0 + 0.2, a1 + 0.4, a2 + 0.6, 0.0])


def test_gae_with_lambda_one_and_gamma_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns.tolist()[0] == pytest.approx([6.0, 5.0, 3.0])
    assert advantages.tolist()[0] == pytest.approx([5.5, 4.5, 2.5])


def test_token_rewards_put_the_score_on_the_last_token():
    scores = torch.tensor([2.0, -1.0])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -2.0], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = token_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    expected = torch.tensor([[-0.05, 0.0, -0.1 + 2.0], [0.0, -0.1 - 1.0, 0.0]])
    assert torch.allclose(rewards, expected)


def test_clipped_policy_loss_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.8, 0.3, 0.55]]))  # ratios 1.6, 0.6, 1.1
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    out = clipped_policy_loss(new, old, advantages, mask, cliprange=0.2)
    # token 0: A>0, ratio 1.6 -> clipped 1.2: max(-1.6, -1.2) = -1.2 (clipped)
    # token 1: A<0, ratio 0.6 -> clipped 0.8: max(0.6, 0.8) = 0.8 (clipped)
    # token 2: A>0, ratio 1.1 within range: -2.2
    assert float(out.loss) == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert float(out.clip_fraction) == pytest.approx(2 / 3)
    ratios = torch.tensor([1.6, 0.6, 1.1])
    assert float(out.approx_kl) == pytest.approx(
        float(((ratios - 1) - ratios.log()).mean()), rel=1e-5
    )


def test_clipped_value_loss_by_hand():
    old = torch.tensor([[1.0, 1.0]])
    new = torch.tensor([[2.0, 1.1]])
    returns = torch.tensor([[3.0, 0.0]])
    mask = torch.ones(1, 2)
    loss, fraction = clipped_value_loss(new, old, returns, mask, cliprange_value=0.5)
    # token 0: unclipped (2-3)^2 = 1, clipped V=1.5: (1.5-3)^2 = 2.25 -> 2.25 (clipped)
    # token 1: unclipped 1.21, clipped V=1.1 same -> 1.21
    assert float(loss) == pytest.approx(0.5 * (2.25 + 1.21) / 2)
    assert float(fraction) == pytest.approx(0.5)


def test_whiten_and_explained_variance():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    white = masked_whiten(values, mask)
    assert white.tolist()[0][:3] == pytest.approx([-1.0, 0.0, 1.0], abs=1e-4)
    assert white.tolist()[0][3] == 0.0
    returns = torch.tensor([[1.0, 2.0, 3.0]])
    assert explained_variance(returns, returns, torch.ones(1, 3)) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 3), 2.0), returns, torch.ones(1, 3)) == pytest.approx(
        0.0
    )


def test_adaptive_kl_moves_towards_the_target_by_at_most_20_percent():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(kl=12.0, sequences=100)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.12)
    controller.update(kl=5.4, sequences=50)  # error -0.1 over half a horizon
    assert controller.value == pytest.approx(0.12 * (1 - 0.05))


def test_running_moments_match_the_whole_sample():
    data = torch.tensor([1.0, 4.0, 2.0, 8.0, 5.0, 7.0])
    moments = RunningMoments()
    moments.update(data[:2])
    moments.update(data[2:])
    assert moments.mean == pytest.approx(float(data.mean()), rel=1e-3)
    assert moments.std == pytest.approx(math.sqrt(float(data.var(unbiased=False))), rel=1e-3)


def test_response_mask_stops_at_the_first_end_token_and_the_missing_eos_penalty():
    eos, turn_end, pad = 0, 3, 1
    response = torch.tensor(
        [
            [5, 6, turn_end, pad, pad],  # ends with the end-of-turn token
            [5, eos, 6, eos, pad],  # the first end token counts; later tokens are masked
            [5, 6, 7, 8, 9],  # cut off at max_new_tokens: no end token
        ]
    )
    mask, has_end = response_mask(response, [eos, turn_end])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert has_end.tolist() == [True, True, False]
    scores = torch.tensor([1.0, 0.5, 1.0])
    assert penalize_missing_eos(scores, has_end, 2.0).tolist() == [1.0, 0.5, -1.0]
    assert penalize_missing_eos(scores, has_end, None).tolist() == [1.0, 0.5, 1.0]
    # the penalised score lands on the last token kept, with the per-token KL elsewhere
    rewards, _ = token_rewards(
        penalize_missing_eos(scores, has_end, 2.0), torch.zeros(3, 5), torch.zeros(3, 5), mask, 0.1
    )
    assert rewards.tolist() == [[0, 0, 1.0, 0, 0], [0, 0.5, 0, 0, 0], [0, 0, 0, 0, -1.0]]
