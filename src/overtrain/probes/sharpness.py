"""Sharpness probes: how curved is the held-out loss around a checkpoint, and how bad is the worst change?

Three read-outs beside the Gaussian probe (``overtrain.probes.noise``), on any torch model (our
:class:`~overtrain.model.llama.LlamaLM` or a transformers causal LM):

- :func:`top_hessian_eigenvalue`: the largest (algebraic) eigenvalue of the Hessian of the loss, by
  Lanczos on Hessian-vector products (double backward), three vectors kept.
- :func:`hutchinson_trace`: the Hessian trace by Hutchinson's estimator with Rademacher probes, with its
  standard error over probes (:func:`basis_trace` gives it exactly, one basis vector per parameter).
- :func:`worst_case_perturbation`: normalized gradient ascent on the sphere whose radius is the expected
  norm of the Gaussian probe's draw at the same gamma, over the tensors that draw moves, until the ascent
  stops finding more (or a step limit, and then it says so), returning the largest loss increase found.

Every probe takes an optional tensor ``group`` (``"embeddings"``, ``"attention"``, ``"mlp"``, ``"norms"``
or globs over parameter names) and then works on that block alone: the Hessian is the principal
sub-block of those parameters, the perturbation moves only them (and of them only those with an init
std above 0, which the Gaussian draw moves: so ``norms`` has no worst case).

The loss is a :data:`LossPieces` closure: called, it yields scalar tensors whose *sum* is the loss. Each
piece is differentiated on its own, so only one batch's graph is alive at a time, and a Hessian-vector
product holds four parameter-sized buffers (the vector, the accumulated product, the gradient of one piece
and its product) besides one batch's activations. :class:`HeldoutLoss` cuts the fixed held-out windows
into such pieces, token-weighted exactly like :func:`overtrain.model.loss.mean_token_loss`.

Every probe leaves the model as it found it: weights bitwise, ``requires_grad`` of every parameter,
training mode, and ``.grad`` (gradients are taken with ``torch.autograd.grad``, never accumulated).
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from overtrain.errors import OvertrainError
from overtrain.model.loss import IGNORE_INDEX, logits_of
from overtrain.precision import autocast_context
from overtrain.probes.noise import check_gamma

LossPieces = Callable[[], Iterable[torch.Tensor]]
"""Called, yields scalar tensors whose sum is the loss (one per held-out batch, or one for a toy loss)."""

Vector = list[torch.Tensor]
"""A vector in parameter space: one tensor per selected parameter, in the selection's (sorted-name) order."""

TENSOR_GROUPS: dict[str, tuple[str, ...]] = {
    "embeddings": ("*embed_tokens.weight", "lm_head.weight"),
    "attention": ("*self_attn.*",),
    "mlp": ("*.mlp.*",),
    "norms": ("*norm.weight",),
}
"""Named tensor groups as globs over Llama (Hugging Face) parameter names; other models pass their own globs."""

GROUP_EXCLUDES: dict[str, tuple[str, ...]] = {"attention": TENSOR_GROUPS["norms"], "mlp": TENSOR_GROUPS["norms"]}
"""Names a named group leaves to another: a norm inside a block (OLMo-2's and Qwen3's ``self_attn.q_norm``)
is in ``norms`` only, so that the named groups partition those models' tensors as they do Llama's."""

GroupSpec = str | Sequence[str] | None
"""``None`` (every parameter), a group name from :data:`TENSOR_GROUPS`, a glob, or a list of either."""


# ----------------------------------------------------------------------------------------------------
# Selecting parameters and leaving the model as it was
# ----------------------------------------------------------------------------------------------------


def _group_items(group: GroupSpec) -> list[str] | None:
    """The names and globs of a group spec (``None``: every parameter)."""
    if group is None:
        return None
    items = [group] if isinstance(group, str) else list(group)
    if not items:
        raise OvertrainError("an empty tensor group selects no parameter", "pass group=None for every parameter, or a group name")
    return items


