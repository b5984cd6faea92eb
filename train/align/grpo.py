"""`llmtrain align --method grpo`: group relative policy optimisation on TRL's GRPOTrainer.

Our part: the recipe section, prompts fitted to max_prompt_length (counted), the reward sources
of rewards.py combined into one checked reward function, stopping at the chat end-of-turn token,
our run directory, metrics and final/. Besides TRL's metrics (reward, reward_std, kl, entropy,
clip ratios, completion lengths, frac_reward_zero_std), each step logs every reward source's
mean, `reward_group_std` (the mean spread of rewards within a group of completions of one
prompt) and `reward_group_zero_std_share` (the share of groups whose completions all scored the
same: they carry no learning signal), both over every process and whatever scale_rewards is
(TRL's frac_reward_zero_std is about the batch under scale_rewards: batch), and the step's time
in generation, scoring and the rest (time/generation, time/scoring, time/training) with
generation_tokens_per_s.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from typing import Any

from llmtrain.chat import end_of_turn_token_id, stop_token_ids
from llmtrain.compat import trainer_metrics
from llmtrain.errors import InputDataError, RecipeError
from llmtrain.runtime import pick_device
from llmtrain.train.align.chat_data import load_examples
from llmtrain.train.align.prompts import fit_prompts, rl_chat_template
from llmtrain.train.align.rewards import RewardSet, build_rewards, reward_search_path
from llmtrain.train.align.trl_glue import AlignRun, RunDirCheckpoints

log = logging.getLogger(__name__)

TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")


class CombinedReward:
    """Every reward source as one TRL reward function: the weighted sum, checked. Each source's
    mean and the spread within groups are logged through TRL's `log_metric`, computed over every
    process: TRL gathers the rewards in process order and cuts them into groups of
    num_generations consecutive completions, and so does this."""

    __name__ = "reward"

    def __init__(self, rewards: RewardSet, num_generations: int):
        self.rewards = rewards
        self.num_generations = num_generations

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        log_metric = kwargs.get("log_metric")
        fields = {k: v for k, v in kwargs.items() if k not in TRL_KWARGS}
        if "completion_ids" in kwargs:
            fields["completion_ids"] = kwargs["completion_ids"]
        totals, per_reward = self.rewards.score(prompts, completions, **fields)
        if log_metric is not None:
            names = list(per_reward)
            columns = gather_columns([totals, *(per_reward[name] for name in names)])
            for name, values in zip(names, columns[1:]):
                log_metric(f"reward/{name}", sum(values) / len(values))
            spread, zero_share = group_stats(columns[0], self.num_generations)
            log_metric("reward_group_std", spread)
            log_metric("reward_group_zero_std_share", zero_share)
        return totals


def gather_columns(columns: list[list[float]]) -> list[list[float]]:
    """Each column's values from every process, in process order (one all-gather)."""
    import torch
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return [list(column) for column in columns]
    from accelerate.utils import gather

    local = torch.tensor(columns, dtype=torch.float32, device=state.device).T.contiguous()
    return gather(local).T.cpu().tolist()


def group_stats(rewards: list[float], group_size: int) -> tuple[float, float]:
    """(mean standard deviation of the rewards within a group, share of groups whose rewards
    are all equal) for rewards laid out as consecutive groups of group_size."""
    groups = [rewards[i : i + group_size] for i in range(0, len(rewards), group_size)]
    groups = [g for g in groups if len(g) > 1]
    if not groups:
        return 0.0, 0.0
    spreads = []
    for group in groups:
        mean = sum(group) / len(group)
        spreads.append(math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1)))
    zero = sum(1 for group in groups if max(group) - min(group) <= 1e-8 * max(1.0, abs(group[0])))
    return sum(spreads) / len(spreads), zero / len(groups)


