"""The settings of a pre-training run, as typed dataclasses with one docstring per field.

Durations are in tokens, never steps: ``train.max_tokens`` is the budget, and steps follow from
``tokens_per_step = batch_size * seq_len``. ``overtrain pretrain CONFIG --dry-run`` prints the resolved
tree and the token arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from overtrain.config import apply_overrides, build_dataclass, read_yaml
from overtrain.data.config import DataConfig
from overtrain.errors import OvertrainError
from overtrain.model.config import ModelConfig
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
    on GPUs and on CPUs with native bf16 (AVX512-BF16 or AMX), where it is ~1.8x faster, and fp32 on
    AVX2-only CPUs, where emulated bf16 is slower than fp32."""
    compile: bool = False
    """Compile the model with torch.compile (slower start, faster steps on long runs)."""
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


def validate_pretrain_config(config: PretrainConfig) -> None:
    """Reject settings that would fail later, deep inside torch, with a message that says what to fix."""
    train, model = config.train, config.model
    for name in ("batch_size", "seq_len", "grad_accum"):
        _require(getattr(train, name) > 0, f"train.{name}", getattr(train, name), "a positive whole number")
    _require(train.lr > 0, "train.lr", train.lr, "a positive learning rate, e.g. 3e-3")
    _require(train.warmup_tokens >= 0, "train.warmup_tokens", train.warmup_tokens, "0 or more tokens")
    _require(0 < train.decay_fraction <= 1, "train.decay_fraction", train.decay_fraction, "a fraction in (0, 1]")
    _require(0 <= train.min_lr_ratio <= 1, "train.min_lr_ratio", train.min_lr_ratio, "a fraction in [0, 1]")
    if train.batch_size % train.grad_accum:
        raise OvertrainError(
            f"train.batch_size={train.batch_size} is not divisible by train.grad_accum={train.grad_accum}",
            "pick a grad_accum that divides the batch size",
        )
    _require(model.d_model % model.n_heads == 0, "model.n_heads", model.n_heads, f"a divisor of d_model={model.d_model}")
    _require(model.n_heads % model.kv_heads == 0, "model.n_kv_heads", model.n_kv_heads, "a divisor of n_heads")
    _require((model.d_model // model.n_heads) % 2 == 0, "model.d_model", model.d_model, "d_model / n_heads even (RoPE)")
    _require(config.data.vocab_size >= 259, "data.vocab_size", config.data.vocab_size, "at least 259 (256 bytes + specials)")
    _require(config.data.vocab_size <= 65_535 + 1, "data.vocab_size", config.data.vocab_size, "at most 65536")
    if config.ladder.budgets_tokens:  # a ladder's budgets replace train.max_tokens
        for budget in config.ladder.budgets_tokens:
            _check_budget(budget, "ladder.budgets_tokens", train)
    else:
        _check_budget(train.max_tokens, "train.max_tokens", train)


def _check_budget(budget: int, key: str, train: TrainConfig) -> None:
    _require(budget > 0, key, budget, "a positive token budget, e.g. 2e6")
    if budget < train.tokens_per_step:
        raise OvertrainError(
            f"{key}={budget:,} is smaller than one optimizer step "
            f"(batch_size {train.batch_size} x seq_len {train.seq_len} = {train.tokens_per_step:,} tokens)",
            f"raise {key} or lower train.batch_size / train.seq_len",
        )
    if train.warmup_tokens >= budget:
        raise OvertrainError(
            f"train.warmup_tokens={train.warmup_tokens:,} is not below the budget {key}={budget:,}, "
            "so the learning rate would never anneal",
            "lower train.warmup_tokens (a few percent of the smallest budget is typical)",
        )


def _require(condition: bool, key: str, value: object, allowed: str) -> None:
    if not condition:
        raise OvertrainError(f"config key {key} = {value!r} is invalid", f"use {allowed}")


def load_pretrain_config(path: str | Path | None, overrides: list[str] | None = None) -> PretrainConfig:
    """YAML + overrides -> validated :class:`PretrainConfig` (model presets expanded)."""
    tree = read_yaml(path) if path is not None else {}
    tree = apply_overrides(tree, overrides or [])
    if isinstance(tree.get("model"), dict):
        tree["model"] = apply_preset(tree["model"])
    config = build_dataclass(PretrainConfig, tree)
    validate_pretrain_config(config)
    return config
