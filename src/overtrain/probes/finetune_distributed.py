"""Fine-tuning at scale: device, precision, gradient checkpointing, and one run spread over several processes.

A fine-tuning run spans the processes ``torchrun`` starts (NCCL on GPUs, gloo on CPUs), as pre-training
does (:mod:`overtrain.pretrain.distributed`):

- every process loads the same checkpoint (checked: the weights' sha256 must agree on every rank) and draws
  the same global batch at each step (batches are a pure function of (seed, step)); process r computes the
  loss of its shard of the rows (rows ``r*B/W .. (r+1)*B/W``), scaled by ``W / tokens in the global batch``,
  so that the averaged gradient is the gradient of the global batch's token-mean loss: W processes take the
  same optimizer steps as one (to floating-point rounding; tested with 2 CPU processes);
- ``distributed: ddp`` keeps a full replica per process (DistributedDataParallel averages the gradients);
  ``distributed: fsdp`` shards weights, gradients and AdamW states over the processes (FSDP2 ``fully_shard``
  of every decoder layer, then of the root), for models whose optimizer state does not fit one GPU (7B).
  A copy of the model is sharded and trained while the probe's model waits in host memory; the trained
  weights are gathered back into it afterwards, so measuring, WiSE-FT and restoring work as in one process;
- measurements run on every process over the whole model (the same numbers everywhere); only rank 0 stores
  them (:mod:`overtrain.sweep.torchrun`);
- ``micro_batch_size`` splits each process's rows into micro-batches whose gradients are accumulated (DDP
  synchronises once per step), so a large global batch fits in memory without changing the step.

``gradient_checkpointing`` keeps only each decoder layer's input in the forward pass and recomputes the rest
in the backward pass: ``gradient_checkpointing_enable()`` on transformers models, ``torch.utils.checkpoint``
around each decoder layer of ours. The loss and gradients are those of the plain run (tested).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from overtrain.errors import OvertrainError
from overtrain.model.loss import IGNORE_INDEX, logits_of
from overtrain.precision import autocast_context, resolve_dtype
from overtrain.pretrain.distributed import DistributedContext, all_reduce_mean, distributed_context
from overtrain.pretrain.loop import resolve_device

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
DISTRIBUTED_MODES = ("ddp", "fsdp")
FSDP_UNSUPPORTED = ("reg_lambda", "linear_probe_steps")
"""Remedies that read or freeze individual tensors, which FSDP holds as shards: refused under fsdp."""


def finetune_device(name: str, context: DistributedContext) -> torch.device:
    """Where a run computes: the process's own device under torchrun, else ``name`` (auto: CUDA if present)."""
    if context.world_size > 1:
        return context.device
    return resolve_device(name)


def finetune_dtype(precision: str, target_dtype: str, device: torch.device) -> str:
    """The dtype matmuls run in: ``precision`` when set, else the target's (``auto``: bf16 on CUDA with bf16
    support and on CPUs with AMX (:func:`overtrain.precision.cpu_has_fast_bf16`), fp32 elsewhere)."""
    return resolve_dtype(target_dtype if precision == "auto" else precision, device)


def check_distributed_settings(settings, context: DistributedContext) -> None:
    """Refuse, on every rank alike, what a run over ``context.world_size`` processes cannot do."""
    if context.world_size == 1:
        return
    if settings.batch_size % context.world_size:
        raise OvertrainError(
            f"batch_size={settings.batch_size} does not split over {context.world_size} processes",
            f"use a batch_size that is a multiple of {context.world_size} (each process takes an equal shard of the rows)",
        )
    if settings.distributed == "fsdp":
        used = [name for name in FSDP_UNSUPPORTED if getattr(settings, name)]
        if used:
            raise OvertrainError(
                f"distributed=fsdp cannot run {', '.join(used)} (they read or freeze whole tensors, which FSDP shards)",
                "use distributed=ddp for these remedies, or set " + " and ".join(f"{name}=0" for name in used),
            )


