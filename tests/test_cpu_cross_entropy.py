"""overtrain's fused output layer and cross-entropy: the loss and gradients of ``F.cross_entropy`` on
``hidden @ weight.T``, taken by the model only where gradients are wanted in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from overtrain.model import llama
from overtrain.model.config import ModelConfig
from overtrain.model.cpu_cross_entropy import linear_cross_entropy
from overtrain.model.cpu_kernels import blas_sgemm, block_products, kernel_library
from overtrain.model.cpu_linear import onednn_available
from overtrain.model.llama import build_model

pytestmark = [pytest.mark.skipif(kernel_library() is None, reason="no C++ compiler to build the CPU kernels"),
              pytest.mark.usefixtures("one_torch_thread")]

IGNORE = -100

NEEDS_BLAS = pytest.mark.skipif(blas_sgemm() is None, reason="torch exports no BLAS sgemm_ (the products by oneDNN are still tested)")
NEEDS_ONEDNN = pytest.mark.skipif(not onednn_available(), reason="no oneDNN")

NEEDS_BRGEMM = pytest.mark.skipif(block_products("brgemm") is None, reason="no oneDNN brgemm micro-kernel the kernels can call here")

PRODUCT_LIBRARIES = [pytest.param("blas", marks=NEEDS_BLAS), pytest.param("brgemm", marks=NEEDS_BRGEMM),
                     pytest.param("onednn", marks=NEEDS_ONEDNN)]
"""The libraries the fused loss makes its products with: torch's BLAS (its ``sgemm_``) or oneDNN's brgemm
micro-kernel, called from the kernel, where torch exports them, and oneDNN from Python where this build has
it; each case runs wherever its library is."""


def _fused(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, library: str):
    """The fused loss with its products by ``library`` (a key of PRODUCT_LIBRARIES)."""
    return linear_cross_entropy(hidden, weight, targets, IGNORE, library == "onednn", library == "brgemm")


def _loss_and_grads(hidden, weight, targets, grad_scale: float, fused: bool, library: str = "blas"):
    hidden, weight = hidden.detach().requires_grad_(), weight.detach().requires_grad_()
    if fused:
        loss = _fused(hidden, weight, targets, library)[0]
    else:
        loss = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE)
    (loss * grad_scale).backward()
    return [loss.detach(), hidden.grad, weight.grad]


# 1000 rows of 259 logits are four whole blocks and a part one (_block_rows(259) == 240).
# Vocabularies below 16 take the kernel's scalar rows.
@pytest.mark.parametrize("library", PRODUCT_LIBRARIES)
@pytest.mark.parametrize("rows, vocab_size, logit_scale", [(1000, 259, 1.0), (37, 256, 1.0), (300, 17, 30.0), (5, 1031, 3.0), (50, 11, 3.0)])
def test_fused_loss_is_as_accurate_as_torch_and_so_are_its_gradients(rows: int, vocab_size: int, logit_scale: float, library: str) -> None:
    """Against a float64 reference, loss and gradients are as close as torch's fp32 ones: vocabularies that
    are and are not whole 16-float vectors, several blocks of rows and a part block, large logits, ignored
    targets, and a loss the caller scales (as gradient accumulation does); products by either library."""
    generator = torch.Generator().manual_seed(rows)
    hidden = torch.randn(rows, 32, generator=generator, dtype=torch.float64)
    weight = torch.randn(vocab_size, 32, generator=generator, dtype=torch.float64) * logit_scale / 32**0.5
    targets = torch.randint(0, vocab_size, (rows,), generator=generator)
    targets[::7] = IGNORE
    exact = _loss_and_grads(hidden, weight, targets, 0.5, fused=False)
    ours = _loss_and_grads(hidden.float(), weight.float(), targets, 0.5, fused=True, library=library)
    theirs = _loss_and_grads(hidden.float(), weight.float(), targets, 0.5, fused=False)
    for name, mine, reference, truth in zip(("loss", "grad hidden", "grad weight"), ours, theirs, exact):
        our_error = (mine.double() - truth).abs().max().item()
        torch_error = (reference.double() - truth).abs().max().item()
        assert our_error <= 2 * torch_error + 1e-7, f"{name}: fused error {our_error:.2e}, torch's {torch_error:.2e}"


@NEEDS_ONEDNN
def test_fused_loss_by_onednn_in_blocks_of_rows_gives_the_whole_blocks_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four whole blocks of 240 rows and a part one, against one block of all 1000 rows (the default there)."""
    generator = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(1000, 32, generator=generator), torch.randn(259, 32, generator=generator) / 32**0.5
    targets = torch.randint(0, 259, (1000,), generator=generator)
    targets[::5] = IGNORE
    whole = linear_cross_entropy(hidden, weight, targets, IGNORE, True, False)
    monkeypatch.setattr("overtrain.model.cpu_cross_entropy.ONEDNN_LOGIT_BLOCK_BYTES", 240 * 259 * 4)
    blocked = linear_cross_entropy(hidden, weight, targets, IGNORE, True, False)
    for mine, reference in zip(blocked, whole):
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("library", PRODUCT_LIBRARIES)
def test_fused_loss_reads_strided_inputs_as_their_values(library: str) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(40, 24, generator=generator), torch.randn(30, 24, generator=generator)
    targets = torch.randint(0, 30, (40,), generator=generator)
    strided = hidden.t().contiguous().t(), weight.t().contiguous().t()
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    by_strided = _fused(*strided, targets, library)
    for mine, reference in zip(by_strided, _fused(hidden, weight, targets, library)):
        assert torch.equal(mine, reference)


