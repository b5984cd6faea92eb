"""`llmtrain align --method grpo`: group relative policy optimisation on TRL's GRPOTrainer.

Our part: the recipe section, prompts fitted to max_prompt_length (counted), the reward sources
of rewards.py combined into one checked reward function, stopping at the chat end-of-turn token,
our run directory, metrics and final/. Besides TRL's metrics (reward, kl, entropy, clip ratios,
completion lengths, frac_reward_zero_std: the share of groups whose completions all scored the
same, which carry no signal), each step logs every reward source's mean and
`reward_group_std`, the mean spread of rewards within a group.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

from llmtrain.errors import InputDataError
from llmtrain.train.align.chat_data import (
    end_of_turn_token_id,
    load_examples,
    resolve_chat_template,
)
from llmtrain.train.align.prompts import fit_prompts
from llmtrain.train.align.rewards import RewardSet, build_rewards
from llmtrain.train.align.trl_glue import AlignRun, RunDirCheckpoints

log = logging.getLogger(__name__)

TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")


class CombinedReward:
    """Every reward source as one TRL reward function: the weighted sum, checked; each source's
    mean and the within-group spread are logged through TRL's `log_metric`."""

    __name__ = "reward"

    def __init__(self, rewards: RewardSet):
        self.rewards = rewards

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        log_metric = kwargs.get("log_metric")
        fields = {k: v for k, v in kwargs.items() if k not in TRL_KWARGS}
        if "completion_ids" in kwargs:
            fields["completion_ids"] = kwargs["completion_ids"]
        totals, per_reward = self.rewards.score(prompts, completions, **fields)
        if log_metric is not None:
            for name, values in per_reward.items():
                log_metric(f"reward/{name}", sum(values) / len(values))
            log_metric("reward_group_std", group_spread(prompts, totals))
        return totals


def group_spread(prompts: list[Any], rewards: list[float]) -> float:
    """Mean standard deviation of the rewards of completions that share a prompt."""
    groups: dict[str, list[float]] = {}
    for prompt, reward in zip(prompts, rewards):
        key = prompt if isinstance(prompt, str) else repr(prompt)
        groups.setdefault(key, []).append(reward)
    spreads = [statistics.pstdev(values) for values in groups.values() if len(values) > 1]
    return sum(spreads) / len(spreads) if spreads else 0.0


def grpo_trainer_class() -> type:
    from trl import GRPOTrainer

    class LLMTrainGRPOTrainer(RunDirCheckpoints, GRPOTrainer):
        """TRL's GRPOTrainer with checkpoints in our run directory."""

    return LLMTrainGRPOTrainer


def run_grpo(recipe: Any, args: Any) -> Any:
    """Train, write <output_dir>/grpo/ and return the trainer."""
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    section = recipe.section("grpo")
    run = AlignRun(recipe, "grpo", section)
    model_dir = run.input_model_dir()
    tokenizer = run.load_tokenizer(model_dir)
    template = resolve_chat_template(
        tokenizer,
        section.chat_template,
        method="grpo",
        tokenizer_dir=section.tokenizer or model_dir,
    )
    rewards = build_rewards(
        section.rewards, default_reward_model=recipe.stage_dir("rm") / "final", method="grpo"
    )
    data = load_examples(section, "prompt", method="grpo", seed=run.seed)
    counts: dict[str, int] = {}
    fit = dict(max_length=section.max_prompt_length, on_too_long=section.on_too_long, counts=counts)
    train = fit_prompts(data.train, tokenizer, **fit)
    validation = fit_prompts(data.validation, tokenizer, **fit)
    prompts_per_step = section.global_batch_size // section.num_generations
    if len(train) < prompts_per_step:
        raise InputDataError(
            f"grpo: {len(train)} usable training prompts, fewer than one step's "
            f"{prompts_per_step} (global_batch_size {section.global_batch_size} / num_generations "
            f"{section.num_generations}); add prompts or lower grpo.global_batch_size"
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **run.model_kwargs())
    run.check_vocab(model, tokenizer, model_dir)
    stop_ids = sorted(
        {
            i
            for i in (tokenizer.eos_token_id, end_of_turn_token_id(tokenizer, template))
            if i is not None
        }
    )
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    run.start(resume=args.resume, overwrite=args.overwrite)
    run.log_data({**data.metrics(), **{f"data/{k}": v for k, v in counts.items()}})
    config = run.training_args(
        GRPOConfig,
        has_validation=bool(validation),
        num_generations=section.num_generations,
        max_completion_length=section.max_new_tokens,
        temperature=section.temperature,
        top_p=section.top_p,
        top_k=section.top_k,
        beta=section.beta,
        loss_type=section.loss_type,
        epsilon=section.epsilon,
        epsilon_high=section.epsilon_high,
        num_iterations=section.num_iterations,
        scale_rewards=section.scale_rewards,
        mask_truncated_completions=section.mask_truncated_completions,
        use_vllm=section.use_vllm,
        vllm_mode=section.vllm_mode,
        vllm_gpu_memory_utilization=section.vllm_gpu_memory_utilization,
        disable_dropout=True,
        log_completions=False,
    )
    rows = [{"prompt": p.prompt, **p.fields} for p in train]
    val_rows = [{"prompt": p.prompt, **p.fields} for p in validation]
    trainer = grpo_trainer_class()(
        run_dir=run.run_dir,
        keep_last=section.keep_last,
        model=model,
        reward_funcs=[CombinedReward(rewards)],
        args=config,
        train_dataset=run.dataset(rows, "train"),
        eval_dataset=run.dataset(val_rows, "validation") if val_rows else None,
        processing_class=tokenizer,
        callbacks=run.callbacks(),
        peft_config=run.peft_config("CAUSAL_LM"),
    )
    run.train(trainer)
    run.save_final(
        trainer,
        tokenizer,
        end_of_turn_id=end_of_turn_token_id(tokenizer, template),
        base_model_dir=model_dir,
        load_base=lambda path: AutoModelForCausalLM.from_pretrained(
            str(path), **run.model_kwargs(quantized=False)
        ),
    )
    return trainer
