"""What a sweep's jobs would refuse later, refused before its store is opened (and in ``--dry-run``).

A job that fails on its input fails alone, after its predecessors ran, and leaves a store behind; a user
who asked for ``--dry-run`` was told all was well. These checks are the cheap ones that need no model:

- a pre-training job's run folder that already holds a run bound to other settings (a sweep rerun with a
  changed pre-training setting into the same ``out_dir``: every such job would be refused);
- a checkpoint the sweep does not train itself that is missing, incomplete or truncated (its safetensors
  headers are read, not its tensors: a same-size corruption is still caught by the job's checksum check);
- a pre-training corpus or tokenizer path that the run would refuse (missing, not a type it reads, empty);
- ``eval_data`` paths that do not exist;
- a model not trained by overtrain (a Hugging Face folder or ``hf:`` reference) probed without
  ``eval_data``: it has no held-out split of its pre-training text to measure the loss on;
- sharpness groups that match no tensor of an overtrain model the sweep probes;
- benchmark names that lm-evaluation-harness does not know (asked only when a job scores benchmarks).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from overtrain.errors import OvertrainError, SettingProblems
from overtrain.results.records import Job

SHOWN_PER_PROBLEM = 3
"""Examples named per kind of problem; the count says how many there are."""


def check_sweep_inputs(jobs: list[Job], out_dir: Path, jobs_run_here: bool = True, finished: Iterable[str] = ()) -> None:
    """Raise one :class:`OvertrainError` naming every input problem of the jobs that will run: ``jobs`` less the
    ``finished`` ones (their keys; a finished sweep whose corpus was since moved reruns nothing, and is not
    refused). Nothing is written. ``jobs_run_here``: the jobs run on this machine (not on a Ray cluster), so
    its devices are theirs."""
    problems = SettingProblems()
    finished = set(finished)
    pending = [job for job in jobs if job.key not in finished]
    devices = _cuda_without_a_gpu(pending) if jobs_run_here else []
    for message, fix in (*_pretrain_folder_conflicts(pending, out_dir), *_unreadable_pretraining_data(pending),
                         *_damaged_checkpoints(pending, jobs), *_missing_eval_data(pending), *_foreign_models_without_eval_data(pending),
                         *_sharpness_groups_matching_nothing(pending, jobs), *_unknown_benchmarks(pending), *devices):
        problems.add_text(message, fix)
    problems.raise_if_any(summary="inputs of this sweep would be refused by its jobs")


def _pretrain_folder_conflicts(jobs: list[Job], out_dir: Path) -> list[tuple[str, str]]:
    from overtrain.config import build_dataclass, config_to_dict
    from overtrain.errors import OvertrainError
    from overtrain.pretrain.binding import differences_from_binding
    from overtrain.pretrain.config import PretrainConfig
    from overtrain.pretrain.loop import newest_checkpoint, refuse_milestones_already_passed

    conflicts: dict[Path, list[str]] = {}
    passed_milestones: list[tuple[str, str]] = []
    for job in jobs:
        if job.kind != "pretrain":
            continue
        config = build_dataclass(PretrainConfig, dict(job.spec["config"]))
        folder = Path(config.out_dir)
        if folder in conflicts or config.train.extend:
            continue
        _, differences = differences_from_binding(folder, config_to_dict(config))
        if differences:
            conflicts[folder] = differences
        elif folder.is_dir() and not passed_milestones:  # the run would refuse checkpoints it trained past (one message)
            try:
                refuse_milestones_already_passed(config, folder, newest_checkpoint(folder, hash_files=False))
            except OvertrainError as error:
                passed_milestones.append((error.problem, error.fix or ""))
    if not conflicts:
        return passed_milestones
    examples = "; ".join(f"{folder}: {', '.join(differences[:2])}" for folder, differences in list(conflicts.items())[:SHOWN_PER_PROBLEM])
    return [(
        f"{len(conflicts)} pre-training run folder(s) of this sweep already hold runs with other settings ({examples})",
        f"a sweep's pre-training settings are part of its runs: give this sweep its own out_dir (not {out_dir}), "
        "set the settings back, or delete those run folders to train them anew",
    ), *passed_milestones]


def _unreadable_pretraining_data(jobs: list[Job]) -> list[tuple[str, str]]:
    """Each distinct corpus or tokenizer of the pre-training jobs that the run would refuse before reading it
    (a missing path, a file type that is not read, an empty corpus, a tokenizer folder without its files)."""
    from overtrain.data.corpus import is_local_source, require_local_source
    from overtrain.data.tokenizer import require_local_tokenizer

    data = [job.spec["config"].get("data") or {} for job in jobs if job.kind == "pretrain"]
    corpora = dict.fromkeys(str(section.get("corpus", "embedded")) for section in data)
    tokenizers = dict.fromkeys(str(section.get("tokenizer", "bpe")) for section in data)
    checks = [(require_local_source, corpus) for corpus in corpora if is_local_source(corpus)]
    checks += [(require_local_tokenizer, tokenizer) for tokenizer in tokenizers]
    problems = []
    for check, source in checks:
        try:
            check(source)
        except OvertrainError as refused:
            problems.append((refused.problem, refused.fix))
    return problems


def _sharpness_groups_matching_nothing(jobs: list[Job], every_job: list[Job]) -> list[tuple[str, str]]:
    """Sharpness groups that select no tensor of an overtrain model this sweep probes (trained by one of its
    pre-training jobs, or a checkpoint with overtrain.json): the job would load the model and refuse them.
    A model from elsewhere names its tensors only once loaded, so its groups are left to the job."""
    from overtrain.probes.sharpness import ALL_PARAMETERS, group_globs

    unmatched: dict[str, list[str]] = {}
    by_key = {job.key: job for job in every_job}
    for job in jobs:
        if job.kind != "sharpness" or not job.spec.get("groups"):
            continue
        names = _overtrain_parameter_names(job, by_key)
        if names is None:
            continue
        for group in job.spec["groups"]:
            if group != ALL_PARAMETERS and not any(fnmatch.fnmatch(name, glob) for name in names for glob in group_globs(group)):
                unmatched.setdefault(group, []).append(str(job.spec["checkpoint"]))
    return [(f"sharpness group {group!r} matches no tensor of {len(checkpoints)} model(s) of this sweep (e.g. {checkpoints[0]})",
             "use a group name (all, embeddings, attention, mlp, norms) or a glob over names like 'model.layers.0.mlp.up_proj.weight'")
            for group, checkpoints in unmatched.items()]


def _overtrain_parameter_names(job: Job, jobs_by_key: dict[str, Job]) -> list[str] | None:
    """The parameter names of the overtrain model ``job`` probes, from its settings alone; None if unknown."""
    from overtrain.checkpoints.folder import is_overtrain_checkpoint, read_checkpoint_info
    from overtrain.config import build_dataclass
    from overtrain.model.config import ModelConfig, parameter_names
    from overtrain.pretrain.config import PretrainConfig

    producers = [jobs_by_key[key] for key in job.depends_on if key in jobs_by_key and jobs_by_key[key].kind == "pretrain"]
    try:
        if producers:
            return parameter_names(build_dataclass(PretrainConfig, dict(producers[0].spec["config"])).model)
        folder = Path(str(job.spec["checkpoint"]))
        if folder.is_dir() and is_overtrain_checkpoint(folder):
            return parameter_names(build_dataclass(ModelConfig, dict(read_checkpoint_info(folder).run_config["model"])))
    except OvertrainError:
        return None  # a damaged checkpoint is named by its own check
    return None


def _damaged_checkpoints(jobs: list[Job], every_job: list[Job]) -> list[tuple[str, str]]:
    """Checkpoints named by ``jobs`` that do not wait for a pre-training job of this sweep (those exist now)."""
    from overtrain.checkpoints.hub import is_hub_reference

    produced_here = {job.key for job in every_job if job.kind == "pretrain"}
    references = sorted({str(job.spec["checkpoint"]) for job in jobs
                         if "checkpoint" in job.spec and not produced_here.intersection(job.depends_on)})
    damaged = [(reference, damage) for reference in references if not is_hub_reference(reference)
               for damage in [_checkpoint_damage(Path(reference))] if damage]
    if not damaged:
        return []
    examples = "; ".join(f"{reference}: {damage.problem}" for reference, damage in damaged[:SHOWN_PER_PROBLEM])
    specific = list(dict.fromkeys(damage.fix for _, damage in damaged if damage.fix))  # e.g. the command that converts pickles
    return [(f"{len(damaged)} checkpoint(s) cannot be read ({examples})",
             "; ".join([*specific[:2], "else restore or re-download those checkpoints, or leave them out of the sweep"]))]


def _checkpoint_damage(folder: Path) -> OvertrainError | None:
    """Why ``folder`` cannot be a checkpoint (missing, no config.json or one that is not JSON, a missing or
    truncated safetensors file), with its own fix where the check has one (converting pickled weights), or
    None. Reads only the files' headers and config.json."""
    from overtrain.checkpoints.foreign import safetensors_files

    if not folder.exists():
        return OvertrainError("it does not exist")
    if folder.is_file():
        return None  # a single weights file is the job's to judge
    from overtrain.checkpoints.folder import REQUIRED_FILES, is_overtrain_checkpoint, safetensors_header_problem

    try:
        ours = is_overtrain_checkpoint(folder)
    except OvertrainError as error:  # one of ours that lost its metadata
        return error
    required = REQUIRED_FILES if ours else ("config.json",)  # ours, or a Hugging Face folder
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        return OvertrainError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    if not ours and (problem := _json_object_problem(folder / "config.json")):
        return OvertrainError(problem)
    try:
        weights = safetensors_files(folder)  # as the loaders find them: a shard index, shards, pickles refused
    except OvertrainError as error:
        return error
    problem = next(filter(None, map(safetensors_header_problem, weights)), None) or _small_file_damage(folder)
    return OvertrainError(problem) if problem else None


