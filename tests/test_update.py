"""clip_and_update: torch's clip_grad_norm_ + AdamW.step + zero_grad, bit for bit, without torch.optim's Python."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from overtrain.checkpoints.folder import optimizer_tensors, restore_optimizer
from overtrain.pretrain.update import clip_and_update


def _model_and_optimizer(fused: bool = True, **options) -> tuple[torch.nn.Module, torch.optim.AdamW]:
    """A small model with AdamW as the pre-training loop builds it: matrices decayed, vectors not; each group
    with its own betas and eps, none equal to the optimizer's defaults, so a value read from the wrong place
    changes the result."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": 0.3, "betas": (0.8, 0.9), "eps": 1e-5},
              {"params": vectors, "weight_decay": 0.0, "betas": (0.85, 0.97), "eps": 1e-4}]
    return model, torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=fused, **options)


def _backward(model: torch.nn.Module, step: int, grad_size: float) -> None:
    inputs = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
    (model(inputs).square().sum() * grad_size).backward()


def _set_lr(optimizer: torch.optim.Optimizer, step: int) -> None:
    """A schedule, as the loop sets each step: a value read from the defaults instead would differ."""
    for group in optimizer.param_groups:
        group["lr"] = 1e-2 * (0.5 + 0.5 * math.cos(step))


def _reference_update(model: torch.nn.Module, optimizer: torch.optim.AdamW, max_norm: float) -> None:
    params = list(model.parameters())
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.fixture
def optimizer_steps(monkeypatch) -> list[int]:
    """One entry per call of AdamW.step (patched on the class: a step replaced on the instance is itself a
    reason for clip_and_update to go through torch.optim)."""
    calls: list[int] = []
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # the first AdamW wraps the class's step to run the hooks
    original = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    counted.hooked = True  # already: without this, each AdamW made in the test would wrap it again (hooks run twice)
    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    return calls


def _assert_same(model: torch.nn.Module, optimizer: torch.optim.AdamW, reference_model: torch.nn.Module,
                 reference_optimizer: torch.optim.AdamW) -> None:
    for ours, theirs in zip(model.parameters(), reference_model.parameters(), strict=True):
        assert torch.equal(ours, theirs)
        assert ours.grad is None
        state, reference_state = optimizer.state.get(ours, {}), reference_optimizer.state.get(theirs, {})
        assert state.keys() == reference_state.keys()  # none for a parameter that never had a gradient
        for key in reference_state:
            assert torch.equal(state[key], reference_state[key])


def _train_both(pairs, steps: range, max_norm: float, grad_size: float = 3.0) -> None:
    """The same steps on (model, optimizer) with clip_and_update and on a reference with torch.optim."""
    (model, optimizer), (reference_model, reference_optimizer) = pairs
    for step in steps:
        for m, o in pairs:
            _set_lr(o, step)
            _backward(m, step, grad_size)
        _reference_update(reference_model, reference_optimizer, max_norm)
        clip_and_update(optimizer, list(model.parameters()), max_norm)
        _assert_same(model, optimizer, reference_model, reference_optimizer)


@pytest.mark.parametrize("max_norm", [0.05, 1e6, 0.0], ids=["clipping", "within-the-norm", "no-clip"])
def test_matches_torch_bit_for_bit_and_takes_the_direct_path_after_the_first_step(max_norm: float, optimizer_steps) -> None:
    pairs = [_model_and_optimizer(), _model_and_optimizer()]
    _train_both(pairs, range(6), max_norm)
    # 6 reference steps, and 1 of ours: the first, which creates AdamW's state through torch.optim
    assert len(optimizer_steps) == 6 + 1


def test_clipping_changes_the_update() -> None:
    """The clip is really applied: a tight max_norm gives other weights than none."""
    results = []
    for max_norm in (0.05, 0.0):
        model, optimizer = _model_and_optimizer()
        for step in range(3):
            _backward(model, step, grad_size=3.0)
            clip_and_update(optimizer, list(model.parameters()), max_norm)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(results[0], results[1])


def test_after_a_checkpoint_round_trip_it_continues_bit_for_bit(optimizer_steps) -> None:
    """Resumed as the loop resumes (optimizer_tensors, then restore_optimizer into a new optimizer): the
    direct path from the first step after it, with the same result as torch.optim on the original."""
    pairs = [_model_and_optimizer(), _model_and_optimizer()]
    _train_both(pairs, range(3), max_norm=1.0, grad_size=1.0)
    (model, optimizer), reference = pairs
    restored_model, restored_optimizer = _model_and_optimizer()
    restored_model.load_state_dict(model.state_dict())
    restore_optimizer(restored_model, restored_optimizer, optimizer_tensors(model, optimizer))
    optimizer_steps.clear()
    _train_both([(restored_model, restored_optimizer), reference], range(3, 6), max_norm=1.0, grad_size=1.0)
    assert len(optimizer_steps) == 3  # the reference's only


