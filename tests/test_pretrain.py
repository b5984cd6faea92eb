"""`llmtrain pretrain` in one process: each objective learns, final/ reloads, MoE reports its
router loss, non-finite steps are skipped then stop the run, a SIGKILLed run resumes exactly,
and every bad input is refused before training with a message that says what to do."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

import llmtrain.train.pretrain as pretrain_module
from llmtrain.errors import RecipeError, RunDirError, StageInputError, TrainingError
from llmtrain.recipe import load_recipe
from llmtrain.train.flops import decoder_flops_per_token, parameter_counts
from llmtrain.train.inputs import grad_accum_steps
from llmtrain.train.pretrain import run_pretrain
from tests.conftest import REPO
from tests.pretrain_support import (
    add_mlm_and_span_tokens,
    build_data,
    curve,
    read_records,
    write_pretrain_recipe,
)
from tests.slurm_support import slurm_stand_ins

SEQ_LEN = 64


@pytest.fixture(scope="module")
def clm_data(tiny_tokenizer_dir, tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("clm-data"), tiny_tokenizer_dir, SEQ_LEN)


@pytest.fixture(scope="module")
def mlm_tokenizer_dir(tiny_tokenizer_dir, tmp_path_factory):
    return add_mlm_and_span_tokens(tiny_tokenizer_dir, tmp_path_factory.mktemp("mlm-tokenizer"))


@pytest.fixture(scope="module")
def mlm_data(mlm_tokenizer_dir, tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("mlm-data"), mlm_tokenizer_dir, SEQ_LEN)


TRAIN = """
    steps: 80
    global_batch_size: 16
    micro_batch_size: 8
    precision: fp32
    lr: 3.0e-3
    warmup_steps: 5
    log_every: 10
    eval_every: 40
    eval_batches: 4
    save_every: 40
