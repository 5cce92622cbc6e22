"""overtrain's CPU attention kernel: the same attention and gradients as torch's, in a model transformers
agrees with, and taken (with the fused output layer and loss) by compiled training runs only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_pretrain_config, write_stdlib_text_corpus

from overtrain.model import cpu_attention, llama
from overtrain.model.config import ModelConfig
from overtrain.model.cpu_attention import causal_attention, causal_attention_backward, kernel_applies
from overtrain.model.cpu_kernels import blas_sgemm, kernel_library
from overtrain.model.llama import apply_rotary, build_model, rotary_cos_sin

pytestmark = [pytest.mark.skipif(kernel_library() is None, reason="no C++ compiler to build the CPU attention kernel"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stdlib_text_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def token_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token_cache")  # one tokenization for both loop tests


def _attention_and_grads(qkv, grad_out, kernel: bool, rotary: bool):
    """Output (B, T, H, D) and the packed gradient (B, T, 3, H, D) of causal attention on packed q, k, v: the
    kernel (rotating inside when ``rotary``), or ``apply_rotary`` then torch's ``scaled_dot_product_attention``
    in the inputs' dtype."""
    seq_len, head_dim = qkv.shape[1], qkv.shape[-1]
    cos, sin = rotary_cos_sin(seq_len, head_dim, 10_000.0, qkv.device) if rotary else (None, None)
    scale = 1 / math.sqrt(head_dim)
    if kernel:
        out = causal_attention(qkv, scale, cos, sin, True)[0]
    else:
        q, k, v = (qkv[:, :, index].transpose(1, 2) for index in range(3))
        q, k = (apply_rotary(x, cos.to(x.dtype), sin.to(x.dtype)) for x in (q, k)) if rotary else (q, k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    (grad_qkv,) = torch.autograd.grad(out, qkv, grad_out.to(out.dtype))
    return [out, *grad_qkv.unbind(2)]


@pytest.mark.parametrize("probabilities", ["kept", "recomputed"])
@pytest.mark.parametrize("rotary", [False, True], ids=["plain", "rotary"])
@pytest.mark.parametrize("batch, heads, seq_len, head_dim", [(2, 3, 37, 16), (1, 2, 130, 32), (2, 1, 16, 64), (1, 2, 21, 48), (1, 1, 1, 16)])
def test_kernel_is_as_accurate_as_torch_attention_and_its_gradients(
    batch: int, heads: int, seq_len: int, head_dim: int, rotary: bool, probabilities: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a float64 reference, the kernel's output and gradients are as close as torch's fp32 kernel's
    (both round differently, so they are compared with the truth, not bitwise with each other), whether
    the backward pass reads the probabilities the forward pass kept or recomputes them."""
    if probabilities == "recomputed":
        monkeypatch.setattr(cpu_attention, "KEEP_PROBABILITIES_MAX_SEQ_LEN", 0)
    generator = torch.Generator().manual_seed(seq_len)
    qkv = (torch.randn(batch, seq_len, 3, heads, head_dim, generator=generator) * 2).requires_grad_()
    grad_out = torch.randn(batch, seq_len, heads, head_dim, generator=generator)
    exact = _attention_and_grads(qkv.detach().double().requires_grad_(), grad_out, kernel=False, rotary=rotary)
    ours = _attention_and_grads(qkv, grad_out, kernel=True, rotary=rotary)
    theirs = _attention_and_grads(qkv, grad_out, kernel=False, rotary=rotary)
    for name, mine, reference, truth in zip(("output", "grad q", "grad k", "grad v"), ours, theirs, exact):
        our_error = (mine.double() - truth).abs().max().item()
        torch_error = (reference.double() - truth).abs().max().item()
        assert our_error <= 2 * torch_error + 1e-6, f"{name}: kernel error {our_error:.2e}, torch's {torch_error:.2e}"
        torch.testing.assert_close(mine, reference, atol=2e-5, rtol=1e-4)  # and near torch's, a grosser check


@pytest.mark.parametrize("seq_len", [1, 15, 16, 17, 100, 128, 256, 257, 300])
def test_kept_probabilities_are_sized_as_the_kernel_writes_them(seq_len: int) -> None:
    """The buffer Python allocates holds exactly what the kernel writes (one 16-float vector per block of 16
    queries and key up to the block's last query), and none is kept above the threshold or without gradients."""
    written = kernel_library().ot_causal_attention_probability_floats(seq_len)
    assert cpu_attention._probability_floats(seq_len) == written  # what the backward pass checks a buffer against
    expected = written if seq_len <= cpu_attention.KEEP_PROBABILITIES_MAX_SEQ_LEN else 0
    assert cpu_attention.kept_probability_floats(seq_len) == expected
    qkv = torch.randn(2, seq_len, 3, 2, 16)
    assert causal_attention(qkv, 0.25, None, None, True)[2].shape == (2, 2, expected)
    assert causal_attention(qkv, 0.25, None, None, False)[2].numel() == 0


@pytest.mark.parametrize("seq_len", [1, 16, 17, 37, 128, 256, 300])
def test_the_kernel_writes_exactly_the_kept_probabilities_buffer(seq_len: int) -> None:
    """Called with a buffer inside NaN guard zones, the forward pass fills every float of it with a finite
    probability and touches nothing outside it (the size Python allocates is what the kernel writes)."""
    batch, heads, head_dim, guard = 2, 3, 16, 64  # the guard a multiple of 16 floats: the buffer stays aligned
    floats = kernel_library().ot_causal_attention_probability_floats(seq_len) * batch * heads
    qkv = torch.randn(batch, seq_len, 3, heads, head_dim)
    out, lse = torch.empty(batch, seq_len, heads, head_dim), torch.empty(batch, heads, seq_len)
    guarded = torch.full((guard + floats + guard,), float("nan"))
    status = kernel_library().ot_causal_attention_forward(
        *cpu_attention._packed_pointers_and_strides(qkv), *cpu_attention._heads_first_pointer_and_strides(out), lse.data_ptr(),
        guarded[guard:].data_ptr(), None, None, batch, heads, seq_len, head_dim, 0.25)
    assert status == 0
    assert guarded[:guard].isnan().all() and guarded[guard + floats:].isnan().all()
    assert guarded[guard:guard + floats].isfinite().all()


def test_the_backward_pass_reads_the_kept_probabilities() -> None:
    """Halving the kept probabilities changes the gradient (so it is read, not recomputed); a buffer of
    another size is refused rather than read past its end."""
    qkv, grad_out = torch.randn(1, 37, 3, 2, 16), torch.randn(1, 37, 2, 16)
    out, lse, probabilities = causal_attention(qkv, 0.25, None, None, True)
    read = causal_attention_backward(grad_out, qkv, out, lse, probabilities, 0.25, None, None)
    halved = causal_attention_backward(grad_out, qkv, out, lse, probabilities * 0.5, 0.25, None, None)
    recomputed = causal_attention_backward(grad_out, qkv, out, lse, probabilities[:, :, :0], 0.25, None, None)
    torch.testing.assert_close(read, recomputed, atol=1e-5, rtol=1e-5)
    assert (read - halved).abs().max() > 0.1
    with pytest.raises(ValueError, match="the kept attention probabilities hold 16 floats"):
        causal_attention_backward(grad_out, qkv, out, lse, torch.zeros(1, 1, 16), 0.25, None, None)


def test_kernel_reads_and_writes_through_any_strides_with_a_contiguous_last_dim() -> None:
    """q, k, v sliced out of a wider tensor (row strides that are not the shape's, a storage offset) and a
    transposed incoming gradient give torch's attention and gradients."""
    generator = torch.Generator().manual_seed(5)
    wide = torch.randn(2, 21, 3, 2, 48, generator=generator)
    grad_out = torch.randn(2, 2, 21, 16, generator=generator).transpose(1, 2)  # (B, T, H, D), not contiguous
    cos, sin = rotary_cos_sin(21, 16, 10_000.0, wide.device)
    for columns in (slice(16, 32), slice(32, 48)):
        wide_leaf = wide.clone().requires_grad_()
        out = causal_attention(wide_leaf[..., columns], 0.25, cos, sin, True)[0]
        (grad_wide,) = torch.autograd.grad(out, wide_leaf, grad_out)
        reference = _attention_and_grads(wide[..., columns].contiguous().requires_grad_(), grad_out.contiguous(), kernel=False, rotary=True)
        torch.testing.assert_close(out, reference[0], atol=2e-5, rtol=1e-4)
        for mine, theirs in zip(grad_wide[..., columns].unbind(2), reference[1:]):
            torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-4)
        outside = torch.ones(48, dtype=torch.bool)
        outside[columns] = False
        assert (grad_wide[..., outside] == 0).all()


@pytest.mark.parametrize("whole_block", [False, pytest.param(True, marks=pytest.mark.skipif(blas_sgemm() is None, reason="no BLAS sgemm_"))])
def test_a_pass_without_gradients_keeps_no_probabilities(whole_block: bool) -> None:
    """Both where the kernel runs between two products and inside the whole attention block (cpu_attention_block)."""
    model, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
    model.use_cpu_kernels(True, library="blas")
    attention = model.model.layers[0].self_attn
    attention.cpu_block = whole_block
    kept = []  # floats of probabilities each call of the kernel kept
    name = "attention_block" if whole_block else "causal_attention"
    original = getattr(llama, name)
    probabilities_at = 4 if whole_block else 2  # where each op returns them

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        kept.append(result[probabilities_at].numel())
        return result

    input_ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(f"overtrain.model.llama.{name}", recording)
        with torch.no_grad():
            model.loss(input_ids, input_ids)
        model.loss(input_ids, input_ids).backward()
    assert attention.cpu_kernel and kept == [0, 2 * 2 * cpu_attention.kept_probability_floats(16)]


def test_rotary_tables_must_match_the_queries() -> None:
    qkv = torch.randn(1, 8, 3, 2, 16)
    cos, sin = rotary_cos_sin(8, 16, 10_000.0, qkv.device)
    with pytest.raises(ValueError, match="both rotary tables"):
        causal_attention(qkv, 0.25, cos, None, True)
    with pytest.raises(ValueError, match=r"shape \(T, D\) = \(8, 16\)"):
        causal_attention(qkv, 0.25, cos[:4], sin[:4], True)
    with pytest.raises(ValueError, match=r"packed as one \(B, T, 3, H, D\) tensor, got shape \(1, 8, 4, 2, 16\)"):
        causal_attention(torch.randn(1, 8, 4, 2, 16), 0.25, None, None, True)


def test_kernel_applies_only_where_it_is_built_for() -> None:
    qkv = torch.randn(1, 8, 3, 2, 16)
    assert kernel_applies(qkv)
    assert not kernel_applies(qkv.to(torch.bfloat16))
    assert not kernel_applies(torch.randn(1, 8, 3, 2, 24))
    assert not kernel_applies(torch.randn(1, 8, 2, 2, 16))  # not q, k and v
    model, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2), vocab_size=50, max_seq_len=8, seed=0)
    assert model.use_cpu_kernels(True).model.layers[0].self_attn.cpu_kernel
    assert model.cpu_loss_kernel == (model.onednn_products or blas_sgemm() is not None)  # its products: oneDNN's or the BLAS's
    torch.set_num_threads(2)  # torch's operations use both threads, the kernels one: keep torch's
    assert not model.use_cpu_kernels(True).model.layers[0].self_attn.cpu_kernel
    assert not model.cpu_loss_kernel


