"""A Llama attention block (q/k/v product, rotary causal attention, output projection) a few sequences at
a time on one CPU thread, its products by torch's BLAS or oneDNN's brgemm.

Why: the q/k/v product's output and the attention output pass through memory between the three steps of
a block, and on one core the products then run at their cold-cache rate. :func:`attention_block` takes
each block of sequences (:data:`BLOCK_ROWS` rows) through all three while it sits in L2
(``cpu_attention_block.cpp``, around the kernel of :mod:`overtrain.model.cpu_attention`), and its backward
pass keeps the gradients of the attention output and of q/k/v in L2 the same way (docs/benchmarks.md).
It keeps for the backward pass what the three separate steps keep: q/k/v, the attention output, each row's
log-sum-exp and, for short sequences, the probabilities. Taken unless oneDNN makes the model's products whole
(:meth:`overtrain.model.llama.LlamaLM.use_cpu_kernels`), by the library the model chose
(:data:`~overtrain.model.cpu_kernels.BLOCK_LIBRARIES`); it agrees with the separate steps to float rounding.
Given the norm's weight, it computes the decoder layer's whole attention half, ``x + attention(RMSNorm(x))``
(:meth:`overtrain.model.llama.Attention.residual`), with the norm and the residual inside its blocks
(``cpu_rms_norm.h``).

Shapes: B batch, T sequence length, C d_model, H heads, D head dim.
"""

from __future__ import annotations

import torch

from overtrain.model.cpu_attention import HEAD_DIMS, check_kept_probabilities, kept_probability_floats, probabilities_pointer
from overtrain.model.cpu_kernels import (
    fp32_cpu_outside_autocast,
    kernel_library,
    pointer_or_null,
    raise_for_block_status,
    required_block_products,
)

BLOCK_ROWS = 256
"""Rows (tokens) per block, in whole sequences, at least one: at the nano shape two sequences, whose q/k/v
(192 KiB), attention output and gradients stay within the L2 cache. In the step, 128, 256 and 512 rows
measured 1.04, 0.95-0.99 and 0.98-0.99 of the separate steps' time as a Python prototype. The product
libraries are timed block by block at this many rows (:mod:`overtrain.model.cpu_linear`)."""


def block_applies(x: torch.Tensor, heads: int, *weights: torch.Tensor) -> bool:
    """Whether :func:`attention_block` computes on these tensors: fp32 on the CPU outside autocast, and a head
    dim the attention kernel has code for (:data:`~overtrain.model.cpu_attention.HEAD_DIMS`)."""
    return fp32_cpu_outside_autocast(x, *weights) and weights[0].shape[0] // 3 // heads in HEAD_DIMS


