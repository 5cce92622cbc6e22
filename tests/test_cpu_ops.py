"""The blocked kernels as torch operators (cpu_ops.cpp): registered in C++ for the CPU and for autograd, so a
compiled step reaches them without Python, with schemas and fake kernels (Python) that torch's own operator
checks accept."""

from __future__ import annotations

import pytest
import torch

from overtrain.model import cpu_kernels
from overtrain.model.cpu_attention import kept_probability_floats
from overtrain.model.cpu_attention_block import attention_block
from overtrain.model.cpu_cross_entropy import linear_cross_entropy
from overtrain.model.cpu_mlp import block_rows, swiglu_mlp

pytestmark = [pytest.mark.skipif(cpu_kernels.kernel_library() is None or cpu_kernels.block_products("blas") is None,
                                 reason="no C++ compiler to build the CPU kernels, or torch exports no BLAS sgemm_"),
              pytest.mark.usefixtures("one_torch_thread")]

OPERATORS = ("swiglu_mlp", "swiglu_mlp_backward", "attention_block", "attention_block_backward", "linear_cross_entropy")
DIFFERENTIABLE = ("swiglu_mlp", "attention_block", "linear_cross_entropy")


def _kernel_sources(operator: str) -> dict[str, str]:
    """Where the kernel each dispatch key runs for ``overtrain::operator`` was registered, from the dispatcher's
    computed table (a line such as ``AutogradCPU: registered at /path/cpu_ops.cpp:491 [autograd kernel]``)."""
    table = torch._C._dispatch_dump_table(f"overtrain::{operator}")
    return dict(line.split(": ", 1) for line in table.splitlines() if ": registered at " in line)


@pytest.mark.parametrize("operator", OPERATORS)
def test_each_operator_runs_cpp_on_the_cpu_and_differentiates_in_cpp(operator: str) -> None:
    """Not a Python kernel anywhere on a CPU call's path: the CPU kernel, and for the forward operators the
    autograd kernel, are the ones cpu_ops.cpp registered."""
    sources = _kernel_sources(operator)
    assert "cpu_ops.cpp" in sources["CPU"], sources
    if operator in DIFFERENTIABLE:
        assert "cpu_ops.cpp" in sources["AutogradCPU"], sources


def _mlp_inputs(rows: int = 40, width: int = 16, ff_width: int = 24) -> tuple:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=generator, requires_grad=True)
    w_gate_up = (torch.randn(2 * ff_width, width, generator=generator) / width**0.5).requires_grad_()
    w_down = (torch.randn(width, ff_width, generator=generator) / ff_width**0.5).requires_grad_()
    norm_weight = (1 + 0.1 * torch.randn(width, generator=generator)).requires_grad_()
    return x, w_gate_up, w_down, norm_weight, 1e-5, False, block_rows(ff_width)


def _block_inputs(batch: int = 3, seq_len: int = 20, heads: int = 2, head_dim: int = 16) -> tuple:
    generator = torch.Generator().manual_seed(1)
    width = heads * head_dim
    x = torch.randn(batch, seq_len, width, generator=generator, requires_grad=True)
    w_qkv = (torch.randn(3 * width, width, generator=generator) / width**0.5).requires_grad_()
    w_o = (torch.randn(width, width, generator=generator) / width**0.5).requires_grad_()
    angles = torch.arange(seq_len).float()[:, None] * torch.linspace(0.01, 1.0, head_dim)[None, :]
    norm_weight = (1 + 0.1 * torch.randn(width, generator=generator)).requires_grad_()
    return x, w_qkv, w_o, angles.cos(), angles.sin(), norm_weight, 1e-5, heads, head_dim**-0.5, kept_probability_floats(seq_len), 2, False


def _loss_inputs(rows: int = 50, width: int = 16, vocab: int = 11) -> tuple:
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(rows, width, generator=generator, requires_grad=True)
    weight = (torch.randn(vocab, width, generator=generator) / width**0.5).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[3] = -100
    return hidden, weight, targets, -100, False, 16


@pytest.mark.parametrize("operator, inputs", [("swiglu_mlp", _mlp_inputs), ("attention_block", _block_inputs),
                                              ("linear_cross_entropy", _loss_inputs)])
def test_torchs_operator_checks_accept_the_schemas_fake_kernels_and_autograd(operator: str, inputs) -> None:
    """torch.library.opcheck: the schema matches what the kernels do, the fake kernels (what torch.compile
    traces with) give the real outputs' shapes and strides, and autograd is registered as a compiled graph
    needs it."""
    torch.library.opcheck(getattr(torch.ops.overtrain, operator).default, inputs())


def test_the_attention_block_refuses_to_keep_another_count_of_probabilities_than_the_kernel_writes() -> None:
    """The fake kernel sizes the kept probabilities from the count passed in; a count the kernel does not write
    (a changed threshold, say) would make the traced graph and the kernel disagree, so it is refused."""
    inputs = list(_block_inputs(seq_len=20))
    inputs[9] = kept_probability_floats(20) + 16
    with pytest.raises(ValueError, match=r"keeps \d+ probabilities per head at 20 tokens \(or none\); asked to keep"):
        torch.ops.overtrain.attention_block(*inputs)


