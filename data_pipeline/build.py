"""`llmtrain data`: the build driver. Steps, each recorded when complete:

    scan/<source>/<file>      read, clean, filter, hash one input file       (parallel chunks)
    dedup                     exact + near dedup over all sources, decontamination
    shard/<source>/<split>-N  tokenize one shard of one source and split     (parallel shards)
    manifest.json, report.md  mixture plan and checks; written last: a build is complete
                              exactly when its manifest exists

A step's record (`work/steps/<step>.json`) holds the fingerprint of everything its output
depends on (settings, input file sizes and times, the tokenizer, the steps before it) and
the names of its outputs. On a re-run a step whose record matches and whose outputs exist is
skipped, so an interrupted build redoes only unfinished work and a finished build does
nothing. `build.json` holds the fingerprint of the whole `data:` section, the seed and the
tokenizer: a different recipe is refused unless `overwrite`, and then only the steps whose
fingerprints changed are redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain import __version__
from llmtrain.atomic import atomic_path, atomic_write_json, atomic_write_text
from llmtrain.errors import InputDataError, RecipeError, RunDirError
from llmtrain.locking import locked
from llmtrain.runtime import available_cpus

from .config import DataSection, DataSource, FiltersSection
from .decontam import EvalNgrams, eval_files, file_sets
from .dedup import CONTAMINATED, EXACT, KEPT, LOW_QUALITY, NEAR, apply_contamination
from .eval_tasks import task_items
from .executor import StepProgress, make_executor
from .langid import detector_for
from .manifest import FORMAT_VERSION, MANIFEST, render_report
from .mixture import plan_mixture, shard_ranges, source_key, validation_documents
from .pii import KINDS as PII_KINDS
from .pii import pii_replacer
from .quality import check_model_directory, distribution, model_directory, top_fraction_drops
from .readers import expand_paths, file_format
from .scan import ScanJob, ScanOutput, make_context
from .shards import dtype_name
from .tokenize import ShardTask, TokenizerInfo, load_tokenizer
from .urls import BLOCKED, CHECKED, MISSING, NOT_ALLOWED

log = logging.getLogger("llmtrain.data")

BUILD_RECORD = "build.json"
REPORT = "report.md"


def fingerprint(*parts: Any) -> str:
    text = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_stamp(path: Path) -> list:
    """What identifies an input file's content cheaply: path, size, modification time."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


class Steps:
    """Completion records of the build's steps (see the module doc)."""

    def __init__(self, build_dir: Path):
        self.build_dir = build_dir
        self.directory = build_dir / "work" / "steps"

    def _path(self, name: str) -> Path:
        return self.directory / (name.replace("/", "--") + ".json")

    def done(self, name: str, fp: str, *, need_outputs: bool = True) -> dict | None:
        """The step's result when it is complete with this fingerprint (and its outputs are
        still there, when `need_outputs`), else None."""
        path = self._path(name)
        if not path.is_file():
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("fingerprint") != fp:
            return None
        if need_outputs and not all(
            (self.build_dir / output).exists() for output in record["outputs"]
        ):
            return None
        return record["result"]

    def record(self, name: str, fp: str, outputs: list[str], result: dict) -> None:
        atomic_write_json(
            self._path(name), {"fingerprint": fp, "outputs": outputs, "result": result}
        )


# ---------------------------------------------------------------------------------------------
# The build directory: identity, lock, overwrite


def _settings(recipe: Any, section: DataSection, info: TokenizerInfo) -> dict:
    return {
        # settings that change no output (processes, executor, keeping work files, the
        # classifier's training data: the model's files are fingerprinted) are left out
        "data": section.model_dump(
            mode="json",
            exclude={"num_proc", "keep_intermediate", "executor", "ray", "classifier"},
        ),
        "seed": recipe.seed,
        "tokenizer": info.fingerprint,
    }


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        out = []
        for key in keys:
            out.extend(
                _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
            )
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            out.extend(_differences(a, b, f"{prefix}[{index}]"))
        return out
    return [] if old == new else [prefix]


def _visible_entries(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if not p.name.startswith(".")]


