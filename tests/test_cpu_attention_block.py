"""overtrain's attention block: the stacked q/k/v product, the attention kernel and the output projection
run a few sequences at a time, with the output and gradients of the three separate steps."""

from __future__ import annotations

import pytest
import torch

from overtrain.model.config import ModelConfig
from overtrain.model.cpu_attention import causal_attention
from overtrain.model.cpu_attention_block import BLOCK_ROWS, attention_block, block_applies
from overtrain.model.cpu_kernels import blas_sgemm, block_products, kernel_library
from overtrain.model.cpu_mlp import swiglu_mlp
from overtrain.model.llama import apply_rotary, build_model, rotary_cos_sin

pytestmark = [pytest.mark.skipif(kernel_library() is None or blas_sgemm() is None,
                                 reason="no C++ compiler to build the CPU kernels, or torch exports no BLAS sgemm_"),
              pytest.mark.usefixtures("one_torch_thread")]

BLOCK_LIBRARIES = ["blas", pytest.param("brgemm", marks=pytest.mark.skipif(block_products("brgemm") is None,
                                                                             reason="no oneDNN brgemm micro-kernel the kernels can call here"))]
"""The libraries the block's products can be made with: torch's BLAS sgemm, and oneDNN's brgemm where it is here."""


def _separate_steps(x, w_qkv, w_o, cos, sin, heads: int) -> torch.Tensor:
    """The block as three steps in torch (float64 where the inputs are): product, rotary causal attention, product."""
    batch, seq_len, _ = x.shape
    q, k, v = (x @ w_qkv.T).view(batch, seq_len, 3, heads, -1).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return out.transpose(1, 2).reshape(batch, seq_len, -1) @ w_o.T


def _kernel_between_products(x, w_qkv, w_o, cos, sin, heads: int) -> torch.Tensor:
    """What the model computes without the block: torch's products around the attention kernel."""
    batch, seq_len, _ = x.shape
    qkv = (x @ w_qkv.T).view(batch, seq_len, 3, heads, -1)
    return causal_attention(qkv, qkv.shape[-1] ** -0.5, cos, sin, True)[0].reshape(batch, seq_len, -1) @ w_o.T


NORM_EPS = 1e-5


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Llama's RMSNorm (overtrain.model.llama.RMSNorm) in the inputs' dtype."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS))


def _output_and_grads(inputs, grad_y, heads: int, how: str, library: str = "blas", norm_weight: torch.Tensor | None = None) -> list[torch.Tensor]:
    """y and the gradients of x, w_qkv and w_o; with a norm weight, of the half-layer x + block(RMSNorm(x))
    instead, and the norm weight's gradient last."""
    x, w_qkv, w_o, cos, sin = inputs
    norm = [] if norm_weight is None else [norm_weight.to(x.dtype)]
    leaves = [tensor.detach().requires_grad_() for tensor in (x, w_qkv, w_o, *norm)]
    head_dim = w_qkv.shape[0] // 3 // heads
    if how == "block":
        norm_leaf = leaves[3] if norm else None
        y = attention_block(*leaves[:3], cos, sin, norm_leaf, NORM_EPS, heads, head_dim**-0.5, True, library == "brgemm")[0]
    else:
        block = {"torch": _separate_steps, "kernel": _kernel_between_products}[how]
        y = block(*leaves[:3], cos, sin, heads) if not norm else leaves[0] + block(_rms_norm(leaves[0], leaves[3]), *leaves[1:3], cos, sin, heads)
    y.backward(grad_y)
    return [y.detach(), *(leaf.grad for leaf in leaves)]


def _norm_weight(width: int, with_norm: bool) -> torch.Tensor | None:
    """A norm weight away from its initial ones (so that its gradient and its product are both exercised)."""
    generator = torch.Generator().manual_seed(width)
    return 1.0 + 0.3 * torch.randn(width, generator=generator, dtype=torch.float64) if with_norm else None