def group_globs(group: GroupSpec) -> tuple[str, ...] | None:
    """The globs a group spec stands for (``None``: every parameter), before :data:`GROUP_EXCLUDES`."""
    items = _group_items(group)
    return None if items is None else tuple(glob for item in items for glob in TENSOR_GROUPS.get(item, (item,)))


def _item_selects(item: str, name: str) -> bool:
    """Whether one group name or glob selects the parameter ``name``."""
    def matches(globs: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatch(name, glob) for glob in globs)
    return matches(TENSOR_GROUPS.get(item, (item,))) and not matches(GROUP_EXCLUDES.get(item, ()))


def select_parameters(model: torch.nn.Module, group: GroupSpec = None) -> dict[str, torch.nn.Parameter]:
    """The parameters a probe acts on, by sorted name (tied tensors once, under their first name)."""
    named = dict(model.named_parameters())  # named_parameters lists a tied tensor once
    items = _group_items(group)
    if items is not None:
        named = {name: p for name, p in named.items() if any(_item_selects(item, name) for item in items)}
        if not named:
            raise OvertrainError(
                f"tensor group {group!r} matches no parameter of this model",
                f"use one of {', '.join(TENSOR_GROUPS)} (Llama names) or globs over names like "
                f"{next(iter(dict(model.named_parameters())), '?')!r}",
            )
    if not named:
        raise OvertrainError("this model has no parameters", "probe a model with weights")
    return {name: named[name] for name in sorted(named)}


