"""Errors a user can cause. The CLI prints their message without a traceback and exits 2.

A message says what was wrong, where (file and line, recipe key, source name) and what to do.
"""


class LLMTrainError(Exception):
    """Base class for every error caused by the user's input rather than by a bug."""


class RecipeError(LLMTrainError):
    """The recipe is malformed: unknown key, wrong type, missing file, bad override."""


class InputDataError(LLMTrainError):
    """A corpus, dataset or eval file cannot be read or holds malformed records."""


class StageInputError(LLMTrainError):
    """A stage's input directory is missing or does not match (tokenizer, data build, model)."""


class RunDirError(LLMTrainError):
    """A run directory cannot be used as asked (exists with another recipe, no checkpoint)."""


class TrainingError(LLMTrainError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says what is kept."""
