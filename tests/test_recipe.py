import pytest

from llmtrain.distributed import DeepSpeedSection
from llmtrain.errors import RecipeError
from llmtrain.recipe import load_recipe, validate_section
from llmtrain.schema import InputGlob, InputPath, Section, missing_inputs, tag_strings


def test_minimal_recipe_fills_defaults(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe("name: t\noutput_dir: out\n"))
    assert recipe.seed == 1234
    assert recipe.output_dir == tmp_path / "out"
    assert recipe.logging.tensorboard is False
    assert recipe.stage_dir("pretrain") == tmp_path / "out" / "pretrain"


def test_unknown_key_names_path_and_closest_key(write_recipe):
    path = write_recipe("name: t\noutput_dir: out\nlogging:\n  tensorbord: true\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: logging.tensorbord: unknown key; did you mean tensorboard?"


def test_unknown_top_level_key_suggests(write_recipe):
    with pytest.raises(RecipeError, match=r"seeed: unknown key; did you mean seed\?"):
        load_recipe(write_recipe("name: t\noutput_dir: out\nseeed: 3\n"))


def test_unknown_key_without_close_match_lists_valid_keys(write_recipe):
    with pytest.raises(
        RecipeError, match=r"logging.zzz: unknown key; valid keys: tensorboard, wandb"
    ):
        load_recipe(write_recipe("name: t\noutput_dir: out\nlogging: {zzz: 1}\n"))


def test_wrong_type_names_path_expected_and_given(write_recipe):
    with pytest.raises(RecipeError, match=r"seed: expected an integer, got 'fast'$"):
        load_recipe(write_recipe("name: t\noutput_dir: out\nseed: fast\n"))


def test_wrong_type_in_nested_section(write_recipe):
    path = write_recipe("name: t\noutput_dir: out\nlogging: {tensorboard: maybe}\n")
    with pytest.raises(
        RecipeError, match=r"logging.tensorboard: expected true or false, got 'maybe'"
    ):
        load_recipe(path)


def test_literal_error_lists_choices(write_recipe):
    path = write_recipe(
        "name: t\noutput_dir: out\nlogging: {wandb: {project: p, mode: sometimes}}\n"
    )
    with pytest.raises(
        RecipeError, match=r"logging.wandb.mode: expected one of 'online', 'offline'"
    ):
        load_recipe(path)


def test_missing_required_key(write_recipe):
    with pytest.raises(RecipeError, match=r"output_dir: required key is missing"):
        load_recipe(write_recipe("name: t\n"))


def test_several_problems_are_all_listed(write_recipe):
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe("name: t\nseed: x\nbogus: 1\n"))
    message = str(err.value)
    assert "3 problems" in message
    assert "output_dir: required key is missing" in message
    assert "seed: expected an integer" in message
    assert "bogus: unknown key" in message


class _Inputs(Section):
    corpus: InputPath
    patterns: list[InputGlob] = []
    deepspeed: DeepSpeedSection | None = None


