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

from overtrain.model.cpu_attention import HEAD_DIMS, kept_probability_floats
from overtrain.model.cpu_kernels import fp32_cpu_outside_autocast, register_block_products

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


def _outputs(x: torch.Tensor, heads: int, head_dim: int, probability_floats: int) -> tuple[torch.Tensor, ...]:
    """Empty y (B, T, C), qkv (B, T, 3, H, D), out (B, T, H, D), lse (B, H, T) and kept probabilities."""
    batch, seq_len, width = x.shape
    return (x.new_empty(batch, seq_len, width), x.new_empty(batch, seq_len, 3, heads, head_dim),
            x.new_empty(batch, seq_len, heads, head_dim), x.new_empty(batch, heads, seq_len),
            x.new_empty(batch, heads, probability_floats))


_LIBRARY = torch.library.Library("overtrain", "FRAGMENT")
# The kernels and the autograd formula are C++ (cpu_ops.cpp), registered when the kernels' library loads;
# every argument is explicit (see cpu_mlp.py).
_LIBRARY.define("attention_block(Tensor x, Tensor w_qkv, Tensor w_o, Tensor cos, Tensor sin, Tensor? norm_weight, float norm_eps, "
                "int heads, float scale, int probability_floats, int block_batch, bool brgemm) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_LIBRARY.define("attention_block_backward(Tensor grad_y, Tensor x, Tensor w_qkv, Tensor w_o, Tensor cos, Tensor sin, Tensor? norm_weight, "
                "float norm_eps, Tensor qkv, Tensor out, Tensor lse, Tensor probabilities, int heads, float scale, int block_batch, "
                "bool brgemm) -> (Tensor, Tensor, Tensor, Tensor)")


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
    library name: inductor's C++ wrapper passes no string arguments to custom ops). The operator
    ``overtrain::attention_block`` (C++, differentiable), :func:`_sequences_per_block` sequences at a time."""
    if not torch.compiler.is_compiling():
        register_block_products("the attention block", brgemm)  # a compiled model registered them in LlamaLM.use_cpu_kernels
    seq_len = x.shape[1] if x.dim() == 3 else 0
    probability_floats = kept_probability_floats(seq_len) if keep_probabilities else 0
    return torch.ops.overtrain.attention_block(x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, heads, scale, probability_floats,
                                               _sequences_per_block(seq_len), brgemm)


@torch.library.register_fake("overtrain::attention_block", lib=_LIBRARY)
def _(x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, heads, scale, probability_floats, block_batch, brgemm):
    return _outputs(x, heads, w_qkv.shape[0] // 3 // heads, probability_floats)


@torch.library.register_fake("overtrain::attention_block_backward", lib=_LIBRARY)
def _(grad_y, x, w_qkv, w_o, cos, sin, norm_weight, norm_eps, qkv, out, lse, probabilities, heads, scale, block_batch, brgemm):
    contiguous = torch.contiguous_format
    grad_norm_weight = x.new_empty(0) if norm_weight is None else torch.empty_like(norm_weight, memory_format=contiguous)
    return (*(torch.empty_like(tensor, memory_format=contiguous) for tensor in (x, w_qkv, w_o)), grad_norm_weight)
