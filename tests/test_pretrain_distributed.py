"""Pretraining with several processes on the CPU (gloo): DeepSpeed ZeRO-2 and ZeRO-3 and FSDP2
follow the single-process run (and so does plain DDP), ZeRO-3 and FSDP2 consolidate final/, a
ZeRO-2 and an FSDP2 run resume from a checkpoint, and the multi-node launcher in scripts/ trains
as two nodes on localhost."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmtrain.recipe import load_recipe
from llmtrain.train.pretrain import run_pretrain
from tests.conftest import REPO
from tests.pretrain_support import LAUNCHER, build_data, curve, read_records, write_pretrain_recipe

pytestmark = pytest.mark.multiprocess

SEQ_LEN = 64
PRETRAIN = """
    steps: 12
    global_batch_size: 16
    micro_batch_size: 8
    precision: fp32
    lr: 3.0e-3
    warmup_steps: 2
    log_every: 1
    eval_every: 6
    eval_batches: 2
    save_every: 6
"""
KEYS = ("loss", "grad_norm", "lr", "val_loss")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(recipe, *extra, nproc=2, timeout=300):
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()),
        "-m", "llmtrain", "pretrain", str(recipe), *extra,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def data(tiny_tokenizer_dir, tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("data"), tiny_tokenizer_dir, SEQ_LEN)


@pytest.fixture(scope="module")
def single_process(data, tmp_path_factory):
    """The reference: the same recipe in this process (world size 1, 2 micro-batches)."""
    root = tmp_path_factory.mktemp("single")
    recipe = write_pretrain_recipe(
        root / "recipe.yaml",
        output_dir=root,
        data=data,
        model="preset: llama-tiny",
        pretrain=PRETRAIN,
    )
    result = run_pretrain(load_recipe(recipe))
    return read_records(result.run_dir), result.final_dir


def make_recipe(root, data, deepspeed):
    return write_pretrain_recipe(
        root / "recipe.yaml",
        output_dir=root,
        data=data,
        model="preset: llama-tiny",
        pretrain=PRETRAIN + f"    deepspeed: {deepspeed}\n",
    )


def assert_follows(records, reference, rel, keys=KEYS):
    got, expected = curve(records, *keys), curve(reference, *keys)
    assert [row[0] for row in got] == [row[0] for row in expected]
    for row, ref in zip(got, expected):
        for value, ref_value, key in zip(row[1:], ref[1:], keys):
            if ref_value is None:  # val_loss on steps without validation
                assert value is None, (row[0], key)
            else:
                assert value == pytest.approx(ref_value, rel=rel), (row[0], key)


def test_ddp_follows_one_process(data, single_process, tmp_path):
    reference, _ = single_process
    recipe = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path,
        data=data,
        model="preset: llama-tiny",
        pretrain=PRETRAIN,
    )
    result = torchrun(recipe)
    assert "(2 processes x 1 micro-batches of 8), fp32, engine ddp" in result.stderr
    assert_follows(read_records(tmp_path / "pretrain"), reference, rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "pretrain" / "checkpoints" / "step-12").iterdir()) == [
        "data-rank0.json", "data-rank1.json", "model.safetensors", "optimizer.pt",
        "rng-rank0.pt", "rng-rank1.pt", "trainer_state.json",
    ]  # fmt: skip


def test_zero2_follows_one_process_and_resumes(data, single_process, tmp_path):
    reference, _ = single_process
    recipe = make_recipe(tmp_path, data, "{zero_stage: 2}")
    torchrun(recipe)
    run_dir = tmp_path / "pretrain"
    uninterrupted = read_records(run_dir)
    assert_follows(uninterrupted, reference, rel=1e-4)
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step-6" / "deepspeed").iterdir()) == [
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    # lose everything after step 6 and resume: the same curve again
    shutil.rmtree(run_dir / "checkpoints" / "step-12")
    shutil.rmtree(run_dir / "final")
    result = torchrun(recipe, "--resume")
    assert "resumed from" in result.stderr
    assert_follows(read_records(run_dir), uninterrupted, rel=1e-6)


def test_zero3_with_cpu_offload_follows_one_process_and_consolidates_final(
    data, single_process, tmp_path
):
    """Parameters offloaded by the recipe, optimizer states by a DeepSpeed JSON (which then
    needs DeepSpeed's CPU Adam: a torch optimizer is refused by DeepSpeed under ZeRO-Offload)."""
    reference, reference_final = single_process
    ds_json = tmp_path / "ds_offload.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}))
    recipe = make_recipe(
        tmp_path, data, f"{{zero_stage: 3, offload_params: true, config: {ds_json}}}"
    )
    torchrun(recipe)
    records = read_records(tmp_path / "pretrain")
    assert_follows(records, reference, rel=1e-4)
    # final/ holds the whole model gathered from both shards
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "pretrain" / "final")
    expected = AutoModelForCausalLM.from_pretrained(reference_final)
    ids = torch.randint(10, 500, (2, 32))
    with torch.no_grad():
        assert torch.allclose(final(ids).logits, expected(ids).logits, atol=1e-4)
    assert sum(p.numel() for p in final.parameters()) == sum(
        p.numel() for p in expected.parameters()
    )


