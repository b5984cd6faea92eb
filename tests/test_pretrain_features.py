"""Pretraining switches of issue 17: document masking, Muon, float8 (refused without a GPU)."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
)

from llmtrain.data_pipeline.loader import PackedWindows, TrainBatches, validation_batches
from llmtrain.data_pipeline.manifest import shards_of
from llmtrain.data_pipeline.shards import read_offsets
from llmtrain.errors import RecipeError, StageInputError
from llmtrain.recipe import load_recipe
from llmtrain.train.float8 import float8_refusal
from llmtrain.train.muon import build_muon, hidden_matrix_names
from llmtrain.train.objectives import CausalLM, MaskedLM
from llmtrain.train.optim import param_groups
from llmtrain.train.packing import DocumentMasking
from llmtrain.train.pretrain import run_pretrain
from tests.pretrain_support import (
    add_mlm_and_span_tokens,
    build_data,
    curve,
    read_records,
    write_pretrain_recipe,
)

SEQ_LEN = 64


@pytest.fixture(scope="module")
def clm_data(tiny_tokenizer_dir, tmp_path_factory):
    return build_data(tmp_path_factory.mktemp("clm-data"), tiny_tokenizer_dir, SEQ_LEN)


# ---------------------------------------------------------------------------- document masking


def test_document_positions_restart_at_the_idx_offsets_and_leave_the_batches_unchanged(clm_data):
    plain = TrainBatches(clm_data, seq_len=SEQ_LEN, micro_batch_size=4, seed=3)
    packed = TrainBatches(
        clm_data, seq_len=SEQ_LEN, micro_batch_size=4, seed=3, document_positions=True
    )
    # the document starts of the training stream, from the shards' .idx files
    starts, base = set(), 0
    for shard in shards_of(plain.manifest, "train"):
        starts.update(int(offset) + base for offset in read_offsets(clm_data / shard["index"]))
        base += shard["tokens"]
    stream = plain._streams[0]
    restarts = 0
    for _ in range(5):
        tokens = next(plain)
        batch = next(packed)
        assert isinstance(batch, PackedWindows)
        assert torch.equal(batch.tokens, tokens)
        assert batch.positions.shape == tokens.shape
    assert packed.state_dict() == plain.state_dict()  # the data position is the same
    # every window of the stream: position 0 exactly at document starts and the window's start
    for k in range(stream.windows):
        positions = torch.empty(SEQ_LEN + 1, dtype=torch.int64).numpy()
        packed._streams[0].positions(k, positions)
        for i, position in enumerate(positions.tolist()):
            at_start = i == 0 or k * SEQ_LEN + i in starts
            assert position == (0 if at_start else positions[i - 1] + 1)
            restarts += i > 0 and at_start
    # each document start inside the windows' span is met once (window k holds tokens
    # [k * SEQ_LEN, (k + 1) * SEQ_LEN]: a start on a multiple of SEQ_LEN is the last token of
    # the previous window and counted there)
    assert restarts == sum(0 < s <= stream.windows * SEQ_LEN for s in starts) > 20
    # a resumed loader continues with the same windows and positions
    state = packed.state_dict()
    expected = next(packed)
    resumed = TrainBatches(
        clm_data, seq_len=SEQ_LEN, micro_batch_size=4, seed=3, document_positions=True
    )
    resumed.load_state_dict(state)
    got = next(resumed)
    assert torch.equal(got.tokens, expected.tokens)
    assert torch.equal(got.positions, expected.positions)
    validation = next(
        iter(
            validation_batches(
                clm_data, seq_len=SEQ_LEN, micro_batch_size=2, document_positions=True
            )
        )
    )
    assert validation.positions[:, 0].tolist() == [0, 0]


def tiny_llama(attn: str) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        use_cache=False,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2(attn: str) -> torch.nn.Module:
    config = GPT2Config(
        vocab_size=97,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        use_cache=False,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = attn
    return GPT2LMHeadModel(config)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2])
def test_a_document_packed_after_another_has_its_logits_alone(make_model, attn):
    torch.manual_seed(0)
    model = make_model(attn).train()  # as in training: dropout is 0 in these configs
    first = torch.randint(3, 97, (11,))
    second = torch.randint(3, 97, (17,))
    tokens = torch.cat([first, second, torch.tensor([5])]).unsqueeze(0)  # + the last label
    positions = torch.cat([torch.arange(11), torch.arange(18)]).unsqueeze(0)
    inputs = DocumentMasking(CausalLM(), model.config).prepare(
        PackedWindows(tokens, positions), None
    )
    assert inputs.inputs["position_ids"].tolist() == [list(range(11)) + list(range(17))]
    with torch.no_grad():
        packed = model(**inputs.inputs).logits[0]
        alone_first = model(input_ids=first.unsqueeze(0)).logits[0]
        alone_second = model(input_ids=second.unsqueeze(0)).logits[0]
        unmasked = model(input_ids=inputs.inputs["input_ids"]).logits[0]
    torch.testing.assert_close(packed[:11], alone_first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[11:], alone_second, rtol=1e-5, atol=1e-5)
    # without document masking the second document sees the first: the logits differ
    assert (unmasked[11:] - alone_second).abs().max() > 1e-3


TRAIN = """
    steps: 40
    global_batch_size: 16
    micro_batch_size: 8
    precision: fp32
    lr: 3.0e-3
    warmup_steps: 4
    log_every: 10
    eval_every: 20
    eval_batches: 4
    save_every: 20
