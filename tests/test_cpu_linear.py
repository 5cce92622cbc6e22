"""The projections by oneDNN: the same products and gradients as torch's, one graph under torch.compile,
and taken only where the measured timing says oneDNN is the faster library."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from overtrain.model import cpu_linear
from overtrain.model.config import ModelConfig
from overtrain.model.cpu_linear import (
    BRGEMM_MIN_SPEEDUP,
    ONEDNN_MIN_SPEEDUP,
    ProductTiming,
    linear,
    linear_applies,
    onednn_available,
    time_products,
)
from overtrain.model.llama import build_model

pytestmark = [pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN"),
              pytest.mark.usefixtures("one_torch_thread")]


def _float64_error(fp32: torch.Tensor, exact: torch.Tensor) -> float:
    return float((fp32.detach().double() - exact.detach()).abs().max())


@pytest.mark.parametrize(("shape", "out_width"), [((2, 33, 16), 48), ((70, 96), 24), ((5, 7, 3, 8), 8)])
def test_linear_and_its_gradients_match_float64_as_closely_as_torch(shape: tuple[int, ...], out_width: int) -> None:
    """Both orientations of the weight gradient (input narrower and wider than the output), leading
    dimensions flattened and restored; errors against float64 at most twice those of torch's fp32 ops."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator).requires_grad_()
    weight = torch.randn(out_width, shape[-1], generator=generator).requires_grad_()
    grad_out = torch.randn(*shape[:-1], out_width, generator=generator)

    def output_and_grads(function, *tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        out = function(*leaves)
        return [out, *torch.autograd.grad(out, leaves, grad_out.to(out.dtype))]

    mine = output_and_grads(linear, x, weight)
    torch_fp32 = output_and_grads(F.linear, x, weight)
    exact = output_and_grads(F.linear, x.double(), weight.double())
    for name, ours, theirs, truth in zip(("output", "grad_input", "grad_weight"), mine, torch_fp32, exact):
        assert ours.shape == truth.shape and ours.dtype == torch.float32, name
        assert ours.is_contiguous(), name
        assert _float64_error(ours, truth) <= 2 * _float64_error(theirs, truth) + 1e-6, name


def test_second_derivatives_through_linear_are_torchs() -> None:
    """A Hessian-vector product (create_graph=True, as the sharpness probes make) through the op equals the
    one through F.linear: the backward pass falls back to torch's differentiable products."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(6, 9, generator=generator, requires_grad=True)
    weight = torch.randn(5, 9, generator=generator, requires_grad=True)
    direction = torch.randn(5, 9, generator=generator)

    def hessian_vector_product(function) -> list[torch.Tensor]:
        loss = function(x, weight).tanh().pow(2).sum()
        (grad_weight,) = torch.autograd.grad(loss, weight, create_graph=True)
        return list(torch.autograd.grad((grad_weight * direction).sum(), (x, weight)))

    for mine, reference in zip(hessian_vector_product(linear), hessian_vector_product(F.linear)):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


def test_linear_applies_to_fp32_cpu_tensors_outside_autocast() -> None:
    x, weight = torch.randn(4, 8), torch.randn(3, 8)
    assert linear_applies(x, weight)
    assert not linear_applies(x.bfloat16(), weight.bfloat16())
    assert not linear_applies(x[:0], weight)  # oneDNN refuses an empty product
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear_applies(x, weight)


def test_onednn_is_taken_only_from_the_measured_speedup() -> None:
    def timing(blas: float, onednn: float | None) -> ProductTiming:
        return ProductTiming((4096, 64, 192), 1, blas, onednn)

    assert timing(2.0, 1.0).use_onednn and timing(2.0, 1.0).onednn_speedup == 2.0 and timing(2.0, 1.0).library == "onednn"
    assert timing(ONEDNN_MIN_SPEEDUP, 1.0).use_onednn
    assert not timing(1.2, 1.0).use_onednn  # what a Zen 4 core measured while its step ran faster by torch's BLAS
    assert not timing(1.0, None).use_onednn and timing(1.0, None).library == "blas"
    assert "products by oneDNN: oneDNN's whole products measured 2.00x torch's BLAS (taken from 1.3x)" in timing(2.0, 1.0).describe()
    assert "(4096 x 64) @ (64 x 192) fp32 product with its two gradients, on 1 thread" in timing(2.0, 1.0).describe()
    assert "train.cpu_products=onednn|blas|brgemm pins one" in timing(2.0, 1.0).describe()
    assert timing(1.0, 1.0).describe().startswith("products by torch's BLAS: oneDNN's whole products measured 1.00x")
    assert "cannot compute plain fp32" in timing(1.0, None).describe()
    measured = time_products(64, 16, 32, torch.get_num_threads())
    assert measured.blas_seconds > 0 and measured.onednn_seconds is not None and measured.onednn_seconds > 0
    assert measured is time_products(64, 16, 32, torch.get_num_threads())  # timed once per process and shape


def test_the_blocked_kernels_take_brgemm_from_its_measured_speedup_and_onednn_must_beat_them() -> None:
    """With the products also timed block by block, brgemm is taken over sgemm from BRGEMM_MIN_SPEEDUP, and
    oneDNN's whole products must beat the block-by-block library taken (not torch's BLAS whole) by 1.3x."""
    def timing(block_blas: float, block_brgemm: float | None, onednn: float = 10.0) -> ProductTiming:
        return ProductTiming((4096, 64, 192), 1, 2.0, onednn, block_blas, block_brgemm)

    assert timing(1.2, 1.0).library == "brgemm" and timing(1.2, 1.0).brgemm_speedup == pytest.approx(1.2)
    assert timing(BRGEMM_MIN_SPEEDUP, 1.0).library == "brgemm"
    assert timing(1.02, 1.0).library == "blas"  # within the noise: sgemm stays
    assert timing(1.0, None).library == "blas" and timing(1.0, None).brgemm_speedup == 0.0
    assert timing(1.2, 1.0, onednn=0.8).library == "brgemm"  # 1.25x brgemm's blocks: not enough
    assert timing(1.2, 1.0, onednn=0.7).library == "onednn"  # 1.43x
    assert timing(1.0, None, onednn=0.7).library == "onednn"  # against sgemm's blocks where brgemm is missing
    line = timing(1.2, 1.0).describe()
    assert line.startswith("products by oneDNN's brgemm micro-kernel: block by block (256 rows) oneDNN's brgemm micro-kernel "
                           "measured 1.20x torch's BLAS sgemm (taken from 1.05x); oneDNN's whole products measured 0.10x the "
                           "blocked kernels' library (taken from 1.3x)")


def test_the_timing_makes_a_linear_layers_three_training_products_with_each_library() -> None:
    """What is timed is what a training step asks of the library for each projection: forward, input
    gradient and weight gradient, the same three results by either library."""
    products = cpu_linear.training_products_by_library(40, 16, 24)
    forward, grad_input, grad_weight = products["blas"]()
    assert (forward.shape, grad_input.shape, grad_weight.shape) == ((40, 24), (40, 16), (24, 16))
    for library in ("onednn", "block_blas", "block_brgemm"):
        if library in products:
            for by_library, by_blas in zip(products[library](), (forward, grad_input, grad_weight)):
                torch.testing.assert_close(by_library, by_blas, atol=1e-4, rtol=1e-5)


def test_the_timing_alternates_the_libraries_and_drops_one_that_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    median = cpu_linear._median_rounds({"blas": lambda: calls.append("blas"), "onednn": lambda: calls.append("onednn")})
    assert set(median) == {"blas", "onednn"} and all(seconds >= 0 for seconds in median.values())
    assert calls[:4] == ["blas", "onednn"] * 2 and 2 * (2 + 2) <= len(calls) <= 2 * (2 + cpu_linear.TIMING_ROUNDS)
    rounds = [calls[i : i + 2] for i in range(4, len(calls), 2)]
    assert all(sorted(pair) == ["blas", "onednn"] for pair in rounds)  # a change of the machine's speed meets both
    assert [pair[0] for pair in rounds] == ["blas", "onednn"] * (len(rounds) // 2) + ["blas"] * (len(rounds) % 2)  # who goes first alternates

    def refuses() -> None:
        raise RuntimeError("oneDNN: unsupported")

    assert set(cpu_linear._median_rounds({"blas": lambda: None, "onednn": refuses})) == {"blas"}
    monkeypatch.setattr(cpu_linear, "training_products_by_library", lambda *shape: {"blas": lambda: None, "onednn": refuses})
    cpu_linear.time_products.cache_clear()
    assert cpu_linear.time_products(8, 8, 8, 1).onednn_seconds is None
    cpu_linear.time_products.cache_clear()


def test_the_timing_keeps_each_librarys_median_round_not_its_luckiest() -> None:
    """One fast outlier round (a burst of the machine's speed) must not decide: torch's BLAS takes 4 ms a
    round but one round of ~0, oneDNN 2 ms; by fastest rounds BLAS would win."""
    import time

    calls = {"blas": 0}

    def blas() -> None:
        calls["blas"] += 1
        if calls["blas"] != 5:
            time.sleep(0.004)

    median = cpu_linear._median_rounds({"blas": blas, "onednn": lambda: time.sleep(0.002)})
    assert median["blas"] / median["onednn"] > 1.5


@pytest.mark.parametrize("onednn", [True, False])
def test_model_routes_its_projections_by_the_measurement(monkeypatch: pytest.MonkeyPatch, onednn: bool) -> None:
    blas_seconds = 2.0 if onednn else 1.0
    monkeypatch.setattr("overtrain.model.llama.time_products", lambda *shape: ProductTiming(shape[:3], shape[3], blas_seconds, 1.0))
    model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
    model.use_cpu_kernels(True)
    assert model.product_timing is not None and model.product_timing.shape == (4096, 32, 96)  # the widest: stacked q/k/v
    assert all(layer.self_attn.onednn_products == layer.mlp.onednn_products == onednn for layer in model.model.layers)
    assert model.onednn_products == onednn  # the fused loss's products too
    model.use_cpu_kernels(True, library="blas" if onednn else "onednn")  # an explicit choice is not measured
    assert model.product_timing is None
    assert model.onednn_products == (not onednn) and all(layer.mlp.onednn_products == (not onednn) for layer in model.model.layers)
    model.use_cpu_kernels(False)
    assert model.product_timing is None and not model.onednn_products
    assert not any(layer.mlp.onednn_products for layer in model.model.layers)


def test_the_model_takes_brgemm_in_its_blocked_kernels_where_it_measures_faster(monkeypatch: pytest.MonkeyPatch,
                                                                                 asked_block_libraries) -> None:
    from overtrain.model import cpu_kernels

    if not cpu_kernels.kernel_available() or cpu_kernels.block_products("brgemm") is None:
        pytest.skip("needs the CPU kernels, one torch thread and oneDNN's brgemm micro-kernel")
    monkeypatch.setattr("overtrain.model.llama.time_products",
                        lambda *shape: ProductTiming(shape[:3], shape[3], 1.0, 10.0, 1.2, 1.0))
    asked = asked_block_libraries
    model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
    input_ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    by_brgemm = model.use_cpu_kernels(True).loss(input_ids, input_ids)
    assert asked.counts() == {"brgemm": 5}  # two attention blocks, two MLPs, the loss
    by_brgemm.backward()
    assert asked.counts() == {"brgemm": 9} and model.products_library == model.block_library == "brgemm" and not model.onednn_products
    assert all(layer.self_attn.block_library == layer.mlp.block_library == "brgemm" for layer in model.model.layers)
    assert all(layer.self_attn.cpu_block and layer.mlp.cpu_kernel for layer in model.model.layers)
    asked.clear()
    by_blas = model.use_cpu_kernels(True, library="blas").loss(input_ids, input_ids)
    assert asked.counts() == {"blas": 5}
    assert model.products_library == "blas" and all(layer.mlp.block_library == "blas" for layer in model.model.layers)
    torch.testing.assert_close(by_brgemm, by_blas, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown product library 'mkl'"):
        model.use_cpu_kernels(True, library="mkl")


def test_without_the_built_kernels_the_timing_and_the_model_keep_torchs_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernels cannot be built, no library is timed block by block and the model runs torch's
    operations (no blocked kernel is asked for)."""
    from overtrain.model import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "kernel_library", lambda: None)
    cpu_kernels.block_products.cache_clear()
    cpu_linear.time_products.cache_clear()
    try:
        assert cpu_kernels.block_products("blas") is None and cpu_kernels.block_products("brgemm") is None
        assert not {"block_blas", "block_brgemm"} & set(cpu_linear.training_products_by_library(64, 16, 32))
        model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
        model.use_cpu_kernels(True)
        assert model.product_timing.block_library is None and not model.cpu_loss_kernel
        assert not any(layer.mlp.cpu_kernel or layer.self_attn.cpu_block for layer in model.model.layers)
        assert model.product_timing.library in ("onednn", "blas")
    finally:
        cpu_kernels.block_products.cache_clear()
        cpu_linear.time_products.cache_clear()


