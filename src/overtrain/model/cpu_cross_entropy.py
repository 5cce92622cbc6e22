"""The output layer and the mean cross-entropy of a training step in one pass, on one CPU thread.

Why: the compiled nano step writes its (N, V) logits (4 MB), reads them back for the log-softmax and twice
more for the gradient, and on one core this traffic, not arithmetic, sets the pace (docs/benchmarks.md).
:func:`linear_cross_entropy` makes the logits a block of rows at a time, turns each block into its
gradient in place (``cpu_cross_entropy.cpp``) and multiplies it back into the gradients of the hidden
states and the weight while the block sits in the L2 cache, by torch's BLAS sgemm or oneDNN's brgemm
micro-kernel, whichever the model's blocked kernels take. Where oneDNN makes the model's products whole
(:mod:`overtrain.model.cpu_linear`: CPUs on which torch's BLAS is the slower library), it makes these too,
from Python, in blocks as large as :data:`ONEDNN_LOGIT_BLOCK_BYTES` allows. It computes the gradients in
its forward pass (the loss is the graph's last node), which is why the model takes it only when gradients
are wanted. It agrees with ``F.cross_entropy`` to float rounding, not bitwise.

Shapes: N rows (tokens), C width, V vocabulary.
"""

from __future__ import annotations

import math

import torch

from overtrain.model.cpu_kernels import kernel_library, register_block_products
from overtrain.model.cpu_linear import onednn_product, onednn_weight_gradient

LOGIT_BLOCK_BYTES = 256 << 10
"""Logits made at a time by :func:`linear_cross_entropy`: an eighth of a 2 MiB L2 cache, so the block,
its rows of the hidden states and the weight stay cached between its three products."""

ONEDNN_LOGIT_BLOCK_BYTES = 8 << 20
"""Logits made at a time when oneDNN makes the products: each block costs three calls from Python (~12 us
of dispatch each) and two transposed copies, which small blocks multiply; at the nano shape (4096 x 259)
the whole logits are one block. Against blocks of :data:`LOGIT_BLOCK_BYTES` and 1 MiB, one block measured
fastest in the step (docs/benchmarks.md); the cap keeps large vocabularies from making (N, V) at once."""


def loss_kernel_applies(*tensors: torch.Tensor) -> bool:
    """Whether :func:`linear_cross_entropy` computes on these tensors: fp32 on the CPU. Only tensor
    properties, so torch.compile traces it without a break (whether the kernel is built and which library
    makes its products is decided once, by :meth:`overtrain.model.llama.LlamaLM.use_cpu_kernels`)."""
    return all(tensor.device.type == "cpu" and tensor.dtype == torch.float32 for tensor in tensors)


