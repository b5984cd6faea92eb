"""The wheel must contain every module of llmtrain/ and the three mapped stage folders."""

import configparser
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

MAPPED = {
    "llmtrain": "llmtrain",
    "tokenizer": "llmtrain/tokenizer",
    "data_pipeline": "llmtrain/data_pipeline",
    "train": "llmtrain/train",
}


def _source_modules() -> set[str]:
    expected = set()
    for folder, installed in MAPPED.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            expected.add(f"{installed}/{path.relative_to(REPO / folder).as_posix()}")
    return expected


def test_every_subpackage_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    for folder, installed in MAPPED.items():
        for init in (REPO / folder).rglob("__init__.py"):
            package = init.parent.relative_to(REPO / folder).as_posix()
            name = installed.replace("/", ".") + (
                "" if package == "." else "." + package.replace("/", ".")
            )
            assert name in listed, f"add {name} to [options] packages in setup.cfg"


@pytest.mark.slow
def test_wheel_contains_every_module(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("llmtrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_modules() - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    assert any(n.endswith("entry_points.txt") for n in names)