def test_missing_input_files_are_listed_with_their_keys(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    section = validate_section(
        _Inputs,
        tag_strings(
            {
                "corpus": "nope.jsonl",
                "patterns": ["*.jsonl", "*.parquet"],
                "deepspeed": {"config": "ds.json"},
            },
            tmp_path,
        ),
    )
    assert missing_inputs(section, "data") == [
        f"data.corpus: file not found: {tmp_path / 'nope.jsonl'}",
        f"data.patterns[1]: no file matches {tmp_path / '*.parquet'}",
        f"data.deepspeed.config: file not found: {tmp_path / 'ds.json'}",
    ]
    (tmp_path / "nope.jsonl").write_text("{}\n")
    (tmp_path / "b.parquet").write_text("")
    (tmp_path / "ds.json").write_text("{}")
    assert missing_inputs(section) == []


def test_relative_paths_resolve_against_the_recipe_folder(write_recipe, tmp_path):
    (tmp_path / "deep" / "ds.json").parent.mkdir(parents=True)
    (tmp_path / "deep" / "ds.json").write_text("{}")
    path = write_recipe("name: t\noutput_dir: ../out\n", name="deep/recipe.yaml")
    recipe = load_recipe(path)
    assert recipe.output_dir == tmp_path / "out"
    section = validate_section(
        DeepSpeedSection, tag_strings({"config": "ds.json"}, tmp_path / "deep")
    )
    assert section.config == tmp_path / "deep" / "ds.json"


def test_set_overrides_nested_keys_with_yaml_typing(write_recipe):
    path = write_recipe("name: t\noutput_dir: out\n")
    recipe = load_recipe(
        path,
        [
            "seed=7",
            "logging.tensorboard=true",
            "logging.wandb.project=demo",
            "logging.wandb.tags=[a, b]",
        ],
    )
    assert recipe.seed == 7
    assert recipe.logging.tensorboard is True
    assert recipe.logging.wandb.project == "demo"
    assert recipe.logging.wandb.tags == ["a", "b"]


def test_set_path_value_is_relative_to_cwd(write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    recipe = load_recipe(write_recipe("name: t\noutput_dir: out\n"), ["output_dir=elsewhere"])
    assert recipe.output_dir == (tmp_path / ".." / "elsewhere").resolve()


def test_set_without_equals_is_an_error(write_recipe):
    with pytest.raises(RecipeError, match=r"--set 'seed': expected KEY=VALUE"):
        load_recipe(write_recipe("name: t\noutput_dir: out\n"), ["seed"])


def test_set_into_a_value_is_an_error(write_recipe):
    with pytest.raises(RecipeError, match=r"--set seed.x: seed is a value, not a section"):
        load_recipe(write_recipe("name: t\noutput_dir: out\nseed: 1\n"), ["seed.x=1"])


def test_set_wrong_type_is_reported_like_the_file(write_recipe):
    with pytest.raises(RecipeError, match=r"seed: expected an integer, got 'fast'"):
        load_recipe(write_recipe("name: t\noutput_dir: out\n"), ["seed=fast"])


def test_extends_deep_merges_child_wins_lists_replaced(write_recipe, tmp_path):
    write_recipe(
        """
        name: base
        output_dir: base-out
        seed: 1
        logging:
          tensorboard: true
          wandb: {project: p, tags: [a, b], entity: team}
        """,
        name="bases/base.yaml",
    )
    child = write_recipe(
        """
        extends: bases/base.yaml
        name: child
        logging:
          wandb: {tags: [c]}
        """
    )
    recipe = load_recipe(child)
    assert recipe.name == "child"
    assert recipe.seed == 1
    assert recipe.logging.tensorboard is True
    assert recipe.logging.wandb.project == "p"
    assert recipe.logging.wandb.entity == "team"
    assert recipe.logging.wandb.tags == ["c"]
    # a path from the base resolves against the base's folder, not the child's
    assert recipe.output_dir == tmp_path / "bases" / "base-out"


def test_extends_cycle_and_missing_parent(write_recipe):
    write_recipe("extends: b.yaml\nname: a\n", name="a.yaml")
    b = write_recipe("extends: a.yaml\nname: b\n", name="b.yaml")
    with pytest.raises(RecipeError, match="`extends` forms a cycle"):
        load_recipe(b)
    orphan = write_recipe("extends: nowhere.yaml\nname: c\n", name="c.yaml")
    with pytest.raises(RecipeError, match=r"extends: file not found: .*nowhere.yaml"):
        load_recipe(orphan)


def test_invalid_yaml_names_line(write_recipe):
    path = write_recipe("name: t\noutput_dir: [unclosed\nseed: 1\n")
    with pytest.raises(RecipeError, match=rf"{path}:\d+:\d+: invalid YAML"):
        load_recipe(path)


def test_duplicate_key_is_an_error(write_recipe):
    path = write_recipe("name: t\noutput_dir: out\nseed: 1\nseed: 2\n")
    with pytest.raises(RecipeError, match=rf"{path}:4: key 'seed' appears twice"):
        load_recipe(path)


def test_recipe_file_missing(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")


def test_resolved_recipe_round_trips(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe("name: t\noutput_dir: out\n"), ["seed=5"])
    saved = tmp_path / "saved" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(recipe.to_yaml())
    again = load_recipe(saved)
    assert again.model_dump() == recipe.model_dump()
    assert again.fingerprint() == recipe.fingerprint()


def test_unknown_key_in_a_stage_section_suggests_the_closest(write_recipe):
    path = write_recipe("name: t\noutput_dir: out\npretrain:\n  steps: 10\n  shedule: cosine\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: pretrain.shedule: unknown key; did you mean schedule?"


def test_set_indexes_lists_and_types_numbers(write_recipe, tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    path = write_recipe(
        "name: t\noutput_dir: out\n"
        "tokenizer:\n  sources: [{paths: [a.jsonl]}, {paths: [a.jsonl]}]\n"
    )
    recipe = load_recipe(
        path,
        [
            "tokenizer.sources.1.max_chars=2.5e6",
            "tokenizer.sources.0.text_field=content",
            "tokenizer.vocab_size=1024",
            "tokenizer.special_tokens.additional=[<a>, <b>]",
        ],
    )
    first, second = recipe.tokenizer.sources
    assert second.max_chars == 2.5e6 and first.max_chars is None
    assert first.text_field == "content" and second.text_field == "text"
    assert recipe.tokenizer.vocab_size == 1024
    assert recipe.tokenizer.special_tokens.additional == ["<a>", "<b>"]
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["tokenizer.sources.2.max_chars=1"])
    assert str(err.value) == (
        "--set tokenizer.sources.2.max_chars: tokenizer.sources.2: expected a list index "
        "below 2, got '2'"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pretrain.steps=true", "pretrain.steps: expected an integer, got true"),
        ("pretrain.grad_clip=false", "pretrain.grad_clip: expected a number, got false"),
        ("pretrain.lr=.inf", "pretrain.lr: expected a finite number, got inf"),
        ("pretrain.lr=.nan", "pretrain.lr: expected a finite number, got nan"),
        (
            "tokenizer.vocab_size=1000000000",
            "tokenizer.vocab_size: expected less than or equal to 1048576, got 1000000000",
        ),
    ],
)
def test_booleans_are_not_numbers_and_numbers_are_finite(write_recipe, override, message):
    path = write_recipe(
        "name: t\noutput_dir: out\ntokenizer: {sources: [{paths: [a.txt]}]}\npretrain: {steps: 3}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [override])
    assert str(err.value) == f"{path}: {message}"
    assert load_recipe(path, ["pretrain.compile=true"]).pretrain.compile is True


def test_recursive_alias_and_alias_bomb_are_refused_quickly(write_recipe):
    recursive = write_recipe("name: t\noutput_dir: out\nx: &x\n  y: *x\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(recursive)
    assert str(err.value) == (
        f"{recursive}:3: this anchor is used inside itself (a recursive alias); a recipe must "
        "be a tree, so copy the values instead"
    )
    lines = ["name: t", "output_dir: out", "l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = write_recipe("\n".join(lines) + "\n")  # 10^9 values once expanded
    with pytest.raises(RecipeError, match="expands to more than 100,000 values"):
        load_recipe(bomb)
    # anchors and merge keys within the limit keep working
    merged = write_recipe(
        "name: t\noutput_dir: out\npretrain: &base {steps: 3, lr: 0.001}\n"
        "stages:\n  pretrain_2: {<<: *base, kind: pretrain, steps: 5}\n"
    )
    second = load_recipe(merged).for_stage("pretrain_2").pretrain
    assert (second.steps, second.lr) == (5, 0.001)
