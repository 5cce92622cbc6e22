"""The model's fp32 products through oneDNN on CPUs where torch's BLAS is the slower of its two libraries.

Why: torch's x86 wheels link two fp32 GEMM libraries, MKL (what ``torch.mm`` and ``F.linear`` call) and
oneDNN (``torch.ops.mkldnn._linear_pointwise``, which inductor uses for frozen inference graphs). Which is
faster depends on the CPU: MKL takes its AVX2 code path on AMD processors even where they have AVX-512,
and oneDNN takes AVX-512 by the CPU's feature flags. On a 2-core AMD EPYC (Zen 5) one thread ran a
2048^2 product at ~90 GFLOP/s with MKL and ~205 with oneDNN, and the nano shape's (4096 x 64) @ (64 x 192)
at 95 and 215 (docs/benchmarks.md); on Intel CPUs with AVX-512 the two are close. So nothing is assumed:
:func:`time_products` times both on a product of the model's shape once per process, and
:meth:`overtrain.model.llama.LlamaLM.use_cpu_kernels` routes the model's linear layers through
:func:`linear` only where oneDNN measures faster (the training log says which, and by how much).

:func:`linear` is a ``torch.library`` custom op (torch.compile keeps it whole, no graph break) with its
backward pass in oneDNN too: grad_input = grad_output @ W and grad_weight = grad_output^T @ input. oneDNN
copies a source operand passed as a transposed view into its own layout, so the weight gradient is asked
for in whichever orientation makes that copy the smaller one. Results agree with ``F.linear`` to fp32
rounding, not bitwise.

Shapes: N rows (tokens, all leading dimensions flattened), I input width, O output width.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

ONEDNN_MIN_SPEEDUP = 1.2
"""oneDNN is taken only when it measures at least this much faster than torch's BLAS: below it the timing's
noise could choose either, and the two are about equally good."""


def onednn_product(source: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """source @ weight.T by oneDNN: source (N, I), weight (O, I), any strides (a source read transposed is
    first copied row by row, by torch)."""
    return torch.ops.mkldnn._linear_pointwise(source, weight, None, "none", [], "")


def onednn_weight_gradient(grad_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """grad_rows^T @ rows (O, I) by oneDNN, for grad_rows (N, O) and rows (N, I), contiguous. The sum runs
    over N, the outer dimension of both, so one of them is read transposed and copied first: the narrower
    (I < O: compute (rows^T @ grad_rows)^T instead)."""
    if rows.shape[1] < grad_rows.shape[1]:
        return onednn_product(rows.T, grad_rows.T).T.contiguous()
    return onednn_product(grad_rows.T, rows.T)


def onednn_available() -> bool:
    """This build has oneDNN's product and the user has not switched oneDNN off (``torch.backends.mkldnn.flags``)."""
    return torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


LIBRARY_NAMES = {"blas": "torch's BLAS", "onednn": "oneDNN"}
"""The fp32 GEMM libraries a product can be made with here, by key, as logs and benchmarks name them."""


