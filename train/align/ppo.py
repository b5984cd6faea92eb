"""`llmtrain align --method ppo`: PPO with a KL penalty to a frozen reference (InstructGPT-style
RLHF). TRL removed its PPO trainer; this one is ours.

One iteration:
  1. rollout: sample a completion for each prompt of the batch (temperature, top-p, top-k, at
     most max_new_tokens, stopping at the end-of-sequence or end-of-turn token);
  2. scoring: the rewards of rewards.py, a penalty for completions without an end token, and
     normalisation (running or batch statistics);
  3. the old policy's, the reference's and the value model's views of every response token
     (log-probs through the fused LM head of train/logprobs.py: no [batch, length, vocab] logits);
     per-token rewards = score at the last token - kl_coef x (log p - log p_ref); GAE;
  4. ppo_epochs passes of minibatches (global_batch_size sequences per optimizer step) with
     the clipped policy loss, the clipped value loss and an optional entropy bonus;
  5. the KL coefficient follows its controller (fixed or adaptive).

One iteration is one step of the loop shell (loop.py), which owns the run directory,
checkpoints, resume, non-finite steps and final/. The policy and the value model train together
as one module on the engine of engine.build_engine (accelerate for one process or DDP,
DeepSpeed ZeRO 1-3); under ZeRO-3 the policy's weights are gathered once per rollout for
generation. Losses are token means over the whole optimizer step: each micro-batch's token sum
is divided by the minibatch's token count over every process, so neither gradient accumulation
nor the number of processes changes the gradient. Checkpoints hold the module, optimizer,
scheduler, RNG, prompt position, KL coefficient and reward statistics; final/ is the policy.
With `lora` the policy and the value model train adapters and the reference is the policy with
its adapters disabled (no copy); final/ is the input model with the adapter merged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import nn

from llmtrain.chat import end_of_turn_token_id, stop_token_ids
from llmtrain.errors import InputDataError, RecipeError, StageInputError
from llmtrain.train.align.chat_data import load_examples
from llmtrain.train.align.ppo_core import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    Stopwatch,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    masked_mean,
    masked_whiten,
    penalize_missing_eos,
    response_mask,
    token_rewards,
)
from llmtrain.train.align.prompts import (
    FittedPrompt,
    fit_prompts,
    rl_chat_template,
)
from llmtrain.train.align.rewards import RewardSet, build_rewards, reward_search_path
from llmtrain.train.align.rl_config import PPOSection
from llmtrain.train.align.trl_glue import lora_config, merge_adapter
from llmtrain.train.engine import (
    DeepSpeedEngine,
    PlainEngine,
    build_engine,
    check_precision,
    compute_dtype,
    engine_deepspeed_config,
    make_accelerator,
    release_accelerator,
)
from llmtrain.train.logprobs import deepspeed_zero3_flag, fuse_lm_head, response_logprobs
from llmtrain.train.loop import TrainingLoop
from llmtrain.train.optim import lr_multiplier, param_groups
from llmtrain.train.stage_run import StageRun, finish_generation_config

log = logging.getLogger(__name__)


def run_ppo(recipe: Any, args: Any) -> Path:
    section: PPOSection = recipe.section("ppo")
    run = StageRun(recipe, "ppo", section)
    try:
        trainer = PPOTrainer(recipe, section, run)
        with deepspeed_zero3_flag(trainer.ds_config):
            return TrainingLoop(trainer, run, trainer.accelerator, section).run(
                resume=getattr(args, "resume", None), overwrite=getattr(args, "overwrite", False)
            )
    finally:
        release_accelerator()


# ---------------------------------------------------------------------------------------------
# Models


class PolicyAndValue(nn.Module):
    """The policy (a causal LM with the fused head of train/logprobs.py) and the value model (a
    sequence classifier whose scalar head is read at every position), trained together under
    one optimizer and engine."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(self, input_ids, attention_mask, position_ids, response_mask):
        """(log-probs of the response tokens, their entropies, the values before each): all
        [batch, R] for the last R = response_mask.shape[1] tokens."""
        logprobs, entropy = response_logprobs(
            self.policy, input_ids, attention_mask, response_mask, position_ids=position_ids
        )
        value = self.value.get_base_model() if is_peft_model(self.value) else self.value
        backbone = getattr(value, value.base_model_prefix)
        hidden = backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        width = input_ids.shape[1] - response_mask.shape[1]
        values = value.score(hidden[:, width - 1 : -1]).squeeze(-1).float()
        return logprobs, entropy, values