def _json_object_problem(path: Path) -> str | None:
    """Why ``path`` is not a JSON object (transformers reads a model's config.json as one), or None."""
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{path.name} is not readable JSON ({type(error).__name__}: {error})"
    return None if isinstance(parsed, dict) else f"{path.name} holds a JSON {type(parsed).__name__}, not an object"


def _small_file_damage(folder: Path) -> str | None:
    """Which of our checkpoint's JSON files (config.json, tokenizer.json: small, so hashed here) no longer
    matches the checksum its metadata records, or None; the run refuses such a checkpoint when it loads it."""
    from overtrain.checkpoints.folder import JSON_FILES, is_overtrain_checkpoint, read_checkpoint_info
    from overtrain.provenance import file_sha256

    if not is_overtrain_checkpoint(folder):
        return None
    try:
        checksums = read_checkpoint_info(folder).checksums
    except OvertrainError as error:
        return error.problem
    changed = [name for name in JSON_FILES if name in checksums and file_sha256(folder / name) != checksums[name]]
    return f"{', '.join(changed)} {'does' if len(changed) == 1 else 'do'} not match the recorded checksum" if changed else None


def _cuda_without_a_gpu(jobs: Iterable[Job]) -> list[tuple[str, str]]:
    """Jobs that ask for device=cuda or cuda:N (pre-training or fine-tuning) where torch sees no GPU: each
    would fail after loading its model. Whether a device is refused is the runs' own test (resolve_device)."""
    from overtrain.pretrain.loop import resolve_device

    by_device: dict[str, int] = {}
    for job in jobs:
        device = str(_device_of(job.spec))
        by_device[device] = by_device.get(device, 0) + 1
    problems = []
    for device, count in by_device.items():
        try:
            resolve_device(device)
        except OvertrainError as refused:
            problems.append((f"{count} job(s) ask for device={device} but torch sees no GPU", refused.fix))
    return problems


