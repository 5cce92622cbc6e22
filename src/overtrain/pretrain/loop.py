"""The pre-training loop: AdamW to a token budget, held-out loss in tokens, permanent checkpoints.

:func:`train_run` is the whole of one run. It resumes from the newest checkpoint in its folder (or starts
from ``init_from``, which is how WSD decay branches begin), and because batches are a pure function of
(seed, step), a resumed run reaches the same weights as an uninterrupted one. Under ``torchrun`` it runs
data-parallel: every process computes its rows of the same global batch, so the loss curve does not
depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from overtrain.atomic import atomic_write_text, ensure_writable_folder, remove_stale_temporaries
from overtrain.checkpoints.discovery import list_checkpoints
from overtrain.checkpoints.folder import (
    METADATA_FILE,
    CheckpointInfo,
    check_tensor_headers,
    load_tensors,
    load_weights_into,
    read_checkpoint_info,
    restore_optimizer,
    save_checkpoint,
    verify_checkpoint,
)
from overtrain.checkpoints.names import parse_checkpoint_name
from overtrain.config import config_to_dict, dump_yaml
from overtrain.data.tokens import (
    TokenData,
    capped_by_the_split,
    heldout_windows,
    prepare_token_data,
    train_batch,
    train_tokens_needed,
)
from overtrain.errors import OvertrainError
from overtrain.model.cpu_kernels import block_products, kernel_library_needs_building
from overtrain.model.cpu_linear import LIBRARY_NAMES, onednn_available
from overtrain.model.llama import LlamaLM, build_model, describe_size, estimate_flops_per_token
from overtrain.model.loss import mean_token_loss
from overtrain.precision import autocast_context, resolve_dtype
from overtrain.pretrain.binding import Binding, check_run_binding, refuse_checkpoint_of_another_run, write_binding
from overtrain.pretrain.config import PretrainConfig, validate_pretrain_config
from overtrain.pretrain.distributed import DistributedContext, all_reduce_mean, distributed_context, main_process_value
from overtrain.pretrain.schedules import lr_at
from overtrain.pretrain.update import clip_and_update
from overtrain.process_lock import exclusive_lock
from overtrain.progress import TokenProgress
from overtrain.units import format_tokens

LOSS_SPIKE_FACTOR = 2.0  # a loss above twice the first step's loss means the run has diverged
COMPILE_MIN_STEPS = 500
"""``train.compile=auto`` compiles only runs of at least this many steps. At the nano shape (one thread,
this repository's development machine) compiling cost 19.4 s with inductor's cache and the attention
kernel cold and 2.6 s warm, and saved ~40 ms of a ~90 ms step: it pays after ~490 steps from cold, ~65
warm (benchmarks/bench_pretrain_nano.py, docs/benchmarks.md)."""


@dataclass
class RunState:
    """What changes as a run advances (and what a checkpoint restores)."""

    step: int = 0
    tokens_seen: int = 0
    first_loss: float | None = None
    """Loss of the run's very first step (the divergence guard compares against it; kept across resumes)."""
    train_losses: list[float] = field(default_factory=list)
    """Training losses of the steps since the last evaluation point (their mean is logged there)."""
    started_at_tokens: int = 0
    """Tokens seen when this invocation began (a resume or WSD branch starts past 0)."""
    started_at_step: int = 0
    first_step_loss: float | None = None
    """Loss of the first step this invocation trained (a WSD branch's equals the trunk's at that step)."""
    products_library: str | None = None
    """Which library a compiled fp32 CPU run makes its products with, "onednn" or "blas" (None: torch's
    operations make them). Chosen when the run starts, by ``train.cpu_products``'s pin or by timing
    (:meth:`overtrain.model.llama.LlamaLM.use_cpu_kernels`), and kept in its checkpoints, so that a resumed run
    or a WSD branch does not time again and switch libraries: the two round differently, and a resumed run
    must continue bitwise where it stopped."""


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    final_checkpoint: Path
    final_heldout_loss: float
    tokens_seen: int
    seconds: float
    tokens_per_second: float
    started_at_tokens: int = 0
    """Where this invocation began: 0 for a fresh run, the checkpoint's tokens for a resume or a branch."""
    steps_trained: int = 0
    """Optimizer steps this invocation took."""
    first_step_loss: float | None = None
    """Training loss of the first step this invocation took (None when it took none)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA where torch sees a GPU, else the CPU; ``cuda`` or ``cuda:N`` without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OvertrainError(f"device={name} was asked for but torch sees no GPU", "use device=cpu or device=auto")
    return torch.device(name)


def build_optimizer(model: LlamaLM, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm gains are never decayed).

    The fused kernel (one pass over each tensor instead of a dozen elementwise ops) where torch has one for
    the parameters' device; it computes the same update as the for-loop implementation.
    """
    train = config.train
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": train.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, fused=fused or None)


_GLIBC_M_TRIM_THRESHOLD, _GLIBC_M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers in glibc's malloc.h


def keep_freed_memory_in_the_heap() -> bool:
    """Stop glibc from giving each step's freed activation buffers back to the kernel; True if set.

    glibc serves blocks above its mmap threshold with fresh mappings and unmaps them when freed, so every
    training step faults its activations in again (~3,000 page faults per step at the nano shape, 8-14% of
    a compiled step's CPU time: docs/benchmarks.md). An mmap threshold of 32 MiB and a trim threshold of
    1 GiB keep that memory in the heap for the next step. Process-wide; Linux with glibc only.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_GLIBC_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_GLIBC_M_TRIM_THRESHOLD, 1 << 30))


def should_compile(train, world_size: int = 1) -> bool:
    """``train.compile``: true/false as set; ``auto`` compiles single-process runs of at least
    :data:`COMPILE_MIN_STEPS` steps in all. The run's whole length decides, not the steps left, so every
    invocation of one run (a resume, a WSD trunk segment) computes with the same kernels and rounds alike."""
    if train.compile == "auto":
        return world_size == 1 and train.total_steps >= COMPILE_MIN_STEPS
    return bool(train.compile)


def describe_compile(train, world_size: int = 1) -> str:
    """One line for logs and dry runs: whether the run compiles (:func:`should_compile`), and why."""
    compiled = should_compile(train, world_size)
    decision = "compiled (torch.compile)" if compiled else "eager (no torch.compile)"
    if train.compile != "auto":
        return f"{decision}: train.compile={str(train.compile).lower()}"
    if world_size > 1:
        return f"{decision}: train.compile=auto compiles single-process runs only"
    relation = ">=" if compiled else "<"  # one process under auto: the decision is the step count's
    return f"{decision}: train.compile=auto and {train.total_steps:,} steps {relation} {COMPILE_MIN_STEPS}, where compiling starts to pay"


def milestone_tokens(config: PretrainConfig) -> set[int]:
    """Token counts (rounded up to whole steps) at which a permanent checkpoint is written."""
    train = config.train
    per_step = train.tokens_per_step
    milestones = {train.total_steps * per_step}
    if train.checkpoint_every_tokens > 0:
        every = max(1, round(train.checkpoint_every_tokens / per_step)) * per_step
        milestones |= set(range(every, train.total_steps * per_step + 1, every))
    milestones |= {math.ceil(t / per_step) * per_step for t in train.checkpoint_at_tokens if 0 < t <= train.max_tokens}
    return milestones


def train_run(
    config: PretrainConfig, init_from: Path | None = None, log=print, stop_at_tokens: int | None = None, show_progress: bool = True
) -> RunResult:
    """Train (or resume) the run in ``config.out_dir`` to ``config.train.max_tokens`` tokens.

    ``stop_at_tokens`` pauses the run early at a checkpoint milestone (the schedule still ends at
    ``max_tokens``): a sweep trains a WSD trunk in segments so decay branches can start while it goes on.
    ``show_progress=False`` silences the per-run bar and log lines (a sweep shows one bar for all jobs).

    Before any compute, the run folder is checked: it must be writable, and a run already in it must
    have been started with the same result settings (see :mod:`overtrain.pretrain.binding`).
    """
    validate_pretrain_config(config)
    context = distributed_context()
    device = resolve_device(config.device) if context.world_size == 1 else context.device
    _refuse_unusable_products_pin(config, device, context.world_size, log if context.is_main else _silent)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    out_dir = Path(config.out_dir)
    if context.is_main:
        ensure_writable_folder(out_dir, "the run folder", "out_dir")
    with run_lock(out_dir) if context.is_main else contextlib.nullcontext():
        if context.is_main:  # the lock held first: the temporaries of a process training this folder are not stale
            ensure_writable_folder(out_dir / "checkpoints", "the checkpoints folder", "out_dir")
            remove_stale_temporaries(out_dir / "checkpoints")
        newest = newest_checkpoint(out_dir)
        binding, note = check_run_settings(out_dir, config, newest)
        if note and context.is_main:
            log(note)
        refuse_milestones_already_passed(config, out_dir, newest)
        if context.is_main and (eval_note := _eval_spacing_change(config, newest)):
            log(eval_note)
        needed = train_tokens_needed(config.train.total_steps, config.train.batch_size, config.train.seq_len)  # sharded data: no more
        data = prepare_token_data(config.data, log=log if context.is_main else _silent, train_tokens=needed)
        model, init_std = build_model(config.model, data.vocab_size, config.train.seq_len, config.train.seed)
        model.to(device)
        optimizer = build_optimizer(model, config)
        state = _restore_or_start(config, model, optimizer, newest, init_from, context, log)
        # The loop first: it refuses what only the data can tell (a held-out split shorter than one sequence),
        # and a folder refused before its first step must not stay bound to the settings it refused.
        loop = _TrainingLoop(config, model, optimizer, data, init_std, state, context, device, log, show_progress)
        if context.is_main:
            write_binding(out_dir, binding)
            _truncate_metrics(out_dir / "metrics.jsonl", state.tokens_seen)
            _write_run_files(config, out_dir, model, data, device, log)
        if stop_at_tokens is not None:
            per_step = config.train.tokens_per_step
            loop.milestones.add(math.ceil(stop_at_tokens / per_step) * per_step)
        return loop.run(out_dir, stop_at_tokens)


RUN_LOCK_FILE = "run.lock"


def run_lock(out_dir: Path) -> contextlib.AbstractContextManager[Path]:
    """One process trains a run folder at a time: a second ``overtrain pretrain`` on it (or a sweep job on a
    folder another process is training) is refused, naming the holder, instead of both writing its
    checkpoints and metrics.jsonl interleaved. A process that died releases the lock by itself."""
    path = Path(out_dir) / RUN_LOCK_FILE

    def refusal(holder: str) -> OvertrainError:
        return OvertrainError(
            f"another process is training the run in {out_dir}: {holder}",
            f"wait for it to finish (then rerun to continue), or stop it; a process that died releases {RUN_LOCK_FILE} "
            "by itself. To train a second run, give it its own out_dir",
        )

    return exclusive_lock(path, refusal, f"make {out_dir} writable, or choose an out_dir you can write")


def _silent(*_args: Any, **_kwargs: Any) -> None:
    return None


def newest_checkpoint(out_dir: Path, *, hash_files: bool = True) -> CheckpointInfo | None:
    """The run's own newest checkpoint, read and verified (a damaged one is named with the fix). A dry run
    passes ``hash_files=False``: the tensor files' headers are read instead (a same-size corruption is then
    left to the run)."""
    existing = list_checkpoints(out_dir)
    if not existing:
        return None
    if not (existing[-1] / METADATA_FILE).is_file():  # named as a checkpoint, but its metadata is gone
        raise OvertrainError(
            f"the run's newest checkpoint {existing[-1]} has no {METADATA_FILE}: it is damaged",
            f"restore {METADATA_FILE} from a backup, or delete {existing[-1]} and resume (the same command): the run "
            "trains it again from the checkpoint before",
        )
    info = read_checkpoint_info(existing[-1])
    if hash_files:
        verify_checkpoint(info)
    else:
        check_tensor_headers(info.folder)
    return info


def refuse_milestones_already_passed(config: PretrainConfig, out_dir: Path, newest: CheckpointInfo | None) -> None:
    """Checkpoint settings may change between invocations of a run (they do not change its weights), but a
    milestone the run has already trained past without keeping a checkpoint cannot be written after the
    fact: refused, so that the run's config never claims checkpoints it does not have."""
    if newest is None:
        return
    kept = {parse_checkpoint_name(path)[1] for path in list_checkpoints(out_dir)}  # listed once, not once per milestone
    passed = sorted(tokens for tokens in milestone_tokens(config) if tokens < newest.tokens_seen and tokens not in kept)
    if passed:
        shown = ", ".join(f"{tokens:,}" for tokens in passed[:5]) + (" ..." if len(passed) > 5 else "")
        raise OvertrainError(
            f"train.checkpoint_at_tokens / train.checkpoint_every_tokens ask {out_dir} for checkpoints at {shown} tokens, "
            f"but the run is trained to {newest.tokens_seen:,} tokens and kept none there: a checkpoint cannot be written after the fact",
            "resume with the checkpoint settings the run had (they are in its config.yaml), or train a run with these "
            "milestones into a new out_dir",
        )


