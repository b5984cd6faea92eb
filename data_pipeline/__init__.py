"""llmtrain.data_pipeline: read, clean, filter, dedup, decontaminate, mix, tokenize and pack.

Keep this file free of heavy imports: the CLI imports the package to register its command.
"""

PUBLIC_MODULES = ("config", "readers", "loader")
"""What other stage packages may import: the recipe section, the streaming readers every stage uses, and the shard reader pretraining uses (tests/test_stages.py checks)."""
