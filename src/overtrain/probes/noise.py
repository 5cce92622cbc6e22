"""The Gaussian probe: how much does a fixed-size random change to the weights hurt?

theta' = theta + eps,  eps ~ N(0, gamma^2 Sigma).  In the paper's mode (``init``), Sigma is the covariance
of the initialization, so each tensor gets noise of std ``gamma * init_std[tensor]`` and tensors
initialized to a constant (norm gains, std 0) get none; gamma is the same for every checkpoint.
For models whose initialization is unknown there are two more modes: ``relative`` (std = gamma times the
tensor's current RMS) and ``absolute`` (std = gamma).

Each draw is undone by copying the tensors back from the checkpoint's own safetensors file: the file on
disk is already a copy of the weights, so no second copy is held in memory, and the restored weights are
bitwise equal to the originals.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open

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
    named_parameters: Mapping[str, torch.Tensor], mode: str, gamma: float, init_std: Mapping[str, float] | None
) -> dict[str, float]:
    """Std of the noise added to each tensor under ``mode`` (0 means the tensor is left alone)."""
    check_gamma(gamma)
    if mode not in NOISE_MODES:
        raise OvertrainError(f"unknown noise mode {mode!r}", f"use one of {', '.join(NOISE_MODES)}")
    if mode == "init":
        if init_std is None:
            raise OvertrainError(
                "this checkpoint records no initialization std, so init-scaled noise (mode=init) is undefined",
                "use mode=relative (noise scaled by each tensor's RMS) or mode=absolute (the same std everywhere)",
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


@torch.no_grad()
def restore_from_safetensors(named_parameters: Mapping[str, torch.Tensor], weights_file: Path) -> None:
    """Copy every tensor back from the checkpoint file (bitwise restore, one tensor in memory at a time)."""
    with safe_open(str(weights_file), framework="pt") as handle:
        stored = set(handle.keys())
        for name, param in named_parameters.items():
            if name not in stored:
                raise OvertrainError(f"{weights_file} has no tensor {name}", "the checkpoint does not match the model")
            param.copy_(handle.get_tensor(name))


@contextmanager
def perturbed(
    model: torch.nn.Module, draw: NoiseDraw, init_std: Mapping[str, float] | None, weights_file: Path
) -> Iterator[torch.nn.Module]:
    """``with perturbed(model, draw, ...) as noisy:`` evaluates ``noisy``; the weights are restored after."""
    named = dict(model.named_parameters())  # tied tensors are listed once, so they get noise once
    std_by_name = noise_std_per_tensor(named, draw.mode, draw.gamma, init_std)
    generator = torch.Generator().manual_seed(draw.seed)
    try:
        perturb_(named, std_by_name, generator)
        yield model
    finally:
        restore_from_safetensors(named, weights_file)


@dataclass(frozen=True)
class NoiseRecord:
    """The probe's read-out for one (checkpoint, gamma, seed): losses in nats per token."""

    checkpoint: str
    tokens_seen: int
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
    init_std = target.info.init_std if mode == "init" else None
    base = target.pretraining_loss().loss
    records = []
    for gamma in gammas:
        for seed in seeds:
            with perturbed(target.model, NoiseDraw(gamma, seed, mode), init_std, target.weights_file) as noisy:
                loss = target.pretraining_loss(noisy).loss
            records.append(NoiseRecord(str(target.info.folder), target.tokens_seen, gamma, seed, mode, base, loss))
            if on_draw is not None:
                on_draw(records[-1])
    return records
