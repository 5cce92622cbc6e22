"""The Llama MLP (SwiGLU) in blocks of rows on one CPU thread, its products by torch's BLAS or oneDNN's brgemm.

Why: the MLP's products are most of a small model's step, and where the activations they pass between
them (N x F) outgrow the L2 cache, each product reads or writes them at the cold-cache rate.
:func:`swiglu_mlp` runs a block of rows through the gate-and-up product, SwiGLU and the down product while
the block sits in L2 (``cpu_mlp.cpp``), and its backward pass walks the same blocks; at the nano shape the
compiled step took ~6% less time (docs/benchmarks.md). Only the pre-activations (N x 2F, gate and up side
by side) are kept for the backward pass, as autograd keeps them for three separate products. Taken unless
oneDNN makes the model's products whole (:meth:`overtrain.model.llama.LlamaLM.use_cpu_kernels`), which
then stay three products; the blocks' products are made by the library the model chose
(:data:`~overtrain.model.cpu_kernels.BLOCK_LIBRARIES`). It agrees with the three-product MLP to float rounding, not
bitwise. Given the norm's weight, it computes the decoder layer's whole MLP half, ``x + mlp(RMSNorm(x))``
(:meth:`overtrain.model.llama.MLP.residual`): the norm and the residual are made inside the blocks, so the
compiled graph makes no pass of its own over the rows for them (``cpu_rms_norm.h``).

Shapes: N rows (tokens), C width (d_model), F the MLP's hidden width.
"""

from __future__ import annotations

import torch

from overtrain.model.cpu_kernels import fp32_cpu_outside_autocast, register_block_products

BLOCK_BYTES = 384 << 10
"""Pre-activations (block rows x 2F fp32) made at a time: with the block's SwiGLU output (half as large), its
input and output rows, the block stays within a 1 MiB L2 cache. At the nano shape (F = 192) a block is 256
rows; 128 and 512 measured 1% slower in the step (docs/benchmarks.md)."""

MIN_BLOCK_ROWS = 64
"""Fewer rows per block would leave each product too short to run at the BLAS's full rate."""


def mlp_kernel_applies(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether :func:`swiglu_mlp` computes on these tensors: fp32 on the CPU, outside autocast (whether the
    kernels are built and which library makes their products is decided once, by
    :meth:`~overtrain.model.llama.LlamaLM.use_cpu_kernels`)."""
    return fp32_cpu_outside_autocast(x, *weights)


def block_rows(ff_width: int) -> int:
    """Rows per block: :data:`BLOCK_BYTES` of pre-activations, a multiple of 16, at least :data:`MIN_BLOCK_ROWS`."""
    return max(MIN_BLOCK_ROWS, BLOCK_BYTES // (4 * 2 * ff_width) // 16 * 16)


_LIBRARY = torch.library.Library("overtrain", "FRAGMENT")
# The kernels and the autograd formula are C++ (cpu_ops.cpp), registered when the kernels' library loads;
# every argument is explicit (no defaults: inductor's C++ wrapper left trailing defaults out, and the
# dispatcher read garbage in their place, docs/benchmarks.md).
_LIBRARY.define("swiglu_mlp(Tensor x, Tensor w_gate_up, Tensor w_down, Tensor? norm_weight, float norm_eps, bool brgemm, "
                "int block_rows) -> (Tensor, Tensor)")
_LIBRARY.define("swiglu_mlp_backward(Tensor grad_out, Tensor x, Tensor gate_up, Tensor w_gate_up, Tensor w_down, Tensor? norm_weight, "
                "float norm_eps, bool brgemm, int block_rows) -> (Tensor, Tensor, Tensor, Tensor)")


def swiglu_mlp(
    x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, norm_weight: torch.Tensor | None, norm_eps: float, brgemm: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(silu(x w_gate^T) * (x w_up^T)) w_down^T`` (N, C) for x (N, C), w_gate_up (2F, C) (the gate's rows
    first) and w_down (C, F); or, given ``norm_weight`` (C), Llama's whole pre-norm residual half-layer
    ``x + mlp(RMSNorm(x))`` (the norm of :class:`overtrain.model.llama.RMSNorm`, with ``norm_eps``). Also
    returns the pre-activations (N, 2F) of the gate-and-up product, which the backward pass reads.
    ``brgemm``: the products by oneDNN's brgemm micro-kernel, else by torch's BLAS sgemm (a flag, not a
    library name: inductor's C++ wrapper passes no string arguments to custom ops). The operator
    ``overtrain::swiglu_mlp`` (C++, differentiable), in blocks of :func:`block_rows` rows."""
    if not torch.compiler.is_compiling():
        register_block_products("the fused MLP", brgemm)  # a compiled model registered them in LlamaLM.use_cpu_kernels
    ff_width = w_down.shape[1] if w_down.dim() == 2 else 1
    return torch.ops.overtrain.swiglu_mlp(x, w_gate_up, w_down, norm_weight, norm_eps, brgemm, block_rows(ff_width))


@torch.library.register_fake("overtrain::swiglu_mlp", lib=_LIBRARY)
def _(x, w_gate_up, w_down, norm_weight, norm_eps, brgemm, block_rows):
    return x.new_empty(x.shape[0], w_down.shape[0]), x.new_empty(x.shape[0], 2 * w_down.shape[1])


@torch.library.register_fake("overtrain::swiglu_mlp_backward", lib=_LIBRARY)
def _(grad_out, x, gate_up, w_gate_up, w_down, norm_weight, norm_eps, brgemm, block_rows):
    contiguous = torch.contiguous_format
    grad_norm_weight = x.new_empty(0) if norm_weight is None else torch.empty_like(norm_weight, memory_format=contiguous)
    return (torch.empty_like(x, memory_format=contiguous), torch.empty_like(w_gate_up, memory_format=contiguous),
            torch.empty_like(w_down, memory_format=contiguous), grad_norm_weight)