def _eval_spacing_change(config: PretrainConfig, newest: CheckpointInfo | None) -> str | None:
    """A note when ``train.eval_every_tokens`` differs from the spacing the run logged so far (allowed: it
    changes what is logged, not the weights; but the metrics before and after differ in spacing)."""
    if newest is None:
        return None
    before = newest.run_config.get("train", {}).get("eval_every_tokens")
    now = config.train.eval_every_tokens
    if before is None or before == now:
        return None
    return (f"train.eval_every_tokens is now {now:,} (was {before:,}): the held-out losses logged up to "
            f"{newest.tokens_seen:,} tokens keep the old spacing")


def check_run_settings(out_dir: Path, config: PretrainConfig, newest: CheckpointInfo | None) -> tuple[Binding, str | None]:
    """What the run folder is bound to and the note to log (pretrain.binding.check_run_binding: refused where
    the command changed the run's settings), then whether the checkpoint it would resume from is this run's
    (refused where it was copied in from another run). The run and its dry run ask alike."""
    run_config = config_to_dict(config)
    binding, note = check_run_binding(out_dir, run_config, config.train.extend, _describe(newest))
    if newest is not None:  # the settings are this run's (just checked): is the checkpoint?
        refuse_checkpoint_of_another_run(newest.folder, newest.run_config, run_config)
    return binding, note


