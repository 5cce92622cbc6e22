"""Expand a sweep into jobs: pre-training (a WSD trunk in segments, or one run per budget), then one probe
job per checkpoint and setting, each depending on the pre-training job that writes its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overtrain.checkpoints.names import checkpoint_folder_name, parse_checkpoint_name
from overtrain.config import config_to_dict
from overtrain.pretrain.ladder import plan_ladder
from overtrain.probes.finetune import FinetuneConfig
from overtrain.results.records import Job
from overtrain.pretrain.config import PretrainConfig
from overtrain.sweep.config import SweepConfig, pretrain_variants
from overtrain.units import format_tokens


@dataclass(frozen=True)
class PlannedCheckpoint:
    path: str
    tokens_seen: int | None
    made_by: str | None
    """Key of the pretrain job that writes it (None: it exists already)."""
    factors: dict[str, Any] = field(default_factory=dict)
    """The pre-training factor values it was trained with (``pretrain_axes``), e.g. ``{"train.seed": 1}``."""


def plan_jobs(config: SweepConfig) -> list[Job]:
    """Expand the sweep into jobs, pre-training first; probes depend on the checkpoint they read."""
    jobs, checkpoints = _pretrain_jobs(config)
    checkpoints += [PlannedCheckpoint(str(Path(path)), None, None) for path in config.checkpoints]
    for checkpoint in checkpoints:
        jobs += _noise_jobs(config, checkpoint) + _finetune_jobs(config, checkpoint)
    return jobs


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


def _noise_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    if config.noise is None:
        return []
    spec = {"checkpoint": checkpoint.path, **config_to_dict(config.noise), **_factors_of(checkpoint)}
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    return [Job("noise", spec, depends_on=depends, label=f"noise @ {_where(checkpoint)}")]


def _factors_of(checkpoint: PlannedCheckpoint) -> dict[str, Any]:
    """The spec entry that carries the pre-training factors into the probe's row (none without axes)."""
    return {"factors": checkpoint.factors} if checkpoint.factors else {}


def _where(checkpoint: PlannedCheckpoint) -> str:
    where = format_tokens(checkpoint.tokens_seen) if checkpoint.tokens_seen else Path(checkpoint.path).name
    return where + "".join(f" {key.rsplit('.', 1)[-1]}={value}" for key, value in checkpoint.factors.items())


def _finetune_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    sweep = config.finetune
    if sweep is None:
        return []
    shared = {k: v for k, v in config_to_dict(sweep).items() if k not in ("tasks", "lrs", "seeds", "reg_lambdas", "eval_tokens")}
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    jobs = []
    for task in sweep.tasks:
        for lr in sweep.lrs:
            for seed in sweep.seeds:
                for reg_lambda in sweep.reg_lambdas:
                    finetune = {**shared, "task": task, "lr": lr, "seed": seed, "reg_lambda": reg_lambda}
                    FinetuneConfig(**finetune).validate()
                    spec = {"checkpoint": checkpoint.path, "eval_tokens": sweep.eval_tokens, "finetune": finetune, **_factors_of(checkpoint)}
                    label = f"finetune {task} lr={lr:g} seed={seed} @ {_where(checkpoint)}"
                    jobs.append(Job("finetune", spec, depends_on=depends, label=label))
    return jobs


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