def value_model_source(section: PPOSection, rewards: RewardSet, tokenizer: Any) -> Path | None:
    """The reward model the value model starts from, or None for the policy with a new head."""
    models = rewards.reward_models
    if section.value_model == "policy":
        return None
    if not models:
        if section.value_model == "reward_model":
            raise RecipeError(
                "ppo.value_model: reward_model needs a reward of type reward_model; add one or "
                "set value_model: policy"
            )
        return None
    shares = models[0].tokenizer.get_vocab() == tokenizer.get_vocab()
    if not shares:
        if section.value_model == "reward_model":
            raise StageInputError(
                f"ppo.value_model: the reward model {models[0].path} has another tokenizer than "
                "the policy, so it cannot read the policy's tokens; set value_model: policy"
            )
        return None
    return models[0].path


def load_value_model(source: Path | None, policy_dir: Path, dtype: Any, **kwargs: Any) -> nn.Module:
    """The value model: the reward model (source), or the policy with a new scalar head."""
    from transformers import AutoModelForSequenceClassification

    path = source or policy_dir
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, dtype=dtype, **kwargs
    )
    if not isinstance(getattr(model, "score", None), nn.Module):
        raise StageInputError(
            f"ppo: the value model from {path} ({type(model).__name__}) has no `score` head to "
            "read at every token; PPO needs a decoder (Llama, Qwen, GPT-2, ...)"
        )
    if source is None:  # a new scalar head on the policy's body starts at zero: V = 0
        nn.init.zeros_(model.score.weight)
        if getattr(model.score, "bias", None) is not None:
            nn.init.zeros_(model.score.bias)
    return model