def _describe(info: CheckpointInfo | None) -> tuple[int, int, dict[str, Any]] | None:
    return None if info is None else (info.tokens_seen, info.step, info.run_config)


def _restore_or_start(config, model, optimizer, newest: CheckpointInfo | None, init_from: Path | None, context, log) -> RunState:
    """Load the newest checkpoint of the run (or, for a new WSD branch, the trunk's) into model and optimizer."""
    if newest is None and init_from is None:
        return RunState()
    if newest is not None:
        info = newest
    else:
        info = read_checkpoint_info(init_from)
        verify_checkpoint(info)
        _check_same_setup(info.run_config, config, init_from)
    source = info.folder
    load_weights_into(model, load_tensors(source / "model.safetensors"), source)
    optimizer_path = source / "optimizer.safetensors"
    if optimizer_path.exists():
        restore_optimizer(model, optimizer, load_tensors(optimizer_path))
    torch.set_rng_state(load_tensors(source / "rng.safetensors")["torch_cpu"])
    if context.is_main:
        verb = "resuming" if newest is not None else "branching"
        log(f"{verb} from {source} at {format_tokens(info.tokens_seen)} tokens (step {info.step})")
    first_loss = info.loop_state.get("first_train_loss")
    since_eval = [float(value) for value in info.loop_state.get("train_losses_since_eval", [])]
    return RunState(step=info.step, tokens_seen=info.tokens_seen, first_loss=first_loss, train_losses=since_eval,
                    started_at_tokens=info.tokens_seen, started_at_step=info.step,
                    products_library=info.loop_state.get("products_library"))