def _inputs(batch: int, seq_len: int, width: int, heads: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """x, w_qkv, w_o and the rotary tables, and a gradient for y, in float64."""
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, seq_len, width, generator=generator, dtype=torch.float64)
    w_qkv = torch.randn(3 * width, width, generator=generator, dtype=torch.float64) * 2 / width**0.5
    w_o = torch.randn(width, width, generator=generator, dtype=torch.float64) / width**0.5
    cos, sin = (table.double() for table in rotary_cos_sin(seq_len, width // heads, 10000.0, torch.device("cpu")))
    return [x, w_qkv, w_o, cos, sin], torch.randn(batch, seq_len, width, generator=generator, dtype=torch.float64)


# The nano shape (4 heads of 16, 128 tokens: blocks of two sequences) with a part block at the end; head
# dim 48 at 40 tokens (six sequences a block); three sequences of 300 tokens, one a block, whose
# probabilities are recomputed rather than kept.
SHAPES = [(5, 128, 64, 4), (9, 40, 96, 2), (3, 300, 32, 2)]


@pytest.mark.parametrize("with_norm", [False, True], ids=["block", "half-layer"])
@pytest.mark.parametrize("library", BLOCK_LIBRARIES)
@pytest.mark.parametrize("batch, seq_len, width, heads", SHAPES)
def test_the_block_computes_what_the_kernel_between_two_products_does(batch: int, seq_len: int, width: int, heads: int,
                                                                       library: str, with_norm: bool) -> None:
    """Alone, and as the pre-norm residual half-layer x + block(RMSNorm(x)) with the norm's gradient."""
    inputs, grad_y = _inputs(batch, seq_len, width, heads)
    single = [tensor.float() for tensor in inputs]
    norm_weight = _norm_weight(width, with_norm)
    ours = _output_and_grads(single, grad_y.float(), heads, "block", library, norm_weight)
    theirs = _output_and_grads(single, grad_y.float(), heads, "kernel", norm_weight=norm_weight)
    assert len(ours) == len(theirs) == (5 if with_norm else 4)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, atol=1e-5 * reference.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("with_norm", [False, True], ids=["block", "half-layer"])
@pytest.mark.parametrize("library", BLOCK_LIBRARIES)
@pytest.mark.parametrize("batch, seq_len, width, heads", SHAPES[:2])
def test_the_block_is_as_accurate_as_torch_and_so_are_its_gradients(batch: int, seq_len: int, width: int, heads: int,
                                                                     library: str, with_norm: bool) -> None:
    """Against float64, at most twice torch's fp32 error, alone and as the half-layer with its norm. (At 300
    tokens, where the attention kernel recomputes the probabilities, its input gradient measured up to 2.7x
    torch's, the same with or without the block: the test above holds the block to the kernel there.)"""
    inputs, grad_y = _inputs(batch, seq_len, width, heads)
    norm_weight = _norm_weight(width, with_norm)
    exact = _output_and_grads(inputs, grad_y, heads, "torch", norm_weight=norm_weight)
    single = [tensor.float() for tensor in inputs]
    ours = _output_and_grads(single, grad_y.float(), heads, "block", library, norm_weight)
    theirs = _output_and_grads(single, grad_y.float(), heads, "torch", norm_weight=norm_weight)
    assert len(ours) == len(exact) == (5 if with_norm else 4)
    for name, mine, reference, truth in zip(("output", "grad x", "grad w_qkv", "grad w_o", "grad norm"), ours, theirs, exact):
        our_error = (mine.double() - truth).abs().max().item()
        torch_error = (reference.double() - truth).abs().max().item()
        assert our_error <= 2 * torch_error + 1e-6, f"{name}: block error {our_error:.2e}, torch's {torch_error:.2e}"


def test_the_block_keeps_what_the_attention_kernel_keeps() -> None:
    """Its q/k/v, attention output, log-sum-exp and kept probabilities are the attention kernel's on the
    product's output (so the backward pass reads the same things), and none are kept when asked not to."""
    generator = torch.Generator().manual_seed(0)
    x, w_qkv, w_o = torch.randn(3, 32, 64, generator=generator), torch.randn(192, 64, generator=generator) / 8, torch.randn(64, 64, generator=generator) / 8
    cos, sin = rotary_cos_sin(32, 16, 10000.0, torch.device("cpu"))
    _, qkv, out, lse, probabilities = attention_block(x, w_qkv, w_o, cos, sin, None, 0.0, 4, 0.25, True, False)
    torch.testing.assert_close(qkv, (x @ w_qkv.T).view(3, 32, 3, 4, 16), atol=1e-5, rtol=1e-5)
    for mine, reference in zip((out, lse, probabilities), causal_attention(qkv, 0.25, cos, sin, True)):
        torch.testing.assert_close(mine, reference)
    assert attention_block(x, w_qkv, w_o, cos, sin, None, 0.0, 4, 0.25, False, False)[4].numel() == 0
    assert BLOCK_ROWS // 32 == 8  # these 3 sequences are one part block


def test_the_model_takes_the_block_only_with_blocked_products_on_plain_fp32_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken with the kernels on and the products by torch's BLAS (oneDNN's stay separate products); not under
    autocast, and not for a projection that is hooked or wrapped (a LoRA adapter, say), whose own forward must run."""
    from overtrain.model import llama

    model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=8, seed=0)
    attention = model.model.layers[0].self_attn
    x, cos, sin = torch.randn(2, 8, 32), model.rope_cos, model.rope_sin
    with torch.no_grad():
        expected = attention(x, cos, sin)
    calls = []
    monkeypatch.setattr(llama, "attention_block", lambda *args: calls.append("block") or attention_block(*args))
    model.use_cpu_kernels(True, library="blas")
    assert all(layer.self_attn.cpu_block for layer in model.model.layers)
    with torch.no_grad():
        torch.testing.assert_close(attention(x, cos, sin), expected, atol=1e-5, rtol=1e-5)
        assert calls == ["block"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attention(x, cos, sin)
        handle = attention.o_proj.register_forward_hook(lambda *_: calls.append("hook"))
        attention(x, cos, sin)
        handle.remove()
    assert calls == ["block", "hook"]
    weights = (torch.cat((attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight)), attention.o_proj.weight)
    assert block_applies(x, 2, *weights) and not block_applies(x.double(), 2, *weights)
    assert not block_applies(x, 4, *weights)  # head dim 8: the attention kernel has no code for it
    model.use_cpu_kernels(True, library="onednn")
    assert not any(layer.self_attn.cpu_block for layer in model.model.layers)


def test_the_block_refuses_inputs_it_would_read_past() -> None:
    """A rotary table shorter than the sequence was read past its end (the attention kernel's own entry checks
    it; the block did not), and weights of another shape would be read by the wrong strides."""
    x, w_qkv, w_o = torch.randn(2, 8, 32), torch.randn(96, 32), torch.randn(32, 32)
    cos, sin = rotary_cos_sin(8, 16, 10000.0, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"the rotary tables must be \(T, D\) = \(8, 16\), got \(4, 16\)"):
        attention_block(x, w_qkv, w_o, cos[:4], sin[:4], None, 0.0, 2, 0.25, True, False)
    with pytest.raises(ValueError, match="do not fit x of width 32"):
        attention_block(x, w_qkv, torch.randn(32, 16), cos, sin, None, 0.0, 2, 0.25, True, False)
    with pytest.raises(ValueError, match="fp32 CPU tensors"):
        attention_block(x.double(), w_qkv.double(), w_o.double(), cos.double(), sin.double(), None, 0.0, 2, 0.25, True, False)
    with pytest.raises(ValueError, match=r"norm weight must be \(C,\) = \(32,\), got \(16,\)"):
        attention_block(x, w_qkv, w_o, cos, sin, torch.ones(16), 1e-5, 2, 0.25, True, False)


def test_a_decoder_layer_takes_the_half_layer_only_where_nothing_would_run_around_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the kernels on, a layer's attention half (x + attention(input_layernorm(x))) is one call of the block
    with the norm's weight, its MLP half one call of the fused MLP with its norm's, and the layer computes what
    the separate steps do, gradients included; a hooked norm or attention module, whose hooks must run, takes
    the separate steps (the block then gets no norm)."""
    from overtrain.model import llama

    reference, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2), vocab_size=50, max_seq_len=8, seed=0)
    model, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2), vocab_size=50, max_seq_len=8, seed=0)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.load_state_dict(reference.state_dict())
    norms, mlp_norms = [], []
    monkeypatch.setattr(llama, "attention_block", lambda *args: norms.append(args[5]) or attention_block(*args))
    monkeypatch.setattr(llama, "swiglu_mlp", lambda *args: mlp_norms.append(args[3]) or swiglu_mlp(*args))
    model.use_cpu_kernels(True, library="blas")
    layer, expected_layer = model.model.layers[0], reference.model.layers[0]
    x, cos, sin = torch.randn(2, 8, 32), model.rope_cos, model.rope_sin
    layer(x, cos, sin).square().sum().backward()
    expected_layer(x, cos, sin).square().sum().backward()
    assert len(norms) == 1 and norms[0] is layer.input_layernorm.weight
    assert len(mlp_norms) == 1 and mlp_norms[0] is layer.post_attention_layernorm.weight
    for (name, mine), theirs in zip(layer.named_parameters(), expected_layer.parameters()):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-5 * theirs.grad.abs().max().item(), rtol=1e-5, msg=name)
    for hooked in (layer.input_layernorm, layer.self_attn):
        handle = hooked.register_forward_hook(lambda *_: norms.append("hook"))
        with torch.no_grad():
            torch.testing.assert_close(layer(x, cos, sin), expected_layer(x, cos, sin), atol=1e-5, rtol=1e-5)
        handle.remove()
    # the norm's hook, then the block without its norm; the block without its norm, then the attention's hook
    assert norms[1:] == ["hook", None, None, "hook"]
