import json

import pytest

from llmtrain.atomic import atomic_path, atomic_write_text
from llmtrain.errors import RunDirError
from llmtrain.recipe import load_recipe
from llmtrain.rundir import MetricsLog, RunDir, read_metrics
from llmtrain.tracking import LoggingSection, Tracker


def test_atomic_write_interrupted_keeps_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_atomic_directory_replaces_complete_directory(tmp_path):
    final = tmp_path / "final"
    final.mkdir()
    (final / "old.bin").write_text("old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new.bin").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_atomic_write_text(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"


def test_run_dir_saves_resolved_recipe(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe("name: t\noutput_dir: out\n"), ["seed=9"])
    run = RunDir(recipe.stage_dir("pretrain"))
    assert run.start(recipe.to_yaml()) is None
    assert load_recipe(run.config_path).model_dump() == recipe.model_dump()


def test_run_dir_refuses_existing_run_then_resumes(tmp_path):
    run = RunDir(tmp_path / "run")
    run.start("a: 1\n")
    run.checkpoint_dir(10).mkdir(parents=True)
    run.checkpoint_dir(20).mkdir(parents=True)
    (run.checkpoints_dir / ".step-30.tmp-x").mkdir()  # an interrupted write
    with pytest.raises(RunDirError, match=r"checkpoints up to step 20\); pass --resume"):
        run.start("a: 1\n")
    assert run.start("a: 1\n", resume=True) == run.checkpoint_dir(20)
    assert run.start("a: 1\n", resume=run.checkpoint_dir(10)) == run.checkpoint_dir(10).resolve()
    with pytest.raises(RunDirError, match="not a checkpoint directory"):
        run.start("a: 1\n", resume=tmp_path)
    run.prune_checkpoints(keep_last=1)
    assert [step for step, _ in run.checkpoints()] == [20]
    assert run.start("a: 2\n", overwrite=True) is None
    assert run.checkpoints() == []
    assert run.config_path.read_text() == "a: 2\n"


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(RunDirError, match="no complete checkpoint"):
        RunDir(tmp_path / "run").start("a: 1\n", resume=True)


def test_metrics_lines_parse_and_carry_steps(tmp_path):
    run = RunDir(tmp_path / "run")
    tracker = Tracker(run, LoggingSection(), run_name="t", config={})
    for step in (1, 2, 3):
        tracker.log(step, {"loss": 1.0 / step, "lr": 0.1})
    tracker.close()
    lines = run.metrics_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["loss"] == 0.5


def test_metrics_truncated_on_resume_and_torn_line_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(1, 6):
        log.log(step, {"loss": float(step)})
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # killed mid-write
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    log.truncate_after(3)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]


def test_non_main_process_writes_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    tracker = Tracker(run, LoggingSection(), run_name="t", config={}, is_main=False)
    tracker.log(1, {"loss": 1.0})
    assert not run.metrics_path.exists()


def test_tensorboard_and_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    section = LoggingSection.model_validate(
        {"tensorboard": True, "wandb": {"project": "llmtrain-test"}}
    )
    run = RunDir(tmp_path / "run")
    tracker = Tracker(run, section, run_name="t", config={"seed": 1})
    tracker.log(1, {"loss": 2.0, "note": "text is kept out of wandb/tensorboard"})
    tracker.close()
    assert list((run.path / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run.path / "wandb").glob("offline-run-*"))
    assert read_metrics(run.metrics_path)[0]["note"].startswith("text")


def test_wandb_mode_follows_recipe_then_environment_then_key(tmp_path, monkeypatch):
    from llmtrain.tracking import WandbSection, wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    section = WandbSection(project="p")
    assert wandb_mode(section) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(section) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # e.g. set by a CI job: honoured
    assert wandb_mode(section) == "disabled"
    assert wandb_mode(WandbSection(project="p", mode="offline")) == "offline"  # recipe wins


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    """Two runs into one directory: the second is refused naming the first; once the first is
    killed (SIGKILL, no clean-up), the directory can be written again."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "out" / "sft"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from llmtrain.rundir import RunDir\n"
            f"RunDir({str(run_dir)!r}).start('a: 1\\n')\n"
            "print('started', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "started"
        with pytest.raises(RunDirError) as err:
            RunDir(run_dir).start("a: 2\n", resume=None, overwrite=True)
        assert str(err.value).startswith(
            f"another training run is writing {run_dir} (pid {holder.pid} on "
        )
        assert str(err.value).endswith("wait for it to finish, or write to another output_dir")
        assert (run_dir / "config.yaml").read_text() == "a: 1\n"  # --overwrite deleted nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    RunDir(run_dir).start("a: 2\n", overwrite=True)
    assert (run_dir / "config.yaml").read_text() == "a: 2\n"


def test_metrics_are_strict_json_with_null_for_non_finite_values(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert line == '{"step": 1, "loss": null, "grad_norm": null, "lr": 0.001}\n'
    json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics"))


def test_temporaries_of_a_killed_run_are_removed_when_it_resumes(tmp_path):
    """Issue 18.7: a partial `.step-N.tmp` (killed, or disk full while writing a checkpoint)
    and a `.final.tmp-*` (killed while writing final/) go when the run starts again; complete
    checkpoints and other files stay."""
    run = RunDir(tmp_path / "run")
    run.start("a: 1\n")
    (run.checkpoint_dir(2) / "model.safetensors").parent.mkdir(parents=True)
    (run.checkpoint_dir(2) / "model.safetensors").write_text("complete")
    leftovers = [
        run.checkpoints_dir / ".step-3.tmp",
        run.checkpoints_dir / ".step-4.tmp-x1y2",
        run.path / ".final.tmp-k9j8",
        run.path / ".final.old-123",
    ]
    for path in leftovers:
        path.mkdir()
        (path / "part.bin").write_text("partial")
    (run.path / ".metrics.jsonl.tmp-abc").write_text("partial")
    assert run.start("a: 1\n", resume=True) == run.checkpoint_dir(2)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["step-2"]
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoints", "config.yaml"]