def _block_rows(vocab_size: int) -> int:
    """Rows per block of logits: :data:`LOGIT_BLOCK_BYTES` of fp32, rounded down to a multiple of 16, at least 16."""
    return max(16, LOGIT_BLOCK_BYTES // (4 * vocab_size) // 16 * 16)


_LIBRARY = torch.library.Library("overtrain", "FRAGMENT")
# The kernel and the autograd formula are C++ (cpu_ops.cpp), registered when the kernels' library loads;
# every argument is explicit (see cpu_mlp.py).
_LIBRARY.define("linear_cross_entropy(Tensor hidden, Tensor weight, Tensor targets, int ignore_index, bool brgemm, int block_rows) "
                "-> (Tensor, Tensor, Tensor)")


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, onednn: bool, brgemm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats) of the logits ``hidden @ weight.T`` (N, V) against targets (N,), over the
    targets that are not ``ignore_index`` (NaN when all are), as ``F.cross_entropy`` gives it; with the
    loss's gradients with respect to hidden (N, C) and weight (V, C), which the backward pass scales.
    ``onednn``: the products by oneDNN from Python (:func:`linear_cross_entropy_by_onednn`); else the operator
    ``overtrain::linear_cross_entropy`` (C++, differentiable), in blocks of :func:`_block_rows` rows, by oneDNN's
    brgemm micro-kernel with ``brgemm``, or by torch's BLAS sgemm (flags, not library names: inductor's C++
    wrapper passes no string arguments to custom ops)."""
    if onednn:
        return linear_cross_entropy_by_onednn(hidden, weight, targets, ignore_index)
    if not torch.compiler.is_compiling():
        register_block_products("the fused loss", brgemm)  # a compiled model registered them in LlamaLM.use_cpu_kernels
    vocab_size = weight.shape[0] if weight.dim() == 2 else 1
    return torch.ops.overtrain.linear_cross_entropy(hidden, weight, targets, ignore_index, brgemm, _block_rows(vocab_size))


@torch.library.register_fake("overtrain::linear_cross_entropy", lib=_LIBRARY)
def _(hidden, weight, targets, ignore_index, brgemm, block_rows):
    contiguous = torch.contiguous_format
    return hidden.new_empty(()), torch.empty_like(hidden, memory_format=contiguous), torch.empty_like(weight, memory_format=contiguous)


@torch.library.custom_op("overtrain::linear_cross_entropy_by_onednn", mutates_args=())
def linear_cross_entropy_by_onednn(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`linear_cross_entropy` with its products by oneDNN, where oneDNN makes the model's products whole
    (:mod:`overtrain.model.cpu_linear`): from Python, in blocks of :data:`ONEDNN_LOGIT_BLOCK_BYTES`."""
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous().long()
    vocab_size = weight.shape[0]
    counted_mask = targets != ignore_index
    out_of_range = counted_mask & ((targets < 0) | (targets >= vocab_size))
    if bool(out_of_range.any()):  # F.cross_entropy's check, made before the kernel reads past a row
        raise IndexError(f"target {int(targets[out_of_range][0])} is out of bounds for {vocab_size} logits")
    return _linear_cross_entropy_by_onednn(hidden, weight, targets, ignore_index, int(counted_mask.sum()))


def _linear_cross_entropy_by_onednn(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, counted: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`linear_cross_entropy` with oneDNN's products, per block of rows: the logits, the kernel's
    in-place softmax cross-entropy gradient, then the block's share of both gradients."""
    rows, vocab_size = hidden.shape[0], weight.shape[0]
    block_rows = max(1, ONEDNN_LOGIT_BLOCK_BYTES // (4 * vocab_size))
    scale = 1.0 / counted if counted else 0.0
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.zeros_like(weight)
    total = 0.0
    for first in range(0, rows, block_rows):
        hidden_block = hidden[first : first + block_rows]
        logits = onednn_product(hidden_block, weight)  # (n, V), then its gradient in place
        total += kernel_library().ot_softmax_cross_entropy_rows(
            logits.data_ptr(), logits.shape[0], vocab_size, targets[first:].data_ptr(), ignore_index, scale
        )
        grad_hidden[first : first + block_rows] = onednn_product(logits, weight.T)
        grad_weight += onednn_weight_gradient(logits, hidden_block)
    loss = hidden.new_tensor(total / counted if counted else math.nan)
    return loss, grad_hidden, grad_weight


@linear_cross_entropy_by_onednn.register_fake
def _(hidden, weight, targets, ignore_index):
    contiguous = torch.contiguous_format
    return hidden.new_empty(()), torch.empty_like(hidden, memory_format=contiguous), torch.empty_like(weight, memory_format=contiguous)


def _linear_cross_entropy_setup_context(ctx, inputs, output) -> None:
    _, grad_hidden, grad_weight = output
    ctx.save_for_backward(grad_hidden, grad_weight)
    ctx.mark_non_differentiable(grad_hidden, grad_weight)


def _linear_cross_entropy_backward(ctx, grad_loss, _grad_hidden, _grad_weight):
    grad_hidden, grad_weight = ctx.saved_tensors
    return grad_loss * grad_hidden, grad_loss * grad_weight, None, None


linear_cross_entropy_by_onednn.register_autograd(_linear_cross_entropy_backward, setup_context=_linear_cross_entropy_setup_context)
