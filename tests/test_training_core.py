"""The training core every stage shares: one weight-decay rule, `zero_stage: 0` as plain DDP,
no CPU Adam without offloading, one fp16 refusal, and the loop shell's refusal to publish
non-finite weights. (PPO's side of these, and its token-level loss, is in test_align_ppo.py.)"""

import pytest
import torch
from torch import nn

from llmtrain.distributed import DeepSpeedSection, build_deepspeed_config
from llmtrain.errors import RecipeError, StageInputError, TrainingError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import RunDir
from llmtrain.train.engine import (
    PlainEngine,
    check_precision,
    engine_deepspeed_config,
    offloads_optimizer,
    release_accelerator,
)
from llmtrain.train.optim import decayed_parameter_names, param_groups
from tests.pretrain_support import build_data, read_records, write_pretrain_recipe

SEQ_LEN = 64


@pytest.fixture(scope="module")
def clm_data(tiny_tokenizer_dir, tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("clm-data"), tiny_tokenizer_dir, SEQ_LEN)


def test_trl_trainers_decay_weight_matrices_only(tiny_causal_lm_dir, tmp_path):
    """SFT/RM/DPO/GRPO trainers group parameters by our rule: the Trainer's own rule decays the
    embeddings, ours (matrices other than embeddings) does not."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from llmtrain.train.align.dpo import dpo_trainer_class
    from llmtrain.train.align.grpo import grpo_trainer_class
    from llmtrain.train.align.rm import reward_trainer_class
    from llmtrain.train.align.sft import sft_trainer_class
    from llmtrain.train.align.trl_glue import RunDirCheckpoints

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    config = SFTConfig(
        output_dir=str(tmp_path / "checkpoints"),
        use_cpu=True,
        report_to="none",
        weight_decay=0.1,
        max_steps=1,
        bf16=False,
    )
    trainer = sft_trainer_class()(
        run_dir=RunDir(tmp_path),
        keep_last=1,
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{"text": "one two three"}] * 2),
        processing_class=tokenizer,
    )
    try:
        optimizer = trainer.create_optimizer()
    finally:
        release_accelerator()
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    ours = {id(p) for p in param_groups(model, 0.1)[0]["params"]}
    assert decayed == ours
    embedding = model.get_input_embeddings().weight
    assert id(embedding) not in decayed
    assert id(model.model.layers[0].self_attn.q_proj.weight) in decayed
    assert id(model.model.norm.weight) not in decayed
    for trainer_class in (reward_trainer_class(), dpo_trainer_class(), grpo_trainer_class()):
        assert (
            trainer_class.get_decay_parameter_names is RunDirCheckpoints.get_decay_parameter_names
        )


def test_decayed_parameter_names_leave_out_norms_biases_and_embeddings():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    assert decayed_parameter_names(model) == ["1.weight"]


class _Section:
    def __init__(self, deepspeed, **extra):
        self.deepspeed = deepspeed
        self.micro_batch_size = 2
        self.precision = "fp32"
        self.grad_clip = 1.0
        self.__dict__.update(extra)


def test_zero_stage_0_is_plain_ddp_in_every_stage(tmp_path):
    """No DeepSpeed config at zero_stage 0: the stages on our loop shell build PlainEngine and
    the TRL-backed ones pass the Trainer no DeepSpeed dict."""
    section = _Section(DeepSpeedSection(zero_stage=0))
    for where in ("pretrain", "ppo", "sft"):
        assert engine_deepspeed_config(section, where=where, grad_accum=1, world_size=1) is None
    stage2 = engine_deepspeed_config(
        _Section(DeepSpeedSection(zero_stage=2)), where="sft", grad_accum=1, world_size=1
    )
    assert stage2["zero_optimization"]["stage"] == 2
    assert engine_deepspeed_config(_Section(None), where="ppo", grad_accum=1, world_size=1) is None


def test_offload_device_none_is_no_offload(tmp_path):
    """`offload_optimizer: {device: none}` in a DeepSpeed JSON does not select DeepSpeed's CPU
    Adam; device cpu does."""
    import json

    def config(device):
        path = tmp_path / f"{device}.json"
        path.write_text(
            json.dumps({"zero_optimization": {"offload_optimizer": {"device": device}}})
        )
        return build_deepspeed_config(
            DeepSpeedSection(zero_stage=2, config=path),
            micro_batch_size=2,
            grad_accum_steps=1,
            world_size=1,
            precision="fp32",
            grad_clip=1.0,
            where="ppo",
        )

    assert not offloads_optimizer(config("none"))
    assert offloads_optimizer(config("cpu"))
    assert not offloads_optimizer(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 runs on a GPU")
def test_one_fp16_refusal():
    for where in ("pretrain", "ppo", "grpo"):
        with pytest.raises(StageInputError) as error:
            check_precision("fp16", where)
        assert str(error.value) == (
            f"{where}.precision fp16 needs a CUDA GPU (loss scaling of half-precision "
            "gradients); use bf16 or fp32 on this machine"
        )
    check_precision("bf16", "ppo")


def test_non_finite_weights_are_neither_checkpointed_nor_written_as_final(
    clm_data, tmp_path, monkeypatch
):
    """The update of step 3 (the last) leaves an infinite weight with a finite loss: the run
    keeps its step-2 checkpoint, writes no step-3 checkpoint and refuses final/."""
    from llmtrain.train.pretrain import run_pretrain

    real_step = PlainEngine.step
    calls = {"steps": 0}

    def poisoning_step(self, skip):
        result = real_step(self, skip)
        calls["steps"] += 1
        if calls["steps"] == 3:
            with torch.no_grad():
                next(self.module.parameters()).view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(PlainEngine, "step", poisoning_step)
    recipe_path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=clm_data,
        model="preset: llama-tiny",
        pretrain="""
            steps: 3
            global_batch_size: 16
            micro_batch_size: 16
            precision: fp32
            log_every: 1
            eval_every: 0
            save_every: 2
        """,
    )
    run_dir = tmp_path / "out" / "pretrain"
    with pytest.raises(TrainingError) as error:
        run_pretrain(load_recipe(recipe_path))
    assert str(error.value) == (
        "pretrain: the trained weights hold NaN or infinite values, so final/ was not written; "
        f"the last good checkpoint is {run_dir / 'checkpoints' / 'step-2'}. Lower pretrain.lr or "
        "keep grad_clip on, then train again (or continue from the checkpoint with --resume)"
    )
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-2"]
    assert not (run_dir / "final").exists()
    assert [r["step"] for r in read_records(run_dir)] == [1, 2, 3]


def test_run_directory_is_prepared_by_rank_0_between_barriers(clm_data, tmp_path, monkeypatch):
    """Every stage (the loop shell's and the TRL-backed ones, through StageRun.start): every
    process checks the run directory (so all raise the same error), then the main process
    writes it while the others wait; another rank writes nothing."""
    from llmtrain.train import stage_run
    from llmtrain.train.align.trl_glue import AlignRun

    assert AlignRun.start is stage_run.StageRun.start
    events = []
    monkeypatch.setattr(stage_run, "barrier", lambda: events.append("barrier"))
    real_start = RunDir.start

    def start(self, config_yaml, **kwargs):
        events.append("write" if kwargs.get("is_main", True) else "check")
        return real_start(self, config_yaml, **kwargs)

    monkeypatch.setattr(RunDir, "start", start)
    recipe = load_recipe(
        write_pretrain_recipe(
            tmp_path / "recipe.yaml",
            output_dir=tmp_path / "out",
            data=clm_data,
            model="preset: llama-tiny",
            pretrain="steps: 2\nglobal_batch_size: 16\nmicro_batch_size: 8\n",
        )
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, expected in (
        (1, ["check", "barrier", "barrier"]),
        (0, ["check", "barrier", "write", "barrier"]),
    ):
        monkeypatch.setenv("RANK", str(rank))
        events.clear()
        run = stage_run.StageRun(recipe, "pretrain", recipe.pretrain, inputs=("model", "pretrain"))
        run.start()
        run.tracker.close()
        assert events == expected
        assert (tmp_path / "out" / "pretrain" / "config.yaml").is_file() == (rank == 0)


def test_fsdp_refuses_fp16_and_muon():
    from types import SimpleNamespace

    from llmtrain.train.fsdp import check_fsdp

    with pytest.raises(RecipeError) as error:
        check_fsdp(SimpleNamespace(precision="fp16", optimizer="adamw"))
    assert str(error.value) == (
        "pretrain.fsdp runs bf16 or fp32: fp16 would need a loss scaler for the sharded "
        "gradients, which llmtrain does not build; set pretrain.precision: bf16"
    )
    with pytest.raises(RecipeError) as error:
        check_fsdp(SimpleNamespace(precision="bf16", optimizer="muon"))
    assert str(error.value) == (
        "pretrain.optimizer muon does not run under FSDP: FSDP hands the optimizer row shards "
        "of each weight matrix and Muon orthogonalises whole matrices; remove pretrain.fsdp "
        "(DDP) or use optimizer: adamw"
    )


def test_align_fsdp_is_accelerates_fsdp2_on_gpus_and_refused_on_cpus(monkeypatch, tmp_path):
    """The align methods' fsdp section becomes the Trainer's FSDP2 plugin arguments; without a
    CUDA GPU it is refused (accelerate would silently train as DDP)."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from llmtrain.distributed import FSDPSection
    from llmtrain.train.align.trl_glue import AlignRun

    run = SimpleNamespace(
        method="sft", section=SimpleNamespace(fsdp=FSDPSection(reshard_after_forward=False))
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RecipeError) as error:
        AlignRun.fsdp_args(run)
    assert str(error.value) == (
        "sft.fsdp needs CUDA GPUs: TRL trains through accelerate, which runs FSDP only on "
        "accelerators (on CPU processes it would silently train as DDP, unsharded); remove "
        "sft.fsdp, or use sft.deepspeed (ZeRO runs on CPUs too)"
    )
    assert (
        AlignRun.fsdp_args(SimpleNamespace(method="sft", section=SimpleNamespace(fsdp=None))) == {}
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **AlignRun.fsdp_args(run))
    assert args.fsdp_plugin_args == {
        "fsdp_version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_ram_efficient_loading": False,
        "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": False,
    }
