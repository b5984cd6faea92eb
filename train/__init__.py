"""llmtrain.train: model presets, objectives, the pretraining loop, alignment methods.

Keep this file free of heavy imports: the CLI imports the package to register its commands.
"""
