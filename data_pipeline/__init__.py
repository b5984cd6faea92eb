"""llmtrain.data_pipeline: read, clean, filter, dedup, decontaminate, mix, tokenize and pack.

Keep this file free of heavy imports: the CLI imports the package to register its command.
"""
