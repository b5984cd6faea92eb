"""`llmtrain align --method online_dpo`: online DPO on TRL's (experimental) OnlineDPOTrainer.

Each step samples two completions per prompt from the current policy, scores both with the
recipe's rewards (a reward model, verifiable rewards, your function: rewards.py), takes the
higher-scored one as chosen (TRL's rule: on a tie, the first sampled), and applies DPO's loss to
the pair against a frozen reference (a copy of the input model; with LoRA the base).

TRL 1.16 has this trainer only in `trl.experimental`; we reach it through
`llmtrain.compat.online_dpo_classes` (why we use it rather than our own: docs/architecture.md).
Our part: the recipe section, prompts fitted to max_prompt_length (counted), the rewards, stop
tokens, our run directory, checkpoints and final/.
"""

from __future__ import annotations

from typing import Any

from llmtrain.chat import end_of_turn_token_id, stop_token_ids
from llmtrain.compat import online_dpo_classes
from llmtrain.errors import InputDataError
from llmtrain.runtime import pick_device
from llmtrain.train.align.chat_data import load_examples
from llmtrain.train.align.grpo import CombinedReward
from llmtrain.train.align.prompts import fit_prompts, rl_chat_template
from llmtrain.train.align.rewards import build_rewards, reward_search_path
from llmtrain.train.align.trl_glue import AlignRun, RunDirCheckpoints


def online_dpo_trainer_class() -> type:
    _, OnlineDPOTrainer = online_dpo_classes()

    class LLMTrainOnlineDPOTrainer(RunDirCheckpoints, OnlineDPOTrainer):
        """TRL's OnlineDPOTrainer with checkpoints in our run directory."""

    return LLMTrainOnlineDPOTrainer


def run_online_dpo(recipe: Any, args: Any) -> Any:
    """Train, write <output_dir>/online_dpo/ and return the trainer."""
    from transformers import AutoModelForCausalLM

    from llmtrain.train.engine import compute_dtype

    method = "online_dpo"
    config_class, _ = online_dpo_classes()
    section = recipe.section(method)
    run = AlignRun(recipe, method, section)
    model_dir = run.input_model_dir()
    tokenizer = run.load_tokenizer(model_dir)
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
        data.train,
        method=method,
        tokenizer_dir=section.tokenizer or model_dir,
    )
    counts: dict[str, int] = {}
    fit = dict(max_length=section.max_prompt_length, on_too_long=section.on_too_long, counts=counts)
    train = fit_prompts(data.train, tokenizer, **fit)
    if len(train) < section.global_batch_size:
        raise InputDataError(
            f"{method}: {len(train)} usable training prompts, fewer than one step's "
            f"{section.global_batch_size} (global_batch_size); add prompts or lower "
            f"{method}.global_batch_size"
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **run.model_kwargs())
    run.check_vocab(model, tokenizer, model_dir)
    # TRL stops generation at the eos ids of the model's generation config
    model.generation_config.eos_token_id = stop_token_ids(tokenizer, template)
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    run.start(resume=args.resume, overwrite=args.overwrite)
    run.log_data({**data.metrics(), **{f"data/{k}": v for k, v in counts.items()}})
    config = run.training_args(
        config_class,
        has_validation=False,
        max_new_tokens=section.max_new_tokens,
        max_length=section.max_prompt_length + section.max_new_tokens,
        temperature=section.temperature,
        top_p=section.top_p,
        top_k=section.top_k,
        beta=[section.beta],
        loss_type=section.loss_type,
        missing_eos_penalty=section.missing_eos_penalty,
        disable_dropout=True,
    )
    rows = [{"prompt": p.prompt, **p.fields} for p in train]
    trainer = online_dpo_trainer_class()(
        run_dir=run.run_dir,
        keep_last=section.keep_last,
        model=model,
        ref_model=None,  # TRL copies the input model (LoRA: the base, adapters off)
        reward_funcs=[CombinedReward(rewards, num_generations=2)],
        args=config,
        train_dataset=run.dataset(rows, "train"),
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
