"""FSDP2 in one process: which modules become units, the DCP index's restricted unpickling, and
a one-process FSDP2 run (a process group of one) equal to the plain run. The two-process runs
are in tests/test_pretrain_distributed.py."""

import io
import pickle

import pytest
import torch
import torch.distributed as dist

from llmtrain.recipe import load_recipe, validate_recipe
from llmtrain.train.fsdp import DCPMetadataUnpickler, block_modules
from llmtrain.train.models import CLASS_MAPPING, build_config
from llmtrain.train.pretrain import run_pretrain
from tests.pretrain_support import build_data, curve, read_records, write_pretrain_recipe


@pytest.mark.parametrize(
    ("preset", "objective", "blocks", "kind"),
    [
        ("llama-tiny", "clm", 2, "LlamaDecoderLayer"),
        ("moe-tiny", "clm", 2, "Qwen3MoeDecoderLayer"),
        ("bert-tiny", "mlm", 2, "BertLayer"),  # not BertEmbeddings: its weight is the head's
        ("t5-tiny", "span", 4, "T5Block"),  # the encoder's and the decoder's
    ],
)
def test_each_transformer_block_is_a_unit_and_tied_weights_stay_in_the_root(
    preset, objective, blocks, kind
):
    recipe = validate_recipe(
        {"name": "p", "output_dir": "o", "model": {"preset": preset, "vocab_size": 576}}
    )
    config = build_config(recipe.model, vocab_size=576)
    with torch.device("meta"):
        model = CLASS_MAPPING[objective][type(config)](config)
    units = block_modules(model)
    assert len(units) == blocks
    assert {type(unit).__name__ for unit in units} == {kind}


class Payload:
    def __reduce__(self):
        return (eval, ("1",))


def test_the_dcp_index_unpickler_builds_no_other_class():
    with pytest.raises(pickle.UnpicklingError, match=r"names builtins\.eval, which a DCP"):
        DCPMetadataUnpickler(io.BytesIO(pickle.dumps(Payload()))).load()
    assert DCPMetadataUnpickler(io.BytesIO(pickle.dumps(torch.Size([2, 3])))).load() == (2, 3)


def test_one_process_fsdp2_follows_the_plain_run(tiny_tokenizer_dir, tmp_path):
    data = build_data(tmp_path / "data", tiny_tokenizer_dir, 64, max_bytes=100_000)
    body = """
        steps: 6
        global_batch_size: 8
        micro_batch_size: 4
        precision: fp32
        lr: 3.0e-3
        warmup_steps: 1
        log_every: 1
        eval_every: 3
        eval_batches: 2
        save_every: 3
    """
    records = []
    # the options the two-process test leaves at their defaults, with activation checkpointing
    # (recomputed blocks gather their weights again)
    fsdp = (
        "    fsdp: {reshard_after_forward: false, cpu_offload: true}\n"
        "        activation_checkpointing: true\n"
    )
    for name, extra in (("plain", ""), ("fsdp", fsdp)):
        recipe = write_pretrain_recipe(
            tmp_path / f"{name}.yaml",
            output_dir=tmp_path / name,
            data=data,
            model="preset: llama-tiny",
            pretrain=body + extra,
        )
        result = run_pretrain(load_recipe(recipe))
        records.append(curve(read_records(result.run_dir), "loss", "val_loss"))
        assert not dist.is_initialized()  # the group of one ended with the run
    assert (
        tmp_path / "fsdp" / "pretrain" / "checkpoints" / "step-6" / "fsdp" / ".metadata"
    ).is_file()
    plain, fsdp = records
    assert [row[0] for row in fsdp] == [row[0] for row in plain]
    for row, ref in zip(fsdp, plain):
        assert row[1] == pytest.approx(ref[1], rel=1e-5)  # loss
        assert (row[2] is None) == (ref[2] is None)  # val_loss at steps 0, 3 and 6
        assert row[2] is None or row[2] == pytest.approx(ref[2], rel=1e-5)
