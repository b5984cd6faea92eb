"""Every use of a dependency's private API, in one place, and the check of installed versions.

A private member (a name starting with `_`) of TRL, transformers, accelerate or DeepSpeed can
change in any release. Our code touches one only through a function here, or (for a private
hook we override in a Trainer subclass) after naming it in `PRIVATE_MEMBERS`.
tests/test_compat.py checks every entry against the installed packages (the member exists, a
method has the parameters we pass or receive) and fails naming the member, the package and its
version, so an upgrade that breaks one says where instead of failing somewhere in a run.

`check_versions()` compares the installed versions with the ranges in setup.cfg (read from the
installed llmtrain's metadata: one source of truth) and warns, once per process, for each
package outside its tested range. It imports nothing heavy (importlib.metadata only).

This module imports no dependency at import time: each function imports what it touches.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivateMember:
    """A private member of a dependency that our code calls, reads or overrides."""

    distribution: str
    """The package that provides it (as pip names it)."""
    owner: str
    """Dotted path of the module or class that defines it."""
    name: str
    use: str
    """call (we call it), override (a Trainer subclass of ours overrides it and calls super),
    attribute (we read or write it)."""
    parameters: tuple[str, ...] | None
    """A method's parameters after self, as we call or override it; None for an attribute."""
    why: str
    optional: bool = False
    """Its package is not in install_requires: checked only when installed."""

    @property
    def label(self) -> str:
        return f"{self.owner}.{self.name}"


PRIVATE_MEMBERS: tuple[PrivateMember, ...] = (
    # -- hooks our Trainer subclasses override (the method keeps its private name) ------------
    PrivateMember(
        "trl",
        "trl.DPOTrainer",
        "_prepare_dataset",
        "override",
        ("dataset", "processing_class", "args", "dataset_name"),
        "train/align/dpo.py: records that chat_data already tokenized and fitted skip TRL's "
        "tokenization (it would tokenize them again, differently)",
    ),
    PrivateMember(
        "trl",
        "trl.KTOTrainer",
        "_prepare_dataset",
        "override",
        ("dataset", "processing_class", "args", "dataset_name"),
        "train/align/kto.py: examples that chat_data already tokenized and fitted skip TRL's "
        "tokenization; we add the KL completions TRL would add after it",
    ),
    PrivateMember(
        "trl",
        "trl.DPOTrainer",
        "_precompute_ref_logps",
        "override",
        ("dataset", "name", "batch_size"),
        "train/align/ref_free.py: orpo and simpo have no reference model; DPOTrainer is told the "
        "reference log-probs are precomputed (so it loads none) and computing them is a no-op",
    ),
    PrivateMember(
        "trl",
        "trl.GRPOTrainer",
        "_generate_single_turn",
        "override",
        ("prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images"),
        "train/align/grpo.py: times generation and counts the tokens it generated "
        "(time/generation, generation_tokens_per_s); returns (completion_ids, ...)",
    ),
    PrivateMember(
        "trl",
        "trl.GRPOTrainer",
        "_calculate_rewards",
        "override",
        ("inputs", "prompts", "completions", "completion_ids_list"),
        "train/align/grpo.py: times reward scoring (time/scoring)",
    ),
    PrivateMember(
        "trl",
        "trl.GRPOTrainer",
        "_get_train_sampler",
        "override",
        ("dataset",),
        "train/align/grpo.py: wraps TRL's RepeatSampler so each epoch's order is a function of "
        "(seed, epoch) and a resumed run replays the same prompts",
    ),
    PrivateMember(
        "trl",
        "trl.RLOOTrainer",
        "_generate_single_turn",
        "override",
        ("prompt_ids", "images", "multimodal_fields"),
        "train/align/grpo.py (rloo): as for GRPOTrainer, times generation and counts its tokens",
    ),
    PrivateMember(
        "trl",
        "trl.RLOOTrainer",
        "_calculate_rewards",
        "override",
        ("inputs", "prompts", "completions", "completion_ids_list"),
        "train/align/grpo.py (rloo): times reward scoring (time/scoring)",
    ),
    PrivateMember(
        "trl",
        "trl.RLOOTrainer",
        "_get_train_sampler",
        "override",
        ("dataset",),
        "train/align/grpo.py (rloo): the same RepeatSampler fix as for GRPOTrainer",
    ),
    PrivateMember(
        "trl",
        "trl.RLOOTrainer",
        "_metrics",
        "attribute",
        None,
        "trainer_metrics() (rloo): our step times join the metrics TRL logs and averages",
    ),
    PrivateMember(
        "transformers",
        "transformers.Trainer",
        "_save_checkpoint",
        "override",
        ("model", "trial"),
        "train/align/trl_glue.py RunDirCheckpoints: publishes each checkpoint atomically into "
        "our run directory (checkpoints/step-N) once every process has written it",
    ),
    # -- members read or called through the functions below -----------------------------------
    PrivateMember(
        "trl",
        "trl.GRPOTrainer",
        "_metrics",
        "attribute",
        None,
        "trainer_metrics(): our step times join the metrics TRL logs and averages",
    ),
    PrivateMember(
        "trl",
        "trl.RewardTrainer",
        "_metrics",
        "attribute",
        None,
        "trainer_metrics(): the rm stage's compute_loss logs TRL's reward metrics",
    ),
    PrivateMember(
        "trl",
        "trl.RewardTrainer",
        "_total_train_tokens",
        "attribute",
        None,
        "add_train_tokens(): the rm stage's compute_loss keeps TRL's num_tokens count",
    ),
    PrivateMember(
        "accelerate",
        "accelerate.state.AcceleratorState",
        "_reset_state",
        "call",
        ("reset_partial_state",),
        "reset_accelerate_state(): a second run in one process (tests, `llmtrain run`) starts "
        "from fresh process-wide state",
    ),
    PrivateMember(
        "accelerate",
        "accelerate.state.GradientState",
        "_reset_state",
        "call",
        (),
        "reset_accelerate_state(): as AcceleratorState._reset_state",
    ),
    PrivateMember(
        "deepspeed",
        "deepspeed.runtime.engine.DeepSpeedEngine",
        "_zero3_consolidated_16bit_state_dict",
        "call",
        ("exclude_frozen_parameters",),
        "zero3_full_state_dict(): final/ under ZeRO-3 needs every weight gathered from all "
        "ranks (DeepSpeed's public save_16bit_model writes a file we would read back)",
    ),
    PrivateMember(
        "transformers",
        "transformers.PretrainedConfig",
        "_attn_implementation",
        "attribute",
        None,
        "attn_implementation(), set_attn_implementation(): the attention kernel of a model "
        "built from a config (from_pretrained takes it as an argument, a config does not)",
    ),
    PrivateMember(
        "transformers",
        "transformers.PreTrainedModel",
        "_supports_sdpa",
        "attribute",
        None,
        "supports_attention(): refuse an attention kernel the architecture lacks, with a "
        "message, before building the model",
    ),
    PrivateMember(
        "transformers",
        "transformers.PreTrainedModel",
        "_supports_flash_attn",
        "attribute",
        None,
        "supports_attention(): as _supports_sdpa, for flash_attention_2",
    ),
    PrivateMember(
        "transformers",
        "transformers.PreTrainedModel",
        "_no_split_modules",
        "attribute",
        None,
        "no_split_module_classes(): the transformer-block classes FSDP2 shards one by one "
        "(train/fsdp.py; accelerate's FSDP auto-wrap policy reads the same attribute)",
    ),
    PrivateMember(
        "liger-kernel",
        "liger_kernel.transformers",
        "_apply_liger_kernel_to_instance",
        "call",
        ("model",),
        "apply_liger_kernel(): Liger's kernels patched into a model instance (the entry point "
        "Liger's own README gives; there is no public one for an instance)",
        optional=True,
    ),
)


