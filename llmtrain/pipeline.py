"""`llmtrain run RECIPE`: every stage of a recipe, each after the stages it reads from.

Each stage runs as its own `llmtrain` command in a subprocess (through torchrun when
`--nproc-per-node` > 1 for the training stages), so memory is returned between stages and a
stage behaves exactly as when run by hand. After a stage succeeds, run writes
<stage dir>/.pipeline.json with the fingerprint of the settings it ran with (its own section,
the sections of the stages it reads from, and the seed). On the next run:

- same fingerprint: the stage is skipped;
- other fingerprint: the stage runs again from scratch (`--overwrite`), and so does every stage
  after it that reads from it;
- no marker but a stage directory (the stage was interrupted): a training stage resumes from
  its latest checkpoint, the data build resumes its unfinished steps, the tokenizer reruns.

With `--jobs N`, up to N stages run at once, each as soon as the stages it reads from have
finished (rm and dpo after sft, then ppo and grpo); stages running side by side share the CPU
threads, a stage running alone has them all.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from llmtrain.atomic import atomic_write_json
from llmtrain.errors import LLMTrainError, RecipeError
from llmtrain.model_card import refresh_model_cards
from llmtrain.recipe import Recipe
from llmtrain.rundir import RunDir
from llmtrain.runtime import available_cpus

log = logging.getLogger(__name__)

MARKER = ".pipeline.json"


class PipelineError(LLMTrainError):
    """A stage of `llmtrain run` failed; the message names it and its command."""


@dataclass
class StagePlan:
    stage: str
    action: str  # "skip" | "run" | "resume" | "rerun"
    reason: str


def upstream(recipe: Recipe, stage: str) -> list[str]:
    """Every stage of the recipe that `stage` reads from, directly or not, in run order."""
    present = recipe.stage_names()
    seen: set[str] = set()
    todo = list(recipe.stage_inputs(stage).values())
    while todo:
        current = todo.pop()
        if current not in seen and current in present:
            seen.add(current)
            todo.extend(recipe.stage_inputs(current).values())
    return [s for s in present if s in seen]


def stage_fingerprint(recipe: Recipe, stage: str) -> str:
    """What shaped a stage's output: its settings, those of every stage it reads from (and the
    sections those kinds bring, like pretrain's model), and the seed."""
    names: list[str] = []
    for name in (*upstream(recipe, stage), stage):
        names.append(name)
        names.extend(
            extra
            for extra in recipe.stage_kind(name).extra_sections
            if getattr(recipe, extra, None) is not None
        )
    return recipe.fingerprint("seed", *dict.fromkeys(names))


def select_stages(recipe: Recipe, stages: Sequence[str] | None, start: str | None) -> list[str]:
    for name in [*(stages or []), *([start] if start else [])]:
        recipe.stage_kind(name)  # an unknown name is an error listing the stages
    present = recipe.stage_names()
    if stages:
        missing = [s for s in stages if s not in present]
        if missing:
            raise RecipeError(
                f"the recipe has no section for {', '.join(missing)}; add "
                f"{' and '.join(f'`{m}:`' for m in missing)} (see docs/recipes.md) or leave "
                "those stages out of --stages"
            )
        chosen = [s for s in present if s in stages]
    else:
        chosen = present
    if start:
        if start not in chosen:
            raise RecipeError(
                f"--from {start}: that stage is not among those to run ({', '.join(chosen)})"
            )
        chosen = chosen[chosen.index(start) :]
    if not chosen:
        raise RecipeError(
            "the recipe has no stage sections to run (tokenizer, data, pretrain, ...)"
        )
    return chosen


