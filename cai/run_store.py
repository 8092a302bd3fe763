"""The run directory: append-only JSONL shards, a manifest, and trained artefacts.

Every write is atomic (temporary file, fsync, rename), so a killed process leaves either a
whole shard or none; a stage is done only when the manifest says so. Shards are numbered by
the chunk of input they cover, which is what lets a relaunch skip finished chunks without
losing or duplicating records.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable

from cai import layout, models
from cai.config import save_config
from cai.errors import CaiError

SHARD_PREFIX = "shard-"
PACKAGES = ("cai", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "vllm", "deepspeed")


TMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """The mode `open()` would give a new file (0666 less the umask): mkstemp's 0600 would hide shards from the group."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class RunStore:
    """One run directory. Only the main process writes; every process may read."""

    def __init__(self, root: str | Path, *, is_main: bool = True):
        self.root = Path(root)
        self.is_main = is_main
        if self.root.exists() and not self.root.is_dir():
            raise CaiError(f"output_dir: {self.root} exists and is not a directory; choose another output_dir")

    # -------------------------------------------------------------- manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / layout.MANIFEST

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            return {}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CaiError(f"{self.manifest_path}: corrupt manifest (not JSON); restore it or use a new output_dir") from None
        stages = data.get("stages", {}) if isinstance(data, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(entry, dict) for entry in stages.values()):
            found = type(data).__name__ if not isinstance(data, dict) else "'stages' that is not an object of objects"
            raise CaiError(f"{self.manifest_path}: not a cai manifest (a JSON {found}, expected an object with a 'stages' object); restore it or use a new output_dir")
        return data

    def update_manifest(self, change: Callable[[dict[str, Any]], None]) -> None:
        if not self.is_main:
            return
        data = self.manifest()
        change(data)
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        atomic_write_text(self.manifest_path, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def begin(self, config: Any, *, constitution: dict[str, Any] | None, models: dict[str, str], script: str) -> None:
        """Open the run: refuse a directory made with another constitution, then record this launch."""
        previous = self.manifest().get("constitution")
        if constitution and previous and previous.get("hash") != constitution["hash"]:
            raise CaiError(f"output_dir {self.root}: holds a run made with constitution {previous.get('name')!r} (hash {previous.get('hash')}), not {constitution['name']!r} (hash {constitution['hash']}); use a new output_dir")
        if not self.is_main:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(config, self.root / layout.config_copy(script))
        save_config(config, self.root / layout.CONFIG)

        def record(data: dict[str, Any]) -> None:
            data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
            if constitution:
                data["constitution"] = constitution
            data.setdefault("models", {}).update(models)
            data["packages"] = package_versions()
            data.setdefault("stages", {})

        self.update_manifest(record)

    # -------------------------------------------------------------- stages

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_done(self, stage: str) -> bool:
        return self.stage_info(stage).get("status") == "done"

    def mark_stage(self, stage: str, status: str, **info: Any) -> None:
        def change(data: dict[str, Any]) -> None:
            stages = data.setdefault("stages", {})
            for old in layout.legacy_names(stage):  # a run from before the rename: carry its entry over
                if old in stages and stage not in stages:
                    stages[stage] = stages.pop(old)
            entry = stages.setdefault(stage, {})
            entry.update(info)
            entry["status"] = status
            entry["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")

        self.update_manifest(change)

    def record_stage_start(self, stage: str) -> None:
        """When this launch started `stage` (epoch seconds): the report, written inside the eval stage, reads its time so far."""
        self.update_manifest(lambda data: data.setdefault("stages", {}).setdefault(stage, {}).update(started=round(time.time(), 1)))

    def record_stage_time(self, stage: str, seconds: float) -> None:
        """Wall time of the launch that finished `stage` (after a kill, only the relaunch's part), for the report and benchmarks."""

        def change(data: dict[str, Any]) -> None:
            data.setdefault("stages", {}).setdefault(stage, {})["seconds"] = round(seconds, 1)

        self.update_manifest(change)

    def stage_info(self, stage: str) -> dict[str, Any]:
        """The manifest entry of `stage`, found under its old name in runs made before a rename."""
        stages = self.manifest().get("stages", {})
        for name in (stage, *layout.legacy_names(stage)):
            if name in stages:
                return stages[name]
        return {}

    def reset_stage(self, stage: str, outputs: Iterable[str]) -> list[Path]:
        """For `force`: set the old outputs aside (renamed, never deleted) and start the stage's
        manifest entry afresh, so no count or metric of the old run survives."""
        moved = []
        for name in outputs:
            path = self.root / name
            if self.is_main and path.exists():
                target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
                path.rename(target)
                moved.append(target)

        def clear(data: dict[str, Any]) -> None:
            stages = data.setdefault("stages", {})
            for name in (stage, *layout.legacy_names(stage)):
                stages.pop(name, None)

        self.update_manifest(clear)
        self.mark_stage(stage, "pending")
        return moved

    def remove_partial_writes(self, outputs: Iterable[str]) -> list[Path]:
        """Temporary files a killed process left in the stage's output folders (its atomic writes
        never finished, so nothing reads them); removed when the stage starts again."""
        removed = []
        for name in outputs:
            directory = self.root / name
            if not self.is_main or not directory.is_dir():
                continue
            for path in directory.glob(f".*{TMP_SUFFIX}"):
                if path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    # -------------------------------------------------------------- records

    def shard_path(self, stage: str, index: int) -> Path:
        return self.stage_dir(stage) / f"{SHARD_PREFIX}{index:05d}.jsonl"

    def write_shard(self, stage: str, index: int, records: Iterable[dict[str, Any]]) -> None:
        if not self.is_main:
            return
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        atomic_write_text(self.shard_path(stage, index), lines)

    def done_shards(self, stage: str) -> set[int]:
        directory = self.stage_dir(stage)
        if not directory.is_dir():
            return set()
        done = set()
        for path in directory.glob(f"{SHARD_PREFIX}*.jsonl"):
            try:
                done.add(int(path.stem[len(SHARD_PREFIX) :]))
            except ValueError:
                continue
        return done

    def shard_files(self, stage: str) -> list[Path]:
        return sorted(self.stage_dir(stage).glob(f"{SHARD_PREFIX}*.jsonl"))

    def read_records(self, stage: str) -> list[dict[str, Any]]:
        """All records of a stage in shard order (the input order)."""
        records = []
        for path in self.shard_files(stage):
            with path.open(encoding="utf-8") as handle:
                records.extend(json.loads(line) for line in handle if line.strip())
        return records

    def require_stage(self, stage: str, *, needed_by: str, records: str | None = None) -> list[dict[str, Any]]:
        """The records of a finished earlier stage, or an error saying which stage to run first."""
        if not self.stage_done(stage):
            raise CaiError(f"{self.root}: stage {stage!r} has not finished, and {needed_by!r} needs it; run it first (stages={stage},{needed_by})")
        return self.read_records(records) if records else []


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    if size <= 0:
        raise CaiError(f"chunk_size: must be positive, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_chunked(
    store: RunStore,
    *,
    stage: str,
    records_dir: str,
    items: list[Any],
    chunk_size: int,
    work: Callable[[list[Any]], list[dict[str, Any]]],
    accelerator: Any,
    tag: str,
) -> list[dict[str, Any]]:
    """Process `items` chunk by chunk, one atomic shard each; a relaunch skips written chunks.

    All processes take part in every chunk (generation is sharded inside `work`); only the
    main process writes. Returns every record of the stage in input order.
    """
    chunks = chunked(items, chunk_size)
    done = store.done_shards(records_dir)
    if done and accelerator.is_main_process:
        print(f"[{tag}] resuming {records_dir}: {len(done)} of {len(chunks)} chunks already written")
    for index, chunk in enumerate(chunks):
        if index in done:
            continue
        if accelerator.is_main_process:
            print(f"[{tag}] {stage} chunk {index + 1}/{len(chunks)}: {len(chunk)} items")
        store.write_shard(records_dir, index, work(chunk))
        accelerator.wait_for_everyone()
    return store.read_records(records_dir)


def check_same_inputs(store: RunStore, *, stage: str, records_dir: str, fingerprint: str, per_records_dir: bool = False, force: str = "force=true", checkpoints: Path | None = None) -> None:
    """The one resume check: refuse to add shards to `records_dir` made from other inputs; remember these.

    A stage with one records directory keeps one fingerprint (`inputs`); a stage with several
    (eval: one per model's generations, scores, judgements) keeps one per directory. A training
    stage passes its `checkpoints` directory: its `checkpoint-*` folders are what a resume continues.
    A bf16 run's fingerprint carries its precision (records differ from fp32 ones; fp32 runs keep theirs).
    """
    precision = models.compute_precision()
    fingerprint = fingerprint if precision == "fp32" else f"{fingerprint}-{precision}"
    recorded = store.stage_info(stage).get("inputs")
    started = (recorded.get(records_dir) if isinstance(recorded, dict) else None) if per_records_dir else recorded
    if checkpoints is not None:
        where, resumable = checkpoints, checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    else:
        where, resumable = store.stage_dir(records_dir), bool(store.done_shards(records_dir))
    if started and started != fingerprint and resumable:
        raise CaiError(
            f"{where}: made from other inputs (prompts, models, seed, precision or settings changed) than stage {stage!r} "
            f"would use now; keep the same inputs to resume, set {force} to redo the stage (old outputs are kept aside), or use a new output_dir"
        )
    if not per_records_dir:
        store.mark_stage(stage, "running", inputs=fingerprint)
        return

    def remember(manifest: dict[str, Any]) -> None:
        entry = manifest.setdefault("stages", {}).setdefault(stage, {})
        if not isinstance(entry.get("inputs"), dict):
            entry["inputs"] = {}
        entry["inputs"][records_dir] = fingerprint
        entry.setdefault("status", "running")

    store.update_manifest(remember)
