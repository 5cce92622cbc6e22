"""clip_and_update: torch's clip_grad_norm_ + AdamW.step + zero_grad, bit for bit, without torch.optim's Python."""

from __future__ import annotations

import copy

import pytest
import torch

from overtrain.pretrain.update import clip_and_update


def _model_and_optimizer(fused: bool = True) -> tuple[torch.nn.Module, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": 0.3}, {"params": vectors, "weight_decay": 0.0}]
    return model, torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def _backward(model: torch.nn.Module, step: int, grad_size: float) -> None:
    inputs = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
    (model(inputs).square().sum() * grad_size).backward()


def _reference_update(model: torch.nn.Module, optimizer: torch.optim.AdamW, max_norm: float) -> None:
    params = list(model.parameters())
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _count_optimizer_steps(optimizer: torch.optim.AdamW, counter: list[int]) -> None:
    original = optimizer.step

    def counted(*args, **kwargs):
        counter.append(1)
        return original(*args, **kwargs)

    optimizer.step = counted


@pytest.mark.parametrize("max_norm", [0.05, 1e6, 0.0], ids=["clipping", "within-the-norm", "no-clip"])
def test_matches_torch_bit_for_bit_and_takes_the_direct_path_after_the_first_step(max_norm: float) -> None:
    reference_model, reference_optimizer = _model_and_optimizer()
    model, optimizer = _model_and_optimizer()
    optimizer_steps: list[int] = []
    _count_optimizer_steps(optimizer, optimizer_steps)
    for step in range(6):
        _backward(reference_model, step, grad_size=3.0)
        _backward(model, step, grad_size=3.0)
        _reference_update(reference_model, reference_optimizer, max_norm)
        clip_and_update(optimizer, list(model.parameters()), max_norm)
        for ours, theirs in zip(model.parameters(), reference_model.parameters()):
            assert torch.equal(ours, theirs)
            assert ours.grad is None
    # the first step creates AdamW's state through torch.optim; the other five do not go through it
    assert len(optimizer_steps) == 1
    for ours, theirs in zip(model.parameters(), reference_model.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[ours][key], reference_optimizer.state[theirs][key])


def test_clipping_changes_the_update() -> None:
    """The clip is really applied: a tight max_norm gives other weights than none (the test above would
    pass for a path that skipped clipping in both implementations only if torch also skipped it)."""
    results = []
    for max_norm in (0.05, 0.0):
        model, optimizer = _model_and_optimizer()
        for step in range(3):
            _backward(model, step, grad_size=3.0)
            clip_and_update(optimizer, list(model.parameters()), max_norm)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(results[0], results[1])


def test_after_a_state_dict_round_trip_it_continues_bit_for_bit() -> None:
    reference_model, reference_optimizer = _model_and_optimizer()
    model, optimizer = _model_and_optimizer()
    for step in range(3):
        for m, o, update in ((reference_model, reference_optimizer, _reference_update), (model, optimizer, None)):
            _backward(m, step, grad_size=1.0)
            if update:
                update(m, o, 1.0)
            else:
                clip_and_update(o, list(m.parameters()), 1.0)
    restored_model, restored_optimizer = _model_and_optimizer()
    restored_model.load_state_dict(copy.deepcopy(model.state_dict()))
    restored_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    optimizer_steps: list[int] = []
    _count_optimizer_steps(restored_optimizer, optimizer_steps)
    for step in range(3, 6):
        _backward(reference_model, step, grad_size=1.0)
        _backward(restored_model, step, grad_size=1.0)
        _reference_update(reference_model, reference_optimizer, 1.0)
        clip_and_update(restored_optimizer, list(restored_model.parameters()), 1.0)
    assert optimizer_steps == []
    for ours, theirs in zip(restored_model.parameters(), reference_model.parameters()):
        assert torch.equal(ours, theirs)


def test_falls_back_to_torch_optim_where_the_direct_path_does_not_apply() -> None:
    """Not fused, or a parameter without a gradient this step: torch.optim does the step (same result)."""
    for fused, frozen_first_layer in ((False, False), (True, True)):
        reference_model, reference_optimizer = _model_and_optimizer(fused)
        model, optimizer = _model_and_optimizer(fused)
        optimizer_steps: list[int] = []
        _count_optimizer_steps(optimizer, optimizer_steps)
        for step in range(3):
            for m in (reference_model, model):
                m[0].weight.requires_grad_(not frozen_first_layer)
                _backward(m, step, grad_size=3.0)
            _reference_update(reference_model, reference_optimizer, 0.05)
            clip_and_update(optimizer, list(model.parameters()), 0.05)
        assert len(optimizer_steps) == 3
        for ours, theirs in zip(model.parameters(), reference_model.parameters()):
            assert torch.equal(ours, theirs)