def trainer_metrics(trainer: Any, mode: str) -> dict[str, list[float]]:
    """TRL's per-mode metric lists (`trainer._metrics[mode]`, mode train or eval): values
    appended there are averaged and logged by TRL with its own."""
    return trainer._metrics[mode]


def add_train_tokens(trainer: Any, count: int) -> int:
    """Add to TRL RewardTrainer's token count (`_total_train_tokens`); returns the total."""
    trainer._total_train_tokens += count
    return trainer._total_train_tokens


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons (`AcceleratorState._reset_state`,
    `GradientState._reset_state`), so another run in this process starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def zero3_full_state_dict(engine: Any) -> dict[str, Any]:
    """Every weight of a ZeRO-3 DeepSpeed engine, gathered (a collective: every rank calls
    it; `DeepSpeedEngine._zero3_consolidated_16bit_state_dict`)."""
    return engine._zero3_consolidated_16bit_state_dict()


def attn_implementation(config: Any) -> str | None:
    """The attention kernel a transformers config selects (`config._attn_implementation`)."""
    return getattr(config, "_attn_implementation", None)


def set_attn_implementation(config: Any, name: str) -> None:
    """Select the attention kernel of a model built from `config`."""
    config._attn_implementation = name


def supports_attention(model_class: Any, name: str) -> bool:
    """Whether a transformers model class supports the kernel `sdpa` or `flash_attention_2`
    (`_supports_sdpa`, `_supports_flash_attn`)."""
    flag = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn"}[name]
    return bool(getattr(model_class, flag, False))


def no_split_module_classes(model: Any) -> set[str]:
    """Class names of the blocks a transformers model keeps whole (`_no_split_modules`, of the
    model and its submodels)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return names


def apply_liger_kernel(model: Any, **kwargs: Any) -> None:
    """Liger's Triton kernels patched into `model`
    (`liger_kernel.transformers._apply_liger_kernel_to_instance`); ImportError without it."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, **kwargs)


# ---------------------------------------------------------------------------------------------
# Installed versions against the tested ranges

_warned = False


def tested_ranges() -> dict[str, str]:
    """Package -> version specifier of llmtrain's install_requires, from the installed
    metadata (setup.cfg's bounds); empty when llmtrain is not installed."""
    try:
        requirements = metadata.requires("llmtrain") or []
    except metadata.PackageNotFoundError:
        return {}
    ranges = {}
    for requirement in requirements:
        if ";" in requirement:  # an extra's requirement: `gguf<0.20,>=0.19 ; extra == "export"`
            continue
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", requirement)
        if found and found.group(3).strip():
            ranges[found.group(1)] = found.group(3).strip().strip("()")
    return ranges


def outside_tested_ranges() -> list[str]:
    """One line per installed package whose version is outside its tested range."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    problems = []
    for name, spec in tested_ranges().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # pip check's business, and the import fails with a clear error
        try:
            inside = SpecifierSet(spec).contains(Version(installed), prereleases=True)
        except InvalidVersion:
            inside = False
        if not inside:
            problems.append(f"{name} {installed} is installed; llmtrain is tested with {spec}")
    return problems


def check_versions() -> list[str]:
    """Warn (once per process) for each installed package outside its tested range; never
    refuses. Returns the lines it warned with."""
    global _warned
    if _warned:
        return []
    _warned = True
    problems = outside_tested_ranges()
    for line in problems:
        log.warning(
            "%s (see setup.cfg and constraints.txt; `pip install -c constraints.txt -e .` "
            "installs the tested set)",
            line,
        )
    return problems
