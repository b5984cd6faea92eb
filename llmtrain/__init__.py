"""llmtrain: from raw text to an aligned chat model.

Importing this package stays cheap (no torch, no transformers): the CLI answers `--help`
and `config` commands without loading the training stack.
"""

__version__ = "0.1.0"
