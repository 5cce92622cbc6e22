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

from overtrain.model.cpu_kernels import (
    fp32_cpu_outside_autocast,
    kernel_library,
    pointer_or_null,
    raise_for_block_status,
    required_block_products,
)

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


def _check_shapes(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, norm_weight: torch.Tensor | None) -> None:
    """The kernel reads by these shapes: anything else would read past a tensor, so it is refused here."""
    width, ff_width = w_down.shape if w_down.dim() == 2 else (-1, -1)
    if x.dim() != 2 or x.shape[1] != width or tuple(w_gate_up.shape) != (2 * ff_width, width):
        raise ValueError(f"the fused MLP takes x (N, C), w_gate_up (2F, C) and w_down (C, F); got {tuple(x.shape)}, "
                         f"{tuple(w_gate_up.shape)} and {tuple(w_down.shape)}")
    if norm_weight is not None and tuple(norm_weight.shape) != (width,):
        raise ValueError(f"the fused MLP's norm weight must be (C,) = ({width},), got {tuple(norm_weight.shape)}")
    norm = () if norm_weight is None else (norm_weight,)
    if not fp32_cpu_outside_autocast(x, w_gate_up, w_down, *norm):
        raise ValueError("the fused MLP computes on fp32 CPU tensors outside autocast (see mlp_kernel_applies)")


@torch.library.custom_op("overtrain::swiglu_mlp", mutates_args=())
def swiglu_mlp(
    x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, norm_weight: torch.Tensor | None, norm_eps: float, brgemm: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(silu(x w_gate^T) * (x w_up^T)) w_down^T`` (N, C) for x (N, C), w_gate_up (2F, C) (the gate's rows
    first) and w_down (C, F); or, given ``norm_weight`` (C), Llama's whole pre-norm residual half-layer
    ``x + mlp(RMSNorm(x))`` (the norm of :class:`overtrain.model.llama.RMSNorm`, with ``norm_eps``). Also
    returns the pre-activations (N, 2F) of the gate-and-up product, which the backward pass reads.
    ``brgemm``: the products by oneDNN's brgemm micro-kernel, else by torch's BLAS sgemm (a flag, not a
    library name: inductor's C++ wrapper passes no string arguments to custom ops)."""
    products = required_block_products("the fused MLP", brgemm)
    _check_shapes(x, w_gate_up, w_down, norm_weight)
    x, w_gate_up, w_down = x.contiguous(), w_gate_up.contiguous(), w_down.contiguous()
    norm_weight = None if norm_weight is None else norm_weight.contiguous()
    (rows, width), ff_width = x.shape, w_down.shape[1]
    out, gate_up = x.new_empty(rows, width), x.new_empty(rows, 2 * ff_width)
    block = min(block_rows(ff_width), max(rows, 1))
    a_block = x.new_empty(block, ff_width)  # held here: a pointer to a temporary would outlive its memory
    status = kernel_library().ot_swiglu_mlp_forward(
        products, x.data_ptr(), pointer_or_null(norm_weight), norm_eps, w_gate_up.data_ptr(), w_down.data_ptr(), out.data_ptr(),
        gate_up.data_ptr(), a_block.data_ptr(), rows, width, ff_width, block,
    )
    raise_for_block_status(status, "the fused MLP")
    return out, gate_up


@swiglu_mlp.register_fake
def _(x, w_gate_up, w_down, norm_weight, norm_eps, brgemm):
    return x.new_empty(x.shape[0], w_down.shape[0]), x.new_empty(x.shape[0], 2 * w_down.shape[1])


@torch.library.custom_op("overtrain::swiglu_mlp_backward", mutates_args=())
def swiglu_mlp_backward(
    grad_out: torch.Tensor, x: torch.Tensor, gate_up: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor,
    norm_weight: torch.Tensor | None, norm_eps: float, brgemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`swiglu_mlp`'s output with respect to x, w_gate_up, w_down and the norm's weight
    (an empty tensor without a norm), from ``grad_out`` (N, C)."""
    products = required_block_products("the fused MLP", brgemm)
    grad_out, x, gate_up = grad_out.contiguous(), x.contiguous(), gate_up.contiguous()
    w_gate_up, w_down = w_gate_up.contiguous(), w_down.contiguous()
    norm_weight = None if norm_weight is None else norm_weight.contiguous()
    (rows, width), ff_width = x.shape, w_down.shape[1]
    grad_x = torch.empty_like(x)
    make = torch.empty_like if rows else torch.zeros_like  # the first block writes the weights' gradients
    grad_w_gate_up, grad_w_down = make(w_gate_up), make(w_down)
    grad_norm_weight = x.new_empty(0) if norm_weight is None else torch.empty_like(norm_weight)
    block = min(block_rows(ff_width), max(rows, 1))
    a_block, grad_block = x.new_empty(block, ff_width), x.new_empty(block, 2 * ff_width)  # held, as in swiglu_mlp
    status = kernel_library().ot_swiglu_mlp_backward(
        products, grad_out.data_ptr(), x.data_ptr(), pointer_or_null(norm_weight), norm_eps, gate_up.data_ptr(), w_gate_up.data_ptr(),
        w_down.data_ptr(), grad_x.data_ptr(), grad_w_gate_up.data_ptr(), grad_w_down.data_ptr(), pointer_or_null(grad_norm_weight),
        a_block.data_ptr(), grad_block.data_ptr(), rows, width, ff_width, block,
    )
    raise_for_block_status(status, "the fused MLP's backward pass")
    return grad_x, grad_w_gate_up, grad_w_down, grad_norm_weight


@swiglu_mlp_backward.register_fake
def _(grad_out, x, gate_up, w_gate_up, w_down, norm_weight, norm_eps, brgemm):
    contiguous = torch.contiguous_format
    grad_norm_weight = x.new_empty(0) if norm_weight is None else torch.empty_like(norm_weight, memory_format=contiguous)
    return (torch.empty_like(x, memory_format=contiguous), torch.empty_like(w_gate_up, memory_format=contiguous),
            torch.empty_like(w_down, memory_format=contiguous), grad_norm_weight)


def _swiglu_mlp_setup_context(ctx, inputs, output) -> None:
    x, w_gate_up, w_down, norm_weight, ctx.norm_eps, ctx.brgemm = inputs
    ctx.has_norm = norm_weight is not None
    ctx.save_for_backward(x, output[1], w_gate_up, w_down, norm_weight)
    ctx.mark_non_differentiable(output[1])


def _swiglu_mlp_backward(ctx, grad_out, _grad_gate_up):
    x, gate_up, w_gate_up, w_down, norm_weight = ctx.saved_tensors
    grad_x, grad_w_gate_up, grad_w_down, grad_norm_weight = swiglu_mlp_backward(
        grad_out, x, gate_up, w_gate_up, w_down, norm_weight if ctx.has_norm else None, ctx.norm_eps, ctx.brgemm)
    return grad_x, grad_w_gate_up, grad_w_down, grad_norm_weight if ctx.has_norm else None, None, None


swiglu_mlp.register_autograd(_swiglu_mlp_backward, setup_context=_swiglu_mlp_setup_context)