@contextlib.contextmanager
def probing(model: torch.nn.Module, selected: Mapping[str, torch.nn.Parameter]) -> Iterator[Vector]:
    """Eval mode, gradients on for ``selected`` only, grad mode enabled; everything put back after.

    Yields the selected parameters as a list (the order every :data:`Vector` uses).
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    chosen = {id(p) for p in selected.values()}
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(id(param) in chosen)
        with torch.enable_grad():
            yield list(selected.values())
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)


# ----------------------------------------------------------------------------------------------------
# The loss as pieces
# ----------------------------------------------------------------------------------------------------


@dataclass
class HeldoutLoss:
    """Token-weighted mean loss of ``model`` on fixed (N, T) windows, yielded one batch at a time.

    Each piece is the batch's summed token loss / total_tokens, so the pieces sum to the number
    :func:`~overtrain.model.loss.mean_token_loss` reports (to fp32 rounding). ``dtype`` defaults to fp32: curvature from
    bf16 activations is dominated by rounding.
    """

    model: torch.nn.Module
    inputs: torch.Tensor  # (N, T)
    targets: torch.Tensor  # (N, T), IGNORE_INDEX where no loss is taken
    batch_size: int = 16
    dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.ndim != 2:
            raise OvertrainError(
                f"held-out inputs {tuple(self.inputs.shape)} and targets {tuple(self.targets.shape)} must be equal (N, T) shapes",
                "pass the windows of overtrain.data.tokens.heldout_windows (or a ProbeTarget's eval_inputs/eval_targets)",
            )
        if self.batch_size < 1:
            raise OvertrainError(f"batch_size={self.batch_size} must be at least 1", "use e.g. batch_size=16")
        self.tokens = int((self.targets != IGNORE_INDEX).sum())
        if self.tokens == 0:
            raise OvertrainError("the held-out windows contain no target token", "use windows with targets != -100")

    def __call__(self) -> Iterator[torch.Tensor]:
        device = next(self.model.parameters()).device
        for start in range(0, self.inputs.shape[0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            with autocast_context(device, self.dtype):
                logits = logits_of(self.model, self.inputs[rows].to(device))  # (B, T, V)
            yield summed_loss(logits, self.targets[rows].to(device)) / self.tokens


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropies over non-ignored targets, like ``summed_token_loss`` (fp32 from bf16/fp32
    logits) but kept in fp64 for fp64 logits, so curvature checks in fp64 are not rounded to fp32."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype).flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")


def heldout_loss_of(target, batch_size: int = 16, dtype: str = "fp32") -> HeldoutLoss:
    """The pre-training held-out loss of a :class:`~overtrain.probes.target.ProbeTarget`, as pieces."""
    return HeldoutLoss(target.model, target.eval_inputs, target.eval_targets, batch_size, dtype)


def _sdpa_math() -> contextlib.AbstractContextManager:
    """Double backward needs the math attention kernel (the fused CPU/CUDA kernels have no second derivative)."""
    return sdpa_kernel([SDPBackend.MATH])


# ----------------------------------------------------------------------------------------------------
# Vector algebra on lists of tensors
# ----------------------------------------------------------------------------------------------------


def _dot(a: Vector, b: Vector) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _scaled(a: Vector, factor: float) -> Vector:
    return [x * factor for x in a]


def _gaussian(params: Vector, generator: torch.Generator) -> Vector:
    """N(0, 1) per entry, drawn on the CPU in the selection order so the draw does not depend on the device."""
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype) for p in params]


def _rademacher(params: Vector, generator: torch.Generator) -> Vector:
    """+-1 per entry with equal probability, drawn on the CPU in the selection order."""
    return [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p.device, p.dtype) for p in params]


def _grads_or_zeros(grads: Sequence[torch.Tensor | None], params: Vector) -> Vector:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


# ----------------------------------------------------------------------------------------------------
# Gradients and Hessian-vector products
# ----------------------------------------------------------------------------------------------------


def loss_and_gradient(loss: LossPieces, params: Vector) -> tuple[float, Vector]:
    """The loss and its gradient in ``params``: one forward and one backward pass over the pieces."""
    total, gradient = 0.0, [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for piece in loss():
            grads = torch.autograd.grad(piece, params, allow_unused=True)
            for acc, g in zip(gradient, grads, strict=True):
                if g is not None:
                    acc.add_(g)
            total += float(piece.detach())
    return total, gradient


def loss_value(loss: LossPieces) -> float:
    """The loss alone: one forward pass, no graph."""
    with torch.no_grad():
        return float(sum(float(piece) for piece in loss()))


def hessian_vector_product(loss: LossPieces, params: Vector, vector: Vector) -> Vector:
    """H v for the Hessian of the loss in ``params``: per piece, a gradient with its graph, then the
    gradient of (gradient . v). Cost: one forward, one graph-keeping backward and one backward through it
    (about 4-5 forward passes of work) per piece. Memory: v, H v, one piece's gradient and its H v."""
    product = [torch.zeros_like(p) for p in params]
    with torch.enable_grad(), _sdpa_math():
        for piece in loss():
            grads = _grads_or_zeros(torch.autograd.grad(piece, params, create_graph=True, allow_unused=True), params)
            directional = sum((g * v).sum() for g, v in zip(grads, vector, strict=True))  # scalar g . v
            if not directional.requires_grad:  # the piece is linear in params: its Hessian is zero
                continue
            second = torch.autograd.grad(directional, params, allow_unused=True)
            for acc, h in zip(product, second, strict=True):
                if h is not None:
                    acc.add_(h)
            del grads, directional, second
    return product


# ----------------------------------------------------------------------------------------------------
# Top eigenvalue: Lanczos
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenResult:
    """The largest Hessian eigenvalue found, and how it was found.

    ``residual`` is Lanczos's estimate of ||H y - value y|| for the unit Ritz vector y (beta_k |s_k|): some
    eigenvalue of H lies within it of ``value``, and the error of ``value`` itself is of order
    residual^2 / (gap to the next eigenvalue). ``hvps`` counts Hessian-vector products (each one pass
    over the data); ``converged`` says whether ``residual <= tol * |value|`` was reached.
    """

    value: float
    hvps: int
    converged: bool
    residual: float
    parameters: int
    lowest: float
    """The smallest Ritz value (free by-product; converges more slowly than ``value``, not checked)."""


def _tridiagonal_extremes(alphas: list[float], betas: list[float]) -> tuple[float, float, float]:
    """Largest Ritz value, the last component of its eigenvector, and the smallest Ritz value of the
    Lanczos matrix T_k (diagonal ``alphas``, off-diagonal ``betas``; k x k, fp64)."""
    size = len(alphas)
    matrix = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if size > 1:
        off = torch.tensor(betas[: size - 1], dtype=torch.float64)
        matrix += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(matrix)  # ascending
    return float(values[-1]), float(vectors[-1, -1]), float(values[0])