KERNEL_BUILD_NOTE = "building overtrain's CPU kernels (once per machine and torch version; ~40 s on two cores)"


def note_kernel_build(log) -> None:
    """Say so before the kernels are compiled (:func:`~overtrain.model.cpu_kernels.kernel_library_needs_building`),
    so that the wait is not silent."""
    if kernel_library_needs_building():
        log(KERNEL_BUILD_NOTE)


def _refuse_unusable_products_pin(config: PretrainConfig, device: torch.device, world_size: int, log=print) -> None:
    """A library pinned for a run that would make its products with it (compiled, fp32, on the CPU) where
    it cannot be used: refused before anything is written, rather than quietly replaced by torch's BLAS."""
    train, pinned = config.train, config.train.cpu_products
    if device.type != "cpu" or not should_compile(train, world_size) or resolve_dtype(train.dtype, device) != "fp32":
        return  # eager and bf16 runs make their products with torch's operations whatever the pin says
    if pinned == "onednn" and not onednn_available():
        raise OvertrainError(
            "train.cpu_products=onednn, but this torch cannot make products with oneDNN (its build has none, or "
            "torch.backends.mkldnn is switched off)",
            "set train.cpu_products=auto or blas",
        )
    if pinned != "brgemm":
        return
    threads = train.threads if train.threads > 0 else torch.get_num_threads()
    if threads != 1:
        raise OvertrainError(
            f"train.cpu_products=brgemm, but the blocked kernels that call oneDNN's brgemm micro-kernel run on one "
            f"thread, and this run would use {threads}",
            "set train.threads=1 (one thread per run: a sweep runs several runs at once), or train.cpu_products=auto",
        )
    note_kernel_build(log)  # checking brgemm builds them
    if block_products("brgemm") is None:
        raise OvertrainError(
            "train.cpu_products=brgemm, but overtrain's blocked kernels cannot call oneDNN's brgemm micro-kernel here (this "
            "torch exports none, it failed its check against torch's product on this CPU, or the kernels could not be built)",
            "set train.cpu_products=auto or blas",
        )