def disable_dropout(model: nn.Module) -> None:
    """No dropout: the rollout's log-probs and the update's must come from the same function
    (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def frozen_under_deepspeed(
    model: nn.Module, config: dict[str, Any], device: torch.device
) -> nn.Module:
    """The frozen reference under DeepSpeed: sharded like the policy under ZeRO-3 (each forward
    gathers its layers), a whole copy per process otherwise."""
    import copy

    if config["zero_optimization"]["stage"] != 3:
        return model.to(device)
    import deepspeed

    inference = copy.deepcopy(config)
    inference.pop("optimizer", None)
    inference.pop("scheduler", None)
    inference["zero_optimization"].pop("offload_optimizer", None)
    engine, *_ = deepspeed.initialize(model=model, config=inference)
    engine.eval()
    return engine


# ---------------------------------------------------------------------------------------------
# The trainer


@dataclass
class PPOStep:
    metrics: dict[str, Any]
    nonfinite: str | None
    """Set when an update of the iteration was skipped for a non-finite loss or gradient."""


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [B, P + R] prompt (left padded) then response (right padded)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_width: int
    mask: torch.Tensor  # [B, R] response tokens up to and including the end token
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPOTrainer:
    def __init__(self, recipe: Any, section: PPOSection, run: StageRun):
        from transformers import AutoModelForCausalLM

        self.recipe, self.section, self.run = recipe, section, run
        self.env = run.env
        self.world = self.env.world_size
        self._check_batches()
        policy_dir = run.input_model_dir()
        self.tokenizer = run.load_tokenizer(policy_dir)
        check_precision(section.precision, "ppo")
        if section.fsdp is not None:
            raise RecipeError(
                "ppo.fsdp: PPO runs on llmtrain's own loop with a policy, a value model and a "
                "reference, and FSDP2 is built there for pretraining's single model only; use "
                "ppo.deepspeed (ZeRO) to shard PPO"
            )
        config = self.ds_config = self._deepspeed_config()
        self.policy_dir = policy_dir
        self.accelerator = make_accelerator(section, engine_precision=config is not None)
        self.device = self.accelerator.device
        self.compute_dtype = compute_dtype(section.precision)
        self.counts: dict[str, int] = {}
        data = load_examples(section, "prompt", method="ppo", seed=run.seed)
        self.template = rl_chat_template(
            self.tokenizer,
            section.chat_template,
            data.train + data.validation,
            method="ppo",
            tokenizer_dir=section.tokenizer or policy_dir,
        )
        self.stop_ids = stop_token_ids(self.tokenizer, self.template)
        self.data_metrics = data.metrics()
        fit = dict(
            max_length=section.max_prompt_length,
            on_too_long=section.on_too_long,
            counts=self.counts,
        )
        self.prompts = fit_prompts(data.train, self.tokenizer, **fit)
        self.eval_prompts = fit_prompts(
            data.validation[: section.eval_max_prompts], self.tokenizer, **fit
        )
        if len(self.prompts) < section.rollout_batch_size:
            raise InputDataError(
                f"ppo: {len(self.prompts)} usable training prompts, fewer than one rollout batch "
                f"of {section.rollout_batch_size}; add prompts or lower ppo.rollout_batch_size"
            )
        self.rewards = build_rewards(
            section.rewards,
            default_reward_model=recipe.input_dir("ppo", "reward_model") / "final",
            method="ppo",
            search_path=reward_search_path(recipe),
            device=self.device,
            dtype=self.compute_dtype,
            trust_remote_code=section.trust_remote_code,
        )
        remote = {"trust_remote_code": section.trust_remote_code}
        # trained weights stay fp32 (autocast, or DeepSpeed's fp32 master copy)
        policy = AutoModelForCausalLM.from_pretrained(
            str(policy_dir), dtype=torch.float32, **remote
        )
        run.check_vocab(policy, self.tokenizer, policy_dir)
        self.value_source = value_model_source(section, self.rewards, self.tokenizer)
        value = load_value_model(self.value_source, policy_dir, torch.float32, **remote)
        # log-probs and entropies through the fused head (train/logprobs.py): never the logits
        fuse_lm_head(policy, temperature=section.temperature, entropy=True)
        reference = None
        if section.lora is None:  # the frozen reference runs in the compute dtype
            reference = AutoModelForCausalLM.from_pretrained(
                str(policy_dir), dtype=self.compute_dtype, **remote
            )
            reference.requires_grad_(False).eval()
            fuse_lm_head(reference, temperature=section.temperature)
        else:  # adapters on both; the reference is the policy with its adapters disabled
            from peft import get_peft_model

            policy = get_peft_model(policy, lora_config(section.lora, "CAUSAL_LM"))
            value = get_peft_model(value, lora_config(section.lora, "SEQ_CLS", ("score",)))
        for model in (policy, value, reference):
            if model is not None:
                disable_dropout(model)
        if section.activation_checkpointing:
            for model in (policy, value):
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
        policy.config.use_cache = False
        module = PolicyAndValue(policy, value)
        # decay on weight matrices only (optim.param_groups), the value model at value_lr
        groups = param_groups(policy, section.weight_decay, lr=section.lr) + param_groups(
            value, section.weight_decay, lr=section.value_lr or section.lr
        )
        self.total_steps = section.max_steps or max(
            1, math.ceil(section.epochs * len(self.prompts) / section.rollout_batch_size)
        )
        updates = section.ppo_epochs * section.rollout_batch_size // section.global_batch_size
        self.total_updates = self.total_steps * updates
        self.engine: PlainEngine | DeepSpeedEngine = build_engine(
            module, groups, accelerator=self.accelerator, ds_config=config, section=section
        )
        if reference is None:
            self.reference = self.engine.module.policy
        elif config is not None:
            self.reference = frozen_under_deepspeed(reference, config, self.device)
        else:
            self.reference = reference.to(self.device)
        self.gathers = 0  # ZeRO-3: times the policy was gathered for generation
        self._holding_weights = False
        warmup = (
            section.warmup_steps
            if section.warmup_steps is not None
            else round(section.warmup_ratio * self.total_updates)
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.engine.base_optimizer,
            lambda step: lr_multiplier(
                step,
                schedule=section.schedule,
                total_steps=self.total_updates,
                warmup_steps=warmup,
                min_lr_ratio=section.min_lr_ratio,
                decay_steps=1,
            ),
        )
        if section.kl_target is not None:
            self.kl = AdaptiveKLController(section.kl_coef, section.kl_target, section.kl_horizon)
        else:
            self.kl = FixedKLController(section.kl_coef)
        self.score_moments = RunningMoments()
        self.step = 0
        self.evaluate_at_start = bool(self.eval_prompts)
        self.position = 0  # prompts consumed, over all processes
        self._order: tuple[int, list[int]] | None = None  # (epoch, its prompt order)

    # -- checks --------------------------------------------------------------------------------

    @property
    def accum_steps(self) -> int:
        return self.section.global_batch_size // (self.section.micro_batch_size * self.world)

    def _deepspeed_config(self) -> dict[str, Any] | None:
        return engine_deepspeed_config(
            self.section,
            where="ppo",
            grad_accum=self.accum_steps,
            world_size=self.world,
            builder="PPO",
            built={
                "optimizer": "AdamW over the policy and the value model from ppo.lr and value_lr",
                "scheduler": "the schedule from ppo.schedule, warmup_steps or warmup_ratio and "
                "min_lr_ratio",
            },
        )

    def _check_batches(self) -> None:
        section, world = self.section, self.world
        per_rank = section.micro_batch_size * world
        if section.global_batch_size % per_rank:
            raise RecipeError(
                f"ppo.global_batch_size {section.global_batch_size} is not a multiple of "
                f"micro_batch_size {section.micro_batch_size} x {world} processes"
            )
        if section.rollout_batch_size % world:
            raise RecipeError(
                f"ppo.rollout_batch_size {section.rollout_batch_size} does not divide over "
                f"{world} processes"
            )

    # -- the method of the loop shell ----------------------------------------------------------

    def train_step(self) -> PPOStep:
        """One iteration: rollout, scoring, ppo_epochs of updates, the KL controller."""
        self.step += 1
        metrics = self.iteration()
        skipped = metrics.pop("skipped_updates")
        nonfinite = (
            f"{skipped} of its updates had a non-finite loss or gradient" if skipped else None
        )
        return PPOStep(metrics, nonfinite)

    def step_record(self, result: PPOStep, seconds: float, steps: int) -> dict[str, Any]:
        return result.metrics

    def describe(self, record: dict[str, Any]) -> str:
        return f"reward {record['reward/mean']:.3f}, kl {record['kl']:.3f}"

    def start_record(self) -> dict[str, Any]:
        return {**self.data_metrics, **{f"data/{k}": v for k, v in self.counts.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "kl": self.kl.state_dict(),
            "score_moments": self.score_moments.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl.load_state_dict(state["kl"])
        self.score_moments.load_state_dict(state["score_moments"])
        self.position = state["position"]

    def rank_state(self) -> dict[str, Any]:
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        pass

    def save_final(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """final/ is the policy, with the tokenizer and the chat's end-of-turn token. LoRA runs
        write the policy's adapter to <run dir>/adapter and final/ as the input model with it
        merged (lora.merge, the default) or as the adapter, as the TRL-backed methods do."""
        policy = self.engine.module.policy
        policy_state = {
            k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")
        }
        lora = self.section.lora
        if lora is None:
            policy.config.use_cache = True
            policy.save_pretrained(str(directory), state_dict=policy_state, safe_serialization=True)
        else:
            from transformers import AutoModelForCausalLM

            adapter = self.run.run_dir.path / "adapter"
            policy.save_pretrained(str(adapter), state_dict=policy_state)
            if lora.merge:
                base = AutoModelForCausalLM.from_pretrained(
                    str(self.policy_dir),
                    dtype=torch.float32,
                    trust_remote_code=self.section.trust_remote_code,
                )
                base.config.use_cache = True
                merge_adapter(base, adapter, directory)
            else:
                for item in adapter.iterdir():
                    shutil.copy2(item, directory / item.name)
        self.tokenizer.save_pretrained(str(directory))
        turn_end = end_of_turn_token_id(self.tokenizer, self.template)
        finish_generation_config(directory, self.tokenizer, turn_end)

    def _batch_prompts(self) -> list[FittedPrompt]:
        """This process's share of the next rollout batch (epochs reshuffled from the seed)."""
        size = self.section.rollout_batch_size
        picked = []
        for offset in range(size):
            index = self.position + offset
            epoch, within = divmod(index, len(self.prompts))
            picked.append(self.prompts[self._epoch_order(epoch)[within]])
        self.position += size
        share = size // self.world
        return picked[self.env.rank * share : (self.env.rank + 1) * share]

    def _epoch_order(self, epoch: int) -> list[int]:
        """The order of the prompts in `epoch` (a seeded shuffle per epoch)."""
        if self._order is None or self._order[0] != epoch:
            order = list(range(len(self.prompts)))
            random.Random(self.run.seed * 1000003 + epoch).shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    def iteration(self) -> dict[str, float]:
        section = self.section
        prompts = self._batch_prompts()
        clock = Stopwatch(self.device)
        sequences, prompt_attention = self.generate([p.ids for p in prompts], sample=True)
        generation_time = clock.lap()
        response = sequences[:, prompt_attention.shape[1] :]
        mask, has_end = response_mask(response, self.stop_ids)
        raw, per_reward = self.score(prompts, response, mask)
        scoring_time = clock.lap()
        scores = penalize_missing_eos(raw, has_end.cpu(), section.missing_eos_penalty)
        scores = self.normalize(scores)
        rollout = self.make_rollout(sequences, prompt_attention, mask, scores)
        reference_time = clock.lap()
        update = self.update(rollout)
        update_time = clock.lap()
        kl_per_sequence = self.mean((rollout.old_logprobs - rollout.ref_logprobs).mul(mask).sum(1))
        self.kl.update(kl_per_sequence, section.rollout_batch_size)
        _, new_tokens, _ = self._moments(mask.sum(1))
        metrics = {
            "reward/mean": self.mean(raw),
            "reward/std": self.std(raw),
            **{f"reward/{name}": self.mean(torch.tensor(v)) for name, v in per_reward.items()},
            "score/mean": self.mean(scores),
            "kl": kl_per_sequence,
            "kl_coef": self.kl.value,
            "response_length": self.mean(mask.sum(1)),
            "eos_fraction": self.mean(has_end.float()),
            **update,
            "lr": self.scheduler.get_last_lr()[0],
            "time/generation": generation_time,
            "time/scoring": scoring_time,
            "time/reference": reference_time,
            "time/update": update_time,
            "time/training": reference_time + update_time,
            "time/step": generation_time + scoring_time + reference_time + update_time,
            "generation_tokens_per_s": new_tokens / max(generation_time, 1e-9),
        }
        return metrics

    # -- rollout -------------------------------------------------------------------------------

    def generate(
        self, prompt_ids: list[list[int]], *, sample: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts followed by their completions, and the prompts' attention mask
        (its width is the prompt width)."""
        section = self.section
        pad = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        policy = self.engine.module.policy
        kwargs: dict[str, Any] = {"do_sample": False}
        if sample:
            kwargs = {
                "do_sample": True,
                "temperature": section.temperature,
                "top_p": section.top_p,
                "top_k": section.top_k,  # 0: no limit (None would mean the model's default, 50)
            }
        was_training = policy.training
        policy.eval()
        with self.generation_weights(), self.accelerator.autocast(), torch.no_grad():
            out = policy.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=section.max_new_tokens,
                eos_token_id=self.stop_ids,
                pad_token_id=pad,
                use_cache=True,
                synced_gpus=False,  # ZeRO-3: every rank holds the whole policy (generation_weights)
                **kwargs,
            )
        policy.train(was_training)
        return out, attention.to(self.device)

    @contextlib.contextmanager
    def reference_weights(self) -> Iterator[None]:
        """The reference's weights for the block: with LoRA the policy's own with its adapters
        disabled (gathered once under ZeRO-3, as for generation); otherwise nothing to do."""
        if self.section.lora is None:
            yield
            return
        with self.generation_weights(), self.engine.module.policy.disable_adapter():
            yield

    @contextlib.contextmanager
    def generation_weights(self) -> Iterator[None]:
        """Under ZeRO-3: the policy's full weights on every rank for the whole block, gathered
        once (one all-gather per rollout, not one per layer and token), with DeepSpeed's
        forward hooks removed meanwhile so generation runs no collective at all; re-entrant."""
        engine = self.engine
        if self._holding_weights or not (
            isinstance(engine, DeepSpeedEngine) and engine.zero_stage == 3
        ):
            yield
            return
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        self._holding_weights = True
        self.gathers += 1
        try:
            with deepspeed.zero.GatheredParameters(list(engine.module.policy.parameters())):
                remove_hooks(engine.engine)
                try:
                    yield
                finally:
                    add_hooks(engine.engine)
        finally:
            self._holding_weights = False

    def completions(
        self, prompts: list[FittedPrompt], response: torch.Tensor, mask: torch.Tensor
    ) -> list[Any]:
        """Completion texts (as messages for chat prompts, as TRL passes them)."""
        out = []
        for prompt, ids, row_mask in zip(prompts, response.tolist(), mask.tolist()):
            kept = [token for token, keep in zip(ids, row_mask) if keep]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            out.append(
                text if isinstance(prompt.prompt, str) else [{"role": "assistant", "content": text}]
            )
        return out

    def score(
        self, prompts: list[FittedPrompt], response: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        completions = self.completions(prompts, response, mask)
        fields: dict[str, list[Any]] = {}
        for key in prompts[0].fields:
            fields[key] = [p.fields.get(key) for p in prompts]
        ids = [
            [t for t, keep in zip(row, m) if keep]
            for row, m in zip(response.tolist(), mask.tolist())
        ]
        totals, per_reward = self.rewards.score(
            [p.prompt for p in prompts], completions, completion_ids=ids, **fields
        )
        return torch.tensor(totals, dtype=torch.float32), per_reward

    def normalize(self, scores: torch.Tensor) -> torch.Tensor:
        mode = self.section.reward_normalization
        if mode == "running":
            self.score_moments.update(self.gather(scores))
            scores = (scores - self.score_moments.mean) / self.score_moments.std
        elif mode == "batch":
            everything = self.gather(scores)
            scores = (scores - everything.mean()) / everything.std().clamp(min=1e-8)
        if self.section.reward_clip is not None:
            scores = scores.clamp(-self.section.reward_clip, self.section.reward_clip)
        return scores

    def make_rollout(
        self,
        sequences: torch.Tensor,
        prompt_attention: torch.Tensor,
        mask: torch.Tensor,
        scores: torch.Tensor,
    ) -> Rollout:
        section = self.section
        width = prompt_attention.shape[1]
        mask = mask.to(self.device)
        attention = torch.cat([prompt_attention, mask.long()], dim=1)
        position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
        old_logprobs, ref_logprobs, old_values = [], [], []
        module = self.engine.module
        module.eval()
        with torch.no_grad():
            for start in range(0, len(sequences), section.micro_batch_size):
                part = slice(start, start + section.micro_batch_size)
                logp, _, values = module(
                    sequences[part], attention[part], position_ids[part], mask[part]
                )
                with self.reference_weights():
                    ref_logp, _ = response_logprobs(
                        self.reference,
                        sequences[part],
                        attention[part],
                        mask[part],
                        position_ids=position_ids[part],
                    )
                old_logprobs.append(logp)
                ref_logprobs.append(ref_logp)
                old_values.append(values)
        module.train()
        old_logprobs_t = torch.cat(old_logprobs) * mask
        ref_logprobs_t = torch.cat(ref_logprobs) * mask
        old_values_t = torch.cat(old_values) * mask
        rewards, _ = token_rewards(
            scores.to(self.device), old_logprobs_t, ref_logprobs_t, mask, self.kl.value
        )
        advantages, returns = gae(rewards, old_values_t, mask, section.gamma, section.lam)
        if section.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Rollout(
            sequences,
            attention,
            position_ids,
            width,
            mask,
            old_logprobs_t,
            ref_logprobs_t,
            old_values_t,
            advantages,
            returns,
        )

    # -- update --------------------------------------------------------------------------------

    def update(self, rollout: Rollout) -> dict[str, float]:
        """ppo_epochs passes over the rollout in minibatches of global_batch_size sequences,
        one optimizer update each; the statistics are means over the updates, and
        `skipped_updates` counts updates skipped for a non-finite loss or gradient."""
        section = self.section
        per_rank = section.global_batch_size // self.world
        total = len(rollout.input_ids)
        sums: dict[str, float] = {}
        updates = skipped = 0
        generator = torch.Generator().manual_seed(self.run.seed * 7919 + self.step)
        for _ in range(section.ppo_epochs):
            order = torch.randperm(total, generator=generator)
            for first in range(0, total, per_rank):
                minibatch = order[first : first + per_rank]
                stats, applied = self._minibatch(rollout, minibatch)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                updates += 1
                skipped += not applied
        result = {key: value / updates for key, value in sums.items()}
        result["explained_variance"] = explained_variance(
            rollout.old_values, rollout.returns, rollout.mask
        )
        result["skipped_updates"] = skipped
        return result

    def _minibatch(self, rollout: Rollout, indices: torch.Tensor) -> tuple[dict[str, float], bool]:
        """One optimizer update on this process's share `indices` of a minibatch: (statistics,
        whether the update was applied; a non-finite loss or gradient skips it)."""
        stats, loss = self.accumulate(rollout, indices)
        applied, grad_norm = self.engine.step(skip=not math.isfinite(loss))
        self.scheduler.step()
        if grad_norm is not None and math.isfinite(grad_norm):
            stats["grad_norm"] = grad_norm
        fp16_overflow = not applied and math.isfinite(loss) and self.section.precision == "fp16"
        return stats, applied or fp16_overflow

    def accumulate(self, rollout: Rollout, indices: torch.Tensor) -> tuple[dict[str, float], float]:
        """Forward and backward over the micro-batches of `indices`, leaving the minibatch's
        gradient; returns (statistics, this process's share of the loss).

        Every loss is a token mean over the whole minibatch: a micro-batch's token sum divided
        by the minibatch's token count over every process (times the world size, which DDP and
        DeepSpeed average over), so every token weighs the same however the minibatch is split
        into micro-batches and processes. The logged losses are this process's token means."""
        section = self.section
        micro = section.micro_batch_size
        chunks = [indices[i : i + micro] for i in range(0, len(indices), micro)]
        local_tokens = float(rollout.mask[indices].sum())
        global_tokens = local_tokens
        if self.world > 1:
            tokens = torch.tensor([local_tokens], dtype=torch.float64, device=self.device)
            global_tokens = float(self.accelerator.reduce(tokens, reduction="sum")[0])
        count = max(global_tokens, 1.0) / self.world
        to_local_mean = count / max(local_tokens, 1.0)
        stats: dict[str, float] = {}
        total_loss = 0.0
        for number, chunk in enumerate(chunks):
            last = number == len(chunks) - 1
            with self.engine.micro_batch(last=last):
                mask = rollout.mask[chunk]
                logprobs, entropies, values = self.engine.forward(
                    {
                        "input_ids": rollout.input_ids[chunk],
                        "attention_mask": rollout.attention_mask[chunk],
                        "position_ids": rollout.position_ids[chunk],
                        "response_mask": mask,
                    }
                )
                policy = clipped_policy_loss(
                    logprobs,
                    rollout.old_logprobs[chunk],
                    rollout.advantages[chunk],
                    mask,
                    section.cliprange,
                    count=count,
                )
                value_loss, value_clip = clipped_value_loss(
                    values,
                    rollout.old_values[chunk],
                    rollout.returns[chunk],
                    mask,
                    section.cliprange_value,
                    count=count,
                )
                entropy = masked_mean(entropies, mask, count)
                loss = policy.loss + section.vf_coef * value_loss - section.entropy_coef * entropy
                self.engine.backward(loss)
            total_loss += float(loss.detach())
            for key, value in (
                ("policy_loss", policy.loss),
                ("value_loss", value_loss),
                ("entropy", entropy),
            ):
                stats[key] = stats.get(key, 0.0) + float(value.detach()) * to_local_mean
            for key, value in (
                ("clip_fraction", policy.clip_fraction),
                ("value_clip_fraction", value_clip),
                ("approx_kl", policy.approx_kl),
                ("ratio", policy.ratio_mean),
            ):
                stats[key] = stats.get(key, 0.0) + float(value) / len(chunks)
        return stats, total_loss

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy completions of the held-out prompts: mean reward (and each reward's)."""
        if not self.eval_prompts:
            return {}
        share = self.eval_prompts[self.env.rank :: self.world]
        totals: list[float] = []
        per_reward: dict[str, list[float]] = {}
        size = max(self.section.micro_batch_size, 8)
        with self.generation_weights():  # one gather for the whole evaluation
            for start in range(0, len(share), size):
                batch = share[start : start + size]
                sequences, prompt_attention = self.generate([p.ids for p in batch], sample=False)
                response = sequences[:, prompt_attention.shape[1] :]
                mask, _ = response_mask(response, self.stop_ids)
                raw, parts = self.score(batch, response, mask)
                totals.extend(raw.tolist())
                for name, values in parts.items():
                    per_reward.setdefault(name, []).extend(values)
        result = {"eval/reward_mean": self.mean(torch.tensor(totals))}
        for name, values in per_reward.items():
            result[f"eval/reward/{name}"] = self.mean(torch.tensor(values))
        return result

    # -- across processes ----------------------------------------------------------------------

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return values
        return self.accelerator.gather(values.to(self.device)).cpu()

    def _moments(self, values: torch.Tensor | float) -> tuple[float, float, float]:
        """(count, sum, sum of squares) over every process (shares may differ in size)."""
        values = torch.as_tensor(values, dtype=torch.float64).flatten()
        sums = torch.stack(
            [
                torch.tensor(float(values.numel()), dtype=torch.float64),
                values.sum(),
                (values**2).sum(),
            ]
        )
        if self.world > 1:
            sums = self.accelerator.reduce(sums.to(self.device), reduction="sum").cpu()
        count, total, squares = sums.tolist()
        return count, total, squares

    def mean(self, values: torch.Tensor | float) -> float:
        count, total, _ = self._moments(values)
        return total / count if count else float("nan")

    def std(self, values: torch.Tensor) -> float:
        count, total, squares = self._moments(values)
        if count < 2:
            return 0.0
        return math.sqrt(max(squares - total * total / count, 0.0) / (count - 1))
