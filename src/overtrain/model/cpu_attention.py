"""Causal attention for small head dims on one CPU thread: a C++ kernel, built on first use.

Why: at the nano shape (head dim 16, 128 tokens) torch's CPU flash-attention kernel takes about a third
of a compiled training step, mostly outside arithmetic. ``cpu_attention.cpp`` computes one (batch, head)
pair at a time from L1/L2 with register-blocked 16-float vector loops; its backward pass reads the
probabilities its forward pass kept (sequences up to 256 tokens) or recomputes them from each row's
log-sum-exp, as FlashAttention does. Given the rotary tables it also applies
the rotary embedding to q and k (and its transpose to their gradients), which saves the training step
its separate passes. It agrees with ``F.scaled_dot_product_attention(is_causal=True)`` (after
``apply_rotary``) to float rounding, not bitwise: against a float64 reference its error is that of
torch's own kernel (a few 1e-6 at unit-scale inputs).

The kernel is built with the other CPU kernels (:mod:`overtrain.model.cpu_kernels`). Where it cannot be
built, or does not apply (see :func:`kernel_applies`), callers use ``F.scaled_dot_product_attention``.

Shapes: B batch, H heads, T sequence length, D head dim.
"""

from __future__ import annotations

import torch

from overtrain.model.cpu_kernels import kernel_library

HEAD_DIMS = (16, 32, 48, 64)
"""Head dims the kernel is compiled for (whole 16-float vectors)."""

KEEP_PROBABILITIES_MAX_SEQ_LEN = 256
"""Up to this sequence length the forward pass keeps the attention probabilities for the backward pass,
which then reads them instead of recomputing scores and exponentials (about a third of its operations).
At the nano shape the backward pass takes ~15% less time and the forward pass ~15% more, for writing
them; the step gains 1-4% (docs/benchmarks.md). They cost ~T^2 / 2 floats per (batch, head): at 256 tokens
136 KiB, twice that head's q, k, v and output at head dim 16 and half of them at head dim 64, a small part
of a layer's activations. They grow with T^2 and the rest with T, so longer sequences recompute them."""

_VECTOR_FLOATS = 16
"""The kernel's vector width in floats: each block of 16 queries keeps one vector per key it sees."""


def kept_probability_floats(seq_len: int) -> int:
    """Floats of probabilities the forward pass keeps per (batch, head) at ``seq_len``: 0 above the
    threshold, else :func:`_probability_floats`."""
    return 0 if seq_len > KEEP_PROBABILITIES_MAX_SEQ_LEN else _probability_floats(seq_len)


