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

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from overtrain.config import apply_overrides, build_dataclass, config_to_dict, read_yaml
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
    pretrain_axes: dict[str, Any] = field(default_factory=dict)
    """Pre-training factors to cross, shaped like the ``pretrain:`` section with a list of values per key,
    e.g. ``{train: {seed: [0, 1, 2], weight_decay: [0.1, 1.0]}}`` (override: ``pretrain_axes.train.seed=[0,1,2]``).
    Every combination is its own ladder, in ``out_dir/pretrain/<key=value,...>``; the report draws one curve
    family per value of the factors other than the seed, with intervals over pre-training seeds."""
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
    pretrain_variants(config)  # every factor combination is a valid pre-training config, checked now
    if config.pretrain is None and not config.checkpoints:
        raise OvertrainError("the sweep names no checkpoints", "add a `pretrain:` ladder section or a `checkpoints:` list")
    if config.noise is None and config.finetune is None and config.pretrain is None:
        raise OvertrainError("the sweep has nothing to do", "add a `noise:` or `finetune:` section")
    return config


@dataclass(frozen=True)
class PretrainVariant:
    """One combination of the pre-training factors: its values (dotted key -> value) and its ladder."""

    factors: dict[str, Any]
    config: PretrainConfig


def pretrain_axes_flat(axes: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """``{train: {seed: [0, 1]}}`` -> ``{"train.seed": [0, 1]}``; each leaf must be a non-empty list of distinct values."""
    flat: dict[str, list[Any]] = {}
    for key, value in axes.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(pretrain_axes_flat(value, dotted + "."))
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            raise OvertrainError(f"pretrain_axes.{dotted} is an empty list", f"give it at least one value, e.g. pretrain_axes.{dotted}=[0,1,2]")
        if len({repr(v) for v in values}) != len(values):
            raise OvertrainError(f"pretrain_axes.{dotted} = {values} repeats a value", "list each value once")
        flat[dotted] = values
    return flat


def pretrain_variants(config: SweepConfig) -> list[PretrainVariant]:
    """The sweep's ladders: one per combination of ``pretrain_axes`` (just ``pretrain`` when there are none)."""
    if config.pretrain is None:
        if config.pretrain_axes:
            raise OvertrainError("pretrain_axes is set but the sweep has no `pretrain:` section", "add a pretrain ladder, or remove pretrain_axes")
        return []
    axes = pretrain_axes_flat(config.pretrain_axes)
    if not axes:
        return [PretrainVariant({}, config.pretrain)]
    base_tree = config_to_dict(config.pretrain)
    variants = []
    for values in itertools.product(*axes.values()):
        factors = dict(zip(axes, values))
        tree = copy.deepcopy(base_tree)
        for key, value in factors.items():
            _set_dotted(tree, key, value)
        tree["out_dir"] = str(Path(config.pretrain.out_dir) / variant_folder_name(factors))
        variant = build_dataclass(PretrainConfig, tree, "pretrain.")
        validate_pretrain_config(variant)
        variants.append(PretrainVariant(factors, variant))
    return variants


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, leaf = dotted.split(".")
    for section in sections:
        tree = tree.setdefault(section, {})
        if not isinstance(tree, dict):
            raise OvertrainError(f"pretrain_axes.{dotted}: {section} is a value, not a section", "name a key such as train.seed")
    tree[leaf] = value


def variant_folder_name(factors: dict[str, Any]) -> str:
    """``{"train.weight_decay": 1.0, "train.seed": 2}`` -> ``weight_decay=1.0,seed=2``."""
    return ",".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in factors.items())
