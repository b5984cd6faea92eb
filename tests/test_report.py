import json

import pytest

from llmtrain.errors import StageInputError
from llmtrain.report import build_report
from llmtrain.rundir import MetricsLog
from tests.conftest import run_cli


def test_report_shows_each_stage_that_ran(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "report.json").write_text(
        json.dumps({"vocab_size": 8192, "heldout": {"bytes_per_token": 3.9}})
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "report.md").write_text(
        "# Data\n\n| source | tokens |\n|---|---|\n| web | 10 |\n"
    )
    log = MetricsLog(tmp_path / "pretrain" / "metrics.jsonl")
    for step in range(1, 11):
        log.log(step, {"loss": 5.0 / step, "lr": 1e-3, "note": "text is not plotted"})
    log.log(10, {"val_loss": 1.2})
    (tmp_path / "pretrain" / "final").mkdir()
    ppo = MetricsLog(tmp_path / "ppo" / "metrics.jsonl")
    for step in range(1, 4):
        ppo.log(step, {"approx_kl": 0.0, "reward/mean": 0.1 * step, "kl": 0.01 * step})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.md").write_text("| model | acc |\n|---|---|\n| sft | 0.5 |\n")

    report = build_report(tmp_path)
    text = report.read_text()
    for heading in ("## Tokenizer", "## Data mixture", "## pretrain", "## ppo", "## Evaluation"):
        assert heading in text
    assert "## sft" not in text  # never ran
    assert "| vocab_size | 8192 |" in text
    assert "| loss | 5 | 0.5 | 0.5 | 5 |" in text
    assert "| reward/mean | 0.1 | 0.3 |" in text
    # what PPO logs that matters most comes first, whatever the alphabet says
    ppo_section = text.split("## ppo")[1].split("\n## ")[0]
    rows = [line.split(" | ")[0] for line in ppo_section.splitlines() if line.startswith("| ")]
    assert rows == ["| metric", "| reward/mean", "| kl", "| approx_kl"]
    assert "### Data" in text
    assert "no final model yet" in text  # ppo has no final/
    for stage in ("pretrain", "ppo"):
        png = tmp_path / "report" / f"{stage}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{stage} curves]({stage}.png)" in text


def test_report_of_nothing_is_an_error(tmp_path):
    with pytest.raises(StageInputError, match="nothing to report"):
        build_report(tmp_path)
    result = run_cli("report", str(tmp_path / "missing"))
    assert result.returncode == 2 and "does not exist" in result.stderr
