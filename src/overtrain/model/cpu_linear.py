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
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from overtrain.model.cpu_attention_block import BLOCK_ROWS
from overtrain.model.cpu_kernels import block_products, kernel_available, run_block_products

ONEDNN_MIN_SPEEDUP = 1.3
"""oneDNN's whole products are taken only when a linear layer's three training products (:func:`time_products`)
measure at least this much faster with them than with the library the blocked kernels would take
(:attr:`ProductTiming.reference_seconds`: torch's BLAS sgemm or oneDNN's brgemm block by block; torch's BLAS
whole where the blocked kernels are missing). The margin covers what that timing leaves out: each
oneDNN product is a custom op called from Python (~25 us a call against ~5 for ``F.linear``) and meets
colder caches in the step. On a Zen 4 core the three products measured 1.11-1.20x by oneDNN while the
whole compiled step ran 2% faster by torch's BLAS; on a Zen 5 core, timed one by one, they measured 1.4-2.3x
and the step took 0.73 of its time by oneDNN (docs/benchmarks.md)."""


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


LIBRARY_NAMES = {"blas": "torch's BLAS", "onednn": "oneDNN", "brgemm": "oneDNN's brgemm micro-kernel"}
"""The fp32 GEMM libraries a product can be made with here, by key, as logs and benchmarks name them:
``blas`` and ``onednn`` make the linear layers' products whole (``blas`` also block by block, inside
overtrain's blocked kernels), ``brgemm`` block by block only."""

BRGEMM_MIN_SPEEDUP = 1.05
"""The blocked kernels take oneDNN's brgemm micro-kernel (:mod:`overtrain.model.cpu_kernels`) over torch's
BLAS sgemm where a linear layer's three products, made block by block as the kernels make them, measure at
least this much faster with it. Both are called from C++ with no Python between blocks, so the margin only
keeps a tie from flipping with the noise. On a Zen 4 core (MKL's AVX2 path) the block products measured
1.1-1.2x by brgemm, and the compiled nano step took 0.92 of its time (docs/benchmarks.md)."""


