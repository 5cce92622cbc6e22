"""overtrain's fused MLP: SwiGLU's output and gradients as the three-product MLP gives them, taken by the
model where its products are torch's BLAS and the projections are plain linear layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from overtrain.model.config import ModelConfig
from overtrain.model.cpu_kernels import blas_sgemm, block_products, kernel_library
from overtrain.model.cpu_mlp import MIN_BLOCK_ROWS, block_rows, mlp_kernel_applies, swiglu_mlp
from overtrain.model.llama import build_model

pytestmark = [pytest.mark.skipif(kernel_library() is None or blas_sgemm() is None,
                                 reason="no C++ compiler to build the CPU kernels, or torch exports no BLAS sgemm_"),
              pytest.mark.usefixtures("one_torch_thread")]

BLOCK_LIBRARIES = ["blas", pytest.param("brgemm", marks=pytest.mark.skipif(block_products("brgemm") is None,
                                                                             reason="no oneDNN brgemm micro-kernel the kernels can call here"))]
"""The libraries the kernel's products can be made with: torch's BLAS sgemm, and oneDNN's brgemm where it is here."""


def _three_products(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


NORM_EPS = 1e-5


def _output_and_grads(x, w_gate, w_up, w_down, grad_out, fused: bool, library: str = "blas",
                      norm_weight: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The MLP's output and the gradients of x and its weights; with a norm weight, of the pre-norm residual
    half-layer x + mlp(RMSNorm(x)) instead, and the norm weight's gradient last."""
    norm = [] if norm_weight is None else [norm_weight.to(x.dtype)]
    leaves = [tensor.detach().requires_grad_() for tensor in (x, w_gate, w_up, w_down, *norm)]
    x, w_gate, w_up, w_down = leaves[:4]
    if fused:
        out = swiglu_mlp(x, torch.cat((w_gate, w_up)), w_down, leaves[4] if norm else None, NORM_EPS, library == "brgemm")[0]
    elif norm:
        normed = leaves[4] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS))  # overtrain.model.llama.RMSNorm
        out = x + _three_products(normed, w_gate, w_up, w_down)
    else:
        out = _three_products(x, w_gate, w_up, w_down)
    out.backward(grad_out)
    return [out.detach(), *(leaf.grad for leaf in leaves)]


# (4096, 64, 192) is the nano shape: 16 whole blocks of 256 rows. 1000 rows of F = 136 are three blocks
# of 352 and a part one, and neither F nor the width 40 is a whole number of 16-float vectors (SwiGLU's and
# the norm's element loops); 7 rows are one part block of fewer rows than the vector loop's width, with
# F = 5 below it.
@pytest.mark.parametrize("with_norm", [False, True], ids=["mlp", "half-layer"])
@pytest.mark.parametrize("library", BLOCK_LIBRARIES)
@pytest.mark.parametrize("rows, width, ff_width", [(4096, 64, 192), (1000, 40, 136), (7, 32, 5)])
def test_fused_mlp_is_as_accurate_as_three_products_and_so_are_its_gradients(rows: int, width: int, ff_width: int, library: str,
                                                                            with_norm: bool) -> None:
    """Against float64, at most 2x the three products' fp32 error alone, and 2.5x as the pre-norm residual
    half-layer with its norm. (brgemm sums each product's K terms in one chain: its input gradient at
    2F = 272 measured 1.8x torch's error alone and 2.3x in the half-layer, whose norm backward scales it by
    the norm's weight; MKL's sgemm 1.0x and 1.2x.)"""
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    w_gate, w_up = (torch.randn(ff_width, width, generator=generator, dtype=torch.float64) * 2 / width**0.5 for _ in range(2))
    w_down = torch.randn(width, ff_width, generator=generator, dtype=torch.float64) / ff_width**0.5
    grad_out = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    norm_weight = 1.0 + 0.3 * torch.randn(width, generator=generator, dtype=torch.float64) if with_norm else None
    exact = _output_and_grads(x, w_gate, w_up, w_down, grad_out, fused=False, norm_weight=norm_weight)
    single = [tensor.float() for tensor in (x, w_gate, w_up, w_down, grad_out)]
    ours = _output_and_grads(*single, fused=True, library=library, norm_weight=norm_weight)
    theirs = _output_and_grads(*single, fused=False, norm_weight=norm_weight)
    assert len(ours) == len(exact) == (6 if with_norm else 5)
    for name, mine, reference, truth in zip(("output", "grad x", "grad gate", "grad up", "grad down", "grad norm"), ours, theirs, exact):
        our_error = (mine.double() - truth).abs().max().item()
        torch_error = (reference.double() - truth).abs().max().item()
        assert our_error <= (2.5 if with_norm else 2.0) * torch_error + 1e-6, f"{name}: fused error {our_error:.2e}, three products' {torch_error:.2e}"
    assert block_rows(192) == 256 and block_rows(136) == 352 and block_rows(4096) == MIN_BLOCK_ROWS