def check_same_on_every_rank(value: object, what: str, context: DistributedContext) -> None:
    """Every process must hold the same ``value`` (e.g. the checkpoint's weights sha256)."""
    if context.world_size == 1:
        return
    values: list[object] = [None] * context.world_size
    dist.all_gather_object(values, value)
    if len(set(map(str, values))) > 1:
        listed = ", ".join(f"rank {rank}: {value}" for rank, value in enumerate(values))
        raise OvertrainError(f"the processes hold different {what} ({listed})", "point every process at the same files (a shared file system)")


@contextlib.contextmanager
def scaled_for_finetuning(target, settings) -> Iterator[DistributedContext]:
    """Inside the block, ``target`` computes where and in the dtype ``settings`` say: its model on the device,
    ``target.dtype`` resolved (both put back afterwards); under torchrun the process group is joined and the
    run's settings and the checkpoint's weights are checked to be the same on every process."""
    context = distributed_context()
    check_distributed_settings(settings, context)
    check_same_on_every_rank(target.identity.get("weights_sha256"), "checkpoint weights (sha256)", context)
    device = finetune_device(str(settings.device), context)
    dtype = target.dtype
    target.dtype = finetune_dtype(settings.precision, dtype, device)
    try:
        with placed(target.model, device):
            yield context
    finally:
        target.dtype = dtype