def plan(recipe: Recipe, chosen: list[str], start: str | None = None) -> list[StagePlan]:
    """What run will do with each chosen stage, decided before anything runs."""
    plans: list[StagePlan] = []
    rerun: set[str] = set()
    for stage in chosen:
        kind = recipe.stage_kind(stage)
        stage_dir = recipe.stage_dir(stage)
        marker = stage_dir / MARKER
        if kind.produces == "eval":
            plans.append(StagePlan(stage, "run", "evaluates every model"))
        elif stage == start:
            plans.append(StagePlan(stage, "rerun", "--from starts here"))
            rerun.add(stage)
        elif any(u in rerun for u in upstream(recipe, stage)):
            plans.append(StagePlan(stage, "rerun", "a stage it reads from runs again"))
            rerun.add(stage)
        elif marker.is_file():
            done = json.loads(marker.read_text()).get("fingerprint")
            if done == stage_fingerprint(recipe, stage):
                plans.append(StagePlan(stage, "skip", "done with the same settings"))
            else:
                plans.append(StagePlan(stage, "rerun", "settings changed since it ran"))
                rerun.add(stage)
        elif kind.training and RunDir(stage_dir).latest_checkpoint() is not None:
            plans.append(StagePlan(stage, "resume", "interrupted; resuming its latest checkpoint"))
        elif kind.produces == "data" and stage_dir.is_dir():
            plans.append(StagePlan(stage, "resume", "interrupted; finishing the build"))
        elif stage_dir.exists():
            plans.append(StagePlan(stage, "rerun", "left unfinished without a checkpoint"))
            rerun.add(stage)
        else:
            plans.append(StagePlan(stage, "run", "not run yet"))
    return plans


def stage_command(
    recipe: Recipe,
    recipe_path: str,
    overrides: Sequence[str],
    stage: str,
    action: str,
    nproc_per_node: int,
) -> list[str]:
    """The command line that runs one stage."""
    kind = recipe.stage_kind(stage)
    sets = [arg for item in overrides for arg in ("--set", item)]
    args = [*kind.command, recipe_path, *sets]
    if stage != kind.name:
        args += ["--stage", stage]
    if action == "resume" and kind.training:
        args.append("--resume")
    elif action == "rerun":
        args.append("--overwrite")
    if kind.training and nproc_per_node > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc_per_node),
            "-m",
            "llmtrain",
            *args,
        ]
    return [sys.executable, "-m", "llmtrain", *args]


def eval_command(recipe_path: str, overrides: Sequence[str], stage: str) -> list[str]:
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [sys.executable, "-m", "llmtrain", "eval", recipe_path, *sets, "--model", stage]


def run_pipeline(
    recipe: Recipe,
    recipe_path: str,
    overrides: Sequence[str],
    *,
    stages: Sequence[str] | None = None,
    start: str | None = None,
    nproc_per_node: int = 1,
    jobs: int = 1,
    dry_run: bool = False,
) -> list[StagePlan]:
    """Run the chosen stages; with `jobs` > 1 up to that many at once, a stage starting when
    every stage it reads from has finished (with its share of the CPU threads among the stages
    running at its start, its output in <output_dir>/logs/STAGE.log). After a failure no stage
    starts; those running finish."""
    if jobs < 1:
        raise RecipeError(f"--jobs {jobs}: run at least one stage at a time (--jobs 1 or more)")
    chosen = select_stages(recipe, stages, start)
    for stage in chosen:
        if recipe.stage_kind(stage).produces != "eval":
            recipe.check_inputs(stage)
    plans = plan(recipe, chosen, start)
    width = max(9, *(len(item.stage) for item in plans))
    for item in plans:
        print(f"{item.stage:>{width}}: {item.action:6} ({item.reason})", flush=True)
    if dry_run:
        return plans
    evaluate_each = recipe.eval is not None and recipe.eval.after_each_stage
    todo = [
        item
        for item in plans
        if item.action != "skip"
        # every model is evaluated as its stage finishes
        and not (recipe.stage_kind(item.stage).produces == "eval" and evaluate_each)
    ]
    names = [item.stage for item in todo]
    waits_for = {
        item.stage: set(names[:position])
        if recipe.stage_kind(item.stage).produces == "eval"  # reads every model before it
        else set(upstream(recipe, item.stage)) & set(names)
        for position, item in enumerate(todo)
    }
    runner = StageRunner(recipe, recipe_path, overrides, nproc_per_node, jobs, evaluate_each)
    failures: list[str] = []
    finished: set[str] = set()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, str] = {}
        while todo or running:
            ready = [item for item in todo if waits_for[item.stage] <= finished]
            starting = [] if failures else ready[: jobs - len(running)]
            share = len(running) + len(starting)  # the stages that will run side by side
            for item in starting:
                todo.remove(item)
                running[pool.submit(runner.run, item, share)] = item.stage
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                try:
                    future.result()
                    finished.add(stage)
                except PipelineError as exc:
                    failures.append(str(exc))
    if failures:
        raise PipelineError("; ".join(failures))
    return plans