def lanczos_top_eigenvalue(
    apply: Callable[[Vector], Vector], start: Vector, tol: float, max_iters: int
) -> tuple[float, float, float, int, bool]:
    """Largest eigenvalue of the symmetric operator ``apply`` by the Lanczos three-term recurrence.

    Keeps three vectors besides the product's own buffers (no reorthogonalization: lost orthogonality only adds duplicate Ritz values, the
    extreme ones stay right). Stops when the residual estimate beta_k |s_k| <= tol * |theta_max|, when the
    Krylov space is exhausted (beta_k = 0: exact), or after ``max_iters`` products.
    Returns (largest Ritz value, residual estimate, smallest Ritz value, products, converged).
    """
    vector = _scaled(start, 1.0 / _norm(start))
    previous: Vector | None = None
    alphas: list[float] = []
    betas: list[float] = []
    top, residual, lowest = 0.0, math.inf, 0.0
    for iteration in range(1, max_iters + 1):
        w = apply(vector)  # a fresh vector: updated in place below
        if previous is not None:
            for x, y in zip(w, previous, strict=True):
                x.sub_(y, alpha=betas[-1])
        alpha = _dot(w, vector)
        for x, y in zip(w, vector, strict=True):
            x.sub_(y, alpha=alpha)
        beta = _norm(w)
        alphas.append(alpha)
        betas.append(beta)
        top, last, lowest = _tridiagonal_extremes(alphas, betas)
        residual = beta * abs(last)
        scale = max(abs(top), abs(lowest), 1e-300)
        if beta <= 1e-12 * scale or residual <= tol * max(abs(top), 1e-300):
            return top, residual, lowest, iteration, True
        previous, vector = vector, _scaled(w, 1.0 / beta)
    return top, residual, lowest, max_iters, False


def top_hessian_eigenvalue(
    model: torch.nn.Module,
    loss: LossPieces,
    *,
    group: GroupSpec = None,
    seed: int = 0,
    tol: float = 1e-3,
    max_iters: int = 100,
) -> EigenResult:
    """Largest (algebraic, not largest-magnitude) eigenvalue of the Hessian of ``loss`` in the ``group``'s
    parameters, by Lanczos on Hessian-vector products from a seeded Gaussian start.

    Stops when the residual estimate is at most ``tol`` times the eigenvalue (so some eigenvalue lies
    within ``tol`` relative of the answer, and the answer's own error is of order tol^2 * value / gap),
    or after ``max_iters`` Hessian-vector products; ``converged`` says which. Deterministic given ``seed``
    on a given device and thread count.
    """
    if not (tol > 0 and max_iters >= 1):
        raise OvertrainError(f"tol={tol}, max_iters={max_iters}", "use tol > 0 (e.g. 1e-3) and max_iters >= 1 (e.g. 100)")
    selected = select_parameters(model, group)
    with probing(model, selected) as params:
        start = _gaussian(params, torch.Generator().manual_seed(seed))
        top, residual, lowest, hvps, converged = lanczos_top_eigenvalue(
            lambda v: hessian_vector_product(loss, params, v), start, tol, max_iters
        )
    return EigenResult(top, hvps, converged, residual, sum(p.numel() for p in selected.values()), lowest)


# ----------------------------------------------------------------------------------------------------
# Trace: Hutchinson
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceResult:
    """Hutchinson's estimate of tr(H): the mean of z^T H z over Rademacher probes z, and its standard error
    (sample std over probes / sqrt(probes); 0 for an exact trace)."""

    value: float
    stderr: float
    probes: int
    parameters: int
    samples: tuple[float, ...]