"""


def test_pretraining_with_document_masking_learns_and_resumes_exactly(clm_data, tmp_path):
    def recipe(name: str):
        return write_pretrain_recipe(
            tmp_path / f"{name}.yaml",
            output_dir=tmp_path / name,
            data=clm_data,
            model="preset: llama-tiny",
            pretrain=TRAIN + "    schedule: constant\n    document_masking: true\n",
        )

    whole = run_pretrain(load_recipe(recipe("whole")))
    val = curve(read_records(whole.run_dir), "val_loss")
    assert [step for step, _ in val] == [0, 20, 40]
    assert val[-1][1] < val[0][1] - 0.8, val
    # a run of 20 steps resumed to 40 takes steps 21-40 exactly as the uninterrupted run
    path = recipe("split")
    run_pretrain(load_recipe(path, ["pretrain.steps=20"]))
    resumed = run_pretrain(load_recipe(path), resume=True)
    losses = [r for r in curve(read_records(whole.run_dir), "loss", "val_loss") if r[0] > 20]
    again = [r for r in curve(read_records(resumed.run_dir), "loss", "val_loss") if r[0] > 20]
    assert again == losses and len(losses) == 2


def tiny_bert(attn: str) -> torch.nn.Module:
    config = BertConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = attn
    return BertForMaskedLM(config)


def tiny_modernbert(attn: str) -> torch.nn.Module:
    config = ModernBertConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,  # layers 0 and 3k global, the others sliding-window
        num_attention_heads=4,
        max_position_embeddings=64,
        local_attention=8,  # a window shorter than the documents
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        cls_token_id=2,
        sep_token_id=1,
    )
    config._attn_implementation = attn
    return ModernBertForMaskedLM(config)


class MaskTokenizer:
    """What MaskedLM reads of a tokenizer: a mask id and the special ids."""

    mask_token_id = 3
    all_special_ids = [0, 1, 2, 3]
    name_or_path = "test"

    def __len__(self) -> int:
        return 97


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("make_model", [tiny_bert, tiny_modernbert])
def test_a_masked_document_packed_after_another_has_its_logits_alone(make_model, attn):
    """mlm: the block-diagonal bidirectional mask and restarting positions make a packed
    document's logits (at masked and unmasked positions) those it has alone."""
    torch.manual_seed(0)
    model = make_model(attn).eval()
    first = torch.randint(4, 97, (11,))
    second = torch.randint(4, 97, (17,))
    tokens = torch.cat([first, second, torch.tensor([5])]).unsqueeze(0)
    positions = torch.cat([torch.arange(11), torch.arange(18)]).unsqueeze(0)
    objective = DocumentMasking(MaskedLM(MaskTokenizer(), probability=0.3), model.config)
    inputs = objective.prepare(PackedWindows(tokens, positions), torch.Generator().manual_seed(1))
    ids = inputs.inputs["input_ids"][0]
    assert (ids == 3).any()  # some positions were masked
    with torch.no_grad():
        packed = model(**inputs.inputs).logits[0]
        alone_first = model(input_ids=ids[:11].unsqueeze(0)).logits[0]
        alone_second = model(input_ids=ids[11:].unsqueeze(0)).logits[0]
        unmasked = model(input_ids=ids.unsqueeze(0)).logits[0]
    torch.testing.assert_close(packed[:11], alone_first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[11:], alone_second, rtol=1e-5, atol=1e-5)
    # without document masking each document sees the other: the logits differ
    assert (unmasked[:11] - alone_first).abs().max() > 1e-4  # 10x the tolerance above