"""

AUTO = {"clm": AutoModelForCausalLM, "mlm": AutoModelForMaskedLM, "span": AutoModelForSeq2SeqLM}


@pytest.mark.parametrize(
    ("objective", "preset", "data_fixture"),
    [
        ("clm", "llama-tiny", "clm_data"),
        ("mlm", "bert-tiny", "mlm_data"),
        ("span", "t5-tiny", "mlm_data"),
    ],
)
def test_objective_learns_and_final_reloads_with_the_same_logits(
    objective, preset, data_fixture, request, tmp_path
):
    data = request.getfixturevalue(data_fixture)
    recipe_path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=data,
        model=f"preset: {preset}",
        pretrain=TRAIN,
    )
    result = run_pretrain(load_recipe(recipe_path))
    records = read_records(result.run_dir)
    val = curve(records, "val_loss")
    assert [step for step, _ in val] == [0, 40, 80]
    start, end = val[0][1], val[-1][1]
    assert end < start - 0.8, f"{objective}: validation loss {start:.3f} -> {end:.3f}"
    assert all(r["loss"] is not None and r["grad_norm"] > 0 for r in records if "loss" in r)
    assert records[-1]["val_ppl"] == pytest.approx(torch.tensor(end).exp().item(), rel=1e-6)
    assert sorted(p.name for p in (result.run_dir / "checkpoints").iterdir()) == [
        "step-40",
        "step-80",
    ]

    # final/ is a Hugging Face directory with the tokenizer; it computes what the trained model does
    loaded = AUTO[objective].from_pretrained(result.final_dir)
    assert (result.final_dir / "tokenizer.json").is_file()
    ids = torch.randint(10, 500, (2, 24))
    extra = {"decoder_input_ids": ids[:, :8]} if objective == "span" else {}
    trained = result.model.eval()
    with torch.no_grad():
        assert torch.allclose(
            loaded(input_ids=ids, **extra).logits, trained(input_ids=ids, **extra).logits, atol=1e-5
        )


def test_moe_training_reports_the_router_aux_loss(clm_data, tmp_path):
    recipe_path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=clm_data,
        model="preset: moe-tiny",
        pretrain=TRAIN.replace("steps: 80", "steps: 30").replace("eval_every: 40", "eval_every: 30")
        + "    peak_tflops: 0.5\n",
    )
    result = run_pretrain(load_recipe(recipe_path))
    records = read_records(result.run_dir)
    logged = curve(records, "router_aux_loss", "loss")
    assert [step for step, *_ in logged] == [10, 20, 30]
    # Switch-style balance loss: num_experts x sum(f_i x P_i) is ~top_k (2) when balanced
    assert all(1.9 < aux < 2.5 for _, aux, _ in logged)
    # MFU: model FLOPs per token (only the top-2 of 4 experts count) x tokens/s over the peak
    counts = parameter_counts(result.model)
    params = dict(result.model.named_parameters())  # the tied embedding once: it is the head
    experts = sum(p.numel() for name, p in params.items() if ".experts." in name)
    assert counts.active_matmul == sum(p.numel() for p in params.values() if p.ndim > 1) - (
        experts // 2
    )
    per_token = decoder_flops_per_token(result.model.config, counts, seq_len=SEQ_LEN)
    for record in (r for r in records if "tokens_per_s" in r):
        assert record["mfu"] == pytest.approx(per_token * record["tokens_per_s"] / 0.5e12)
    val = curve(read_records(result.run_dir), "val_loss")
    assert val[-1][1] < val[0][1] - 0.5
    assert AutoModelForCausalLM.from_pretrained(result.final_dir).config.model_type == "qwen3_moe"


def test_loss_is_normalised_by_the_global_count_of_target_tokens(clm_data, tmp_path):
    """Two accumulated micro-batches scoring 32 and 512 tokens give the step the loss and the
    gradient of one batch holding both: the mean over all 544 tokens, not the mean of the two
    micro-batch means. The optimizer is torch's fused AdamW."""
    from llmtrain.train.objectives import CausalLM, ModelInputs
    from llmtrain.train.pretrain import (
        PretrainLoop,
        make_accelerator,
        prepare,
        release_accelerator,
    )

    marker = 3

    class FewTargetsInMarkedRows(CausalLM):
        """Next token, but a row starting with the marker scores only its last 4 positions."""

        def prepare(self, windows, generator):
            labels = windows[:, 1:].clone()
            labels[windows[:, 0] == marker, :-4] = -100
            return ModelInputs({"input_ids": windows[:, :-1]}, labels)

    windows = torch.randint(10, 500, (16, SEQ_LEN + 1), generator=torch.Generator().manual_seed(0))
    windows[:8, 0] = marker  # the first micro-batch of 8 scores 8 x 4 = 32 tokens, the second 512

    def first_step(micro_batch_size):
        recipe = load_recipe(
            write_pretrain_recipe(
                tmp_path / f"micro-{micro_batch_size}.yaml",
                output_dir=tmp_path / f"micro-{micro_batch_size}",
                data=clm_data,
                model="preset: llama-tiny",
                pretrain=f"""
                    steps: 2
                    global_batch_size: 16
                    micro_batch_size: {micro_batch_size}
                    precision: fp32
                    grad_clip: null
                """,
            )
        )
        setup = prepare(recipe)
        setup.objective = FewTargetsInMarkedRows()
        try:
            loop = PretrainLoop(
                recipe, setup, make_accelerator(recipe.pretrain, engine_precision=False)
            )
            assert loop.plan.grad_accum == 16 // micro_batch_size
            assert loop.engine.base_optimizer.defaults["fused"] is True
            loop.engine.train()
            return loop.train_step(iter(windows.split(micro_batch_size))), setup
        finally:
            release_accelerator()

    accumulated, setup = first_step(8)
    whole, _ = first_step(16)
    assert accumulated.loss == pytest.approx(whole.loss, rel=1e-6)
    assert accumulated.grad_norm == pytest.approx(whole.grad_norm, rel=1e-5)

    # the reference by hand, and the per-micro-batch average it must not be
    from llmtrain.train.config import ModelSection
    from llmtrain.train.models import create_model
    from llmtrain.train.objectives import token_loss_sum

    def gradient_norm(loss_of):
        model = create_model(
            ModelSection(preset="llama-tiny"), setup.data.tokenizer, objective="clm", seed=11
        )
        loss = loss_of(model)
        loss.backward()
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        return loss.item(), norm.item()

    def micro_sums(model):
        out = []
        for part in windows.split(8):
            inputs = FewTargetsInMarkedRows().prepare(part, None)
            out.append((token_loss_sum(model(**inputs.inputs).logits, inputs.labels), inputs))
        return out

    def global_mean(model):
        return sum(total for total, _ in micro_sums(model)) / 544

    def mean_of_means(model):
        return sum(total / inputs.num_targets for total, inputs in micro_sums(model)) / 2

    loss, norm = gradient_norm(global_mean)
    assert whole.loss == pytest.approx(loss, rel=1e-6)
    assert whole.grad_norm == pytest.approx(norm, rel=1e-5)
    other_loss, other_norm = gradient_norm(mean_of_means)
    assert abs(other_loss - loss) > 1e-3 * loss or abs(other_norm - norm) > 1e-2 * norm


