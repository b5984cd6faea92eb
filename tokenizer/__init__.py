"""llmtrain.tokenizer: train, extend and evaluate tokenizers.

Keep this file free of heavy imports: the CLI imports the package to register its command.
"""