@contextlib.contextmanager
def placed(model: nn.Module, device: torch.device) -> Iterator[None]:
    """``model`` on ``device`` inside the block, back where it was afterwards."""
    home = next(model.parameters()).device
    if home == device or (device.type == home.type and device.index is None):
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of decoder layers: the ``nn.ModuleList`` that holds the most parameters."""
    stacks = [module for module in model.modules() if isinstance(module, nn.ModuleList) and len(module) > 0]
    if not stacks:
        raise OvertrainError(f"{type(model).__name__} has no list of decoder layers to checkpoint or shard",
                             "set gradient_checkpointing=false and distributed=ddp")
    return max(stacks, key=lambda stack: sum(p.numel() for p in stack.parameters()))


@contextlib.contextmanager
def gradient_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Recompute activations in the backward pass inside the block (transformers' own switch, or
    ``torch.utils.checkpoint`` around each decoder layer); the model is as before afterwards."""
    if not enabled:
        yield
        return
    if hasattr(model, "gradient_checkpointing_enable"):
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise OvertrainError(f"{type(model).__name__} does not support gradient checkpointing", "set gradient_checkpointing=false")
        # transformers 5 renames the switch activation_checkpointing_*; older versions only have gradient_checkpointing_*
        prefix = "activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else "gradient_checkpointing"
        was_on = bool(getattr(model, f"is_{prefix}", False))
        getattr(model, f"{prefix}_enable")(**{f"{prefix}_kwargs": {"use_reentrant": False}})
        try:
            yield
        finally:
            if not was_on:
                getattr(model, f"{prefix}_disable")()
        return
    layers = list(decoder_layers(model))
    for layer in layers:  # an instance attribute shadows the class's forward; parameter names stay the same
        layer.forward = functools.partial(torch.utils.checkpoint.checkpoint, type(layer).forward.__get__(layer), use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@dataclass
class TrainingReplica:
    """What one process trains: the module the forward runs through, the tensors the optimizer updates."""

    module: nn.Module
    """The model itself (one process), its DDP wrapper, or its FSDP-sharded copy."""
    parameters: list[nn.Parameter]
    context: DistributedContext
    device: torch.device
    mode: str
    """plain | ddp | fsdp"""
    micro_batch_size: int | None

    def rows(self, count: int) -> slice:
        """This process's rows of a global batch of ``count`` rows."""
        share = count // self.context.world_size
        return slice(self.context.rank * share, (self.context.rank + 1) * share)

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor, dtype: str,
                         extra_loss: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Backpropagate the token-mean loss of the global batch (B, T) (+ ``extra_loss()``, once); return it.

        One process without micro-batches computes it as one cross-entropy mean (the plain run, bitwise);
        otherwise each micro-batch of this process's rows adds its token-sum loss scaled by
        ``world_size / tokens of the global batch``, and the ranks' values are averaged.
        """
        if self.mode == "plain" and self.micro_batch_size is None:
            with autocast_context(self.device, dtype):
                logits = logits_of(self.module, inputs.to(self.device))
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.to(self.device).flatten(), ignore_index=IGNORE_INDEX)
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            return loss.detach()
        scale = self.context.world_size / max(1, int((targets != IGNORE_INDEX).sum()))
        mine = self.rows(len(inputs))
        local_inputs, local_targets = inputs[mine], targets[mine]
        size = self.micro_batch_size or len(local_inputs)
        starts = range(0, len(local_inputs), size)
        total = 0.0
        for index, start in enumerate(starts):
            with self._sync_gradients(index == len(starts) - 1):
                with autocast_context(self.device, dtype):
                    logits = logits_of(self.module, local_inputs[start : start + size].to(self.device))
                part_targets = local_targets[start : start + size].to(self.device).flatten()
                part = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), part_targets, ignore_index=IGNORE_INDEX, reduction="sum") * scale
                if index == 0 and extra_loss is not None:
                    part = part + extra_loss()  # once per step; averaged over identical ranks it counts once
                part.backward()
            total += float(part.detach())
        return torch.tensor(all_reduce_mean(total, self.context))

    def _sync_gradients(self, sync: bool) -> contextlib.AbstractContextManager:
        """Reduce gradients over the processes only on the step's last micro-batch (DDP's no_sync; FSDP's switch)."""
        if self.mode == "ddp":
            return self.context.no_sync_unless(self.module, sync)
        if self.mode == "fsdp":
            self.module.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def clip_gradients(self, max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)


@contextlib.contextmanager
def training_replica(model: nn.Module, parameters: Sequence[nn.Parameter], settings) -> Iterator[TrainingReplica]:
    """The replica this process trains for one phase; under FSDP the trained weights are copied back into
    ``model`` when the block ends (without error)."""
    context = distributed_context()
    device = next(model.parameters()).device
    micro = getattr(settings, "micro_batch_size", None)
    checkpointing = bool(getattr(settings, "gradient_checkpointing", False))
    if context.world_size == 1:
        with gradient_checkpointing(model, checkpointing):
            yield TrainingReplica(model, list(parameters), context, device, "plain", micro)
        return
    if getattr(settings, "distributed", "ddp") == "fsdp":
        with _fsdp_replica(model, context, checkpointing, micro) as replica:
            yield replica
        return
    with gradient_checkpointing(model, checkpointing):
        wrapped = context.wrap(model)  # broadcasts rank 0's tensors: every replica starts identical
        yield TrainingReplica(wrapped, list(parameters), context, device, "ddp", micro)


@contextlib.contextmanager
def _fsdp_replica(model: nn.Module, context: DistributedContext, checkpointing: bool, micro: int | None) -> Iterator[TrainingReplica]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    home = next(model.parameters()).device
    model.to("cpu")  # the device holds only shards while the copy trains
    sharded = copy.deepcopy(model)
    mesh = init_device_mesh(context.device.type, (context.world_size,))
    with gradient_checkpointing(sharded, checkpointing):  # checkpoint first, then shard (the composition FSDP2 documents)
        for layer in decoder_layers(sharded):
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        trainable = [p for p in sharded.parameters() if p.requires_grad]
        yield TrainingReplica(sharded, trainable, context, context.device, "fsdp", micro)
    gather_into(sharded, model)
    del sharded
    model.to(home)


@torch.no_grad()
def gather_into(sharded: nn.Module, model: nn.Module) -> None:
    """Copy every parameter of the FSDP-sharded ``sharded`` (gathered whole) into ``model``'s, by name."""
    targets = dict(model.named_parameters())
    for name, parameter in sharded.named_parameters():  # the same order on every rank: the gathers match
        whole = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
        targets[name].copy_(whole.to(targets[name].device, targets[name].dtype))