def test_grouped_query_model_keeps_torch_attention_with_the_kernels_on() -> None:
    """q/k/v can be packed only with as many key/value heads as query heads; a grouped model keeps three
    products and torch's attention, and its loss and gradients do not change."""
    model, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2), vocab_size=50, max_seq_len=12, seed=1)
    input_ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))

    def loss_and_grads(kernels: bool) -> list[torch.Tensor]:
        loss = model.use_cpu_kernels(kernels).loss(input_ids, input_ids)
        return [loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))]

    for mine, reference in zip(loss_and_grads(True), loss_and_grads(False)):
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-5)


def test_compiled_model_with_the_kernel_is_one_graph() -> None:
    model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
    input_ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(model.use_cpu_kernels(True).loss)(input_ids, input_ids)
    assert explained.graph_break_count == 0


def test_model_with_the_kernel_gives_transformers_logits_and_the_same_gradients() -> None:
    from transformers import LlamaForCausalLM

    from overtrain.checkpoints.folder import hf_llama_config

    config = ModelConfig(d_model=32, n_layers=2, n_heads=2, tie_embeddings=True)
    model, _ = build_model(config, vocab_size=97, max_seq_len=40, seed=3)
    theirs = LlamaForCausalLM(hf_llama_config(model, end_of_text_id=0)).eval()
    theirs.load_state_dict(model.state_dict(), strict=True)
    input_ids = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(0))
    targets = input_ids.roll(-1, dims=1)

    def loss_and_grads(kernel: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.use_cpu_kernels(kernel)
        loss = model.loss(input_ids, targets)
        return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]

    kernel_loss, kernel_grads = loss_and_grads(True)  # the tied embedding's gradient sums the fused loss's and the lookup's
    assert all(layer.self_attn.cpu_kernel for layer in model.model.layers)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids), theirs(input_ids).logits, atol=2e-5, rtol=1e-4)
    sdpa_loss, sdpa_grads = loss_and_grads(False)
    torch.testing.assert_close(kernel_loss, sdpa_loss, atol=1e-6, rtol=1e-6)
    for mine, reference in zip(kernel_grads, sdpa_grads):
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("compile_setting, expected", [("true", True), ("false", False)])
def test_compiled_cpu_training_takes_the_kernel_and_eager_training_does_not(
    tmp_path: Path, corpus: Path, token_cache: Path, compile_setting: str, expected: bool
) -> None:
    from overtrain.data.tokens import prepare_token_data
    from overtrain.pretrain.distributed import DistributedContext
    from overtrain.pretrain.loop import RunState, _TrainingLoop, build_optimizer

    config = tiny_pretrain_config(tmp_path, corpus, f"train.compile={compile_setting}", f"data.cache_dir={token_cache}")
    data = prepare_token_data(config.data, log=lambda *_: None)
    model, init_std = build_model(config.model, data.vocab_size, config.train.seq_len, config.train.seed)
    _TrainingLoop(config, model, build_optimizer(model, config), data, init_std, RunState(), DistributedContext(),
                  torch.device("cpu"), lambda *_: None, False)  # torch.compile is lazy: nothing compiles here
    assert [layer.self_attn.cpu_kernel for layer in model.model.layers] == [expected, expected]
    assert model.cpu_loss_kernel == (expected and (model.onednn_products or blas_sgemm() is not None))
    assert (model.product_timing is not None) == expected  # measured where the kernels are on, once per process