def _device_of(spec: dict[str, Any]) -> object:
    """The device a job's spec names: a pre-training job's config, or its fine-tuning settings."""
    for section in ("config", "finetune"):
        if isinstance(spec.get(section), dict) and "device" in spec[section]:
            return spec[section]["device"]
    return spec.get("device", "auto")


def _missing_eval_data(jobs: Iterable[Job]) -> list[tuple[str, str]]:
    """Local eval_data that the jobs could not read: missing, or (as the run would find on opening it) a file of a
    type that is not read, an empty file, or a folder with nothing to read; from names and sizes alone."""
    from overtrain.data.corpus import require_local_source

    local = sorted({path for job in jobs for path in [_eval_data_of(job.spec)] if path and not path.startswith("hf:")})
    missing = [path for path in local if not Path(path).expanduser().exists()]
    problems = [(f"eval_data {', '.join(missing[:SHOWN_PER_PROBLEM])} does not exist",
                 "pass a .txt or .jsonl file, a folder of them, or hf:NAME[:CONFIG] as eval_data")] if missing else []
    for path in (path for path in local if path not in missing):
        try:
            require_local_source(path)
        except OvertrainError as error:
            problems.append((f"eval_data: {error.problem}", error.fix or ""))
    return problems


def _foreign_models_without_eval_data(jobs: Iterable[Job]) -> list[tuple[str, str]]:
    """Models that are not overtrain checkpoints, named by jobs that measure a pre-training loss
    (``eval_tokens`` in their spec) with no ``eval_data``: the job would refuse them after loading."""
    from overtrain.checkpoints.folder import is_overtrain_checkpoint
    from overtrain.checkpoints.hub import is_hub_reference
    from overtrain.probes.target import FOREIGN_EVAL_DATA_FIX

    def foreign(reference: str) -> bool:
        folder = Path(reference).expanduser()
        try:
            return is_hub_reference(reference) or (folder.is_dir() and not is_overtrain_checkpoint(folder))
        except OvertrainError:  # ours, without its metadata: the damage check names it
            return False

    references = sorted({str(job.spec["checkpoint"]) for job in jobs
                         if "checkpoint" in job.spec and "eval_tokens" in job.spec and not _eval_data_of(job.spec)})
    without = [reference for reference in references if foreign(reference)]
    if not without:
        return []
    return [(f"{', '.join(without[:SHOWN_PER_PROBLEM])}{' and others' if len(without) > SHOWN_PER_PROBLEM else ''} "
             f"{'was' if len(without) == 1 else 'were'} not trained by overtrain, so there is no held-out split of "
             "the pre-training text to measure the loss on", FOREIGN_EVAL_DATA_FIX)]


def _unknown_benchmarks(jobs: Iterable[Job]) -> list[tuple[str, str]]:
    """The harness's own error for benchmark names it does not know, from the benchmark jobs' ``tasks``
    and the fine-tuning and multimodal jobs' ``benchmarks`` (scored after tuning)."""
    from overtrain.probes.benchmarks import harness_task_names
    from overtrain.probes.harness import check_harness_tasks

    benchmarks = sorted({str(name) for job in jobs for name in _benchmarks_of(job)})
    if not benchmarks:
        return []
    try:
        check_harness_tasks([task for benchmark in benchmarks for task in harness_task_names(benchmark)])
    except OvertrainError as error:
        return [(error.problem, error.fix or "")]
    return []


def _benchmarks_of(job: Job) -> list[Any]:
    if job.kind == "benchmarks":
        return list(job.spec.get("tasks") or [])
    if job.kind in ("finetune", "multimodal"):  # scored on the tuned model's LM part
        return list(job.spec.get(job.kind, {}).get("benchmarks") or [])
    return []


def _eval_data_of(spec: dict[str, Any]) -> str | None:
    value = spec.get("eval_data")
    return str(value) if value else None
