"""`llmtrain align --method orpo | simpo`: reference-free preference optimisation.

Both read preference pairs exactly as dpo does and train on TRL's maintained DPOTrainer (our
dpo.py subclass: chat_data's tokenized pairs, padding-free, run-dir checkpoints); only the loss
is ours. TRL 1.16 has ORPO and SimPO only in `trl.experimental` (ORPOTrainer, CPOTrainer), whose
API may change in any release and which tokenize with their own legacy code (not our chat
templates and max_length fitting), so we do not build on them. No reference model is loaded:
DPOTrainer is told the reference log-probs are precomputed, and computing them is a no-op.

From the per-token log-probabilities of the chosen (c) and rejected (r) completions, with
mean_c and mean_r their means over each completion's tokens and nll the mean negative
log-probability of the chosen tokens:

- ORPO (Hong et al. 2024; TRL's ORPOTrainer): log odds(y) = mean - log(1 - exp(mean));
  loss = nll - beta * log sigmoid(log odds(c) - log odds(r)).
- SimPO (Meng et al. 2024; TRL's CPOTrainer with loss_type simpo):
  loss = -log sigmoid(beta * (mean_c - mean_r) - gamma) + sft_weight * nll.

Metrics (TRL's names): rewards/chosen and rewards/rejected (beta x mean log-prob),
rewards/margins, rewards/accuracies, logps/chosen and logps/rejected (mean per token), nll_loss;
ORPO adds log_odds_ratio and log_odds_chosen.
"""

from __future__ import annotations

from typing import Any

from llmtrain.compat import add_train_tokens, trainer_metrics
from llmtrain.train.align.dpo import PaddingFreeForward, dpo_trainer_class
from llmtrain.train.align.trl_glue import AlignRun


def completion_log_probs(model: Any, inputs: dict) -> tuple[Any, Any]:
    """(per-token log-probs, mask) of the completion tokens; rows are [chosen..., rejected...]
    and entry j scores token j + 1."""
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    outputs = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        labels=labels,
        fused_lm_head=True,
        use_cache=False,
    )
    mask = completion_mask[:, 1:].to(outputs.log_probs.dtype)
    return outputs.log_probs[:, -mask.size(1) :] * mask, mask


def orpo_loss(mean_c: Any, mean_r: Any, nll: Any, beta: float) -> tuple[Any, dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    # log(1 - exp(mean)) is -inf at mean = 0 (probability 1): keep it finite
    def log_odds(mean: Any) -> Any:
        mean = mean.clamp(max=-1e-6)
        return mean - torch.log1p(-torch.exp(mean))

    log_odds_diff = log_odds(mean_c) - log_odds(mean_r)
    ratio = F.logsigmoid(log_odds_diff)
    loss = nll - beta * ratio.mean()
    return loss, {"log_odds_ratio": ratio, "log_odds_chosen": log_odds_diff}


def simpo_loss(
    mean_c: Any, mean_r: Any, nll: Any, beta: float, gamma: float, sft_weight: float
) -> tuple[Any, dict[str, Any]]:
    import torch.nn.functional as F

    loss = -F.logsigmoid(beta * (mean_c - mean_r) - gamma).mean()
    if sft_weight:
        loss = loss + sft_weight * nll
    return loss, {}


def reference_free_trainer_class() -> type:
    class ReferenceFreeTrainer(dpo_trainer_class()):
        """Our DPOTrainer with a reference-free loss (`method`: orpo or simpo)."""

        def __init__(self, *args: Any, method: str, loss_args: dict[str, float], **kwargs: Any):
            self.method = method
            self.loss_args = loss_args
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            return dataset  # no reference: nothing to score

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.padding_free_forward:
                model = PaddingFreeForward(model)
            log_probs, mask = completion_log_probs(model, inputs)
            means = log_probs.sum(1) / mask.sum(1).clamp(min=1)
            mean_c, mean_r = means.chunk(2)
            chosen_log_probs, _ = log_probs.chunk(2)
            chosen_mask, _ = mask.chunk(2)
            nll = -chosen_log_probs.sum() / chosen_mask.sum().clamp(min=1)
            if self.method == "orpo":
                loss, extra = orpo_loss(mean_c, mean_r, nll, **self.loss_args)
            else:
                loss, extra = simpo_loss(mean_c, mean_r, nll, **self.loss_args)

            beta = self.loss_args["beta"]
            gather = self.accelerator.gather_for_metrics
            chosen, rejected = gather(beta * mean_c.detach()), gather(beta * mean_r.detach())
            metrics = trainer_metrics(self, "train" if self.model.training else "eval")
            values = {
                "rewards/chosen": chosen.mean(),
                "rewards/rejected": rejected.mean(),
                "rewards/margins": (chosen - rejected).mean(),
                "rewards/accuracies": (chosen > rejected).float().mean(),
                "logps/chosen": gather(mean_c.detach()).mean(),
                "logps/rejected": gather(mean_r.detach()).mean(),
                "nll_loss": gather(nll.detach()[None]).mean(),
                **{key: gather(value.detach()).mean() for key, value in extra.items()},
            }
            for key, value in values.items():
                metrics[key].append(float(value))
            if self.model.training:
                tokens = int(gather(inputs["attention_mask"].sum()[None]).sum())
                metrics["num_tokens"] = [add_train_tokens(self, tokens)]
            return loss  # evaluation asks for the loss only (prediction_loss_only)

    return ReferenceFreeTrainer


def run_reference_free(recipe: Any, args: Any, method: str, loss_args: dict[str, float]) -> Any:
    """Train `method` (orpo or simpo), write <output_dir>/<method>/ and return the trainer."""
    from trl import DPOConfig

    section = recipe.section(method)
    run = AlignRun(recipe, method, section)
    model_dir, tokenizer, data, template, model = run.load_policy("preference")
    train_rows, val_rows, data_metrics = run.preference_rows(data, tokenizer, template)

    run.start(resume=args.resume, overwrite=args.overwrite, data_metrics=data_metrics)
    config = run.training_args(
        DPOConfig,
        has_validation=bool(val_rows),
        max_length=None,  # pairs are already fitted to max_length
        beta=loss_args["beta"],
        precompute_ref_log_probs=True,  # so that no reference model is loaded
        padding_free=False,  # ours, see dpo.PaddingFreeForward
        disable_dropout=True,
        prediction_loss_only=True,
    )
    trainer = run.fit(
        reference_free_trainer_class(),
        config,
        model,
        tokenizer,
        (train_rows, val_rows),
        padding_free=section.padding_free,
        method=method,
        loss_args=loss_args,
    )
    run.save_causal_lm(trainer, tokenizer, template=template, model_dir=model_dir)
    return trainer


def run_orpo(recipe: Any, args: Any) -> Any:
    section = recipe.section("orpo")
    return run_reference_free(recipe, args, "orpo", {"beta": section.beta})


def run_simpo(recipe: Any, args: Any) -> Any:
    section = recipe.section("simpo")
    loss_args = {"beta": section.beta, "gamma": section.gamma, "sft_weight": section.sft_weight}
    return run_reference_free(recipe, args, "simpo", loss_args)