def _sequences_per_block(seq_len: int) -> int:
    return max(1, BLOCK_ROWS // max(seq_len, 1))


def _outputs(x: torch.Tensor, heads: int, head_dim: int, keep_probabilities: bool) -> tuple[torch.Tensor, ...]:
    """Empty y (B, T, C), qkv (B, T, 3, H, D), out (B, T, H, D), lse (B, H, T) and kept probabilities."""
    batch, seq_len, width = x.shape
    kept_floats = kept_probability_floats(seq_len) if keep_probabilities else 0
    return (x.new_empty(batch, seq_len, width), x.new_empty(batch, seq_len, 3, heads, head_dim),
            x.new_empty(batch, seq_len, heads, head_dim), x.new_empty(batch, heads, seq_len), x.new_empty(batch, heads, kept_floats))


def _check_status(status: int, head_dim: int) -> None:
    if status == 1:
        raise ValueError(f"the CPU attention kernel has no head dim {head_dim} (it has {HEAD_DIMS})")
    raise_for_block_status(status, "the attention block")


def _check_inputs(x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  norm_weight: torch.Tensor | None, heads: int) -> None:
    """The kernel reads by these shapes (the rotary tables for every position): anything else would read past
    a tensor, so it is refused here, as the attention kernel refuses it (cpu_attention._rotary_pointers)."""
    if x.dim() != 3 or w_qkv.dim() != 2 or w_o.dim() != 2 or w_qkv.shape[0] % (3 * heads):
        raise ValueError(f"the attention block takes x (B, T, C), w_qkv (3 H D, C) and w_o (C, H D); got {tuple(x.shape)}, "
                         f"{tuple(w_qkv.shape)} and {tuple(w_o.shape)} for {heads} heads")
    width, inner = x.shape[2], w_qkv.shape[0] // 3
    if w_qkv.shape[1] != width or tuple(w_o.shape) != (width, inner):
        raise ValueError(f"the attention block's weights do not fit x of width {width}: w_qkv {tuple(w_qkv.shape)}, w_o {tuple(w_o.shape)}")
    expected = (x.shape[1], inner // heads)
    if tuple(cos.shape) != expected or tuple(sin.shape) != expected:
        raise ValueError(f"the rotary tables must be (T, D) = {expected}, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if norm_weight is not None and tuple(norm_weight.shape) != (width,):
        raise ValueError(f"the attention block's norm weight must be (C,) = ({width},), got {tuple(norm_weight.shape)}")
    norm = () if norm_weight is None else (norm_weight,)
    if not fp32_cpu_outside_autocast(x, w_qkv, w_o, cos, sin, *norm):
        raise ValueError("the attention block computes on fp32 CPU tensors outside autocast (see block_applies)")


@torch.library.custom_op("overtrain::attention_block", mutates_args=())
def attention_block(
    x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, norm_weight: torch.Tensor | None,
    norm_eps: float, heads: int, scale: float, keep_probabilities: bool, brgemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``o(softmax(scale q k^T + causal mask) v)`` for x (B, T, C), with q, k, v = x w_qkv^T split in three
    (w_qkv (3 H D, C): the q rows, then k, then v) and q, k rotated by the rotary tables cos and sin (T, D);
    w_o (C, H D). Given ``norm_weight`` (C), Llama's whole pre-norm residual half-layer instead:
    ``x + attention(RMSNorm(x))`` (the norm of :class:`overtrain.model.llama.RMSNorm`, with ``norm_eps``).
    Returns y (B, T, C) and what the backward pass reads: qkv (B, T, 3, H, D), the attention output
    (B, T, H, D), each row's log-sum-exp (B, H, T) and the kept probabilities (none when
    ``keep_probabilities`` is false or the sequences are long; :func:`~overtrain.model.cpu_attention.causal_attention`).
    ``brgemm``: the products by oneDNN's brgemm micro-kernel, else by torch's BLAS sgemm (a flag, not a
    library name: inductor's C++ wrapper passes no string arguments to custom ops)."""
    products = required_block_products("the attention block", brgemm)
    _check_inputs(x, w_qkv, w_o, cos, sin, norm_weight, heads)
    x, w_qkv, w_o, cos, sin = (tensor.contiguous() for tensor in (x, w_qkv, w_o, cos, sin))
    norm_weight = None if norm_weight is None else norm_weight.contiguous()
    batch, seq_len, width = x.shape
    head_dim = w_qkv.shape[0] // 3 // heads
    y, qkv, out, lse, probabilities = _outputs(x, heads, head_dim, keep_probabilities)
    status = kernel_library().ot_attention_block_forward(
        products, x.data_ptr(), pointer_or_null(norm_weight), norm_eps, w_qkv.data_ptr(), w_o.data_ptr(), y.data_ptr(), qkv.data_ptr(),
        out.data_ptr(), lse.data_ptr(), probabilities_pointer(probabilities), cos.data_ptr(), sin.data_ptr(), batch, seq_len, width,
        heads, head_dim, probabilities.shape[-1], _sequences_per_block(seq_len), scale,
    )
    _check_status(status, head_dim)
    return y, qkv, out, lse, probabilities


@attention_block.register_fake
def _(x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, heads, scale, keep_probabilities, brgemm):
    return _outputs(x, heads, w_qkv.shape[0] // 3 // heads, keep_probabilities)


@torch.library.custom_op("overtrain::attention_block_backward", mutates_args=())
def attention_block_backward(
    grad_y: torch.Tensor, x: torch.Tensor, w_qkv: torch.Tensor, w_o: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    norm_weight: torch.Tensor | None, norm_eps: float, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    probabilities: torch.Tensor, heads: int, scale: float, brgemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of :func:`attention_block`'s y with respect to x, w_qkv, w_o and the norm's weight (an
    empty tensor without a norm), from ``grad_y`` (B, T, C) and what its forward pass returned (the
    probabilities are read where kept, else recomputed)."""
    products = required_block_products("the attention block", brgemm)
    grad_y, x, w_qkv, w_o, cos, sin = (tensor.contiguous() for tensor in (grad_y, x, w_qkv, w_o, cos, sin))
    norm_weight = None if norm_weight is None else norm_weight.contiguous()
    batch, seq_len, width = x.shape
    head_dim = w_qkv.shape[0] // 3 // heads
    check_kept_probabilities(probabilities, batch, heads, seq_len)
    grad_x = torch.empty_like(x)
    make = torch.empty_like if batch else torch.zeros_like  # the first block writes the weights' gradients
    grad_w_qkv, grad_w_o = make(w_qkv), make(w_o)
    grad_norm_weight = x.new_empty(0) if norm_weight is None else torch.empty_like(norm_weight)
    status = kernel_library().ot_attention_block_backward(
        products, grad_y.data_ptr(), x.data_ptr(), pointer_or_null(norm_weight), norm_eps, w_qkv.data_ptr(), w_o.data_ptr(), qkv.data_ptr(),
        out.data_ptr(), lse.data_ptr(), probabilities_pointer(probabilities), cos.data_ptr(), sin.data_ptr(), grad_x.data_ptr(),
        grad_w_qkv.data_ptr(), grad_w_o.data_ptr(), pointer_or_null(grad_norm_weight), batch, seq_len, width, heads, head_dim,
        probabilities.shape[-1], _sequences_per_block(seq_len), scale,
    )
    _check_status(status, head_dim)
    return grad_x, grad_w_qkv, grad_w_o, grad_norm_weight


@attention_block_backward.register_fake
def _(grad_y, x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, qkv, out, lse, probabilities, heads, scale, brgemm):
    contiguous = torch.contiguous_format
    grad_norm_weight = x.new_empty(0) if norm_weight is None else torch.empty_like(norm_weight, memory_format=contiguous)
    return (*(torch.empty_like(tensor, memory_format=contiguous) for tensor in (x, w_qkv, w_o)), grad_norm_weight)


def _setup_context(ctx, inputs, output) -> None:
    x, w_qkv, w_o, cos, sin, norm_weight, ctx.norm_eps, heads, scale, _keep_probabilities, ctx.brgemm = inputs
    _, qkv, out, lse, probabilities = output
    ctx.has_norm = norm_weight is not None
    ctx.save_for_backward(x, w_qkv, w_o, cos, sin, norm_weight, qkv, out, lse, probabilities)
    ctx.heads, ctx.scale = heads, scale
    ctx.mark_non_differentiable(qkv, out, lse, probabilities)


def _backward(ctx, grad_y, *_grads_of_saved):
    x, w_qkv, w_o, cos, sin, norm_weight, qkv, out, lse, probabilities = ctx.saved_tensors
    grad_x, grad_w_qkv, grad_w_o, grad_norm_weight = attention_block_backward(
        grad_y, x, w_qkv, w_o, cos, sin, norm_weight if ctx.has_norm else None, ctx.norm_eps, qkv, out, lse, probabilities, ctx.heads,
        ctx.scale, ctx.brgemm)
    # x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, heads, scale, keep_probabilities, brgemm
    return grad_x, grad_w_qkv, grad_w_o, None, None, grad_norm_weight if ctx.has_norm else None, None, None, None, None, None


attention_block.register_autograd(_backward, setup_context=_setup_context)