def prepare_directory(out: Path, settings: dict, overwrite: bool) -> bool:
    """Make `out` ready for this build; True when it already holds the finished build."""
    record_path = out / BUILD_RECORD
    identity = fingerprint(settings)
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("fingerprint") == identity:
            if (out / MANIFEST).is_file():
                return True
            _remove_temporaries(out)  # an interrupted build: resume it
            return False
        if not overwrite:
            changed = _differences(record.get("settings", {}), settings)
            listing = ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "")
            raise RunDirError(
                f"{out} holds a data build made with other settings (changed: {listing}); "
                "run `llmtrain data` with --overwrite to rebuild it (steps whose inputs did "
                "not change are reused), or set output_dir to another directory"
            )
        log.info("%s was built with other settings; rebuilding (--overwrite)", out)
    elif out.is_dir() and _visible_entries(out):
        if not overwrite:
            raise RunDirError(
                f"{out} exists and is not a data build (no {BUILD_RECORD}); move it away, or "
                "run with --overwrite to delete its contents"
            )
        for entry in _visible_entries(out):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out)
    # from here on the directory holds no complete build until the new manifest is written
    for name in (MANIFEST, REPORT):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    atomic_write_json(record_path, {"fingerprint": identity, "settings": settings})
    return False


def _remove_temporaries(out: Path) -> None:
    """Delete what a killed build left half-written (atomic writes' temporary names)."""
    for path in sorted(out.rglob(".*"), reverse=True):
        if ".tmp-" in path.name or ".old-" in path.name:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The build


def summed_counts(records: list[dict], key: str) -> dict[str, int]:
    """The `key` counts (name: count) of a source's scan records, summed over its files."""
    counts: dict[str, int] = {}
    for r in records:
        for name, value in r[key].items():
            counts[name] = counts.get(name, 0) + value
    return counts


