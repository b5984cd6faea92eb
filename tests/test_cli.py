import json
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from llmtrain.cli import main
from tests.conftest import REPO, run_cli


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("llmtrain ")
    result = run_cli("--help")
    assert result.returncode == 0 and "config" in result.stdout


def test_help_and_config_do_not_import_the_training_stack(tmp_path):
    code = (
        "import sys, contextlib, io\n"
        "from llmtrain.cli import main\n"
        "for argv in (['config', 'show', sys.argv[1]], ['config', 'schema']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "heavy = [m for m in ('torch', 'transformers', 'deepspeed', 'trl', 'datasets') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    recipe = REPO / "recipes" / "tiny.yaml"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-c", code, str(recipe)], capture_output=True, text=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # CPU seconds of the child, not wall time: a loaded machine must not fail this test
    cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu_seconds < 2.0


def test_config_show_prints_resolved_recipe():
    result = run_cli("config", "show", str(REPO / "recipes" / "tiny.yaml"), "--set", "seed=99")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["seed"] == 99
    assert shown["output_dir"] == str(REPO / "runs" / "tiny-demo")


def test_config_check_and_schema(capsys, tmp_path):
    """The demo recipe checks once its corpus exists (scripts/collect_corpus.py writes it; here
    empty stand-ins at the same relative paths), and names every missing input before."""
    recipe = tmp_path / "recipes" / "tiny.yaml"
    recipe.parent.mkdir()
    shutil.copy(REPO / "recipes" / "tiny.yaml", recipe)
    result = run_cli("config", "check", str(recipe))
    assert result.returncode == 2
    missing = sorted(set(re.findall(r"file not found: (\S+)", result.stderr)))
    assert missing and all(Path(m).parent == tmp_path / "runs" / "corpus" for m in missing)
    for path in missing:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    main(["config", "check", str(recipe)])
    assert capsys.readouterr().out.startswith("ok: ")
    main(["config", "schema"])
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "Recipe"
    assert "output_dir" in schema["required"]


def test_user_error_exits_2_without_traceback(write_recipe):
    path = write_recipe("name: t\noutput_dir: out\nseed: fast\n")
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"llmtrain: error: {path}: seed: expected an integer, got 'fast'"
    )
    assert "Traceback" not in result.stderr


def test_debug_shows_traceback(write_recipe):
    path = write_recipe("name: t\noutput_dir: out\nseed: fast\n")
    result = run_cli("--debug", "config", "check", str(path))
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = run_cli("config", "check", str(path), "--debug")
    assert "Traceback" in result.stderr


def test_unknown_command_exits_2():
    result = run_cli("pretrian")
    assert result.returncode == 2 and "invalid choice" in result.stderr