def _products_library(pinned: str, saved: str | None) -> str | None:
    """The library a compiled fp32 CPU run makes its products with: ``train.cpu_products``'s pin, else the one
    the checkpoint it continues from names (so that a resumed run or a WSD branch continues bitwise); None:
    time the libraries now. A pin that differs from the checkpoint's library is taken, and the log says so (like
    ``train.compile``, the setting may change between invocations of a run: the math is the same)."""
    return saved if pinned == "auto" else pinned


def _check_same_setup(saved: dict[str, Any], config: PretrainConfig, source: Path) -> None:
    """A branch must start from a checkpoint of the same model, data, seed, batch size and sequence length."""
    current = config_to_dict(config)
    for section in ("model", "data"):
        if saved.get(section) != current[section]:
            raise OvertrainError(
                f"{source} was trained with a different {section} section than this config",
                "use a new out_dir for a different model or corpus, or restore the original config",
            )
    for key in ("seed", "batch_size", "seq_len"):
        if saved["train"].get(key) != current["train"][key]:
            raise OvertrainError(
                f"{source} used train.{key}={saved['train'].get(key)}, this config says {current['train'][key]}",
                "resuming needs the same seed, batch_size and seq_len; use a new out_dir to change them",
            )


def _truncate_metrics(path: Path, tokens_seen: int) -> None:
    """Keep only the log lines up to the point the run restarts from (nothing, for a fresh start), so a
    resumed run's file is the uninterrupted run's: no line twice, no torn last line of a killed writer."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the torn last line of a killed run
        if isinstance(record, dict) and isinstance(record.get("tokens_seen"), int) and record["tokens_seen"] <= tokens_seen:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _write_run_files(config: PretrainConfig, out_dir: Path, model: LlamaLM, data: TokenData, device: torch.device, log) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", dump_yaml(config))
    train = config.train
    log(
        f"model: {describe_size(model)}; data: {format_tokens(len(data.train))} train tokens, "
        f"{data.meta['bytes_per_token']} bytes/token; matmuls in {resolve_dtype(train.dtype, device)} on {device}\n"
        f"tokens/step = {train.batch_size} x {train.seq_len} = {train.tokens_per_step:,}; "
        f"budget {format_tokens(train.max_tokens)} -> {train.total_steps:,} steps "
        f"({train.max_tokens / max(model.num_parameters(), 1):.0f} tokens/parameter, "
        f"{train.max_tokens / max(len(data.train), 1):.1f} epochs)"
    )
    moved = describe_moved_checkpoints(train)
    if moved:
        log(moved)


def describe_moved_checkpoints(train) -> str | None:
    """The ``train.checkpoint_at_tokens`` that fall between steps, with where their checkpoints are written
    (the first step boundary at or after each: checkpoints hold whole steps); None when all fall on one."""
    per_step = train.tokens_per_step
    moved = [(tokens, math.ceil(tokens / per_step) * per_step) for tokens in train.checkpoint_at_tokens
             if tokens % per_step and 0 < tokens <= train.max_tokens]  # a ladder's rungs share the list: only this run's
    if not moved:
        return None
    pairs = ", ".join(f"{tokens:,} -> {written:,}" for tokens, written in moved)
    return f"train.checkpoint_at_tokens between steps, written at the next step ({per_step:,} tokens/step): {pairs}"


class _TrainingLoop:
    """The step loop; one object so the many pieces of per-run state need not be passed around."""

    def __init__(self, config, model, optimizer, data, init_std, state, context: DistributedContext, device, log, show_progress) -> None:
        self.config, self.train_config = config, config.train
        self.model, self.optimizer, self.data = model, optimizer, data
        self.init_std, self.state, self.context, self.device, self.log = init_std, state, context, device, log
        self.show_progress = show_progress and context.is_main
        if device.type == "cpu":
            keep_freed_memory_in_the_heap()
        self.forward_model = model
        self.params = list(model.parameters())
        self.compiled_loss = None
        self._set_up_compile()
        if context.is_main:
            self.log(describe_compile(self.train_config, context.world_size))
        self.eval_inputs, self.eval_targets = heldout_windows(data, self.train_config.eval_tokens, self.train_config.seq_len)
        if context.is_main:
            self._note_short_heldout(len(data.heldout))
        self.milestones = milestone_tokens(config)
        self.flops_per_token = estimate_flops_per_token(config.model, data.vocab_size, self.train_config.seq_len)

    def _note_short_heldout(self, heldout_tokens: int) -> None:
        """Log when the held-out split is too small for ``train.eval_tokens``: heldout_windows then uses all of it."""
        asked, seq_len, evaluated = self.train_config.eval_tokens, self.train_config.seq_len, self.eval_targets.numel()
        if capped_by_the_split(self.eval_targets, asked, seq_len):
            self.log(f"held-out loss is measured on {evaluated:,} tokens, fewer than train.eval_tokens={asked:,}: the held-out "
                     f"split holds only {heldout_tokens:,} tokens (for more, raise data.heldout_fraction, or data.heldout_tokens "
                     "with a pre-trained tokenizer, or use a bigger corpus)")

    def _set_up_compile(self) -> None:
        model, context = self.model, self.context
        compiled = should_compile(self.train_config, context.world_size)
        # One process: compile forward, loss and their backward as one graph (inductor fuses whatever
        # overtrain's CPU kernels do not take: the norms, SwiGLU, RoPE, the cross-entropy). Under DDP the
        # wrapper needs the module, so only it is compiled.
        # On CPU, cpp_wrapper runs the graph's host code (allocations, ~60 kernel calls) in C++ instead of
        # Python: ~2-4% per step at the nano shape. No max-autotune: inductor's C++ GEMM templates take only
        # constant (frozen) weights, so in training they make no product (forced onto these products, the
        # templates measured at half MKL's speed), and the step measured the same without it.
        options = {"cpp_wrapper": True} if self.device.type == "cpu" else None
        self.compiled_loss = torch.compile(model.loss, options=options) if compiled and context.world_size == 1 else None
        self.forward_model = torch.compile(model) if compiled and context.world_size > 1 else model
        # Compiled CPU runs also take overtrain's kernels (LlamaLM.use_cpu_kernels): attention that applies the
        # rotary embedding itself, after one stacked q/k/v product, the output layer fused with the loss, and the
        # projections by oneDNN where it measures clearly faster than torch's BLAS, or as train.cpu_products pins
        # (docs/benchmarks.md has what each saves). Eager runs keep torch's operations and three products, so their
        # numerics stay what they were.
        kernels = compiled and self.device.type == "cpu"
        # a library is chosen where the kernels make fp32 products (under bf16 autocast torch makes them)
        chooses_library = kernels and resolve_dtype(self.train_config.dtype, self.device) == "fp32"
        saved = self.state.products_library
        library = _products_library(self.train_config.cpu_products, saved) if chooses_library else "blas"
        if kernels and context.is_main and torch.get_num_threads() == 1:
            note_kernel_build(self.log)
        model.use_cpu_kernels(kernels, library=library)
        if library is None and context.world_size > 1:  # ranks timing at once on shared cores may choose
            # differently: all take rank 0's choice, the one its log and checkpoints name
            libraries = list(LIBRARY_NAMES)
            agreed = libraries[main_process_value(libraries.index(model.products_library), context)]
            if agreed != model.products_library:
                model.use_cpu_kernels(kernels, library=agreed)
                if model.products_library != agreed:  # every rank must round as the checkpoints say
                    raise OvertrainError(f"rank {context.rank} cannot make its products by {LIBRARY_NAMES[agreed]}, which rank 0 "
                                         "measured fastest", "pin a library every rank can use: train.cpu_products=blas")
        # None where torch's operations make the products (eager, bf16): a branch or resume then names no library
        self.state.products_library = model.products_library if chooses_library else None
        if chooses_library and context.is_main:
            self.log(self._products_note(saved))
        if context.world_size > 1:
            self.forward_model = context.wrap(self.forward_model)

    def _products_note(self, saved: str | None) -> str:
        """The log line saying which library makes the products: measured now, pinned, or kept from the checkpoint."""
        if self.model.product_timing is not None:
            return self.model.product_timing.describe()
        current, pinned = self.state.products_library, self.train_config.cpu_products
        now = LIBRARY_NAMES[current]
        if saved == current:
            return f"products by {now}, as in the checkpoint this run continues from (with the same version of overtrain, its numerics continue unchanged)"
        rounding = "(the losses continue within float rounding, not bitwise)"
        if pinned == current:
            pin = f"products by {now}, as train.cpu_products={pinned} pins"
            return pin if saved is None else f"{pin}: the checkpoint this run continues from made them by {LIBRARY_NAMES[saved]} {rounding}"
        # neither the pin nor the checkpoint: a library was asked for that this machine's torch cannot use
        asked = f"train.cpu_products={pinned} asks for {LIBRARY_NAMES[pinned]}" if pinned != "auto" else \
            f"the checkpoint this run continues from made them by {LIBRARY_NAMES[saved]}"
        return f"products by {now}: {asked}, which this machine's torch cannot use {rounding}"

    def run(self, out_dir: Path, stop_at_tokens: int | None = None) -> RunResult:
        train = self.train_config
        stop_step = train.total_steps if stop_at_tokens is None else min(train.total_steps, -(-stop_at_tokens // train.tokens_per_step))
        progress = TokenProgress(train.max_tokens, self.state.tokens_seen, enabled=self.show_progress, label=out_dir.name)
        started, start_tokens, start_step = time.perf_counter(), self.state.tokens_seen, self.state.step
        heldout = float("nan")
        while self.state.step < stop_step:
            loss = self._step()
            progress.update(train.tokens_per_step, loss=loss, lr=lr_at(self.state.step - 1, train))
            if self.is_eval_point(self.state.step):
                heldout = self._evaluate_and_log(out_dir, started, start_tokens, progress)
            if self.state.tokens_seen in self.milestones:
                self._checkpoint(out_dir)
        progress.close()
        seconds = time.perf_counter() - started
        if math.isnan(heldout):  # paused between evaluation points, or resumed at the very end: measure once
            heldout = self._heldout_loss()
        final = list_checkpoints(out_dir)[-1] if self.context.is_main else out_dir
        rate = (self.state.tokens_seen - start_tokens) / max(seconds, 1e-9)
        return RunResult(out_dir, final, heldout, self.state.tokens_seen, seconds, rate,
                         started_at_tokens=start_tokens, steps_trained=self.state.step - start_step, first_step_loss=self.state.first_step_loss)

    def is_eval_point(self, step: int) -> bool:
        """Evaluate after the last step and after each step that crosses a multiple of ``eval_every_tokens``.

        A pure function of the step, so a resumed run evaluates at the same points as an uninterrupted one.
        """
        train = self.train_config
        tokens, previous = step * train.tokens_per_step, (step - 1) * train.tokens_per_step
        return step == train.total_steps or tokens // train.eval_every_tokens > previous // train.eval_every_tokens

    def _step(self) -> float:
        train, context = self.train_config, self.context
        lr = lr_at(self.state.step, train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        rows_per_process = train.batch_size // context.world_size
        rows_per_micro = rows_per_process // train.grad_accum
        loss_sum = 0.0
        for micro in range(train.grad_accum):
            first = context.rank * rows_per_process + micro * rows_per_micro
            inputs, targets = train_batch(self.data, train.batch_size, train.seq_len, train.seed, self.state.step, slice(first, first + rows_per_micro))
            with context.no_sync_unless(self.forward_model, micro == train.grad_accum - 1), autocast_context(self.device, train.dtype):
                loss = self.model_loss(inputs.to(self.device), targets.to(self.device))
            (loss / train.grad_accum).backward()
            loss_sum += float(loss.detach())
        loss_value = all_reduce_mean(loss_sum / train.grad_accum, context)
        self._check_loss(loss_value, lr)
        clip_and_update(self.optimizer, self.params, train.grad_clip)
        if self.state.first_step_loss is None:
            self.state.first_step_loss = loss_value
        self.state.step += 1
        self.state.tokens_seen += train.tokens_per_step
        self.state.train_losses.append(loss_value)
        return loss_value

    def model_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.compiled_loss is not None:
            return self.compiled_loss(inputs, targets)
        logits = self.forward_model(inputs)
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def _check_loss(self, loss: float, lr: float) -> None:
        """The training loss of the step being taken (``state.step`` steps done before it, at ``lr``)."""
        if self.state.first_loss is None:
            self.state.first_loss = loss
        if not math.isfinite(loss) or loss > LOSS_SPIKE_FACTOR * self.state.first_loss:
            raise self._divergence(f"training loss {loss:.4g} in step {self.state.step + 1:,} "
                                   f"(after {format_tokens(self.state.tokens_seen)} tokens, lr {lr:.3g})")

    def _divergence(self, what: str) -> OvertrainError:
        """The error for a diverged run: what was seen, and what the run folder holds to continue from."""
        first = f"; the first step's loss was {self.state.first_loss:.4g}" if self.state.first_loss is not None else ""
        kept = list_checkpoints(Path(self.config.out_dir)) if self.context.is_main else []
        if kept:  # list_checkpoints returns only folders whose names parse
            tokens = parse_checkpoint_name(kept[-1])[1]
            where = (f"the run folder keeps its checkpoint at {format_tokens(tokens)} tokens: continue from it with a lower "
                     "train.lr and train.extend=true, or start over in a new out_dir")
        else:
            where = "it kept no checkpoint before diverging: start over with a lower train.lr in a new out_dir (or add train.extend=true)"
        return OvertrainError(f"training diverged: {what}{first}",
                              f"lower train.lr (now {self.train_config.lr:g}), raise train.warmup_tokens, or keep "
                              f"train.grad_clip > 0 (now {self.train_config.grad_clip:g}); {where}")

    def _heldout_loss(self) -> float:
        return mean_token_loss(self.model, self.eval_inputs, self.eval_targets, batch_size=16, dtype=self.train_config.dtype).loss

    def _evaluate_and_log(self, out_dir: Path, started: float, start_tokens: int, progress: TokenProgress) -> float:
        heldout = self._heldout_loss()
        if not math.isfinite(heldout):  # the last step broke the weights; its own training loss was still finite
            raise self._divergence(f"held-out loss {heldout} after step {self.state.step:,} "
                                   f"({format_tokens(self.state.tokens_seen)} tokens, lr {lr_at(self.state.step - 1, self.train_config):.3g})")
        if not self.context.is_main:
            return heldout
        seconds = time.perf_counter() - started
        rate = (self.state.tokens_seen - start_tokens) / max(seconds, 1e-9)
        recent, self.state.train_losses = self.state.train_losses, []
        record = {
            "tokens_seen": self.state.tokens_seen,
            "step": self.state.step,
            "train_loss": sum(recent) / max(len(recent), 1),
            "heldout_loss": heldout,
            "lr": lr_at(self.state.step - 1, self.train_config),
            "tokens_per_second": rate,
            "model_flops_per_second": rate * self.flops_per_token,
            "elapsed_seconds": seconds,
        }
        try:
            with open(out_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")  # one write: a kill leaves at most a torn last line
        except OSError as error:
            raise self._write_error(out_dir / "metrics.jsonl", error) from None
        progress.note(
            f"{format_tokens(self.state.tokens_seen)}/{format_tokens(self.train_config.max_tokens)} tokens | "
            f"train {record['train_loss']:.3f} | heldout {heldout:.3f} | {format_tokens(rate)} tok/s"
        )
        return heldout

    def _checkpoint(self, out_dir: Path) -> None:
        if not self.context.is_main:
            return
        loop_state = {"first_train_loss": self.state.first_loss, "train_losses_since_eval": list(self.state.train_losses),
                      "products_library": self.state.products_library}
        try:
            save_checkpoint(
                out_dir,
                model=self.model,
                optimizer=self.optimizer,
                step=self.state.step,
                tokens_seen=self.state.tokens_seen,
                run_config=config_to_dict(self.config),
                init_std=self.init_std,
                tokenizer_folder=self.data.tokenizer_folder,
                end_of_text_id=self.data.end_of_text_id,
                loop_state=loop_state,
            )
        except OSError as error:
            raise self._write_error(out_dir / "checkpoints", error) from None

    def _write_error(self, path: Path, error: OSError) -> OvertrainError:
        kept = list_checkpoints(path.parent)  # path is RUN/checkpoints or RUN/metrics.jsonl
        last = f"its last checkpoint {kept[-1].name} is kept" if kept else "it has no checkpoint yet"
        return OvertrainError(
            f"could not write {path} at {format_tokens(self.state.tokens_seen)} tokens ({error.strerror or error}); {last}",
            "make the folder writable (or free disk space), then run the same command again: it resumes from the last checkpoint",
        )