class StageRunner:
    """Runs one stage: its command, its marker, the eval of the model it made. With jobs > 1
    a stage's commands write to <output_dir>/logs/STAGE.log, and a stage running beside others
    gets its share of the cores as OMP_NUM_THREADS (unless that is set)."""

    def __init__(
        self,
        recipe: Recipe,
        recipe_path: str,
        overrides: Sequence[str],
        nproc_per_node: int,
        jobs: int,
        evaluate_each: bool,
    ):
        self.recipe = recipe
        self.recipe_path = recipe_path
        self.overrides = overrides
        self.nproc_per_node = nproc_per_node
        self.jobs = jobs
        self.evaluate_each = evaluate_each
        self.cards_lock = threading.Lock()

    def run(self, item: StagePlan, share: int = 1) -> None:
        """Run the stage; `share`: the number of stages running at its start, among which the
        CPU threads are divided."""
        recipe, stage = self.recipe, item.stage
        produces = recipe.stage_kind(stage).produces
        log = None
        if self.jobs > 1:
            log = recipe.output_dir / "logs" / f"{stage}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
        command = stage_command(
            recipe, self.recipe_path, self.overrides, stage, item.action, self.nproc_per_node
        )
        env = dict(os.environ)
        if share > 1 and "OMP_NUM_THREADS" not in env:
            threads = available_cpus() // (share * self.nproc_per_node)
            env["OMP_NUM_THREADS"] = str(max(1, threads))
        _run(command, stage, env=env, log=log)
        if produces != "eval":
            atomic_write_json(
                recipe.stage_dir(stage) / MARKER,
                {
                    "fingerprint": stage_fingerprint(recipe, stage),
                    "kind": recipe.stage_kind(stage).name,
                    "finished": time.time(),
                },
            )
        if self.evaluate_each and produces == "causal_lm":
            evaluate = eval_command(self.recipe_path, self.overrides, stage)
            _run(evaluate, f"eval of {stage}", env=env, log=log)
        if produces == "eval" or (self.evaluate_each and produces == "causal_lm"):
            with self.cards_lock:
                refresh_model_cards(recipe.output_dir)  # the cards show the eval results


def _run(
    command: list[str], what: str, env: dict[str, str] | None = None, log: Path | None = None
) -> None:
    """Run a command to the console, or appending to `log`."""
    where = f" >> {log}" if log else ""
    print(f"\n$ {shlex.join(command)}{where}", flush=True)
    start = time.perf_counter()
    if log is None:
        result = subprocess.run(command, env=env)
    else:
        with log.open("a") as out:
            result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise PipelineError(
            f"{what} failed (exit status {result.returncode}); fix what it reported "
            f"{f'in {log}' if log else 'above'} and run the same `llmtrain run` again: "
            "finished stages are skipped, an interrupted training stage resumes"
        )
    print(f"{what}: done in {time.perf_counter() - start:.0f} s", flush=True)


def stage_is_done(recipe: Recipe, stage: str) -> bool:
    marker = Path(recipe.stage_dir(stage)) / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get(
        "fingerprint"
    ) == stage_fingerprint(recipe, stage)