def hutchinson_trace(
    model: torch.nn.Module, loss: LossPieces, *, group: GroupSpec = None, probes: int = 32, seed: int = 0
) -> TraceResult:
    """Hessian trace of ``loss`` in the ``group``'s parameters by Hutchinson's estimator.

    Each probe is one Hessian-vector product with a Rademacher vector (seeded); the estimator is unbiased
    with variance 2 * sum_{i != j} H_ij^2 per probe, so the standard error shrinks as 1/sqrt(probes).
    """
    if probes < 2:
        raise OvertrainError(f"probes={probes} gives no standard error", "use probes >= 2 (e.g. 32)")
    selected = select_parameters(model, group)
    generator = torch.Generator().manual_seed(seed)
    samples = []
    with probing(model, selected) as params:
        for _ in range(probes):
            z = _rademacher(params, generator)
            samples.append(_dot(z, hessian_vector_product(loss, params, z)))
    mean = sum(samples) / probes
    std = math.sqrt(sum((s - mean) ** 2 for s in samples) / (probes - 1))
    return TraceResult(mean, std / math.sqrt(probes), probes, sum(p.numel() for p in selected.values()), tuple(samples))


def basis_trace(
    model: torch.nn.Module, loss: LossPieces, *, group: GroupSpec = None, max_parameters: int = 10_000
) -> TraceResult:
    """The exact Hessian trace: sum of e_i^T H e_i over every basis vector (one Hessian-vector product per
    parameter, so only for tiny models or small groups; refuses more than ``max_parameters``)."""
    selected = select_parameters(model, group)
    count = sum(p.numel() for p in selected.values())
    if count > max_parameters:
        raise OvertrainError(
            f"the exact trace needs {count} Hessian-vector products (one per parameter), over max_parameters={max_parameters}",
            "use hutchinson_trace, or a smaller group, or raise max_parameters",
        )
    total = 0.0
    with probing(model, selected) as params:
        for index, param in enumerate(params):
            for flat in range(param.numel()):
                basis = [torch.zeros_like(p) for p in params]
                basis[index].view(-1)[flat] = 1.0
                total += float(hessian_vector_product(loss, params, basis)[index].reshape(-1)[flat])
    return TraceResult(total, 0.0, count, count, ())


# ----------------------------------------------------------------------------------------------------
# Worst-case perturbation at the Gaussian probe's norm
# ----------------------------------------------------------------------------------------------------


def perturbation_radius(named_parameters: Mapping[str, torch.Tensor], init_std: Mapping[str, float], gamma: float) -> float:
    """Expected norm of the Gaussian probe's draw at ``gamma``: gamma * sqrt(sum_t n_t * init_std_t^2).

    (The draw's squared norm has mean gamma^2 sum_t n_t std_t^2 and, for millions of entries, a relative
    spread of order 1/sqrt(n), so this is its norm to a fraction of a percent.) Tensors with init std 0
    (norm gains) contribute nothing, as they get no Gaussian noise.
    """
    check_gamma(gamma)
    missing = [name for name in named_parameters if name not in init_std]
    if missing:
        raise OvertrainError(
            f"init std missing for {missing[:3]}",
            "the worst-case probe takes its norm from the init stds: pass the checkpoint's info.init_std",
        )
    return gamma * math.sqrt(sum(p.numel() * float(init_std[name]) ** 2 for name, p in named_parameters.items()))


WORST_CASE_TOL = 1e-2
"""The ascent has converged when an accepted point raised the best loss by at most this fraction of the
increase found so far."""
MAX_HALVINGS = 5
"""The ascent has also converged when no point within 1/2^5 of its first step's length is higher."""


@dataclass(frozen=True)
class WorstCaseResult:
    """The largest loss increase found on the sphere ||delta|| = radius, and the path to it.

    ``losses[k]`` is the loss at the (k+1)-th point (0: SAM's first step, or the seeded random start where
    the gradient vanishes); ``increase`` is max(losses) - base_loss, a lower bound on the true worst case
    at that norm, and ``converged`` says whether the ascent had stopped finding more (``last_gain``: what
    its last accepted point added, as a fraction of ``increase``; 0 where it stopped because no point near
    the best was higher).
    ``passes`` counts passes over the data (forward+backward or forward alone).
    ``direction`` is the maximizing delta (per moved tensor) when asked for, else None.
    """

    gamma: float
    radius: float
    base_loss: float
    worst_loss: float
    losses: tuple[float, ...]
    passes: int
    parameters: int
    converged: bool = False
    last_gain: float = math.inf
    direction: Vector | None = None

    @property
    def increase(self) -> float:
        return self.worst_loss - self.base_loss


