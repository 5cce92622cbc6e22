"""Causal attention for small head dims on one CPU thread: a C++ kernel, built on first use.

Why: at the nano shape (head dim 16, 128 tokens) torch's CPU flash-attention kernel takes about a third
of a compiled training step, mostly outside arithmetic. ``cpu_attention.cpp`` computes one (batch, head)
pair at a time from L1/L2 with register-blocked 16-float vector loops; its backward pass recomputes the
probabilities from each row's log-sum-exp, as FlashAttention does. Given the rotary tables it also applies
the rotary embedding to q and k (and its transpose to their gradients), which saves the training step
its separate passes. It agrees with ``F.scaled_dot_product_attention(is_causal=True)`` (after
``apply_rotary``) to float rounding, not bitwise: against a float64 reference its error is that of
torch's own kernel (a few 1e-6 at unit-scale inputs).

The kernel is compiled with the system C++ compiler (the one ``torch.compile`` already needs) into
``~/.cache/overtrain/kernels`` (``OVERTRAIN_KERNEL_DIR`` overrides), keyed by the source and the CPU, and
loaded through ctypes: no torch headers, so it builds in seconds. Where it cannot be built, or does not
apply (see :func:`kernel_applies`), callers use ``F.scaled_dot_product_attention``.

Shapes: B batch, H heads, T sequence length, D head dim.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_attention.cpp")
HEAD_DIMS = (16, 32, 48, 64)
"""Head dims the kernel is compiled for (whole 16-float vectors)."""
_POINTER, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(wanted)))


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@functools.lru_cache(maxsize=1)
def kernel_library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None (with one warning) where that fails."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    source = SOURCE.read_bytes()
    flags = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c++17"]
    digest = hashlib.sha256(source + " ".join(flags).encode() + _cpu_identity().encode()).hexdigest()[:16]
    folder = Path(os.environ.get("OVERTRAIN_KERNEL_DIR") or Path.home() / ".cache" / "overtrain" / "kernels")
    library = folder / f"cpu_attention-{digest}.so"
    try:
        if not library.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as scratch:  # build aside, then rename: never a torn .so
                built = Path(scratch) / library.name
                subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built)], check=True, capture_output=True, text=True)
                os.replace(built, library)
        loaded = ctypes.CDLL(str(library))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        warnings.warn(f"overtrain: the CPU attention kernel could not be built ({detail.strip()[:300]}); using torch's attention")
        return None
    loaded.ot_causal_attention_forward.argtypes = [_POINTER, _INT, _INT, _INT] * 4 + [_POINTER] * 3 + [_INT] * 4 + [_FLOAT]
    loaded.ot_causal_attention_backward.argtypes = (
        [_POINTER, _INT, _INT, _INT] * 5 + [_POINTER] * 4 + [_INT] * 3 + [_POINTER] * 2 + [_INT] * 4 + [_FLOAT]
    )
    return loaded


def kernel_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernel computes this attention: fp32 on the CPU, as many key/value heads as query heads
    and a head dim in :data:`HEAD_DIMS`. Only tensor properties, so torch.compile traces it without a break;
    whether the kernel is built and torch runs one thread is asked once, by :func:`kernel_available`."""
    return (
        q.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and q.shape == k.shape == v.shape
        and q.shape[-1] in HEAD_DIMS
    )


def kernel_available() -> bool:
    """Whether the kernel is worth taking here, building (or finding) it now: torch runs one CPU thread
    (torch's attention uses every thread, this kernel one) and the kernel builds on this machine."""
    return torch.get_num_threads() == 1 and kernel_library() is not None


def _pointer_and_strides(x: torch.Tensor) -> list[int]:
    return [x.data_ptr(), x.stride(0), x.stride(1), x.stride(2)]


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _new_bthd(like: torch.Tensor) -> torch.Tensor:
    """A (B, H, T, D) tensor stored as (B, T, H, D): what the projections before and after attention use."""
    batch, heads, seq_len, head_dim = like.shape
    return like.new_empty(batch, seq_len, heads, head_dim).transpose(1, 2)


def _rotary_pointers(q: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> list[int | None]:
    """Pointers to the (T, D) rotary tables (None, None for no rotation), checked against q's shape."""
    if cos is None and sin is None:
        return [None, None]
    if cos is None or sin is None:
        raise ValueError("pass both rotary tables (cos and sin) or neither")
    expected = (q.shape[2], q.shape[3])
    for name, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) != expected or table.dtype != torch.float32 or not table.is_contiguous():
            raise ValueError(f"rotary table {name} must be contiguous fp32 of shape (T, D) = {expected}, got {tuple(table.shape)} {table.dtype}")
    return [cos.data_ptr(), sin.data_ptr()]


@torch.library.custom_op("overtrain::causal_attention", mutates_args=())
def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(scale q k^T + causal mask) v for (B, H, T, D) inputs, with q and k first rotated by the rotary
    tables cos and sin (T, D) when given (``overtrain.model.llama.apply_rotary``'s rotation); returns the
    output (B, H, T, D, stored as B, T, H, D) and each row's log-sum-exp (B, H, T), which the backward pass
    needs. Gradients flow to q, k and v, not to the tables."""
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    batch, heads, seq_len, head_dim = q.shape
    out, lse = _new_bthd(q), q.new_empty(batch, heads, seq_len)
    status = kernel_library().ot_causal_attention_forward(
        *_pointer_and_strides(q), *_pointer_and_strides(k), *_pointer_and_strides(v), *_pointer_and_strides(out),
        lse.data_ptr(), *_rotary_pointers(q, cos, sin), batch, heads, seq_len, head_dim, scale,
    )
    if status != 0:
        raise ValueError(f"the CPU attention kernel has no head dim {head_dim} (it has {HEAD_DIMS})")
    return out, lse


@causal_attention.register_fake
def _(q, k, v, scale, cos=None, sin=None):
    return _new_bthd(q), q.new_empty(q.shape[:3])


@torch.library.custom_op("overtrain::causal_attention_backward", mutates_args=())
def causal_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float,
    cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`causal_attention` with respect to q, k and v (each B, H, T, D; q and k unrotated)."""
    grad_out, q, k, v, out = (_last_dim_contiguous(x) for x in (grad_out, q, k, v, out))
    lse = lse.contiguous()
    batch, heads, seq_len, head_dim = q.shape
    grad_q, grad_k, grad_v = _new_bthd(q), _new_bthd(q), _new_bthd(q)
    status = kernel_library().ot_causal_attention_backward(
        *_pointer_and_strides(q), *_pointer_and_strides(k), *_pointer_and_strides(v), *_pointer_and_strides(out),
        *_pointer_and_strides(grad_out), lse.data_ptr(), grad_q.data_ptr(), grad_k.data_ptr(), grad_v.data_ptr(),
        grad_q.stride(0), grad_q.stride(1), grad_q.stride(2), *_rotary_pointers(q, cos, sin), batch, heads, seq_len, head_dim, scale,
    )
    if status != 0:
        raise ValueError(f"the CPU attention kernel has no head dim {head_dim} (it has {HEAD_DIMS})")
    return grad_q, grad_k, grad_v


@causal_attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, scale, cos=None, sin=None):
    return _new_bthd(q), _new_bthd(q), _new_bthd(q)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale, cos, sin = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cos, sin)
    ctx.scale = scale


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, cos, sin = ctx.saved_tensors
    grad_q, grad_k, grad_v = causal_attention_backward(grad_out, q, k, v, out, lse, ctx.scale, cos, sin)
    return grad_q, grad_k, grad_v, None, None, None


causal_attention.register_autograd(_backward, setup_context=_setup_context)