def grpo_trainer_class(rloo: bool = False) -> type:
    """Our subclass of TRL's GRPOTrainer, or with `rloo` of its RLOOTrainer (same design: the
    hooks below have the same names and meaning in both)."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer

    from llmtrain.train.align.ppo_core import Stopwatch

    class StepTimes(TrainerCallback):
        """Wall time of each optimizer step, split into generation, scoring and the rest."""

        def __init__(self, trainer: Any):
            self.trainer = trainer

        def on_step_begin(self, args, state, control, **kwargs):
            self.trainer._phases = {"generation": 0.0, "scoring": 0.0, "tokens": 0}
            self.clock = Stopwatch(self.trainer.accelerator.device)

        def on_step_end(self, args, state, control, **kwargs):
            import torch

            trainer = self.trainer
            step = self.clock.lap()
            phases = trainer._phases
            metrics = trainer_metrics(trainer, "train")
            metrics["time/generation"].append(phases["generation"])
            metrics["time/scoring"].append(phases["scoring"])
            metrics["time/training"].append(step - phases["generation"] - phases["scoring"])
            metrics["time/step"].append(step)
            if phases["generation"] > 0:
                rate = torch.tensor(
                    phases["tokens"] / phases["generation"], device=trainer.accelerator.device
                )
                rate = trainer.accelerator.reduce(rate, reduction="sum")
                metrics["generation_tokens_per_s"].append(float(rate))

    class EpochSeededSampler(torch.utils.data.Sampler):
        """TRL's RepeatSampler with an order that is a function of (seed, epoch).

        RepeatSampler draws each epoch's permutation from one generator seeded once, so a run
        resumed in epoch e > 0 (a fresh sampler) would replay epoch 0's order and train on
        other prompts than the run it continues; here the generator is reseeded at the start
        of every epoch from the trainer's epoch counter (restored on resume)."""

        def __init__(self, inner: Any, trainer: Any):
            self.inner = inner
            self.trainer = trainer

        def __len__(self) -> int:
            return len(self.inner)

        def __iter__(self):
            if self.inner.shuffle:
                epoch = int((self.trainer.state.epoch or 0.0) + 1e-6)
                seed = self.inner.seed if self.inner.seed is not None else 0
                self.inner.generator = torch.Generator().manual_seed(seed + 1000003 * epoch)
            return iter(self.inner)

    class LLMTrainGRPOTrainer(RunDirCheckpoints, RLOOTrainer if rloo else GRPOTrainer):
        """TRL's GRPOTrainer (RLOOTrainer) with checkpoints in our run directory and step
        times."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._phases = {"generation": 0.0, "scoring": 0.0, "tokens": 0}
            self.add_callback(StepTimes(self))

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            clock = Stopwatch(self.accelerator.device)
            # GRPOTrainer returns (completion_ids, logprobs), RLOOTrainer completion_ids alone
            result = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            completion_ids = result if rloo else result[0]
            if self.model.training:
                self._phases["generation"] += clock.lap()
                self._phases["tokens"] += sum(len(ids) for ids in completion_ids)
            return result

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            return EpochSeededSampler(super()._get_train_sampler(dataset), self)

        def _calculate_rewards(self, *args, **kwargs):
            clock = Stopwatch(self.accelerator.device)
            rewards = super()._calculate_rewards(*args, **kwargs)
            if self.model.training:
                self._phases["scoring"] += clock.lap()
            return rewards

    return LLMTrainGRPOTrainer


def check_vllm(section: Any, method: str) -> None:
    """use_vllm needs the vllm package and a CUDA GPU: say so before anything loads."""
    import torch

    if not section.use_vllm:
        return
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU")
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package (pip install vllm, a version TRL supports)")
    if missing:
        raise RecipeError(
            f"{method}.use_vllm: generating with vLLM needs {' and '.join(missing)}; install it "
            f"on a GPU machine or set {method}.use_vllm: false to generate with transformers"
        )


def eval_batch_size(micro_batch_size: int, num_generations: int, world_size: int) -> int:
    """The smallest per-process eval batch >= micro_batch_size whose total over the processes
    holds whole groups (TRL requires it)."""
    unit = num_generations // math.gcd(num_generations, world_size)
    return -(-micro_batch_size // unit) * unit


def run_grpo(recipe: Any, args: Any, method: str = "grpo") -> Any:
    """Train, write <output_dir>/<method>/ and return the trainer. `method`: grpo, gspo (GRPO
    with its own section's defaults), rloo (TRL's RLOOTrainer, which shares GRPO's design) or
    online_dpo (our DPO loss on GRPOTrainer, online_dpo.py)."""
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, RLOOConfig

    section = recipe.section(method)
    run = AlignRun(recipe, method, section)
    model_dir = run.input_model_dir()
    tokenizer = run.load_tokenizer(model_dir)
    check_vllm(section, method)
    from llmtrain.train.engine import compute_dtype

    rewards = build_rewards(
        section.rewards,
        default_reward_model=recipe.input_dir(method, "reward_model") / "final",
        method=method,
        search_path=reward_search_path(recipe),
        device=pick_device(run.env.local_rank),
        dtype=compute_dtype(section.precision),
        trust_remote_code=section.trust_remote_code,
    )
    data = load_examples(section, "prompt", method=method, seed=run.seed)
    template = rl_chat_template(
        tokenizer,
        section.chat_template,
        data.train + data.validation,
        method=method,
        tokenizer_dir=section.tokenizer or model_dir,
    )
    counts: dict[str, int] = {}
    fit = dict(max_length=section.max_prompt_length, on_too_long=section.on_too_long, counts=counts)
    train = fit_prompts(data.train, tokenizer, **fit)
    validation = fit_prompts(data.validation, tokenizer, **fit)
    prompts_per_step = section.global_batch_size // section.num_generations
    if len(train) < prompts_per_step:
        raise InputDataError(
            f"{method}: {len(train)} usable training prompts, fewer than one step's "
            f"{prompts_per_step} (global_batch_size {section.global_batch_size} / num_generations "
            f"{section.num_generations}); add prompts or lower {method}.global_batch_size"
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **run.model_kwargs())
    run.check_vocab(model, tokenizer, model_dir)
    stop_ids = stop_token_ids(tokenizer, template)
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    data_metrics = {**data.metrics(), **{f"data/{k}": v for k, v in counts.items()}}
    run.start(resume=args.resume, overwrite=args.overwrite, data_metrics=data_metrics)
    trainer_args: dict[str, Any] = {}
    if method == "rloo":
        config_class = RLOOConfig
        method_args = dict(
            normalize_advantages=section.normalize_advantages,
            reward_clip_range=section.reward_clip_range,
            epsilon=section.epsilon,
            epsilon_high=section.epsilon_high,
            steps_per_generation=section.steps_per_generation * run.grad_accum_steps(),
        )
        trainer_class = grpo_trainer_class(rloo=True)
    elif method == "online_dpo":
        from llmtrain.train.align.online_dpo import online_dpo_trainer_class

        config_class = GRPOConfig
        # advantages = reward - the pair's mean: their sign says which completion is chosen;
        # one generation per micro-batch, so both completions of a prompt meet in it
        method_args = dict(scale_rewards="none", steps_per_generation=1)
        trainer_class = online_dpo_trainer_class()
        trainer_args = dict(dpo_beta=section.beta, loss_type=section.loss_type)
    else:
        config_class = GRPOConfig
        method_args = dict(
            loss_type=section.loss_type,
            scale_rewards=section.scale_rewards,
            importance_sampling_level=section.importance_sampling_level,
            epsilon=section.epsilon,
            epsilon_high=section.epsilon_high,
            steps_per_generation=section.steps_per_generation * run.grad_accum_steps(),
        )
        trainer_class = grpo_trainer_class()
    config = run.training_args(
        config_class,
        has_validation=bool(validation),
        **method_args,
        num_generations=section.num_generations,
        max_completion_length=section.max_new_tokens,
        temperature=section.temperature,
        top_p=section.top_p,
        top_k=section.top_k,
        beta=section.beta,
        num_iterations=section.num_iterations,
        mask_truncated_completions=section.mask_truncated_completions,
        use_vllm=section.use_vllm,
        vllm_mode=section.vllm_mode,
        vllm_gpu_memory_utilization=section.vllm_gpu_memory_utilization,
        **({"vllm_server_base_url": section.vllm_server_url} if section.vllm_server_url else {}),
        per_device_eval_batch_size=eval_batch_size(
            section.micro_batch_size, section.num_generations, run.env.world_size
        ),
        disable_dropout=True,
        log_completions=False,
        # rollouts with the KV cache: TRL's GenerationConfig otherwise takes use_cache from the
        # model's generation_config, false in models saved before the cache was switched on
        generation_kwargs={"use_cache": True},
    )
    if section.deepspeed is not None and section.deepspeed.zero_stage == 3:
        # TRL loads the reference model under ZeRO-3's zero.Init, whose config counts the
        # processes through deepspeed.comm: make it see the process group the Trainer set up
        # (on GPUs accelerate does this itself; on CPUs it would count one process)
        import deepspeed

        deepspeed.init_distributed(dist_backend=config.distributed_state.backend or "gloo")
    rows = [{"prompt": p.prompt, **p.fields} for p in train]
    val_rows = [{"prompt": p.prompt, **p.fields} for p in validation]
    trainer = trainer_class(
        **trainer_args,
        run_dir=run.run_dir,
        keep_last=section.keep_last,
        model=model,
        reward_funcs=[CombinedReward(rewards, section.num_generations)],
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


def run_gspo(recipe: Any, args: Any) -> Any:
    return run_grpo(recipe, args, method="gspo")


def run_rloo(recipe: Any, args: Any) -> Any:
    return run_grpo(recipe, args, method="rloo")
