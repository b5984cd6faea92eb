"""`llmtrain align --method online_dpo`: online DPO, our loss on TRL's GRPOTrainer.

Each step samples two completions per prompt from the current policy, scores both with the
recipe's rewards (a reward model, verifiable rewards, your function: rewards.py), and applies
DPO's loss to the pair, the higher-scored completion as chosen, against a frozen reference (a
copy of the input model; with LoRA the base). Pairs whose two rewards are equal carry no
preference and are left out of the loss (counted: `pairs/tied_share`).

Why GRPOTrainer: TRL 1.16 has an OnlineDPOTrainer only in `trl.experimental`, where a tie makes
the first sample "chosen" and there is no held-out evaluation. GRPOTrainer (maintained) already
does everything online DPO needs around the loss: it samples `num_generations` = 2 completions
per prompt, scores them with our reward function, computes the reference's per-token log-probs
(`beta` > 0) and evaluates held-out prompts; with `scale_rewards: none` each completion's
advantage is its reward minus the mean of its pair, whose sign says which one is chosen
(0: a tie). Our `compute_loss` replaces GRPO's loss with DPO's on those pairs; everything else
is grpo.py's trainer (checkpoints, step timings, the resume fix, reward metrics).

The two completions of a prompt must meet in one micro-batch: `steps_per_generation` is 1 (a
generation per micro-batch, shuffled only within it) and the micro-batch holds whole pairs;
rows are paired by their prompt tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from llmtrain.compat import trainer_metrics
from llmtrain.train.logprobs import response_logprobs


def pair_rows(
    prompt_ids: torch.Tensor, advantages: torch.Tensor
) -> tuple[list[int], list[int], int]:
    """(chosen rows, rejected rows, tied pairs) of a micro-batch holding two completions per
    prompt in any order: rows with the same prompt tokens are paired, the one with the higher
    advantage chosen; pairs with equal advantages are counted, not returned."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for row, ids in enumerate(prompt_ids.tolist()):
        by_prompt.setdefault(tuple(ids), []).append(row)
    chosen, rejected, tied = [], [], 0
    for rows in by_prompt.values():
        if len(rows) % 2:
            raise RuntimeError(
                f"online_dpo: a micro-batch holds {len(rows)} completions of one prompt; the two "
                "completions of a prompt are expected together (steps_per_generation 1, an even "
                "micro_batch_size)"
            )
        rows = sorted(rows, key=lambda r: -float(advantages[r]))
        for first, second in zip(rows[0::2], rows[1::2], strict=False):
            if float(advantages[first]) > float(advantages[second]):
                chosen.append(first)
                rejected.append(second)
            else:
                tied += 1
    return chosen, rejected, tied


def completion_log_probs(model: Any, inputs: dict) -> torch.Tensor:
    """Sum of the log-probabilities of each row's completion tokens under `model`, at the
    sampling temperature (GRPOTrainer gave the model TRL's fused head at it: no logits)."""
    logprobs, _ = response_logprobs(
        model,
        torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
        torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
        inputs["completion_mask"],
    )
    return logprobs.sum(1)


def dpo_pair_loss(
    policy: torch.Tensor, reference: torch.Tensor, beta: float, loss_type: str
) -> torch.Tensor:
    """DPO's loss per pair from (chosen, rejected) log-probability sums, shape (2, pairs)."""
    logits = (policy[0] - policy[1]) - (reference[0] - reference[1])
    if loss_type == "ipo":
        return (logits - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * logits)


def online_dpo_trainer_class() -> type:
    from llmtrain.train.align.grpo import grpo_trainer_class

    class OnlineDPOTrainer(grpo_trainer_class()):
        """grpo.py's GRPOTrainer with DPO's loss on each sampled pair."""

        # our loss is a micro-batch mean: the Trainer divides it by the accumulation steps
        # (GRPOTrainer's own loss is scaled already, and says so with True)
        loss_is_scaled_for_ga = False

        def __init__(self, *args: Any, dpo_beta: float, loss_type: str, **kwargs: Any):
            self.dpo_beta = dpo_beta
            self.dpo_loss_type = loss_type
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            chosen, rejected, tied = pair_rows(inputs["prompt_ids"], inputs["advantages"])
            policy = completion_log_probs(model, inputs)
            mask = inputs["completion_mask"]
            reference = (inputs["ref_per_token_logps"] * mask).sum(1)
            if chosen:
                pairs = torch.tensor([chosen, rejected], device=policy.device)
                policy, reference = policy[pairs], reference[pairs]  # (chosen/rejected, pair)
                losses = dpo_pair_loss(policy, reference, self.dpo_beta, self.dpo_loss_type)
                # a mean over the micro-batch's pairs, a tied pair counting 0
                loss = losses.sum() / (mask.size(0) // 2)
                ratios = (policy - reference).detach()
                margins = self.dpo_beta * (ratios[0] - ratios[1])
            else:
                loss = policy.sum() * 0.0  # every pair tied: no preference, no update
                margins = policy.new_zeros(0)
            self._log_pairs(margins, len(chosen), tied)
            return loss

        def _log_pairs(self, margins: torch.Tensor, used: int, tied: int) -> None:
            gather = self.accelerator.gather_for_metrics
            counts = gather(torch.tensor([used, tied], device=self.accelerator.device)[None])
            used_all, tied_all = (int(v) for v in counts.sum(0))
            metrics = trainer_metrics(self, "train" if self.model.training else "eval")
            metrics["pairs/tied_share"].append(tied_all / max(1, used_all + tied_all))
            if used_all:
                sums = gather(torch.stack([margins.sum(), (margins > 0).float().sum()])[None]).sum(
                    0
                )
                metrics["rewards/margins"].append(float(sums[0]) / used_all)
                metrics["rewards/accuracies"].append(float(sums[1]) / used_all)

    return OnlineDPOTrainer


def run_online_dpo(recipe: Any, args: Any) -> Any:
    """Train, write <output_dir>/online_dpo/ and return the trainer."""
    from llmtrain.train.align.grpo import run_grpo

    return run_grpo(recipe, args, method="online_dpo")