@pytest.mark.parametrize("library", BLOCK_LIBRARIES)
def test_fused_mlp_of_no_rows_has_zero_weight_gradients(library: str) -> None:
    """The first block writes the weights' gradients; with no rows there is none, and they must still be zeros."""
    w_gate_up, w_down = torch.randn(40, 16, requires_grad=True), torch.randn(16, 20, requires_grad=True)
    norm_weight = torch.randn(16, requires_grad=True)
    out = swiglu_mlp(torch.empty(0, 16, requires_grad=True), w_gate_up, w_down, norm_weight, 1e-5, library == "brgemm")[0]
    out.sum().backward()
    assert out.shape == (0, 16) and torch.equal(w_gate_up.grad, torch.zeros(40, 16)) and torch.equal(w_down.grad, torch.zeros(16, 20))
    assert torch.equal(norm_weight.grad, torch.zeros(16))


@pytest.mark.parametrize("library", BLOCK_LIBRARIES)
def test_fused_mlp_reads_strided_and_saved_inputs_as_their_values(library: str) -> None:
    x = torch.randn(64, 2 * 32)[:, ::2]  # every other column: not contiguous
    w_gate, w_up, w_down = torch.randn(48, 32), torch.randn(48, 32), torch.randn(32, 48)
    out, gate_up = swiglu_mlp(x, torch.cat((w_gate, w_up)), w_down, None, 0.0, library == "brgemm")
    torch.testing.assert_close(out, _three_products(x, w_gate, w_up, w_down), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gate_up, torch.cat((x @ w_gate.T, x @ w_up.T), dim=1), atol=1e-5, rtol=1e-5)


def test_the_model_takes_the_fused_mlp_only_with_blocked_products_on_plain_fp32_layers() -> None:
    """Taken with the kernels on and the products by torch's BLAS (oneDNN's stay three products); not under
    autocast, and not for a projection that is wrapped or hooked (a LoRA adapter, say), whose own forward must run."""
    model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=8, seed=0)
    mlp = model.model.layers[0].mlp
    x = torch.randn(2, 8, 32)
    assert not mlp.cpu_kernel
    model.use_cpu_kernels(True, library="blas")
    assert all(layer.mlp.cpu_kernel for layer in model.model.layers)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), _three_products(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight),
                                   atol=1e-5, rtol=1e-5)
    weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    assert mlp_kernel_applies(x, *weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not mlp_kernel_applies(x, *weights)
    assert not mlp_kernel_applies(x.double(), *weights)
    seen = []
    handle = mlp.up_proj.register_forward_hook(lambda *_: seen.append(1))
    mlp(x)
    assert seen == [1]  # the hooked layer ran as a module: the fused path would have skipped it
    handle.remove()
    model.use_cpu_kernels(True, library="onednn")
    assert not any(layer.mlp.cpu_kernel for layer in model.model.layers)
    model.use_cpu_kernels(False)
    assert not any(layer.mlp.cpu_kernel for layer in model.model.layers)


def test_a_compiled_model_with_the_fused_mlp_trains_as_the_eager_one() -> None:
    """Loss and gradients of the compiled model with every kernel on (the fused MLP among them) against the
    eager model without kernels: one graph, and the same numbers to float rounding."""
    model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
    input_ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    targets = input_ids.roll(-1, dims=1)
    loss = model.loss(input_ids, targets)
    reference = [loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))]
    model.use_cpu_kernels(True, library="blas")
    assert torch._dynamo.explain(model.loss)(input_ids, targets).graph_break_count == 0
    compiled = torch.compile(model.loss, options={"cpp_wrapper": True})  # as the training loop compiles it
    loss = compiled(input_ids, targets)
    ours = [loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))]
    for mine, theirs in zip(ours, reference):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-4)


def test_the_fused_mlp_refuses_weights_it_would_read_past() -> None:
    with pytest.raises(ValueError, match="takes x \\(N, C\\), w_gate_up \\(2F, C\\) and w_down \\(C, F\\)"):
        swiglu_mlp(torch.randn(4, 16), torch.randn(30, 16), torch.randn(16, 20), None, 0.0, False)
    with pytest.raises(ValueError, match="fp32 CPU tensors"):
        swiglu_mlp(torch.randn(4, 16).double(), torch.randn(40, 16).double(), torch.randn(16, 20).double(), None, 0.0, False)
    with pytest.raises(ValueError, match=r"norm weight must be \(C,\) = \(16,\), got \(20,\)"):
        swiglu_mlp(torch.randn(4, 16), torch.randn(40, 16), torch.randn(16, 20), torch.ones(20), 1e-5, False)


def test_a_projection_with_a_backward_hook_is_not_fused_away() -> None:
    """Its hook must fire, which only the module's own call makes happen."""
    from overtrain.model.llama import is_plain_linear

    model, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2), vocab_size=50, max_seq_len=8, seed=0)
    mlp = model.model.layers[0].mlp
    assert is_plain_linear(mlp.down_proj)
    mlp.down_proj.register_full_backward_hook(lambda *_: None)
    assert not is_plain_linear(mlp.down_proj)