class DataBuild:
    def __init__(
        self, recipe: Any, section: DataSection, out: Path, tokenizer: Any, info: TokenizerInfo
    ):
        self.recipe = recipe
        self.tokenizer = tokenizer
        self.section = section
        self.out = out
        self.info = info
        self.steps = Steps(out)
        self.num_proc = section.num_proc or available_cpus()
        self.executor = make_executor(section, self.num_proc)
        self.files = {
            source.name: expand_paths(source.paths, key=f"data.sources[{index}].paths")
            for index, source in enumerate(section.sources)
        }
        self._check_url_fields()
        decontamination = section.decontamination
        self.eval_files = eval_files(decontamination) if decontamination.eval_files else []
        self.eval_tasks = task_items(decontamination.tasks, decontamination.include_path)
        self.eval_names = [str(f) for f in self.eval_files] + [n for n, _ in self.eval_tasks]
        self.eval_fingerprint = fingerprint(
            decontamination.model_dump(mode="json"),
            [file_stamp(f) for f in self.eval_files],
            hashlib.sha256(json.dumps(self.eval_tasks).encode("utf-8")).hexdigest(),
        )
        self.filters = {s.name: self._filters_of(s) for s in section.sources}

    def _check_url_fields(self) -> None:
        """url_field only on record sources; url_filter lists only with a url_field source."""
        sources = self.section.sources
        for index, source in enumerate(sources):
            if source.url_field is None:
                continue
            text_files = [p for p in self.files[source.name] if file_format(p) == "text"]
            if text_files:
                raise RecipeError(
                    f"data.sources[{index}].url_field: {text_files[0]} is plain text, which has "
                    f"no fields; remove url_field from source {source.name!r}, or give it "
                    "jsonl, parquet or datasets files whose records hold the URL"
                )
        lists = self.section.url_filter
        if (lists.block_lists or lists.allow_lists) and all(s.url_field is None for s in sources):
            raise RecipeError(
                "data.url_filter: no source sets url_field, so the lists would filter nothing; "
                "set data.sources[N].url_field to the record field that holds the URL"
            )

    def _filters_of(self, source: DataSource) -> FiltersSection:
        """The source's filters, with the quality model's default directory filled in; the
        language detector and the quality model checked before any work starts."""
        filters = self.section.filters_of(source)
        if filters.language.enabled:
            detector_for(filters.language)
        if not filters.quality.enabled:
            return filters
        directory = model_directory(self.recipe, filters.quality.model)
        check_model_directory(directory)
        quality = filters.quality.model_copy(update={"model": directory})
        return filters.model_copy(update={"quality": quality})

    def _url_filter_settings(self, source: DataSource) -> list:
        """What the URL filter of a source depends on: the settings and the lists' stamps."""
        if source.url_field is None:
            return []
        lists = self.section.url_filter
        stamps = [file_stamp(Path(p)) for p in [*lists.block_lists, *lists.allow_lists]]
        return [lists.model_dump(mode="json"), stamps]

    def _model_stamps(self, filters: FiltersSection) -> list:
        """What identifies the model files the filters read (their path, size and time)."""
        stamps = []
        if filters.language.enabled and filters.language.model is not None:
            stamps.append(file_stamp(Path(filters.language.model)))
        if filters.quality.enabled:
            directory = Path(filters.quality.model)
            stamps += [file_stamp(p) for p in sorted(directory.iterdir()) if p.is_file()]
        return stamps

    def run(self) -> dict:
        finished = self._finished_steps()
        if finished is not None:  # only the manifest is missing (or its settings changed)
            log.info("every step was done before; writing the manifest")
            scans, dedup, shards = finished
        else:
            with self.executor:
                log.info("executor: %s", self.executor.name)
                scans = self.scan()
                dedup = self.dedup(scans)
                shards = self.tokenize()
        return self.finish(scans, dedup, shards)

    def _finished_steps(self) -> tuple[dict, dict, dict] | None:
        """The records of every step when all shards are written with the current settings
        (the scan and dedup outputs they came from are then not needed), else None."""
        scans: dict[str, list[dict]] = {s.name: [] for s in self.section.sources}
        for index, number, path in self._scan_files_list():
            source = self.section.sources[index].name
            name = f"scan/{source}/{number:05d}"
            done = self.steps.done(name, self._scan_fingerprint(index, path), need_outputs=False)
            if done is None:
                return None
            scans[source].append(done)
        dedup = self.steps.done("dedup", self._dedup_fingerprint(), need_outputs=False)
        if dedup is None:
            return None
        shards: dict[str, list[dict]] = {}
        for source in self.section.sources:
            plan_fp = self._plan_fingerprint(source.name)
            plan = self.steps.done(f"shards/{source.name}", plan_fp)
            if plan is None:
                return None
            shards[source.name] = []
            for number, task in enumerate(plan["tasks"]):
                name = f"shard/{source.name}/{Path(task['path']).stem}"
                done = self.steps.done(name, fingerprint(plan_fp, number))
                if done is None:
                    return None
                shards[source.name].append(done)
        return scans, dedup, shards

    def _scan_files_list(self) -> list[tuple[int, int, Path]]:
        return [
            (index, number, path)
            for index, source in enumerate(self.section.sources)
            for number, path in enumerate(self.files[source.name])
        ]

    def _dedup_fingerprint(self) -> str:
        scan_fps = [self._scan_fingerprint(i, p) for i, _, p in self._scan_files_list()]
        top_fractions = [self.filters[s.name].quality.top_fraction for s in self.section.sources]
        return fingerprint(
            "dedup", scan_fps, self.section.dedup.model_dump(mode="json"), top_fractions
        )

    def _plan_fingerprint(self, source: str) -> str:
        return fingerprint(
            "shards",
            self._dedup_fingerprint(),
            self.info.fingerprint,
            self.section.validation.model_dump(mode="json"),
            self.recipe.seed,
            self._shard_limit,
            source,
        )

    @property
    def _shard_limit(self) -> int:
        return int(self.section.shard_text_mb * 2**20)

    # ------------------------------------------------------------------ scan

    def _scan_fingerprint(self, index: int, path: Path) -> str:
        source = self.section.sources[index]
        near = self.section.dedup.near
        return fingerprint(
            "scan",
            source.model_dump(mode="json", exclude={"weight", "max_epochs", "paths"}),
            self.section.clean_of(source).model_dump(mode="json"),
            self.section.pii_of(source).model_dump(mode="json"),
            self._url_filter_settings(source),
            # top_fraction is applied in the dedup step
            self.filters[source.name].model_dump(
                mode="json", exclude={"quality": {"top_fraction"}}
            ),
            self._model_stamps(self.filters[source.name]),
            [near.ngram, near.bands, near.rows, near.seed],
            self.eval_fingerprint,
            file_stamp(path),
        )

    def scan(self) -> dict[str, list[dict]]:
        """Per source, the record of each of its scanned files (in order)."""
        todo = []
        results: dict[str, list[dict | None]] = {s.name: [] for s in self.section.sources}
        for index, number, path in self._scan_files_list():
            source = self.section.sources[index]
            name = f"scan/{source.name}/{number:05d}"
            fp = self._scan_fingerprint(index, path)
            done = self.steps.done(name, fp)
            results[source.name].append(done)
            if done is None:
                todo.append((index, number, path, name, fp))
        if todo:
            self._scan_files(todo, results)
        else:
            log.info("scan: every file was scanned before")
        for index, source in enumerate(self.section.sources):
            self._check_not_emptied(index, results[source.name])
        return results  # type: ignore[return-value]

    def _scan_files(self, todo: list, results: dict[str, list]) -> None:
        eval_ngrams = None
        if self.eval_names:
            d = self.section.decontamination
            eval_ngrams = EvalNgrams(
                file_sets(self.eval_files, d.fields) + self.eval_tasks,
                ngram=d.ngram,
                min_words=d.min_words,
            )
            log.info(
                "decontamination: %d eval items, %d n-grams from %d files and %d tasks",
                sum(eval_ngrams.items),
                eval_ngrams.size,
                len(self.eval_files),
                len(self.eval_tasks),
            )
            for path, items in zip(self.eval_names, eval_ngrams.items, strict=True):
                if not items:
                    log.warning(
                        "decontamination: %s has no item of at least %d words; it can "
                        "match nothing (lower data.decontamination.min_words to match short "
                        "items)",
                        path,
                        d.min_words,
                    )
        context = make_context(self.section, eval_ngrams, self.filters)
        jobs = [
            ScanJob(
                index=index,
                number=number,
                path=path,
                source=self.section.sources[index],
                directory=self._scan_directory(self.section.sources[index].name, number),
                name=name,
                fp=fp,
            )
            for index, number, path, name, fp in todo
        ]
        progress = StepProgress("scan", len(jobs), "files")
        try:
            for job, result in self.executor.scan(jobs, context):
                outputs = [str(job.directory.relative_to(self.out))]
                self.steps.record(job.name, job.fp, outputs, result)
                results[job.source.name][job.number] = result
                progress.update(
                    result["read"],
                    f"scan {job.source.name}: {job.path}: {result['read']} documents read, "
                    f"{result['kept']} kept",
                )
        finally:
            progress.close()

    def _check_not_emptied(self, index: int, records: list[dict]) -> None:
        source = self.section.sources[index]
        read = sum(r["read"] for r in records)
        if sum(r["kept"] for r in records) > 0:
            return
        where = f"data.sources[{index}] ({source.name})"
        skipped = sum(r["read_errors_skipped"] for r in records)
        empty = sum(r.get("empty_records", 0) for r in records)
        if read == empty:
            notes = [f"{skipped} records skipped as unreadable"] if skipped else []
            if empty:
                notes.append(f"{empty} records whose {source.text_field!r} is empty")
            extra = f" ({', '.join(notes)})" if notes else ""
            raise InputDataError(
                f"{where}: its files hold no document{extra}; check data.sources[{index}].paths "
                "and text_field"
            )
        dropped: dict[str, int] = {}
        detail: dict[str, int] = {}
        for r in records:
            for key, value in r["dropped"].items():
                dropped[key] = dropped.get(key, 0) + value
            for key, value in r["dropped_detail"].items():
                detail[key] = detail.get(key, 0) + value
        top = max(dropped, key=lambda k: dropped[k])
        checks = sorted(
            ((k, v) for k, v in detail.items() if k.startswith(f"{top}.")), key=lambda kv: -kv[1]
        )
        counts = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))
        check_text = ", ".join(f"{k.split('.', 1)[1]}: {v}" for k, v in checks)
        if top == "url":
            fix = (
                f"check the URLs in data.sources[{index}].url_field ({source.url_field!r}) and "
                "the lists of data.url_filter (or set its missing_url: keep)"
            )
        elif top == "empty" and checks[0][0] == "empty.no_text":
            fix = f"most records have an empty {source.text_field!r}: check the text_field"
        elif top == "empty":
            fix = (
                "cleaning leaves most of them empty: check the files' text and "
                f"data.clean / data.sources[{index}].clean"
            )
        else:
            fix = (
                f"loosen data.filters.{top} or turn it off for this source "
                f"(data.sources[{index}].filters.{top}.enabled: false)"
            )
        raise InputDataError(
            f"{where}: the filters removed all {read} documents ({counts}); the {top} filter "
            f"removed the most ({check_text}); {fix}, then run `llmtrain data` again with "
            "--overwrite (finished steps are reused)"
        )

    # ------------------------------------------------------------------ dedup

    def _scan_directory(self, source: str, number: int) -> Path:
        return self.out / "work" / "scan" / source / f"{number:05d}"

    def _scan_outputs(self) -> list[tuple[str, ScanOutput]]:
        return [
            (source.name, ScanOutput(self._scan_directory(source.name, n)))
            for source in self.section.sources
            for n in range(len(self.files[source.name]))
        ]

    def dedup(self, scans: dict[str, list[dict]]) -> dict:
        fp = self._dedup_fingerprint()
        result = self.steps.done("dedup", fp)
        if result is None:
            result = self._deduplicate(fp)
        else:
            log.info("dedup: done before")
        for index, source in enumerate(self.section.sources):
            entry = result["sources"].get(source.name)
            self._check_survives_dedup(index, entry, scans[source.name])
        return result

    def _deduplicate(self, fp: str) -> dict:
        started = time.perf_counter()
        outputs = self._scan_outputs()
        status, stats = self.executor.dedup(outputs, self.section.dedup)
        per_source: dict[str, dict] = {}
        starts = np.cumsum([0] + [output.documents for _, output in outputs])
        for (_, output), start in zip(outputs, starts, strict=False):  # one file at a time
            owner = output.array("contamination").astype(np.int16)
            apply_contamination(status[start : start + output.documents], owner)
        quality_dropped = self._apply_top_fraction(status, outputs, starts)
        for (name, output), start in zip(outputs, starts, strict=False):  # the counts
            part = status[start : start + output.documents]
            owner = output.array("contamination").astype(np.int16)
            entry = per_source.setdefault(
                name,
                {
                    "exact_duplicates": 0,
                    "near_duplicates": 0,
                    "decontaminated": {},
                    "quality_top_fraction_dropped": quality_dropped.get(name, 0),
                    "kept": 0,
                },
            )
            entry["exact_duplicates"] += int((part == EXACT).sum())
            entry["near_duplicates"] += int((part == NEAR).sum())
            entry["kept"] += int((part == KEPT).sum())
            for eval_index in owner[part == CONTAMINATED]:
                key = self.eval_names[int(eval_index)]
                entry["decontaminated"][key] = entry["decontaminated"].get(key, 0) + 1
        path = self.out / "work" / "dedup" / "status.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, status)
        result = {"sources": per_source, "stats": stats}
        self.steps.record("dedup", fp, [str(path.relative_to(self.out))], result)
        log.info(
            "dedup: %d documents, %d exact and %d near duplicates, %d contaminated (%.1f s)",
            status.size,
            int((status == EXACT).sum()),
            int((status == NEAR).sum()),
            int((status == CONTAMINATED).sum()),
            time.perf_counter() - started,
        )
        return result

    def _apply_top_fraction(
        self, status: np.ndarray, outputs: list[tuple[str, ScanOutput]], starts: np.ndarray
    ) -> dict[str, int]:
        """Mark LOW_QUALITY the kept documents of each source with data.filters.quality.
        top_fraction that are outside that top share by score; {source: documents marked}."""
        dropped = {}
        for source in self.section.sources:
            fraction = self.filters[source.name].quality.top_fraction
            if not self.filters[source.name].quality.enabled or fraction is None:
                continue
            files = [i for i, (name, _) in enumerate(outputs) if name == source.name]
            lo, hi = starts[files[0]], starts[files[-1] + 1]  # a source's files are contiguous
            scores = np.concatenate([outputs[i][1].array("quality_score") for i in files])
            drops = top_fraction_drops(scores, status[lo:hi] == KEPT, fraction)
            status[lo + drops] = LOW_QUALITY
            dropped[source.name] = int(drops.size)
        return dropped

    def _check_survives_dedup(self, index: int, entry: dict | None, records: list[dict]) -> None:
        if entry is not None and entry["kept"] > 0:
            return
        source = self.section.sources[index]
        entry = entry or {"exact_duplicates": 0, "near_duplicates": 0, "decontaminated": {}}
        after_filters = sum(r["kept"] for r in records)
        decontaminated = sum(entry["decontaminated"].values())
        raise InputDataError(
            f"data.sources[{index}] ({source.name}): all {after_filters} documents left after "
            f"filtering were removed: {entry['exact_duplicates']} exact duplicates and "
            f"{entry['near_duplicates']} near duplicates of documents of sources listed "
            f"earlier, {decontaminated} overlapping eval files "
            f"({', '.join(entry['decontaminated']) or 'none'}); drop the source, list it "
            "earlier, or turn off data.dedup / data.decontamination for it, then run "
            "`llmtrain data` again with --overwrite"
        )

    # ------------------------------------------------------------------ tokenize

    def tokenize(self) -> dict[str, list[dict]]:
        """Per source, the shard entries of its train and validation splits."""
        status = None
        tasks: list[tuple[str, str, ShardTask, int]] = []
        shards: dict[str, list[dict | None]] = {}
        outputs = None
        for source in self.section.sources:
            fp = self._plan_fingerprint(source.name)
            plan = self.steps.done(f"shards/{source.name}", fp)
            if plan is None:
                if status is None:
                    status = np.load(self.out / "work" / "dedup" / "status.npy")
                    outputs = self._scan_outputs()
                plan = self._plan_shards(source.name, status, outputs, self._shard_limit)
                self.steps.record(f"shards/{source.name}", fp, [], plan)
            shards[source.name] = []
            for number, task in enumerate(plan["tasks"]):
                name = f"shard/{source.name}/{Path(task['path']).stem}"
                task_fp = fingerprint(fp, number)
                done = self.steps.done(name, task_fp)
                shards[source.name].append(done)
                if done is None:
                    shard_task = ShardTask(
                        source=source.name,
                        split=task["split"],
                        path=task["path"],
                        pieces=[(d, runs) for d, runs in task["pieces"]],
                    )
                    tasks.append((name, task_fp, shard_task, number))
        if tasks:
            self._write_shards(tasks, shards)
        else:
            log.info("tokenize: every shard was written before")
        return shards  # type: ignore[return-value]

    def _plan_shards(
        self, name: str, status: np.ndarray, outputs: list, limit: int
    ) -> dict[str, Any]:
        """Which kept documents go to which shard, for one source: per shard, its documents as
        (scan directory relative to the build, [[start, stop), ...] runs of indices)."""
        start = 0
        directories: list[str] = []
        file_of, local, sizes = [], [], []  # per kept document of the source
        for source_name, output in outputs:
            part = status[start : start + output.documents]
            start += output.documents
            if source_name != name:
                continue
            kept = np.flatnonzero(part == KEPT)
            file_of.append(np.full(kept.size, len(directories), dtype=np.int64))
            local.append(kept)
            sizes.append(output.text_bytes(kept))
            directories.append(str(output.directory.relative_to(self.out)))
        file_of, local = np.concatenate(file_of), np.concatenate(local)
        text_bytes = np.concatenate(sizes)
        held_out = validation_documents(
            local.size, self.section.validation, source_key(self.recipe.seed, name)
        )
        is_validation = np.zeros(local.size, dtype=bool)
        is_validation[held_out] = True
        tasks = []
        for split, chosen in (
            ("train", np.flatnonzero(~is_validation)),
            ("validation", np.flatnonzero(is_validation)),
        ):
            for number, (lo, hi) in enumerate(shard_ranges(text_bytes[chosen], limit)):
                docs = chosen[lo:hi]
                pieces = [
                    [directories[f], _runs(local[docs[file_of[docs] == f]])]
                    for f in np.unique(file_of[docs])
                ]
                tasks.append(
                    {
                        "split": split,
                        "path": f"shards/{name}/{split}-{number:05d}.bin",
                        "pieces": pieces,
                    }
                )
        return {"tasks": tasks}

    def _write_shards(self, tasks: list, shards: dict[str, list]) -> None:
        """Write the shards with the executor, recording each as it is done."""
        started = time.perf_counter()
        tokens = 0
        progress = StepProgress("tokenize", len(tasks), "shards")
        try:
            written = self.executor.write_shards(
                self.out,
                [task for _, _, task, _ in tasks],
                self.info,
                self.tokenizer.backend_tokenizer.to_str(),
            )
            for number, entry in written:
                name, fp, task, position = tasks[number]
                self.steps.record(name, fp, [entry["path"], entry["index"]], entry)
                shards[task.source][position] = entry
                tokens += entry["tokens"]
                progress.update(
                    entry["documents"],
                    f"tokenize {task.source}: {task.path} ({entry['documents']} documents, "
                    f"{entry['tokens']} tokens)",
                )
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        log.info(
            "tokenize: %d tokens in %.1f s (%.0f tokens/s, %s)",
            tokens,
            seconds,
            tokens / max(seconds, 1e-9),
            self.executor.workers,
        )

    # ------------------------------------------------------------------ manifest

    def finish(self, scans: dict, dedup: dict, shards: dict[str, list[dict]]) -> dict:
        section = self.section
        train_tokens = {
            name: sum(s["tokens"] for s in entries if s["split"] == "train")
            for name, entries in shards.items()
        }
        for index, source in enumerate(section.sources):
            if train_tokens[source.name] == 0:
                raise InputDataError(
                    f"data.sources[{index}] ({source.name}): no training document is left "
                    "after holding out validation documents; lower data.validation.fraction "
                    "or min_documents, or add text to the source"
                )
        target, plans = plan_mixture(section, train_tokens)
        sources = []
        for index, (source, plan) in enumerate(zip(section.sources, plans, strict=True)):
            records = scans[source.name]
            dedup_entry = dedup["sources"][source.name]
            dropped: dict[str, int] = {}
            detail: dict[str, int] = {}
            for r in records:
                for key, value in r["dropped"].items():
                    dropped[key] = dropped.get(key, 0) + value
                for key, value in r["dropped_detail"].items():
                    detail[key] = detail.get(key, 0) + value
            split_stats = {
                split: {
                    "documents": sum(
                        s["documents"] for s in shards[source.name] if s["split"] == split
                    ),
                    "tokens": sum(s["tokens"] for s in shards[source.name] if s["split"] == split),
                }
                for split in ("train", "validation")
            }
            sources.append(
                {
                    "name": source.name,
                    "index": index,
                    "files": [str(p) for p in self.files[source.name]],
                    "weight": plan.weight,
                    "tokens": plan.tokens,
                    "epochs": plan.epochs,
                    "max_epochs": plan.max_epochs,
                    "documents_read": sum(r["read"] for r in records),
                    "read_errors_skipped": sum(r["read_errors_skipped"] for r in records),
                    "dropped": dict(sorted(dropped.items())),
                    "dropped_detail": dict(sorted(detail.items())),
                    "after_filters": sum(r["kept"] for r in records),
                    "exact_duplicates": dedup_entry["exact_duplicates"],
                    "near_duplicates": dedup_entry["near_duplicates"],
                    "decontaminated": dedup_entry["decontaminated"],
                    **self._model_filter_stats(source, records, dedup_entry),
                    **self._text_step_stats(source, records),
                    "documents": dedup_entry["kept"],
                    "text_bytes": sum(r["kept_bytes"] for r in records),
                    "train": split_stats["train"],
                    "validation": split_stats["validation"],
                }
            )
        all_shards = [entry for name in shards for entry in shards[name]]
        manifest = {
            "format_version": FORMAT_VERSION,
            "llmtrain_version": __version__,
            "tokenizer": self.info.to_dict(),
            "dtype": dtype_name(self.info.dtype),
            "seq_len": section.seq_len,
            "seed": self.recipe.seed,
            "target_tokens": int(target),
            "splits": {
                split: {
                    "tokens": sum(s["tokens"] for s in all_shards if s["split"] == split),
                    "documents": sum(s["documents"] for s in all_shards if s["split"] == split),
                }
                for split in ("train", "validation")
            },
            "sources": sources,
            "dedup": {
                "settings": section.dedup.model_dump(mode="json"),
                **dedup["stats"],
            },
            "decontamination": {
                "settings": section.decontamination.model_dump(mode="json"),
                "eval_files": [str(p) for p in self.eval_files],
                "tasks": {name: len(items) for name, items in self.eval_tasks},
            },
            "shards": all_shards,
        }
        atomic_write_text(self.out / REPORT, render_report(manifest))
        atomic_write_json(self.out / MANIFEST, manifest)
        self._clean_up(all_shards)
        return manifest

    def _model_filter_stats(self, source: DataSource, records: list[dict], entry: dict) -> dict:
        """The manifest's `languages` (detected language: documents, over those the language
        filter saw) and `quality` (the rule, documents it dropped, score distribution)."""
        filters = self.filters[source.name]
        out: dict[str, Any] = {}
        if filters.language.enabled:
            languages = summed_counts(records, "languages")
            out["languages"] = dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0])))
        if filters.quality.enabled:
            quality = filters.quality
            histogram = np.sum([r["quality_histogram"] for r in records], axis=0)
            dropped = sum(r["dropped"].get("quality", 0) for r in records)
            out["quality"] = {
                "model": str(quality.model),
                "threshold": quality.threshold,
                "top_fraction": quality.top_fraction,
                "dropped": dropped + entry["quality_top_fraction_dropped"],
                **distribution(histogram.tolist()),
            }
        return out

    def _text_step_stats(self, source: DataSource, records: list[dict]) -> dict:
        """The manifest's `pii` (replacements per kind, and documents changed) and
        `url_filter` (documents checked, missing a URL, dropped per block list, not allowed)."""
        out: dict[str, Any] = {}
        if pii_replacer(self.section.pii_of(source)) is not None:
            found = summed_counts(records, "pii")
            out["pii"] = {k: found.get(k, 0) for k in (*PII_KINDS, "documents")}
        lists = self.section.url_filter
        if source.url_field is not None and (lists.block_lists or lists.allow_lists):
            found = summed_counts(records, "url_filter")
            out["url_filter"] = {
                "checked": found.get(CHECKED, 0),
                "missing_url": found.get(MISSING, 0),
                "missing_url_kept": lists.missing_url == "keep",
                "blocked": {str(p): found.get(BLOCKED + str(p), 0) for p in lists.block_lists},
                "not_allowed": found.get(NOT_ALLOWED, 0),
            }
        return out

    def _clean_up(self, shards: list[dict]) -> None:
        keep = {self.out / s["path"] for s in shards} | {self.out / s["index"] for s in shards}
        shard_dir = self.out / "shards"
        for path in sorted(shard_dir.rglob("*")) if shard_dir.is_dir() else []:
            if path.is_file() and path not in keep:
                path.unlink()  # left by an earlier build with other settings
        if not self.section.keep_intermediate:
            for name in ("scan", "dedup"):
                shutil.rmtree(self.out / "work" / name, ignore_errors=True)