def gaussian_moved(model: torch.nn.Module, group: GroupSpec, init_std: Mapping[str, float]) -> dict[str, torch.nn.Parameter]:
    """The ``group``'s tensors that the Gaussian probe perturbs (init std > 0; not the norm gains), which
    the worst case moves too, so that both spread the same norm over the same tensors. Refuses a group
    with a tensor whose init std is unknown, or with none that gets noise."""
    selected = select_parameters(model, group)
    missing = [name for name in selected if name not in init_std]
    if missing:
        raise OvertrainError(
            f"init std missing for {missing[:3]}",
            "the worst-case probe takes its norm from the init stds: pass the checkpoint's info.init_std",
        )
    moved = {name: p for name, p in selected.items() if float(init_std[name]) > 0.0}
    if not moved:
        raise OvertrainError(
            f"none of the {len(selected)} tensors of group {group!r} gets Gaussian noise (init std 0, e.g. norm gains), "
            "so the worst case at the Gaussian draw's norm has nothing to move",
            "take the worst case over a group with weight matrices (all, embeddings, attention, mlp); "
            "hessian_top and hessian_trace do take the norms",
        )
    return moved


@torch.no_grad()
def _set_offset_(params: Vector, origin: Vector, delta: Vector) -> None:
    """params <- origin + delta, in place."""
    for param, base, step in zip(params, origin, delta, strict=True):
        param.copy_(base).add_(step)


def worst_case_perturbation(
    model: torch.nn.Module,
    loss: LossPieces,
    *,
    gamma: float,
    init_std: Mapping[str, float],
    group: GroupSpec = None,
    steps: int = 20,
    step_size: float = 1.0,
    tol: float = WORST_CASE_TOL,
    seed: int = 0,
    radius: float | None = None,
    return_direction: bool = False,
) -> WorstCaseResult:
    """Loss increase of the worst perturbation found at the Gaussian probe's norm (SAM-style ascent).

    It moves the ``group``'s tensors that the Gaussian probe perturbs (:func:`gaussian_moved`), on the
    sphere of radius r = :func:`perturbation_radius` of those tensors at ``gamma`` (or ``radius`` if
    given). The first point is SAM's: delta_1 = r g/||g|| with g = grad L(theta), the exact maximiser to
    first order in r (where g = 0, a seeded Gaussian direction shaped like the Gaussian probe's draw,
    std per tensor proportional to its init std, instead; ``seed`` matters only then). Each further point
    steps from the best point so far, delta <- r * normalize(best + s * r * g/||g||) with g the gradient
    at the best point, a normalized gradient step of s radii projected back to the sphere (s starts at
    ``step_size``); a point no higher than the best is rejected and s halved. At the minimum of a
    quadratic the accepted steps are power iteration on (I + c A), which converges to r times the top
    eigenvector. Far from the linear regime (a trained nano model at gamma 1 raised its loss by 30-70 nats)
    a full step often lands lower, and without the halving the path wandered: each point's loss rose and
    fell by tens of nats, and its best depended on where the step count cut it.
    It stops after ``steps`` points, or once converged: an accepted point added at most ``tol`` of the
    increase, or s fell below ``step_size`` / 2^:data:`MAX_HALVINGS` with no point higher. Unconverged,
    the value is a lower bound that was still rising.
    Cost: one forward+backward pass per point (a forward alone for the ``steps``-th) and one for the base.
    Memory: the original weights, the best delta and its gradient, the candidate and its gradient.
    The weights are restored bitwise (copied back from the saved originals).
    """
    if steps < 1 or not step_size > 0 or not 0 <= tol < 1:
        raise OvertrainError(f"steps={steps}, step_size={step_size}, tol={tol}",
                             "use steps >= 1 (e.g. 20), step_size > 0 (e.g. 1.0) and 0 <= tol < 1 (e.g. 1e-2)")
    check_gamma(gamma)
    moved = gaussian_moved(model, group, init_std)
    if radius is None:
        radius = perturbation_radius(moved, init_std, gamma)
    losses: list[float] = []
    with probing(model, moved) as params:
        base_loss, gradient = loss_and_gradient(loss, params)
        passes = 1
        size = _norm(gradient)
        if size > 0.0:
            candidate = _scaled(gradient, radius / size)
        else:
            stds = [float(init_std[name]) for name in moved]
            random = _gaussian(params, torch.Generator().manual_seed(seed))
            candidate = _on_sphere([d * s for d, s in zip(random, stds, strict=True)], radius)
        del gradient
        origin = [p.detach().clone() for p in params]
        best, best_delta, best_gradient = -math.inf, candidate, None
        step, converged, last_gain = step_size, False, math.inf
        try:
            for point in range(1, steps + 1):
                _set_offset_(params, origin, candidate)
                last = point == steps
                value, gradient = (loss_value(loss), None) if last else loss_and_gradient(loss, params)
                passes += 1
                losses.append(value)
                if value > best:
                    if best > -math.inf:
                        last_gain = (value - best) / max(abs(value - base_loss), 1e-12)
                        converged = last_gain <= tol
                    best, best_delta, best_gradient = value, candidate, gradient
                elif point > 1:
                    step /= 2.0
                    converged, last_gain = step < step_size / 2.0**MAX_HALVINGS, 0.0
                del gradient
                if converged or last or (size := _norm(best_gradient)) == 0.0:
                    converged = converged or not last
                    break
                candidate = _on_sphere([d + g * (step * radius / size) for d, g in zip(best_delta, best_gradient, strict=True)], radius)
        finally:
            with torch.no_grad():
                for param, base in zip(params, origin, strict=True):
                    param.copy_(base)
    direction = [d.detach().clone() for d in best_delta] if return_direction else None
    count = sum(p.numel() for p in moved.values())
    return WorstCaseResult(gamma, radius, base_loss, best, tuple(losses), passes, count, converged, last_gain, direction)


