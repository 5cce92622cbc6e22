"""Sharpness probes against exactly known answers: a quadratic 0.5 x^T A x with chosen eigenvalues, and a
tiny Llama (164 parameters, fp64) whose full Hessian is computed directly with
torch.autograd.functional.hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from overtrain.errors import OvertrainError
from overtrain.model.config import ModelConfig, parameter_names
from overtrain.model.llama import RMSNorm, build_model
from overtrain.model.loss import mean_token_loss
from overtrain.probes import sharpness
from overtrain.probes.noise import perturb_

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ----------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------


EIGENVALUES = (5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 4.0, 1.5, 0.75)  # positive definite, top 5


def matrix_with_eigenvalues(eigenvalues: tuple[float, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A = Q diag(eigenvalues) Q^T with a seeded random orthogonal Q; returns (A, Q)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T, q


class Quadratic(torch.nn.Module):
    """loss = 0.5 (theta - c)^T A (theta - c), theta = [x (6); y (4)]: its Hessian is A everywhere."""

    def __init__(self, a: torch.Tensor, centre: torch.Tensor | None = None) -> None:
        super().__init__()
        self.a = a
        self.centre = torch.zeros(a.shape[0], dtype=torch.float64) if centre is None else centre
        self.x = torch.nn.Parameter(self.centre[:6].clone())
        self.y = torch.nn.Parameter(self.centre[6:].clone())

    def loss(self) -> list[torch.Tensor]:
        offset = torch.cat([self.x, self.y]) - self.centre  # (10,)
        return [0.5 * offset @ self.a @ offset]


def flat(vector: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in vector])


TINY = ModelConfig(d_model=4, n_layers=1, n_heads=2, d_ff=4, init_std=0.5)
TINY_VOCAB = 5


@pytest.fixture(scope="module")
def tiny():
    """A 164-parameter Llama in fp64, held-out windows in two batches, and its exact Hessian (sorted names)."""
    model, init_std = build_model(TINY, TINY_VOCAB, 8, seed=0)
    model.double()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, TINY_VOCAB, (4, 6), generator=generator)  # (N, T)
    targets = torch.randint(0, TINY_VOCAB, (4, 6), generator=generator)
    targets[0, :2] = -100  # ignored targets are skipped, as in mean_token_loss
    loss = sharpness.HeldoutLoss(model, inputs, targets, batch_size=2)
    names = sorted(name for name, _ in model.named_parameters())
    params = dict(model.named_parameters())
    shapes = [params[name].shape for name in names]

    def loss_of_flat(theta: torch.Tensor) -> torch.Tensor:
        tensors, start = {}, 0
        for name, shape in zip(names, shapes):
            tensors[name] = theta[start : start + shape.numel()].view(shape)
            start += shape.numel()
        logits = functional_call(model, tensors, (inputs,))  # (N, T, V), fp64
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)

    theta = torch.cat([params[name].detach().reshape(-1) for name in names])
    with sdpa_kernel([SDPBackend.MATH]):
        hessian = torch.autograd.functional.hessian(loss_of_flat, theta, vectorize=True)  # (P, P)
    offsets, start = {}, 0
    for name, shape in zip(names, shapes):
        offsets[name] = (start, start + shape.numel())
        start += shape.numel()
    return {
        "model": model,
        "init_std": init_std,
        "loss": loss,
        "hessian": hessian,
        "offsets": offsets,
        "inputs": inputs,
        "targets": targets,
    }


def block_indices(tiny, group) -> torch.Tensor:
    """Indices into the flat (sorted-name) parameter vector of the parameters a group selects."""
    selected = sharpness.select_parameters(tiny["model"], group)
    return torch.cat([torch.arange(*tiny["offsets"][name]) for name in selected])


# ----------------------------------------------------------------------------------------------------
# Quadratic: exact eigenvalues, trace and worst case
# ----------------------------------------------------------------------------------------------------


def test_quadratic_top_eigenvalue_is_exact() -> None:
    a, _ = matrix_with_eigenvalues(EIGENVALUES, seed=0)
    model = Quadratic(a)
    result = sharpness.top_hessian_eigenvalue(model, model.loss, tol=1e-8, max_iters=50)
    assert result.converged and result.hvps <= 11  # Lanczos is exact after at most dim products
    assert result.value == pytest.approx(5.0, rel=1e-8)
    assert result.lowest == pytest.approx(0.1, rel=1e-6)
    assert result.parameters == 10


def test_largest_algebraic_not_largest_magnitude() -> None:
    """A negative eigenvalue of larger magnitude (saddle) must not be reported as the top one."""
    a, _ = matrix_with_eigenvalues((2.0, 1.0, 0.5, -7.0, -3.0, 0.2, 0.1, -1.0, 1.5, 0.3), seed=1)
    model = Quadratic(a)
    result = sharpness.top_hessian_eigenvalue(model, model.loss, tol=1e-8, max_iters=50)
    assert result.value == pytest.approx(2.0, rel=1e-8)
    assert result.lowest == pytest.approx(-7.0, rel=1e-6)


def test_quadratic_trace_exact_and_hutchinson() -> None:
    a, _ = matrix_with_eigenvalues(EIGENVALUES, seed=2)
    model = Quadratic(a)
    exact = sharpness.basis_trace(model, model.loss)
    assert exact.value == pytest.approx(sum(EIGENVALUES), abs=1e-10) and exact.stderr == 0.0
    estimate = sharpness.hutchinson_trace(model, model.loss, probes=400, seed=3)
    assert abs(estimate.value - sum(EIGENVALUES)) < 3 * estimate.stderr
    # the standard error matches the estimator's known variance 2 * sum_{i != j} A_ij^2 per probe
    variance = 2 * float((a**2).sum() - (a.diagonal() ** 2).sum())
    assert estimate.stderr == pytest.approx(math.sqrt(variance / 400), rel=0.2)


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    """z^T D z = tr D for every Rademacher z: zero spread."""
    model = Quadratic(torch.diag(torch.tensor(EIGENVALUES, dtype=torch.float64)))
    estimate = sharpness.hutchinson_trace(model, model.loss, probes=5)
    assert estimate.value == pytest.approx(sum(EIGENVALUES), abs=1e-12) and estimate.stderr == pytest.approx(0.0, abs=1e-12)


def test_quadratic_group_is_the_principal_sub_block() -> None:
    a, _ = matrix_with_eigenvalues(EIGENVALUES, seed=4)
    model = Quadratic(a)
    block = a[6:, 6:]  # y's block
    top = sharpness.top_hessian_eigenvalue(model, model.loss, group="y", tol=1e-8)
    assert top.value == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-8) and top.parameters == 4
    assert sharpness.basis_trace(model, model.loss, group=["y"]).value == pytest.approx(float(block.trace()), abs=1e-10)


def test_quadratic_worst_case_is_the_top_eigenvector_at_the_gaussian_norm() -> None:
    a, q = matrix_with_eigenvalues(EIGENVALUES, seed=5)
    centre = torch.linspace(-1, 1, 10, dtype=torch.float64)
    model = Quadratic(a, centre)
    init_std, gamma = {"x": 0.02, "y": 0.02}, 0.5
    radius = gamma * 0.02 * math.sqrt(10)  # the Gaussian draw's expected norm
    assert sharpness.perturbation_radius(dict(model.named_parameters()), init_std, gamma) == pytest.approx(radius, rel=1e-12)
    result = sharpness.worst_case_perturbation(
        model, model.loss, gamma=gamma, init_std=init_std, steps=200, tol=1e-7, seed=0, return_direction=True
    )
    assert result.converged and result.last_gain <= 1e-7 and result.passes < 200  # it stopped by itself
    assert result.radius == pytest.approx(radius, rel=1e-12)
    assert result.base_loss == pytest.approx(0.0, abs=1e-15)
    assert result.increase == pytest.approx(0.5 * 5.0 * radius**2, rel=1e-3)  # max over the sphere
    direction = flat(result.direction)
    assert float(direction.norm()) == pytest.approx(radius, rel=1e-10)
    assert abs(float(direction @ q[:, 0])) / radius > 0.999  # along the top eigenvector
    assert result.losses[0] < result.worst_loss  # the ascent beat its random start


def test_quadratic_worst_case_within_a_group() -> None:
    a, _ = matrix_with_eigenvalues(EIGENVALUES, seed=6)
    model = Quadratic(a)
    result = sharpness.worst_case_perturbation(model, model.loss, gamma=1.0, init_std={"y": 0.1}, group="y", steps=200, tol=1e-7)
    radius = 0.1 * math.sqrt(4)  # only y's 4 entries
    assert result.radius == pytest.approx(radius)
    assert result.increase == pytest.approx(0.5 * float(torch.linalg.eigvalsh(a[6:, 6:])[-1]) * radius**2, rel=1e-3)


# ----------------------------------------------------------------------------------------------------
# Tiny Llama: against its full Hessian
# ----------------------------------------------------------------------------------------------------


def test_heldout_loss_pieces_sum_to_mean_token_loss(tiny) -> None:
    with torch.no_grad():
        pieces = list(tiny["loss"]())
    assert len(pieces) == 2
    expected = mean_token_loss(tiny["model"], tiny["inputs"], tiny["targets"], dtype="fp32").loss  # fp32 cross-entropy
    assert float(sum(pieces)) == pytest.approx(expected, rel=1e-6)


def test_tiny_llama_top_eigenvalue(tiny) -> None:
    eigenvalues = torch.linalg.eigvalsh(tiny["hessian"])
    assert -eigenvalues[0] > eigenvalues[-1] > 0  # the most negative one dominates: a real test of "largest"
    result = sharpness.top_hessian_eigenvalue(tiny["model"], tiny["loss"], tol=1e-4, max_iters=100, seed=0)
    assert result.converged
    assert result.value == pytest.approx(float(eigenvalues[-1]), rel=1e-3)
    assert result.parameters == tiny["hessian"].shape[0] == 164


def test_tiny_llama_top_eigenvalue_of_a_group(tiny) -> None:
    index = block_indices(tiny, "mlp")
    block = tiny["hessian"][index][:, index]
    result = sharpness.top_hessian_eigenvalue(tiny["model"], tiny["loss"], group="mlp", tol=1e-4)
    assert result.parameters == 48
    assert result.value == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-3)


def test_tiny_llama_trace(tiny) -> None:
    exact = float(tiny["hessian"].trace())
    estimate = sharpness.hutchinson_trace(tiny["model"], tiny["loss"], probes=24, seed=0)
    assert abs(estimate.value - exact) < 3 * estimate.stderr
    index = block_indices(tiny, "norms")  # 12 gains: the exact basis trace of a sub-block
    basis = sharpness.basis_trace(tiny["model"], tiny["loss"], group="norms")
    assert basis.value == pytest.approx(float(tiny["hessian"][index][:, index].trace()), rel=1e-9)


def test_tiny_llama_worst_case_follows_the_gradient_at_small_norm(tiny) -> None:
    """At small radius r the maximiser of L(theta + delta) on ||delta|| = r is r g/||g|| + O(r^2), and the
    largest increase is r ||g|| + r^2/2 u^T H u + O(r^3) with u = g/||g|| (H: the exact Hessian)."""
    model, loss = tiny["model"], tiny["loss"]
    moved = sharpness.gaussian_moved(model, None, tiny["init_std"])  # the norm gains (init std 0) stay put
    assert 0 < len(moved) < len(dict(model.named_parameters()))
    base, gradient = sharpness.loss_and_gradient(loss, list(moved.values()))
    g = flat(gradient)
    u = g / g.norm()
    radius = 1e-3
    index = torch.cat([torch.arange(*tiny["offsets"][name]) for name in moved])
    block = tiny["hessian"][index][:, index]  # the moved tensors' Hessian, in their order
    expected = radius * float(g.norm()) + 0.5 * radius**2 * float(u @ block @ u)
    result = sharpness.worst_case_perturbation(
        model, loss, gamma=0.0, init_std=tiny["init_std"], radius=radius, steps=4, tol=0.0, return_direction=True
    )
    assert result.base_loss == pytest.approx(base, rel=1e-12)
    assert result.increase == pytest.approx(expected, rel=1e-3)
    assert float(flat(result.direction) @ g) / (radius * float(g.norm())) > 0.999  # curvature tilts it by O(r)


def test_tiny_llama_worst_case_beats_the_gaussian_draw(tiny) -> None:
    model, loss, init_std = tiny["model"], tiny["loss"], tiny["init_std"]
    gamma = 0.05
    named = dict(model.named_parameters())
    saved = {name: p.detach().clone() for name, p in named.items()}
    perturb_(named, {name: gamma * init_std[name] for name in named}, torch.Generator().manual_seed(0))
    gaussian = sharpness.loss_value(loss)
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(saved[name])
    result = sharpness.worst_case_perturbation(model, loss, gamma=gamma, init_std=init_std, steps=5, tol=0.0)
    assert result.increase > gaussian - result.base_loss
    assert result.passes == 5 + 1  # forward+backward at theta and at 4 points, a forward pass at the last


def test_worst_case_says_whether_the_ascent_converged() -> None:
    a, _ = matrix_with_eigenvalues(EIGENVALUES, seed=8)
    model = Quadratic(a, torch.linspace(-1, 1, 10, dtype=torch.float64))
    init_std = {"x": 0.02, "y": 0.02}
    short = sharpness.worst_case_perturbation(model, model.loss, gamma=0.5, init_std=init_std, steps=3, tol=1e-6)
    long = sharpness.worst_case_perturbation(model, model.loss, gamma=0.5, init_std=init_std, steps=300, tol=1e-6)
    assert not short.converged and len(short.losses) == 3  # three points: still climbing
    assert long.converged and len(long.losses) < 300 and long.increase > short.increase
    assert long.increase == pytest.approx(0.5 * 5.0 * (0.5 * 0.02 * math.sqrt(10)) ** 2, rel=1e-4)


def test_worst_case_radius_is_the_norm_of_a_real_gaussian_draw() -> None:
    model, init_std = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64), 50, 16, seed=0)
    named = dict(model.named_parameters())
    saved = {name: p.detach().clone() for name, p in named.items()}
    gamma = 2.0
    perturb_(named, {name: gamma * init_std[name] for name in named}, torch.Generator().manual_seed(0))
    drawn = math.sqrt(sum(float((p.detach() - saved[name]).pow(2).sum()) for name, p in named.items()))
    moved = sharpness.gaussian_moved(model, None, init_std)
    assert sharpness.perturbation_radius(moved, init_std, gamma) == pytest.approx(drawn, rel=0.02)  # ~30k entries: ~0.5% spread
    assert all(float((named[name].detach() - saved[name]).abs().max()) == 0.0 for name in named if name not in moved)


# ----------------------------------------------------------------------------------------------------
# The model is left exactly as found; groups; determinism; errors
# ----------------------------------------------------------------------------------------------------


def test_every_probe_restores_the_model_bitwise() -> None:
    model, init_std = build_model(ModelConfig(d_model=8, n_layers=1, n_heads=2, d_ff=8), 7, 8, seed=3)
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randint(0, 7, (2, 5), generator=generator), torch.randint(0, 7, (2, 5), generator=generator)
    loss = sharpness.HeldoutLoss(model, inputs, targets, batch_size=1)
    model.train()
    model.model.norm.weight.requires_grad_(False)
    model.lm_head.weight.grad = torch.full_like(model.lm_head.weight, 0.25)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with torch.no_grad():  # the probes turn gradients on themselves
        sharpness.top_hessian_eigenvalue(model, loss, max_iters=3)
        sharpness.hutchinson_trace(model, loss, probes=2, group="attention")
        sharpness.worst_case_perturbation(model, loss, gamma=4.0, init_std=init_std, steps=2)
        sharpness.worst_case_perturbation(model, loss, gamma=4.0, init_std=init_std, steps=1, group="attention", radius=0.5)
        with pytest.raises(OvertrainError, match="nothing to move"):  # the norm gains get no Gaussian noise
            sharpness.worst_case_perturbation(model, loss, gamma=4.0, init_std=init_std, steps=1, group="norms")
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
        assert p.requires_grad == flags[name], name
    assert model.training
    assert torch.equal(model.lm_head.weight.grad, torch.full_like(model.lm_head.weight, 0.25))
    assert model.model.embed_tokens.weight.grad is None


def test_named_groups_partition_llama_parameters() -> None:
    config = ModelConfig(d_model=8, n_layers=2, n_heads=2, d_ff=8)
    model, _ = build_model(config, 7, 8, seed=0)
    names = set(parameter_names(config))
    seen: list[str] = []
    for group in sharpness.TENSOR_GROUPS:
        seen += list(sharpness.select_parameters(model, group))
    assert sorted(seen) == sorted(names)  # every tensor in exactly one group


def test_named_groups_partition_a_model_with_norms_inside_attention() -> None:
    # OLMo-2 and Qwen3 normalize q and k inside self_attn: those gains are norms, not attention.
    layer = torch.nn.Module()
    layer.self_attn = torch.nn.Module()
    layer.self_attn.q_proj = torch.nn.Linear(4, 4, bias=False)
    layer.self_attn.q_norm = RMSNorm(4, 1e-6)
    layer.mlp = torch.nn.Module()
    layer.mlp.up_proj = torch.nn.Linear(4, 4, bias=False)
    layer.input_layernorm = RMSNorm(4, 1e-6)
    model = torch.nn.Module()
    model.embed_tokens = torch.nn.Embedding(5, 4)
    model.layers = torch.nn.ModuleList([layer])
    groups = {group: set(sharpness.select_parameters(model, group)) for group in sharpness.TENSOR_GROUPS}
    assert groups["attention"] == {"layers.0.self_attn.q_proj.weight"}
    assert groups["norms"] == {"layers.0.self_attn.q_norm.weight", "layers.0.input_layernorm.weight"}
    assert sorted(name for names in groups.values() for name in names) == sorted(dict(model.named_parameters()))
    assert set(sharpness.select_parameters(model, ["attention", "*q_norm*"])) == {"layers.0.self_attn.q_proj.weight",
                                                                              "layers.0.self_attn.q_norm.weight"}  # a glob still reaches it


def test_probes_are_deterministic_given_a_seed() -> None:
    a, _ = matrix_with_eigenvalues(EIGENVALUES, seed=7)
    model = Quadratic(a)
    first = sharpness.hutchinson_trace(model, model.loss, probes=8, seed=11)
    assert first == sharpness.hutchinson_trace(model, model.loss, probes=8, seed=11)
    assert first.samples != sharpness.hutchinson_trace(model, model.loss, probes=8, seed=12).samples
    assert sharpness.top_hessian_eigenvalue(model, model.loss, seed=4, max_iters=3) == sharpness.top_hessian_eigenvalue(
        model, model.loss, seed=4, max_iters=3
    )


def test_bad_input_names_the_fix() -> None:
    model = Quadratic(torch.eye(10, dtype=torch.float64))
    with pytest.raises(OvertrainError, match="matches no parameter"):
        sharpness.top_hessian_eigenvalue(model, model.loss, group="attention")
    with pytest.raises(OvertrainError, match="standard error"):
        sharpness.hutchinson_trace(model, model.loss, probes=1)
    with pytest.raises(OvertrainError, match="init std missing"):
        sharpness.worst_case_perturbation(model, model.loss, gamma=1.0, init_std={"x": 0.02})
    with pytest.raises(OvertrainError, match="negative"):
        sharpness.worst_case_perturbation(model, model.loss, gamma=-1.0, init_std={"x": 0.02, "y": 0.02})
    with pytest.raises(OvertrainError, match="max_parameters"):
        sharpness.basis_trace(model, model.loss, max_parameters=5)
    with pytest.raises(OvertrainError, match="shapes"):
        sharpness.HeldoutLoss(model, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
