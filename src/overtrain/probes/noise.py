"""The Gaussian probe: how much does a fixed-size random change to the weights hurt?

theta' = theta + eps,  eps ~ N(0, gamma^2 Sigma).  In the paper's mode (``init``), Sigma is the covariance
of the initialization, so each tensor gets noise of std ``gamma * init_std[tensor]`` and tensors
initialized to a constant (norm gains, std 0) get none; gamma is the same for every checkpoint.
For models whose initialization is unknown there are two more modes: ``relative`` (std = gamma times the
tensor's current RMS) and ``absolute`` (std = gamma).

Each draw is undone by copying the tensors back from the checkpoint's own safetensors files, one tensor at
a time: the files on disk are already a copy of the weights, so the probe holds at most one extra tensor
(the noise being added, or the tensor being read back), never a second state dict, and the restored
weights are bitwise equal to the loaded ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from overtrain.checkpoints.foreign import tensor_index
from overtrain.checkpoints.tensor_files import read_parameters
from overtrain.errors import OvertrainError

NoiseMode = Literal["init", "relative", "absolute"]
NOISE_MODES: tuple[str, ...] = ("init", "relative", "absolute")


@dataclass(frozen=True)
class NoiseDraw:
    """One perturbation: its size, its mode, and the seed that makes it reproducible."""

    gamma: float
    seed: int
    mode: NoiseMode = "init"


def check_gamma(gamma: float) -> None:
    if not gamma >= 0:  # also rejects NaN
        raise OvertrainError(f"gamma={gamma!r} is negative", "gamma is a noise scale: use values >= 0, e.g. gammas=[0.5,1,2]")


def noise_std_per_tensor(
    named_parameters: Mapping[str, torch.Tensor],
    mode: str,
    gamma: float,
    init_std: Mapping[str, float] | None,
    init_std_source: str = "this checkpoint records none",
) -> dict[str, float]:
    """Std of the noise added to each tensor under ``mode`` (0 means the tensor is left alone).

    ``init_std_source`` says why ``init_std`` is missing, for the error of mode=init.
    """
    check_gamma(gamma)
    if mode not in NOISE_MODES:
        raise OvertrainError(f"unknown noise mode {mode!r}", f"use one of {', '.join(NOISE_MODES)}")
    if mode == "init":
        if init_std is None:
            raise OvertrainError(
                f"init-scaled noise (mode=init) needs each tensor's initialization std, and {init_std_source}",
                "use mode=relative (noise scaled by each tensor's RMS) or mode=absolute (the same std everywhere), "
                "or give init std rules such as init_std_rules={'*': 0.02}",
            )
        missing = [name for name in named_parameters if name not in init_std]
        if missing:
            raise OvertrainError(f"init std missing for {missing[:3]}", "use mode=relative or mode=absolute for this model")
        return {name: gamma * float(init_std[name]) for name in named_parameters}
    if mode == "relative":
        return {name: gamma * float(p.detach().float().pow(2).mean().sqrt()) for name, p in named_parameters.items()}
    return {name: gamma for name in named_parameters}


@torch.no_grad()
def perturb_(named_parameters: Mapping[str, torch.Tensor], std_by_name: Mapping[str, float], generator: torch.Generator) -> None:
    """Add N(0, std^2) noise in place, tensor by tensor, in a fixed (sorted-name) order."""
    for name in sorted(named_parameters):
        std = std_by_name[name]
        if std > 0:
            param = named_parameters[name]
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.add_(noise.to(param.device, param.dtype), alpha=std)


def restore_from_safetensors(
    named_parameters: Mapping[str, torch.Tensor],
    weights: Path | Sequence[Path],
    keys: Mapping[str, str] | None = None,
) -> None:
    """Copy every tensor back from the weight file(s) (bitwise restore, one tensor in memory at a time).

    ``keys`` maps a parameter name to its key in the files where they differ (a tied ``lm_head`` stored as
    the embedding); by default the names are the keys. Plain reads straight into each parameter's
    storage: no mmap, so the file's pages are not counted in the process's memory.
    """
    files = [Path(weights)] if isinstance(weights, (str, Path)) else [Path(file) for file in weights]
    wanted = {name: (keys or {}).get(name, name) for name in named_parameters}
    index = tensor_index(files)
    absent = sorted(key for key in wanted.values() if key not in index)
    if absent:
        raise OvertrainError(f"{', '.join(map(str, files))} hold no tensor {absent[:3]}", "the checkpoint does not match the model")
    read_parameters(named_parameters, wanted, index)


@contextmanager
def perturbed(
    model: torch.nn.Module,
    draw: NoiseDraw,
    init_std: Mapping[str, float] | None,
    weights: Path | Sequence[Path],
    keys: Mapping[str, str] | None = None,
    init_std_source: str = "this checkpoint records none",
) -> Iterator[torch.nn.Module]:
    """``with perturbed(model, draw, ...) as noisy:`` evaluates ``noisy``; the weights are restored after."""
    named = dict(model.named_parameters())  # tied tensors are listed once, so they get noise once
    std_by_name = noise_std_per_tensor(named, draw.mode, draw.gamma, init_std, init_std_source)
    generator = torch.Generator().manual_seed(draw.seed)
    try:
        perturb_(named, std_by_name, generator)
        yield model
    finally:
        restore_from_safetensors(named, weights, keys)


@dataclass(frozen=True)
class NoiseRecord:
    """The probe's read-out for one (checkpoint, gamma, seed): losses in nats per token."""

    checkpoint: str
    """The reference probed: a checkpoint folder or hf:ORG/NAME@REVISION (its identity: ``target.identity``)."""
    tokens_seen: int | None
    """Pre-training tokens, ``None`` for a foreign model whose count is unknown."""
    gamma: float
    seed: int
    mode: str
    base_loss: float
    perturbed_loss: float

    @property
    def delta(self) -> float:
        return self.perturbed_loss - self.base_loss

    def as_dict(self) -> dict[str, float | int | str]:
        return {**self.__dict__, "delta": self.delta}


def run_noise_probe(target, gammas: list[float], seeds: list[int], mode: str = "init", on_draw=None) -> list[NoiseRecord]:
    """Base loss once, then the perturbed loss of every (gamma, seed) draw of ``target`` (a ProbeTarget).

    The same seed gives the same noise direction at every checkpoint (common random numbers), so the
    differences between checkpoints are not drowned in draw-to-draw variance.
    """
    for gamma in gammas:
        check_gamma(gamma)
    init_std = target.init_std if mode == "init" else None
    noise_std_per_tensor(dict(target.model.named_parameters()), mode, 0.0, init_std, target.init_std_source)  # fail before any loss
    base = target.pretraining_loss().loss
    records = []
    for gamma in gammas:
        for seed in seeds:
            draw = NoiseDraw(gamma, seed, mode)
            with perturbed(target.model, draw, init_std, target.weight_files, target.parameter_keys, target.init_std_source) as noisy:
                loss = target.pretraining_loss(noisy).loss
            if not math.isfinite(loss):
                raise OvertrainError(
                    f"the perturbed loss of {target.reference} at gamma {gamma:g} (seed {seed}, mode {mode}) is {loss}: "
                    "the noise overflowed the model's arithmetic",
                    "use smaller gammas (mode=init scales each tensor's init std by gamma; mode=absolute makes gamma the std itself)",
                )
            records.append(NoiseRecord(target.reference, target.tokens_seen, gamma, seed, mode, base, loss))
            if on_draw is not None:
                on_draw(records[-1])
    return records
