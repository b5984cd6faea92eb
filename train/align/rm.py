"""`llmtrain align --method rm`: a reward model trained on preference pairs.

The model is `AutoModelForSequenceClassification` with one output on top of the input model
(by default sft/final), trained with TRL's RewardTrainer on the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected [- margin]).

The reward of a sequence is read by `sequence_scores`: the head's output at the last token the
attention mask marks as real, with position ids counted from the first real token. transformers'
own forward pools at the rightmost token that is not the pad token and numbers positions from
the start of the row, so with left padding, or with pad == eos and a sequence ending in eos, it
scores something else than the unpadded sequence; ours does not depend on padding side, batch
composition or the pad token. Use `sequence_scores` (PPO and GRPO do) to score with final/.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from llmtrain.compat import add_train_tokens, trainer_metrics
from llmtrain.errors import StageInputError
from llmtrain.train.align.chat_data import (
    load_examples,
)
from llmtrain.train.align.trl_glue import AlignRun, RunDirCheckpoints

log = logging.getLogger(__name__)


def score_head(model: Any) -> Any:
    """The reward head (`score`) of a sequence classifier, through PEFT/DeepSpeed wrappers."""
    module = getattr(model, "module", model)  # DeepSpeed / DDP
    found = [(name, sub) for name, sub in module.named_modules() if name.split(".")[-1] == "score"]
    if not found:
        raise StageInputError(
            f"{type(module).__name__} has no `score` head; a reward model must be an "
            "AutoModelForSequenceClassification of a decoder (Llama, Qwen, GPT-2, ...)"
        )
    return min(found, key=lambda item: len(item[0]))[1]  # the outermost (PEFT wraps it)


def sequence_scores(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """One reward per row: the head at the row's last real token (any padding side)."""
    import torch

    attention_mask = attention_mask.long()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    captured: list[Any] = []
    handle = score_head(model).register_forward_hook(
        lambda module, args, output: captured.append(output)
    )
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    finally:
        handle.remove()
    per_token = captured[-1][..., 0]  # (batch, seq_len)
    seq_len = attention_mask.size(1)
    last = seq_len - 1 - attention_mask.flip(-1).argmax(-1)
    return per_token[torch.arange(per_token.size(0), device=per_token.device), last]


def reward_trainer_class() -> type:
    import torch
    import torch.nn.functional as F
    from trl import RewardTrainer

    class LLMTrainRewardTrainer(RunDirCheckpoints, RewardTrainer):
        """TRL's RewardTrainer scoring with `sequence_scores`, checkpoints in our run dir."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            scores = sequence_scores(model, inputs["input_ids"], inputs["attention_mask"])
            chosen, rejected = torch.chunk(scores, chunks=2)
            margin = inputs.get("margin")
            difference = chosen - rejected - (margin if margin is not None else 0.0)
            loss = -F.logsigmoid(difference).mean()
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean(
                    (chosen + rejected) ** 2
                )
            metrics = trainer_metrics(self, mode)
            tokens = 0
            if mode == "train":
                tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum())
                tokens = int(tokens.sum().item())
            metrics["num_tokens"] = [add_train_tokens(self, tokens)]
            with torch.no_grad():
                every = self.accelerator.gather(scores.detach())
                metrics["min_reward"].append(every.min().item())
                metrics["mean_reward"].append(every.mean().item())
                metrics["max_reward"].append(every.max().item())
                accuracy = (chosen > rejected).float().mean()
                metrics["accuracy"].append(
                    self.accelerator.gather_for_metrics(accuracy).mean().item()
                )
                gap = (chosen - rejected).detach().mean()
                metrics["margin"].append(self.accelerator.gather_for_metrics(gap).mean().item())
            if return_outputs:
                return loss, {"logits": scores.detach()[:, None]}
            return loss

    return LLMTrainRewardTrainer


def load_reward_model(path: Path, kwargs: dict[str, Any]) -> Any:
    """A one-output sequence classifier from any decoder directory (a new head if needed)."""
    from transformers import AutoModelForSequenceClassification
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    try:
        with suppress_seqcls_warning():
            return AutoModelForSequenceClassification.from_pretrained(
                str(path), num_labels=1, **kwargs
            )
    except ValueError as exc:
        raise StageInputError(
            f"rm: cannot build a sequence classifier from {path} ({exc}); the reward model "
            "needs a decoder model directory"
        ) from exc


def run_rm(recipe: Any, args: Any) -> Any:
    """Train, write <output_dir>/rm/ and return the trainer."""
    from trl import RewardConfig

    section = recipe.section("rm")
    run = AlignRun(recipe, "rm", section)
    model_dir = run.input_model_dir()
    tokenizer = run.load_tokenizer(model_dir)
    data = load_examples(
        section, "preference", method="rm", seed=run.seed, margin_field=section.margin_field
    )
    template = run.chat_template(data.train + data.validation, tokenizer, model_dir)
    model = load_reward_model(model_dir, run.model_kwargs())
    run.check_vocab(model, tokenizer, model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id

    train_rows, val_rows, data_metrics = run.preference_rows(data, tokenizer, template)

    run.start(resume=args.resume, overwrite=args.overwrite, data_metrics=data_metrics)
    config = run.training_args(
        RewardConfig,
        has_validation=bool(val_rows),
        max_length=None,  # pairs are already fitted to max_length
        center_rewards_coefficient=section.center_rewards_coefficient,
        disable_dropout=True,
    )
    trainer = run.fit(
        reward_trainer_class(),
        config,
        model,
        tokenizer,
        (_full_sequences(train_rows), _full_sequences(val_rows)),
        peft_config=run.peft_config("SEQ_CLS", modules_to_save=("score",)),
    )
    run.save_final(
        trainer,
        tokenizer,
        base_model_dir=model_dir,
        load_base=lambda path: load_reward_model(path, run.model_kwargs(quantized=False)),
    )
    return trainer


def _full_sequences(rows: list[dict]) -> list[dict]:
    """RewardTrainer scores whole sequences: prompt + chosen, prompt + rejected."""
    out = []
    for row in rows:
        item = {
            "chosen_ids": row["prompt_ids"] + row["chosen_ids"],
            "rejected_ids": row["prompt_ids"] + row["rejected_ids"],
        }
        if "margin" in row:
            item["margin"] = row["margin"]
        out.append(item)
    return out


def pairwise_accuracy(model: Any, tokenizer: Any, rows: list[dict], batch_size: int = 32) -> float:
    """Share of pairs whose chosen sequence scores above the rejected one."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    wins = defaultdict(int)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate(_full_sequences(rows[start : start + batch_size]))
            scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
            chosen, rejected = scores.chunk(2)
            wins["right"] += int((chosen > rejected).sum())
            wins["all"] += chosen.numel()
    return wins["right"] / max(1, wins["all"])
