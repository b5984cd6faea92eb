"""llmtrain.train.align: post-training methods (sft, rm, dpo on TRL; ppo ours; grpo on TRL).

Keep this file free of heavy imports: the CLI imports the package to register its command.
"""