def test_continued_pretraining_from_a_model_directory(clm_data, tiny_causal_lm_dir, tmp_path):
    recipe_path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=clm_data,
        model=f"path: {tiny_causal_lm_dir}",
        pretrain=TRAIN.replace("steps: 80", "steps: 20").replace(
            "eval_every: 40", "eval_every: 20"
        ),
    )
    result = run_pretrain(load_recipe(recipe_path))
    val = curve(read_records(result.run_dir), "val_loss")
    assert val[-1][1] < val[0][1] - 0.3
    before = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    after = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert before.config.to_dict()["hidden_size"] == after.config.hidden_size == 64
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)


def test_speed_options_follow_fp32(clm_data, tmp_path, monkeypatch):
    """bf16 autocast with activation checkpointing, and torch.compile (its graph capture and
    AOT autograd, with aot_eager standing in for inductor's C++ code generation, which takes
    minutes on this CPU) train like the plain fp32 run; final/ of the compiled run has plain
    parameter names."""

    def run(name, extra):
        recipe_path = write_pretrain_recipe(
            tmp_path / f"{name}.yaml",
            output_dir=tmp_path / name,
            data=clm_data,
            model="preset: llama-tiny",
            pretrain=TRAIN.replace("steps: 80", "steps: 10")
            .replace("log_every: 10", "log_every: 5")
            .replace("precision: fp32", extra),
        )
        result = run_pretrain(load_recipe(recipe_path))
        return curve(read_records(result.run_dir), "loss"), result

    fp32, plain = run("fp32", "precision: fp32")
    bf16, checkpointed = run("bf16", "precision: bf16\n    activation_checkpointing: true")
    assert checkpointed.model.is_activation_checkpointing
    assert not plain.model.is_activation_checkpointing
    assert [step for step, _ in bf16] == [5, 10]
    for (_, a), (_, b) in zip(fp32, bf16):
        assert b == pytest.approx(a, rel=5e-3)

    compiled_models = []
    real_compile = torch.compile

    def compile_with_aot_eager(model, **kwargs):
        compiled_models.append(model)
        return real_compile(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_with_aot_eager)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled, result = run("compiled", "precision: fp32\n    compile: true")
    assert len(compiled_models) == 1 and torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert [step for step, _ in compiled] == [5, 10]
    assert [loss for _, loss in compiled] == pytest.approx([loss for _, loss in fp32], rel=1e-4)
    final = AutoModelForCausalLM.from_pretrained(result.final_dir)
    assert {name for name, _ in final.named_parameters()} == {
        name for name, _ in compiled_models[0].named_parameters()
    }