@pytest.mark.parametrize("library", PRODUCT_LIBRARIES)
def test_fused_loss_of_only_ignored_targets_is_nan_as_torch_gives_it(library: str) -> None:
    hidden, weight = torch.randn(4, 8), torch.randn(11, 8)
    targets = torch.full((4,), IGNORE)
    assert torch.isnan(F.cross_entropy(hidden @ weight.t(), targets, ignore_index=IGNORE))
    loss, grad_hidden, grad_weight = _fused(hidden, weight, targets, library)
    assert torch.isnan(loss)
    assert not grad_hidden.any() and not grad_weight.any()


@pytest.mark.parametrize("library", PRODUCT_LIBRARIES)
@pytest.mark.parametrize("bad_target", [11, -1])
def test_fused_loss_refuses_a_target_outside_the_vocabulary(bad_target: int, library: str) -> None:
    targets = torch.tensor([0, bad_target, 3])
    with pytest.raises(IndexError, match=f"target {bad_target} is out of bounds for 11 logits"):
        _fused(torch.randn(3, 8), torch.randn(11, 8), targets, library)


def _counting_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def counted(*args):
        calls.append(1)
        return linear_cross_entropy(*args)

    monkeypatch.setattr(llama, "linear_cross_entropy", counted)
    return calls


@pytest.mark.skipif(blas_sgemm() is None and not onednn_available(), reason="neither library the fused loss makes its products with")
def test_model_takes_the_fused_loss_only_for_fp32_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """It computes gradients in its forward pass: not under no_grad (evaluation), not under autocast (whose
    logits would be bf16), and not unless the kernels are switched on."""
    calls = _counting_calls(monkeypatch)
    model, _ = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2), vocab_size=50, max_seq_len=8, seed=0)
    input_ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    plain = model.loss(input_ids, input_ids)
    assert calls == []
    model.use_cpu_kernels(True, library="onednn" if blas_sgemm() is None else "blas")  # the loss's products by whichever library is here
    fused = model.loss(input_ids, input_ids)
    assert calls == [1]
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        model.loss(input_ids, input_ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.loss(input_ids, input_ids)
    assert calls == [1]