def _on_sphere(vector: Vector, radius: float) -> Vector:
    size = _norm(vector)
    if size == 0.0:
        return vector
    return _scaled(vector, radius / size)


# ----------------------------------------------------------------------------------------------------
# All requested read-outs of one probe target (what a sweep's sharpness job runs)
# ----------------------------------------------------------------------------------------------------

SHARPNESS_KINDS: tuple[str, ...] = ("hessian_top", "hessian_trace", "worst_case")
"""The read-outs :func:`run_sharpness_probe` runs: top Hessian eigenvalue, Hutchinson trace, worst-case loss increase."""

ALL_PARAMETERS = "all"
"""The group name of every parameter at once (``group=None`` of the probes)."""


@dataclass(frozen=True)
class SharpnessRecord:
    """One read-out of one checkpoint: ``value`` is the top eigenvalue, the trace estimate, or the
    worst-case loss increase (nats/token) at ``gamma``. ``passes`` counts passes over the held-out text
    (a Hessian-vector product is one; it costs ~11 forwards)."""

    kind: str
    group: str
    seed: int
    gamma: float | None
    value: float
    passes: int
    parameters: int
    stderr: float | None = None
    """Hutchinson's standard error over probes (hessian_trace only)."""
    converged: bool | None = None
    """Whether Lanczos reached its tolerance (hessian_top), or the ascent stopped finding more (worst_case)."""
    detail: dict | None = None
    """Kind-specific numbers: Lanczos residual and smallest Ritz value; the worst-case radius and losses."""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "group": self.group, "seed": self.seed, "gamma": self.gamma, "value": self.value,
                "passes": self.passes, "parameters": self.parameters, "stderr": self.stderr, "converged": self.converged,
                **(self.detail or {})}


