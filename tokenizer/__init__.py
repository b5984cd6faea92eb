"""llmtrain.tokenizer: train, extend and evaluate tokenizers.

Keep this file free of heavy imports: the CLI imports the package to register its command.
"""

PUBLIC_MODULES = ("config", "fingerprint")
"""What other stage packages may import: the recipe section and the fingerprint a data build records (tests/test_stages.py checks)."""
