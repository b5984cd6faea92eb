"""llmtrain.train.evaluate: `llmtrain eval`, `generate` and `chat` over any Hugging Face model.

Keep this file free of heavy imports: the CLI imports the package to register its commands.
"""