def test_a_blocked_kernels_status_becomes_an_error_that_names_it() -> None:
    from overtrain.model.cpu_kernels import raise_for_block_status

    raise_for_block_status(0, "the fused MLP")
    with pytest.raises(MemoryError, match="the fused MLP: its per-call buffers could not be allocated"):
        raise_for_block_status(2, "the fused MLP")
    with pytest.raises(RuntimeError, match="the fused loss: a product failed in its library .status 3.; train.cpu_products=blas"):
        raise_for_block_status(3, "the fused loss")


def test_layers_that_are_not_plain_keep_their_own_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hook, a bias or a replaced layer (as a LoRA adapter replaces one) is computed by the layer itself,
    never from its weight alone: the same loss as with the kernels off, and the hook runs."""
    model, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
    layer = model.model.layers[0]
    with torch.no_grad():
        biased = torch.nn.Linear(layer.mlp.down_proj.in_features, 32)
        biased.weight.copy_(layer.mlp.down_proj.weight)
        biased.bias.fill_(1.0)
    layer.mlp.down_proj = biased
    seen = []
    layer.self_attn.q_proj.register_forward_hook(lambda *_: seen.append("q"))
    layer.self_attn.o_proj.register_forward_hook(lambda *_: seen.append("o"))
    input_ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    plain = model.use_cpu_kernels(False).loss(input_ids, input_ids)
    seen.clear()
    with_onednn = model.use_cpu_kernels(True, library="onednn").loss(input_ids, input_ids)
    assert seen == ["q", "o"]
    torch.testing.assert_close(with_onednn, plain, atol=1e-6, rtol=1e-6)


def test_compiled_model_with_onednn_projections_is_one_graph_with_the_same_loss_and_gradients() -> None:
    model, _ = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=2), vocab_size=50, max_seq_len=16, seed=0)
    input_ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    calls = []
    original = cpu_linear.linear_backward

    def loss_and_grads(onednn: bool) -> list[torch.Tensor]:
        model.use_cpu_kernels(True, library="onednn" if onednn else "blas")
        loss = model.loss(input_ids, input_ids)
        return [loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_linear, "linear_backward", lambda *args: calls.append(1) or original(*args))
        mine = loss_and_grads(True)
    assert len(calls) == 2 * 5  # per layer: the stacked q/k/v, o, gate, up and down projections
    for ours, reference in zip(mine, loss_and_grads(False)):
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    explained = torch._dynamo.explain(model.use_cpu_kernels(True, library="onednn").loss)(input_ids, input_ids)
    assert explained.graph_break_count == 0
