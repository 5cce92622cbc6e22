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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from overtrain.config import apply_overrides, build_dataclass, read_yaml
from overtrain.errors import OvertrainError
from overtrain.model.presets import apply_preset
from overtrain.pretrain.config import PretrainConfig, validate_pretrain_config


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