def test_mlm_pretraining_with_document_masking_learns(tiny_tokenizer_dir, tmp_path):
    tokenizer = add_mlm_and_span_tokens(tiny_tokenizer_dir, tmp_path / "tokenizer")
    data = build_data(tmp_path / "data", tokenizer, SEQ_LEN, max_bytes=100_000)
    path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=data,
        model="preset: modernbert-tiny",
        pretrain=TRAIN.replace("steps: 40", "steps: 20") + "    document_masking: true\n",
    )
    result = run_pretrain(load_recipe(path))
    val = curve(read_records(result.run_dir), "val_loss")
    assert [step for step, _ in val] == [0, 20]
    assert val[-1][1] < val[0][1] - 0.5, val


def test_document_masking_is_refused_for_span_corruption(clm_data, tmp_path):
    path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=clm_data,
        model="preset: t5-tiny",
        pretrain="steps: 5\nobjective: span\ndocument_masking: true\n",
    )
    with pytest.raises(RecipeError) as err:
        run_pretrain(load_recipe(path))
    assert str(err.value) == (
        "pretrain.document_masking: not supported for the span objective (T5): its forward "
        "gives the encoder's attention mask to the decoder's cross-attention as well, so one "
        "per-document mask cannot serve both; set document_masking: false"
    )


# ---------------------------------------------------------------------------- Muon


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    names = hidden_matrix_names(model)
    assert names == [
        f"model.layers.{layer}.{proj}.weight"
        for layer in range(2)
        for proj in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    section = load_section(optimizer="muon", muon_lr=0.05, lr=1e-3, weight_decay=0.1)
    optimizer = build_muon(model, param_groups(model, 0.1), section, fused=None)
    muon_params = {id(p) for group in optimizer.muon.param_groups for p in group["params"]}
    params = dict(model.named_parameters())
    assert muon_params == {id(params[name]) for name in names}
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-3, 0.05]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0, 0.1]
    # the untied head is decayed by AdamW; embeddings and norms are not decayed
    assert [id(p) for p in optimizer.adamw.param_groups[0]["params"]] == [id(model.lm_head.weight)]


def load_section(**values):
    from llmtrain.train.config import PretrainSection

    return PretrainSection(steps=10, **values)


def test_pretraining_with_muon_learns_and_resumes_exactly(clm_data, tmp_path):
    def recipe(name: str):
        return write_pretrain_recipe(
            tmp_path / f"{name}.yaml",
            output_dir=tmp_path / name,
            data=clm_data,
            model="preset: llama-tiny",
            pretrain=TRAIN + "    schedule: constant\n    optimizer: muon\n    muon_lr: 0.02\n",
        )

    whole = run_pretrain(load_recipe(recipe("whole")))
    records = read_records(whole.run_dir)
    val = curve(records, "val_loss")
    assert val[-1][1] < val[0][1] - 0.8, val
    assert all(lr == 3.0e-3 for _, lr in curve(records, "lr") if _ > 4)  # AdamW's lr logged
    path = recipe("split")
    run_pretrain(load_recipe(path, ["pretrain.steps=20"]))
    resumed = run_pretrain(load_recipe(path), resume=True)
    losses = [r for r in curve(records, "loss", "grad_norm", "val_loss") if r[0] > 20]
    again = [r for r in curve(read_records(resumed.run_dir), "loss", "grad_norm", "val_loss")]
    assert [r for r in again if r[0] > 20] == losses and len(losses) == 2


def test_muon_is_refused_under_deepspeed(clm_data, tmp_path):
    path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=clm_data,
        model="preset: llama-tiny",
        pretrain="steps: 5\nglobal_batch_size: 16\nmicro_batch_size: 8\nprecision: fp32\n"
        "optimizer: muon\ndeepspeed: {zero_stage: 2}\n",
    )
    with pytest.raises(RecipeError) as err:
        run_pretrain(load_recipe(path))
    assert str(err.value) == (
        "pretrain.optimizer muon does not run under DeepSpeed ZeRO: ZeRO gives the optimizer "
        "flat 1-D partitions of the parameters and Muon orthogonalises whole weight matrices; "
        "remove pretrain.deepspeed (DDP) or use optimizer: adamw"
    )
    assert not (tmp_path / "out" / "pretrain").exists()


# ---------------------------------------------------------------------------- float8