def test_a_backward_pass_called_inside_autocast_still_runs() -> None:
    """The engine runs a backward pass under the autocast state of the code that calls backward(); what the
    kernels need is that their forward pass ran outside it, as it did here."""
    x, w_gate_up, w_down, norm_weight, eps, _, _ = _mlp_inputs()
    _, weight, targets, ignore_index, _, _ = _loss_inputs(rows=x.shape[0], width=x.shape[1])
    block_inputs = _block_inputs()
    loss = linear_cross_entropy(swiglu_mlp(x, w_gate_up, w_down, norm_weight, eps, False)[0], weight, targets, ignore_index, False, False)[0]
    loss = loss + attention_block(*block_inputs[:9], True, False)[0].square().mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss.backward()
    assert all(tensor.grad is not None and tensor.grad.dtype == torch.float32 for tensor in (x, w_gate_up, w_down, weight, block_inputs[0]))


def test_a_kernel_without_its_library_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_kernels, "block_products", lambda library: None)
    x, w_gate_up, w_down, norm_weight, eps, _, _ = _mlp_inputs()
    with pytest.raises(RuntimeError, match="the fused MLP needs overtrain's CPU kernels and oneDNN's brgemm micro-kernel"):
        swiglu_mlp(x, w_gate_up, w_down, norm_weight, eps, True)
    with pytest.raises(RuntimeError, match="the attention block needs overtrain's CPU kernels and torch's BLAS"):
        attention_block(*_block_inputs()[:9], True, False)
    with pytest.raises(RuntimeError, match="the fused loss needs"):
        linear_cross_entropy(*_loss_inputs()[:4], False, False)


def test_where_the_operators_do_not_build_the_kernels_are_built_without_them(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose headers do not compile here loses the blocked kernels only: the others are built
    without the operators (one warning naming the compiler's error), and the failure is kept, so a later
    process warns at once instead of spending the build again."""
    import dataclasses

    real_plans = cpu_kernels._build_plans
    monkeypatch.setenv("OVERTRAIN_KERNEL_DIR", str(tmp_path))
    real_plans.cache_clear()
    try:
        with_operators, kernels_alone = real_plans()
        broken = dataclasses.replace(with_operators, flags=(*with_operators.flags, "-include", "no_such_header_here.h"))
        monkeypatch.setattr(cpu_kernels, "_build_plans", lambda: (broken, kernels_alone))
        cpu_kernels.kernel_library.cache_clear()
        assert cpu_kernels.kernel_library_needs_building()
        with pytest.warns(UserWarning, match=r"torch operators could not be built \(.*no_such_header_here\.h.*\); the blocked kernels are off"):
            library = cpu_kernels.kernel_library()
        assert library is not None and hasattr(library, "ot_causal_attention_forward") and not hasattr(library, "ot_set_block_products")
        assert not cpu_kernels.operators_available() and kernels_alone.library.exists() and not broken.library.exists()
        assert "no_such_header_here.h" in broken.failure_note.read_text()
        cpu_kernels.kernel_library.cache_clear()  # a later process: the kept failure, no second attempt
        monkeypatch.setattr(_BuildPlanSpy, "attempts", 0)
        monkeypatch.setattr(type(broken), "build", _BuildPlanSpy.build)
        with pytest.warns(UserWarning, match=f"delete {broken.failure_note} to try again"):
            assert cpu_kernels.kernel_library() is not None
        assert _BuildPlanSpy.attempts == 0
    finally:
        real_plans.cache_clear()
        cpu_kernels.kernel_library.cache_clear()


class _BuildPlanSpy:
    attempts = 0

    def build(self) -> None:
        _BuildPlanSpy.attempts += 1
        raise AssertionError("a build that failed before is not attempted again")


def test_processes_that_build_at_once_wait_for_one_build(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builders of the same library at once (a sweep's workers, DDP's ranks): one compiles, the other waits
    for it and takes its library. The compiler here is a stand-in that counts its calls and takes a while."""
    import threading

    calls = tmp_path / "calls"
    compiler = tmp_path / "slow-compiler"
    compiler.write_text('#!/bin/sh\necho call >> "$OVERTRAIN_TEST_CALLS"\nsleep 1\nwhile [ "$1" != "-o" ]; do shift; done\n'
                        'echo built > "$2"\n')
    compiler.chmod(0o755)
    plan = cpu_kernels._BuildPlan(str(compiler), (), (), (), tmp_path / "kernels" / "overtrain-cpu-test.so")
    monkeypatch.setenv("OVERTRAIN_TEST_CALLS", str(calls))
    builders = [threading.Thread(target=plan.build) for _ in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join()
    assert plan.library.read_text() == "built\n" and calls.read_text().count("call") == 1