def test_a_non_finite_gradient_gives_what_torch_gives() -> None:
    """clip_grad_norm_ does not raise by default: an infinite gradient scales every gradient by 0 (or,
    unclipped, reaches AdamW as it is); the direct path must make the same weights, NaN where torch's are."""
    for max_norm in (1.0, 0.0):
        pairs = [_model_and_optimizer(), _model_and_optimizer()]
        _train_both(pairs, range(2), max_norm)
        for m, o in pairs:
            _backward(m, 2, grad_size=3.0)
            m[0].weight.grad[0, 0] = math.inf
        (model, optimizer), (reference_model, reference_optimizer) = pairs
        _reference_update(reference_model, reference_optimizer, max_norm)
        clip_and_update(optimizer, list(model.parameters()), max_norm)
        for ours, theirs in zip(model.parameters(), reference_model.parameters(), strict=True):
            assert torch.equal(ours.nan_to_num(nan=7.0), theirs.nan_to_num(nan=7.0))
            assert bool(ours.isnan().any()) == bool(theirs.isnan().any())


def _frozen_first_layer(model, optimizer) -> None:
    model[0].weight.requires_grad_(False)


def _step_hook(model, optimizer) -> None:
    optimizer.register_step_post_hook(lambda *_: None)


def _grad_scaler_attributes(model, optimizer) -> None:
    optimizer.grad_scale, optimizer.found_inf = torch.ones(()), torch.zeros(())


def _tensor_betas(model, optimizer) -> None:
    for group in optimizer.param_groups:
        group["betas"] = (torch.tensor(group["betas"][0]), group["betas"][1])


@pytest.mark.parametrize(("options", "change"), [
    ({"fused": False}, None),
    ({"amsgrad": True}, None),
    ({"maximize": True}, None),
    ({}, _frozen_first_layer),
    ({}, _step_hook),
    ({}, _grad_scaler_attributes),
    ({}, _tensor_betas),
], ids=["not-fused", "amsgrad", "maximize", "a-parameter-without-gradient", "a-step-hook", "grad-scaler", "tensor-betas"])
def test_falls_back_to_torch_optim_where_the_direct_path_does_not_apply(options, change, optimizer_steps) -> None:
    """torch.optim does every step (so each such case behaves as it always did), with the same result."""
    fused = options.pop("fused", True)
    pairs = [_model_and_optimizer(fused, **options), _model_and_optimizer(fused, **options)]
    if change is not None:
        for m, o in pairs:
            change(m, o)
    if change is _grad_scaler_attributes:  # optimizer.step() would unscale by them: compare the paths taken only
        _, optimizer = pairs[0]
        for step in range(3):
            _backward(pairs[0][0], step, grad_size=3.0)
            clip_and_update(optimizer, [p for p in pairs[0][0].parameters()], 0.05)
        assert len(optimizer_steps) == 3
        return
    _train_both(pairs, range(3), max_norm=0.05)
    assert len(optimizer_steps) == 3 + 3


def test_a_subset_of_the_parameters_or_none_goes_through_torch_optim(optimizer_steps) -> None:
    model, optimizer = _model_and_optimizer()
    for step in range(2):
        _backward(model, step, grad_size=1.0)
        clip_and_update(optimizer, list(model.parameters()), 1.0)
    _backward(model, 2, grad_size=1.0)
    clip_and_update(optimizer, list(model.parameters())[:2], 1.0)  # the others' gradients stay; torch.optim steps all
    clip_and_update(optimizer, [], 1.0)
    assert len(optimizer_steps) == 1 + 2


def test_a_global_step_hook_or_a_replaced_step_goes_through_torch_optim(optimizer_steps) -> None:
    """Both expect optimizer.step() itself to run every step, so the direct path must not skip it."""
    hook_calls: list[int] = []
    handle = register_optimizer_step_post_hook(lambda *_: hook_calls.append(1))
    try:
        model, optimizer = _model_and_optimizer()
        for step in range(3):
            _backward(model, step, grad_size=1.0)
            clip_and_update(optimizer, list(model.parameters()), 1.0)
    finally:
        handle.remove()
    assert len(hook_calls) == 3 and len(optimizer_steps) == 3
    model, optimizer = _model_and_optimizer()
    replaced_calls: list[int] = []
    original_step = optimizer.step
    optimizer.step = lambda *args, **kwargs: (replaced_calls.append(1), original_step(*args, **kwargs))[1]
    for step in range(3):
        _backward(model, step, grad_size=1.0)
        clip_and_update(optimizer, list(model.parameters()), 1.0)
    assert len(replaced_calls) == 3
