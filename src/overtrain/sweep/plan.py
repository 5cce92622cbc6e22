"""Expand a sweep into jobs: pre-training (a WSD trunk in segments, or one run per budget), then one probe
job per checkpoint and setting, each depending on the pre-training job that writes its checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overtrain.checkpoints.names import checkpoint_folder_name, parse_checkpoint_name
from overtrain.config import config_to_dict
from overtrain.errors import OvertrainError
from overtrain.pretrain.config import PretrainConfig
from overtrain.pretrain.ladder import plan_ladder
from overtrain.probes.finetune import FinetuneConfig
from overtrain.provenance import file_sha256
from overtrain.results.records import Job
from overtrain.sweep.config import ProbeData, SharpnessSweep, SweepConfig, finetune_grid, pretrain_variants
from overtrain.tasks.user_file import FILE_PREFIX, task_file_path
from overtrain.units import format_tokens


@dataclass(frozen=True)
class PlannedCheckpoint:
    path: str
    tokens_seen: int | None
    made_by: str | None
    """Key of the pretrain job that writes it (None: it exists already)."""
    factors: dict[str, Any] = field(default_factory=dict)
    """The pre-training factor values it was trained with (``pretrain_axes``), e.g. ``{"train.seed": 1}``."""
    listed_tokens: int | None = None
    """Tokens a family listing gives for a model whose own files do not record them (kept in its jobs' specs)."""


def plan_jobs(config: SweepConfig) -> list[Job]:
    """Expand the sweep into jobs, pre-training first; probes depend on the checkpoint they read."""
    jobs, checkpoints = _pretrain_jobs(config)
    checkpoints += expand_references(config.checkpoints) + family_checkpoints(config)
    for checkpoint in checkpoints:
        jobs += _noise_jobs(config, checkpoint) + _finetune_jobs(config, checkpoint) + _sharpness_jobs(config, checkpoint)
        jobs += _multimodal_jobs(config, checkpoint) + _benchmark_jobs(config, checkpoint)
    return vision_feature_jobs(config) + jobs


def family_checkpoints(config: SweepConfig) -> list[PlannedCheckpoint]:
    """The revisions the ``family:`` section selects (duplicates skipped unless asked), in training order.

    A revision overtrain did not train (a Hub branch, a foreign folder) carries its listed token count in
    ``tokens_seen``, which its jobs' specs keep (a model's own files do not say how long it was trained)."""
    if config.family is None:
        return []
    from overtrain.checkpoints.folder import is_overtrain_checkpoint
    from overtrain.families.plan import plan_family

    family = config.family
    try:
        plan = plan_family(family.source, family.select, family.include_duplicates)
    except OvertrainError as error:  # plan_family names its settings as `overtrain family` takes them (select=...)
        raise OvertrainError(_as_family_key(error.problem), error.fix and _as_family_key(error.fix)) from None
    if not plan.chosen:  # every revision flagged: the section would plan no job, and the sweep say nothing of it
        flagged = "; ".join(f"{name}: {', '.join(map(str, flags))}" for name, flags in list(plan.report.flags.items())[:3] if flags)
        raise OvertrainError(
            f"family.source {family.source} selects no revision to compute on: all {len(plan.listing.revisions)} are flagged ({flagged})",
            "set family.include_duplicates=true to keep duplicates and aliases (damaged weights are never kept), or choose another source",
        )
    return [PlannedCheckpoint(revision.reference, revision.tokens, None,
                              listed_tokens=None if revision.path is not None and is_overtrain_checkpoint(revision.path) else revision.tokens)
            for revision in plan.chosen]


def _as_family_key(text: str) -> str:
    """``select=...`` as a sweep's user writes it: ``family.select=...``."""
    return re.sub(r"(?<![\w.])select=", "family.select=", text)


def _benchmark_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    """One job per checkpoint: the ``benchmarks:`` section's tasks scored on the checkpoint as it is."""
    section = config.benchmarks
    if section is None:
        return []
    spec = {"checkpoint": checkpoint.path, "tasks": list(section.tasks), "limit": section.limit, "num_fewshot": section.num_fewshot,
            "batch_size": section.batch_size, **({"max_length": section.max_length} if section.max_length else {}), **_factors_of(checkpoint)}
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    return [Job("benchmarks", spec, depends_on=depends, label=f"benchmarks ({len(section.tasks)}) @ {_where(checkpoint)}")]


def _pretrain_jobs(config: SweepConfig) -> tuple[list[Job], list[PlannedCheckpoint]]:
    jobs, checkpoints = [], []
    for variant in pretrain_variants(config):
        variant_jobs, variant_checkpoints = _ladder_jobs(variant.config, variant.factors)
        jobs += variant_jobs
        checkpoints += variant_checkpoints
    return jobs, checkpoints


def _ladder_jobs(pretrain: PretrainConfig, factors: dict[str, Any]) -> tuple[list[Job], list[PlannedCheckpoint]]:
    rungs = plan_ladder(pretrain)
    where = "".join(f" {key.rsplit('.', 1)[-1]}={value}" for key, value in factors.items())
    tagged = {"factors": factors} if factors else {}
    if pretrain.ladder.mode == "wsd-branches":
        return _wsd_jobs(rungs, factors, where)
    jobs, checkpoints = [], []
    for rung in rungs:
        job = Job("pretrain", {"config": config_to_dict(rung.config), "branch_from": None, **tagged}, label=f"pretrain {format_tokens(rung.budget_tokens)}{where}")
        jobs.append(job)
        checkpoints.append(_final_checkpoint(rung, job.key, factors))
    return jobs, checkpoints


def _final_checkpoint(rung, job_key: str, factors: dict[str, Any]) -> PlannedCheckpoint:
    train = rung.config.train
    tokens = train.total_steps * train.tokens_per_step
    folder = Path(rung.config.out_dir) / "checkpoints" / checkpoint_folder_name(train.total_steps, tokens)
    return PlannedCheckpoint(str(folder), tokens, job_key, factors)


def _wsd_jobs(rungs, factors: dict[str, Any], where: str) -> tuple[list[Job], list[PlannedCheckpoint]]:
    """The trunk in segments, one per branch point, so each branch (and its probes) starts as soon as
    the trunk passes its branch point, in parallel with the rest of the trunk."""
    trunk, branches = rungs[0], sorted(rungs[1:], key=lambda rung: rung.branch_from_tokens)
    trunk_spec = config_to_dict(trunk.config)
    tagged = {"factors": factors} if factors else {}
    tokens_per_step = trunk.config.train.tokens_per_step
    jobs, checkpoints, previous = [], [], ()
    for rung in branches:
        start = rung.branch_from_tokens
        segment = Job("pretrain", {"config": trunk_spec, "stop_at_tokens": start, **tagged}, depends_on=previous,
                      label=f"pretrain trunk to {format_tokens(start)}{where}")
        branch_from = str(Path(trunk.config.out_dir) / "checkpoints" / checkpoint_folder_name(start // tokens_per_step, start))
        branch = Job("pretrain", {"config": config_to_dict(rung.config), "branch_from": branch_from, **tagged}, depends_on=(segment.key,),
                     label=f"pretrain {format_tokens(rung.budget_tokens)} (decay branch){where}")
        jobs += [segment, branch]
        checkpoints.append(_final_checkpoint(rung, branch.key, factors))
        previous = (segment.key,)
    final = Job("pretrain", {"config": trunk_spec, "stop_at_tokens": None, **tagged}, depends_on=previous, label=f"pretrain {format_tokens(trunk.budget_tokens)}{where}")
    jobs.append(final)
    checkpoints.append(_final_checkpoint(trunk, final.key, factors))
    return jobs, checkpoints


def expand_references(references: list[str]) -> list[PlannedCheckpoint]:
    """``checkpoints:`` entries as the models they name (checked now, so a wrong path fails the plan): a run or
    ladder folder of ours stands for its final checkpoints; a Hugging Face folder or ``hf:ORG/NAME@REV`` is
    one model (the revision, ``main`` by default, is part of the reference and so of every job key)."""
    from overtrain.checkpoints.discovery import expand_checkpoints

    found = {str(ref): ref for ref in expand_checkpoints([str(reference) for reference in references])}
    return [PlannedCheckpoint(reference, ref.tokens_seen, None) for reference, ref in found.items()]


def eval_data_of(config: SweepConfig, section: ProbeData) -> dict[str, Any]:
    """The spec entries naming the probe's evaluation text, and the field of its records that holds the text
    where that is not ``text``: none when unset, so keys of older stores stay valid."""
    eval_data = section.eval_data or config.eval_data
    if not eval_data:
        return {}
    field_entry = {"eval_text_field": section.eval_text_field} if section.eval_text_field != "text" else {}
    return {"eval_data": eval_data, **field_entry}


def _noise_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    noise = config.noise
    if noise is None:
        return []
    settings = {"gammas": noise.gammas, "seeds": noise.seeds, "mode": noise.mode, "eval_tokens": noise.eval_tokens}
    spec = {"checkpoint": checkpoint.path, **settings, **eval_data_of(config, noise), **_factors_of(checkpoint)}
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    return [Job("noise", spec, depends_on=depends, label=f"noise @ {_where(checkpoint)}")]


def sharpness_settings(section: SharpnessSweep) -> dict[str, Any]:
    """The job spec's settings of a ``sharpness:`` section: only those the requested kinds read, so changing
    (say) ``probes`` re-runs nothing when no hessian_trace is asked for."""
    kinds = list(section.kinds)
    settings: dict[str, Any] = {"kinds": kinds, "seeds": list(section.seeds), "groups": section.groups,
                                "eval_tokens": section.eval_tokens, "batch_size": section.batch_size}
    if "hessian_top" in kinds:
        settings |= {"tol": section.tol, "max_iters": section.max_iters}
    if "hessian_trace" in kinds:
        settings["probes"] = section.probes
    if "worst_case" in kinds:
        settings |= {"gammas": list(section.gammas), "steps": section.steps, "worst_tol": section.worst_tol}
    return settings


def _sharpness_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    section = config.sharpness
    if section is None:
        return []
    spec = {"checkpoint": checkpoint.path, **sharpness_settings(section), **eval_data_of(config, section), **_factors_of(checkpoint)}
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    return [Job("sharpness", spec, depends_on=depends, label=f"sharpness {','.join(section.kinds)} @ {_where(checkpoint)}")]


def _factors_of(checkpoint: PlannedCheckpoint) -> dict[str, Any]:
    """The spec entry that carries the pre-training factors into the probe's row (none without axes)."""
    listed = {"tokens_seen": checkpoint.listed_tokens} if checkpoint.listed_tokens is not None else {}
    return ({"factors": checkpoint.factors} if checkpoint.factors else {}) | listed


def _where(checkpoint: PlannedCheckpoint) -> str:
    where = format_tokens(checkpoint.tokens_seen) if checkpoint.tokens_seen else Path(checkpoint.path).name
    return where + "".join(f" {key.rsplit('.', 1)[-1]}={value}" for key, value in checkpoint.factors.items())


def _finetune_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    section = config.finetune
    if section is None:
        return []
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    shared = {"eval_tokens": section.eval_tokens, **eval_data_of(config, section), **_factors_of(checkpoint)}
    jobs = []
    for finetune in finetune_grid(section):
        spec = {"checkpoint": checkpoint.path, "finetune": finetune_spec(finetune), **task_file_of(finetune.task), **shared}
        label = f"finetune {finetune.task} lr={finetune.lr:g}{remedy_label(finetune)} seed={finetune.seed} @ {_where(checkpoint)}"
        jobs.append(Job("finetune", spec, depends_on=depends, label=label))
    return jobs


def remedy_label(finetune: FinetuneConfig) -> str:
    """The remedies a run uses, as they read in a job label (empty for plain fine-tuning)."""
    parts = [f" lambda={finetune.reg_lambda:g}" if finetune.reg_lambda else "",
             f" replay={finetune.replay_fraction:g}" if finetune.replay_fraction else "",
             f" lp_steps={finetune.linear_probe_steps}" if finetune.linear_probe_steps else "",
             f" wise={','.join(f'{alpha:g}' for alpha in finetune.wise_alphas)}" if finetune.wise_alphas else ""]
    return "".join(parts)


OMITTED_AT_DEFAULT = ("grad_clip", "eval_batch_size", "replay_fraction", "linear_probe_steps", "wise_alphas",
                      "precision", "gradient_checkpointing", "device", "distributed", "micro_batch_size", "benchmarks", "benchmark_limit",
                      "benchmark_max_length")
"""FinetuneConfig fields a sweep did not expose before: left out of the job spec at their defaults, so the
job keys of existing stores stay what they were (a changed value is in the spec, hence in the key)."""
OMITTED_AT_DEFAULT += ("pack",)  # instruction tuning's packing (docs/instruction_tuning.md)


def finetune_spec(finetune: FinetuneConfig) -> dict[str, Any]:
    """The ``finetune`` entry of a job spec: every setting of the run."""
    settings = config_to_dict(finetune)
    defaults = FinetuneConfig()
    return {name: value for name, value in settings.items() if not (name in OMITTED_AT_DEFAULT and value == getattr(defaults, name))}


MULTIMODAL_OMITTED_AT_DEFAULT = ("benchmarks", "benchmark_limit", "benchmark_max_length")
"""MultimodalConfig fields added after its first sweeps: left out of the job spec at their defaults (keys unchanged)."""


def multimodal_spec(settings: Any) -> dict[str, Any]:
    """The ``multimodal`` entry of a job spec: every setting of the run."""
    defaults = type(settings)()
    return {name: value for name, value in config_to_dict(settings).items()
            if not (name in MULTIMODAL_OMITTED_AT_DEFAULT and value == getattr(defaults, name))}


def task_file_of(task: str) -> dict[str, Any]:
    """For ``file:PATH`` tasks, the file's sha256 (an edited file is a new job, never a stored row)."""
    return {"task_sha256": file_sha256(task_file_path(task))} if task.startswith(FILE_PREFIX) else {}


def describe_plan(jobs: list[Job]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.kind] = counts.get(job.kind, 0) + 1
    pretrain_tokens = sum(pretrain_tokens_by_job(jobs).values())
    parts = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    return f"{len(jobs)} jobs ({parts}); {format_tokens(pretrain_tokens)} pre-training tokens"


def pretrain_tokens_by_job(jobs: list[Job]) -> dict[str, int]:
    """Tokens each pre-training job trains (trunk segments count from the previous segment's stop)."""
    stops = {job.key: job.spec.get("stop_at_tokens") or 0 for job in jobs if job.kind == "pretrain"}
    return {job.key: _pretrain_tokens_of(job, stops) for job in jobs if job.kind == "pretrain"}


def _pretrain_tokens_of(job: Job, previous_stop: dict[str, int] | None = None) -> int:
    """Tokens this pre-training job trains: a branch from its branch point, a trunk segment from the
    previous segment's stop (``previous_stop`` maps a job key to where it stopped)."""
    train = job.spec["config"]["train"]
    end = job.spec.get("stop_at_tokens") or int(train["max_tokens"])
    branch_from = job.spec.get("branch_from")
    if branch_from:
        start = parse_checkpoint_name(branch_from)[1]
    else:
        start = max((previous_stop or {}).get(key, 0) for key in job.depends_on) if job.depends_on else 0
    return int(end) - start


def vision_feature_jobs(config: SweepConfig) -> list[Job]:
    """The one job that computes (and caches) the frozen encoder's features of every image a ``multimodal:``
    section uses; every multimodal job depends on it, so no two workers encode the same images."""
    from overtrain.multimodal.tuning import data_settings_of
    from overtrain.sweep.config import multimodal_grid

    if config.multimodal is None:
        return []
    settings = data_settings_of(multimodal_grid(config.multimodal)[0])
    return [Job("vision-features", settings, label=f"vision features {settings['encoder']} {'+'.join(settings['datasets'])}")]


def _multimodal_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    from overtrain.sweep.config import multimodal_grid

    section = config.multimodal
    if section is None:
        return []
    depends = tuple(filter(None, [checkpoint.made_by, *(job.key for job in vision_feature_jobs(config))]))
    shared = {"eval_tokens": section.eval_tokens, **eval_data_of(config, section), **_factors_of(checkpoint)}
    jobs = []
    for settings in multimodal_grid(section):
        spec = {"checkpoint": checkpoint.path, "multimodal": multimodal_spec(settings), **shared}
        jobs.append(Job("multimodal", spec, depends_on=depends, label=f"multimodal lr={settings.lr:g} seed={settings.seed} @ {_where(checkpoint)}"))
    return jobs
