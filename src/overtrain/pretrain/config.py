"""The settings of a pre-training run, as typed dataclasses with one docstring per field.

Durations are in tokens, never steps: ``train.max_tokens`` is the budget, and steps follow from
``tokens_per_step = batch_size * seq_len``. ``overtrain pretrain CONFIG --dry-run`` prints the resolved
tree and the token arithmetic.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from overtrain.config import OMITTED_AT_DEFAULT, TRANSIENT, apply_overrides, build_dataclass, parse_override, read_yaml
from overtrain.data.config import DataConfig, tokenizer_problems
from overtrain.data.synthetic import long_tail_problems
from overtrain.errors import OvertrainError, SettingProblems
from overtrain.model.config import ModelConfig, parameter_names
from overtrain.model.presets import apply_preset

ScheduleName = Literal["cosine", "linear", "constant", "wsd"]
LadderMode = Literal["cosine-per-budget", "wsd-branches"]


@dataclass
class TrainConfig:
    """The optimization of one run; every duration is in tokens."""

    max_tokens: int = 2_000_000
    """Token budget of the run; the learning rate reaches its end value exactly here."""
    batch_size: int = 32
    """Sequences per optimizer step, summed over all data-parallel processes and accumulation steps."""
    seq_len: int = 128
    """Tokens per training sequence."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (per process); trades memory for time."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.0
    """End learning rate as a fraction of the peak (0 anneals to zero, as the paper does)."""
    warmup_tokens: int = 100_000
    """Linear warmup length."""
    schedule: ScheduleName = "cosine"
    """Learning-rate shape after warmup: cosine, linear, constant or wsd (warmup-stable-decay)."""
    decay_fraction: float = 0.2
    """For ``wsd``: fraction of ``max_tokens`` spent in the final linear decay."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices (never on norms)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """Autocast precision of matrix products (weights and optimizer state stay fp32). ``auto`` picks bf16
    on GPUs and on CPUs with AMX, where it is faster, and fp32 on other CPUs, where bf16 measured slower
    (2.2x slower for the nano step on an AVX512-BF16 Xeon without AMX; see overtrain.precision)."""
    compile: bool | Literal["auto"] = "auto"
    """Compile the model and loss with torch.compile (on CPU also overtrain's kernels: attention with the
    rotary embedding and the q/k/v products fused, and the output layer fused with the loss; in fp32, the
    products by oneDNN where it measures clearly faster than torch's BLAS (``cpu_products``)): ~1.8x the steps
    per second at the nano shape (~2.2x on an AMD Zen 5, ~1.6x on a Zen 4), for a slower start
    (~20 s of one core there; ~3 s once inductor's on-disk cache is warm). ``auto`` (the default) compiles where that pays: single-process runs of at least 500 steps in all (the run's whole
    length, not what is left, so a resumed run or a WSD trunk segment rounds like the uninterrupted run).
    Compiled and eager steps agree to float rounding, not bitwise: a WSD branch of fewer than 500 steps
    runs eager after its compiled trunk, so it matches a standalone run of its budget (eager) to rounding
    only. The demo and study recipes pin ``false``: their published numbers, and the keys of their stored
    jobs, are eager."""
    cpu_products: Literal["auto", "onednn", "blas", "brgemm"] = field(default="auto", metadata=OMITTED_AT_DEFAULT)
    """Which fp32 GEMM library a compiled CPU run makes its products with: ``auto`` (the default) times them
    at the model's shape when the run starts and takes the fastest (overtrain.model.cpu_linear.ProductTiming):
    ``blas`` (torch's BLAS sgemm, MKL in the x86 wheels) or ``brgemm`` (oneDNN's brgemm micro-kernel) inside
    overtrain's blocked attention, MLP and loss kernels, or ``onednn`` making each product whole where that
    is clearly faster still. Naming one pins it, so that fresh runs on one machine, the jobs of a sweep among
    them, round alike. They agree to float rounding. At ``auto`` a resumed run or a WSD branch keeps the library its checkpoint names (and
    continues bitwise); a pin takes its own, and the log says when that differs from the checkpoint's. Under
    torchrun every rank takes rank 0's choice. Eager and bf16 runs make their products with torch's
    operations whatever this says; a library pinned where it cannot be used is refused."""
    seed: int = 0
    """Seeds the initialization and the order of training batches."""
    eval_every_tokens: int = 500_000
    """Held-out loss is measured and logged to metrics.jsonl at this interval (and at the end)."""
    eval_tokens: int = 65_536
    """Held-out tokens per evaluation: a fixed, seeded set, the same for every checkpoint."""
    checkpoint_every_tokens: int = 0
    """Write a permanent checkpoint at every multiple of this many tokens (0: only at the end)."""
    checkpoint_at_tokens: list[int] = field(default_factory=list)
    """Extra permanent checkpoints at these token counts (WSD ladders branch from them)."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    extend: bool = field(default=False, metadata=TRANSIENT)
    """Continue an existing run in ``out_dir`` although these settings differ from the ones it was started
    with (e.g. a larger ``max_tokens``): training goes on from its newest checkpoint under the new settings.
    An instruction for this invocation, not a setting: never saved in config.yaml, checkpoints or hashes."""

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        return self.max_tokens // self.tokens_per_step


@dataclass
class LadderConfig:
    """A family of runs at increasing token budgets (the paper's controlled experiment)."""

    budgets_tokens: list[int] = field(default_factory=list)
    """Token budgets; each becomes its own run (``cosine-per-budget``) or a decay branch (``wsd-branches``)."""
    mode: LadderMode = "cosine-per-budget"
    """``cosine-per-budget``: one run per budget, annealed to zero at its end (the paper's protocol).
    ``wsd-branches``: one warmup-stable run, with a linear decay branched off for each budget (cheaper)."""


@dataclass
class PretrainConfig:
    """Everything one ``overtrain pretrain`` (or ``pretrain-ladder``) invocation needs."""

    out_dir: str = "runs/pretrain"
    """Run folder: checkpoints/, metrics.jsonl, config.yaml. An existing run there is resumed."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu`` or ``cuda``."""


DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def validate_pretrain_config(config: PretrainConfig, *, as_written: bool = False, key_prefix: str = "") -> None:
    """Reject settings that would fail later (or, worse, run and mean nothing), before any compute.

    Every problem is collected, and all of them are raised together as one :class:`OvertrainError`.
    ``as_written``: ``config`` is a single run as the user wrote it, so every ``train.checkpoint_at_tokens``
    must fall within its ``train.max_tokens``. The rungs a ladder plans are checked without it: they share
    the ladder's checkpoint list, and a smaller rung skips the checkpoints past its budget (the ladder
    itself is checked against its largest budget). ``key_prefix`` (a sweep's ``pretrain.``) is put before
    the keys the problems name.
    """
    sections = tuple(item.name for item in fields(PretrainConfig) if is_dataclass(getattr(config, item.name)))
    problems = SettingProblems(key_prefix, sections=sections)
    _check_model(config.model, problems)
    _check_data(config.data, problems)
    _check_train(config.train, problems)
    if not DEVICE_PATTERN.match(config.device):
        problems.add("device", config.device, "auto, cpu, cuda or cuda:N")
    budgets = config.ladder.budgets_tokens
    if budgets:  # a ladder's budgets replace train.max_tokens
        if len(set(budgets)) != len(budgets):
            problems.add_text(f"ladder.budgets_tokens={budgets} repeats a value (the same run twice)",
                              "list each value of ladder.budgets_tokens once")
        else:
            _check_budgets_train_different_steps(budgets, config.train, problems)
        for budget in budgets:
            _check_budget(budget, "ladder.budgets_tokens", config.train, problems)
        _check_checkpoints_within(max(budgets), "the largest ladder.budgets_tokens", config.train, problems)
    else:
        _check_budget(config.train.max_tokens, "train.max_tokens", config.train, problems)
        if as_written:
            _check_checkpoints_within(config.train.max_tokens, "train.max_tokens", config.train, problems)
    problems.raise_if_any()


def _check_budgets_train_different_steps(budgets: list[int], train: TrainConfig, problems: SettingProblems) -> None:
    """Budgets that round down to the same whole number of steps train the same run twice (identical weights,
    two points at one x): refused, naming them."""
    if train.tokens_per_step <= 0 or not all(_is_number(budget) for budget in budgets):
        return  # named by the other checks
    by_steps: dict[int, list[int]] = {}
    for budget in budgets:
        by_steps.setdefault(int(budget) // train.tokens_per_step, []).append(budget)
    for steps, same in by_steps.items():
        if len(same) > 1:
            problems.add_text(
                f"ladder.budgets_tokens {', '.join(f'{b:,}' for b in same)} {'both' if len(same) == 2 else 'all'} train {steps:,} steps of {train.tokens_per_step:,} "
                f"tokens ({steps * train.tokens_per_step:,} tokens): the same run twice",
                f"give budgets at least one step ({train.tokens_per_step:,} tokens) apart",
            )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_model(model: ModelConfig, problems: SettingProblems) -> None:
    for name in ("d_model", "n_layers", "n_heads"):
        problems.require(getattr(model, name) > 0, f"model.{name}", getattr(model, name), "a positive whole number")
    for name in ("n_kv_heads", "d_ff"):
        value = getattr(model, name)
        problems.require(value is None or value > 0, f"model.{name}", value, "a positive whole number, or leave it unset")
    for name in ("init_std", "rope_theta", "norm_eps"):
        value = getattr(model, name)
        problems.require(_is_number(value) and value > 0, f"model.{name}", value, "a positive number")
    if min(model.d_model, model.n_heads, model.kv_heads) <= 0:
        return  # the checks below divide by these
    problems.require(model.d_model % model.n_heads == 0, "model.n_heads", model.n_heads, f"a divisor of d_model={model.d_model}")
    problems.require(model.n_heads % model.kv_heads == 0, "model.n_kv_heads", model.n_kv_heads, "a divisor of n_heads")
    head_dim = model.d_model // model.n_heads
    if model.d_model % model.n_heads == 0 and head_dim % 2:  # (a width that is no whole number is named above)
        problems.add_text(f"model.d_model / model.n_heads = {model.d_model} / {model.n_heads} = {head_dim} is odd, and the rotary "
                          "embedding rotates pairs of dimensions", "choose model.n_heads (or model.d_model) so that the head width is even")
    names = parameter_names(model)
    for pattern, std in model.init_std_overrides.items():
        problems.require(_is_number(std) and std >= 0, f"model.init_std_overrides[{pattern!r}]", std, "a std >= 0")
        if not any(fnmatch.fnmatch(name, pattern) for name in names):
            problems.add_text(
                f"model.init_std_overrides names {pattern!r}, which matches no tensor of this model",
                f"use a glob over the tensor names, e.g. '*o_proj.weight' (names: {', '.join(_name_examples(names))}, ...)",
            )


def _name_examples(names: list[str]) -> list[str]:
    """A few tensor names of each kind (layer 0 only) for the message of a pattern that matches nothing."""
    return [name for name in names if ".layers." not in name or ".layers.0." in name][:12]


def _check_data(data: DataConfig, problems: SettingProblems) -> None:
    problems.require(bool(str(data.corpus).strip()), "data.corpus", data.corpus, "'embedded', a path, or hf:NAME")
    problems.require(bool(data.text_field), "data.text_field", data.text_field, "the name of the field holding the text")
    problems.require(259 <= data.vocab_size <= 65_536, "data.vocab_size", data.vocab_size, "259 (256 bytes + specials) to 65536")
    problems.require(_is_number(data.heldout_fraction) and 0 < data.heldout_fraction < 1, "data.heldout_fraction",
                     data.heldout_fraction, "a fraction in (0, 1), e.g. 0.02")
    problems.require(data.max_documents is None or data.max_documents >= 1, "data.max_documents", data.max_documents,
                     "a positive number of documents, or leave it unset for all")
    for key, value, allowed in long_tail_problems(data.long_tail) + tokenizer_problems(data):
        problems.add(key, value, allowed)


def _check_train(train: TrainConfig, problems: SettingProblems) -> None:
    for name in ("batch_size", "seq_len", "grad_accum", "eval_every_tokens"):
        problems.require(getattr(train, name) > 0, f"train.{name}", getattr(train, name), "a positive whole number")
    for name in ("warmup_tokens", "checkpoint_every_tokens", "seed", "threads"):
        problems.require(getattr(train, name) >= 0, f"train.{name}", getattr(train, name), "0 or more")
    if train.seq_len > 0:
        problems.require(train.eval_tokens >= train.seq_len, "train.eval_tokens", train.eval_tokens,
                         f"at least one sequence (train.seq_len = {train.seq_len} tokens), e.g. 65536")
    for tokens in train.checkpoint_at_tokens:
        problems.require(tokens > 0, "train.checkpoint_at_tokens", tokens, "positive token counts")
    if len(set(train.checkpoint_at_tokens)) != len(train.checkpoint_at_tokens):
        problems.add_text(f"train.checkpoint_at_tokens={train.checkpoint_at_tokens} repeats a value (the same checkpoint twice)",
                          "list each token count of train.checkpoint_at_tokens once")
    problems.require(_is_number(train.lr) and train.lr > 0, "train.lr", train.lr, "a positive learning rate, e.g. 3e-3")
    problems.require(_is_number(train.decay_fraction) and 0 < train.decay_fraction <= 1, "train.decay_fraction",
                     train.decay_fraction, "a fraction in (0, 1]")
    problems.require(_is_number(train.min_lr_ratio) and 0 <= train.min_lr_ratio <= 1, "train.min_lr_ratio",
                     train.min_lr_ratio, "a fraction in [0, 1]")
    for name in ("beta1", "beta2"):
        value = getattr(train, name)
        problems.require(_is_number(value) and 0 <= value < 1, f"train.{name}", value, "a number in [0, 1), e.g. 0.9 or 0.95")
    problems.require(_is_number(train.eps) and train.eps > 0, "train.eps", train.eps, "a small positive number, e.g. 1e-8")
    for name in ("weight_decay", "grad_clip"):
        value = getattr(train, name)
        problems.require(_is_number(value) and value >= 0, f"train.{name}", value, "a number >= 0")
    if train.grad_accum > 0 and train.batch_size % train.grad_accum:
        problems.add_text(
            f"train.batch_size={train.batch_size} is not divisible by train.grad_accum={train.grad_accum}",
            "pick a grad_accum that divides the batch size",
        )


def _check_budget(budget: int, key: str, train: TrainConfig, problems: SettingProblems) -> None:
    if budget <= 0:
        problems.add(key, budget, "a positive token budget, e.g. 2e6")
        return
    if train.batch_size > 0 and train.seq_len > 0 and budget < train.tokens_per_step:
        problems.add_text(
            f"{key}={budget:,} is smaller than one optimizer step "
            f"(batch_size {train.batch_size} x seq_len {train.seq_len} = {train.tokens_per_step:,} tokens)",
            f"raise {key} or lower train.batch_size / train.seq_len",
        )
    if train.warmup_tokens >= budget:
        problems.add_text(
            f"train.warmup_tokens={train.warmup_tokens:,} is not below the budget {key}={budget:,}, "
            "so the learning rate would never anneal",
            "lower train.warmup_tokens (a few percent of the smallest budget is typical)",
        )


def _check_checkpoints_within(budget: int, name: str, train: TrainConfig, problems: SettingProblems) -> None:
    """Every ``train.checkpoint_at_tokens`` must be reached by the run: a checkpoint past its last step is never
    written. Checkpoints are rounded up to whole steps, and a run trains whole steps, ``budget // tokens_per_step``."""
    if budget <= 0 or train.tokens_per_step <= 0:
        return  # _check_budget and _check_train name these
    last_step_tokens = budget // train.tokens_per_step * train.tokens_per_step
    for tokens in train.checkpoint_at_tokens:
        if tokens > 0 and math.ceil(tokens / train.tokens_per_step) * train.tokens_per_step > last_step_tokens:
            problems.add_text(
                f"train.checkpoint_at_tokens holds {tokens:,}, after the end of the run: {name} = {budget:,} trains "
                f"{last_step_tokens:,} tokens ({budget // train.tokens_per_step:,} steps of {train.tokens_per_step:,}), "
                "so that checkpoint would never be written",
                f"keep train.checkpoint_at_tokens at or below {last_step_tokens:,}, or raise {name.removeprefix('the largest ')}",
            )


SWEEP_SPEC_SECTIONS = (
    "pretrain", "pretrain_axes", "checkpoints", "family", "noise", "sharpness", "finetune", "benchmarks", "multimodal", "executor",
)
"""Sections only a sweep spec has (its pre-training settings sit under ``pretrain:``); its top-level
``eval_data`` and ``report`` are left out, as words too plain to say what a file is. Named here, not read
from SweepConfig, because the sweep imports this module (a test keeps the two in step)."""


def _refuse_a_sweep_spec(tree: dict[str, Any]) -> None:
    """A sweep spec given to ``overtrain pretrain``: said as such, not as an unknown key ``pretrain``."""
    found = [key for key in SWEEP_SPEC_SECTIONS if key in tree]
    if found:
        raise OvertrainError(
            f"this is a sweep spec, not a pre-training config: it has {', '.join(found)}",
            "run it with `overtrain sweep` (its --dry-run lists the jobs)",
        )


def _given_on_command_line(dotted_key: str, overrides: list[str]) -> bool:
    """Whether one of ``overrides`` sets ``dotted_key`` itself (what the user typed, as opposed to the file)."""
    return any(parse_override(text)[0] == dotted_key.split(".") for text in overrides)


def refuse_unused_schedule(mode: object, schedule: object, overrides: list[str], prefix: str = "") -> None:
    """``train.schedule=X`` on the command line of a ``wsd-branches`` ladder, X not ``wsd``: that mode trains a
    warmup-stable-decay trunk and its decay branches whatever the schedule says, so the value would be shown in
    the resolved config and never used; refused rather than ignored. (In a file it is a pre-training config
    reused for a ladder, and allowed, as with ``train.max_tokens``.)"""
    if mode != "wsd-branches" or schedule == "wsd":
        return
    if _given_on_command_line(f"{prefix}train.schedule", overrides):
        raise OvertrainError(
            f"{prefix}train.schedule={schedule} is given, but {prefix}ladder.mode=wsd-branches trains a warmup-stable-decay "
            "trunk with a decay branched off per budget whatever the schedule says, so it would not be used",
            f"remove {prefix}train.schedule (or set {prefix}ladder.mode=cosine-per-budget to train each budget as its own "
            f"{schedule} run)",
        )


def refuse_unused_max_tokens(budgets_tokens: object, max_tokens: object, overrides: list[str], prefix: str = "") -> None:
    """``train.max_tokens=N`` on the command line of a ladder (``overtrain pretrain-ladder``, a sweep's
    ``pretrain.``): a ladder trains one run to each of ``ladder.budgets_tokens``, so the value would be shown
    in the resolved config and never used; refused rather than ignored. (In a file beside the budgets it
    is a pre-training config reused for a ladder, and allowed.)"""
    if not budgets_tokens:
        return
    if _given_on_command_line(f"{prefix}train.max_tokens", overrides):
        raise OvertrainError(
            f"{prefix}train.max_tokens={max_tokens} is given, but a ladder trains one run to each of "
            f"{prefix}ladder.budgets_tokens, so it would not be used",
            f"remove {prefix}train.max_tokens (add its value to {prefix}ladder.budgets_tokens to train that budget too)",
        )


def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """YAML + overrides -> validated :class:`PretrainConfig` (model presets expanded)."""
    tree = read_yaml(path) if path is not None else {}
    tree = apply_overrides(tree, overrides or [])
    _refuse_a_sweep_spec(tree)
    if isinstance(tree.get("model"), dict):
        tree["model"] = apply_preset(tree["model"])
    config = build_dataclass(PretrainConfig, tree)
    validate_pretrain_config(config, as_written=True)
    return config