def _probability_floats(seq_len: int) -> int:
    """Floats the kernel writes per (batch, head) when asked to keep the probabilities: one 16-float vector
    per (block of 16 queries, key up to the block's last query). Block b < n - 1 of the n blocks sees
    16 (b + 1) keys and the last sees all T, so there are 16 n (n - 1) / 2 + T vectors: a closed form, so
    that torch.compile can keep T symbolic (the tests check it against the kernel's own count)."""
    blocks = (seq_len + _VECTOR_FLOATS - 1) // _VECTOR_FLOATS
    return _VECTOR_FLOATS * (_VECTOR_FLOATS * blocks * (blocks - 1) // 2 + seq_len)


def kernel_applies(qkv: torch.Tensor) -> bool:
    """Whether the kernel computes attention on these packed queries, keys and values (B, T, 3, H, D): fp32
    on the CPU and a head dim in :data:`HEAD_DIMS` (packing them implies as many key/value heads as query
    heads). Only tensor properties, so torch.compile traces it without a break; whether the kernel is built
    and torch runs one thread is asked once, by :func:`overtrain.model.cpu_kernels.kernel_available`."""
    return qkv.device.type == "cpu" and qkv.dtype == torch.float32 and _is_packed(qkv) and qkv.shape[-1] in HEAD_DIMS


def _is_packed(qkv: torch.Tensor) -> bool:
    return qkv.dim() == 5 and qkv.shape[2] == 3


def _packed_pointers_and_strides(packed: torch.Tensor) -> list[int]:
    """Pointer and (batch, head, position) strides, in elements, of q, k and v in turn in a (B, T, 3, H, D)
    tensor: what the kernel reads from :func:`heads_first`'s views, without making them (three views cost
    ~15 us of Python, and the step makes four such calls)."""
    batch_stride, position_stride, part_stride, head_stride, _ = packed.stride()
    base, item_bytes = packed.data_ptr(), packed.element_size()
    return [value for part in range(3) for value in (base + part * part_stride * item_bytes, batch_stride, head_stride, position_stride)]


def _heads_first_pointer_and_strides(x: torch.Tensor) -> list[int]:
    """Pointer and (batch, head, position) strides of a (B, T, H, D) tensor, as the kernel takes (B, H, T, D)."""
    batch_stride, position_stride, head_stride, _ = x.stride()
    return [x.data_ptr(), batch_stride, head_stride, position_stride]


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def heads_first(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (B, H, T, D) views of q, k and v in a (B, T, 3, H, D) tensor, all three with the same strides."""
    return tuple(packed[:, :, index].transpose(1, 2) for index in range(3))


def _check_packed(qkv: torch.Tensor) -> None:
    if not _is_packed(qkv):
        raise ValueError(f"pass q, k and v packed as one (B, T, 3, H, D) tensor, got shape {tuple(qkv.shape)}")


def _check_status(status: int, head_dim: int) -> None:
    """The kernel's entry points return 1 for a head dim they are not compiled for."""
    if status != 0:
        raise ValueError(f"the CPU attention kernel has no head dim {head_dim} (it has {HEAD_DIMS})")


def _rotary_pointers(qkv: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> list[int | None]:
    """Pointers to the (T, D) rotary tables (None, None for no rotation), checked against packed qkv's shape."""
    if cos is None and sin is None:
        return [None, None]
    if cos is None or sin is None:
        raise ValueError("pass both rotary tables (cos and sin) or neither")
    expected = (qkv.shape[1], qkv.shape[-1])
    for name, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) != expected or table.dtype != torch.float32 or not table.is_contiguous():
            raise ValueError(f"rotary table {name} must be contiguous fp32 of shape (T, D) = {expected}, got {tuple(table.shape)} {table.dtype}")
    return [cos.data_ptr(), sin.data_ptr()]


# The custom ops of overtrain's kernels take every argument explicitly (no defaults in their schemas):
# inductor's C++ wrapper (cpp_wrapper) leaves out a trailing argument that equals its default, and the
# dispatcher then read whatever followed the argument array in its place (torch 2.13; a blocked kernel
# asked for torch's BLAS ran oneDNN's brgemm).
@torch.library.custom_op("overtrain::causal_attention", mutates_args=())
def causal_attention(
    qkv: torch.Tensor, scale: float, cos: torch.Tensor | None, sin: torch.Tensor | None, keep_probabilities: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softmax(scale q k^T + causal mask) v for queries, keys and values packed as one (B, T, 3, H, D) tensor
    (what one product with the three weights stacked gives), with q and k first rotated by the rotary
    tables cos and sin (T, D) when given (``overtrain.model.llama.apply_rotary``'s rotation). Returns the
    output (B, T, H, D) and what the backward pass needs: each row's log-sum-exp (B, H, T) and the kept
    probabilities (B, H, :func:`kept_probability_floats`; none above
    :data:`KEEP_PROBABILITIES_MAX_SEQ_LEN`, or when ``keep_probabilities`` is false: pass
    ``qkv.requires_grad``, so that a pass without gradients writes none). The gradient flows to qkv,
    packed the same way (so the stacked product's backward needs no concatenation), not to the tables."""
    _check_packed(qkv)
    qkv = _last_dim_contiguous(qkv)
    batch, seq_len, _, heads, head_dim = qkv.shape
    out, lse, probabilities = _forward_outputs(qkv, keep_probabilities)
    status = kernel_library().ot_causal_attention_forward(
        *_packed_pointers_and_strides(qkv), *_heads_first_pointer_and_strides(out), lse.data_ptr(), probabilities_pointer(probabilities),
        *_rotary_pointers(qkv, cos, sin), batch, heads, seq_len, head_dim, scale,
    )
    _check_status(status, head_dim)
    return out, lse, probabilities


def _forward_outputs(qkv: torch.Tensor, keep_probabilities: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty output (B, T, H, D), log-sum-exp (B, H, T) and kept probabilities for packed qkv (B, T, 3, H, D)."""
    batch, seq_len, _, heads, head_dim = qkv.shape
    kept_floats = kept_probability_floats(seq_len) if keep_probabilities else 0
    return (qkv.new_empty(batch, seq_len, heads, head_dim), qkv.new_empty(batch, heads, seq_len),
            qkv.new_empty(batch, heads, kept_floats))


def probabilities_pointer(probabilities: torch.Tensor) -> int | None:
    """The kept probabilities' pointer for the kernel, None for none kept. The kernel reads and writes them
    as whole aligned 64-byte vectors, so a tensor that is not is refused rather than misread."""
    if probabilities.numel() == 0:
        return None
    if not probabilities.is_contiguous() or probabilities.data_ptr() % 64:
        raise ValueError("the attention probabilities must be contiguous and 64-byte aligned (as torch allocates them)")
    return probabilities.data_ptr()


@causal_attention.register_fake
def _(qkv, scale, cos, sin, keep_probabilities):
    return _forward_outputs(qkv, keep_probabilities)


@torch.library.custom_op("overtrain::causal_attention_backward", mutates_args=())
def causal_attention_backward(
    grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, probabilities: torch.Tensor, scale: float,
    cos: torch.Tensor | None, sin: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient of :func:`causal_attention` with respect to the packed, unrotated qkv (B, T, 3, H, D), from its
    forward pass's log-sum-exp and kept probabilities (read where kept, else recomputed)."""
    grad_out, qkv, out = (_last_dim_contiguous(x) for x in (grad_out, qkv, out))
    lse = lse.contiguous()
    batch, seq_len, _, heads, head_dim = qkv.shape
    check_kept_probabilities(probabilities, batch, heads, seq_len)
    grad_qkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)
    grad_pointers = _packed_pointers_and_strides(grad_qkv)  # q, k, v in turn; all three share the strides
    status = kernel_library().ot_causal_attention_backward(
        *_packed_pointers_and_strides(qkv), *_heads_first_pointer_and_strides(out), *_heads_first_pointer_and_strides(grad_out),
        lse.data_ptr(), probabilities_pointer(probabilities), *grad_pointers[0:12:4], *grad_pointers[1:4],
        *_rotary_pointers(qkv, cos, sin), batch, heads, seq_len, head_dim, scale,
    )
    _check_status(status, head_dim)
    return grad_qkv


def check_kept_probabilities(probabilities: torch.Tensor, batch: int, heads: int, seq_len: int) -> None:
    """The backward pass reads every kept probability the forward pass wrote: a buffer of another size (the
    threshold changed between the passes, say) would be read past its end, so it is refused."""
    expected = batch * heads * _probability_floats(seq_len)
    if probabilities.numel() not in (0, expected):
        raise ValueError(f"the kept attention probabilities hold {probabilities.numel()} floats; the backward pass of "
                         f"({batch}, {heads}) heads of {seq_len} tokens reads {expected} (or none, to recompute them)")


@causal_attention_backward.register_fake
def _(grad_out, qkv, out, lse, probabilities, scale, cos, sin):
    return torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)


def _setup_context(ctx, inputs, output) -> None:
    qkv, scale, cos, sin, _keep_probabilities = inputs
    out, lse, probabilities = output
    ctx.save_for_backward(qkv, out, lse, probabilities, cos, sin)
    ctx.scale = scale


def _backward(ctx, grad_out, _grad_lse, _grad_probabilities):
    qkv, out, lse, probabilities, cos, sin = ctx.saved_tensors
    return causal_attention_backward(grad_out, qkv, out, lse, probabilities, ctx.scale, cos, sin), None, None, None, None


causal_attention.register_autograd(_backward, setup_context=_setup_context)