def run_sharpness_probe(
    target,
    kinds: Sequence[str] = SHARPNESS_KINDS,
    *,
    gammas: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    groups: Sequence[str] | None = None,
    probes: int = 16,
    tol: float = 1e-3,
    max_iters: int = 100,
    steps: int = 20,
    worst_tol: float = WORST_CASE_TOL,
    batch_size: int = 16,
    on_record: Callable[[SharpnessRecord], None] | None = None,
) -> list[SharpnessRecord]:
    """Every requested read-out of ``target`` (a :class:`~overtrain.probes.target.ProbeTarget`), per group.

    ``groups``: ``None`` (every parameter, reported as group ``all``) or names from :data:`TENSOR_GROUPS`,
    globs, or ``all``. ``hessian_top`` and ``hessian_trace`` run once per seed (the Lanczos start, the
    Rademacher probes); ``worst_case`` once per gamma, with the first seed only: its ascent starts from the
    gradient, so the seed matters only where the gradient vanishes. The worst-case radius comes from the
    target's init stds (a model without them needs ``init_std_rules`` or no worst_case).
    """
    unknown = [kind for kind in kinds if kind not in SHARPNESS_KINDS]
    if unknown or not kinds:
        raise OvertrainError(f"sharpness kinds {list(kinds)} include none or unknown ones {unknown}", f"use some of {', '.join(SHARPNESS_KINDS)}")
    if not seeds:
        raise OvertrainError("no seed given", "pass seeds=[0] (or more)")
    names = list(groups) if groups else [ALL_PARAMETERS]
    if "worst_case" in kinds and target.init_std is None:
        raise OvertrainError(
            f"the worst-case probe takes its radius from each tensor's init std, and {target.init_std_source}",
            "give init std rules (init_std_rules={'*': 0.02}), or drop worst_case from kinds",
        )
    for name in names:  # an unknown group, or one the worst case cannot move, fails before any pass over the data
        group = None if name == ALL_PARAMETERS else name
        if "worst_case" in kinds:
            gaussian_moved(target.model, group, target.init_std)  # selects the group, and refuses one with nothing to move
        else:
            select_parameters(target.model, group)
    loss = heldout_loss_of(target, batch_size=batch_size)
    records: list[SharpnessRecord] = []

    def add(record: SharpnessRecord) -> None:
        if not math.isfinite(record.value):
            at = f" at gamma {record.gamma:g}" if record.gamma is not None else ""
            raise OvertrainError(
                f"the {record.kind} read-out of {target.reference} (group {record.group}{at}) is {record.value}: the loss overflowed",
                "use smaller gammas for worst_case; for the Hessian probes, check that the checkpoint's own loss is finite",
            )
        records.append(record)
        if on_record is not None:
            on_record(record)

    for name in names:
        group = None if name == ALL_PARAMETERS else name
        for kind in kinds:
            if kind == "hessian_top":
                for seed in seeds:
                    top = top_hessian_eigenvalue(target.model, loss, group=group, seed=seed, tol=tol, max_iters=max_iters)
                    add(SharpnessRecord(kind, name, seed, None, top.value, top.hvps, top.parameters, converged=top.converged,
                                        detail={"residual": top.residual, "lowest": top.lowest}))
            elif kind == "hessian_trace":
                for seed in seeds:
                    trace = hutchinson_trace(target.model, loss, group=group, probes=probes, seed=seed)
                    add(SharpnessRecord(kind, name, seed, None, trace.value, trace.probes, trace.parameters, stderr=trace.stderr))
            else:
                for gamma in gammas:
                    worst = worst_case_perturbation(target.model, loss, gamma=gamma, init_std=target.init_std, group=group,
                                                    steps=steps, tol=worst_tol, seed=seeds[0])
                    add(SharpnessRecord(kind, name, seeds[0], float(gamma), worst.increase, worst.passes, worst.parameters,
                                        converged=worst.converged,
                                        detail={"radius": worst.radius, "base_loss": worst.base_loss, "worst_loss": worst.worst_loss,
                                                "losses": list(worst.losses),
                                                "last_gain": worst.last_gain if math.isfinite(worst.last_gain) else None}))
    return records
