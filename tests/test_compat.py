"""Private members of dependencies (llmtrain/compat.py) and the check of installed versions."""

import importlib
import inspect
import logging
import re
from importlib import metadata
from pathlib import Path

import pytest

from llmtrain import compat
from llmtrain.compat import PRIVATE_MEMBERS, PrivateMember

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("llmtrain", "train", "data_pipeline", "tokenizer")


def _resolve(dotted: str):
    """A module or a class in a module, by its dotted path."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _parameters(function) -> tuple[str, ...]:
    names = list(inspect.signature(function).parameters)
    return tuple(names[1:] if names[:1] == ["self"] else names)


def _defines(owner, name: str) -> bool:
    """The owner has the member, or (an instance attribute) its __init__ assigns it."""
    if hasattr(owner, name):
        return True
    init = getattr(owner, "__init__", None)
    try:
        source = inspect.getsource(init)
    except (OSError, TypeError):
        return False
    return re.search(rf"self\.{re.escape(name)}\s*[:=]", source) is not None


@pytest.mark.parametrize("member", PRIVATE_MEMBERS, ids=lambda m: m.label)
def test_private_member_is_as_we_use_it(member: PrivateMember):
    try:
        version = metadata.version(member.distribution)
    except metadata.PackageNotFoundError:
        if member.optional:
            pytest.skip(f"{member.distribution} is not installed")
        raise
    where = f"in {member.distribution} {version}; see llmtrain/compat.py ({member.why})"
    try:
        owner = _resolve(member.owner)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{member.owner} is gone {where}: {exc}")
    assert _defines(owner, member.name), f"{member.label} is gone {where}"
    if member.parameters is not None:
        found = _parameters(getattr(owner, member.name))
        assert found == member.parameters, (
            f"{member.label} changed signature {where}: parameters {found}, we use "
            f"{member.parameters}"
        )


def _our_trainer_classes() -> list[type]:
    from llmtrain.train.align.dpo import dpo_trainer_class
    from llmtrain.train.align.grpo import grpo_trainer_class
    from llmtrain.train.align.kto import kto_trainer_class
    from llmtrain.train.align.online_dpo import online_dpo_trainer_class
    from llmtrain.train.align.ref_free import reference_free_trainer_class
    from llmtrain.train.align.rm import reward_trainer_class
    from llmtrain.train.align.sft import sft_trainer_class

    return [
        dpo_trainer_class(),
        grpo_trainer_class(),
        reward_trainer_class(),
        sft_trainer_class(),
        kto_trainer_class(),
        reference_free_trainer_class(),
        grpo_trainer_class(rloo=True),
        online_dpo_trainer_class(),
    ]


def test_every_private_hook_we_override_is_listed():
    listed = {m.name for m in PRIVATE_MEMBERS if m.use == "override"}
    overridden = set()
    for trainer_class in _our_trainer_classes():
        ours = [c for c in trainer_class.__mro__ if c.__module__.startswith("llmtrain")]
        theirs = [c for c in trainer_class.__mro__ if c not in ours]
        for cls in ours:
            for name in vars(cls):
                if name.startswith("_") and not name.startswith("__"):
                    if any(name in vars(base) for base in theirs):
                        overridden.add((trainer_class.__name__, name))
    unlisted = {(cls, name) for cls, name in overridden if name not in listed}
    assert not unlisted, f"private hooks overridden but not in compat.PRIVATE_MEMBERS: {unlisted}"
    assert {name for _, name in overridden} == listed


def _source_files() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))]


def test_private_members_are_touched_only_through_compat():
    """Outside llmtrain/compat.py no listed member is read, called or imported; an overridden
    hook appears only as its `def` and the `super()` call inside it."""
    overrides = {m.name for m in PRIVATE_MEMBERS if m.use == "override"}
    others = {m.name for m in PRIVATE_MEMBERS} - overrides
    found = []
    for path in _source_files():
        if path == REPO / "llmtrain" / "compat.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            touched = [n for n in others if re.search(rf"\.{n}\b|\bimport\b.*\b{n}\b", code)]
            touched += [
                n
                for n in overrides
                if re.search(rf"\.{n}\(", code) and not re.search(rf"super\(\)\.{n}\(", code)
            ]
            if touched:
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "private members used outside llmtrain/compat.py:\n" + "\n".join(found)


def test_no_other_private_member_of_a_dependency_is_used():
    """`x._name` where `_name` is not ours (defined or assigned in our source) must be listed
    in compat.PRIVATE_MEMBERS (and used through it)."""
    files = {path: path.read_text() for path in _source_files()}
    defined = r"(?:def|class)\s+(_\w+)|\.(_\w+)\s*(?::[^=]*)?=(?!=)|^\s*(_\w+)\s*(?::[^=]*)?="
    ours = {
        name
        for text in files.values()
        for groups in re.findall(defined, text, re.MULTILINE)
        for name in groups
        if name
    }
    listed = {m.name for m in PRIVATE_MEMBERS}
    found = []
    for path, text in files.items():
        if path == REPO / "llmtrain" / "compat.py":
            continue
        for number, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            for owner, name in re.findall(r"(\w+)\.(_[A-Za-z]\w*)", code):
                if name.startswith("__") or name in ours or name in listed:
                    continue
                if owner == "argparse":  # argparse._SubParsersAction: a type annotation only
                    continue
                found.append(f"{path.relative_to(REPO)}:{number}: {owner}.{name}")
        imports = re.findall(r"^\s*from\s+([\w.]+)\s+import\s+(\([^)]*\)|[^\n]*)", text, re.M)
        for module, names in imports:
            if module.split(".")[0] in ("llmtrain", "__future__"):
                continue
            for name in re.findall(r"\b(_[A-Za-z]\w*)", names):
                found.append(f"{path.relative_to(REPO)}: from {module} import {name}")
    assert not found, "private members of dependencies outside llmtrain/compat.py:\n" + "\n".join(
        found
    )


# ---------------------------------------------------------------------------------------------
# Installed versions against the tested ranges


REQUIRES = [
    "torch<2.14,>=2.13.0",
    "trl<1.17,>=1.16.0",
    "numpy",
    'gguf<0.20,>=0.19.0; extra == "export"',
]


@pytest.fixture
def fresh_check(monkeypatch):
    monkeypatch.setattr(compat, "_warned", False)
    monkeypatch.setattr(compat.metadata, "requires", lambda name: list(REQUIRES))


def test_tested_ranges_come_from_the_installed_metadata(fresh_check):
    # extras and unbounded requirements are not checked
    assert compat.tested_ranges() == {"torch": "<2.14,>=2.13.0", "trl": "<1.17,>=1.16.0"}


def test_a_version_outside_its_range_warns_once(fresh_check, monkeypatch, caplog):
    versions = {"torch": "2.13.0+cpu", "trl": "1.17.0"}
    monkeypatch.setattr(compat.metadata, "version", lambda name: versions[name])
    with caplog.at_level(logging.WARNING, logger="llmtrain.compat"):
        assert compat.check_versions() == [
            "trl 1.17.0 is installed; llmtrain is tested with <1.17,>=1.16.0"
        ]
        assert compat.check_versions() == []  # once per process
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert warnings[0].startswith("trl 1.17.0 is installed; llmtrain is tested with <1.17,>=1.16.0")


def test_versions_inside_their_ranges_and_missing_packages_pass(fresh_check, monkeypatch):
    def version(name):
        if name == "trl":
            raise metadata.PackageNotFoundError(name)
        return "2.13.1"

    monkeypatch.setattr(compat.metadata, "version", version)
    assert compat.outside_tested_ranges() == []


def test_the_cli_checks_versions_before_any_command(monkeypatch, capsys):
    from llmtrain import cli

    calls = []
    monkeypatch.setattr(compat, "check_versions", lambda: calls.append("checked") or [])
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == []  # argparse exits before: --help stays instant
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "/nonexistent/recipe.yaml"])
    assert exit_info.value.code == 2
    assert calls == ["checked"]