def _runs(indices: np.ndarray) -> list[list[int]]:
    """Ascending indices as [[start, stop), ...] runs of consecutive values."""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = indices[np.concatenate([[0], breaks])]
    stops = indices[np.concatenate([breaks - 1, [indices.size - 1]])] + 1
    return [[int(a), int(b)] for a, b in zip(starts, stops, strict=True)]


def build_data(recipe: Any, *, overwrite: bool = False) -> Path:
    """Run (or finish, or skip) the data build of `recipe`; returns the build directory."""
    recipe.check_inputs("data")
    section: DataSection = recipe.section("data")
    out = Path(recipe.stage_dir("data"))
    tokenizer_dir = section.tokenizer or (
        recipe.tokenizer.output_path(recipe)  # where the recipe's tokenizer stage writes
        if recipe.tokenizer is not None
        else recipe.stage_dir("tokenizer")
    )
    tokenizer, info = load_tokenizer(tokenizer_dir)
    settings = _settings(recipe, section, info)
    with locked(out, "`llmtrain data`"):
        if prepare_directory(out, settings, overwrite):
            log.info("%s is complete with these settings; nothing to do", out)
            return out
        started = time.perf_counter()
        DataBuild(recipe, section, out, tokenizer, info).run()
        log.info("build finished in %.1f s: %s", time.perf_counter() - started, out)
    return out
