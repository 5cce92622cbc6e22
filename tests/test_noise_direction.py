"""The Gaussian probe draws the same noise direction at every checkpoint for a given seed (common random
numbers), so the differences between checkpoints are not drowned in draw-to-draw variance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import write_untrained_checkpoint

from overtrain.checkpoints.folder import load_model
from overtrain.probes.noise import NoiseDraw, perturbed


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    run = tmp_path_factory.mktemp("run")
    return [write_untrained_checkpoint(run, seed=seed, step=seed + 1, tokens_seen=256 * (seed + 1)) for seed in range(3)]


def noise_added(checkpoint: Path, draw: NoiseDraw) -> dict[str, torch.Tensor]:
    """The noise ``draw`` adds to each tensor of ``checkpoint`` (perturbed minus original weights)."""
    model, info = load_model(checkpoint)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    with perturbed(model, draw, info.init_std, checkpoint / "model.safetensors") as noisy:
        added = {name: param.detach() - before[name] for name, param in noisy.named_parameters()}
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters()), "restored bitwise"
    return added


def test_same_seed_same_noise_direction_at_every_checkpoint(checkpoints: list[Path]) -> None:
    draws = [noise_added(folder, NoiseDraw(gamma=2.0, seed=7)) for folder in checkpoints]
    weights = [load_model(folder)[0].model.embed_tokens.weight for folder in checkpoints]
    assert not torch.equal(weights[0], weights[1]), "the checkpoints differ"
    for other in draws[1:]:
        assert other.keys() == draws[0].keys()
        for name in draws[0]:
            torch.testing.assert_close(other[name], draws[0][name], rtol=0, atol=1e-6)
    embedding = draws[0]["model.embed_tokens.weight"]
    assert float(embedding.std()) == pytest.approx(2.0 * 0.02, rel=0.05)  # gamma x init std
    assert float(draws[0]["model.norm.weight"].abs().max()) == 0.0  # constant-initialized gains get none


def test_other_seed_other_direction(checkpoints: list[Path]) -> None:
    first = noise_added(checkpoints[0], NoiseDraw(gamma=1.0, seed=0))["model.layers.0.mlp.up_proj.weight"]
    second = noise_added(checkpoints[0], NoiseDraw(gamma=1.0, seed=1))["model.layers.0.mlp.up_proj.weight"]
    assert abs(float(torch.nn.functional.cosine_similarity(first.flatten(), second.flatten(), dim=0))) < 0.1
