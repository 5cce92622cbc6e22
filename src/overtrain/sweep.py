"""Sweeps: one YAML names the checkpoints and the probes; it expands into jobs that run anywhere.

```yaml
out_dir: runs/demo                 # results.sqlite, pretrain/ and report/ go here
pretrain: {...}                    # a pretrain-ladder config (model, data, train, ladder); optional
checkpoints: [path, ...]           # existing overtrain checkpoints; optional
noise: {gammas: [...], seeds: [...], mode: init, eval_tokens: 65536}
finetune: {tasks: [...], lrs: [...], seeds: [...], reg_lambdas: [0.0], steps: 100, ...}
executor: {kind: processes, workers: 2, threads_per_worker: 1}
```

Every job is keyed by a hash of its full spec; a job already in the store is never run again, so a killed
sweep resumes where it stopped and a finished one runs 0 jobs. Probe jobs depend on the pre-training job
that writes their checkpoint, and name that checkpoint by its path (computable before it exists).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from overtrain.config import apply_overrides, build_dataclass, config_to_dict, read_yaml
from overtrain.errors import OvertrainError
from overtrain.jobs import Job, register_job_kind
from overtrain.presets import apply_preset
from overtrain.probes.finetune import FinetuneConfig
from overtrain.progress import format_tokens
from overtrain.run_config import PretrainConfig, validate_pretrain_config

register_job_kind("pretrain", "overtrain.sweep_jobs:run_pretrain_job")
register_job_kind("noise", "overtrain.sweep_jobs:run_noise_job")
register_job_kind("finetune", "overtrain.sweep_jobs:run_finetune_job")


@dataclass
class NoiseSweep:
    """The Gaussian probe's grid: every checkpoint x gamma x seed (one job per checkpoint)."""

    gammas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Noise sizes, in units of each tensor's init std (mode=init)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Noise draws; the same seed is the same noise direction at every checkpoint."""
    mode: Literal["init", "relative", "absolute"] = "init"
    eval_tokens: int = 65_536
    """Held-out pre-training tokens per loss."""


@dataclass
class FinetuneSweep:
    """The fine-tuning probe's grid: every checkpoint x task x lr x seed x reg_lambda is one job."""

    tasks: list[str] = field(default_factory=lambda: ["python-code"])
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    seeds: list[int] = field(default_factory=lambda: [0])
    reg_lambdas: list[float] = field(default_factory=lambda: [0.0])
    steps: int = 100
    batch_size: int = 16
    warmup_fraction: float = 0.1
    schedule: str = "cosine"
    weight_decay: float = 0.0
    max_train: int | None = 2000
    max_heldout: int | None = 200
    max_len: int = 256
    data_path: str | None = None
    eval_tokens: int = 65_536


@dataclass
class ExecutorConfig:
    kind: Literal["in-process", "processes", "ray"] = "in-process"
    """in-process (default), processes (local worker processes), ray (a cluster; `pip install 'overtrain[ray]'`)."""
    workers: int = 2
    threads_per_worker: int = 1
    """On small CPU models two one-thread workers beat one two-thread process."""
    ray_address: str | None = None
    """Ray cluster address (``auto`` on a cluster node); None starts a local Ray."""


@dataclass
class SweepConfig:
    out_dir: str = "runs/sweep"
    pretrain: PretrainConfig | None = None
    checkpoints: list[str] = field(default_factory=list)
    noise: NoiseSweep | None = None
    finetune: FinetuneSweep | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    report: bool = True
    """Write the report (figures, HTML, markdown) when the sweep ends."""

    @property
    def store_path(self) -> Path:
        return Path(self.out_dir) / "results.sqlite"

    @property
    def report_dir(self) -> Path:
        return Path(self.out_dir) / "report"


def load_sweep_config(path: str | Path | None, overrides: list[str] | None = None) -> SweepConfig:
    tree = read_yaml(path) if path is not None else {}
    tree = apply_overrides(tree, overrides or [])
    pretrain = tree.get("pretrain")
    if isinstance(pretrain, dict):
        pretrain.setdefault("out_dir", str(Path(tree.get("out_dir", SweepConfig.out_dir)) / "pretrain"))
        if isinstance(pretrain.get("model"), dict):
            pretrain["model"] = apply_preset(pretrain["model"])
    config = build_dataclass(SweepConfig, tree)
    if config.pretrain is not None:
        validate_pretrain_config(config.pretrain)
    if config.pretrain is None and not config.checkpoints:
        raise OvertrainError("the sweep names no checkpoints", "add a `pretrain:` ladder section or a `checkpoints:` list")
    if config.noise is None and config.finetune is None and config.pretrain is None:
        raise OvertrainError("the sweep has nothing to do", "add a `noise:` or `finetune:` section")
    return config


@dataclass(frozen=True)
class PlannedCheckpoint:
    path: str
    tokens_seen: int | None
    made_by: str | None
    """Key of the pretrain job that writes it (None: it exists already)."""


