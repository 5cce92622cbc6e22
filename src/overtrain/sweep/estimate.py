"""How long will a sweep take here? A calibration of a few training steps, then token arithmetic.

The estimate times three optimizer steps of the sweep's model on this machine (with the worker's thread
count), then counts tokens: pre-training tokens at that rate, evaluation tokens at ~3x that rate (a
forward pass is about a third of a training step), fine-tuning tokens at the training rate. Jobs run
``workers`` at a time. Sharpness jobs count forwards: a Hessian-vector product costs ~11 forward passes
(measured, docs/sharpness.md), a worst-case step (forward+backward) ~3, and the top eigenvalue is assumed to
take ``min(max_iters, 25)`` products. It is a plan, not a promise: it ignores start-up and tokenizing the corpus,
and it names the job kinds it has no arithmetic for (multimodal tuning, benchmarks, image features) instead
of counting them as free.

The calibration steps take at most :data:`CALIBRATION_TOKENS` tokens each, whatever the sweep's batch: a
paper-scale batch (256 x 1024 tokens of a 50k vocabulary) needs tens of GB for its logits alone, and a dry
run must not need the memory of a real step. The per-token rate of a smaller batch is the same or a little
slower (fixed costs per step weigh more), so the estimate errs long.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

import torch

from overtrain.results.records import Job
from overtrain.units import format_seconds

CALIBRATION_TOKENS = 4096
"""Tokens per calibration step at most (the nano demo's whole batch: 32 x 128)."""
CALIBRATION_LOGIT_BYTES = 256 << 20
"""Bytes of fp32 logits per calibration step at most (a 50k vocabulary allows ~1.3k tokens)."""
CALIBRATION_SECONDS = 20.0
"""Timed steps stop once they have taken this long (at least one): a big model on a CPU is slow."""
ESTIMATED_KINDS = ("pretrain", "noise", "finetune", "sharpness")
FINETUNE_TOKENS_PER_EXAMPLE = 250  # typical prompt + completion of the offline tasks at a byte-level vocabulary
FORWARDS_PER_HVP = 11  # a Hessian-vector product in forward passes (docs/sharpness.md, nano shape)
FORWARDS_PER_STEP = 3  # a forward+backward pass
LANCZOS_TYPICAL_HVPS = 25  # the nano model converged to tol 1e-3 in 21


def sharpness_forwards(spec: dict) -> float:
    """Forward passes over the held-out text that one sharpness job makes (an estimate, see the module)."""
    kinds, seeds = spec["kinds"], len(spec["seeds"])
    per_group = 1.0  # the base loss
    if "hessian_top" in kinds:
        per_group += seeds * min(spec["max_iters"], LANCZOS_TYPICAL_HVPS) * FORWARDS_PER_HVP
    if "hessian_trace" in kinds:
        per_group += seeds * spec["probes"] * FORWARDS_PER_HVP
    if "worst_case" in kinds:
        per_group += len(spec["gammas"]) * ((spec["steps"] - 1) * FORWARDS_PER_STEP + FORWARDS_PER_STEP + 1)
    return per_group * len(spec.get("groups") or [None])


class CalibrationError(RuntimeError):
    """The calibration steps could not run here (out of memory, say): the dry run says so and goes on."""


def calibration_rows(batch_size: int, seq_len: int, vocab_size: int) -> int:
    """Rows of ``seq_len`` tokens per calibration step: the sweep's batch, or fewer to stay within
    :data:`CALIBRATION_TOKENS` and :data:`CALIBRATION_LOGIT_BYTES` (at least one)."""
    by_logits = CALIBRATION_LOGIT_BYTES // (4 * vocab_size * seq_len)
    return max(1, min(batch_size, CALIBRATION_TOKENS // seq_len, by_logits))


def measure_train_tokens_per_second(config, threads: int) -> float:
    """Training tokens per second of the config's model here: the best of up to three timed AdamW steps
    (fewer once they pass :data:`CALIBRATION_SECONDS`) after one untimed, on random tokens, at
    :func:`calibration_rows` rows."""
    from overtrain.model.llama import build_model

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    train = config.train
    rows = calibration_rows(train.batch_size, train.seq_len, config.data.vocab_size)
    try:
        model, _ = build_model(config.model, config.data.vocab_size, train.seq_len, seed=0)
        optimizer = torch.optim.AdamW(model.parameters())
        inputs = torch.randint(0, config.data.vocab_size, (rows, train.seq_len))
        timings: list[float] = []
        while len(timings) < 4 and (len(timings) < 2 or sum(timings[1:]) < CALIBRATION_SECONDS):
            started = time.perf_counter()
            model.loss(inputs, inputs).backward()
            optimizer.step()
            optimizer.zero_grad()
            timings.append(time.perf_counter() - started)
        return rows * train.seq_len / min(timings[1:])
    except RuntimeError as error:  # torch's out-of-memory error among them
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CalibrationError(f"a calibration step of {rows} x {train.seq_len} tokens failed: {first_line}") from None
    finally:
        torch.set_num_threads(previous)


@dataclass
class SweepEstimate:
    """Seconds per job kind of the jobs left (workers in parallel), the calibrated rate, and the job
    kinds left that have no estimate, with their counts."""

    seconds: dict[str, float]
    train_tokens_per_second: float
    not_estimated: dict[str, int] = field(default_factory=dict)


def estimate_sweep_seconds(config, jobs: list[Job], finished_keys: Collection[str] = frozenset()) -> SweepEstimate | None:
    """The estimate for the jobs not in ``finished_keys``, for a sweep whose checkpoints come from its own
    ``pretrain`` section (None without one: there is no model to calibrate on). Raises
    :class:`CalibrationError` where the calibration steps cannot run."""
    if config.pretrain is None:
        return None
    rate = measure_train_tokens_per_second(config.pretrain, config.executor.threads_per_worker)
    workers = config.executor.workers if config.executor.kind != "in-process" else 1
    pretrain_tokens, trunk_tokens = pretrain_tokens_left(jobs, finished_keys)
    jobs = [job for job in jobs if job.key not in finished_keys]
    seconds = {"pretrain": 0.0, "noise": 0.0, "finetune": 0.0}
    for job in jobs:
        if job.kind == "noise":
            evaluations = 1 + len(job.spec["gammas"]) * len(job.spec["seeds"])
            seconds["noise"] += evaluations * job.spec["eval_tokens"] / (3 * rate)
        elif job.kind == "finetune":
            finetune = job.spec["finetune"]
            steps = finetune["steps"] + finetune.get("linear_probe_steps", 0)  # LP-FT's output-layer phase counted as full steps
            train_tokens = steps * finetune["batch_size"] * FINETUNE_TOKENS_PER_EXAMPLE
            readings = 2 + len(finetune.get("wise_alphas", []))  # before, after, and one per WiSE-FT alpha
            eval_tokens = readings * (job.spec["eval_tokens"] + (finetune["max_heldout"] or 200) * FINETUNE_TOKENS_PER_EXAMPLE)
            seconds["finetune"] += train_tokens / rate + eval_tokens / (3 * rate)
        elif job.kind == "sharpness":
            seconds["sharpness"] = seconds.get("sharpness", 0.0) + sharpness_forwards(job.spec) * job.spec["eval_tokens"] / (3 * rate)
    kinds_left = {job.kind for job in jobs}
    parallel = {kind: value / workers for kind, value in seconds.items() if kind in kinds_left}
    if "pretrain" in kinds_left:
        parallel["pretrain"] = max(pretrain_tokens / rate / workers, trunk_tokens / rate)
    not_estimated = dict(Counter(job.kind for job in jobs if job.kind not in ESTIMATED_KINDS))
    return SweepEstimate(parallel, rate, not_estimated)


def pretrain_tokens_left(jobs: list[Job], finished_keys: Collection[str] = frozenset()) -> tuple[int, int]:
    """Tokens the unfinished pre-training jobs train, in all and on WSD trunks (whose segments run one
    after another). Counted on the whole plan, so a segment whose predecessor is finished counts from
    that predecessor's stop, not from zero."""
    from overtrain.sweep.plan import pretrain_tokens_by_job

    tokens_by_job = pretrain_tokens_by_job(jobs)
    left = {job.key: job for job in jobs if job.kind == "pretrain" and job.key not in finished_keys}
    trunk = sum(tokens_by_job[key] for key, job in left.items() if "stop_at_tokens" in job.spec)
    return sum(tokens_by_job[key] for key in left), trunk


def format_estimate(estimate: SweepEstimate | None) -> str:
    if estimate is None:
        return "estimate: none (it is calibrated by timing the pre-training the sweep describes, and this one has none)"
    per_kind = ", ".join(f"{kind} {format_seconds(value)}" for kind, value in estimate.seconds.items())  # empty with nothing left
    line = (f"estimate on this machine ({estimate.train_tokens_per_second:,.0f} training tokens/s per worker): "
            f"{per_kind + '; ' if per_kind else ''}total {format_seconds(sum(estimate.seconds.values()))}")
    if estimate.not_estimated:
        left_out = ", ".join(f"{count} {kind}" for kind, count in sorted(estimate.not_estimated.items()))
        line += f"; not counted: {left_out} job(s), whose kinds it has no arithmetic for (their docs give measured times)"
    return line


GPU_COUNTS = (1, 8)
"""GPUs per fine-tuning run the dry run estimates (one GPU, one 8-GPU node); torchrun's WORLD_SIZE when set."""


def gpu_finetune_lines(jobs: list[Job], gpu: str = "h100") -> list[str]:
    """The dry run's GPU estimate of the fine-tuning jobs: per model shape and run settings, memory per GPU
    and hours per run on 1 and 8 GPUs (arithmetic from the shape, :mod:`overtrain.probes.finetune_scale`)."""
    import os

    from overtrain.probes.finetune_scale import RunShape, estimate_finetune, shape_of_reference

    groups: dict[tuple, list[Job]] = {}
    unknown: list[str] = []
    for job in jobs:
        if job.kind != "finetune" or job.depends_on:  # checkpoints this sweep pre-trains: the CPU estimate's domain
            continue
        shape = _cached_shape(str(job.spec["checkpoint"]), shape_of_reference)
        if shape is None:
            unknown.append(str(job.spec["checkpoint"]))
            continue
        groups.setdefault((shape, RunShape.of_spec(job.spec["finetune"], int(job.spec["eval_tokens"]))), []).append(job)
    world = int(os.environ.get("WORLD_SIZE", "0"))
    counts = (world,) if world > 1 else GPU_COUNTS
    lines = []
    for (shape, run), members in groups.items():
        lines.append(f"GPU estimate (arithmetic, not measured; docs/scale.md): {shape.name}, {shape.parameters / 1e9:.2f}B parameters, "
                     f"{len(members)} fine-tuning runs of {run.steps} steps x {run.batch_size} rows x <= {run.max_len} tokens"
                     f" (micro-batch {run.micro_batch_size or 'all'}, gradient checkpointing {'on' if run.gradient_checkpointing else 'off'}):")
        for count in counts:
            estimate = estimate_finetune(shape, run, count, gpu)
            lines.append(f"  {estimate.line()}; all {len(members)} runs ~{estimate.seconds * len(members) / 3600:.1f} h")
    if unknown:
        lines.append(f"GPU estimate: no model shape known offline for {len(set(unknown))} checkpoint(s), e.g. {unknown[0]} "
                     "(a local folder with config.json or overtrain.json, or a repository in finetune_scale.PAPER_CONFIGS)")
    return lines


_SHAPES: dict[str, object] = {}


def _cached_shape(reference: str, find):
    """One shape per repository (every revision of a Hub family shares it) or per folder."""
    key = reference.split("@", 1)[0] if reference.startswith("hf:") else reference
    if key not in _SHAPES:
        _SHAPES[key] = find(reference)
    return _SHAPES[key]