def products_by_library(source: torch.Tensor, weight: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """``source @ weight.T`` by each library of :data:`LIBRARY_NAMES` that can make it: torch's BLAS
    (``torch.mm``: MKL in the x86 wheels) always, oneDNN for fp32 where :func:`onednn_available`."""
    products = {"blas": lambda: source @ weight.T}
    if source.dtype == torch.float32 and onednn_available():
        products["onednn"] = lambda: onednn_product(source, weight)
    return products


@dataclass(frozen=True)
class ProductTiming:
    """A linear layer's three training products at the model's shape, timed with each library on this CPU
    at torch's thread count."""

    shape: tuple[int, int, int]
    """(N, I, O): the forward product (N x I) @ (I x O), with its input gradient (N x O) @ (O x I) and its
    weight gradient (O x N) @ (N x I)."""
    threads: int
    blas_seconds: float
    """Seconds for the three products by torch's BLAS (the median of the timed rounds)."""
    onednn_seconds: float | None
    """The same by oneDNN; None where oneDNN is missing or refuses plain fp32 tensors."""
    block_blas_seconds: float | None = None
    """The same products made block by block (:data:`~overtrain.model.cpu_attention_block.BLOCK_ROWS` rows), as the
    blocked kernels make them, by torch's BLAS sgemm; None where those kernels are missing."""
    block_brgemm_seconds: float | None = None
    """The same by oneDNN's brgemm micro-kernel; None where this torch has none (or it fails its check)."""

    @property
    def brgemm_speedup(self) -> float:
        """Block by block, torch's BLAS sgemm's time over oneDNN's brgemm's (0.0 where either is missing)."""
        return self.block_blas_seconds / self.block_brgemm_seconds if self.block_blas_seconds and self.block_brgemm_seconds else 0.0

    @property
    def block_library(self) -> str | None:
        """The library the blocked kernels would take: brgemm where it measures at least
        :data:`BRGEMM_MIN_SPEEDUP` faster than sgemm, else sgemm; None where they were not timed."""
        if self.block_blas_seconds is None:
            return None
        return "brgemm" if self.brgemm_speedup >= BRGEMM_MIN_SPEEDUP else "blas"

    @property
    def reference_seconds(self) -> float:
        """What oneDNN's whole products must beat: the products as the blocked kernels would make them, where
        they were timed, else torch's BLAS whole."""
        library = self.block_library
        return self.blas_seconds if library is None else self.block_brgemm_seconds if library == "brgemm" else self.block_blas_seconds

    @property
    def onednn_speedup(self) -> float:
        return self.reference_seconds / self.onednn_seconds if self.onednn_seconds else 0.0

    @property
    def use_onednn(self) -> bool:
        return self.onednn_speedup >= ONEDNN_MIN_SPEEDUP

    @property
    def library(self) -> str:
        """The key of :data:`LIBRARY_NAMES` to take: oneDNN's whole products where they are clearly faster than
        the alternative, else the blocked kernels' library, else torch's BLAS."""
        return "onednn" if self.use_onednn else self.block_library or "blas"

    def describe(self) -> str:
        """One line for the training log: which library makes the products, and the measurements behind it."""
        rows, width, out_width = self.shape
        threads = f"{self.threads} thread{'s' * (self.threads > 1)}"
        figures = []
        if self.block_brgemm_seconds is not None:
            figures.append(f"block by block ({BLOCK_ROWS} rows) oneDNN's brgemm micro-kernel measured {self.brgemm_speedup:.2f}x torch's "
                           f"BLAS sgemm (taken from {BRGEMM_MIN_SPEEDUP}x)")
        if self.onednn_seconds is None:
            figures.append("oneDNN cannot compute plain fp32 products whole in this torch build")
        else:
            reference = "torch's BLAS" if self.block_library is None else "the blocked kernels' library"
            figures.append(f"oneDNN's whole products measured {self.onednn_speedup:.2f}x {reference} (taken from {ONEDNN_MIN_SPEEDUP}x)")
        return (f"products by {LIBRARY_NAMES[self.library]}: {'; '.join(figures)}; timed on a ({rows} x {width}) @ ({width} x "
                f"{out_width}) fp32 product with its two gradients, on {threads} (train.cpu_products=onednn|blas|brgemm pins one)")


TIMING_BUDGET_SECONDS = 0.1
"""What :func:`time_products` spends at most on its timed rounds, all libraries together (its two untimed
warm-up rounds come on top)."""

TIMING_ROUNDS = 12
"""Rounds of :func:`time_products` where they fit the budget: the libraries alternate call by call, so that
a change of the machine's speed meets both, and each keeps its median round, which a burst of another
process's work on the core moves less than the fastest round: on a Zen 4 core kept busy by two other jobs,
eight processes put oneDNN at 0.63-4.05x torch's BLAS by the fastest rounds and at 0.86-1.50x by the
medians. On the quiet core, 12 rounds of the single forward product, the timing this replaced, put it at
1.13-2.34x in five processes; the three products alternated, at 1.11-1.20x in ten by their fastest rounds
and at 1.05-1.27x in ten by their medians."""


def training_products_by_library(rows: int, width: int, out_width: int) -> dict[str, Callable[[], object]]:
    """A linear layer's three training products on random fp32 tensors, by each library of
    :data:`LIBRARY_NAMES` that can make them: forward x @ W^T, input gradient g @ W and weight gradient
    g^T @ x, for x (rows, width), W (out_width, width) and g (rows, out_width); on one thread also block by
    block as overtrain's blocked kernels make them, by torch's BLAS sgemm (``block_blas``) and by oneDNN's
    brgemm micro-kernel (``block_brgemm``), where those are here."""
    generator = torch.Generator().manual_seed(0)  # not torch's global generator: no draw from the run's stream
    x = torch.randn(rows, width, generator=generator)
    weight = torch.randn(out_width, width, generator=generator)
    grad = torch.randn(rows, out_width, generator=generator)
    products = {"blas": lambda: (x @ weight.T, grad @ weight, grad.T @ x)}
    if onednn_available():
        products["onednn"] = lambda: (onednn_product(x, weight), onednn_product(grad, weight.T), onednn_weight_gradient(grad, x))
    for library in ("blas", "brgemm") if kernel_available() else ():  # block by block, as the blocked kernels make them
        library_products = block_products(library)
        if library_products is not None:
            products[f"block_{library}"] = functools.partial(run_block_products, library_products, x, weight, grad, BLOCK_ROWS)
    return products


def _median_rounds(products: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Seconds of each library's median round, over up to :data:`TIMING_ROUNDS` rounds in which the libraries
    alternate (A B, B A, A B, ...), after two untimed rounds (oneDNN builds its kernels in the first; the
    allocator settles in the second), sized by the second to :data:`TIMING_BUDGET_SECONDS` (at least 2)."""
    products = dict(products)
    for library, product in list(products.items()):
        try:
            product()
        except RuntimeError:  # a build whose oneDNN refuses plain fp32 tensors
            if library == "blas":
                raise
            del products[library]
    start = time.perf_counter()
    for product in products.values():
        product()
    rounds = max(2, min(TIMING_ROUNDS, int(TIMING_BUDGET_SECONDS / max(time.perf_counter() - start, 1e-6))))
    seconds: dict[str, list[float]] = {library: [] for library in products}
    order = list(products)
    for _ in range(rounds):
        for library in order:
            start = time.perf_counter()
            products[library]()
            seconds[library].append(time.perf_counter() - start)
        order.reverse()  # each library goes first in every other round: neither always meets the other's leftovers
    return {library: statistics.median(rounds_seconds) for library, rounds_seconds in seconds.items()}


@functools.lru_cache(maxsize=8)
def time_products(rows: int, width: int, out_width: int, threads: int) -> ProductTiming:
    """Time a linear layer's three training products (:func:`training_products_by_library`) by torch's BLAS
    and by oneDNN, whole and block by block, once per process and shape: ~0.15 s at the nano shape, ~0.5 s at d_model 768 (where two
    untimed and two timed rounds exceed the budget). ``threads`` is torch's thread count, passed so that a
    change of it times again."""
    median = _median_rounds(training_products_by_library(rows, width, out_width))
    return ProductTiming((rows, width, out_width), threads, median["blas"], median.get("onednn"), median.get("block_blas"),
                         median.get("block_brgemm"))


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