def plan_jobs(config: SweepConfig) -> list[Job]:
    """Expand the sweep into jobs, pre-training first; probes depend on the checkpoint they read."""
    jobs, checkpoints = _pretrain_jobs(config)
    checkpoints += [PlannedCheckpoint(str(Path(path)), None, None) for path in config.checkpoints]
    for checkpoint in checkpoints:
        jobs += _noise_jobs(config, checkpoint) + _finetune_jobs(config, checkpoint)
    return jobs


def _pretrain_jobs(config: SweepConfig) -> tuple[list[Job], list[PlannedCheckpoint]]:
    from overtrain.checkpoints import checkpoint_folder_name
    from overtrain.pretrain import plan_ladder

    if config.pretrain is None:
        return [], []
    rungs = plan_ladder(config.pretrain)
    if config.pretrain.ladder.mode == "wsd-branches":
        return _wsd_jobs(rungs)
    jobs, checkpoints = [], []
    for rung in rungs:
        job = Job("pretrain", {"config": config_to_dict(rung.config), "branch_from": None}, label=f"pretrain {format_tokens(rung.budget_tokens)}")
        jobs.append(job)
        checkpoints.append(_final_checkpoint(rung, job.key))
    return jobs, checkpoints


def _final_checkpoint(rung, job_key: str) -> PlannedCheckpoint:
    from overtrain.checkpoints import checkpoint_folder_name

    train = rung.config.train
    tokens = train.total_steps * train.tokens_per_step
    return PlannedCheckpoint(str(Path(rung.config.out_dir) / "checkpoints" / checkpoint_folder_name(train.total_steps, tokens)), tokens, job_key)


def _wsd_jobs(rungs) -> tuple[list[Job], list[PlannedCheckpoint]]:
    """The trunk in segments, one per branch point, so each branch (and its probes) starts as soon as
    the trunk passes its branch point, in parallel with the rest of the trunk."""
    from overtrain.checkpoints import checkpoint_folder_name

    trunk, branches = rungs[0], sorted(rungs[1:], key=lambda rung: rung.branch_from_tokens)
    trunk_spec = config_to_dict(trunk.config)
    tokens_per_step = trunk.config.train.tokens_per_step
    jobs, checkpoints, previous = [], [], ()
    for rung in branches:
        start = rung.branch_from_tokens
        segment = Job("pretrain", {"config": trunk_spec, "stop_at_tokens": start}, depends_on=previous,
                      label=f"pretrain trunk to {format_tokens(start)}")
        branch_from = str(Path(trunk.config.out_dir) / "checkpoints" / checkpoint_folder_name(start // tokens_per_step, start))
        branch = Job("pretrain", {"config": config_to_dict(rung.config), "branch_from": branch_from}, depends_on=(segment.key,),
                     label=f"pretrain {format_tokens(rung.budget_tokens)} (decay branch)")
        jobs += [segment, branch]
        checkpoints.append(_final_checkpoint(rung, branch.key))
        previous = (segment.key,)
    final = Job("pretrain", {"config": trunk_spec, "stop_at_tokens": None}, depends_on=previous, label=f"pretrain {format_tokens(trunk.budget_tokens)}")
    jobs.append(final)
    checkpoints.append(_final_checkpoint(trunk, final.key))
    return jobs, checkpoints


def _noise_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    if config.noise is None:
        return []
    spec = {"checkpoint": checkpoint.path, **config_to_dict(config.noise)}
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    label = f"noise @ {format_tokens(checkpoint.tokens_seen) if checkpoint.tokens_seen else Path(checkpoint.path).name}"
    return [Job("noise", spec, depends_on=depends, label=label)]


def _finetune_jobs(config: SweepConfig, checkpoint: PlannedCheckpoint) -> list[Job]:
    sweep = config.finetune
    if sweep is None:
        return []
    shared = {k: v for k, v in config_to_dict(sweep).items() if k not in ("tasks", "lrs", "seeds", "reg_lambdas", "eval_tokens")}
    depends = (checkpoint.made_by,) if checkpoint.made_by else ()
    where = format_tokens(checkpoint.tokens_seen) if checkpoint.tokens_seen else Path(checkpoint.path).name
    jobs = []
    for task in sweep.tasks:
        for lr in sweep.lrs:
            for seed in sweep.seeds:
                for reg_lambda in sweep.reg_lambdas:
                    finetune = {**shared, "task": task, "lr": lr, "seed": seed, "reg_lambda": reg_lambda}
                    FinetuneConfig(**finetune).validate()
                    spec = {"checkpoint": checkpoint.path, "eval_tokens": sweep.eval_tokens, "finetune": finetune}
                    label = f"finetune {task} lr={lr:g} seed={seed} @ {where}"
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
        start = int(branch_from.rsplit("-tokens-", 1)[1])
    else:
        start = max((previous_stop or {}).get(key, 0) for key in job.depends_on) if job.depends_on else 0
    return int(end) - start


def finetune_config_of(spec: dict[str, Any]) -> FinetuneConfig:
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    return FinetuneConfig(**{k: v for k, v in spec["finetune"].items() if k in fields})