def test_float8_is_refused_on_a_cpu_and_on_older_gpus(clm_data, tmp_path):
    path = write_pretrain_recipe(
        tmp_path / "recipe.yaml",
        output_dir=tmp_path / "out",
        data=clm_data,
        model="preset: llama-tiny",
        pretrain="steps: 5\nglobal_batch_size: 16\nmicro_batch_size: 8\nfloat8: true\n",
    )
    with pytest.raises(StageInputError) as err:
        run_pretrain(load_recipe(path))
    assert str(err.value) == (
        "pretrain.float8: float8 training needs a CUDA GPU with float8 tensor cores (compute "
        "capability 9.0 or newer: H100, H200, B200) and this machine has no CUDA GPU; set "
        "float8: false"
    )
    assert not (tmp_path / "out" / "pretrain").exists()
    assert float8_refusal(cuda=True, capability=(8, 0), precision="bf16") == (
        "pretrain.float8: float8 training needs compute capability 9.0 or newer (H100, H200, "
        "B200); this GPU has 8.0; set float8: false"
    )
    assert float8_refusal(cuda=True, capability=(9, 0), precision="fp32").startswith(
        "pretrain.float8: float8 training runs under bf16 autocast"
    )
    assert float8_refusal(cuda=True, capability=(9, 0), precision="bf16") is None


def test_plan_says_what_float8_changes_or_why_it_is_refused():
    from llmtrain.recipe import validate_recipe
    from llmtrain.train.plan import format_plan, make_plan

    recipe = validate_recipe(
        {
            "name": "p",
            "output_dir": "out",
            "model": {"preset": "llama-tiny", "vocab_size": 576},
            "pretrain": {"steps": 10, "float8": True},
        }
    )
    on_h100 = format_plan(make_plan(recipe, gpu="H100"))
    assert "\nfloat8      block Linear matmuls in float8 (torchao, tensorwise scales)" in on_h100
    on_a100 = format_plan(make_plan(recipe, gpu="A100"))
    assert "\nfloat8      refused on A100: float8 training needs compute capability 9.0+" in (
        on_a100
    )
    without = validate_recipe(
        {
            "name": "p",
            "output_dir": "out",
            "model": {"preset": "llama-tiny", "vocab_size": 576},
            "pretrain": {"steps": 10},
        }
    )
    assert "float8" not in format_plan(make_plan(without, gpu="H100"))


def test_plan_counts_muon_parameters_and_refuses_it_under_zero():
    from llmtrain.recipe import validate_recipe
    from llmtrain.train.plan import format_plan, make_plan

    def plan(**pretrain):
        recipe = validate_recipe(
            {
                "name": "p",
                "output_dir": "out",
                "model": {"preset": "llama-tiny", "vocab_size": 576},
                "pretrain": {"steps": 10, "optimizer": "muon", **pretrain},
            }
        )
        return format_plan(make_plan(recipe, gpu="H100"))

    # llama-tiny: 2 layers of q, o (64 x 64), k, v (64 x 32), gate, up, down (64 x 176)
    per_layer = 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 176
    assert f"\noptimizer   muon on {2 * per_layer:,} hidden-matrix parameters" in plan()
    assert "\noptimizer   muon: refused under DeepSpeed ZeRO-2" in plan(deepspeed={"zero_stage": 2})


@pytest.mark.multiprocess
def test_muon_under_ddp_follows_one_process(clm_data, tmp_path):
    from tests.test_pretrain_distributed import torchrun

    body = TRAIN.replace("steps: 40", "steps: 12") + "    optimizer: muon\n    log_every: 1\n"
    body = body.replace("    log_every: 10\n", "")

    def recipe(name: str):
        return write_pretrain_recipe(
            tmp_path / f"{name}.yaml",
            output_dir=tmp_path / name,
            data=clm_data,
            model="preset: llama-tiny",
            pretrain=body,
        )

    single = run_pretrain(load_recipe(recipe("single")))
    result = torchrun(recipe("ddp"))
    assert "(2 processes x 1 micro-batches of 8), fp32, engine ddp" in result.stderr
    expected = curve(read_records(single.run_dir), "loss", "grad_norm")
    got = curve(read_records(tmp_path / "ddp" / "pretrain"), "loss", "grad_norm")
    assert [row[0] for row in got] == [row[0] for row in expected] == list(range(1, 13))
    # Muon orthogonalises in bfloat16 (torch's implementation): a rounding apart at most
    for row, ref in zip(got, expected, strict=True):
        assert row[1:] == pytest.approx(ref[1:], rel=2e-3), row[0]