class InfiniteGradient(torch.autograd.Function):
    """Identity forward (a finite loss), non-finite gradients backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_non_finite_steps_are_skipped_and_a_run_of_them_stops_training(
    clm_data, tmp_path, monkeypatch, caplog
):
    """Step 3 gets a NaN loss and step 4 a finite loss with non-finite gradients: both skipped,
    training goes on. From step 7 every loss is NaN: after 3 in a row the run stops, and the
    checkpoint of step 5 is intact."""
    real = pretrain_module.token_loss_sum
    calls = {"train": 0}

    def poisoned(logits, labels):
        loss = real(logits, labels)
        if torch.is_grad_enabled():
            calls["train"] += 1
            step = (calls["train"] + 1) // 2  # two micro-batches per step
            if step == 3 or step >= 7:
                return loss * float("nan")
            if step == 4:
                return InfiniteGradient.apply(loss)
        return loss

    monkeypatch.setattr(pretrain_module, "token_loss_sum", poisoned)
    recipe_path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=clm_data,
        model="preset: llama-tiny",
        pretrain="""
            steps: 20
            global_batch_size: 16
            micro_batch_size: 8
            precision: fp32
            log_every: 1
            eval_every: 0
            save_every: 5
            max_nonfinite_steps: 3
        """,
    )
    run_dir = tmp_path / "out" / "pretrain"
    with pytest.raises(TrainingError) as err:
        run_pretrain(load_recipe(recipe_path))
    assert str(err.value) == (
        "pretrain stopped: 3 steps in a row (7-9) had a non-finite loss or gradient "
        "(pretrain.max_nonfinite_steps is 3); the last good checkpoint "
        f"{run_dir / 'checkpoints' / 'step-5'} is intact. Lower pretrain.lr, keep grad_clip on "
        "or use bf16 rather than fp16, then continue with --resume"
    )
    assert "step 3: the loss is nan; the step was skipped" in caplog.text
    assert re.search(r"step 4: the gradient norm is (nan|inf); the step was skipped", caplog.text)
    records = {r["step"]: r for r in read_records(run_dir)}
    assert records[3]["loss"] is None and records[3]["skipped"] is True
    assert records[4]["loss"] is not None and records[4]["skipped"] is True
    assert records[4]["grad_norm"] is None and records[4]["skipped_steps"] == 2
    assert "skipped" not in records[5] and records[5]["skipped_steps"] == 2
    assert records[6]["loss"] < records[2]["loss"]  # the weights stayed finite and kept learning
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-5"]
    assert not (run_dir / "final").exists()


def test_run_killed_with_sigkill_resumes_to_the_same_metrics(clm_data, tmp_path):
    """Uninterrupted vs SIGKILLed after its step-20 checkpoint and resumed: identical metrics."""
    pretrain = """
        steps: 36
        global_batch_size: 16
        micro_batch_size: 8
        precision: fp32
        log_every: 1
        eval_every: 12
        eval_batches: 2
        save_every: 10
    """

    def recipe(name):
        return write_pretrain_recipe(
            tmp_path / f"{name}.yaml",
            output_dir=tmp_path / name,
            data=clm_data,
            model="preset: mixtral-tiny",
            pretrain=pretrain,
        )

    def command(path, *extra):
        return [sys.executable, "-m", "llmtrain", "pretrain", str(path), *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(command(recipe("whole")), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    # saved every 10 steps and at the end, the last 3 kept
    checkpoints = tmp_path / "whole" / "pretrain" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-20", "step-30", "step-36"]
    killed_dir = tmp_path / "killed" / "pretrain"
    process = subprocess.Popen(
        command(recipe("killed")), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not (killed_dir / "checkpoints" / "step-20").is_dir():
        assert process.poll() is None and time.time() < deadline, "no step-20 checkpoint"
        time.sleep(0.02)
    time.sleep(0.15)  # a few steps past the checkpoint, mid-step
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "final").exists()
    last_logged = read_records(killed_dir)[-1]["step"]
    resumed = subprocess.run(
        command(tmp_path / "killed.yaml", "--resume"), env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    keys = ("loss", "lr", "grad_norm", "router_aux_loss", "val_loss", "tokens")
    expected = [
        {k: r.get(k) for k in ("step", *keys)}
        for r in read_records(tmp_path / "whole" / "pretrain")
    ]
    got = [{k: r.get(k) for k in ("step", *keys)} for r in read_records(killed_dir)]
    assert last_logged >= 20
    assert got == expected
    whole_final = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "pretrain" / "final")
    resumed_final = AutoModelForCausalLM.from_pretrained(killed_dir / "final")
    for (name, a), (_, b) in zip(
        whole_final.state_dict().items(), resumed_final.state_dict().items()
    ):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------------------------
# Bad input: each refused before training starts (no checkpoint, no metrics)


@pytest.fixture
def bad_recipe(clm_data, tmp_path):
    def make(model="preset: llama-tiny", pretrain="", extra=""):
        body = "steps: 5\nglobal_batch_size: 16\nmicro_batch_size: 8\nprecision: fp32\n" + pretrain
        return write_pretrain_recipe(
            tmp_path / "recipe.yaml",
            output_dir=tmp_path / "out",
            data=clm_data,
            model=model,
            pretrain=body,
            extra=extra,
        )

    return make


def refused(recipe_path, error_type, overrides=()):
    with pytest.raises(error_type) as err:
        run_pretrain(load_recipe(recipe_path, overrides))
    assert not (recipe_path.parent / "out" / "pretrain" / "checkpoints").exists()
    return str(err.value)


def test_tokenizer_larger_than_the_model_vocabulary(bad_recipe, tiny_tokenizer_dir):
    message = refused(bad_recipe(model="preset: llama-tiny\nvocab_size: 320"), StageInputError)
    assert message == (
        f"the tokenizer ({tiny_tokenizer_dir}) has 512 tokens but model.vocab_size is 320; raise "
        "model.vocab_size to at least 512 or remove it (the vocabulary then comes from the "
        "tokenizer, padded to a multiple of 64)"
    )


def test_data_built_with_another_tokenizer(
    bad_recipe, clm_data, mlm_tokenizer_dir, tiny_tokenizer_dir
):
    message = refused(bad_recipe(pretrain=f"tokenizer: {mlm_tokenizer_dir}\n"), StageInputError)
    manifest = json.loads((clm_data / "manifest.json").read_text())
    from llmtrain.tokenizer.fingerprint import fingerprint_dir

    assert message == (
        f"the data build at {clm_data} was tokenized with another tokenizer than "
        f"{mlm_tokenizer_dir} (fingerprint {manifest['tokenizer']['fingerprint'][:12]} in its "
        f"manifest, {fingerprint_dir(mlm_tokenizer_dir)[:12]} here); rebuild the data with this "
        f"tokenizer (`llmtrain data`) or set pretrain.tokenizer to the one it was built with "
        f"({tiny_tokenizer_dir})"
    )


def test_seq_len_above_the_model_positions(bad_recipe, clm_data):
    message = refused(
        bad_recipe(model="preset: gpt-tiny\nmax_position_embeddings: 32"), StageInputError
    )
    assert message == (
        f"pretrain: seq_len {SEQ_LEN} (sequences of {SEQ_LEN} tokens) is above the model's 32 "
        f"positions; raise model.max_position_embeddings to at least {SEQ_LEN} or train on "
        f"shorter sequences (pretrain.seq_len, or rebuild {clm_data} with a shorter data.seq_len)"
    )


def test_batch_sizes_that_do_not_divide_over_the_world_size(bad_recipe, monkeypatch):
    assert grad_accum_steps(64, 8, 4) == 2
    # a launch of 3 processes (as torchrun's environment says): refused before any process
    # group, model or file is made
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    message = refused(bad_recipe(), RecipeError)
    assert message == (
        "pretrain.global_batch_size 16 does not divide over 3 processes x micro_batch_size 8 "
        "(24 sequences per micro-step); make global_batch_size a multiple of 24 or change "
        "micro_batch_size"
    )
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(RecipeError) as err:
        load_recipe(bad_recipe(), ["pretrain.micro_batch_size=6"])
    assert str(err.value).endswith(
        "pretrain: global_batch_size 16 is not a multiple of micro_batch_size 6"
    )


def test_dataset_smaller_than_one_global_batch(bad_recipe, clm_data):
    recipe_path = bad_recipe()
    with pytest.raises(StageInputError) as err:
        run_pretrain(load_recipe(recipe_path, ["pretrain.global_batch_size=1000000"]))
    message = str(err.value)
    windows = int(message.split(" holds ")[1].split(" ")[0])
    assert 1000 < windows < 1000000
    assert message == (
        f"the data build at {clm_data} holds {windows} training sequences of {SEQ_LEN + 1} tokens, "
        "fewer than one global batch (1000000); add data, or lower pretrain.global_batch_size or "
        "seq_len"
    )


def test_deepspeed_json_that_contradicts_the_recipe(bad_recipe, tmp_path):
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "bf16": {"enabled": True}}))
    message = refused(bad_recipe(pretrain=f"deepspeed: {{config: {ds_json}}}\n"), RecipeError)
    assert message == (
        f"pretrain.deepspeed.config ({ds_json}) contradicts the recipe: "
        "train_micro_batch_size_per_gpu is 4 but pretrain.micro_batch_size gives 8; "
        "bf16.enabled is True but pretrain.precision makes it False. "
        "Make them agree, or remove the key from one of them."
    )


def test_deepspeed_json_with_an_optimizer_or_scheduler_of_its_own(bad_recipe, tmp_path):
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(
        json.dumps(
            {
                "optimizer": {"type": "Adam", "params": {"lr": 1e-3}},
                "scheduler": {"type": "WarmupLR"},
                "zero_optimization": {"stage": 2},
            }
        )
    )
    message = refused(bad_recipe(pretrain=f"deepspeed: {{config: {ds_json}}}\n"), RecipeError)
    assert message == (
        f"pretrain.deepspeed.config ({ds_json}) sets optimizer and scheduler, which pretraining "
        "builds itself (AdamW from pretrain.lr, beta1, beta2, eps and weight_decay; the schedule "
        "from pretrain.schedule, warmup_steps, min_lr_ratio and decay_steps); remove optimizer "
        "and scheduler from the JSON and set them in the recipe"
    )


def test_wsd_schedule_whose_decay_would_start_during_warmup(bad_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(bad_recipe(pretrain="schedule: wsd\nwarmup_steps: 3\ndecay_steps: 3\n"))
    assert str(err.value).endswith(
        "pretrain: schedule wsd: warmup_steps 3 + decay_steps 3 exceed steps 5 (the decay would "
        "start during warmup); lower one of them"
    )


def test_objective_that_does_not_fit_the_model(bad_recipe):
    message = refused(bad_recipe(pretrain="objective: mlm\n"), RecipeError)
    assert message == (
        "pretrain.objective mlm does not fit llama-tiny (a llama model trains with clm); use an "
        "encoder (bert, modernbert) preset, or objective clm"
    )


def test_speed_options_that_cannot_run_here(bad_recipe):
    assert refused(bad_recipe(pretrain="liger: true\n"), StageInputError).startswith(
        "pretrain.liger: "
    )
    message = refused(
        bad_recipe(model="preset: llama-tiny\nattn_implementation: flash_attention_2"),
        StageInputError,
    )
    assert message.startswith("model.attn_implementation: flash_attention_2 needs ")
    assert refused(bad_recipe(), StageInputError, ["pretrain.precision=fp16"]) == (
        "pretrain.precision fp16 needs a CUDA GPU (loss scaling of half-precision gradients); "
        "use bf16 or fp32 on this machine"
    )


def test_resume_refuses_another_world_size_and_an_existing_run(bad_recipe, tmp_path):
    recipe_path = bad_recipe(pretrain="save_every: 5\neval_every: 0\n")
    run_pretrain(load_recipe(recipe_path))
    checkpoint = tmp_path / "out" / "pretrain" / "checkpoints" / "step-5"
    with pytest.raises(RunDirError) as err:
        run_pretrain(load_recipe(recipe_path))
    assert "already holds a run (checkpoints up to step 5); pass --resume" in str(err.value)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["world_size"] = 4
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(RunDirError) as err:
        run_pretrain(load_recipe(recipe_path), resume=True)
    assert str(err.value) == (
        f"{checkpoint} was written by 4 processes and this launch has 1; resume with 4 "
        "processes (resharding a checkpoint to another world size is not supported)"
    )
    state.update(world_size=1, zero_stage=3)
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(RunDirError) as err:
        run_pretrain(load_recipe(recipe_path), resume=True)
    assert str(err.value) == (
        f"{checkpoint} was written under DeepSpeed ZeRO-3 and this run uses DDP (no ZeRO); "
        "resume with pretrain.deepspeed.zero_stage: 3 (converting a checkpoint to another ZeRO "
        "stage is not supported)"
    )


def test_pretrain_command_reports_a_missing_data_build(tmp_path):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        f"name: x\noutput_dir: {tmp_path / 'out'}\nmodel: {{preset: llama-tiny}}\npretrain: {{steps: 3}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "llmtrain", "pretrain", str(recipe_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f"llmtrain: error: pretrain: no data build at {tmp_path / 'out' / 'data'} (manifest.json "
        "missing); run `llmtrain data` with this recipe first, or set pretrain.data to a data "
        "build directory"
    )


def test_slurm_script_starts_the_multinode_launcher_on_every_node(tmp_path):
    """scripts/launch/slurm_pretrain.sbatch under a stand-in Slurm (srun runs its command,
    scontrol lists two nodes) and a stand-in Python that prints the torchrun command line: the
    first node hosts the rendezvous, the job id names it, one process per GPU of the node."""
    env = slurm_stand_ins(tmp_path / "bin", ["node01", "node02"], python='echo "$@"')
    env.update(
        PYTHON=str(tmp_path / "bin" / "python"), SLURM_JOB_NUM_NODES="2", SLURM_GPUS_ON_NODE="8"
    )
    script = REPO / "scripts" / "launch" / "slurm_pretrain.sbatch"
    result = subprocess.run(
        ["bash", str(script), "recipe.yaml", "--resume"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.split()
        == (
            "-m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d "
            "--rdzv-endpoint node01:29500 --rdzv-id 4242 --max-restarts 0 "
            "-m llmtrain pretrain recipe.yaml --resume"
        ).split()
    )
    usage = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: sbatch ")