def products_by_library(source: torch.Tensor, weight: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """``source @ weight.T`` by each library of :data:`LIBRARY_NAMES` that can make it: torch's BLAS
    (``torch.mm``: MKL in the x86 wheels) always, oneDNN for fp32 where :func:`onednn_available`."""
    products = {"blas": lambda: source @ weight.T}
    if source.dtype == torch.float32 and onednn_available():
        products["onednn"] = lambda: onednn_product(source, weight)
    return products


@dataclass(frozen=True)
class ProductTiming:
    """One product of the model's shape timed with both libraries on this CPU at torch's thread count."""

    shape: tuple[int, int, int]
    """(N, I, O): an (N x I) @ (I x O) product."""
    threads: int
    blas_seconds: float
    onednn_seconds: float | None
    """None where oneDNN is missing or refuses plain fp32 tensors."""

    @property
    def onednn_speedup(self) -> float:
        return self.blas_seconds / self.onednn_seconds if self.onednn_seconds else 0.0

    @property
    def use_onednn(self) -> bool:
        return self.onednn_speedup >= ONEDNN_MIN_SPEEDUP

    def describe(self) -> str:
        """One line for the training log: which library makes the products, and the measurement behind it."""
        rows, width, out_width = self.shape
        measured = f"({rows} x {width}) @ ({width} x {out_width}) fp32 on {self.threads} thread{'s' * (self.threads > 1)}"
        if self.onednn_seconds is None:
            return "products by torch's BLAS: oneDNN cannot compute plain fp32 products in this torch build"
        library = "oneDNN" if self.use_onednn else "torch's BLAS"
        return (f"products by {library}: oneDNN measured {self.onednn_speedup:.2f}x torch's BLAS on this CPU "
                f"({measured}; oneDNN is taken from {ONEDNN_MIN_SPEEDUP}x)")


TIMING_BUDGET_SECONDS = 0.01
"""Per library and round of :func:`time_products`: each round runs as many calls as fit (at least one)."""


def _seconds_per_call(product) -> float:
    """Best of 3 rounds of timed calls, after one untimed call (oneDNN builds its kernel there) that also sizes
    the rounds to :data:`TIMING_BUDGET_SECONDS`, so that a large model's timing stays short."""
    start = time.perf_counter()
    product()
    repeats = max(1, min(12, int(TIMING_BUDGET_SECONDS / max(time.perf_counter() - start, 1e-6))))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            product()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


@functools.lru_cache(maxsize=8)
def time_products(rows: int, width: int, out_width: int, threads: int) -> ProductTiming:
    """Time a (rows x width) @ (width x out_width) fp32 product by ``torch.mm`` and by oneDNN, once per process
    and shape (four rounds of at most :data:`TIMING_BUDGET_SECONDS` per library, or of one call where a call
    takes longer: ~40 ms at the nano shape, ~0.15 s at d_model 768). ``threads`` is torch's thread count,
    passed so that a change of it times again."""
    generator = torch.Generator().manual_seed(0)  # not torch's global generator: no draw from the run's stream
    source, weight = torch.randn(rows, width, generator=generator), torch.randn(out_width, width, generator=generator)
    products = products_by_library(source, weight)
    blas, onednn = _seconds_per_call(products["blas"]), None
    if "onednn" in products:
        try:
            onednn = _seconds_per_call(products["onednn"])
        except RuntimeError:  # a build whose oneDNN refuses plain fp32 tensors
            onednn = None
    return ProductTiming((rows, width, out_width), threads, blas, onednn)


def linear_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` computes on these tensors: fp32 on the CPU (oneDNN is asked for plain fp32;
    autocast's bf16 stays with torch), and not empty (oneDNN refuses a product over zero rows). Only tensor
    properties, so torch.compile traces it."""
    fp32_on_cpu = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, weight))
    return fp32_on_cpu and x.numel() > 0 and weight.numel() > 0 and not torch.is_autocast_enabled("cpu")


@torch.library.custom_op("overtrain::linear", mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` without bias, computed by oneDNN: x (..., I), weight (O, I) -> (..., O)."""
    rows = x.reshape(-1, x.shape[-1])
    return onednn_product(rows, weight).view(*x.shape[:-1], weight.shape[0])


@linear.register_fake
def _(x, weight):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("overtrain::linear_backward", mutates_args=())
def linear_backward(grad_output: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_weight) of :func:`linear` by oneDNN: grad_output @ W (N, I) and grad_output^T @ x (O, I)."""
    grad_rows, rows = grad_output.reshape(-1, grad_output.shape[-1]), x.reshape(-1, x.shape[-1])
    grad_input = onednn_product(grad_rows, weight.T).view(x.shape)
    return grad_input, onednn_weight_gradient(grad_rows, rows)


@linear_backward.register_fake
def _(grad_output, x, weight):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight, memory_format=torch.contiguous_format)


def _linear_setup_context(ctx, inputs, output) -> None:
    x, weight = inputs
    ctx.save_for_backward(x, weight)


def _linear_backward(ctx, grad_output):
    x, weight = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a second derivative is wanted (Hessian-vector products),
        # which linear_backward has none of; torch's products are differentiable
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
        return grad_output @ weight, grad_rows.T @ x.reshape(-1, x.shape[-1])
    return linear_backward(grad_output.contiguous(), x, weight)


linear.register_autograd(_linear_backward, setup_context=_linear_setup_context)
