"""llmtrain.train: model presets, objectives, the pretraining loop, alignment methods.

Keep this file free of heavy imports: the CLI imports the package to register its commands.
"""

PUBLIC_MODULES = ("config",)
"""What other stage packages may import: the recipe sections (tests/test_stages.py checks)."""