def test_fsdp2_follows_one_process_resumes_exactly_and_consolidates_final(
    data, single_process, tmp_path
):
    reference, reference_final = single_process
    recipe = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path,
        data=data,
        model="preset: llama-tiny",
        pretrain=PRETRAIN + "    fsdp: {reshard_after_forward: true}\n",
    )
    result = torchrun(recipe)
    assert "(2 processes x 1 micro-batches of 8), fp32, engine fsdp" in result.stderr
    run_dir = tmp_path / "pretrain"
    uninterrupted = read_records(run_dir)
    assert_follows(uninterrupted, reference, rel=1e-4)
    assert sorted(p.name for p in (run_dir / "checkpoints" / "step-6").iterdir()) == [
        "data-rank0.json", "data-rank1.json", "fsdp", "rng-rank0.pt", "rng-rank1.pt",
        "trainer_state.json",
    ]  # fmt: skip
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "step-6" / "fsdp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # final/ holds the whole model gathered from both shards, as a transformers directory
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    assert json.loads((run_dir / "final" / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    expected = AutoModelForCausalLM.from_pretrained(reference_final)
    ids = torch.randint(10, 500, (2, 32))
    with torch.no_grad():
        assert torch.allclose(final(ids).logits, expected(ids).logits, atol=1e-4)
    # lose everything after step 6 and resume: the same curve again
    shutil.rmtree(run_dir / "checkpoints" / "step-12")
    shutil.rmtree(run_dir / "final")
    result = torchrun(recipe, "--resume")
    assert "resumed from" in result.stderr
    assert_follows(read_records(run_dir), uninterrupted, rel=1e-6)
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_multinode_launcher_trains_as_two_nodes_on_localhost(data, single_process, tmp_path):
    """scripts/launch/torchrun_multinode.sh started twice (two "nodes" of one process each)
    meeting at one c10d rendezvous, training under ZeRO-2 in DeepSpeed's bf16 (fp32 master
    weights in the optimizer): close to the fp32 single-process run."""
    reference, _ = single_process
    recipe = make_recipe(tmp_path, data, "{zero_stage: 2}")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "NNODES": "2",
        "NPROC_PER_NODE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RDZV_ID": "llmtrain-test",
        "OMP_NUM_THREADS": "1",
    }
    nodes = [
        subprocess.Popen(
            ["bash", str(LAUNCHER), str(recipe), "--set", "pretrain.precision=bf16"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    errors = [node.communicate(timeout=300)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    log = "".join(errors)
    assert "(2 processes x 1 micro-batches of 8), bf16, engine deepspeed zero-2" in log
    bf16 = read_records(tmp_path / "pretrain")
    assert_follows(bf16, reference, rel=1e-2, keys=("loss", "val_loss", "lr"))
    assert curve(bf16, "val_loss")[-1][1] < curve(bf16, "val_loss")[0][1] - 0.5
    assert (tmp_path / "pretrain" / "final" / "model.safetensors").is_file()
